package desired

import (
	"testing"
	"time"
)

// TestProxiesCount covers every topology: what forwards to the server on
// this instance (the ALB, nginx, both, neither) per family, and the
// operator's override, which comes last.
func TestProxiesCount(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
		want string
	}{
		{"alb and nginx", map[string]string{}, "2"},
		{"alb alone", map[string]string{"nginx": "false"}, "1"},
		{"nginx alone", map[string]string{"load-balancer": "none"}, "1"},
		{"nothing in front", map[string]string{"load-balancer": "none", "nginx": "false"}, "0"},
		// werkzeug 0.11 reads 0 as the client-written first entry.
		{"nothing in front, 8.x", map[string]string{"load-balancer": "none", "nginx": "false", "version": "8.0.0.b32245"}, "1"},
		{"alb and nginx, 8.x", map[string]string{"version": "8.0.0.b32245"}, "2"},
		// role web runs nginx and the server; role worker has no server.
		{"role web", map[string]string{"role": "web"}, "2"},
		{"role worker", map[string]string{"role": "worker"}, "1"},
		{"override", map[string]string{"env:REDASH_PROXIES_COUNT": "3"}, "3"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379"}
			for k, v := range tc.vals {
				vals[k] = v
			}
			st, err := Build(resolve(t, vals), seed("u", "p"), "/opt/redash")
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Env["REDASH_PROXIES_COUNT"]; got != tc.want {
				t.Errorf("REDASH_PROXIES_COUNT = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestEnforceCSRF: on from 10.x, as getredash/setup writes it; absent
// before (8.x and 9.x have no such setting); an override wins.
func TestEnforceCSRF(t *testing.T) {
	cases := []struct {
		version, override string
		want              string // "" = absent
	}{
		{"8.0.0.b32245", "", ""},
		{"9.0.0-beta.b42121", "", ""},
		{"10.1.0.b50633", "", "true"},
		{"25.8.0", "", "true"},
		{"26.3.0", "", "true"},
		{"25.8.0", "false", "false"},
	}
	for _, tc := range cases {
		t.Run(tc.version+"/"+tc.override, func(t *testing.T) {
			vals := map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379", "version": tc.version}
			if tc.override != "" {
				vals["env:REDASH_ENFORCE_CSRF"] = tc.override
			}
			st, err := Build(resolve(t, vals), seed("u", "p"), "/opt/redash")
			if err != nil {
				t.Fatal(err)
			}
			if got, ok := st.Env["REDASH_ENFORCE_CSRF"]; got != tc.want || ok != (tc.want != "") {
				t.Errorf("REDASH_ENFORCE_CSRF = %q (set %v), want %q", got, ok, tc.want)
			}
		})
	}
}

func TestWorkerStopGraceReachesSpec(t *testing.T) {
	vals := map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379", "worker-stop-grace": "45s"}
	st, err := Build(resolve(t, vals), seed("u", "p"), "/opt/redash")
	if err != nil {
		t.Fatal(err)
	}
	if st.Spec.WorkerStopGrace != 45*time.Second {
		t.Errorf("Spec.WorkerStopGrace = %s, want 45s", st.Spec.WorkerStopGrace)
	}
}
