package agent

// ready.go: what READY=1 (and up's success) means for the background
// services: every queue of every worker service has a live consumer in
// that service's own container. The engine asks queueReadiness from the
// moment each worker's container runs (engine.ReadyCheck), bounded by its
// health timeout; the registry is read first, so a worker still booting
// costs a Redis read, not an exec.
//
//   - RQ (9.x on): the worker registry in Redis (internal/queues): for each
//     queue the service's QUEUES names, a live RQ worker registered with
//     the container's hostname; from 25.1 the image's own
//     workers_healthcheck must pass too. The RQ scheduler only has to run:
//     rq-scheduler registers one cluster-wide key, nothing per host.
//   - Celery (8.x): the image's celery_healthcheck (`celery inspect ping`
//     of celery@$HOSTNAME) in each worker and the scheduler.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/queues"
)

// rqDefaultQueues is redash/worker.py's default_queues, what `rq worker`
// consumes when QUEUES is empty.
var rqDefaultQueues = []string{"scheduled_queries", "queries", "periodic", "emails", "default", "schemas"}

// bundledRedisPort is the port of the bundled redis container.
const bundledRedisPort = "6379"

type queueReadiness struct {
	family  compose.Family
	conn    desired.RedisConn
	local   bool                // bundled redis: its address comes from its container
	workers map[string][]string // worker service -> queues that need a consumer
}

// readiness builds the check for r's project; nil when the version has no
// family (the render has already refused it).
func readiness(r Rendered) engine.ReadyCheck {
	f, err := compose.FamilyFor(r.State.Spec.Version)
	if err != nil || r.Project == nil {
		return nil
	}
	q := &queueReadiness{family: f, conn: r.State.Redis, local: r.State.Spec.Local, workers: map[string][]string{}}
	for _, name := range compose.WorkerServices(f.Layout()) {
		svc, ok := r.Project.Services[name]
		if !ok {
			continue // another role
		}
		var want []string
		if v := svc.Environment[compose.EnvQueues]; v != nil {
			want = queues.ParseQueues(*v)
		}
		if len(want) == 0 && f.Layout() == compose.RQ {
			want = rqDefaultQueues
		}
		q.workers[name] = want
	}
	return q
}

// Checks: the worker services of r's role; the scheduler only has to run.
func (q *queueReadiness) Checks(service string) bool {
	_, ok := q.workers[service]
	return ok
}

func (q *queueReadiness) Ready(ctx context.Context, e *engine.Engine, r engine.RunningService) error {
	want, ok := q.workers[r.Service]
	if !ok {
		return nil
	}
	if q.family.Layout() == compose.Celery {
		return q.exec(ctx, e, r, "celery_healthcheck")
	}
	if err := q.consumers(ctx, e, r, want); err != nil {
		return err
	}
	if hc := q.family.WorkerHealthcheck(); hc != "" {
		return q.exec(ctx, e, r, hc)
	}
	return nil
}

// consumers checks RQ's registry for a consumer of each queue on r's host.
func (q *queueReadiness) consumers(ctx context.Context, e *engine.Engine, r engine.RunningService, want []string) error {
	conn := queues.Conn{Addr: q.conn.Addr, DB: q.conn.DB, TLS: q.conn.TLS, Username: q.conn.Username, Password: q.conn.Password.Reveal()}
	if q.local {
		ip, err := e.ServiceAddress(ctx, r.Project, compose.RedisService)
		if err != nil {
			return err
		}
		conn.Addr = net.JoinHostPort(ip, bundledRedisPort)
	}
	reader := queues.Open(conn)
	defer reader.Close()
	ws, err := reader.Workers(ctx)
	if err != nil {
		return fmt.Errorf("reading the RQ worker registry: %w", err)
	}
	missing := queues.Missing(ws, r.Hostname, want)
	if len(missing) == 0 {
		return nil
	}
	var seen []string
	for _, w := range ws {
		if w.Hostname == r.Hostname {
			seen = append(seen, strings.Join(w.Queues, ","))
		}
	}
	slices.Sort(seen)
	return fmt.Errorf("no live RQ worker in container %s (hostname %s) consumes queue(s) %s (its registered workers consume: %s); check its log for Redis errors (AUTH, address) and its QUEUES",
		r.Name, r.Hostname, strings.Join(missing, ", "), orNone(strings.Join(seen, "; ")))
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// exec runs one of the image's entrypoint health commands in r.
func (q *queueReadiness) exec(ctx context.Context, e *engine.Engine, r engine.RunningService, command string) error {
	res, err := e.Exec(ctx, r.ID, append(slices.Clone(r.Entrypoint), command))
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("%s in container %s exits %d: %s", command, r.Name, res.ExitCode, lastLine(res.Output))
	}
	return nil
}

// lastLine is the last non-empty line of a command's output.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}
