package agent

// The scale-in drain (docs/scaling.md). When IMDS says the group moves this
// instance to Terminated, run stops converging for good (the drain runs in
// run's own loop, which never converges again) and:
//
//   - workers (and 8.x's scheduler, a Celery worker with beat) get a plain
//     docker stop with drain-timeout as the grace: SIGTERM is RQ's and
//     Celery's warm shutdown, so each stops taking jobs and finishes the one
//     it runs; a job still running at the timeout is killed with its worker
//     and named in the journal (read from Redis: the worker's current_job);
//   - the web role stops nginx with SIGQUIT, nginx's graceful stop: it
//     closes its listening socket at once, so the ALB's /ping check fails
//     from its next probe, and finishes the requests in flight; the server
//     stays up for drain-deregister-wait (the health check's interval x
//     unhealthy threshold: the ALB has then marked the target unhealthy and
//     sends nothing more) and is then stopped with its own grace. With the
//     template, whose groups name the target group, Auto Scaling has already
//     deregistered the instance and waited out the deregistration delay
//     before the terminate hook starts, so no new request arrives anyway;
//     the failing /ping covers a target registered some other way;
//
// with a lifecycle heartbeat at the start and every drainHeartbeat while it
// waits, and CONTINUE on the terminate hook at the end. Nothing here removes
// a container: the instance and its disk go away with the termination.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/lifecycle"
	"github.com/redash-agent/redash-agent/internal/queues"
)

// drainHeartbeat spaces the lifecycle heartbeats; the template's hooks
// allow 300 s between them.
const drainHeartbeat = time.Minute

// drain stops this instance's Redash gracefully for a scale-in and
// completes the terminate hook.
func (a *Agent) drain(ctx context.Context, n Notifier, cfg config.Config) {
	start := time.Now()
	n.Status("draining for scale-in (up to %s)", cfg.Lifecycle.DrainTimeout)
	act, inGroup := a.lifecycleAction(cfg, cfg.Lifecycle.TerminateHook)
	var client *lifecycle.Client
	if inGroup {
		var err error
		if client, err = lifecycle.New(ctx, a.region(cfg)); err != nil {
			a.log.Error("no Auto Scaling client: the terminate hook ends with its timeout", "step", "drain", "err", err)
		}
	}
	beats, stopBeats := context.WithCancel(ctx)
	var wg sync.WaitGroup
	if client != nil {
		wg.Go(func() { a.heartbeats(beats, client, act) })
	}

	err := a.stopForDrain(ctx, cfg)
	// The 8.x scheduler lease goes with the stopped scheduler, so another
	// worker instance runs beat now rather than when this one is gone.
	a.releaseLease(ctx)
	stopBeats()
	wg.Wait()
	took := time.Since(start).Round(time.Millisecond)
	if err != nil {
		a.log.Error("drain incomplete; completing the terminate hook anyway (the instance is going)", "step", "drain", "took", took, "err", err)
	} else {
		a.log.Info("drained: no Redash container runs on this instance", "step", "drain", "took", took)
	}
	if client == nil || ctx.Err() != nil {
		return
	}
	switch err := client.Complete(ctx, act, lifecycle.Continue); {
	case errors.Is(err, lifecycle.ErrNoAction):
		a.log.Warn("no terminate lifecycle action pending (its timeout passed, or no hook of that name)", "step", "drain", "detail", err.Error())
	case err != nil:
		a.log.Error("completing the terminate lifecycle action failed; the hook's timeout ends it", "step", "drain", "err", err)
	default:
		a.log.Info("terminate lifecycle action completed", "step", "drain", "result", string(lifecycle.Continue), "action", act.String())
	}
	n.Status("drained for scale-in after %s; waiting for the instance to terminate", took)
}

// heartbeats records a lifecycle heartbeat now and every drainHeartbeat
// until ctx ends.
func (a *Agent) heartbeats(ctx context.Context, c *lifecycle.Client, act lifecycle.Action) {
	t := time.NewTicker(drainHeartbeat)
	defer t.Stop()
	for {
		if err := c.Heartbeat(ctx, act); err != nil && ctx.Err() == nil {
			a.log.Warn("lifecycle heartbeat failed", "step", "drain", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// stopForDrain stops the web and job containers of the project, each side
// at its own pace, at once.
func (a *Agent) stopForDrain(ctx context.Context, cfg config.Config) error {
	eng, err := a.docker()
	if err != nil {
		return err
	}
	defer eng.Close()
	cs, err := eng.Containers(ctx, cfg.Project)
	if err != nil {
		return err
	}
	var nginx, server *engine.Container
	var jobs []engine.Container
	for _, c := range cs {
		if c.OneOff || c.State != "running" {
			continue
		}
		switch c.Service {
		case compose.NginxService:
			nginx = &c
		case compose.ServerService:
			server = &c
		case compose.PostgresService, compose.RedisService:
			// provider local's bundled services: not part of a fleet
		default:
			jobs = append(jobs, c)
		}
	}
	var webErr, jobErr error
	var wg sync.WaitGroup
	wg.Go(func() { webErr = a.drainWeb(ctx, eng, cfg, nginx, server) })
	wg.Go(func() { jobErr = a.drainJobs(ctx, eng, cfg, jobs) })
	wg.Wait()
	return errors.Join(webErr, jobErr)
}

// drainWeb: nginx stops taking connections (the ALB's /ping fails) and
// finishes its requests; the server follows after the deregister wait.
func (a *Agent) drainWeb(ctx context.Context, eng *engine.Engine, cfg config.Config, nginx, server *engine.Container) error {
	if nginx == nil && server == nil {
		return nil
	}
	if nginx != nil {
		a.log.Info("web: stopping nginx gracefully (SIGQUIT): /ping fails for the ALB from now on, requests in flight finish", "step", "drain")
		if err := stopContainer(ctx, eng, nginx, "SIGQUIT", cfg.Lifecycle.DrainTimeout); err != nil {
			return err
		}
	}
	if server == nil {
		return nil
	}
	if nginx != nil && cfg.Lifecycle.DeregisterWait > 0 {
		a.log.Info("web: waiting for the ALB to mark this target unhealthy", "step", "drain", "wait", cfg.Lifecycle.DeregisterWait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(cfg.Lifecycle.DeregisterWait):
		}
	}
	return stopContainer(ctx, eng, server, "", cfg.Lifecycle.DrainTimeout)
}

// drainJobs stops the containers that run jobs with drain-timeout as their
// grace (their warm shutdown) and names any job that did not finish.
func (a *Agent) drainJobs(ctx context.Context, eng *engine.Engine, cfg config.Config, cs []engine.Container) error {
	if len(cs) == 0 {
		return nil
	}
	var hosts, names []string
	for _, c := range cs {
		names = append(names, c.Name)
		if in, err := eng.Docker.ContainerInspect(ctx, c.ID); err == nil && in.Config != nil {
			hosts = append(hosts, in.Config.Hostname)
		}
	}
	a.log.Info("workers: warm shutdown: they stop taking jobs and finish the running ones", "step", "drain",
		"containers", strings.Join(names, ","), "drain_timeout", cfg.Lifecycle.DrainTimeout)
	start := time.Now()
	errs := make([]error, len(cs))
	var wg sync.WaitGroup
	for i := range cs {
		wg.Go(func() { errs[i] = stopContainer(ctx, eng, &cs[i], "", cfg.Lifecycle.DrainTimeout) })
	}
	wg.Wait()
	outlived := time.Since(start) >= cfg.Lifecycle.DrainTimeout
	a.reportLostJobs(ctx, cfg, hosts, outlived)
	return errors.Join(errs...)
}

// reportLostJobs names the jobs the stopped workers were still in: their
// worker was killed at the drain timeout, so the job did not finish here.
func (a *Agent) reportLostJobs(ctx context.Context, cfg config.Config, hosts []string, outlived bool) {
	if f, err := compose.FamilyFor(cfg.Version); err == nil && f.Layout() == compose.Celery {
		if outlived {
			a.log.Error("a worker outlived the drain timeout and was killed; 8.x's Celery keeps no per-job registry the agent reads, so its task is not named: raise redash:drain-timeout",
				"step", "drain", "drain_timeout", cfg.Lifecycle.DrainTimeout)
		}
		return
	}
	r := a.scale.redis
	reader := queues.Open(queues.Conn{Addr: r.Addr, DB: r.DB, TLS: r.TLS, Username: r.Username, Password: r.Password.Reveal()})
	defer reader.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	jobs, err := reader.JobsOnHosts(rctx, hosts)
	if err != nil {
		a.log.Warn("could not read the workers' running jobs from Redis to name any the drain cut short", "step", "drain", "err", err)
		return
	}
	if len(jobs) == 0 {
		return
	}
	var lost []string
	for _, j := range jobs {
		lost = append(lost, j.Name())
	}
	slices.Sort(lost)
	a.log.Error(fmt.Sprintf("%d job(s) outlived the drain timeout and were killed with their worker: %s; they did not finish "+
		"(RQ moves them to its failed registry when their timeout passes): re-run those queries, and raise redash:drain-timeout if this recurs",
		len(jobs), strings.Join(lost, "; ")), "step", "drain", "drain_timeout", cfg.Lifecycle.DrainTimeout)
}

// stopContainer stops c with signal ("" = its stop signal), killing it
// after grace.
func stopContainer(ctx context.Context, eng *engine.Engine, c *engine.Container, signal string, grace time.Duration) error {
	secs := int(grace.Seconds())
	sctx, cancel := context.WithTimeout(ctx, grace+30*time.Second)
	defer cancel()
	if err := eng.Docker.ContainerStop(sctx, c.ID, container.StopOptions{Signal: signal, Timeout: &secs}); err != nil {
		return fmt.Errorf("stopping container %q for the drain: %w: stop it with `docker stop %s`", c.Name, err, c.Name)
	}
	return nil
}
