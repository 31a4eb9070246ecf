package engine

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/volume"
)

// volumeAPI is the part of the Docker client that manages volumes; it is
// not in Docker, whose fakes need not implement it.
type volumeAPI interface {
	VolumeInspect(ctx context.Context, volumeID string) (volume.Volume, error)
	VolumeRemove(ctx context.Context, volumeID string, force bool) error
}

func (e *Engine) volumes() (volumeAPI, error) {
	v, ok := e.Docker.(volumeAPI)
	if !ok {
		return nil, fmt.Errorf("this Docker client (%T) cannot manage volumes", e.Docker)
	}
	return v, nil
}

// HasVolume reports whether the named volume exists. It only reads.
func (e *Engine) HasVolume(ctx context.Context, name string) (bool, error) {
	v, err := e.volumes()
	if err != nil {
		return false, err
	}
	cctx, cancel := e.call(ctx)
	defer cancel()
	_, err = v.VolumeInspect(cctx, name)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("inspecting volume %q: %w: check that dockerd is running", name, err)
	}
	return true, nil
}

// RemoveVolume removes the named volume and its data; a volume that does not
// exist is not an error (removed is then false).
func (e *Engine) RemoveVolume(ctx context.Context, name string) (removed bool, err error) {
	v, err := e.volumes()
	if err != nil {
		return false, err
	}
	cctx, cancel := e.call(ctx)
	defer cancel()
	err = v.VolumeRemove(cctx, name, false)
	if cerrdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("removing volume %q: %w: a container still uses it? see `docker ps -a --filter volume=%s`", name, err, name)
	}
	return true, nil
}
