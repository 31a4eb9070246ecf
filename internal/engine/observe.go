package engine

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// Observed is what the Docker Engine holds for one project.
type Observed struct {
	Project    string
	Containers []Container // every container with the project label, by name
	Network    *Network    // the project's default network; nil when missing
	// Images maps each desired image reference that is present to its ID;
	// a missing image has no entry.
	Images map[string]string
}

// Container is one observed container, read from its labels and state.
type Container struct {
	ID      string
	Name    string // without Docker's leading "/"
	Service string
	Number  string
	OneOff  bool
	Hash    string
	Image   string
	// ImageID is the image the container was created from: its LabelImage,
	// else the ID Docker reports (containers made before the label).
	ImageID string
	State   string // created, running, restarting, exited, paused, dead, removing
	// NetworkID is the project network it is attached to ("" if unknown).
	NetworkID string
	// StartedAt is when a running container of a service in a
	// resolvesAtStart pair last started (zero for the others: reading it
	// takes an inspect).
	StartedAt time.Time
}

// Network is the observed project network.
type Network struct {
	ID   string
	Name string
}

// Observe lists the containers (running or not) that carry the project
// label, the project's default network and the IDs of d's images that are
// present. It only reads.
func (e *Engine) Observe(ctx context.Context, d Desired) (Observed, error) {
	if err := validate(d); err != nil {
		return Observed{}, err
	}
	o, err := e.observe(ctx, d.Project.Name)
	if err != nil {
		return o, err
	}
	if err := e.observeStarts(ctx, o.Containers); err != nil {
		return o, err
	}
	o.Images = map[string]string{}
	for _, name := range serviceOrder(d.Project) {
		ref := d.Project.Services[name].Image
		if _, seen := o.Images[ref]; seen {
			continue
		}
		id, err := e.ImageID(ctx, ref)
		if err != nil {
			return o, err
		}
		if id != "" {
			o.Images[ref] = id
		}
	}
	return o, nil
}

// observeStarts fills StartedAt for the running containers of the
// services in a resolvesAtStart pair: the plan restarts a dependent that
// started before the container it resolved.
func (e *Engine) observeStarts(ctx context.Context, cs []Container) error {
	for i, c := range cs {
		if c.State != "running" || c.OneOff || !inResolvesAtStart(c.Service) {
			continue
		}
		cctx, cancel := e.call(ctx)
		in, err := e.Docker.ContainerInspect(cctx, c.ID)
		cancel()
		if cerrdefs.IsNotFound(err) {
			continue // removed meanwhile: the plan creates it
		}
		if err != nil {
			return fmt.Errorf("inspecting container %q: %w: check that dockerd is running", c.Name, err)
		}
		if in.State != nil {
			cs[i].StartedAt, _ = time.Parse(time.RFC3339Nano, in.State.StartedAt)
		}
	}
	return nil
}

// ImageID is the ID of the image under ref, or "" when it is not present.
func (e *Engine) ImageID(ctx context.Context, ref string) (string, error) {
	cctx, cancel := e.call(ctx)
	defer cancel()
	in, err := e.Docker.ImageInspect(cctx, ref)
	if cerrdefs.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inspecting image %q: %w: check that dockerd is running", ref, err)
	}
	return in.ID, nil
}

// Containers lists every container of the project, running or not, by
// name. It only reads.
func (e *Engine) Containers(ctx context.Context, project string) ([]Container, error) {
	o, err := e.observe(ctx, project)
	return o.Containers, err
}

// observe reads the project's containers and network.
func (e *Engine) observe(ctx context.Context, project string) (Observed, error) {
	o := Observed{Project: project}
	cctx, cancel := e.call(ctx)
	defer cancel()
	list, err := e.Docker.ContainerList(cctx, container.ListOptions{
		All:     true,
		Filters: filters.NewArgs(filters.Arg("label", LabelProject+"="+project)),
	})
	if err != nil {
		return o, fmt.Errorf("listing containers of project %q: %w: check that dockerd is running and reachable", project, err)
	}
	for _, s := range list {
		name := ""
		if len(s.Names) > 0 {
			name = strings.TrimPrefix(s.Names[0], "/")
		}
		netID := ""
		if s.NetworkSettings != nil {
			if n := s.NetworkSettings.Networks[compose.NetworkName(project)]; n != nil {
				netID = n.NetworkID
			}
		}
		imageID := s.Labels[LabelImage]
		if imageID == "" {
			imageID = s.ImageID
		}
		o.Containers = append(o.Containers, Container{
			ImageID:   imageID,
			NetworkID: netID,
			ID:        s.ID,
			Name:      name,
			Service:   s.Labels[LabelService],
			Number:    s.Labels[LabelContainerNumber],
			OneOff:    !strings.EqualFold(s.Labels[LabelOneOff], oneOffFalse),
			Hash:      s.Labels[LabelConfigHash],
			Image:     s.Image,
			State:     string(s.State),
		})
	}
	slices.SortFunc(o.Containers, func(a, b Container) int { return strings.Compare(a.Name, b.Name) })

	n, err := e.findNetwork(ctx, project)
	if err != nil {
		return o, err
	}
	o.Network = n
	return o, nil
}

// findNetwork finds the project network by exact name. A network left by
// docker-compose v1 has the same name, so it is reused rather than
// duplicated; of duplicates, the oldest wins (see ensureNetwork).
func (e *Engine) findNetwork(ctx context.Context, project string) (*Network, error) {
	nets, err := e.exactNetworks(ctx, compose.NetworkName(project))
	if err != nil || len(nets) == 0 {
		return nil, err
	}
	return &Network{ID: nets[0].ID, Name: nets[0].Name}, nil
}
