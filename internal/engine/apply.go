package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/jsonmessage"
)

// Apply carries out a plan computed for d. The order keeps the stack safe to
// kill at any point: images first (a failed pull leaves the old stack
// running), then the network and removals, then the server, which must
// answer /ping before the scheduler, workers and nginx start in parallel.
// A plan without mutations makes no mutating Docker call.
//
// Apply holds the project lock; a plan observed before another run changed
// things still converges: what is already there with the right hash is
// adopted, what is gone is not an error.
func (e *Engine) Apply(ctx context.Context, d Desired, p Plan) error {
	if p.Mutations() == 0 {
		return nil
	}
	if err := validate(d); err != nil {
		return err
	}
	unlock, err := e.lock(ctx, d.Project.Name)
	if err != nil {
		return err
	}
	defer unlock()
	return e.apply(ctx, d, p)
}

func (e *Engine) apply(ctx context.Context, d Desired, p Plan) error {
	if p.Mutations() == 0 {
		return nil
	}
	log := e.log().With("project", p.Project)
	log.Info("[started] converging", "mutations", p.Mutations())

	if err := e.ensureImages(ctx, p); err != nil {
		log.Error("[failed] converging", "step", "images", "err", err)
		return err
	}

	var server *Action
	var rest, removes []Action
	for i, a := range p.Actions {
		switch {
		case a.Kind == ActCreateNetwork:
		case a.Kind == ActRemove:
			removes = append(removes, a)
		case a.Kind == ActKeep:
		case a.Service == ServerService:
			server = &p.Actions[i]
		default:
			rest = append(rest, a)
		}
	}
	// Always, not only for a "create network" action: a concurrent run may
	// have made a duplicate since we observed.
	netID, err := e.ensureNetwork(ctx, p.Project)
	if err != nil {
		log.Error("[failed] converging", "step", "network", "err", err)
		return err
	}
	if err := parallel(removes, func(a Action) error {
		return e.stopRemove(ctx, a.Container, a.ID, defaultStopGrace, a.Reason)
	}); err != nil {
		log.Error("[failed] converging", "step", "remove", "err", err)
		return err
	}
	// New containers are created while the server starts and answers
	// /ping, and started only after it: creating is most of a cold start's
	// cost, starting is the part the order is about. A kill in between
	// leaves created containers with the current hash, which the next run
	// just starts.
	var fresh []Action
	for _, a := range rest {
		if a.Kind == ActCreate {
			fresh = append(fresh, a)
		}
	}
	// A new server is created alone first: the creates below would slow
	// the one container everything else waits for.
	serverID := ""
	if server != nil && server.Kind == ActCreate {
		svc := d.Project.Services[server.Service]
		svc.Name = server.Service
		e.log().Info("[started] create", "project", d.Project.Name, "service", server.Service, "container", server.Container, "image", server.Image, "hash", shortHash(server.Hash))
		id, err := e.createOnly(ctx, d, netID, svc, *server)
		if err != nil {
			log.Error("[failed] converging", "step", ServerService, "err", err)
			return err
		}
		serverID = id
	}
	var createdMu sync.Mutex
	created := map[string]string{} // service -> container ID
	precreated := make(chan error, 1)
	go func() {
		precreated <- parallel(fresh, func(a Action) error {
			svc := d.Project.Services[a.Service]
			svc.Name = a.Service
			id, err := e.createOnly(ctx, d, netID, svc, a)
			createdMu.Lock()
			created[a.Service] = id
			createdMu.Unlock()
			return err
		})
	}()
	if server != nil {
		var err error
		if serverID != "" {
			err = e.start(ctx, server.Container, serverID)
		} else {
			err = e.applyService(ctx, d, netID, *server)
		}
		if err == nil {
			err = e.waitServer(ctx, d)
		}
		if err != nil {
			<-precreated
			log.Error("[failed] converging", "step", ServerService, "err", err)
			return err
		}
	}
	if err := <-precreated; err != nil {
		log.Error("[failed] converging", "step", "create", "err", err)
		return err
	}
	if err := parallel(rest, func(a Action) error {
		if a.Kind == ActCreate {
			e.log().Info("[started] start", "project", d.Project.Name, "service", a.Service, "container", a.Container)
			return e.start(ctx, a.Container, created[a.Service])
		}
		return e.applyService(ctx, d, netID, a)
	}); err != nil {
		log.Error("[failed] converging", "err", err)
		return err
	}
	log.Info("[finished] converging", "mutations", p.Mutations())
	return nil
}

// parallel runs f for every action at once and joins the errors.
func parallel(actions []Action, f func(Action) error) error {
	errs := make([]error, len(actions))
	var wg sync.WaitGroup
	for i, a := range actions {
		wg.Go(func() { errs[i] = f(a) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// applyService creates, recreates or starts one service's container.
func (e *Engine) applyService(ctx context.Context, d Desired, netID string, a Action) error {
	svc := d.Project.Services[a.Service]
	svc.Name = a.Service
	log := e.log().With("project", d.Project.Name, "service", a.Service, "container", a.Container)
	log.Info("[started] "+string(a.Kind), "image", a.Image, "hash", shortHash(a.Hash))
	var err error
	switch a.Kind {
	case ActStart:
		err = e.start(ctx, a.Container, a.ID)
	case ActRecreate:
		// Stop and remove first, then create under the final name: a kill
		// in between leaves a missing container, which the next run creates.
		if err = e.stopRemove(ctx, a.Container, a.ID, stopGrace(svc), a.Reason); err == nil {
			err = e.createStart(ctx, d, netID, svc, a)
		}
	case ActCreate:
		err = e.createStart(ctx, d, netID, svc, a)
	}
	if err != nil {
		log.Error("[failed] "+string(a.Kind), "err", err)
		return err
	}
	log.Info("[finished] "+string(a.Kind), "hash", shortHash(a.Hash))
	return nil
}

func stopGrace(svc types.ServiceConfig) time.Duration {
	if svc.StopGracePeriod != nil {
		return time.Duration(*svc.StopGracePeriod)
	}
	return defaultStopGrace
}

func (e *Engine) start(ctx context.Context, name, id string) error {
	cctx, cancel := e.call(ctx)
	defer cancel()
	// Starting a running container is a 304, which the client reports as
	// success: a concurrent run that started it first is fine.
	if err := e.Docker.ContainerStart(cctx, id, container.StartOptions{}); err != nil {
		return fmt.Errorf("starting container %q: %w: see `docker logs %s`", name, err, name)
	}
	return nil
}

// stopRemove stops a container (SIGTERM, then SIGKILL after grace) and
// removes it. A container already gone is fine: a concurrent or earlier,
// killed run removed it.
func (e *Engine) stopRemove(ctx context.Context, name, id string, grace time.Duration, why string) error {
	secs := int(grace.Seconds())
	sctx, cancel := context.WithTimeout(ctx, e.callTimeout()+grace)
	defer cancel()
	e.log().Info("[started] stop", "container", name, "reason", why)
	if err := e.Docker.ContainerStop(sctx, id, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stopping container %q: %w: stop it with `docker stop %s` and retry", name, err, name)
	}
	rctx, rcancel := e.call(ctx)
	defer rcancel()
	// Force: the container may have been restarted in between by a
	// concurrent run; removing it is what the plan decided.
	err := e.Docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !isRemovalInProgress(err) {
		return fmt.Errorf("removing container %q: %w: remove it with `docker rm -f %s` and retry", name, err, name)
	}
	e.log().Info("[finished] remove", "container", name)
	return nil
}

// isRemovalInProgress: a concurrent run is already removing it (409).
func isRemovalInProgress(err error) bool { return cerrdefs.IsConflict(err) }

// createStart creates the service's container under its final name and
// starts it. A name conflict means another container holds the name: a
// concurrent run's identical container is adopted; anything else (a
// leftover) is removed and the create retried once.
func (e *Engine) createStart(ctx context.Context, d Desired, netID string, svc types.ServiceConfig, a Action) error {
	id, err := e.createOnly(ctx, d, netID, svc, a)
	if err != nil {
		return err
	}
	return e.start(ctx, a.Container, id)
}

// createOnly creates the container (resolving a name conflict) without starting it.
func (e *Engine) createOnly(ctx context.Context, d Desired, netID string, svc types.ServiceConfig, a Action) (string, error) {
	s := buildSpec(d, netID, svc, a.Hash)
	id, err := e.create(ctx, a.Container, s)
	if cerrdefs.IsConflict(err) {
		id, err = e.resolveConflict(ctx, a, s)
	}
	return id, err
}

func (e *Engine) create(ctx context.Context, name string, s spec) (string, error) {
	cctx, cancel := e.call(ctx)
	defer cancel()
	resp, err := e.Docker.ContainerCreate(cctx, s.Config, s.HostConfig, s.Networking, nil, name)
	if err != nil {
		return "", fmt.Errorf("creating container %q (image %q): %w", name, s.Config.Image, err)
	}
	return resp.ID, nil
}

func (e *Engine) resolveConflict(ctx context.Context, a Action, s spec) (string, error) {
	// A concurrent create holds the name before its container can be
	// inspected; give it a moment to appear (bounded: 50 polls, ~5s).
	for range 50 {
		cctx, cancel := e.call(ctx)
		holder, err := e.Docker.ContainerInspect(cctx, a.Container)
		cancel()
		switch {
		case err == nil && holder.Config != nil:
			l := holder.Config.Labels
			if l[LabelProject] == s.Config.Labels[LabelProject] && l[LabelService] == a.Service && l[LabelConfigHash] == a.Hash {
				e.log().Info("adopting the identical container a concurrent run created", "container", a.Container)
				return holder.ID, nil
			}
			// A leftover: remove it and retry once.
			if err := e.stopRemove(ctx, a.Container, holder.ID, defaultStopGrace, "holds the name"); err != nil {
				return "", err
			}
			id, err := e.create(ctx, a.Container, s)
			if err != nil {
				return "", fmt.Errorf("%w: remove the container holding the name with `docker rm -f %s`", err, a.Container)
			}
			return id, nil
		case err != nil && !cerrdefs.IsNotFound(err):
			return "", fmt.Errorf("inspecting container %q that holds the name: %w: remove it with `docker rm -f %s`", a.Container, err, a.Container)
		}
		// Not visible: the holder is still being created, or is gone.
		id, err := e.create(ctx, a.Container, s)
		if !cerrdefs.IsConflict(err) {
			return id, err
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("creating container %q: %w", a.Container, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("creating container %q: the name stays taken by a container that cannot be inspected: remove it with `docker rm -f %s`", a.Container, a.Container)
}

// ensureNetwork makes sure the project network exists and returns the ID
// containers attach to. Docker before API 1.44 rejects a duplicate name only
// best-effort (CheckDuplicate races), so two concurrent runs can make two
// networks of one name. Every run then picks the oldest, which no later
// create can displace, attaches by ID (a name would be "ambiguous") and
// removes the younger ones, which nobody attached to.
func (e *Engine) ensureNetwork(ctx context.Context, project string) (string, error) {
	name := networkName(project)
	nets, err := e.exactNetworks(ctx, name)
	if err != nil {
		return "", err
	}
	if len(nets) == 0 {
		if err := e.createNetwork(ctx, project); err != nil {
			return "", err
		}
		if nets, err = e.exactNetworks(ctx, name); err != nil {
			return "", err
		}
		if len(nets) == 0 {
			return "", fmt.Errorf("creating network %q: created but not listed: check `docker network ls`", name)
		}
	}
	for _, n := range nets[1:] {
		cctx, cancel := e.call(ctx)
		err := e.Docker.NetworkRemove(cctx, n.ID)
		cancel()
		if err != nil && !cerrdefs.IsNotFound(err) {
			// Harmless to us (we attach by ID); `docker network rm` it.
			e.log().Warn("removing duplicate network", "network", name, "id", n.ID, "err", err)
		}
	}
	return nets[0].ID, nil
}

// exactNetworks lists the networks named exactly name (Docker's name filter
// matches substrings), oldest first.
func (e *Engine) exactNetworks(ctx context.Context, name string) ([]network.Summary, error) {
	cctx, cancel := e.call(ctx)
	defer cancel()
	nets, err := e.Docker.NetworkList(cctx, network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return nil, fmt.Errorf("listing networks named %q: %w: check that dockerd is running and reachable", name, err)
	}
	nets = slices.DeleteFunc(nets, func(n network.Summary) bool { return n.Name != name })
	slices.SortFunc(nets, func(a, b network.Summary) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return nets, nil
}

// createNetwork creates the project network with compose's labels. A
// conflict means a concurrent run made it first: fine.
func (e *Engine) createNetwork(ctx context.Context, project string) error {
	name := networkName(project)
	cctx, cancel := e.call(ctx)
	defer cancel()
	e.log().Info("[started] create network", "network", name)
	_, err := e.Docker.NetworkCreate(cctx, name, network.CreateOptions{
		Driver: "bridge",
		Labels: map[string]string{LabelProject: project, LabelNetwork: defaultNetwork, LabelManagedBy: managedBy},
	})
	if err != nil && !cerrdefs.IsConflict(err) {
		return fmt.Errorf("creating network %q: %w: check `docker network ls` and free address pools", name, err)
	}
	e.log().Info("[finished] create network", "network", name)
	return nil
}

// ensureImages makes sure every image the plan creates from is present,
// pulling only the missing ones, before anything is stopped.
func (e *Engine) ensureImages(ctx context.Context, p Plan) error {
	seen := map[string]bool{}
	for _, a := range p.Actions {
		if (a.Kind != ActCreate && a.Kind != ActRecreate) || seen[a.Image] {
			continue
		}
		seen[a.Image] = true
		if err := e.ensureImage(ctx, a.Image); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) ensureImage(ctx context.Context, ref string) error {
	cctx, cancel := e.call(ctx)
	_, err := e.Docker.ImageInspect(cctx, ref)
	cancel()
	if err == nil {
		return nil
	}
	if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspecting image %q: %w: check that dockerd is running", ref, err)
	}
	e.log().Info("[started] pull", "image", ref)
	pctx, pcancel := context.WithTimeout(ctx, e.pullTimeout())
	defer pcancel()
	rc, err := e.Docker.ImagePull(pctx, ref, image.PullOptions{})
	if err == nil {
		err = drainPull(rc)
	}
	if err != nil {
		e.log().Error("[failed] pull", "image", ref, "err", err)
		return fmt.Errorf("pulling missing image %q: %w: bake it into the AMI (prepare-image) or check redash:image and registry access", ref, err)
	}
	e.log().Info("[finished] pull", "image", ref)
	return nil
}

// drainPull reads the pull progress to its end; a failure arrives as an
// error message in the stream, not as an HTTP status.
func drainPull(rc io.ReadCloser) error {
	defer rc.Close()
	dec := json.NewDecoder(rc)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		if m.Error != nil {
			return errors.New(m.Error.Message)
		}
	}
}
