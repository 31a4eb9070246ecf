package dirlock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperDirEnv makes the test binary, re-executed, act as another
// redash-agent that holds the lock (see TestHelperHoldLock).
const helperDirEnv = "DIRLOCK_TEST_HELPER_DIR"

// TestHelperHoldLock is not a test: run as a child process it takes the lock,
// says "locked", and holds it until killed (at most a minute, so a forgotten
// child cannot linger).
func TestHelperHoldLock(t *testing.T) {
	dir := os.Getenv(helperDirEnv)
	if dir == "" {
		t.Skip("helper process for TestWaiterTimesOutThenKillReleases")
	}
	l, err := Acquire(context.Background(), dir, 5*time.Second, nil)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("locked")
	time.Sleep(time.Minute)
	l.Release()
	os.Exit(0)
}

// startHolder runs the helper child and returns once it holds the lock.
func startHolder(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestHelperHoldLock$", "-test.v=false")
	cmd.Env = append(os.Environ(), helperDirEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if s != "locked" {
			t.Fatalf("helper said %q, want \"locked\"", s)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("helper did not take the lock within 30s")
	}
	return cmd
}

func TestWaiterTimesOutThenKillReleases(t *testing.T) {
	dir := t.TempDir()
	holder := startHolder(t, dir)
	pid := holder.Process.Pid

	const wait = 400 * time.Millisecond
	start := time.Now()
	l, err := Acquire(context.Background(), dir, wait, nil)
	took := time.Since(start)
	if err == nil {
		l.Release()
		t.Fatal("second Acquire succeeded while another process holds the lock")
	}
	var held *HeldError
	if !errors.As(err, &held) {
		t.Fatalf("error %v (%T), want *HeldError", err, err)
	}
	if took < wait {
		t.Errorf("gave up after %v, want to wait the full %v", took, wait)
	}
	if took > wait+5*time.Second {
		t.Errorf("gave up after %v, far beyond the %v wait", took, wait)
	}
	want := fmt.Sprintf("another redash-agent (pid %d, `%s -test.run=^TestHelperHoldLock$ -test.v=false`) holds %s; wait for it or stop it",
		pid, filepath.Base(holder.Path), filepath.Join(dir, FileName))
	if err.Error() != want {
		t.Errorf("error:\n got %s\nwant %s", err, want)
	}

	// kill -9 gives the holder no chance to clean up: the kernel must drop
	// the flock with the process's last descriptor.
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	holder.Wait()
	l, err = Acquire(context.Background(), dir, 5*time.Second, nil)
	if err != nil {
		t.Fatalf("Acquire after kill -9 of the holder: %v", err)
	}
	defer l.Release()
	h, err := ReadHolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID != os.Getpid() {
		t.Errorf("lock note names pid %d after takeover, want ours (%d)", h.PID, os.Getpid())
	}
}

func TestAcquire(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the dir to lock and, if non-nil, a lock already held
		// in this process (flock(2) locks belong to the open file, so a second
		// open in the same process contends like another process would).
		setup   func(t *testing.T) (dir string, releaseAfter time.Duration)
		wait    time.Duration
		wantErr string // substring; empty means success
	}{
		{
			name:  "free lock is taken at once",
			setup: func(t *testing.T) (string, time.Duration) { return t.TempDir(), -1 },
			wait:  0,
		},
		{
			name:  "waiter gets the lock when the holder releases in time",
			setup: func(t *testing.T) (string, time.Duration) { return t.TempDir(), 200 * time.Millisecond },
			wait:  5 * time.Second,
		},
		{
			name:    "zero wait on a held lock fails at once",
			setup:   func(t *testing.T) (string, time.Duration) { return t.TempDir(), time.Hour },
			wait:    0,
			wantErr: "wait for it or stop it",
		},
		{
			name: "missing directory says what to fix",
			setup: func(t *testing.T) (string, time.Duration) {
				return filepath.Join(t.TempDir(), "absent"), -1
			},
			wait:    time.Second,
			wantErr: "exists and is writable",
		},
		{
			name: "symlinked lock file is refused",
			setup: func(t *testing.T) (string, time.Duration) {
				dir := t.TempDir()
				target := filepath.Join(dir, "victim")
				os.WriteFile(target, []byte("keep me"), 0o600)
				os.Symlink(target, filepath.Join(dir, FileName))
				return dir, -1
			},
			wait:    time.Second,
			wantErr: "locking",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, releaseAfter := tt.setup(t)
			if releaseAfter >= 0 {
				first, err := Acquire(context.Background(), dir, 0, nil)
				if err != nil {
					t.Fatalf("first Acquire: %v", err)
				}
				timer := time.AfterFunc(releaseAfter, func() { first.Release() })
				t.Cleanup(func() { timer.Stop(); first.Release() })
			}
			l, err := Acquire(context.Background(), dir, tt.wait, slog.New(slog.DiscardHandler))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Acquire: %v", err)
				}
				if err := l.Release(); err != nil {
					t.Fatalf("Release: %v", err)
				}
				if err := l.Release(); err != nil {
					t.Fatalf("second Release: %v", err)
				}
				return
			}
			if err == nil {
				l.Release()
				t.Fatalf("Acquire succeeded, want error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q lacks %q", err, tt.wantErr)
			}
		})
	}
}

func TestHolderNote(t *testing.T) {
	dir := t.TempDir()
	l, err := Acquire(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ReadHolder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h.PID != os.Getpid() || h.Command == "" || h.Since.IsZero() {
		t.Fatalf("holder note %+v, want our pid %d, a command and a time", h, os.Getpid())
	}
	st, _ := os.Stat(filepath.Join(dir, FileName))
	if st.Mode().Perm() != 0o644 {
		t.Errorf("lock file mode %v, want 0644", st.Mode().Perm())
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if h, _ := ReadHolder(dir); h.PID != 0 {
		t.Errorf("holder note %+v left after Release, want it cleared", h)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); err != nil {
		t.Errorf("lock file gone after Release (%v); it must stay so waiters lock the same inode", err)
	}
}

func TestContextCancelEndsTheWait(t *testing.T) {
	dir := t.TempDir()
	first, err := Acquire(context.Background(), dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Acquire(ctx, dir, time.Minute, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want it to wrap the context's DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("returned after %v, want soon after the context ended", took)
	}
}

// TestReleaseAfterTheFileWasRemoved: prepare-image deletes the lock file
// while it holds the lock (no lock may be baked into an AMI); Release then
// has no note to clear, and says nothing about it.
func TestReleaseAfterTheFileWasRemoved(t *testing.T) {
	dir := t.TempDir()
	var logs strings.Builder
	l, err := Acquire(context.Background(), dir, time.Second, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("Release warned about the removed file:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after Release: %v, want it still gone", err)
	}
}
