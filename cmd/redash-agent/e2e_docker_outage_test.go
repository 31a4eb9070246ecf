package main

// Docker daemon outages against the built binary and a private dockerd
// (testenv.StartPrivateDockerd) behind a unix-socket proxy: the machine's
// daemon is shared and is never stopped, and the private one is not
// restarted either (a restart of dockerd 20.10 deletes the host's docker0).
// An outage is the proxy cut (refused connections, the events stream ended)
// while the project's containers are stopped behind it, which is what a
// daemon restart does to them. Issue 8, "Docker outages".

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// healBudget is the target: Redash serves again within 15 s of the
// daemon's return.
const healBudget = 15 * time.Second

// TestDockerOutages: (1) `run` converges as soon as a restarted daemon
// answers again (Docker does not start Redash itself: restart policy
// on-failure) instead of at its next refresh; (2) `up` started while the
// daemon is down waits for it, bounded and logged, and converges.
func TestDockerOutages(t *testing.T) {
	// PostgreSQL listens on the machine daemon's gateway address, which
	// the private daemon's containers reach through the host.
	t.Setenv("PGTEST_HOST", testenv.Postgres(t).Host)
	pd := testenv.StartPrivateDockerd(t)
	proxy := testenv.NewSocketProxy(t, pd.Socket)
	t.Setenv("DOCKER_HOST", proxy.Host)
	s := newStack(t)
	ns := newNotifySocket(t)
	// A refresh far beyond the test: only the daemon's return can heal it.
	p := startRun(t, s.fixture, ns.path, "--set", "refresh=30m")
	ns.waitFor(t, "READY=1", 0, 3*time.Minute, p.exited, func(n notification) bool { return n.vars["READY"] == "1" })
	ping := func() bool {
		hc := &http.Client{Timeout: 500 * time.Millisecond, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", s.serverPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}
	if !ping() {
		t.Fatal("the server does not answer /ping after READY=1")
	}

	// 1. A daemon outage of a few seconds: the socket goes away and the
	// daemon stops the containers (a restart does; restart policy
	// on-failure does not start them again).
	proxy.Cut()
	direct := pd.Client()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := direct.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if err := direct.ContainerStop(ctx, c.ID, container.StopOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if ping() {
		t.Fatal("the server still answers with its daemon gone; the test cannot see a heal")
	}
	time.Sleep(3 * time.Second)
	proxy.Restore()
	back := time.Now()
	healed := time.Time{}
	for time.Since(back) < 2*healBudget {
		if ping() {
			healed = time.Now()
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if healed.IsZero() {
		t.Fatalf("Redash does not serve %v after the daemon's return; agent output:\n%s", 2*healBudget, p.out.Bytes())
	}
	took := healed.Sub(back)
	t.Logf("MEASURED: Redash served again %.1fs after the daemon answered again (budget %v)", took.Seconds(), healBudget)
	if took > healBudget {
		t.Errorf("Redash served again %v after the daemon's return, want within %v", took.Round(100*time.Millisecond), healBudget)
	}
	if out := string(p.out.Bytes()); !strings.Contains(out, "the docker engine answers again") {
		t.Errorf("the heal was not the daemon-back converge; agent output:\n%s", out)
	}

	// Stop run (SIGTERM, as systemd does) before the next scenario.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(90 * time.Second):
		t.Fatal("run did not stop within 90s of SIGTERM")
	}

	// 2. `up` started while the daemon is down waits for it.
	proxy.Cut()
	type result struct {
		stdout, stderr string
		code           int
		took           time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		cmd := exec.Command(agentBinary(t), "--dir", s.dir, "--state-dir", filepath.Join(filepath.Dir(s.dir), "state"), "--config", s.config, "up")
		cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.imds, "AWS_ENDPOINT_URL_SECRETS_MANAGER="+s.moto.Endpoint)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		code := exitCodeOf(runAgent(t, cmd))
		done <- result{out.String(), errb.String(), code, time.Since(start)}
	}()
	time.Sleep(4 * time.Second)
	select {
	case r := <-done:
		t.Fatalf("up exited %d after %v with the daemon down instead of waiting for it\nstderr: %s", r.code, r.took, r.stderr)
	default:
	}
	proxy.Restore()
	var r result
	select {
	case r = <-done:
	case <-time.After(2 * time.Minute):
		t.Fatal("up did not finish within 2 minutes of the daemon's return")
	}
	if r.code != 0 {
		t.Fatalf("up exited %d after waiting for the daemon\nstderr: %s", r.code, r.stderr)
	}
	for _, want := range []string{"waiting for the docker engine", "bound=2m0s"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("up's log lacks %q:\n%s", want, r.stderr)
		}
	}
	if !ping() {
		t.Error("the server does not answer /ping after up")
	}
	t.Logf("MEASURED: up started with the daemon down finished %.1fs after start (daemon down for ~4s)", r.took.Seconds())
}
