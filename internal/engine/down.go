package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"

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
		if err := e.removeNetwork(ctx, id, name); err != nil {
			return err
		}
	}
	return nil
}

// removeNetwork removes one network. dockerd 20.10 can keep a stale
// endpoint count on a network whose containers are all gone (moby/moby#42119):
// it refuses the removal with "has active endpoints" though nothing is
// attached, and no API call clears it. Such a network carries nothing and
// the next `up` reuses it, so that is a warning, not a failed down: the
// containers are gone, which is what down is for.
func (e *Engine) removeNetwork(ctx context.Context, id, name string) error {
	cctx, cancel := e.call(ctx)
	err := e.Docker.NetworkRemove(cctx, id)
	cancel()
	if err == nil || cerrdefs.IsNotFound(err) {
		return nil
	}
	// dockerd answers "has active endpoints" with 403 Forbidden.
	if !cerrdefs.IsPermissionDenied(err) {
		return fmt.Errorf("removing network %q: %w: check that dockerd is running (`systemctl status docker`), then run `redash-agent down --remove` again", name, err)
	}
	cctx, cancel = e.call(ctx)
	in, ierr := e.Docker.NetworkInspect(cctx, id, network.InspectOptions{})
	cancel()
	switch {
	case cerrdefs.IsNotFound(ierr):
		return nil
	case ierr != nil:
		return fmt.Errorf("removing network %q: %w; inspecting it then failed: %v: see `docker network inspect %s` for containers still attached", name, err, ierr, name)
	case len(in.Containers) > 0:
		var attached []string
		for _, c := range in.Containers {
			attached = append(attached, c.Name)
		}
		sort.Strings(attached)
		return fmt.Errorf("removing network %q: containers not of this project are still attached: %s: disconnect them (`docker network disconnect %s <container>`), then run `redash-agent down --remove` again",
			name, strings.Join(attached, ", "), name)
	}
	e.log().Warn("network left in place: dockerd counts endpoints on it that no longer exist (a known dockerd bug, moby/moby#42119); it is empty and the next `up` reuses it; restarting dockerd clears the count, then `docker network rm` removes it",
		"network", name, "err", err)
	return nil
}
