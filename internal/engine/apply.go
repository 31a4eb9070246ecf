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

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
)

// Apply carries out the actions of the given stages of a plan computed
// for d (see Stage for why the stages are separate calls). It is a loop
// without decisions: every choice is in the plan; Apply only runs each
// action as soon as the actions it comes after have finished, so
// independent ones run in parallel, and never runs an action after one it
// depends on failed. A stage without mutations makes no mutating Docker
// call.
//
// Apply holds the project lock while it changes containers, and lets it
// go once the last change is done: a wait needs no lock, and holding it
// there would hold up another run for as long as an unhealthy stack takes
// to fail. A plan observed before another run changed things still
// converges: a container already created with the right hash is adopted,
// one already gone is not an error.
func (e *Engine) Apply(ctx context.Context, d Desired, p Plan, stages ...Stage) error {
	var todo, changes []int
	for i, a := range p.Actions {
		if slices.Contains(stages, a.Stage) && a.Kind != ActKeep {
			todo = append(todo, i)
			if a.Kind != ActWaitReady {
				changes = append(changes, i)
			}
		}
	}
	if len(todo) == 0 {
		return nil
	}
	if err := validate(d); err != nil {
		return err
	}
	var unlockOnce sync.Once
	unlock := func() {}
	if len(changes) > 0 {
		release, err := e.lock(ctx, d.Project.Name)
		if err != nil {
			return err
		}
		unlock = func() { unlockOnce.Do(release) }
		defer unlock()
	}
	names := make([]string, len(stages))
	for i, st := range stages {
		names[i] = st.String()
	}
	log := e.log().With("project", p.Project, "stage", strings.Join(names, "+"))
	log.Info("[started] applying", "actions", len(todo))
	if (slices.Contains(stages, StageBacking) || slices.Contains(stages, StageContainers)) && attachesToObservedNetwork(p) {
		// Whatever attaches to the project network removes the empty
		// duplicates a create race on Docker before API 1.44 left (see
		// ensureNetwork); the creates attach by the observed (oldest) ID.
		if _, err := e.ensureNetwork(ctx, d.Project.Name, false); err != nil {
			log.Warn("checking the project network for duplicates", "err", err)
		}
	}

	// Actions of other stages ran in earlier calls: they count as done.
	done := make([]chan struct{}, len(p.Actions))
	failed := make([]bool, len(p.Actions))
	for i := range done {
		done[i] = make(chan struct{})
		if !slices.Contains(stages, p.Actions[i].Stage) || p.Actions[i].Kind == ActKeep {
			close(done[i])
		}
	}
	st := &applyState{created: map[string]string{}}
	if err := e.networkFromEarlierStage(ctx, d, p, slices.Min(stages), st); err != nil {
		return err
	}
	if len(changes) > 0 {
		go func() {
			for _, i := range changes {
				<-done[i]
			}
			unlock()
		}()
	}
	errs := make([]error, len(p.Actions))
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Go(func() {
			defer close(done[i])
			a := p.Actions[i]
			for _, j := range a.After {
				<-done[j]
				if failed[j] {
					failed[i] = true
					return
				}
			}
			if err := e.run(ctx, d, st, i, a); err != nil {
				failed[i], errs[i] = true, err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		if slices.Contains(stages, StageImages) && ctx.Err() == nil {
			err = missingImages(d, p, errs) // every image at once, with its key
		}
		log.Error("[failed] applying", "err", err)
		return err
	}
	log.Info("[finished] applying", "actions", len(todo))
	return nil
}

// attachesToObservedNetwork: the plan creates containers on a network it
// observed (it does not create the network itself).
func attachesToObservedNetwork(p Plan) bool {
	for _, a := range p.Actions {
		if a.Kind == ActCreateNetwork {
			return false
		}
	}
	for _, a := range p.Actions {
		if a.Kind == ActCreate && a.NetworkID != "" {
			return true
		}
	}
	return false
}

// applyState carries what one action learns to the actions after it: the
// network's ID, and the ID of each container created.
type applyState struct {
	mu      sync.Mutex
	netID   string
	created map[string]string // service -> container ID
}

func (s *applyState) set(f func()) { s.mu.Lock(); f(); s.mu.Unlock() }

// run carries out one action: one Docker call (or, for a create whose name
// is taken, the few it takes to adopt or clear it), or one wait.
func (e *Engine) run(ctx context.Context, d Desired, st *applyState, n int, a Action) error {
	log := e.log().With("project", d.Project.Name, "n", n+1, "action", a.Text())
	if a.Service != "" {
		log = log.With("service", a.Service)
	}
	log.Info("[started] " + string(a.Kind))
	var err error
	switch a.Kind {
	case ActPull:
		err = e.pull(ctx, a.Image)
	case ActCreateNetwork:
		var id string
		if id, err = e.ensureNetwork(ctx, d.Project.Name, true); err == nil {
			st.set(func() { st.netID = id })
		}
	case ActStop:
		err = e.stop(ctx, a.Container, a.ID, stopGrace(d.Project.Services[a.Service]))
	case ActRemove:
		err = e.remove(ctx, a.Container, a.ID)
	case ActCreate:
		svc := d.Project.Services[a.Service]
		svc.Name = a.Service
		netID := a.NetworkID
		st.set(func() {
			if netID == "" {
				netID = st.netID
			}
		})
		var id string
		if id, err = e.createOnly(ctx, d, netID, svc, a); err == nil {
			st.set(func() { st.created[a.Service] = id })
		}
	case ActStart:
		id := a.ID
		st.set(func() {
			if id == "" {
				id = st.created[a.Service]
			}
		})
		err = e.startOrRecreate(ctx, d, a, id)
	case ActRestart:
		err = e.restart(ctx, a.Container, a.ID, stopGrace(d.Project.Services[a.Service]))
	case ActWaitReady:
		err = e.waitFor(ctx, d, a.Service)
	default:
		err = fmt.Errorf("applying plan action %q: unknown kind: the plan was made by another version of the agent; run up again", a.Text())
	}
	if err != nil {
		log.Error("[failed] "+string(a.Kind), "err", err)
		return err
	}
	log.Info("[finished] " + string(a.Kind))
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

// stop stops a container: SIGTERM, then SIGKILL after grace. A container
// already gone is fine: a concurrent or earlier, killed run removed it.
func (e *Engine) stop(ctx context.Context, name, id string, grace time.Duration) error {
	secs := int(grace.Seconds())
	sctx, cancel := context.WithTimeout(ctx, e.callTimeout()+grace)
	defer cancel()
	if err := e.Docker.ContainerStop(sctx, id, container.StopOptions{Timeout: &secs}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stopping container %q: %w: stop it with `docker stop %s` and retry", name, err, name)
	}
	return nil
}

// remove removes a container. Force: it may have been restarted in between
// by Docker's on-failure policy or a concurrent run; removing it is what the
// plan decided. A container already gone, or being removed, is fine.
func (e *Engine) remove(ctx context.Context, name, id string) error {
	rctx, cancel := e.call(ctx)
	defer cancel()
	err := e.Docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true})
	if err != nil && !cerrdefs.IsNotFound(err) && !isRemovalInProgress(err) {
		return fmt.Errorf("removing container %q: %w: remove it with `docker rm -f %s` and retry", name, err, name)
	}
	return nil
}

// restart restarts a running container, giving it its stop grace.
func (e *Engine) restart(ctx context.Context, name, id string, grace time.Duration) error {
	secs := int(grace.Seconds())
	rctx, cancel := context.WithTimeout(ctx, e.callTimeout()+grace)
	defer cancel()
	if err := e.Docker.ContainerRestart(rctx, id, container.StopOptions{Timeout: &secs}); err != nil {
		return fmt.Errorf("restarting container %q: %w: restart it with `docker restart %s`", name, err, name)
	}
	return nil
}

// stopRemove is stop then remove, for Down and for a leftover that holds a
// container's name.
func (e *Engine) stopRemove(ctx context.Context, name, id string, grace time.Duration, why string) error {
	e.log().Info("[started] stop and remove", "container", name, "reason", why)
	if err := e.stop(ctx, name, id, grace); err != nil {
		return err
	}
	if err := e.remove(ctx, name, id); err != nil {
		return err
	}
	e.log().Info("[finished] stop and remove", "container", name)
	return nil
}

// isRemovalInProgress: a concurrent run is already removing it (409).
func isRemovalInProgress(err error) bool { return cerrdefs.IsConflict(err) }

// createOnly creates the container (resolving a name conflict) without
// starting it. A name conflict means another container holds the name: a
// concurrent run's identical container is adopted; anything else (a
// leftover) is removed and the name taken once it frees (polled, bounded;
// see resolveConflict).
func (e *Engine) createOnly(ctx context.Context, d Desired, netID string, svc types.ServiceConfig, a Action) (string, error) {
	s := buildSpec(d, netID, svc, a.Hash, a.ImageID)
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
			// A leftover: remove it, then take the name below. Its removal
			// may already be under way (a killed run started it: Docker
			// answers "in progress", which remove takes as done), and the
			// name frees only when it ends, so a conflict polls again.
			if err := e.stopRemove(ctx, a.Container, holder.ID, defaultStopGrace, "holds the name"); err != nil {
				return "", err
			}
		case err != nil && !cerrdefs.IsNotFound(err):
			return "", fmt.Errorf("inspecting container %q that holds the name: %w: remove it with `docker rm -f %s`", a.Container, err, a.Container)
		}
		// Removed, or not visible: the holder is still being created or
		// removed, or is gone.
		id, err := e.create(ctx, a.Container, s)
		if !cerrdefs.IsConflict(err) {
			return id, err
		}
		if err := backoff.Sleep(ctx, 100*time.Millisecond); err != nil {
			return "", fmt.Errorf("creating container %q: %w", a.Container, err)
		}
	}
	return "", fmt.Errorf("creating container %q: the name stays taken after 50 attempts to free it: remove the container holding it with `docker rm -f %s`", a.Container, a.Container)
}

// ensureNetwork makes sure the project network exists and returns the ID
// containers attach to. Docker before API 1.44 rejects a duplicate name only
// best-effort (CheckDuplicate races), so two concurrent runs can make two
// networks of one name. Every run then picks the oldest, which no later
// create can displace, attaches by ID (a name would be "ambiguous") and
// removes the younger ones, which nobody attached to.
//
// missing says the plan observed no network: the create is tried first (a
// conflict means it is there after all), saving a listing on a cold start.
func (e *Engine) ensureNetwork(ctx context.Context, project string, missing bool) (string, error) {
	name := compose.NetworkName(project)
	var nets []network.Summary
	if !missing {
		var err error
		if nets, err = e.exactNetworks(ctx, name); err != nil {
			return "", err
		}
	}
	if len(nets) == 0 {
		var err error
		if err = e.createNetwork(ctx, project); err != nil {
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
	name := compose.NetworkName(project)
	cctx, cancel := e.call(ctx)
	defer cancel()
	e.log().Info("[started] create network", "network", name)
	_, err := e.Docker.NetworkCreate(cctx, name, network.CreateOptions{
		Driver: "bridge",
		Labels: map[string]string{LabelProject: project, LabelNetwork: compose.DefaultNetwork, LabelManagedBy: managedBy},
	})
	if err != nil && !cerrdefs.IsConflict(err) {
		return fmt.Errorf("creating network %q: %w: check `docker network ls` and free address pools", name, err)
	}
	e.log().Info("[finished] create network", "network", name)
	return nil
}

// ensureImage pulls ref when it is missing.
func (e *Engine) ensureImage(ctx context.Context, ref string) error {
	id, err := e.ImageID(ctx, ref)
	if err != nil || id != "" {
		return err
	}
	e.log().Info("[started] pull", "image", ref)
	if err := e.pull(ctx, ref); err != nil {
		e.log().Error("[failed] pull", "image", ref, "err", err)
		return err
	}
	e.log().Info("[finished] pull", "image", ref)
	return nil
}

// pull pulls ref, bounded by PullTimeout.
func (e *Engine) pull(ctx context.Context, ref string) error {
	pctx, pcancel := context.WithTimeout(ctx, e.pullTimeout())
	defer pcancel()
	rc, err := e.Docker.ImagePull(pctx, ref, image.PullOptions{})
	if err == nil {
		err = drainPull(rc)
	}
	if err != nil {
		return fmt.Errorf("pulling missing image %q: %w", ref, err)
	}
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
