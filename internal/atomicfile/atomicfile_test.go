package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "env")

	changed, err := WriteFile(path, []byte("A=1\n"), 0o600)
	if err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v, want changed=true", changed, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	mtime := st.ModTime()

	changed, err = WriteFile(path, []byte("A=1\n"), 0o600)
	if err != nil || changed {
		t.Fatalf("same content: changed=%v err=%v, want changed=false", changed, err)
	}
	if st2, _ := os.Stat(path); !st2.ModTime().Equal(mtime) {
		t.Errorf("unchanged content was rewritten")
	}

	if changed, err = WriteFile(path, []byte("A=2\n"), 0o600); err != nil || !changed {
		t.Fatalf("new content: changed=%v err=%v", changed, err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != "A=2\n" {
		t.Errorf("content = %q", got)
	}

	// Same content, wrong mode: the mode is fixed.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err = WriteFile(path, []byte("A=2\n"), 0o600); err != nil || !changed {
		t.Fatalf("mode fix: changed=%v err=%v", changed, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode after fix = %v", st.Mode().Perm())
	}

	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	_, err := WriteFile(filepath.Join(t.TempDir(), "nope", "env"), []byte("x"), 0o600)
	if err == nil {
		t.Fatal("want error for a missing directory")
	}
}
