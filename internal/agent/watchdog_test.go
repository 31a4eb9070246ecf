package agent

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// fakeNotifier counts watchdog pings; the rest of the protocol is ignored.
type fakeNotifier struct {
	mu    sync.Mutex
	pings int
}

func (f *fakeNotifier) Status(string, ...any)           {}
func (f *fakeNotifier) Ready(string)                    {}
func (f *fakeNotifier) Stopping()                       {}
func (f *fakeNotifier) ExtendTimeout(time.Duration)     {}
func (f *fakeNotifier) WatchdogInterval() time.Duration { return 2 * time.Minute }
func (f *fakeNotifier) Watchdog()                       { f.mu.Lock(); f.pings++; f.mu.Unlock() }
func (f *fakeNotifier) count() int                      { f.mu.Lock(); defer f.mu.Unlock(); return f.pings }

// fakeClock is moved by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestWatchdogMeansProgress: the watchdog pings while run's loop waits for
// its next wake and while a converge is within its deadline, stops pinging
// (and says so once) when a converge is stuck past it, so systemd restarts
// the agent, and pings again once the loop moves on.
func TestWatchdogMeansProgress(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	logs := &testenv.SyncBuffer{}
	a := &Agent{log: slog.New(slog.NewTextHandler(logs, nil))}
	n := &fakeNotifier{}
	p := newProgress(clock.Now)
	tick := func(times int, step time.Duration) {
		for range times {
			a.watchdogTick(n, p)
			clock.advance(step)
		}
	}
	every := n.WatchdogInterval() / 2

	tick(10, every) // waiting for the next refresh: alive however long
	if got := n.count(); got != 10 {
		t.Fatalf("pings while waiting = %d, want 10", got)
	}

	p.converging("refresh", ConvergeDeadline)
	ticksInDeadline := int((ConvergeDeadline + watchdogSlack) / every)
	tick(ticksInDeadline, every) // a slow converge, still within its deadline
	if got := n.count(); got != 10+ticksInDeadline {
		t.Fatalf("pings during a converge within its deadline = %d, want %d", got-10, ticksInDeadline)
	}

	tick(5, every) // stuck past the deadline: silence
	if got := n.count(); got != 10+ticksInDeadline {
		t.Fatalf("watchdog pinged %d times for a converge stuck past its deadline, want 0", got-10-ticksInDeadline)
	}
	if c := strings.Count(logs.String(), "converge stuck past its deadline"); c != 1 {
		t.Errorf("the stop of the pings was logged %d times, want once; logs:\n%s", c, logs.String())
	}
	if !strings.Contains(logs.String(), "converge=refresh") {
		t.Errorf("the log line does not say which converge is stuck:\n%s", logs.String())
	}

	p.waiting() // the converge ended after all: pings resume
	tick(1, every)
	if got := n.count(); got != 11+ticksInDeadline {
		t.Errorf("no ping after the loop moved on")
	}
}

// TestWatchdogLoopStopsPings drives the watchdog goroutine Run starts,
// through its ticker channel: a converge that never returns stops the pings
// once its deadline has passed.
func TestWatchdogLoopStopsPings(t *testing.T) {
	clock := &fakeClock{now: time.Now()}
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	n := &fakeNotifier{}
	p := newProgress(clock.Now)
	ticks := make(chan time.Time)
	go a.watchdog(t.Context(), n, p, ticks)
	// ticks is unbuffered: a send returns once the previous tick was handled.
	send := func(k int) {
		for range k {
			ticks <- time.Now()
		}
	}
	p.converging("boot", time.Second)
	send(4)
	if got := n.count(); got < 4 { // one ping at start, then one per handled tick
		t.Fatalf("pings within the deadline = %d, want at least 4", got)
	}
	clock.advance(time.Second + watchdogSlack)
	send(1) // everything sent before the deadline passed is handled now
	base := n.count()
	send(5)
	if got := n.count(); got != base {
		t.Errorf("%d pings after the converge passed its deadline, want none", got-base)
	}
}
