package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/client"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// Notifier is the part of systemd's notify protocol `run` uses; a no-op off systemd.
type Notifier interface {
	Status(format string, args ...any)
	Ready(status string)
	Stopping()
	ExtendTimeout(d time.Duration)
	// WatchdogInterval is the unit's WatchdogSec, 0 when it has none.
	WatchdogInterval() time.Duration
	// Watchdog sends one WATCHDOG=1.
	Watchdog()
}

// stepBudget is how much start time each boot step asks systemd for
// (EXTEND_TIMEOUT_USEC): IMDS at boot, image pulls and migrations can be slow.
const stepBudget = 10 * time.Minute

// stepBudgetFor is the start time one boot step asks for: converging the
// containers may also wait out a worker's whole stop grace (a recreate at
// boot, e.g. after the agent was upgraded).
func stepBudgetFor(step string) time.Duration {
	if step == stepConvergeContainers {
		return stepBudget + config.MaxWorkerStopGrace
	}
	return stepBudget
}

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
	live := newProgress(time.Now)
	if every := n.WatchdogInterval() / 2; every > 0 {
		wctx, stopWatchdog := context.WithCancel(context.WithoutCancel(ctx))
		defer stopWatchdog()
		t := time.NewTicker(every)
		defer t.Stop()
		go a.watchdog(wctx, n, live, t.C)
	}
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
			n.ExtendTimeout(stepBudgetFor(step))
		}
		if prev != nil {
			prev(step)
		}
	}

	// run keeps the 8.x scheduler lease across converges; a scheduler must
	// not outlive it, so every return stops this instance's scheduler and
	// releases the lease (lease.go). Every other container keeps running.
	a.sched = &schedulerLease{mode: leaseKeep, log: a.log}
	defer a.releaseLease(ctx)
	defer a.closeWatch()

	boot := time.Now()
	res, err := a.converge(ctx, n, stopping, live, "boot")
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
	ready := fmt.Sprintf("ready: Redash %s converged (%d changes); next refresh in about %s", res.Config.Version, res.Plan.Mutations(), res.Config.Refresh)
	if res.KeysNote != "" {
		ready += "; " + res.KeysNote
	}
	n.Ready(ready)

	refresh := res.Config.Refresh
	project := res.Config.Project
	// From here on a Secrets Manager outage only delays a refresh: the
	// running stack stays as it is, so a fetch gives up sooner.
	a.secretsPolicy = secrets.Refresh
	// dockerDown: the last converge could not reach the daemon, so the next
	// watch probes it and converges as soon as it answers. flaps counts the
	// daemon-back wakes in a row whose converge failed anyway; it spaces the
	// next ones (see engine.WatchOptions.Delay).
	dockerDown, flaps := false, 0
	for {
		live.waiting()
		wake, unwatch := a.watchContainers(ctx, project, engine.WatchOptions{DaemonDown: dockerDown, Delay: flapDelay(flaps)})
		timer := time.NewTimer(splay(refresh))
		reason := ""
		daemonBack := false
		// The 8.x scheduler lease is looked at between converges without
		// ending this wait (its refresh timer and its watch).
		leaseTimer := time.NewTimer(time.Hour)
		// The fast look for a changed secret or cluster record (watch.go).
		changes := time.NewTicker(changePoll)
	wait:
		for {
			var leaseC <-chan time.Time
			if every := a.sched.interval(); every > 0 {
				leaseTimer.Reset(every) // Go 1.23 timers: no stale tick after Reset
				leaseC = leaseTimer.C
			}
			select {
			case <-ctx.Done():
				break wait
			case <-timer.C:
				reason = "refresh"
				break wait
			case w := <-wake:
				if w.DaemonBack {
					// Docker does not start Redash at daemon start (restart
					// policy on-failure): converge now, not at the next refresh.
					reason, daemonBack = "the docker engine answers again", true
					break wait
				}
				reason = "container " + w.Container + " died or was removed"
				_ = backoff.Sleep(ctx, containerSettle) // a stop ends the wait; the loop checks ctx next
				break wait
			case <-changes.C:
				if why := a.pollChanges(ctx); why != "" {
					reason = why
					break wait
				}
			case <-leaseC:
				// Gaining or losing the lease converges at once.
				if why := a.pollLease(ctx); why != "" {
					reason = why
					break wait
				}
			}
		}
		// Each wait has its own events subscription: ending it here keeps
		// one open stream (and goroutine) per agent, not one per refresh,
		// and the converge's own stops and removals wake nobody.
		unwatch()
		timer.Stop()
		leaseTimer.Stop()
		changes.Stop()
		if ctx.Err() != nil {
			stopping()
			return nil
		}
		a.log.Info("converging", "step", "reconverge", "reason", reason)
		res2, err := a.converge(ctx, n, stopping, live, reason)
		if ctx.Err() != nil {
			// Stopping: no "ready" after STOPPING=1; the loop's top returns.
			if err != nil {
				a.log.Warn("converge interrupted by shutdown; containers left as they are", "step", "reconverge", "err", err)
			}
			continue
		}
		if err != nil {
			// The running containers stay as they are; the next tick (or the
			// daemon's return) tries again.
			dockerDown = client.IsErrConnectionFailed(err)
			if daemonBack {
				flaps++
			}
			a.log.Error("converge failed; containers left as they are", "step", "reconverge", "err", err, "docker_unreachable", dockerDown)
			n.Status("degraded since %s: %s", time.Now().UTC().Format(time.RFC3339), firstLine(err.Error()))
			continue
		}
		dockerDown, flaps = false, 0
		refresh, project = res2.Config.Refresh, res2.Config.Project
		if res2.KeysNote != "" {
			n.Status("ready: converged after %s (%d changes); %s", reason, res2.Plan.Mutations(), res2.KeysNote)
			continue
		}
		n.Status("ready: converged after %s (%d changes)", reason, res2.Plan.Mutations())
	}
}

// flapPolicy spaces daemon-back converges that keep failing (see flaps).
var flapPolicy = backoff.Policy{Base: 2 * time.Second, Max: 2 * time.Minute}

func flapDelay(flaps int) time.Duration {
	if flaps == 0 {
		return 0
	}
	return flapPolicy.Next(flaps)
}

// converge runs Up once under a context that outlives ctx by shutdownGrace:
// on SIGTERM it tells systemd STOPPING=1 and how long the stop may take, and
// lets the converge under way finish.
func (a *Agent) converge(ctx context.Context, n Notifier, stopping func(), live *progress, why string) (UpResult, error) {
	// ConvergeDeadline bounds the converge even when nothing stops it; the
	// watchdog pings only until then (plus watchdogSlack), so a converge
	// stuck past it where a context cannot reach (a syscall, a deadlock)
	// gets the agent restarted by systemd.
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ConvergeDeadline)
	defer cancel()
	live.converging(why, ConvergeDeadline)
	defer live.waiting()
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

// watchContainers reports why the project needs a converge (see
// engine.WatchContainers). The watch lives until ctx ends, one wake is sent
// or the returned stop is called.
func (a *Agent) watchContainers(ctx context.Context, project string, o engine.WatchOptions) (<-chan engine.Wake, func()) {
	eng, err := a.docker()
	if err != nil {
		a.log.Warn("not watching containers", "err", err)
		return make(chan engine.Wake), func() {}
	}
	wake, stop := eng.WatchContainers(ctx, project, o)
	return wake, func() {
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

// ConvergeDeadline bounds one converge of `run`: the longest legitimate one
// adds up a Secrets Manager fetch (1 min at boot), the wait for another
// agent's lock (LockWait, 5 min), an image pull (10 min), the migrations and
// the readiness wait (2 min), with room to spare, plus the longest stop
// grace a worker may have (redash:worker-stop-grace, at most 1 h), which a
// recreate waits out.
const ConvergeDeadline = 30*time.Minute + config.MaxWorkerStopGrace

// watchdogSlack is how long past ConvergeDeadline the watchdog still pings:
// a cancelled converge may still remove a one-off or release a lock, each
// bounded by its own call timeout.
const watchdogSlack = time.Minute

// progress is what the watchdog knows of run's loop: either a converge is
// under way, with its deadline, or the loop waits for its next wake.
type progress struct {
	now func() time.Time

	mu       sync.Mutex
	what     string    // why the converge under way runs
	deadline time.Time // zero while the loop waits
	warned   bool      // the stop of the pings was logged
}

func newProgress(now func() time.Time) *progress { return &progress{now: now} }

func (p *progress) converging(what string, budget time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.what, p.deadline, p.warned = what, p.now().Add(budget+watchdogSlack), false
}

func (p *progress) waiting() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.what, p.deadline, p.warned = "", time.Time{}, false
}

// alive says whether the loop makes progress: it waits for its next wake,
// or its converge is still within its deadline. first is true the first
// time it is not alive since the converge began.
func (p *progress) alive() (ok bool, what string, over time.Duration, first bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.deadline.IsZero() {
		return true, "", 0, false
	}
	now := p.now()
	if now.Before(p.deadline) {
		return true, p.what, 0, false
	}
	first = !p.warned
	p.warned = true
	return false, p.what, now.Sub(p.deadline), first
}

// watchdog pings systemd on every tick while the loop is alive and stops
// pinging while it is not, so a loop wedged past its converge's deadline
// gets the agent restarted (WatchdogSec in the unit) instead of looking
// healthy forever. Pings resume if the loop comes back.
func (a *Agent) watchdog(ctx context.Context, n Notifier, p *progress, tick <-chan time.Time) {
	a.watchdogTick(n, p)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			a.watchdogTick(n, p)
		}
	}
}

func (a *Agent) watchdogTick(n Notifier, p *progress) {
	ok, what, over, first := p.alive()
	if ok {
		n.Watchdog()
		return
	}
	if first {
		a.log.Error("converge stuck past its deadline; no longer pinging the systemd watchdog, so systemd restarts the agent (Redash keeps running under Docker)",
			"step", "watchdog", "converge", what, "deadline", ConvergeDeadline+watchdogSlack, "over_by", over.Round(time.Second))
	}
}
