package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// execCheck execs the entrypoint's `env` in each worker-like container and
// passes only after failsLeft failures; it records what it saw.
type execCheck struct {
	mu        sync.Mutex
	failsLeft int
	never     bool
	seen      map[string]string // service -> hostname the exec printed
}

func (c *execCheck) Checks(service string) bool { return service == "worker" || service == "scheduler" }

func (c *execCheck) Ready(ctx context.Context, e *Engine, r RunningService) error {
	if r.Service != "worker" && r.Service != "scheduler" {
		return nil
	}
	res, err := e.Exec(ctx, r.ID, append(r.Entrypoint, "env"))
	if err != nil {
		return err
	}
	if res.ExitCode != 0 || !strings.Contains(res.Output, `"HOSTNAME":"`+r.Hostname+`"`) {
		return errors.New("exec env did not print the container's hostname")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[r.Service] = r.Hostname
	if c.never || c.failsLeft > 0 {
		c.failsLeft--
		return errors.New("queue q has no consumer")
	}
	return nil
}

func TestReadyCheckPassesAfterRetries(t *testing.T) {
	s := newStack(t)
	chk := &execCheck{failsLeft: 2, seen: map[string]string{}}
	s.d.Ready = chk
	s.up()
	if chk.seen["worker"] == "" || chk.seen["scheduler"] == "" {
		t.Errorf("the check did not reach worker and scheduler through exec: %v", chk.seen)
	}
}

func TestReadyCheckFailureCarriesLogTail(t *testing.T) {
	s := newStack(t)
	s.d.Ready = &execCheck{never: true, seen: map[string]string{}}
	s.e.HealthTimeout = 8 * time.Second
	start := time.Now()
	_, err := converge(context.Background(), s.e, s.d)
	took := time.Since(start)
	if err == nil {
		t.Fatal("Up succeeded while the ready check fails")
	}
	msg := err.Error()
	for _, want := range []string{"worker: queue q has no consumer", "last log lines of worker", "fakeredash: worker started"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error lacks %q: %v", want, msg)
		}
	}
	if took > 30*time.Second {
		t.Errorf("failed after %s, want about the 8s health timeout", took)
	}
}
