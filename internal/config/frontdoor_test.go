package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFrontDoorDefaults(t *testing.T) {
	c, err := Resolve(Defaults(), minimal())
	if err != nil {
		t.Fatal(err)
	}
	if c.LoadBalancer != LoadBalancerALB || c.WorkerStopGrace != 5*time.Minute {
		t.Errorf("aws: load-balancer %q grace %s, want alb and 5m", c.LoadBalancer, c.WorkerStopGrace)
	}
	c, err = Resolve(Defaults(), Layer{Source: SourceFile, Values: map[string]string{"provider": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.LoadBalancer != LoadBalancerNone {
		t.Errorf("local: load-balancer %q, want none", c.LoadBalancer)
	}
	tags := minimal()
	tags.Values["load-balancer"] = "none"
	tags.Values["worker-stop-grace"] = "90s"
	if c, err = Resolve(Defaults(), tags); err != nil {
		t.Fatal(err)
	}
	if c.LoadBalancer != LoadBalancerNone || c.WorkerStopGrace != 90*time.Second {
		t.Errorf("set: load-balancer %q grace %s, want none and 1m30s", c.LoadBalancer, c.WorkerStopGrace)
	}
}

func TestFrontDoorValidation(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
		want string // "" = valid
	}{
		{"bad load balancer", map[string]string{"load-balancer": "nlb"}, `redash:load-balancer (from instance tag): "nlb" is not a load balancer`},
		{"grace too short", map[string]string{"worker-stop-grace": "5s"}, `redash:worker-stop-grace (from instance tag): "5s" is not a duration from 10s to 1h0m0s`},
		{"grace too long", map[string]string{"worker-stop-grace": "2h"}, "redash:worker-stop-grace"},
		{"grace not a duration", map[string]string{"worker-stop-grace": "300"}, "redash:worker-stop-grace"},
		{"grace at the bounds", map[string]string{"worker-stop-grace": "1h"}, ""},
		{"proxies count not a number", map[string]string{"env:REDASH_PROXIES_COUNT": "two"}, "redash:env:REDASH_PROXIES_COUNT"},
		{"proxies count signed", map[string]string{"env:REDASH_PROXIES_COUNT": "-1"}, "redash:env:REDASH_PROXIES_COUNT"},
		{"proxies count 0 on 25", map[string]string{"env:REDASH_PROXIES_COUNT": "0"}, ""},
		{"proxies count 0 on 8", map[string]string{"env:REDASH_PROXIES_COUNT": "0", "version": "8.0.0.b32245"}, "0 is unsafe on Redash 8.0.0.b32245"},
		{"proxies count 1 on 8", map[string]string{"env:REDASH_PROXIES_COUNT": "1", "version": "8.0.0.b32245"}, ""},
		{"csrf override", map[string]string{"env:REDASH_ENFORCE_CSRF": "false"}, ""},
		{"csrf not a boolean", map[string]string{"env:REDASH_ENFORCE_CSRF": "nope"}, "redash:env:REDASH_ENFORCE_CSRF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tags := minimal()
			for k, v := range tc.vals {
				tags.Values[k] = v
			}
			_, err := Resolve(Defaults(), tags)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				return
			}
			var ce *Error
			if !errors.As(err, &ce) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want a *config.Error containing %q", err, tc.want)
			}
		})
	}
}
