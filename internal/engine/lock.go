package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/gofrs/flock"
)

// lock takes the host-wide lock of one project, so the changes of two runs
// on one host (the systemd daemon and a manual `up`, two goroutines, or a
// one-off creating the network) never interleave; a run whose plan another
// run made stale still converges (Apply adopts and tolerates).
//
// Why a second lock next to the --dir lock that every mutating command
// holds: the --dir lock belongs to the files of one --dir, while this one
// belongs to the Docker project, and Docker alone cannot serialize network
// creation (before API 1.44 two creates of one name make two networks).
// Tests, `prepare-image` and a second --dir on one host converge the same
// project without sharing a --dir. The kernel drops the lock when a process
// dies, so a killed run never blocks the next one. The wait is bounded by
// ctx.
func (e *Engine) lock(ctx context.Context, project string) (func(), error) {
	if !validProjectName(project) {
		return nil, fmt.Errorf("converging project %q: not a compose project name: use lowercase letters, digits, '-' and '_'", project)
	}
	dir := e.LockDir
	if dir == "" {
		dir = os.TempDir()
	}
	// A fresh state directory (a first `down`) has not been made yet.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the lock directory %q: %w: create it writable by the agent or pass --state-dir", dir, err)
	}
	path := filepath.Join(dir, "redash-agent-engine-"+project+".lock")
	l := flock.New(path, flock.SetPermissions(0o600))
	ok, err := l.TryLockContext(ctx, 50*time.Millisecond)
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("locking %q: %w", path, err)
	}
	if err != nil || !ok {
		return nil, fmt.Errorf("locking %q: %v: another redash-agent is converging project %q; wait for it or stop it", path, err, project)
	}
	return func() { _ = l.Unlock() }, nil
}

// validProjectName is compose's rule for project names; it also keeps the
// name safe inside a lock file path.
func validProjectName(p string) bool {
	if p == "" {
		return false
	}
	for i, r := range p {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || i > 0 && (r == '-' || r == '_')
		if !ok {
			return false
		}
	}
	return true
}
