package atomicfile

import (
	"errors"

	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// pair is the env file and the compose file of one generation.
func pair(dir, gen string) []File {
	return []File{
		{Path: filepath.Join(dir, "env"), Data: []byte("GEN=" + gen + "\n"), Perm: 0o600},
		{Path: filepath.Join(dir, "docker-compose.yml"), Data: []byte("# generation " + gen + "\n"), Perm: 0o644},
	}
}

// assertGeneration fails unless both files hold generation gen (or, for
// gen "", neither exists) and nothing else is left in dir.
func assertGeneration(t *testing.T, dir, gen string) {
	t.Helper()
	for _, f := range pair(dir, gen) {
		got, err := os.ReadFile(f.Path)
		if gen == "" {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s exists (%q, %v), want no file", filepath.Base(f.Path), got, err)
			}
			continue
		}
		if err != nil || string(got) != string(f.Data) {
			t.Errorf("%s = %q (%v), want %q", filepath.Base(f.Path), got, err, f.Data)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "env" && e.Name() != "docker-compose.yml" {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

// failRename makes the nth rename (1-based) fail with err.
func failRename(t *testing.T, nth int, err error) *int {
	t.Helper()
	calls := 0
	rename = func(from, to string) error {
		calls++
		if calls == nth {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
		}
		return os.Rename(from, to)
	}
	t.Cleanup(func() { rename = os.Rename })
	return &calls
}

// TestWriteFilesSecondRenameFails is the disk filling (or any fault)
// between the two renames: the first file is already replaced when the
// second rename fails, and the first must be put back.
func TestWriteFilesSecondRenameFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		old  string // "" = no files yet
	}{
		{"over an old pair", "1"},
		{"first write", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if tc.old != "" {
				if _, err := WriteFiles(pair(dir, tc.old)); err != nil {
					t.Fatal(err)
				}
			}
			failRename(t, 2, syscall.ENOSPC)
			changed, err := WriteFiles(pair(dir, "2"))
			if err == nil {
				t.Fatal("WriteFiles succeeded with a failing rename")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), `replacing "`+filepath.Join(dir, "docker-compose.yml")+`"`) {
				t.Errorf("error does not name the file and the cause: %v", err)
			}
			if changed[0] || changed[1] {
				t.Errorf("changed = %v after a failure, want none", changed)
			}
			assertGeneration(t, dir, tc.old)
		})
	}
}

// TestWriteFilesRestoreFails: when putting the first file back fails too,
// the error says so and the old file is left under its backup name for a
// person, never deleted.
func TestWriteFilesRestoreFails(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteFiles(pair(dir, "1")); err != nil {
		t.Fatal(err)
	}
	calls := 0
	rename = func(from, to string) error {
		calls++
		if calls >= 2 {
			return &os.LinkError{Op: "rename", Old: from, New: to, Err: syscall.EIO}
		}
		return os.Rename(from, to)
	}
	t.Cleanup(func() { rename = os.Rename })
	_, err := WriteFiles(pair(dir, "2"))
	if err == nil || !strings.Contains(err.Error(), "putting back") || !strings.Contains(err.Error(), ".env.prev") {
		t.Fatalf("error = %v, want one naming the failed restore and the backup", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, ".env.prev")); string(got) != "GEN=1\n" {
		t.Errorf("backup = %q, want the old env file", got)
	}
}

// TestWriteFilesOnlyChangedRenamed: an unchanged file of the set is not
// rewritten, and a set of one needs no backup.
func TestWriteFilesOnlyChangedRenamed(t *testing.T) {
	dir := t.TempDir()
	if _, err := WriteFiles(pair(dir, "1")); err != nil {
		t.Fatal(err)
	}
	files := pair(dir, "1")
	files[1].Data = []byte("# generation 2\n")
	calls := failRename(t, 99, nil)
	changed, err := WriteFiles(files)
	if err != nil || changed[0] || !changed[1] {
		t.Fatalf("changed = %v, err = %v; want only the compose file", changed, err)
	}
	if *calls != 1 {
		t.Errorf("%d renames, want 1", *calls)
	}
}

// TestWriteFilesFullDisk fills a real tmpfs: the old code renamed the env
// file and then failed to write the compose file, leaving a mixed pair.
// Now both temps are written before the first rename, so a full disk fails
// the whole generation and leaves the old pair intact.
func TestWriteFilesFullDisk(t *testing.T) {
	dir := testenv.SmallTmpfs(t, "size=16k")
	if _, err := WriteFiles(pair(dir, "1")); err != nil {
		t.Fatal(err)
	}
	files := pair(dir, "2")
	// The env file fits in what is left; the compose file cannot.
	files[0].Data = []byte("GEN=2\n")
	files[1].Data = append([]byte("# generation 2\n"), make([]byte, 32<<10)...)
	_, err := WriteFiles(files)
	if err == nil {
		t.Fatal("WriteFiles succeeded on a full tmpfs")
	}
	t.Logf("error: %v", err)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("error is not ENOSPC: %v", err)
	}
	assertGeneration(t, dir, "1")
}
