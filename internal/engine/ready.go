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
	// pollEvery paces readiness polls.
	pollEvery = 100 * time.Millisecond
	// logLines is how much of a failing container's log an error carries.
	logLines = 20
	// checkEvery paces Desired.Ready's checks of one service: they exec
	// into containers and read Redis, heavier than an inspect.
	checkEvery = time.Second
)

// ReadyCheck says whether a running background service does its job (its
// queues have consumers), beyond running: the agent supplies one from the
// queue system's registry and Redash's own healthchecks. The engine asks
// it once a service's container has run for stableFor, at most every
// checkEvery, until it returns nil or HealthTimeout passes.
type ReadyCheck interface {
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

// waitFor is ActWaitReady: it waits, at most HealthTimeout, until every
// one of services runs: the server answers GET /ping, the others have run
// for a moment without a restart. A container that crash-loops (restarts,
// or exits non-zero) fails at once, with its last log lines, instead of
// being waited on.
func (e *Engine) waitFor(ctx context.Context, d Desired, services []string) error {
	ctx, cancel := context.WithTimeout(ctx, e.healthTimeout())
	defer cancel()
	project := d.Project.Name
	baseline := map[string]int{} // restart count per container ID at start
	httpc := &http.Client{Timeout: 2 * time.Second}
	checked := map[string]bool{}        // services whose ReadyCheck passed
	lastCheck := map[string]time.Time{} // when each service was last checked
	lastReason := map[string]string{}   // why each service's check last failed
	checkFailing := map[string]string{} // container ID per service whose check fails
	for {
		var pending []string
		// The next poll comes at pollEvery, or sooner when a container
		// becomes stable sooner: the last one started sets the pace of a
		// cold start.
		next := pollEvery
		for _, name := range services {
			cname := containerName(project, name)
			cctx, ccancel := e.call(ctx)
			c, err := e.Docker.ContainerInspect(cctx, cname)
			ccancel()
			if cerrdefs.IsNotFound(err) {
				pending = append(pending, fmt.Sprintf("%s: no container %s", name, cname))
				continue
			}
			if err != nil {
				if ctx.Err() != nil {
					// The deadline hit mid-poll: report it below as not
					// ready, with what it last waited for if it had a check.
					why := err.Error()
					if r, ok := lastReason[name]; ok {
						why = r
					}
					pending = append(pending, name+": "+why)
					continue
				}
				return fmt.Errorf("inspecting container %q: %w: check that dockerd is running", cname, err)
			}
			if _, ok := baseline[c.ID]; !ok {
				baseline[c.ID] = c.RestartCount
			}
			st := c.State
			if st == nil {
				pending = append(pending, name+": no state")
				continue
			}
			if st.Restarting || c.RestartCount > baseline[c.ID] || (st.Status == "exited" && st.ExitCode != 0) {
				return fmt.Errorf("waiting for service %q: container %q keeps failing (state %s, exit code %d, %d restarts): fix the cause shown in its last log lines, then run up again:\n%s",
					name, cname, st.Status, st.ExitCode, c.RestartCount, e.lastLogs(ctx, c.ID))
			}
			if st.Status != "running" {
				pending = append(pending, fmt.Sprintf("%s: %s", name, st.Status))
				continue
			}
			if st.Health != nil && st.Health.Status == "unhealthy" {
				pending = append(pending, name+": unhealthy")
				continue
			}
			if name == compose.ServerService {
				if err := ping(ctx, httpc, serverAddr(d, c)); err != nil {
					pending = append(pending, fmt.Sprintf("%s: /ping: %v", name, err))
				}
				continue
			}
			started, _ := time.Parse(time.RFC3339Nano, st.StartedAt)
			if left := stableFor - time.Since(started); left > 0 {
				pending = append(pending, name+": just started")
				next = min(next, left)
				continue
			}
			if d.Ready == nil || checked[name] {
				continue
			}
			if time.Since(lastCheck[name]) >= checkEvery {
				lastCheck[name] = time.Now()
				err := d.Ready.Ready(ctx, e, runningService(project, name, c))
				if err == nil {
					checked[name] = true
					delete(checkFailing, name)
					continue
				}
				lastReason[name], checkFailing[name] = err.Error(), c.ID
			}
			pending = append(pending, name+": "+lastReason[name])
		}
		if len(pending) == 0 {
			return nil
		}
		if backoff.Sleep(ctx, next) != nil {
			err := fmt.Errorf("waiting for project %q to be ready: not ready after %s (%s): check `docker logs` of those containers", project, e.healthTimeout(), strings.Join(pending, "; "))
			// A service that runs but does not do its job says why in its log.
			lctx, lcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer lcancel()
			var tails []string
			for _, name := range services {
				if id, ok := checkFailing[name]; ok {
					tails = append(tails, fmt.Sprintf("last log lines of %s:\n%s", name, e.lastLogs(lctx, id)))
				}
			}
			if len(tails) > 0 {
				err = fmt.Errorf("%w\n%s", err, strings.Join(tails, "\n"))
			}
			return err
		}
	}
}

func runningService(project, name string, c container.InspectResponse) RunningService {
	r := RunningService{Project: project, Service: name, ID: c.ID, Name: strings.TrimPrefix(c.Name, "/")}
	if c.Config != nil {
		r.Hostname, r.Entrypoint = c.Config.Hostname, c.Config.Entrypoint
	}
	return r
}

// serverAddr is where the host reaches the server: its published port for
// 5000, else its address on the project network (reachable from the host
// on a Linux bridge).
func serverAddr(d Desired, c container.InspectResponse) string {
	if a := publishedPort(d.Project.Services[compose.ServerService], compose.ServerPort); a != "" {
		return a
	}
	if c.NetworkSettings != nil {
		// Keyed by the network's name; the server has only the project's.
		for _, n := range c.NetworkSettings.Networks {
			if n != nil && n.IPAddress != "" {
				return fmt.Sprintf("%s:%d", n.IPAddress, compose.ServerPort)
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
