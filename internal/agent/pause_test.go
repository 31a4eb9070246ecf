package agent

import (
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/doctor"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/migrate"
)

func TestPauseFor(t *testing.T) {
	up := func(phase string) *cluster.Upgrade {
		return &cluster.Upgrade{FromHead: "rev1", ToHead: "rev2", Phase: phase}
	}
	tests := []struct {
		name string
		u    *cluster.Upgrade
		head string
		want string
	}{
		{"no upgrade ever", nil, "rev1", ""},
		{"draining, old image", up(cluster.PhaseDraining), "rev1", "rev2"},
		{"migrating, old image", up(cluster.PhaseMigrating), "rev1", "rev2"},
		{"migrating, head not known yet", up(cluster.PhaseMigrating), "", "rev2"},
		{"migrating, new image", up(cluster.PhaseMigrating), "rev2", ""},
		{"done, old image: the database is ahead", up(cluster.PhaseDone), "rev1", "rev2"},
		{"done, new image", up(cluster.PhaseDone), "rev2", ""},
		{"done, an even newer image about to upgrade", up(cluster.PhaseDone), "rev3", ""},
		{"done, head not known", up(cluster.PhaseDone), "", ""},
		{"failed: the schema is where it was", up(cluster.PhaseFailed), "rev1", ""},
	}
	for _, tc := range tests {
		if got := pauseFor(tc.u, tc.head); got != tc.want {
			t.Errorf("%s: pauseFor = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestPauseExplainsThePlan(t *testing.T) {
	p := engine.Plan{Actions: []engine.Action{
		{Kind: engine.ActStop, Service: "worker", Reason: "orphan"},
		{Kind: engine.ActRemove, Service: "scheduler", Reason: "orphan"},
		{Kind: engine.ActStop, Service: "server", Reason: "config changed"},
	}}
	pauseChoice{pausedFor: "rev2"}.explain(&p)
	for _, a := range p.Actions[:2] {
		if a.Reason != reasonPaused+" (to revision rev2)" {
			t.Errorf("%s %s: reason %q", a.Kind, a.Service, a.Reason)
		}
	}
	if p.Actions[2].Reason != "config changed" {
		t.Errorf("the server's reason changed: %q", p.Actions[2].Reason)
	}
}

// TestDoctorSaysAheadAndUpgrading: doctor picks the fix from the typed
// state: a database ahead fails with "roll forward or restore", an upgrade
// under way warns "wait".
func TestDoctorSaysAheadAndUpgrading(t *testing.T) {
	ahead := remoteDatabaseResult("db:5432", "redash", dbState{text: "ahead (image head rev1): " + migrate.AheadAdvice, schema: migrate.StateAhead})
	if ahead.Status != doctor.Fail || !strings.Contains(ahead.Detail, "migrated by a newer image") || !strings.Contains(ahead.Fix, "roll the instance forward") {
		t.Errorf("ahead: %+v", ahead)
	}
	up := remoteDatabaseResult("db:5432", "redash", dbState{text: "behind (image head rev1); an upgrade rev1 -> rev2 ...", schema: migrate.StateBehind, upgrading: true})
	if up.Status != doctor.Warn || !strings.Contains(up.Fix, "wait for the upgrade to finish") {
		t.Errorf("upgrading: %+v", up)
	}
}
