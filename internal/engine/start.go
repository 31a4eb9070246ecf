package engine

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"

	"github.com/redash-agent/redash-agent/internal/backoff"
)

// startOrRecreate starts a service's container. A start that fails for a
// reason other than a taken port removes the container, creates it again
// from the same spec and starts that one, once: a daemon restart in the
// middle of a start can leave a container that no later start can run
// ("task ... already exists" from containerd, a half-made network
// endpoint), and only a new container gets out of that. A port that is
// taken is not the container's fault: recreating would not help, so the
// error names whoever holds the port.
func (e *Engine) startOrRecreate(ctx context.Context, d Desired, a Action, id string) error {
	err := e.start(ctx, a.Container, id)
	if err == nil || ctx.Err() != nil {
		return err
	}
	if isPortTaken(err) {
		return e.portConflict(ctx, d, a, id, err)
	}
	e.log().Warn("start failed; removing the container and creating it again, once", "container", a.Container, "err", err)
	newID, rerr := e.recreate(ctx, d, a, id)
	if rerr != nil {
		return fmt.Errorf("%w; creating it again also failed: %w", err, rerr)
	}
	err2 := e.start(ctx, a.Container, newID)
	if err2 == nil {
		e.log().Info("the container created again started", "container", a.Container)
		return nil
	}
	if isPortTaken(err2) {
		return e.portConflict(ctx, d, a, newID, err2)
	}
	return fmt.Errorf("%w (the first attempt, before removing and creating it again, failed with: %v)", err2, err)
}

// recreate removes the container id of a's service and creates it again
// with the spec the plan wanted, on the network and with the image label
// the failed one had.
func (e *Engine) recreate(ctx context.Context, d Desired, a Action, id string) (string, error) {
	cctx, cancel := e.call(ctx)
	old, err := e.Docker.ContainerInspect(cctx, id)
	cancel()
	if err != nil && !cerrdefs.IsNotFound(err) {
		return "", fmt.Errorf("inspecting container %q: %w", a.Container, err)
	}
	netID, imageID := a.NetworkID, a.ImageID
	if err == nil {
		if old.HostConfig != nil && old.HostConfig.NetworkMode != "" {
			netID = string(old.HostConfig.NetworkMode)
		}
		if old.Config != nil && old.Config.Labels[LabelImage] != "" {
			imageID = old.Config.Labels[LabelImage]
		}
		if err := e.remove(ctx, a.Container, id); err != nil {
			return "", err
		}
	}
	if netID == "" {
		n, err := e.findNetwork(ctx, d.Project.Name)
		if err != nil {
			return "", err
		}
		if n == nil {
			return "", fmt.Errorf("creating container %q again: the project network is gone: run up again", a.Container)
		}
		netID = n.ID
	}
	svc, ok := d.Project.Services[a.Service]
	if !ok {
		return "", fmt.Errorf("creating container %q again: service %q is not in the project", a.Container, a.Service)
	}
	svc.Name = a.Service
	hash := a.Hash
	if hash == "" {
		hash = ConfigHash(svc, d.Env, d.HashKey)
	}
	// Not createOnly: its conflict path would adopt the failed container,
	// which has the same hash, if its removal were still under way. The
	// name frees a moment after the removal: poll, bounded (~5 s).
	s := buildSpec(d, netID, svc, hash, imageID)
	for range 50 {
		newID, err := e.create(ctx, a.Container, s)
		if !cerrdefs.IsConflict(err) {
			return newID, err
		}
		if err := backoff.Sleep(ctx, 100*time.Millisecond); err != nil {
			return "", fmt.Errorf("creating container %q again: %w", a.Container, err)
		}
	}
	return "", fmt.Errorf("creating container %q again: its name stays taken after the removal: remove it with `docker rm -f %s` and run up again", a.Container, a.Container)
}

// isPortTaken recognises the daemon's two ways of saying a host port is
// taken: by another container's (or a stale) docker-proxy, or by a host
// process. The Engine API gives this no error type of its own (a 500 with
// the message), so the daemon's text is the only signal; our own errors are
// never classified by text.
func isPortTaken(err error) bool {
	s := err.Error()
	return strings.Contains(s, "port is already allocated") || strings.Contains(s, "address already in use")
}

// portConflict builds the error for a start refused because a published
// host port is taken, naming the running container that publishes it or,
// when no container does, saying a host process (or a docker-proxy left by
// a daemon restart) holds it.
func (e *Engine) portConflict(ctx context.Context, d Desired, a Action, id string, err error) error {
	svc := d.Project.Services[a.Service]
	var ports []uint16
	for _, p := range svc.Ports {
		if n, perr := strconv.ParseUint(p.Published, 10, 16); perr == nil && n > 0 {
			ports = append(ports, uint16(n))
		}
	}
	cctx, cancel := e.call(ctx)
	list, lerr := e.Docker.ContainerList(cctx, container.ListOptions{})
	cancel()
	if lerr != nil {
		return fmt.Errorf("%w: a published port of service %q (%v) is taken; listing containers to find the holder also failed: %v", err, a.Service, ports, lerr)
	}
	var holders []string
	for _, c := range list {
		if c.ID == id {
			continue
		}
		for _, p := range c.Ports {
			for _, want := range ports {
				if p.PublicPort == want {
					name := c.ID[:min(12, len(c.ID))]
					if len(c.Names) > 0 {
						name = strings.TrimPrefix(c.Names[0], "/")
					}
					holders = append(holders, fmt.Sprintf("container %q publishes host port %d", name, want))
				}
			}
		}
	}
	if len(holders) > 0 {
		return fmt.Errorf("%w: %s: stop or remove it (`docker rm -f NAME`) or change the published port, then run up again", err, strings.Join(holders, "; "))
	}
	return fmt.Errorf("%w: no container publishes host port(s) %v, so a host process holds it, or a docker-proxy left by a daemon restart: find it with `ss -ltnp` and stop it (a stale docker-proxy goes with `systemctl restart docker`), then run up again", err, ports)
}
