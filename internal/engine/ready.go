package engine

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
)

const (
	// stableFor is how long a container without a readiness endpoint must
	// run, unrestarted, to count as up: long enough to catch an immediate
	// crash, short enough not to slow a boot.
	stableFor = 250 * time.Millisecond
	// pollEvery paces readiness polls once a service has had a moment.
	pollEvery = 100 * time.Millisecond
	// logLines is how much of a failing container's log an error carries.
	logLines = 20
)

// pollRamp spaces a service's polls: 10, 20, 40, 80 ms, then pollEvery.
var pollRamp = backoff.Policy{Base: 10 * time.Millisecond, Max: pollEvery}

// checkRamp spaces a service's Desired.Ready checks, which read Redis and
// may exec into the container: 25, 50, 100 ms ... then one a second, so a
// worker that registers at once is seen at once and one that keeps failing
// is not exec'd into back to back. A check that takes longer (an exec of a
// Python command) paces itself: the next starts at a poll after it ends.
var checkRamp = backoff.Policy{Base: 25 * time.Millisecond, Max: time.Second}

// ReadyCheck says whether a running background service does its job (its
// queues have consumers), beyond running: the agent supplies one from the
// queue system's registry and Redash's own healthchecks. The engine asks
// it from the moment a service's container runs (paced by checkRamp) until
// it returns nil or HealthTimeout passes.
type ReadyCheck interface {
	// Checks reports whether the check has something to ask of service;
	// a service without gets the stability wait instead.
	Checks(service string) bool
	// Ready returns nil when the service is ready, else what it waits for.
	Ready(ctx context.Context, e *Engine, c RunningService) error
}

// RunningService is a service's running container as a ReadyCheck sees it.
type RunningService struct {
	Project, Service string
	ID, Name         string
	Hostname         string   // the container's hostname, as its processes see it
	Entrypoint       []string // the image's entrypoint, to exec its commands
}

// waitFor is ActWaitReady: it waits, at most HealthTimeout, until service
// is up: the server answers GET /ping, nginx answers GET /ping with 200
// (what the load balancer's health check asks of it: nginx loaded its
// configuration and reaches the server), a service with a readiness check
// (Desired.Ready: the workers) passes it, any other has run for a moment
// without a restart. A container that crash-loops (restarts, or exits
// non-zero) fails at once, with its last log lines, instead of being
// waited on.
func (e *Engine) waitFor(ctx context.Context, d Desired, service string) error {
	ctx, cancel := context.WithTimeout(ctx, e.healthTimeout())
	defer cancel()
	httpc := &http.Client{Timeout: 2 * time.Second}
	w := &serviceWait{name: service, baseline: map[string]int{}}
	for attempt := 1; ; attempt++ {
		r := e.poll(ctx, d, httpc, w)
		if r.err != nil {
			return r.err
		}
		if r.pending == "" {
			return nil
		}
		if ctx.Err() != nil && w.lastPending != "" {
			// The deadline cut this poll short (an inspect, a /ping, a
			// check): what the one before found is the reason worth
			// reporting, not the cut.
			r.pending = w.lastPending
		}
		w.lastPending = r.pending
		// Most services are up moments after their start: look again soon,
		// then at the steady pace.
		next := pollRamp.Step(attempt)
		if r.next > 0 {
			next = min(next, r.next)
		}
		if backoff.Sleep(ctx, next) != nil {
			cname := containerName(d.Project.Name, service)
			err := fmt.Errorf("waiting for service %q of project %q to be ready: not ready after %s (%s): check `docker logs %s`", service, d.Project.Name, e.healthTimeout(), r.pending, cname)
			if w.failingID != "" {
				// A service that runs but does not do its job says why in its log.
				lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				defer lcancel()
				err = fmt.Errorf("%w\nlast log lines of %s:\n%s", err, service, e.lastLogs(lctx, w.failingID))
			}
			return err
		}
	}
}

// serviceWait is what waitFor remembers of its service between polls.
type serviceWait struct {
	name        string
	baseline    map[string]int // restart count per container ID when first seen
	checks      int            // Desired.Ready checks made
	lastCheck   time.Time      // when the last one began
	lastReason  string         // why Desired.Ready last failed
	lastPending string         // what the last poll still waited for
	failingID   string         // the container whose Ready check fails, for its log
}

// pollResult is one look at one service: err ends the wait (a crash
// loop, an unreachable dockerd), pending says what it still waits for
// ("" = up), next asks for the next poll sooner.
type pollResult struct {
	pending string
	next    time.Duration
	err     error
}

// poll looks once at one service's container.
func (e *Engine) poll(ctx context.Context, d Desired, httpc *http.Client, w *serviceWait) pollResult {
	name, cname := w.name, containerName(d.Project.Name, w.name)
	cctx, ccancel := e.call(ctx)
	c, err := e.Docker.ContainerInspect(cctx, cname)
	ccancel()
	if cerrdefs.IsNotFound(err) {
		return pollResult{pending: fmt.Sprintf("%s: no container %s", name, cname)}
	}
	if err != nil {
		if ctx.Err() != nil {
			// The deadline hit mid-poll: not ready (waitFor reports what
			// the poll before found).
			return pollResult{pending: name + ": " + err.Error()}
		}
		return pollResult{err: fmt.Errorf("inspecting container %q: %w: check that dockerd is running", cname, err)}
	}
	if _, ok := w.baseline[c.ID]; !ok {
		w.baseline[c.ID] = c.RestartCount
	}
	st := c.State
	if st == nil {
		return pollResult{pending: name + ": no state"}
	}
	if st.Restarting || c.RestartCount > w.baseline[c.ID] || (st.Status == "exited" && st.ExitCode != 0) {
		return pollResult{err: fmt.Errorf("waiting for service %q: container %q keeps failing (state %s, exit code %d, %d restarts): fix the cause shown in its last log lines, then run up again:\n%s",
			name, cname, st.Status, st.ExitCode, c.RestartCount, e.lastLogs(ctx, c.ID))}
	}
	if st.Status != "running" {
		return pollResult{pending: fmt.Sprintf("%s: %s", name, st.Status)}
	}
	if st.Health != nil && st.Health.Status == "unhealthy" {
		return pollResult{pending: name + ": unhealthy"}
	}
	switch name {
	case compose.ServerService, compose.NginxService:
		// Both answer /ping when up (nginx by passing it to the server):
		// a positive signal, no need to wait for stability.
		if err := ping(ctx, httpc, httpAddr(d, name, c)); err != nil {
			return pollResult{pending: fmt.Sprintf("%s: /ping: %v", name, err)}
		}
		return pollResult{}
	}
	if d.Ready == nil || !d.Ready.Checks(name) {
		// Nothing to ask it: running a moment without a restart is all
		// there is to see.
		started, _ := time.Parse(time.RFC3339Nano, st.StartedAt)
		if left := stableFor - time.Since(started); left > 0 {
			return pollResult{pending: name + ": just started", next: left}
		}
		return pollResult{}
	}
	if w.checks > 0 {
		if left := checkRamp.Step(w.checks) - time.Since(w.lastCheck); left > 0 {
			return pollResult{pending: name + ": " + w.lastReason, next: left}
		}
	}
	w.checks++
	w.lastCheck = time.Now()
	err = d.Ready.Ready(ctx, e, runningService(d.Project.Name, name, c))
	if err == nil {
		return pollResult{}
	}
	// A check the deadline cut short is reported as what the poll before
	// found (waitFor).
	w.lastReason, w.failingID = err.Error(), c.ID
	return pollResult{pending: name + ": " + w.lastReason}
}

func runningService(project, name string, c container.InspectResponse) RunningService {
	r := RunningService{Project: project, Service: name, ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.Config != nil {
		r.Hostname, r.Entrypoint = c.Config.Hostname, c.Config.Entrypoint
	}
	return r
}

// httpAddr is where the host reaches the HTTP port of the server (5000)
// or nginx (80): its published port, else its address on the project
// network (reachable from the host on a Linux bridge).
func httpAddr(d Desired, service string, c container.InspectResponse) string {
	port := uint32(compose.ServerPort)
	if service == compose.NginxService {
		port = compose.NginxPort
	}
	if a := publishedPort(d.Project.Services[service], port); a != "" {
		return a
	}
	if c.NetworkSettings != nil {
		// Keyed by the network's name; the server has only the project's.
		for _, n := range c.NetworkSettings.Networks {
			if n != nil && n.IPAddress != "" {
				return fmt.Sprintf("%s:%d", n.IPAddress, port)
			}
		}
	}
	return ""
}

func ping(ctx context.Context, c *http.Client, addr string) error {
	if addr == "" {
		return fmt.Errorf("no published port and no network address yet")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// lastLogs returns the container's last log lines (stdout and stderr), or
// why they could not be read. The log driver writes asynchronously, so a
// container seen crashing a moment ago may not have its lines stored yet:
// an empty log is read again, briefly.
func (e *Engine) lastLogs(ctx context.Context, id string) string {
	var text string
	for range 4 {
		if text = e.readLogs(ctx, id); strings.TrimSpace(text) != "" {
			return text
		}
		if backoff.Sleep(ctx, 250*time.Millisecond) != nil {
			return "  (no log lines)"
		}
	}
	return "  (no log lines)"
}

func (e *Engine) readLogs(ctx context.Context, id string) string {
	text, err := e.logTail(ctx, id, logLines)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) > logLines {
		lines = lines[len(lines)-logLines:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// ServiceStatus is one service as `status` shows it.
type ServiceStatus struct {
	Service      string
	Container    string
	State        string // Docker's state, or "missing"
	Health       string // healthy, unhealthy, starting, or "" without a healthcheck
	Image        string
	HashCurrent  bool // created from the current configuration
	RestartCount int
}

// Status reports each desired service's container. It only reads.
func (e *Engine) Status(ctx context.Context, d Desired) ([]ServiceStatus, error) {
	if err := validate(d); err != nil {
		return nil, err
	}
	o, err := e.observe(ctx, d.Project.Name)
	if err != nil {
		return nil, err
	}
	var out []ServiceStatus
	for _, name := range serviceOrder(d.Project) {
		svc := d.Project.Services[name]
		svc.Name = name
		cname := containerName(d.Project.Name, name)
		s := ServiceStatus{Service: name, Container: cname, State: "missing", Image: svc.Image}
		i := slices.IndexFunc(o.Containers, func(c Container) bool { return c.Name == cname })
		if i >= 0 {
			c := o.Containers[i]
			s.State, s.Image = c.State, c.Image
			s.HashCurrent = c.Hash == ConfigHash(svc, d.Env, d.HashKey)
			cctx, cancel := e.call(ctx)
			in, err := e.Docker.ContainerInspect(cctx, c.ID)
			cancel()
			if err != nil && !cerrdefs.IsNotFound(err) {
				return nil, fmt.Errorf("inspecting container %q: %w: check that dockerd is running", cname, err)
			}
			if err == nil {
				s.RestartCount = in.RestartCount
				if in.State != nil && in.State.Health != nil {
					s.Health = in.State.Health.Status
				}
			}
		}
		out = append(out, s)
	}
	return out, nil
}
