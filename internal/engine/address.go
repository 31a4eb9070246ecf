package engine

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// ServiceAddress is the IP address of a running service container on its
// project network: how the agent, on the host, reaches provider local's
// bundled postgres, which publishes no port (on Linux the host routes to a
// bridge network's containers). It fails, saying what to do, when the
// container is missing, not running or not on the network.
func (e *Engine) ServiceAddress(ctx context.Context, project, service string) (string, error) {
	name := containerName(project, service)
	cctx, cancel := e.call(ctx)
	defer cancel()
	c, err := e.Docker.ContainerInspect(cctx, name)
	if cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("finding the address of service %q: no container %s: run `redash-agent up` to create it", service, name)
	}
	if err != nil {
		return "", fmt.Errorf("inspecting container %s for its address: %w: check that dockerd is running", name, err)
	}
	if c.State == nil || !c.State.Running {
		state := "unknown"
		if c.State != nil {
			state = c.State.Status
		}
		return "", fmt.Errorf("service %q is not running (container %s is %s): run `redash-agent up` to start it, or see `docker logs %s`", service, name, state, name)
	}
	netName := compose.NetworkName(project)
	if c.NetworkSettings != nil {
		if ep, ok := c.NetworkSettings.Networks[netName]; ok && ep != nil && ep.IPAddress != "" {
			return ep.IPAddress, nil
		}
	}
	return "", fmt.Errorf("container %s has no address on network %s: run `redash-agent up` to recreate it on the project network", name, netName)
}

// networkFromEarlierStage gives st the project network's ID when an earlier
// stage of p created it (StageBacking, for provider local): the creates of
// this stage carry no NetworkID, and the ID is learned from Docker.
func (e *Engine) networkFromEarlierStage(ctx context.Context, d Desired, p Plan, stage Stage, st *applyState) error {
	for _, a := range p.Actions {
		if a.Kind != ActCreateNetwork || a.Stage >= stage {
			continue
		}
		n, err := e.findNetwork(ctx, d.Project.Name)
		if err != nil {
			return err
		}
		if n == nil {
			return fmt.Errorf("the project network %s, created in stage %s, is gone: run up again", compose.NetworkName(d.Project.Name), a.Stage)
		}
		st.netID = n.ID
	}
	return nil
}
