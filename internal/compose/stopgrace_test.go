package compose

import (
	"context"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
)

// TestStopGrace checks each family's stop_grace_period, in the project and
// in the YAML as `docker compose` (compose-go's loader) reads it back.
func TestStopGrace(t *testing.T) {
	const grace = 30 * time.Second
	cases := []struct {
		version string
		want    map[string]time.Duration
	}{
		// 8.x: celery is PID 1 and finishes its task on SIGTERM; the
		// scheduler is a Celery worker too.
		{"8.0.0.b32245", map[string]time.Duration{
			"server": 5 * time.Second, "nginx": 5 * time.Second,
			"scheduler": grace, "scheduled_worker": grace, "adhoc_worker": grace}},
		// 9.x: bash is PID 1 and drops SIGTERM: Docker's default.
		{"9.0.0-beta.b42121", map[string]time.Duration{
			"server": 5 * time.Second, "nginx": 5 * time.Second, "scheduler": 10 * time.Second,
			"scheduled_worker": 10 * time.Second, "adhoc_worker": 10 * time.Second, "worker": 10 * time.Second}},
		{"10.1.0.b50633", map[string]time.Duration{
			"server": 5 * time.Second, "nginx": 5 * time.Second, "scheduler": 10 * time.Second,
			"scheduled_worker": grace, "adhoc_worker": grace, "worker": grace}},
		{"25.8.0", map[string]time.Duration{
			"server": 5 * time.Second, "nginx": 5 * time.Second, "scheduler": 10 * time.Second,
			"scheduled_worker": grace, "adhoc_worker": grace, "worker": grace}},
	}
	for _, tc := range cases {
		t.Run(tc.version, func(t *testing.T) {
			s := spec(tc.version, RoleAll)
			s.WorkerStopGrace = grace
			p, data := render(t, s)
			loaded, err := Load(context.Background(), s.Dir, data)
			if err != nil {
				t.Fatalf("loading the YAML back: %v", err)
			}
			if len(p.Services) != len(tc.want) {
				t.Fatalf("services %v, want %d of them", p.ServiceNames(), len(tc.want))
			}
			for name, want := range tc.want {
				for from, proj := range map[string]map[string]time.Duration{"project": graces(p.Services), "YAML": graces(loaded.Services)} {
					if got := proj[name]; got != want {
						t.Errorf("%s: %s stop_grace_period = %s, want %s", from, name, got, want)
					}
				}
			}
		})
	}
}

func TestStopGraceDefault(t *testing.T) {
	p, _ := render(t, spec("25.8.0", RoleWorker))
	if got := graces(p.Services)["adhoc_worker"]; got != DefaultWorkerStopGrace {
		t.Errorf("adhoc_worker grace with no WorkerStopGrace = %s, want %s", got, DefaultWorkerStopGrace)
	}
}

// graces maps each service to its stop grace; 0 when it sets none.
func graces(s types.Services) map[string]time.Duration {
	out := map[string]time.Duration{}
	for name, svc := range s {
		if svc.StopGracePeriod != nil {
			out[name] = time.Duration(*svc.StopGracePeriod)
		}
	}
	return out
}

// TestWorkerShutdownFacts pins what each family's entrypoint does with
// SIGTERM (bin/docker-entrypoint and worker.conf at each tag).
func TestWorkerShutdownFacts(t *testing.T) {
	cases := []struct {
		version  string
		sigterm  bool
		stopWait time.Duration
	}{
		{"8.0.0.b32245", true, 0},
		{"9.0.0-beta.b42121", false, 10 * time.Second},
		{"10.1.0.b50633", true, 10 * time.Second},
		{"25.1.0", true, 10 * time.Second},
		{"26.3.0", true, 10 * time.Second},
	}
	for _, tc := range cases {
		f, err := FamilyFor(tc.version)
		if err != nil {
			t.Fatal(err)
		}
		if f.WorkerGetsSIGTERM() != tc.sigterm || f.SupervisorStopWait() != tc.stopWait {
			t.Errorf("%s: WorkerGetsSIGTERM %v SupervisorStopWait %s, want %v %s", tc.version, f.WorkerGetsSIGTERM(), f.SupervisorStopWait(), tc.sigterm, tc.stopWait)
		}
	}
}
