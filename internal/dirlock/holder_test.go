package dirlock

import "path/filepath"

// ReadHolder reports who holds (or last held) the lock on dir, for `status`
// and `doctor`. It does not take the lock. A zero Holder means no note.
func ReadHolder(dir string) (Holder, error) {
	return readHolder(filepath.Join(dir, FileName))
}
