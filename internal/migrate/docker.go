package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Runner runs one command of the target image to completion.
type Runner interface {
	RunOneOff(ctx context.Context, spec OneOff) (exitCode int, logs string, err error)
}

// OneOff is one command of the Redash image, the way `docker compose run`
// would start it. Env is handed to Docker only.
type OneOff struct {
	Project, Network, Service, Image string
	Cmd                              []string
	Env                              map[string]string
}

// Compose labels, so `docker compose -p <project> ps -a` shows the one-off
// as compose's own `run` would.
const (
	labelProject = "com.docker.compose.project"
	labelService = "com.docker.compose.service"
	labelOneOff  = "com.docker.compose.oneoff"
	labelNetwork = "com.docker.compose.network"
)

// DockerAPI is the part of the Docker Engine API a one-off needs.
type DockerAPI interface {
	NetworkInspect(ctx context.Context, networkID string, options network.InspectOptions) (network.Inspect, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerWait(ctx context.Context, containerID string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerLogs(ctx context.Context, containerID string, options container.LogsOptions) (io.ReadCloser, error)
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
}

var _ DockerAPI = (*client.Client)(nil)

// DockerRunner is the real Runner: it creates the project network when
// missing, runs the container, collects its logs and removes it, also when
// ctx ends first (the container is killed then).
type DockerRunner struct {
	Docker DockerAPI
	Logger *slog.Logger
	// LogLines is how many of the last log lines are kept; default 200.
	LogLines int
}

// netMu serializes network creation in this process, across runners:
// Docker 20.10's duplicate-name check is racy, and two networks with one
// name make every later container create fail as "ambiguous".
var netMu sync.Mutex

var _ Runner = (*DockerRunner)(nil)

// RunOneOff runs spec to completion and returns its exit code and the tail
// of its combined output.
func (r *DockerRunner) RunOneOff(ctx context.Context, spec OneOff) (int, string, error) {
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := r.ensureNetwork(ctx, spec.Project, spec.Network); err != nil {
		return -1, "", err
	}
	r.sweep(ctx, spec.Project, log)

	name := spec.Project + "-migrate-" + shortRandom()
	inFlight.Store(name, true)
	defer inFlight.Delete(name)
	env := make([]string, 0, len(spec.Env))
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	created, err := r.Docker.ContainerCreate(ctx,
		&container.Config{
			Image: spec.Image,
			Cmd:   spec.Cmd,
			Env:   env,
			Labels: map[string]string{
				labelProject: spec.Project,
				labelService: spec.Service,
				labelOneOff:  "True",
			},
		},
		// No restart policy and no auto-remove: we read the logs after the
		// exit and remove the container ourselves.
		&container.HostConfig{NetworkMode: container.NetworkMode(spec.Network)},
		nil, nil, name)
	if err != nil {
		return -1, "", fmt.Errorf("creating one-off container %q from image %q: %w: the image must be present on the host (redash-agent prepare-image bakes it into the AMI)", name, spec.Image, err)
	}
	id := created.ID
	defer func() {
		// ctx may be over: removal gets its own short deadline. Force
		// kills a one-off that is still running (deadline, lost lock).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := r.Docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			log.Warn("removing one-off container; the next run removes it", "container", name, "err", err)
		}
	}()

	// Wait is registered before start so a fast exit cannot be missed.
	waitCh, waitErr := r.Docker.ContainerWait(ctx, id, container.WaitConditionNextExit)
	if err := r.Docker.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
		return -1, "", fmt.Errorf("starting one-off container %q: %w", name, err)
	}
	log.Info("one-off started", "container", name, "cmd", strings.Join(spec.Cmd, " "))

	var code int
	select {
	case w := <-waitCh:
		code = int(w.StatusCode)
		if w.Error != nil && w.Error.Message != "" {
			return code, r.logs(ctx, id), fmt.Errorf("waiting for one-off container %q: %s", name, w.Error.Message)
		}
	case err := <-waitErr:
		if ctx.Err() != nil {
			return -1, r.logs(ctx, id), fmt.Errorf("one-off container %q stopped before it finished: %w", name, context.Cause(ctx))
		}
		return -1, r.logs(ctx, id), fmt.Errorf("waiting for one-off container %q: %w", name, err)
	}
	return code, r.logs(ctx, id), nil
}

// logs returns the last LogLines lines of stdout and stderr interleaved.
// Logs are best effort: a failure to read them must not hide the exit code.
func (r *DockerRunner) logs(ctx context.Context, id string) string {
	n := r.LogLines
	if n <= 0 {
		n = 200
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	rc, err := r.Docker.ContainerLogs(lctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(n)})
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 1<<20)); err != nil && buf.Len() == 0 {
		return fmt.Sprintf("(logs unreadable: %v)", err)
	}
	return buf.String()
}

// ensureNetwork creates <project>_default with compose's labels when it is
// missing, so the one-off reaches the same network the stack will use.
func (r *DockerRunner) ensureNetwork(ctx context.Context, project, name string) error {
	netMu.Lock()
	defer netMu.Unlock()
	if _, err := r.Docker.NetworkInspect(ctx, name, network.InspectOptions{}); err == nil {
		return nil
	} else if !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("inspecting network %q: %w: is the Docker Engine running?", name, err)
	}
	_, err := r.Docker.NetworkCreate(ctx, name, network.CreateOptions{
		Driver: "bridge",
		Labels: map[string]string{labelProject: project, labelNetwork: "default"},
	})
	if err != nil {
		// Another process (the engine converging, another agent run) may
		// have created it in between; the client asks for duplicate checks.
		if _, ierr := r.Docker.NetworkInspect(ctx, name, network.InspectOptions{}); ierr == nil {
			return nil
		}
		return fmt.Errorf("creating network %q: %w", name, err)
	}
	return nil
}

// sweep removes one-offs of this project that exited or never started: an
// agent killed while its one-off ran leaves one behind. Running ones are
// left alone; they may belong to a concurrent run, and a migration that
// outlived its agent is waited for through its database session instead.
func (r *DockerRunner) sweep(ctx context.Context, project string, log *slog.Logger) {
	list, err := r.Docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", labelProject+"="+project),
		filters.Arg("label", labelOneOff+"=True"),
		filters.Arg("status", "exited"),
		filters.Arg("status", "created"),
		filters.Arg("status", "dead"),
	)})
	if err != nil {
		log.Warn("listing leftover one-off containers", "err", err)
		return
	}
	prefix := "/" + project + "-migrate-"
	for _, c := range list {
		if !slices.ContainsFunc(c.Names, func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			continue
		}
		if slices.ContainsFunc(c.Names, func(n string) bool { _, ok := inFlight.Load(strings.TrimPrefix(n, "/")); return ok }) {
			continue
		}
		// A young "created" one-off may be one another process is about to
		// start; only sweep those older than any start takes.
		if c.State == container.StateCreated && time.Since(time.Unix(c.Created, 0)) < time.Minute {
			continue
		}
		if err := r.Docker.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			log.Warn("removing leftover one-off container", "container", c.Names, "err", err)
			continue
		}
		log.Info("removed leftover one-off container", "container", c.Names)
	}
}

// inFlight holds the names of one-offs this process is running or about to
// read the logs of, so a sweep by a concurrent run never removes them.
var inFlight sync.Map

func shortRandom() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
