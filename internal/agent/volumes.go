package agent

import (
	"context"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// DBVolume is the project's bundled database volume (provider local) and
// whether it exists: `down --remove` keeps it and says so.
func (a *Agent) DBVolume(ctx context.Context) (name string, exists bool, err error) {
	name = compose.BundledDBVolume(a.projectName())
	eng, err := a.docker()
	if err != nil {
		return name, false, err
	}
	defer eng.Close()
	exists, err = eng.HasVolume(ctx, name)
	return name, exists, err
}

// RemoveDBVolume deletes the bundled database volume and so the local
// database's data: `down --remove --volumes`. Call it after Down removed the
// containers that mount it.
func (a *Agent) RemoveDBVolume(ctx context.Context) (name string, removed bool, err error) {
	name = compose.BundledDBVolume(a.projectName())
	eng, err := a.docker()
	if err != nil {
		return name, false, err
	}
	defer eng.Close()
	err = a.step(ctx, "remove the database volume", func(ctx context.Context) error {
		removed, err = eng.RemoveVolume(ctx, name)
		return err
	})
	return name, removed, err
}
