package systemd

import (
	"strconv"
	"testing"
	"time"
)

// TestWatchdogSendsOnePingPerCall: `run` decides when to ping (only while
// its loop makes progress); Watchdog sends exactly one WATCHDOG=1 per call
// and nothing on its own.
func TestWatchdogSendsOnePingPerCall(t *testing.T) {
	conn := listen(t)
	t.Setenv("WATCHDOG_USEC", strconv.Itoa(int((200 * time.Millisecond).Microseconds())))
	t.Setenv("WATCHDOG_PID", "")
	n := New(nil)
	n.Watchdog()
	if got := recv(t, conn); got != "WATCHDOG=1" {
		t.Fatalf("got %q, want WATCHDOG=1", got)
	}
	// No goroutine pings behind the caller's back.
	_ = conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 64)
	if k, err := conn.Read(buf); err == nil {
		t.Errorf("unexpected datagram without a call: %q", buf[:k])
	}
}

// TestWatchdogWithoutWatchdogSecSendsNothing: a unit without WatchdogSec
// gets no pings.
func TestWatchdogWithoutWatchdogSecSendsNothing(t *testing.T) {
	conn := listen(t)
	t.Setenv("WATCHDOG_USEC", "")
	n := New(nil)
	n.Watchdog()
	n.Status("marker")
	if got := recv(t, conn); got != "STATUS=marker" {
		t.Errorf("first datagram %q, want the marker: Watchdog sent something without WatchdogSec", got)
	}
}
