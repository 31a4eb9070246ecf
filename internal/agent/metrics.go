package agent

// metrics.go: the backlog metrics (internal/metrics) as `run` and
// `redash-agent metrics --once` use them. run starts one publisher goroutine
// (startMetrics); every converge hands it the configuration it rendered
// (setMetrics), so a changed role, interval or Redis reaches it without a
// restart, and a converge that fails later (Docker down) does not stop it.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/metrics"
	"github.com/redash-agent/redash-agent/internal/queues"
)

// celeryDefaultQueues is 8.x's docker-entrypoint worker default, what
// `celery worker -Q` consumes when QUEUES is empty.
var celeryDefaultQueues = []string{"queries", "scheduled_queries", "celery", "schemas"}

// startMetrics starts run's publisher; the returned stop waits for it to
// release its lease.
func (a *Agent) startMetrics(ctx context.Context) (stop func()) {
	l := metrics.NewLoop(a.log)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	a.metrics = l
	return func() {
		cancel()
		<-done
	}
}

// setMetrics hands run's publisher what r configures; nothing outside run.
func (a *Agent) setMetrics(r Rendered) {
	if a.metrics == nil || r.Project == nil {
		return
	}
	a.metrics.Set(metricsSettings(r))
}

// metricsSettings is what the publisher does for r: it publishes only
// where workers run (role all or worker), with a database to hold the
// lease in, and not with provider local's bundled Redis and database (one
// instance, no Auto Scaling group to feed).
func metricsSettings(r Rendered) metrics.Settings {
	s := metrics.Settings{
		Source: metricsSource(r), Interval: r.Config.MetricsInterval, Resolution: r.Config.MetricsResolution,
		Region: r.Config.Region, DB: r.State.DB, Instance: instanceName(r.Project.Name),
	}
	switch {
	case r.Config.MetricsInterval <= 0:
		s.Why = "metrics-interval is off"
	case r.Config.Role == compose.RoleWeb:
		s.Why = "role web runs no workers; instances with role all or worker publish"
	case r.State.Spec.Local:
		s.Why = "provider local with the bundled database and Redis runs one instance"
	case r.State.Redis.Addr == "":
		s.Why = "no Redis endpoint"
	default:
		s.Publish = true
	}
	return s
}

// metricsSource says where r's backlog is: the queues the worker services
// consume (their QUEUES) and the release's default queues.
func metricsSource(r Rendered) metrics.Source {
	rc := r.State.Redis
	src := metrics.Source{
		Cluster: r.Config.Project,
		Redis:   queues.Conn{Addr: rc.Addr, DB: rc.DB, TLS: rc.TLS, Username: rc.Username, Password: rc.Password.Reveal()},
	}
	f, err := compose.FamilyFor(r.Config.Version)
	if err != nil {
		return src // the render has refused the version already
	}
	src.Celery = f.Layout() == compose.Celery
	src.Queues = slices.Clone(rqDefaultQueues)
	if src.Celery {
		src.Queues = slices.Clone(celeryDefaultQueues)
	}
	if r.Project != nil {
		for _, name := range compose.WorkerServices(f.Layout()) {
			if svc, ok := r.Project.Services[name]; ok {
				if v := svc.Environment[compose.EnvQueues]; v != nil {
					src.Queues = append(src.Queues, queues.ParseQueues(*v)...)
				}
			}
		}
	}
	slices.Sort(src.Queues)
	src.Queues = slices.Compact(src.Queues)
	return src
}

// MetricsReport is what `metrics --once` read and whether it published it.
type MetricsReport struct {
	Sample    metrics.Sample
	Region    string
	Published bool
	// Took is the read and the publish together.
	Took time.Duration
}

// MetricsOnce reads the backlog and publishes it once, now, without the
// lease (an operator asked). It writes nothing on the host. With provider
// local's bundled Redis it reads that container's address from Docker.
// A Redis or CloudWatch failure is an error; the report keeps what was read.
func (a *Agent) MetricsOnce(ctx context.Context) (MetricsReport, error) {
	var rep MetricsReport
	r, err := a.Render(ctx)
	if err != nil {
		return rep, err
	}
	src := metricsSource(r)
	rep.Region = r.Config.Region
	if r.State.Spec.Local {
		eng, err := a.docker()
		if err != nil {
			return rep, err
		}
		ip, err := eng.ServiceAddress(ctx, r.Project.Name, compose.RedisService)
		eng.Close()
		if err != nil {
			return rep, fmt.Errorf("finding the bundled redis: %w: start it with `redash-agent up --provider local`", err)
		}
		src.Redis.Addr = net.JoinHostPort(ip, bundledRedisPort)
	}
	start := time.Now()
	err = a.step(ctx, "read the queue backlog", func(ctx context.Context) error {
		rep.Sample, err = metrics.Read(ctx, src, start)
		return err
	})
	if err != nil {
		return rep, err
	}
	err = a.step(ctx, "publish the backlog metrics", func(ctx context.Context) error {
		api, err := metrics.NewCloudWatch(ctx, r.Config.Region)
		if err != nil {
			return err
		}
		return metrics.Publish(ctx, api, rep.Sample, r.Config.MetricsResolution)
	})
	rep.Took = time.Since(start)
	rep.Published = err == nil
	return rep, err
}
