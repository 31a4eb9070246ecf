// Package atomicfile writes files so that a reader, or the next boot after a
// power cut, sees either the old content or the new content, never a torn
// mix: a temp file in the same directory created 0600, fsync, rename over the
// target, fsync the directory. Its only side effects are on the named file
// and a short-lived temp file beside it.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data at mode perm, atomically. When the file
// already holds exactly data with mode perm it is left alone and changed is
// false, so callers can act only on real changes and mtimes stay meaningful.
// On any error the previous file is untouched.
func WriteFile(path string, data []byte, perm fs.FileMode) (changed bool, err error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == perm {
			return false, nil
		}
	}
	dir := filepath.Dir(path)
	// CreateTemp makes the file 0600, so a secret never sits in a file
	// others can read, not even for the moment before Chmod.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return false, fmt.Errorf("creating temp file for %q: %w (check that %s exists, is writable and the disk is not full)", path, err, dir)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return false, fmt.Errorf("writing %q: %w (is the disk full?)", tmpName, err)
	}
	if err = tmp.Chmod(perm); err != nil {
		return false, fmt.Errorf("setting mode %v on %q: %w", perm, tmpName, err)
	}
	if err = tmp.Sync(); err != nil {
		return false, fmt.Errorf("syncing %q: %w (is the disk full?)", tmpName, err)
	}
	if err = tmp.Close(); err != nil {
		return false, fmt.Errorf("closing %q: %w", tmpName, err)
	}
	if err = os.Rename(tmpName, path); err != nil {
		return false, fmt.Errorf("replacing %q: %w", path, err)
	}
	if err = syncDir(dir); err != nil {
		return true, err
	}
	return true, nil
}

// syncDir makes the rename itself durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory %q to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("syncing directory %q: %w", dir, err)
	}
	return nil
}
