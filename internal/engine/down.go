package engine

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
)

// Down stops every container of the project (running or not, stale ones
// too); with remove it also removes them and the project's networks.
// Stopped containers stay stopped: on-failure never restarts a stop.
func (e *Engine) Down(ctx context.Context, project string, remove bool) error {
	unlock, err := e.lock(ctx, project)
	if err != nil {
		return err
	}
	defer unlock()
	o, err := e.observe(ctx, project)
	if err != nil {
		return err
	}
	acts := make([]Action, 0, len(o.Containers))
	for _, c := range o.Containers {
		acts = append(acts, Action{Kind: ActRemove, Container: c.Name, ID: c.ID})
	}
	e.log().Info("[started] down", "project", project, "containers", len(acts), "remove", remove)
	err = parallel(acts, func(a Action) error {
		if remove {
			return e.stopRemove(ctx, a.Container, a.ID, defaultStopGrace, "down")
		}
		return e.stop(ctx, a.Container, a.ID, defaultStopGrace)
	})
	if err != nil {
		e.log().Error("[failed] down", "project", project, "err", err)
		return err
	}
	if remove {
		if err := e.removeNetworks(ctx, project); err != nil {
			e.log().Error("[failed] down", "project", project, "err", err)
			return err
		}
	}
	e.log().Info("[finished] down", "project", project)
	return nil
}

// removeNetworks removes the project's labelled networks and the default
// network by name (docker-compose v1 may have made it).
func (e *Engine) removeNetworks(ctx context.Context, project string) error {
	cctx, cancel := e.call(ctx)
	nets, err := e.Docker.NetworkList(cctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("label", LabelProject+"="+project))})
	cancel()
	if err != nil {
		return fmt.Errorf("listing networks of project %q: %w: check that dockerd is running", project, err)
	}
	ids := map[string]string{}
	for _, n := range nets {
		ids[n.ID] = n.Name
	}
	if n, err := e.findNetwork(ctx, project); err != nil {
		return err
	} else if n != nil {
		ids[n.ID] = n.Name
	}
	for id, name := range ids {
		cctx, cancel := e.call(ctx)
		err := e.Docker.NetworkRemove(cctx, id)
		cancel()
		if err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("removing network %q: %w: see `docker network inspect %s` for containers still attached", name, err, name)
		}
	}
	return nil
}
