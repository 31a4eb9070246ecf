package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/dirlock"
)

// TestMutatingCommandsTakeTheDirLock: while another process (this test)
// holds the host lock on --dir, every command that changes the host waits
// for it, says which process holds it, and changes nothing meanwhile;
// commands that only read do not wait. Once the lock is free, a waiting
// command goes on. No peer is needed: provider local reads no AWS, and
// DOCKER_HOST points nowhere, so a command that reached Docker before the
// lock would fail at once instead of waiting (and could never touch the
// shared daemon).
func TestMutatingCommandsTakeTheDirLock(t *testing.T) {
	bin := agentBinary(t)
	root := t.TempDir()
	dir := filepath.Join(root, "redash")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(root, "config.yaml")
	if err := os.WriteFile(config, []byte("provider: local\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	command := func(ctx context.Context, args ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--dir", dir, "--state-dir", filepath.Join(root, "state"),
			"--config", config, "--log-format", "text"}, args...)...)
		cmd.Env = cleanEnv("DOCKER_HOST=unix://" + filepath.Join(root, "no-docker.sock"))
		return cmd
	}

	held, err := dirlock.Acquire(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	holder := fmt.Sprintf("holder_pid=%d ", os.Getpid())

	for _, args := range [][]string{{"up"}, {"render"}, {"migrate"}, {"down"}, {"down", "--remove"}, {"prepare-image"}} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			cmd := command(context.Background(), args...)
			// An os.Pipe rather than StderrPipe: Wait would close that one
			// and could lose the last lines; this one ends when the child does.
			stderr, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer stderr.Close()
			cmd.Stderr = w
			err = cmd.Start()
			w.Close()
			if err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			lines := make(chan string, 100)
			var log strings.Builder
			go func() {
				sc := bufio.NewScanner(stderr)
				for sc.Scan() {
					lines <- sc.Text()
				}
				close(lines)
			}()
			waitFor := func(want string, timeout time.Duration) bool {
				deadline := time.After(timeout)
				for {
					select {
					case l, ok := <-lines:
						if !ok {
							return false
						}
						log.WriteString(l + "\n")
						if strings.Contains(l, want) {
							return true
						}
					case <-deadline:
						return false
					}
				}
			}
			if !waitFor("waiting for the directory lock", 30*time.Second) {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("%s did not wait for the lock on %s; stderr:\n%s", args, dir, log.String())
			}
			if !strings.Contains(log.String(), holder) {
				t.Errorf("the wait does not name the holder (%s); stderr:\n%s", strings.TrimSpace(holder), log.String())
			}
			go func() { exited <- cmd.Wait() }()
			select {
			case err := <-exited:
				t.Fatalf("%s exited (%v) while the lock was held; stderr:\n%s", args, err, log.String())
			case <-time.After(500 * time.Millisecond):
			}
			for _, f := range []string{"env", "docker-compose.yml"} {
				if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s exists while another process holds the lock (stat: %v)", f, err)
				}
			}
			// SIGTERM ends the wait like any other: exit 1, saying what it waited for.
			cmd.Process.Signal(syscall.SIGTERM)
			var ee *exec.ExitError
			select {
			case err := <-exited:
				for l := range lines {
					log.WriteString(l + "\n")
				}
				if !errors.As(err, &ee) || ee.ExitCode() != exitFailure || !strings.Contains(log.String(), "waiting for lock") {
					t.Errorf("after SIGTERM: %v, want exit %d and the lock it waited for; stderr:\n%s", err, exitFailure, log.String())
				}
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("%s did not stop on SIGTERM while waiting for the lock", args)
			}
		})
	}

	t.Run("read-only commands do not wait", func(t *testing.T) {
		for _, args := range [][]string{{"render", "--dry-run"}, {"config"}, {"version"}} {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			out, err := command(ctx, args...).CombinedOutput()
			cancel()
			if err != nil {
				t.Errorf("%s with the lock held: %v\n%s", args, err, out)
			}
		}
	})

	t.Run("a waiting render goes on once the lock is free", func(t *testing.T) {
		cmd := command(context.Background(), "render")
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := held.Release(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("render after the lock was released: %v\n%s", err, out.String())
		}
		if _, err := os.Stat(filepath.Join(dir, "env")); err != nil {
			t.Errorf("render wrote no env file: %v\n%s", err, out.String())
		}
	})
}
