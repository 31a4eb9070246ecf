package envfile

import (
	"fmt"

	"github.com/redash-agent/redash-agent/internal/atomicfile"
)

// Write renders env and replaces path with it at mode 0600, atomically. When
// path already holds exactly that content at mode 0600 it is left alone and
// changed is false, so callers recreate containers only on real changes. On
// error nothing is written.
func Write(path string, env map[string]string) (changed bool, err error) {
	data, err := Render(env)
	if err != nil {
		return false, fmt.Errorf("writing %q: %w", path, err)
	}
	return atomicfile.WriteFile(path, data, 0o600)
}
