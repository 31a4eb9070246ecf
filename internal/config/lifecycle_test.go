package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLifecycleDefaultsAndValidation(t *testing.T) {
	c, err := Resolve(Defaults(), minimal())
	if err != nil {
		t.Fatal(err)
	}
	want := Lifecycle{LaunchHook: "redash-launch", TerminateHook: "redash-terminate", DrainTimeout: 5 * time.Minute, DeregisterWait: time.Minute}
	if c.Lifecycle != want {
		t.Errorf("defaults %+v, want %+v", c.Lifecycle, want)
	}
	// drain-timeout follows worker-stop-grace unless set.
	l := minimal()
	l.Values["worker-stop-grace"] = "2m"
	if c, err = Resolve(Defaults(), l); err != nil || c.Lifecycle.DrainTimeout != 2*time.Minute {
		t.Errorf("drain-timeout with worker-stop-grace 2m: %s, %v; want 2m", c.Lifecycle.DrainTimeout, err)
	}
	l.Values["drain-timeout"] = "15m"
	if c, err = Resolve(Defaults(), l); err != nil || c.Lifecycle.DrainTimeout != 15*time.Minute {
		t.Errorf("drain-timeout 15m: %s, %v", c.Lifecycle.DrainTimeout, err)
	}
	for key, bad := range map[string]string{
		"drain-timeout":            "5s",
		"drain-deregister-wait":    "1h",
		"lifecycle-hook-launch":    "no spaces",
		"lifecycle-hook-terminate": "",
	} {
		l := minimal()
		l.Values[key] = bad
		_, err := Resolve(Defaults(), l)
		var ce *Error
		if !errors.As(err, &ce) || !strings.Contains(err.Error(), "redash:"+key) {
			t.Errorf("%s=%q: error %v, want a configuration error naming the key", key, bad, err)
		}
	}
}
