package systemd

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listen opens the unixgram socket systemd would own and points
// NOTIFY_SOCKET at it.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	// A short directory keeps the path under the 108-byte sun_path limit.
	dir := t.TempDir()
	if len(dir) > 90 {
		var err error
		if dir, err = os.MkdirTemp("", "sd"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	addr := &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"}
	conn, err := net.ListenUnixgram("unixgram", addr)
	if err != nil {
		t.Fatalf("listening on %q: %v", addr.Name, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", addr.Name)
	return conn
}

// recv reads one datagram or fails after a second.
func recv(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v", err)
	}
	return string(buf[:n])
}

func TestNotifications(t *testing.T) {
	tests := []struct {
		name string
		call func(n *Notifier)
		want string
	}{
		{"status", func(n *Notifier) { n.Status("fetching %d secrets", 4) }, "STATUS=fetching 4 secrets"},
		{"status newline cannot inject a field", func(n *Notifier) { n.Status("a\nREADY=1") }, "STATUS=a READY=1"},
		{"ready", func(n *Notifier) { n.Ready("ready: Redash is converged") }, "READY=1\nSTATUS=ready: Redash is converged"},
		{"stopping", (*Notifier).Stopping, "STOPPING=1\nSTATUS=stopping the agent; Redash containers keep running"},
		{"extend timeout", func(n *Notifier) { n.ExtendTimeout(90 * time.Second) }, "EXTEND_TIMEOUT_USEC=90000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := listen(t)
			n := New(nil)
			if !n.Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			tc.call(n)
			if got := recv(t, conn); got != tc.want {
				t.Errorf("datagram = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestExtendTimeoutNonPositiveSendsNothing(t *testing.T) {
	conn := listen(t)
	n := New(nil)
	n.ExtendTimeout(0)
	n.Status("marker")
	// The first datagram must be the marker: ExtendTimeout(0) sent nothing.
	if got := recv(t, conn); got != "STATUS=marker" {
		t.Errorf("first datagram = %q, want STATUS=marker", got)
	}
}

func TestWatchdogPingsAtHalfTheIntervalUntilCancelled(t *testing.T) {
	conn := listen(t)
	t.Setenv("WATCHDOG_USEC", strconv.Itoa(int((200 * time.Millisecond).Microseconds())))
	t.Setenv("WATCHDOG_PID", "")
	n := New(nil)
	if got := n.WatchdogInterval(); got != 200*time.Millisecond {
		t.Fatalf("WatchdogInterval() = %v, want 200ms", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	start := time.Now()
	n.StartWatchdog(ctx)
	for i := 0; i < 3; i++ {
		if got := recv(t, conn); got != "WATCHDOG=1" {
			t.Fatalf("ping %d = %q, want WATCHDOG=1", i, got)
		}
	}
	// Three pings at 0, 100ms and 200ms: well inside the 200ms+ budget
	// systemd would allow, and not a busy loop either.
	if el := time.Since(start); el < 150*time.Millisecond || el > 2*time.Second {
		t.Errorf("three pings took %v, want about 200ms (interval/2 apart)", el)
	}
	cancel()
	// Drain a ping that raced the cancel, then expect silence.
	time.Sleep(150 * time.Millisecond)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	buf := make([]byte, 64)
	for {
		if _, err := conn.Read(buf); err != nil {
			break
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if k, err := conn.Read(buf); err == nil {
		t.Errorf("watchdog still pinging after cancel: %q", buf[:k])
	}
}

func TestWatchdogForAnotherPIDIsIgnored(t *testing.T) {
	listen(t)
	t.Setenv("WATCHDOG_USEC", "1000000")
	t.Setenv("WATCHDOG_PID", "1")
	if got := New(nil).WatchdogInterval(); got != 0 {
		t.Errorf("WatchdogInterval() = %v for another process's watchdog, want 0", got)
	}
}

func TestOffSystemdEveryCallIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "1000")
	var logs bytes.Buffer
	n := New(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatalf("Enabled()=%v WatchdogInterval()=%v off systemd, want false, 0", n.Enabled(), n.WatchdogInterval())
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.Status("x")
	n.Ready("ready: Redash is converged; watching for drift and secret rotation")
	n.Stopping()
	n.ExtendTimeout(time.Minute)
	n.StartWatchdog(ctx)
	if logs.Len() != 0 {
		t.Errorf("off systemd the notifier logged: %s", logs.String())
	}
}

func TestSocketGoneIsLoggedNotFatal(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone"))
	var logs bytes.Buffer
	n := New(slog.New(slog.NewTextHandler(&logs, nil)))
	n.Status("secret-free status")
	n.Ready("ready: Redash is converged; watching for drift and secret rotation")
	out := logs.String()
	if strings.Count(out, "level=WARN") != 1 {
		t.Errorf("want exactly one warning for repeated send failures, got:\n%s", out)
	}
	if strings.Contains(out, "secret-free status") {
		t.Errorf("the status payload reached the log:\n%s", out)
	}
}
