package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/backoff"
)

// Wake is why WatchContainers ended its watch: a service container died or
// was destroyed, or the daemon answers again after an outage.
type Wake struct {
	// Container is the service container that died or was destroyed; ""
	// when DaemonBack is set.
	Container string
	// DaemonBack says the events stream ended (or the daemon did not answer
	// when the watch began) and the daemon answers again. Docker does not
	// start Redash at daemon start (restart policy on-failure), so only a
	// converge brings it back: the caller converges at once.
	DaemonBack bool
}

// WatchOptions tune one watch.
type WatchOptions struct {
	// DaemonDown says the caller last saw the daemon fail (a converge that
	// could not reach it): the watch probes it first and wakes as soon as it
	// answers, instead of waiting for an events stream that already missed
	// the daemon's return.
	DaemonDown bool
	// Delay is waited before the first probe of a failed daemon. A caller
	// that woke on DaemonBack again and again (an events endpoint that fails
	// while the daemon answers pings, a converge that keeps failing right
	// after the daemon's return) grows it, so that never becomes a busy
	// loop of converges.
	Delay time.Duration
}

// daemonProbe spaces the probes of a daemon that does not answer: short
// steps, because every second it is back but unprobed is a second Redash
// stays down (the target is serving again within 15 s of its return).
var daemonProbe = backoff.Policy{Base: 250 * time.Millisecond, Max: 2 * time.Second}

// WatchContainers reports why the project needs a converge: the name of a
// service container of the project that died or was destroyed (one-offs
// excluded), or that the daemon answers again after its events stream
// ended. When the stream fails it probes the daemon with backoff (logging
// each failed probe) and re-opens the stream, for as long as the watch
// lives. The watch lives until ctx ends, one Wake is sent or the returned
// stop is called.
func (e *Engine) WatchContainers(ctx context.Context, project string, o WatchOptions) (<-chan Wake, func()) {
	out := make(chan Wake, 1)
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		down := o.DaemonDown
		delay := o.Delay
		for wctx.Err() == nil {
			if down {
				if err := e.awaitDaemon(wctx, delay); err != nil {
					return // ctx ended
				}
				out <- Wake{DaemonBack: true}
				return
			}
			w, err := e.watchOnce(wctx, project)
			if wctx.Err() != nil {
				return
			}
			if err == nil {
				out <- w
				return
			}
			e.log().Warn("docker events stream ended; probing the daemon and converging as soon as it answers", "err", err)
			down = true
		}
	}()
	return out, cancel
}

// watchOnce opens one events stream and returns its first event, or why it
// ended.
func (e *Engine) watchOnce(ctx context.Context, project string) (Wake, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, errs := e.Docker.Events(sctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelProject+"="+project),
		filters.Arg("label", LabelOneOff+"="+oneOffFalse),
		filters.Arg("event", string(events.ActionDie)),
		filters.Arg("event", string(events.ActionDestroy)),
	)})
	select {
	case m := <-msgs:
		return Wake{Container: m.Actor.Attributes["name"]}, nil
	case err := <-errs:
		if err == nil {
			err = fmt.Errorf("closed by the daemon")
		}
		return Wake{}, err
	case <-ctx.Done():
		return Wake{}, ctx.Err()
	}
}

// awaitDaemon waits delay, then probes the daemon until it answers or ctx
// ends. It has no bound of its own: `run` waits for the daemon for as long
// as it runs, and its refresh timer (running alongside) still converges.
func (e *Engine) awaitDaemon(ctx context.Context, delay time.Duration) error {
	if delay > 0 {
		if err := backoff.Sleep(ctx, delay); err != nil {
			return err
		}
	}
	start := time.Now()
	for attempt := 1; ; attempt++ {
		host, err := e.probe(ctx)
		if err == nil {
			e.log().Info("docker engine answers again", "host", host, "attempts", attempt, "waited", time.Since(start).Round(time.Millisecond))
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := daemonProbe.Next(attempt)
		level := e.log().Debug
		if attempt == 1 || attempt%20 == 0 {
			level = e.log().Warn
		}
		level("docker engine does not answer; probing again", "host", host, "attempt", attempt, "next_in", d.Round(time.Millisecond), "err", err)
		if err := backoff.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// WaitDaemon waits until the Docker Engine answers, at most bound: at boot
// dockerd may still be starting (or restarting) when the agent runs, and
// failing at once would leave the freshly written files without containers
// until systemd restarts the unit. Each failed probe is logged with the
// bound, so the journal says how long the agent will wait.
func (e *Engine) WaitDaemon(ctx context.Context, bound time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	start := time.Now()
	var last error
	for attempt := 1; ; attempt++ {
		host, err := e.probe(wctx)
		if err == nil {
			if attempt > 1 {
				e.log().Info("[finished] waiting for the docker engine", "host", host, "attempts", attempt, "waited", time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		last = err
		d := daemonProbe.Next(attempt)
		if attempt == 1 {
			e.log().Warn("[started] waiting for the docker engine", "host", host, "bound", bound, "err", err)
		} else {
			e.log().Info("docker engine does not answer yet", "host", host, "attempt", attempt, "waited", time.Since(start).Round(time.Millisecond), "bound", bound, "err", err)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the docker engine at %q: %w", host, ctx.Err())
		}
		if backoff.Sleep(wctx, d) != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for the docker engine at %q: %w", host, ctx.Err())
			}
			e.log().Error("[failed] waiting for the docker engine", "host", host, "attempts", attempt, "bound", bound)
			return fmt.Errorf("waiting for the docker engine at %q: no answer within %s (%d attempts): %w: check `systemctl status docker` and DOCKER_HOST", host, bound, attempt, last)
		}
	}
}

// probeTimeout bounds one probe of the daemon: a daemon that accepts the
// connection and hangs (still starting, or a hung socket) must not hold a
// wait for CallTimeout per attempt.
const probeTimeout = 5 * time.Second

// probe asks the daemon for its version, bounded by probeTimeout.
func (e *Engine) probe(ctx context.Context) (host string, err error) {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	host = e.Docker.DaemonHost()
	if _, err := e.Docker.ServerVersion(pctx); err != nil {
		return host, fmt.Errorf("asking the docker engine at %q for its version: %w", host, err)
	}
	return host, nil
}
