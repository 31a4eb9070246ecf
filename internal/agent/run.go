package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/engine"
)

// Notifier is the part of systemd's notify protocol `run` uses; a no-op off systemd.
type Notifier interface {
	Status(format string, args ...any)
	Ready()
	Stopping()
	ExtendTimeout(d time.Duration)
	StartWatchdog(ctx context.Context)
}

// stepBudget is how much start time each boot step asks systemd for
// (EXTEND_TIMEOUT_USEC): IMDS at boot, image pulls and migrations can be slow.
const stepBudget = 10 * time.Minute

// containerSettle is how long `run` waits after a container died or
// vanished before converging: Docker's own on-failure restart comes first.
const containerSettle = 5 * time.Second

// Run is the systemd entry point: converge, READY=1 once the server answers
// /ping, then keep converging every refresh interval (with splay) and
// whenever a Redash container dies or disappears. It returns nil on SIGTERM
// (ctx done) without stopping Redash: the containers belong to Docker.
func (a *Agent) Run(ctx context.Context, n Notifier) error {
	n.StartWatchdog(ctx)
	prev := a.o.Status
	a.o.Status = func(step string) {
		n.Status("%s", step)
		n.ExtendTimeout(stepBudget)
		if prev != nil {
			prev(step)
		}
	}

	boot := time.Now()
	a.timings = nil
	res, err := a.Up(ctx)
	if errors.Is(err, ErrNotConfigured) {
		a.log.Info("not configured: exiting cleanly", "step", "boot")
		n.Ready()
		n.Status("not configured: no redash: tags and no config file settings")
		return err
	}
	if err != nil {
		n.Status("failed: %s", firstLine(err.Error()))
		return err
	}
	a.log.Info("boot finished", append([]any{"step", "boot", "took", time.Since(boot).Round(time.Millisecond)}, a.timingAttrs()...)...)
	n.Ready()
	n.Status("ready: Redash %s converged (%d changes); next refresh in about %s", res.Config.Version, res.Plan.Mutations(), res.Config.Refresh)

	refresh := res.Config.Refresh
	project := res.Config.Project
	for {
		died := a.watchContainers(ctx, project)
		timer := time.NewTimer(splay(refresh))
		reason := ""
		select {
		case <-ctx.Done():
			timer.Stop()
			n.Stopping()
			a.log.Info("stopping: Redash keeps running under Docker", "step", "shutdown")
			return nil
		case <-timer.C:
			reason = "refresh"
		case name := <-died:
			timer.Stop()
			reason = "container " + name + " died or was removed"
			select {
			case <-time.After(containerSettle):
			case <-ctx.Done():
				continue
			}
		}
		a.log.Info("converging", "step", "reconverge", "reason", reason)
		a.timings = nil
		res2, err := a.Up(ctx)
		if err != nil {
			// The running containers stay as they are; the next tick tries again.
			a.log.Error("converge failed; containers left as they are", "step", "reconverge", "err", err)
			n.Status("degraded since %s: %s", time.Now().UTC().Format(time.RFC3339), firstLine(err.Error()))
			continue
		}
		refresh, project = res2.Config.Refresh, res2.Config.Project
		n.Status("ready: converged after %s (%d changes)", reason, res2.Plan.Mutations())
	}
}

// watchContainers reports the name of a project container that died or was
// destroyed. The subscription lives until ctx ends or one event arrives.
func (a *Agent) watchContainers(ctx context.Context, project string) <-chan string {
	out := make(chan string, 1)
	dc, err := engine.NewDockerClient()
	if err != nil {
		a.log.Warn("not watching containers", "err", err)
		return out
	}
	wctx, cancel := context.WithCancel(ctx)
	msgs, errs := dc.Events(wctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", engine.LabelProject+"="+project),
		filters.Arg("label", engine.LabelOneOff+"=False"),
		filters.Arg("event", string(events.ActionDie)),
		filters.Arg("event", string(events.ActionDestroy)),
	)})
	go func() {
		defer dc.Close()
		defer cancel()
		select {
		case m := <-msgs:
			out <- m.Actor.Attributes["name"]
		case err := <-errs:
			if ctx.Err() == nil {
				a.log.Warn("docker events stream ended; relying on the refresh timer", "err", err)
			}
		case <-ctx.Done():
		}
	}()
	return out
}

// splay spreads refreshes over ±20% so a fleet does not restart together
// after a secret rotation.
func splay(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// timingAttrs lists each phase's duration for the one boot summary line.
func (a *Agent) timingAttrs() []any {
	var out []any
	for _, t := range a.timings {
		out = append(out, strings.ReplaceAll(t.step, " ", "_"), t.took.Round(time.Millisecond).String())
	}
	return out
}

type timing struct {
	step string
	took time.Duration
}
