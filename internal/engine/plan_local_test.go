package engine

import (
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

// localDesired is testProject with provider local's bundled postgres and
// redis, which every Redash service depends on.
func localDesired() Desired {
	d := desired()
	deps := types.DependsOnConfig{
		"postgres": {Condition: types.ServiceConditionStarted, Required: true},
		"redis":    {Condition: types.ServiceConditionStarted, Required: true},
	}
	for _, name := range []string{"server", "scheduler", "worker"} {
		svc := d.Project.Services[name]
		svc.DependsOn = deps
		d.Project.Services[name] = svc
	}
	d.Project.Services["postgres"] = types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: "postgres:15"}}
	d.Project.Services["redis"] = types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: "redis:7"}}
	return d
}

// TestPlanLocalBackingStage: the network, stale removals, postgres and
// redis come first, in StageBacking (the migration runs after it); every
// Redash service is StageContainers; the stages never go back in print.
func TestPlanLocalBackingStage(t *testing.T) {
	d := localDesired()
	o := Observed{Project: "p", Images: map[string]string{"redash/redash:10": "sha256:10", "postgres:15": "sha256:pg", "redis:7": "sha256:r"},
		Containers: []Container{{ID: "old", Name: "p_server_1", Service: "server", Number: "1", State: "running"}}}
	p := ComputePlan(d, o)
	if !p.Has(StageBacking) || !p.Has(StageContainers) {
		t.Fatalf("plan has no backing or containers stage:\n%s", p)
	}
	for i, a := range p.Actions {
		want := StageContainers
		switch {
		case a.Kind == ActWaitReady:
			want = StageReady
		case a.Kind == ActCreateNetwork, a.Service == "postgres", a.Service == "redis", strings.Contains(a.Reason, "stale name"):
			want = StageBacking
		}
		if a.Stage != want {
			t.Errorf("action %d (%s) is in stage %s, want %s", i+1, a.Text(), a.Stage, want)
		}
		if i > 0 && a.Stage < p.Actions[i-1].Stage {
			t.Errorf("action %d (%s) is in stage %s, printed after stage %s", i+1, a.Text(), a.Stage, p.Actions[i-1].Stage)
		}
	}

	// Without bundled services the plan has no backing stage at all.
	if p := ComputePlan(desired(), Observed{Project: "p", Images: images}); p.Has(StageBacking) {
		t.Errorf("a plan without postgres and redis has a backing stage:\n%s", p)
	}

	// A replaced postgres restarts the running Redash services, after it.
	running := func(svc string) Container { return current(d, svc, "running") }
	o = Observed{Project: "p", Network: net, Images: o.Images, Containers: []Container{
		running("server"), running("scheduler"), running("worker"), running("nginx"), running("redis"),
		{ID: "id-postgres", Name: "p-postgres-1", Service: "postgres", Number: "1", Hash: "stale", Image: "postgres:15", ImageID: "sha256:pg", State: "running"},
	}}
	p = ComputePlan(d, o)
	text := p.String()
	for _, want := range []string{"recreate postgres", "restart server (postgres started anew)", "restart worker (postgres started anew)"} {
		if !strings.Contains(text, want) {
			t.Errorf("plan lacks %q:\n%s", want, text)
		}
	}
}
