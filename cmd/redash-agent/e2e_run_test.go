package main

// End-to-end tests of `run`, the systemd service: the built binary under a
// fake notify socket (a unixgram socket the test reads, as systemd would),
// against ec2-metadata-mock, moto_server, the host's PostgreSQL and the real
// Docker Engine.

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// notification is one sd_notify datagram and when it arrived.
type notification struct {
	at   time.Time
	msg  string
	seq  int
	vars map[string]string
}

// notifySocket plays systemd's side of NOTIFY_SOCKET: it records every
// datagram in arrival order.
type notifySocket struct {
	path string
	conn *net.UnixConn

	mu   sync.Mutex
	got  []notification
	more chan struct{} // closed and replaced on every datagram
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	// sun_path holds 108 bytes: t.TempDir() under a long test name may not fit.
	dir, err := os.MkdirTemp("", "sdn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ns := &notifySocket{path: filepath.Join(dir, "notify"), more: make(chan struct{})}
	ns.conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns.path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listening on the fake notify socket: %v", err)
	}
	t.Cleanup(func() { ns.conn.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := ns.conn.Read(buf)
			if err != nil {
				return // closed by Cleanup
			}
			msg := string(buf[:n])
			vars := map[string]string{}
			for _, line := range strings.Split(msg, "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					vars[k] = v
				}
			}
			ns.mu.Lock()
			ns.got = append(ns.got, notification{at: time.Now(), msg: msg, seq: len(ns.got), vars: vars})
			close(ns.more)
			ns.more = make(chan struct{})
			ns.mu.Unlock()
		}
	}()
	return ns
}

func (ns *notifySocket) all() []notification {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return append([]notification(nil), ns.got...)
}

// waitFor returns the first notification at index >= from that matches, or
// fails the test after timeout (or when exited closes, the process having
// ended without sending it).
func (ns *notifySocket) waitFor(t *testing.T, what string, from int, timeout time.Duration, exited <-chan struct{}, match func(notification) bool) notification {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ns.mu.Lock()
		for _, n := range ns.got[min(from, len(ns.got)):] {
			if match(n) {
				ns.mu.Unlock()
				return n
			}
		}
		more := ns.more
		ns.mu.Unlock()
		select {
		case <-more:
		case <-exited:
			// One last look: the datagram may have raced the exit.
			time.Sleep(100 * time.Millisecond)
			for _, n := range ns.all()[min(from, len(ns.all())):] {
				if match(n) {
					return n
				}
			}
			t.Fatalf("the agent exited before sending %s; notifications:\n%s", what, ns.dump())
		case <-deadline.C:
			t.Fatalf("no %s within %v; notifications:\n%s", what, timeout, ns.dump())
		}
	}
}

func (ns *notifySocket) dump() string {
	var b strings.Builder
	for _, n := range ns.all() {
		fmt.Fprintf(&b, "  %s %q\n", n.at.Format("15:04:05.000"), n.msg)
	}
	return b.String()
}

// lockedBuffer collects a child's output while the test reads it.
type lockedBuffer = testenv.SyncBuffer

// agentProc is `redash-agent run` in the background.
type agentProc struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	err    error // valid after exited is closed
}

// startRun starts `run` with the same flags and environment as fixture.run,
// plus NOTIFY_SOCKET. The process is killed in Cleanup whatever happened.
func startRun(t *testing.T, f *fixture, socket string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(agentBinary(t), append([]string{"--dir", f.dir, "--state-dir", filepath.Join(filepath.Dir(f.dir), "state"), "--config", f.config, "run"}, args...)...)
	cmd.Env = cleanEnv(
		"AWS_EC2_METADATA_SERVICE_ENDPOINT="+f.imds,
		"AWS_ENDPOINT_URL_SECRETS_MANAGER="+f.moto.Endpoint,
		"AWS_ENDPOINT_URL_CLOUDWATCH="+f.moto.Endpoint, // the backlog metrics
		"NOTIFY_SOCKET="+socket,
	)
	p := &agentProc{cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redash-agent run: %v", err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("redash-agent run output:\n%s", p.out.Bytes())
		}
	})
	return p
}

// pingProbe asks the server's /ping from the host, as often as it can, and
// remembers the last failed attempt and the first answer.
type pingProbe struct {
	mu          sync.Mutex
	failures    int
	lastFailure time.Time // when the last failed request was sent
	firstAnswer time.Time // when the first answered request returned
}

func startPingProbe(t *testing.T, port int, stop <-chan struct{}, limit time.Duration) *pingProbe {
	p := &pingProbe{}
	// No keep-alive: every probe is a new connection, as a fresh client
	// (an ALB health check) would make.
	hc := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
	url := fmt.Sprintf("http://127.0.0.1:%d/ping", port)
	go func() {
		end := time.Now().Add(limit)
		for time.Now().Before(end) {
			select {
			case <-stop:
				return
			default:
			}
			sent := time.Now()
			resp, err := hc.Get(url)
			ok := err == nil && resp.StatusCode == http.StatusOK
			if resp != nil {
				resp.Body.Close()
			}
			p.mu.Lock()
			if ok {
				p.firstAnswer = time.Now()
				p.mu.Unlock()
				return
			}
			p.failures++
			p.lastFailure = sent
			p.mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return p
}

func (p *pingProbe) state() (failures int, lastFailure, firstAnswer time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failures, p.lastFailure, p.firstAnswer
}

// changesIn reads N from a STATUS like "ready: converged after refresh (N changes)".
func changesIn(status string) int {
	i := strings.LastIndex(status, "(")
	if i < 0 {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSuffix(status[i+1:], ")"), " changes"))
	if err != nil {
		return -1
	}
	return n
}

func TestRunUnderSystemd(t *testing.T) {
	s := newStack(t)
	ns := newNotifySocket(t)

	stopProbe := make(chan struct{})
	defer close(stopProbe)
	probe := startPingProbe(t, s.serverPort, stopProbe, 4*time.Minute)
	p := startRun(t, s.fixture, ns.path, "--set", "refresh=10s")

	// 1. Boot: a STATUS per step, EXTEND_TIMEOUT_USEC, then READY=1 only
	// once the server answers.
	ready := ns.waitFor(t, "READY=1", 0, 4*time.Minute, p.exited, func(n notification) bool { return n.vars["READY"] == "1" })
	all := ns.all()
	var statuses []string
	extended := false
	for _, n := range all[:ready.seq] {
		if st, ok := n.vars["STATUS"]; ok {
			statuses = append(statuses, st)
		}
		if us, ok := n.vars["EXTEND_TIMEOUT_USEC"]; ok {
			if v, err := strconv.ParseInt(us, 10, 64); err != nil || v <= 0 {
				t.Errorf("EXTEND_TIMEOUT_USEC=%q is not a positive number of microseconds", us)
			}
			extended = true
		}
	}
	if !extended {
		t.Error("no EXTEND_TIMEOUT_USEC before READY=1: a slow boot would hit TimeoutStartSec")
	}
	wantSteps := []string{"resolve configuration", "fetch secrets", "render env file and compose file", "write " + s.dir, "ensure images", "migrate database", "converge containers"}
	next := 0
	for _, st := range statuses {
		if next < len(wantSteps) && st == wantSteps[next] {
			next++
		}
	}
	if next != len(wantSteps) {
		t.Errorf("STATUS lines before READY=1 miss step %q (want %q in order); got %q", wantSteps[next], wantSteps, statuses)
	}
	failures, lastFailure, firstAnswer := probe.state()
	if firstAnswer.IsZero() {
		// READY came; the server must answer now.
		time.Sleep(200 * time.Millisecond)
		failures, lastFailure, firstAnswer = probe.state()
	}
	switch {
	case failures == 0:
		t.Error("the server answered /ping before the agent started: the test cannot tell when READY came")
	case firstAnswer.IsZero():
		t.Errorf("READY=1 at %s but the server does not answer /ping on :%d", ready.at.Format("15:04:05.000"), s.serverPort)
	case !ready.at.After(lastFailure):
		// The server first answered between the last failed probe and the
		// first answered one; READY before the last failure is premature.
		t.Errorf("READY=1 at %s, but /ping still failed at %s (first answer %s)",
			ready.at.Format("15:04:05.000"), lastFailure.Format("15:04:05.000"), firstAnswer.Format("15:04:05.000"))
	}
	// The STATUS sent with or after READY says ready.
	after := ns.waitFor(t, "STATUS after READY=1", ready.seq, 10*time.Second, p.exited, func(n notification) bool { return n.vars["STATUS"] != "" })
	if !strings.HasPrefix(after.vars["STATUS"], "ready") {
		t.Errorf("STATUS with READY=1 is %q, want it to say ready", after.vars["STATUS"])
	}
	ids := s.containers(t)
	for _, svc := range []string{"server", "scheduler", "scheduled_worker", "adhoc_worker", "worker", "nginx"} {
		if ids[svc] == "" {
			t.Errorf("no container for %s after READY=1", svc)
		}
	}

	// 2. Rotate a secret: the look for new versions (secret-poll) or the
	// refresh recreates exactly the Redash services; nginx keeps its
	// container.
	mark := len(ns.all())
	s.moto.Put(t, "Redash/CookieSecret", "rotated-cookie-secret-value")
	ns.waitFor(t, "a converge that applied the rotation", mark, 40*time.Second, p.exited, func(n notification) bool {
		st := n.vars["STATUS"]
		return (strings.HasPrefix(st, "ready: converged after refresh") ||
			strings.HasPrefix(st, "ready: converged after secret cookie-secret has a new version")) && changesIn(st) > 0
	})
	rotated := s.containers(t)
	for svc, id := range ids {
		recreated := rotated[svc] != id
		if want := svc != "nginx"; recreated != want {
			t.Errorf("after rotating the cookie secret: %s recreated=%v, want %v", svc, recreated, want)
		}
	}
	if len(rotated) != len(ids) {
		t.Errorf("after rotation: containers %v, want the same services as %v", rotated, ids)
	}
	if got := s.serverEnv(t)["REDASH_COOKIE_SECRET"]; got != "rotated-cookie-secret-value" {
		t.Errorf("the server still has the old cookie secret after the refresh")
	}

	// 3. A worker vanishes: the agent puts it back under the same name.
	ctx := context.Background()
	mark = len(ns.all())
	worker := s.project + "-worker-1"
	oldWorker := rotated["worker"]
	if err := s.docker.ContainerKill(ctx, oldWorker, "KILL"); err != nil {
		t.Fatalf("killing %s: %v", worker, err)
	}
	if err := s.docker.ContainerRemove(ctx, oldWorker, container.RemoveOptions{Force: true}); err != nil {
		t.Fatalf("removing %s: %v", worker, err)
	}
	var back container.InspectResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := s.docker.ContainerInspect(ctx, worker)
		if err == nil && c.ID != oldWorker && c.State != nil && c.State.Running {
			back = c
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not come back within 30s (last inspect: %v); notifications:\n%s", worker, err, ns.dump())
		}
		time.Sleep(250 * time.Millisecond)
	}
	if back.Config.Labels["com.docker.compose.service"] != "worker" {
		t.Errorf("%s came back with service label %q", worker, back.Config.Labels["com.docker.compose.service"])
	}

	// The converge that brought it back reports itself.
	ns.waitFor(t, "the STATUS of the converge after the worker vanished", mark, 30*time.Second, p.exited, func(n notification) bool {
		return strings.HasPrefix(n.vars["STATUS"], "ready: converged after container "+worker)
	})

	// 4. SIGTERM: exit 0 within a few seconds, STOPPING=1, Redash keeps running.
	mark = len(ns.all())
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Fatalf("the agent did not exit within 10s of SIGTERM")
	}
	if p.err != nil {
		t.Errorf("the agent exited with %v after SIGTERM, want 0", p.err)
	}
	time.Sleep(100 * time.Millisecond) // datagrams sent just before exit
	stopping := false
	for _, n := range ns.all()[mark:] {
		if n.vars["STOPPING"] == "1" {
			stopping = true
		}
	}
	if !stopping {
		t.Errorf("no STOPPING=1 after SIGTERM; notifications:\n%s", ns.dump())
	}
	list, err := s.docker.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(
		filters.Arg("label", "com.docker.compose.project="+s.project),
		filters.Arg("label", "com.docker.compose.oneoff=False"),
		filters.Arg("status", "running"),
	)})
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != len(ids) {
		var names []string
		for _, c := range list {
			names = append(names, c.Names...)
		}
		t.Errorf("after stopping the agent %d containers run (%v), want all %d: stopping the agent must not stop Redash", len(list), names, len(ids))
	}
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", s.serverPort)); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("the server stopped answering /ping after the agent stopped: %v", err)
	} else {
		resp.Body.Close()
	}

	// 5. SIGTERM in the middle of a converge that recreates containers (a
	// package upgrade restarting the unit right after a rotation): the
	// agent finishes that converge before it exits, so no service is left
	// removed until the agent's next start.
	p2 := startRun(t, s.fixture, ns.path, "--set", "refresh=10s")
	mark = len(ns.all())
	ns.waitFor(t, "READY=1 of the second agent", mark, 2*time.Minute, p2.exited, func(n notification) bool { return n.vars["READY"] == "1" })
	s.moto.Put(t, "Redash/CookieSecret", "second-rotated-cookie-value")
	mark = len(ns.all())
	fetched := ns.waitFor(t, "a refresh fetching the rotated secret", mark, 40*time.Second, p2.exited, func(n notification) bool { return n.vars["STATUS"] == "fetch secrets" })
	ns.waitFor(t, "the converge step of that refresh", fetched.seq, 20*time.Second, p2.exited, func(n notification) bool { return n.vars["STATUS"] == "converge containers" })
	time.Sleep(300 * time.Millisecond) // inside the recreate of the server
	termAt := time.Now()
	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, n := range ns.all()[fetched.seq:] {
		if n.at.Before(termAt) && strings.HasPrefix(n.vars["STATUS"], "ready") {
			t.Fatalf("the converge had finished (%q) before SIGTERM: this case tests nothing; notifications:\n%s", n.vars["STATUS"], ns.dump())
		}
	}
	select {
	case <-p2.exited:
	case <-time.After(90 * time.Second): // systemd's default TimeoutStopSec
		t.Fatalf("the agent did not exit within 90s of SIGTERM during a converge")
	}
	if p2.err != nil {
		t.Errorf("the agent exited with %v after SIGTERM during a converge, want 0", p2.err)
	}
	t.Logf("SIGTERM during a converge: exited after %v", time.Since(termAt).Round(time.Millisecond))
	final := s.containers(t)
	for svc := range ids {
		c, err := s.docker.ContainerInspect(ctx, s.project+"-"+svc+"-1")
		if err != nil || c.State == nil || !c.State.Running {
			t.Errorf("after SIGTERM during a converge %s is not running (%v): the agent left Redash half converged", svc, err)
		}
	}
	if len(final) != len(ids) {
		t.Errorf("after SIGTERM during a converge: containers %v, want %d services", final, len(ids))
	}
	if got := s.serverEnv(t)["REDASH_COOKIE_SECRET"]; got != "second-rotated-cookie-value" {
		t.Errorf("the converge interrupted by SIGTERM did not finish: the server has an old cookie secret")
	}

	out := append(p.out.Bytes(), p2.out.Bytes()...)
	assertNoSecrets(t, out, "the output of run")
	assertNoSecrets(t, []byte(ns.dump()), "the notify datagrams")
	for _, v := range []string{"rotated-cookie-secret-value", "second-rotated-cookie-value"} {
		if bytes.Contains(out, []byte(v)) {
			t.Errorf("the output of run contains the rotated cookie secret %q", v)
		}
	}
	t.Logf("READY=1 %v after the last failed /ping; %d notifications", ready.at.Sub(lastFailure).Round(time.Millisecond), len(ns.all()))
}

// TestRunUnconfigured: an instance with no redash: tags and no config file
// (an Image Builder build) must not hold up its boot: `run` says READY and
// why it has nothing to do, and exits 0.
func TestRunUnconfigured(t *testing.T) {
	f := newFixture(t, map[string]string{"Name": "imagebuilder-build"})
	// A config file without settings: --config must name a file that
	// exists, and an empty one configures nothing, like the shipped one.
	if err := os.WriteFile(f.config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ns := newNotifySocket(t)
	start := time.Now()
	p := startRun(t, f, ns.path)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("run on an unconfigured instance did not exit within 30s")
	}
	if p.err != nil {
		t.Errorf("run on an unconfigured instance: %v, want exit 0", p.err)
	}
	time.Sleep(100 * time.Millisecond)
	got := ns.all()
	ready := -1
	for i, n := range got {
		if n.vars["READY"] == "1" {
			ready = i
			break
		}
	}
	if ready < 0 {
		t.Fatalf("no READY=1: systemd would wait for the start timeout; notifications:\n%s", ns.dump())
	}
	last := ""
	for _, n := range got[ready:] {
		if st, ok := n.vars["STATUS"]; ok {
			last = st
		}
	}
	if !strings.Contains(last, "not configured") {
		t.Errorf("last STATUS is %q, want it to say the instance is not configured", last)
	}
	// Nothing may be left in an image's /opt/redash, not even the lock.
	if _, err := os.Stat(f.dir); err == nil {
		t.Errorf("an unconfigured instance got %s created", f.dir)
	}
	t.Logf("exited after %v with %d notifications", time.Since(start).Round(time.Millisecond), len(got))
}
