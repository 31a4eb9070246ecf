// Package systemd talks to systemd's notify socket (sd_notify): READY, STATUS,
// STOPPING, EXTEND_TIMEOUT_USEC and the watchdog keep-alive of a Type=notify
// unit.
//
// Off systemd (no NOTIFY_SOCKET, e.g. `redash-agent up` in a shell or a test)
// every call is a no-op. A failed notification is logged and never returned:
// the agent's job is to run Redash, and a lost status line must not stop it.
// The only side effect is datagrams written to the socket named by
// NOTIFY_SOCKET, plus one goroutine while StartWatchdog's context lives.
// Whether to ping the watchdog is the caller's decision (Watchdog): only the
// caller knows whether its work makes progress.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends state changes to systemd. The zero value is not usable; use
// New. A Notifier is safe for concurrent use.
type Notifier struct {
	logger   *slog.Logger
	socket   string        // NOTIFY_SOCKET at New; "" means off systemd
	watchdog time.Duration // WATCHDOG_USEC at New; 0 means the unit has no WatchdogSec

	mu        sync.Mutex
	warnedErr bool // log the first send failure at Warn, the rest at Debug
}

// New reads NOTIFY_SOCKET and WATCHDOG_USEC once. It does not unset them:
// the agent starts no child processes that could confuse systemd with them,
// and keeping them lets a later New (tests, a re-exec) see the same socket.
func New(logger *slog.Logger) *Notifier {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	n := &Notifier{logger: logger, socket: os.Getenv("NOTIFY_SOCKET")}
	if n.socket == "" {
		return n
	}
	// SdWatchdogEnabled also honours WATCHDOG_PID, so a watchdog meant for
	// another process (a wrapper script) is not fed by us.
	wd, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		logger.Warn("ignoring the systemd watchdog setting: check WatchdogSec= in redash-agent.service",
			"WATCHDOG_USEC", os.Getenv("WATCHDOG_USEC"), "err", err)
	}
	n.watchdog = wd
	return n
}

// Enabled reports whether a notify socket was found, i.e. whether the agent
// runs as a Type=notify systemd unit.
func (n *Notifier) Enabled() bool { return n != nil && n.socket != "" }

// Status sets the one-line STATUS= that `systemctl status redash-agent` shows,
// so an operator sees which boot step the agent is in. It must never contain a
// secret: the status is world-readable over D-Bus.
func (n *Notifier) Status(format string, args ...any) {
	n.send(statusLine(fmt.Sprintf(format, args...)))
}

// Ready tells systemd the start is complete (READY=1), with the status that
// says why: Redash converged and healthy, or nothing to configure here. It
// releases units ordered After=redash-agent.service and ends the start timeout.
func (n *Notifier) Ready(status string) {
	n.send(daemon.SdNotifyReady + "\n" + statusLine(status))
}

// Stopping tells systemd the agent is shutting down (STOPPING=1). Stopping the
// agent leaves the Redash containers running; the status says so.
func (n *Notifier) Stopping() {
	n.send(daemon.SdNotifyStopping + "\n" + statusLine("stopping the agent; Redash containers keep running"))
}

// ExtendTimeout asks systemd for d more time in the current start or stop
// phase (EXTEND_TIMEOUT_USEC, systemd >= 236). Call it before each wait that
// can outlast TimeoutStartSec on a slow boot: IMDS, the Docker daemon, image
// pulls, migrations. Older systemd ignores the field.
func (n *Notifier) ExtendTimeout(d time.Duration) {
	if d <= 0 {
		return
	}
	n.send("EXTEND_TIMEOUT_USEC=" + strconv.FormatInt(d.Microseconds(), 10))
}

// Watchdog sends one WATCHDOG=1 keep-alive. `run` calls it from its own
// check of the loop's progress (every WatchdogInterval/2, and only while the
// loop is alive), so a wedged loop stops the pings and systemd restarts the
// agent. A no-op when the unit asks for no watchdog or off systemd.
func (n *Notifier) Watchdog() {
	if n.WatchdogInterval() <= 0 {
		return
	}
	n.send(daemon.SdNotifyWatchdog)
}

// StartWatchdog sends WATCHDOG=1 at half the unit's WatchdogSec until ctx is
// done, as sd_watchdog_enabled(3) recommends. It returns at once when the unit
// asks for no watchdog or off systemd. The pings come from their own goroutine,
// so they only prove the process is scheduled, not that it makes progress:
// `run` does not use it (it pings through Watchdog while its loop is alive).
func (n *Notifier) StartWatchdog(ctx context.Context) {
	if !n.Enabled() || n.watchdog <= 0 {
		return
	}
	every := n.watchdog / 2
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		n.send(daemon.SdNotifyWatchdog)
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				n.send(daemon.SdNotifyWatchdog)
			}
		}
	}()
}

func (n *Notifier) send(state string) {
	if !n.Enabled() {
		return
	}
	// daemon.SdNotify reads NOTIFY_SOCKET itself, which is why New must not
	// unset it.
	sent, err := daemon.SdNotify(false, state)
	if err == nil && sent {
		return
	}
	if err == nil {
		err = errors.New("NOTIFY_SOCKET was unset after start")
	}
	n.mu.Lock()
	first := !n.warnedErr
	n.warnedErr = true
	n.mu.Unlock()
	level := slog.LevelDebug
	if first {
		level = slog.LevelWarn
	}
	// Only the field name is logged: a STATUS line is ours, but keeping the
	// payload out of logs keeps this path obviously secret-free.
	n.logger.Log(context.Background(), level, "notifying systemd failed; continuing without it",
		"socket", n.socket, "field", fieldName(state), "err", err)
}

// statusLine keeps STATUS= on one line: a newline would start a new
// assignment and could smuggle READY=1 or similar into the message.
func statusLine(s string) string {
	s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	return "STATUS=" + s
}

func fieldName(state string) string {
	if i := strings.IndexByte(state, '='); i >= 0 {
		return state[:i]
	}
	return state
}

// WatchdogInterval is the unit's WatchdogSec (0 when none, off systemd, or
// when the watchdog is meant for another process); pings go at half of it.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil || !n.Enabled() {
		return 0
	}
	return n.watchdog
}
