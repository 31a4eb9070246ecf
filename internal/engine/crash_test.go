package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// crashHelperEnv switches the test binary into the helper process that
// TestCrashSafety kills: it runs one Up and exits.
const crashHelperEnv = "ENGINE_CRASH_HELPER"

// helperDesired is the stack both the helper and the parent converge to;
// the secret variant makes some runs recreate what earlier runs made.
func helperDesired(project string, serverPort, nginxPort, variant int) Desired {
	return Desired{
		Project: stackProject(project, imageV1, serverPort, nginxPort),
		Env:     map[string]string{"REDASH_SECRET_KEY": fmt.Sprintf("variant-%d", variant), "REDASH_COOKIE_SECRET": "cookie-for-crash-test"},
		HashKey: []byte("crash-key"),
	}
}

func TestHelperUp(t *testing.T) {
	if os.Getenv(crashHelperEnv) != "1" {
		t.Skip("helper process of TestCrashSafety; runs only when it sets " + crashHelperEnv + "=1")
	}
	atoi := func(k string) int { n, _ := strconv.Atoi(os.Getenv(k)); return n }
	cli, err := NewDockerClient()
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{Docker: cli, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), HealthTimeout: 30 * time.Second,
		LockDir: os.Getenv("ENGINE_CRASH_LOCKDIR")}
	d := helperDesired(os.Getenv("ENGINE_CRASH_PROJECT"), atoi("ENGINE_CRASH_SERVER_PORT"), atoi("ENGINE_CRASH_NGINX_PORT"), atoi("ENGINE_CRASH_VARIANT"))
	if _, err := converge(context.Background(), e, d); err != nil {
		t.Fatal(err)
	}
}

// TestCrashSafety kills -9 a process running Up at random moments (0-3s,
// an Up from nothing takes about 2s), again
// and again, then checks that one normal Up converges to exactly one stack:
// no duplicates, no leftover names, every container current and running.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("kills 50 Up processes (about a minute); run without -short")
	}
	s := newStack(t)
	const minIterations, budget = 50, 150 * time.Second
	start := time.Now()
	killed, finished := 0, 0
	variant := 0
	for i := 0; i < minIterations || time.Since(start) < 20*time.Second; i++ {
		if time.Since(start) > budget {
			break
		}
		variant = i % 3
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperUp$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashHelperEnv+"=1",
			"ENGINE_CRASH_PROJECT="+s.d.Project.Name,
			"ENGINE_CRASH_LOCKDIR="+s.lockDir,
			fmt.Sprintf("ENGINE_CRASH_SERVER_PORT=%d", s.serverPort),
			fmt.Sprintf("ENGINE_CRASH_NGINX_PORT=%d", s.nginxPort),
			fmt.Sprintf("ENGINE_CRASH_VARIANT=%d", variant))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-time.After(time.Duration(rand.IntN(3000)) * time.Millisecond):
			_ = cmd.Process.Kill() // SIGKILL: no deferred cleanup runs
			<-done
			killed++
		case <-done:
			finished++
		}
	}
	iterations := killed + finished
	t.Logf("%d helper runs in %s: %d killed mid-run, %d finished", iterations, time.Since(start).Round(time.Second), killed, finished)
	if iterations < minIterations {
		t.Errorf("only %d iterations within %s, want %d", iterations, budget, minIterations)
	}
	if killed == 0 {
		t.Error("no helper was killed mid-run; the test proved nothing")
	}

	s.d = helperDesired(s.d.Project.Name, s.serverPort, s.nginxPort, variant+1)
	p := s.up()
	t.Logf("final Up after the kills:\n%s", p)
	s.assertConverged()
	if got := s.serverEnv()["REDASH_SECRET_KEY"]; got != s.d.Env["REDASH_SECRET_KEY"] {
		t.Errorf("server runs with %q, want the final variant", got)
	}
}
