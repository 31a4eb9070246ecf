package config

import (
	"errors"
	"testing"
	"time"
)

func TestMetricsKeys(t *testing.T) {
	base := map[string]string{"provider": "local"}
	resolve := func(kv map[string]string) (Config, error) {
		return Resolve(Defaults(), Layer{Source: SourceFile, Values: base}, Layer{Source: SourceFlag, Values: kv})
	}
	c, err := resolve(nil)
	if err != nil || c.MetricsInterval != time.Minute || c.MetricsResolution != 60 {
		t.Fatalf("defaults: %v, %d, %v; want 1m, 60", c.MetricsInterval, c.MetricsResolution, err)
	}
	for _, off := range []string{"0", "off"} {
		if c, err := resolve(map[string]string{"metrics-interval": off}); err != nil || c.MetricsInterval != 0 {
			t.Errorf("metrics-interval=%s: %v, %v; want off", off, c.MetricsInterval, err)
		}
	}
	if c, err := resolve(map[string]string{"metrics-interval": "10s", "metrics-resolution": "1"}); err != nil || c.MetricsInterval != 10*time.Second || c.MetricsResolution != 1 {
		t.Errorf("10s, 1: %v, %d, %v", c.MetricsInterval, c.MetricsResolution, err)
	}
	for k, v := range map[string]string{"metrics-interval": "5s", "metrics-resolution": "30"} {
		_, err := resolve(map[string]string{k: v})
		var ce *Error
		if !errors.As(err, &ce) || len(ce.Problems) != 1 || ce.Problems[0].Key != k {
			t.Errorf("%s=%s: %v, want one problem with %s", k, v, err, k)
		}
	}
	for _, v := range []string{"2h", "soon", "-1m"} {
		if _, err := resolve(map[string]string{"metrics-interval": v}); err == nil {
			t.Errorf("metrics-interval=%s accepted", v)
		}
	}
}
