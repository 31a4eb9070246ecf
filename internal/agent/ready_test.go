package agent

import (
	"slices"
	"testing"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
)

// TestReadinessQueues: the check knows each worker service of the role's
// layout with the queues its QUEUES names, and nothing else.
func TestReadinessQueues(t *testing.T) {
	for _, tc := range []struct {
		version, role string
		want          map[string][]string
	}{
		{"10.1.0.b50633", compose.RoleAll, map[string][]string{
			"scheduled_worker": {"scheduled_queries", "schemas"}, "adhoc_worker": {"queries"}, "worker": {"periodic", "emails", "default"}}},
		{"8.0.0.b32245", compose.RoleAll, map[string][]string{
			"scheduler": {"celery"}, "scheduled_worker": {"scheduled_queries", "schemas"}, "adhoc_worker": {"queries"}}},
		{"25.8.0", compose.RoleWeb, map[string][]string{}},
	} {
		spec := compose.Spec{Project: "p", Dir: "/opt/redash", Version: tc.version, Image: "redash/redash:" + tc.version, Role: tc.role, Nginx: true}
		proj, err := compose.Project(spec)
		if err != nil {
			t.Fatal(err)
		}
		chk := readiness(Rendered{Project: proj, State: desired.State{Spec: spec}})
		q, ok := chk.(*queueReadiness)
		if !ok {
			t.Fatalf("%s: no queue readiness", tc.version)
		}
		if len(q.workers) != len(tc.want) {
			t.Errorf("%s %s: services %v, want %v", tc.version, tc.role, q.workers, tc.want)
		}
		for svc, want := range tc.want {
			if !slices.Equal(q.workers[svc], want) {
				t.Errorf("%s %s: queues %q, want %q", tc.version, svc, q.workers[svc], want)
			}
		}
	}
}
