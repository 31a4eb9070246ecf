package agent

import (
	"context"
	"errors"
	"fmt"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"math/rand/v2"
	"strings"
	"sync"
	"time"
)

// Notifier is the part of systemd's notify protocol `run` uses; a no-op off systemd.
type Notifier interface {
	Status(format string, args ...any)
	Ready(status string)
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

// shutdownGrace is how long a converge already under way at SIGTERM may go
// on. Cancelling it at once could fall between stopping a container and
// creating its replacement and leave that service down until the agent
// starts again, which breaks "stopping the agent never stops Redash". It
// stays under systemd's default TimeoutStopSec (90s); after it the converge
// is cancelled, which is still better than systemd's SIGKILL at any point.
const shutdownGrace = 60 * time.Second

// Run is the systemd entry point: converge, READY=1 once the server answers
// /ping, then keep converging every refresh interval (with splay) and
// whenever a Redash container dies or disappears. It returns nil on SIGTERM
// (ctx done) without stopping Redash: the containers belong to Docker. A
// converge under way at SIGTERM is finished first (see shutdownGrace).
func (a *Agent) Run(ctx context.Context, n Notifier) error {
	n.StartWatchdog(ctx)
	var stopOnce sync.Once
	stopping := func() {
		stopOnce.Do(func() {
			n.Stopping()
			a.log.Info("stopping: Redash keeps running under Docker", "step", "shutdown")
		})
	}
	prev := a.o.Status
	a.o.Status = func(step string) {
		n.Status("%s", step)
		// After SIGTERM the extension would stretch the stop timeout,
		// and shutdownGrace already bounds what is left.
		if ctx.Err() == nil {
			n.ExtendTimeout(stepBudget)
		}
		if prev != nil {
			prev(step)
		}
	}

	boot := time.Now()
	res, err := a.converge(ctx, n, stopping)
	if errors.Is(err, ErrNotConfigured) {
		a.log.Info("not configured: exiting cleanly", "step", "boot")
		n.Ready("not configured: no redash: tags and no config file settings; nothing to do")
		return err
	}
	if ctx.Err() != nil {
		// Stopped during boot: no READY, and not a failure of the unit.
		if err != nil {
			a.log.Warn("boot converge interrupted by shutdown; the next start converges again", "step", "shutdown", "err", err)
		}
		stopping()
		return nil
	}
	if err != nil {
		n.Status("failed: %s", firstLine(err.Error()))
		return err
	}
	a.log.Info("boot finished", append([]any{"step", "boot", "took", time.Since(boot).Round(time.Millisecond)}, a.timingAttrs()...)...)
	n.Ready(fmt.Sprintf("ready: Redash %s converged (%d changes); next refresh in about %s", res.Config.Version, res.Plan.Mutations(), res.Config.Refresh))

	refresh := res.Config.Refresh
	project := res.Config.Project
	// From here on a Secrets Manager outage only delays a refresh: the
	// running stack stays as it is, so a fetch gives up sooner.
	a.secretsPolicy = secrets.Refresh
	for {
		died, unwatch := a.watchContainers(ctx, project)
		timer := time.NewTimer(splay(refresh))
		reason := ""
		select {
		case <-ctx.Done():
		case <-timer.C:
			reason = "refresh"
		case name := <-died:
			reason = "container " + name + " died or was removed"
			select {
			case <-time.After(containerSettle):
			case <-ctx.Done():
			}
		}
		// Each wait has its own events subscription: ending it here keeps
		// one open stream (and goroutine) per agent, not one per refresh.
		unwatch()
		timer.Stop()
		if ctx.Err() != nil {
			stopping()
			return nil
		}
		a.log.Info("converging", "step", "reconverge", "reason", reason)
		res2, err := a.converge(ctx, n, stopping)
		if ctx.Err() != nil {
			// Stopping: no "ready" after STOPPING=1; the loop's top returns.
			if err != nil {
				a.log.Warn("converge interrupted by shutdown; containers left as they are", "step", "reconverge", "err", err)
			}
			continue
		}
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

// converge runs Up once under a context that outlives ctx by shutdownGrace:
// on SIGTERM it tells systemd STOPPING=1 and how long the stop may take, and
// lets the converge under way finish.
func (a *Agent) converge(ctx context.Context, n Notifier, stopping func()) (UpResult, error) {
	uctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		stopping()
		n.ExtendTimeout(shutdownGrace)
		a.log.Info("finishing the converge under way before stopping", "step", "shutdown", "grace", shutdownGrace)
		t := time.AfterFunc(shutdownGrace, cancel)
		<-uctx.Done()
		t.Stop()
	})
	defer stop()
	a.timings = nil
	return a.Up(uctx)
}

// watchContainers reports the name of a project container that died or was
// destroyed. The subscription lives until ctx ends, one event arrives or
// the returned stop is called.
func (a *Agent) watchContainers(ctx context.Context, project string) (<-chan string, func()) {
	eng, err := a.docker()
	if err != nil {
		a.log.Warn("not watching containers", "err", err)
		return make(chan string), func() {}
	}
	died, stop := eng.WatchContainers(ctx, project)
	return died, func() {
		stop()
		_ = eng.Close()
	}
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
