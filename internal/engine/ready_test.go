package engine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
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

// TestNginxMustAnswerPing: nginx counts as up only when GET /ping through
// it answers 200, as the load balancer's health check asks; a container
// that runs but does not serve (here the image runs its scheduler instead)
// fails the wait, named, instead of passing after a moment without a crash.
func TestNginxMustAnswerPing(t *testing.T) {
	s := newStack(t)
	n := s.d.Project.Services["nginx"]
	n.Command = []string{"scheduler"}
	s.d.Project.Services["nginx"] = n
	s.e.HealthTimeout = 5 * time.Second
	_, err := converge(context.Background(), s.e, s.d)
	if err == nil {
		t.Fatal("Up succeeded while nginx does not answer /ping")
	}
	for _, want := range []string{`service "nginx"`, "nginx: /ping:", "docker logs " + containerName(s.d.Project.Name, "nginx")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}

// cutInspectDocker makes waitFor's third look at one container (by name, as
// only waitFor asks) hang until its deadline: a dockerd too busy to answer
// in the last moment of the wait, as a loaded CI machine once was.
type cutInspectDocker struct {
	Docker
	name  string
	mu    sync.Mutex
	calls int
}

func (c *cutInspectDocker) ContainerInspect(ctx context.Context, id string) (container.InspectResponse, error) {
	if id == c.name {
		c.mu.Lock()
		c.calls++
		n := c.calls
		c.mu.Unlock()
		if n >= 3 {
			<-ctx.Done()
			return container.InspectResponse{}, ctx.Err()
		}
	}
	return c.Docker.ContainerInspect(ctx, id)
}

// TestWaitCutMidPollSaysWhatItWaitedFor: when the deadline cuts a poll
// short, the error names what the poll before found (nginx's /ping
// failing), not the cut inspect's "context deadline exceeded".
func TestWaitCutMidPollSaysWhatItWaitedFor(t *testing.T) {
	s := newStack(t)
	n := s.d.Project.Services["nginx"]
	n.Command = []string{"scheduler"} // runs, never serves
	s.d.Project.Services["nginx"] = n
	s.e.Docker = &cutInspectDocker{Docker: s.e.Docker, name: containerName(s.d.Project.Name, "nginx")}
	s.e.HealthTimeout = 3 * time.Second
	_, err := converge(context.Background(), s.e, s.d)
	if err == nil {
		t.Fatal("Up succeeded while nginx does not answer /ping")
	}
	if !strings.Contains(err.Error(), "nginx: /ping:") || strings.Contains(err.Error(), "deadline exceeded") {
		t.Errorf("error = %v\nwant what the last full poll found (nginx: /ping: ...), not the cut", err)
	}
}
