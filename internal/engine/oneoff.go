package engine

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/stdcopy"
)

// OneOff is one command of an image run to completion on the project
// network, the way `docker compose run` would start it. Env is handed to
// Docker only.
type OneOff struct {
	Project string
	// Service names the compose service the one-off runs as (its labels).
	Service string
	// Name is the middle of the container's name, <project>-<Name>-<random>:
	// what the one-off is for ("migrate").
	Name  string
	Image string
	Cmd   []string
	Env   map[string]string
}

const (
	// oneOffLogLines is how much of a one-off's output RunOneOff returns.
	oneOffLogLines = 200
	// sweepAfter is how long after it exited a one-off counts as left
	// behind. Its owner removes it as soon as it has read the logs, which
	// takes seconds; a younger one may be a concurrent run's, still being
	// read. A killed run's one-off is removed by the first run after this.
	sweepAfter = 30 * time.Second
	// sweepCreatedAfter: a one-off only created (never started) may be one
	// another process is about to start.
	sweepCreatedAfter = time.Minute
)

// RunOneOff runs o to completion on the project network (created when
// missing, like the stack's, under the project lock) and returns its exit code and the tail of its
// combined output. The container is removed afterwards, also when ctx ends
// first (it is killed then). One-offs left behind by a killed run are
// removed first.
func (e *Engine) RunOneOff(ctx context.Context, o OneOff) (int, string, error) {
	if !validProjectName(o.Project) {
		return -1, "", fmt.Errorf("running a one-off of project %q: not a compose project name: use lowercase letters, digits, '-' and '_'", o.Project)
	}
	// Under the project lock, like Apply's network creation: Docker before
	// API 1.44 may make two networks of one name when asked at once, and a
	// container started while both exist fails as "ambiguous".
	unlock, err := e.lock(ctx, o.Project)
	if err != nil {
		return -1, "", err
	}
	netID, err := e.ensureNetwork(ctx, o.Project, false)
	unlock()
	if err != nil {
		return -1, "", err
	}
	e.sweep(ctx, o)

	name := o.Project + "-" + o.Name + "-" + shortRandom()
	env := make([]string, 0, len(o.Env))
	for _, k := range slices.Sorted(maps.Keys(o.Env)) {
		env = append(env, k+"="+o.Env[k])
	}
	cctx, cancel := e.call(ctx)
	created, err := e.Docker.ContainerCreate(cctx,
		&container.Config{
			Image: o.Image,
			Cmd:   o.Cmd,
			Env:   env,
			Labels: map[string]string{
				LabelProject:   o.Project,
				LabelService:   o.Service,
				LabelOneOff:    oneOffTrue,
				LabelManagedBy: managedBy,
			},
		},
		// No restart policy and no auto-remove: the logs are read after the
		// exit, then the container is removed here.
		&container.HostConfig{NetworkMode: container.NetworkMode(netID)},
		nil, nil, name)
	cancel()
	if err != nil {
		return -1, "", fmt.Errorf("creating one-off container %q from image %q: %w: the image must be present on the host (redash-agent prepare-image bakes it into the AMI)", name, o.Image, err)
	}
	id := created.ID
	defer func() {
		// ctx may be over: removal gets its own deadline. Force kills a
		// one-off that is still running (deadline, lost lock).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), e.callTimeout())
		defer cancel()
		if err := e.Docker.ContainerRemove(rctx, id, container.RemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			e.log().Warn("removing one-off container; the next run removes it", "container", name, "err", err)
		}
	}()

	// Wait is registered before start so a fast exit cannot be missed.
	waitCh, waitErr := e.Docker.ContainerWait(ctx, id, container.WaitConditionNextExit)
	sctx, scancel := e.call(ctx)
	err = e.Docker.ContainerStart(sctx, id, container.StartOptions{})
	scancel()
	if err != nil {
		return -1, "", fmt.Errorf("starting one-off container %q: %w: see `docker logs %s`", name, err, name)
	}
	e.log().Info("one-off started", "container", name, "cmd", strings.Join(o.Cmd, " "))

	select {
	case w := <-waitCh:
		code := int(w.StatusCode)
		if w.Error != nil && w.Error.Message != "" {
			return code, e.oneOffLogs(ctx, id), fmt.Errorf("waiting for one-off container %q: %s", name, w.Error.Message)
		}
		return code, e.oneOffLogs(ctx, id), nil
	case err := <-waitErr:
		if ctx.Err() != nil {
			return -1, e.oneOffLogs(ctx, id), fmt.Errorf("one-off container %q stopped before it finished: %w", name, context.Cause(ctx))
		}
		return -1, e.oneOffLogs(ctx, id), fmt.Errorf("waiting for one-off container %q: %w", name, err)
	}
}

// oneOffLogs is the one-off's output, raw. Logs are best effort: a failure
// to read them must not hide the exit code.
func (e *Engine) oneOffLogs(ctx context.Context, id string) string {
	text, err := e.logTail(context.WithoutCancel(ctx), id, oneOffLogLines)
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", err)
	}
	return text
}

// logTail returns the last n lines of a container's stdout and stderr,
// interleaved, as the container wrote them.
func (e *Engine) logTail(ctx context.Context, id string, n int) (string, error) {
	cctx, cancel := e.call(ctx)
	defer cancel()
	rc, err := e.Docker.ContainerLogs(cctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(n)})
	if err != nil {
		return "", fmt.Errorf("reading the logs of container %q: %w", id, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	// Our containers have no TTY, so the stream is multiplexed.
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(rc, 1<<20)); err != nil && buf.Len() == 0 {
		return "", fmt.Errorf("reading the logs of container %q: %w", id, err)
	}
	return buf.String(), nil
}

// sweep removes one-offs of o's project and purpose that were left behind:
// an agent killed while its one-off ran leaves one. Running ones are left
// alone; they may belong to a concurrent run, and a migration that outlived
// its agent is waited for through its database session instead. Failures
// only warn: the one-off to run does not depend on them.
func (e *Engine) sweep(ctx context.Context, o OneOff) {
	cctx, cancel := e.call(ctx)
	list, err := e.Docker.ContainerList(cctx, container.ListOptions{All: true, Filters: filters.NewArgs(
		filters.Arg("label", LabelProject+"="+o.Project),
		filters.Arg("label", LabelOneOff+"="+oneOffTrue),
		filters.Arg("status", "exited"),
		filters.Arg("status", "created"),
		filters.Arg("status", "dead"),
	)})
	cancel()
	if err != nil {
		e.log().Warn("listing leftover one-off containers", "err", err)
		return
	}
	// Only ours: never a user's `docker compose run` container.
	prefix := "/" + o.Project + "-" + o.Name + "-"
	for _, c := range list {
		if !slices.ContainsFunc(c.Names, func(n string) bool { return strings.HasPrefix(n, prefix) }) {
			continue
		}
		if !e.leftBehind(ctx, c) {
			continue
		}
		rctx, cancel := e.call(ctx)
		err := e.Docker.ContainerRemove(rctx, c.ID, container.RemoveOptions{Force: true})
		cancel()
		if err != nil && !cerrdefs.IsNotFound(err) {
			e.log().Warn("removing leftover one-off container", "container", c.Names, "err", err)
			continue
		}
		e.log().Info("removed leftover one-off container", "container", c.Names)
	}
}

// leftBehind: no live run can still want this one-off (see sweepAfter).
func (e *Engine) leftBehind(ctx context.Context, c container.Summary) bool {
	if c.State == container.StateCreated {
		return time.Since(time.Unix(c.Created, 0)) >= sweepCreatedAfter
	}
	cctx, cancel := e.call(ctx)
	in, err := e.Docker.ContainerInspect(cctx, c.ID)
	cancel()
	if err != nil || in.State == nil {
		return false
	}
	finished, err := time.Parse(time.RFC3339Nano, in.State.FinishedAt)
	return err == nil && time.Since(finished) >= sweepAfter
}

func shortRandom() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
