package agent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestWriteFullDiskKeepsThePair: the env file and the compose file are one
// generation. On a real tmpfs with room for the new env file but not the
// new compose file, the write fails and both old files are intact (before,
// env was renamed into place first and the pair was left out of step).
func TestWriteFullDiskKeepsThePair(t *testing.T) {
	h := newHarness(t, setup{tags: redashTags()})
	dir := testenv.SmallTmpfs(t, "size=16k")
	h.o.Dir = dir
	r, err := h.Render(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Write(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	oldEnv, oldCompose := read(t, dir, compose.EnvFileName), read(t, dir, compose.FileName)

	next := r
	next.EnvFile = append(append([]byte{}, r.EnvFile...), "# next generation\n"...)
	// Bigger than the whole tmpfs: its temp cannot be written.
	next.Compose = append(append([]byte{}, r.Compose...), bytes.Repeat([]byte("# padding\n"), 4<<10)...)
	_, err = h.Write(context.Background(), next)
	if err == nil {
		t.Fatal("Write succeeded on a full disk")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("error does not carry ENOSPC: %v", err)
	}
	if got := read(t, dir, compose.EnvFileName); !bytes.Equal(got, oldEnv) {
		t.Errorf("env changed although the compose file could not be written: the pair is out of step")
	}
	if got := read(t, dir, compose.FileName); !bytes.Equal(got, oldCompose) {
		t.Errorf("docker-compose.yml changed")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("files in %s = %q, want only env and docker-compose.yml", dir, names)
	}
}

// TestWriteTightensState: a state directory and hash key found with loose
// modes are tightened like env (0700, 0600) at every start that writes.
func TestWriteTightensState(t *testing.T) {
	h := newHarness(t, setup{tags: redashTags()})
	state := h.o.StateDir
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	files := []string{h.hashKeyPath(), h.headsCache()}
	for _, f := range files {
		if err := os.WriteFile(f, bytes.Repeat([]byte("k"), 32), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Chmod after creation: the umask must not decide the test.
	for _, p := range append([]string{state}, files...) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A symlink is left alone: chmod would change what it points at.
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, h.localSecrets()); err != nil {
		t.Fatal(err)
	}
	r, err := h.Render(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // and again, once they are right
		if _, err := h.Write(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		if m := mode(t, state); m != 0o700 {
			t.Errorf("run %d: state directory mode = %v, want 0700", i, m)
		}
		for _, f := range files {
			if m := mode(t, f); m != 0o600 {
				t.Errorf("run %d: %s mode = %v, want 0600", i, filepath.Base(f), m)
			}
		}
	}
	if m := mode(t, outside); m != 0o644 {
		t.Errorf("a file outside the state directory changed mode: %v", m)
	}
	if !bytes.Contains(h.logs.Bytes(), []byte("tightened")) {
		t.Errorf("tightening was not logged:\n%s", h.logs)
	}
}

func read(t *testing.T, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// testGrace is the harness's not-configured grace.
const testGrace = 300 * time.Millisecond

// TestNotConfiguredWaitsTheGrace: "not configured" is decided only after
// the whole grace, whether IMDS lists tags without a redash: one or the
// tags are not visible (before: at once, or when the 404 retries ran out).
func TestNotConfiguredWaitsTheGrace(t *testing.T) {
	for _, s := range []setup{
		{tags: map[string]string{"Name": "imagebuilder-build"}},
		{imdsErr: errTagsOff},
	} {
		h := newHarness(t, s)
		start := time.Now()
		_, err := h.Resolve(context.Background())
		took := time.Since(start)
		if !errors.Is(err, ErrNotConfigured) {
			t.Fatalf("Resolve: %v, want not configured", err)
		}
		if took < testGrace || took > testGrace+time.Second {
			t.Errorf("not configured after %v, want the %v grace", took, testGrace)
		}
		if h.imds.calls < 2 {
			t.Errorf("IMDS read %d times during the grace, want re-reads", h.imds.calls)
		}
	}
	// The production grace is the README's.
	if unconfiguredTagsGrace != 15*time.Second {
		t.Errorf("grace = %v, README says 15 s", unconfiguredTagsGrace)
	}
}

// TestLateTagsConfigure: tags that appear during the grace configure
// this boot.
func TestLateTagsConfigure(t *testing.T) {
	h := newHarness(t, setup{tags: map[string]string{"Name": "x"}})
	h.imds.lateTags, h.imds.lateAfter = redashTags(), 2
	res, err := h.Resolve(context.Background())
	if err != nil {
		t.Fatalf("Resolve with tags added during the grace: %v", err)
	}
	if res.Config.DBEndpoint != "db.example.internal:5432" {
		t.Errorf("db-endpoint = %q, want the late tag's", res.Config.DBEndpoint)
	}
	if !strings.Contains(h.logs.String(), "no redash: tags yet") {
		t.Errorf("the re-read is not logged:\n%s", h.logs)
	}
}

// TestNotConfiguredGraceEndsWithTheContext: SIGTERM during the grace
// stops at once.
func TestNotConfiguredGraceEndsWithTheContext(t *testing.T) {
	h := newHarness(t, setup{tags: map[string]string{"Name": "x"}})
	h.notConfiguredGrace, h.tagsPoll = time.Minute, 10*time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Resolve(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Errorf("Resolve = %v after %v, want the context's end at once", err, time.Since(start))
	}
}
