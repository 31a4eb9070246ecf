package engine

import (
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// TestStopGraceInContainerSpec: the stop grace the compose project gives
// each service becomes the container's StopTimeout (what `docker stop`
// without -t and a daemon-side stop use) and the engine's own stop grace.
func TestStopGraceInContainerSpec(t *testing.T) {
	p, err := compose.Project(compose.Spec{Project: "p", Dir: "/opt/redash", Version: "8.0.0.b32245", Nginx: true, WorkerStopGrace: 45 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	d := Desired{Project: p, Env: map[string]string{}, HashKey: []byte("k")}
	want := map[string]int{"server": 5, "nginx": 5, "scheduler": 45, "scheduled_worker": 45, "adhoc_worker": 45}
	for name, secs := range want {
		svc := p.Services[name]
		svc.Name = name
		s := buildSpec(d, "net-id", svc, ConfigHash(svc, d.Env, d.HashKey), "")
		if s.Config.StopTimeout == nil || *s.Config.StopTimeout != secs {
			t.Errorf("%s: StopTimeout = %v, want %d", name, s.Config.StopTimeout, secs)
		}
		if got := stopGrace(svc); got != time.Duration(secs)*time.Second {
			t.Errorf("%s: engine stop grace = %s, want %ds", name, got, secs)
		}
	}
}
