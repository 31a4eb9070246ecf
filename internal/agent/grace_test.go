package agent

import (
	"testing"

	"github.com/redash-agent/redash-agent/internal/config"
)

// TestBudgetsOutlastWorkerGrace: a recreate waits out a worker's whole stop
// grace (redash:worker-stop-grace, at most config.MaxWorkerStopGrace), so
// neither the converge deadline nor the boot step's start-timeout extension
// may end before it.
func TestBudgetsOutlastWorkerGrace(t *testing.T) {
	if ConvergeDeadline <= config.MaxWorkerStopGrace+stepBudget {
		t.Errorf("ConvergeDeadline %s does not leave a step's budget (%s) beside the longest worker grace %s", ConvergeDeadline, stepBudget, config.MaxWorkerStopGrace)
	}
	if got := stepBudgetFor(stepConvergeContainers); got <= config.MaxWorkerStopGrace {
		t.Errorf("the %q step asks systemd for %s, not more than the longest worker grace %s", stepConvergeContainers, got, config.MaxWorkerStopGrace)
	}
	if got := stepBudgetFor("fetch secrets"); got != stepBudget {
		t.Errorf("other steps ask for %s, want %s", got, stepBudget)
	}
}
