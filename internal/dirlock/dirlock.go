// Package dirlock owns the host lock on the directory redash-agent manages
// (--dir, /opt/redash by default), so two runs (the systemd unit and an
// operator's `redash-agent up`, say) never interleave their writes and
// Docker calls.
//
// Side effects: creates DIR/.redash-agent.lock (0644) if missing, takes an
// exclusive flock(2) on it and writes the holder's PID and command into it.
// The lock is tied to the open file, so it dies with the process, even on
// kill -9; the file itself is never removed (see Release).
package dirlock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/gofrs/flock"
)

// FileName is the lock file's name inside the managed directory.
const FileName = ".redash-agent.lock"

// retryDelay is how often a waiter retries the non-blocking flock. flock(2)
// has no timed wait, and a short poll keeps the handover quick.
const retryDelay = 50 * time.Millisecond

// maxCommandLen caps the command recorded in the lock file, so a huge argv
// cannot bloat it or the error message.
const maxCommandLen = 200

// Lock is a held directory lock. Release it when the run ends; if the
// process dies first, the kernel releases it.
type Lock struct {
	fl     *flock.Flock
	path   string
	logger *slog.Logger
}

// Holder is what the lock file says about the process that holds the lock.
type Holder struct {
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Since   time.Time `json:"since"`
}

// HeldError is returned when the lock stayed held for the whole wait.
// Callers can errors.As it to show the holder.
type HeldError struct {
	Path   string
	Holder Holder // zero when the lock file could not be read
	Waited time.Duration
}

func (e *HeldError) Error() string {
	if e.Holder.PID == 0 {
		return fmt.Sprintf("another redash-agent holds %s (holder unknown: the lock file names no process); waited %v; wait for it or stop it",
			e.Path, e.Waited)
	}
	return fmt.Sprintf("another redash-agent (pid %d, `%s`) holds %s; wait for it or stop it",
		e.Holder.PID, e.Holder.Command, e.Path)
}

// Acquire takes an exclusive flock on DIR/.redash-agent.lock
// (github.com/gofrs/flock), waiting at most wait. The holder writes its PID
// and command into the lock file; a waiter that times out gets a *HeldError
// naming that PID and command. The lock dies with its process (kill -9
// releases it). If ctx ends first, the error wraps ctx.Err().
func Acquire(ctx context.Context, dir string, wait time.Duration, logger *slog.Logger) (*Lock, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	path := filepath.Join(dir, FileName)
	// O_RDWR (not flock's default O_RDONLY) so the holder can record itself
	// through the locked descriptor's path; O_NOFOLLOW so a symlink planted
	// in the directory cannot redirect the truncate onto another file.
	fl := flock.New(path, flock.SetFlag(os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW), flock.SetPermissions(0o644))

	ok, err := fl.TryLock()
	if err != nil {
		return nil, fmt.Errorf("locking %q: %w; check that %s exists and is writable by this user", path, err, dir)
	}
	if !ok {
		h, _ := readHolder(path)
		logger.Info("waiting for the directory lock", "path", path, "holder_pid", h.PID, "holder_command", h.Command, "wait", wait)
		start := time.Now()
		wctx, cancel := context.WithTimeout(ctx, wait)
		ok, err = fl.TryLockContext(wctx, retryDelay)
		cancel()
		if !ok || err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("waiting for lock %q: %w", path, ctx.Err())
			}
			if err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("locking %q: %w", path, err)
			}
			// Read again: the holder may have changed while we waited.
			h, _ = readHolder(path)
			return nil, &HeldError{Path: path, Holder: h, Waited: time.Since(start).Round(time.Millisecond)}
		}
	}

	l := &Lock{fl: fl, path: path, logger: logger}
	if err := writeHolder(path, Holder{PID: os.Getpid(), Command: commandLine(), Since: time.Now().UTC()}); err != nil {
		// The lock still works without the note; only a waiter's message
		// gets poorer. Do not fail a boot over it.
		logger.Warn("recording the lock holder", "path", path, "err", err)
	}
	logger.Debug("acquired the directory lock", "path", path)
	return l, nil
}

// Path is the lock file's path.
func (l *Lock) Path() string { return l.path }

// Release clears the holder note and drops the lock. The file stays: deleting
// it would let a waiter that already opened the old inode lock a file nobody
// else sees, and two runs would proceed at once. The one exception is
// `prepare-image`, which deletes it while holding the lock so that no lock
// file is baked into an AMI (an image build has no other agent to race);
// then there is no note left to clear.
func (l *Lock) Release() error {
	if l == nil || l.fl == nil {
		return nil
	}
	if err := os.Truncate(l.path, 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		l.logger.Warn("clearing the lock holder note", "path", l.path, "err", err)
	}
	if err := l.fl.Unlock(); err != nil {
		return fmt.Errorf("releasing lock %q: %w", l.path, err)
	}
	l.fl = nil
	return nil
}

func readHolder(path string) (Holder, error) {
	var h Holder
	data, err := os.ReadFile(path)
	if err != nil {
		return h, fmt.Errorf("reading lock file %q: %w", path, err)
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return h, nil
	}
	if err := json.Unmarshal(data, &h); err != nil {
		return Holder{}, fmt.Errorf("parsing lock file %q: %w", path, err)
	}
	return h, nil
}

// writeHolder rewrites the note in place. It is not atomic (a rename would
// replace the locked inode, see Release); a waiter reading a half-written
// note just shows "holder unknown".
func writeHolder(path string, h Holder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(data, '\n')); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// commandLine is this process's argv for the note. The agent never takes a
// secret in argv (docs/design.md), so recording it leaks nothing.
func commandLine() string {
	args := append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...)
	s := strings.Join(args, " ")
	if len(s) > maxCommandLen {
		s = s[:maxCommandLen] + "..."
	}
	return s
}
