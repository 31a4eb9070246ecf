// Package atomicfile writes files so that a reader, or the next boot after a
// power cut, sees either the old content or the new content, never a torn
// mix: a temp file in the same directory created 0600, fsync, rename over the
// target, fsync the directory. WriteFiles extends that to a set of files that
// belong together (the env file and the compose file are one generation):
// every temp file is written and synced before the first rename, so a disk
// that fills fails the write with every old file intact; and a rename that
// fails after another succeeded puts the earlier files back. Its only side
// effects are on the named files and short-lived temp and backup files
// beside them.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File is one file of a generation written by WriteFiles.
type File struct {
	Path string
	Data []byte
	Perm fs.FileMode
}

// rename is os.Rename; tests replace it to fail one rename of a generation,
// the fault no real filesystem produces on demand.
var rename = os.Rename

// WriteFile replaces path with data at mode perm, atomically. When the file
// already holds exactly data with mode perm it is left alone and changed is
// false, so callers can act only on real changes and mtimes stay meaningful.
// On any error the previous file is untouched.
func WriteFile(path string, data []byte, perm fs.FileMode) (changed bool, err error) {
	ch, err := WriteFiles([]File{{Path: path, Data: data, Perm: perm}})
	return ch[0], err
}

// WriteFiles replaces every file with its Data at its Perm as one
// generation: when it returns nil all of them hold the new content; when it
// returns an error each holds what it held before (a file that did not exist
// still does not). changed[i] says whether files[i] was rewritten; a file
// that already holds its Data with its Perm is left alone.
//
// Order of work: every changed file's temp is written and synced first (the
// step that needs disk space and is where a full disk fails), then each old
// file is kept as a hard link (no data blocks), then the renames run in the
// order given. A power cut between two renames can still leave a mixed pair
// on disk; the agent renders both files again at every start, so that mix
// never outlives the next boot.
func WriteFiles(files []File) (changed []bool, err error) {
	changed = make([]bool, len(files))
	var work []*pending
	// cleanup removes every temp and backup left; on success the temps are
	// gone already (renamed), so only backups remain to remove.
	defer func() {
		for _, p := range work {
			if p.tmp != "" {
				os.Remove(p.tmp)
			}
			if p.backup != "" {
				os.Remove(p.backup)
			}
		}
	}()
	for i, f := range files {
		if unchanged(f) {
			continue
		}
		changed[i] = true
		p := &pending{File: f}
		work = append(work, p)
		if p.tmp, err = writeTemp(f.Path, f.Data, f.Perm); err != nil {
			return make([]bool, len(files)), err
		}
	}
	if len(work) == 0 {
		return changed, nil
	}
	// Keep the old files so that a rename failing after another succeeded
	// can be undone. The backups are only needed with two files or more.
	if len(work) > 1 {
		for _, p := range work {
			if p.backup, err = keep(p.Path); err != nil {
				return make([]bool, len(files)), err
			}
		}
	}
	for i, p := range work {
		if err = rename(p.tmp, p.Path); err != nil {
			err = fmt.Errorf("replacing %q: %w", p.Path, err)
			if rerr := restore(work[:i]); rerr != nil {
				err = fmt.Errorf("%w; and putting back the files replaced before it: %w (run the same command again once %s has room: it rewrites every file of the set)", err, rerr, filepath.Dir(p.Path))
			}
			return make([]bool, len(files)), err
		}
		p.tmp = ""
	}
	dirs := map[string]bool{}
	for _, p := range work {
		if d := filepath.Dir(p.Path); !dirs[d] {
			dirs[d] = true
			if err := syncDir(d); err != nil {
				return changed, err
			}
		}
	}
	return changed, nil
}

// unchanged reports whether f's file already holds its data with its mode.
func unchanged(f File) bool {
	old, err := os.ReadFile(f.Path)
	if err != nil || !bytes.Equal(old, f.Data) {
		return false
	}
	st, err := os.Stat(f.Path)
	return err == nil && st.Mode().Perm() == f.Perm
}

// writeTemp writes data to a synced temp file beside path and returns its name.
func writeTemp(path string, data []byte, perm fs.FileMode) (_ string, err error) {
	dir := filepath.Dir(path)
	// CreateTemp makes the file 0600, so a secret never sits in a file
	// others can read, not even for the moment before Chmod.
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("creating temp file for %q: %w (check that %s exists, is writable and the disk is not full)", path, err, dir)
	}
	tmpName := tmp.Name()
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmpName)
		}
	}()
	if _, err = tmp.Write(data); err != nil {
		return "", fmt.Errorf("writing %q: %w (is the disk full? the old %s is untouched)", tmpName, err, filepath.Base(path))
	}
	if err = tmp.Chmod(perm); err != nil {
		return "", fmt.Errorf("setting mode %v on %q: %w", perm, tmpName, err)
	}
	if err = tmp.Sync(); err != nil {
		return "", fmt.Errorf("syncing %q: %w (is the disk full? the old %s is untouched)", tmpName, err, filepath.Base(path))
	}
	if err = tmp.Close(); err != nil {
		return "", fmt.Errorf("closing %q: %w", tmpName, err)
	}
	return tmpName, nil
}

// keep makes a second name for path's current file, for restore; "" when
// there is no file. A hard link needs no data blocks, so it works on a full
// disk; a filesystem without hard links gets a copy.
func keep(path string) (string, error) {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	backup := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".prev")
	os.Remove(backup) // a leftover of a run that was killed
	if err := os.Link(path, backup); err == nil {
		return backup, nil
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("keeping a copy of %q: %w", path, err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("keeping a copy of %q: %w", path, err)
	}
	tmp, err := writeTemp(path, old, st.Mode().Perm())
	if err != nil {
		return "", fmt.Errorf("keeping a copy of %q: %w", path, err)
	}
	return tmp, nil
}

// pending is one changed file of a generation on its way in.
type pending struct {
	File
	tmp    string // the new content, synced; "" once renamed
	backup string // a second name of the old file; "" when there was none
}

// restore puts the files already replaced back: each old file from its
// backup, and a file that did not exist before is removed again.
func restore(done []*pending) error {
	var errs []error
	for _, p := range done {
		if p.backup == "" {
			if err := os.Remove(p.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing %q: %w", p.Path, err))
			}
			continue
		}
		if err := rename(p.backup, p.Path); err != nil {
			errs = append(errs, fmt.Errorf("restoring %q from %q: %w", p.Path, p.backup, err))
			p.backup = "" // the only copy of the old file: leave it for a person
			continue
		}
		p.backup = ""
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if len(done) > 0 {
		return syncDir(filepath.Dir(done[0].Path))
	}
	return nil
}

// syncDir makes the renames themselves durable.
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
