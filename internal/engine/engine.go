// Package engine owns every Docker side effect of the agent. It converges
// the Redash containers of one compose project through the Docker Engine
// API: Observe reads the containers, the network and the images of the
// project, ComputePlan (pure) decides everything against the desired
// compose-go project, and Apply carries out one stage of that plan at a
// time (images, containers, the readiness wait) without deciding anything.
// It also runs one-off containers (RunOneOff, for the migrations), watches
// the project's containers die (WatchContainers), reports Status and takes
// the stack Down.
//
// Side effects: Apply, RunOneOff, EnsureImages and Down create, start, stop,
// restart and remove containers and the project network, and pull an image
// only when it is missing; they never build. Apply and Down hold a
// per-project lock file under Engine.LockDir while they change containers.
// Environment values (secrets among them) go only into the Env of the
// containers that receive them: never into labels, log lines, errors or the
// config hash in plain form.
//
// Crash safety: every action is idempotent and uses final names (no
// temporary containers), so a run killed at any point is finished by the
// next one.
package engine

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	dtypes "github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/system"
	"github.com/docker/docker/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// Docker is the subset of the Docker Engine client the engine calls. Every
// call the engine makes gets a context bounded by Engine.CallTimeout.
type Docker interface {
	ContainerList(ctx context.Context, options container.ListOptions) ([]container.Summary, error)
	ContainerInspect(ctx context.Context, containerID string) (container.InspectResponse, error)
	ContainerCreate(ctx context.Context, config *container.Config, hostConfig *container.HostConfig, networkingConfig *network.NetworkingConfig, platform *ocispec.Platform, containerName string) (container.CreateResponse, error)
	ContainerStart(ctx context.Context, containerID string, options container.StartOptions) error
	ContainerStop(ctx context.Context, containerID string, options container.StopOptions) error
	ContainerRestart(ctx context.Context, containerID string, options container.StopOptions) error
	ContainerWait(ctx context.Context, containerID string, condition container.WaitCondition) (<-chan container.WaitResponse, <-chan error)
	ContainerRemove(ctx context.Context, containerID string, options container.RemoveOptions) error
	ContainerLogs(ctx context.Context, containerID string, options container.LogsOptions) (io.ReadCloser, error)
	NetworkList(ctx context.Context, options network.ListOptions) ([]network.Summary, error)
	NetworkCreate(ctx context.Context, name string, options network.CreateOptions) (network.CreateResponse, error)
	NetworkRemove(ctx context.Context, networkID string) error
	NetworkInspect(ctx context.Context, networkID string, options network.InspectOptions) (network.Inspect, error)
	ImageInspect(ctx context.Context, imageID string, inspectOpts ...client.ImageInspectOption) (image.InspectResponse, error)
	ImagePull(ctx context.Context, refStr string, options image.PullOptions) (io.ReadCloser, error)
	Events(ctx context.Context, options events.ListOptions) (<-chan events.Message, <-chan error)
	ServerVersion(ctx context.Context) (dtypes.Version, error)
	Info(ctx context.Context) (system.Info, error) // the host's platform (platform.go)
	DaemonHost() string
}

var _ Docker = (*client.Client)(nil)

// NewDockerClient connects to the Docker Engine named by DOCKER_HOST (the
// local socket by default) and negotiates the API version, so the agent works
// with the AMI's engine whatever its age (20.10 speaks API 1.41).
func NewDockerClient() (*client.Client, error) {
	c, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("connecting to the docker engine: %w: check DOCKER_HOST and that dockerd is running", err)
	}
	return c, nil
}

// Desired is the state Up converges to.
type Desired struct {
	// Project is the compose-go project, the very one written to
	// docker-compose.yml. It holds no secret values.
	Project *types.Project
	// Env is the content of the env file, in plaintext. Services that list an
	// env_file receive all of it in their container Env; a service's own
	// `environment` overrides it. It never goes into labels, logs or errors.
	Env map[string]string
	// HashKey is a host-local key: environment values enter the config hash
	// only as HMAC(HashKey, ...), never as a plain hash.
	HashKey []byte
	// Ready, when set, checks that each running background service does
	// its job before the wait counts it ready; nil waits for running only.
	Ready ReadyCheck
}

// The server (compose.ServerService) answers /ping, which the readiness
// wait polls; it comes first in a plan's service order. A project without
// it (role "worker") only waits for its containers to run.

// Engine converges one Docker Engine. The zero durations take defaults.
type Engine struct {
	Docker Docker
	Logger *slog.Logger
	// CallTimeout bounds each Docker API call (default 30s). A stop gets the
	// container's stop grace period on top.
	CallTimeout time.Duration
	// HealthTimeout bounds the wait for the server's /ping and for WaitReady
	// (default 2m).
	HealthTimeout time.Duration
	// PullTimeout bounds one image pull (default 10m): only used when an
	// image is missing, which on the AMI it should not be.
	PullTimeout time.Duration
	// LockDir holds the per-project lock files that serialize Up, Apply and
	// Down on this host (default os.TempDir(); the agent passes /run/...).
	LockDir string
}

const (
	defaultCallTimeout   = 30 * time.Second
	defaultHealthTimeout = 2 * time.Minute
	defaultPullTimeout   = 10 * time.Minute
	// defaultStopGrace is what Docker waits for SIGTERM before SIGKILL when
	// the service sets no stop_grace_period.
	defaultStopGrace = 10 * time.Second
)

func (e *Engine) log() *slog.Logger {
	if e.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Logger
}

func (e *Engine) callTimeout() time.Duration {
	if e.CallTimeout > 0 {
		return e.CallTimeout
	}
	return defaultCallTimeout
}

func (e *Engine) healthTimeout() time.Duration {
	if e.HealthTimeout > 0 {
		return e.HealthTimeout
	}
	return defaultHealthTimeout
}

func (e *Engine) pullTimeout() time.Duration {
	if e.PullTimeout > 0 {
		return e.PullTimeout
	}
	return defaultPullTimeout
}

// call returns a context for one Docker API call.
func (e *Engine) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, e.callTimeout())
}

// Close releases the Docker client when it holds connections.
func (e *Engine) Close() error {
	if c, ok := e.Docker.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Version says which Docker Engine answers, and where.
func (e *Engine) Version(ctx context.Context) (version, apiVersion, host string, err error) {
	cctx, cancel := e.call(ctx)
	defer cancel()
	v, err := e.Docker.ServerVersion(cctx)
	if err != nil {
		return "", "", e.Docker.DaemonHost(), fmt.Errorf("asking the docker engine at %q for its version: %w", e.Docker.DaemonHost(), err)
	}
	return v.Version, v.APIVersion, e.Docker.DaemonHost(), nil
}

// containerName is the compose v2 name of the one replica of a service.
func containerName(project, service string) string {
	return compose.ContainerName(project, service)
}
