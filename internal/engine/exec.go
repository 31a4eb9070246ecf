package engine

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	dtypes "github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"
)

// execDocker is the part of the Docker client Exec uses.
type execDocker interface {
	ContainerExecCreate(ctx context.Context, containerID string, options container.ExecOptions) (container.ExecCreateResponse, error)
	ContainerExecAttach(ctx context.Context, execID string, config container.ExecAttachOptions) (dtypes.HijackedResponse, error)
	ContainerExecInspect(ctx context.Context, execID string) (container.ExecInspect, error)
}

// execOutputLimit bounds what Exec keeps of a command's output.
const execOutputLimit = 64 << 10

// ExecResult is what a command run in a container ended with.
type ExecResult struct {
	ExitCode int
	Output   string // stdout and stderr interleaved, at most 64 KiB
}

// Exec runs cmd in the running container id (as `docker exec`, with the
// container's environment, which holds secrets: cmd must not echo them)
// and waits for it, bounded by ctx and CallTimeout. A non-zero exit is a
// result, not an error; an error means the command could not be run.
func (e *Engine) Exec(ctx context.Context, id string, cmd []string) (ExecResult, error) {
	d, ok := e.Docker.(execDocker)
	if !ok {
		return ExecResult{}, fmt.Errorf("running %q in container %q: this docker client cannot exec", strings.Join(cmd, " "), id)
	}
	cctx, cancel := e.call(ctx)
	defer cancel()
	created, err := d.ContainerExecCreate(cctx, id, container.ExecOptions{Cmd: cmd, AttachStdout: true, AttachStderr: true})
	if err != nil {
		return ExecResult{}, fmt.Errorf("running %q in container %q: %w", strings.Join(cmd, " "), id, err)
	}
	att, err := d.ContainerExecAttach(cctx, created.ID, container.ExecAttachOptions{})
	if err != nil {
		return ExecResult{}, fmt.Errorf("running %q in container %q: %w", strings.Join(cmd, " "), id, err)
	}
	defer att.Close()
	var buf bytes.Buffer
	// No TTY: the stream is multiplexed; it ends when the command exits.
	if _, err := stdcopy.StdCopy(&buf, &buf, io.LimitReader(att.Reader, execOutputLimit)); err != nil && cctx.Err() != nil {
		return ExecResult{}, fmt.Errorf("running %q in container %q: no exit within %s", strings.Join(cmd, " "), id, e.callTimeout())
	}
	in, err := d.ContainerExecInspect(cctx, created.ID)
	if err != nil {
		return ExecResult{}, fmt.Errorf("running %q in container %q: reading its exit code: %w", strings.Join(cmd, " "), id, err)
	}
	if in.Running {
		return ExecResult{}, fmt.Errorf("running %q in container %q: still running after its output closed", strings.Join(cmd, " "), id)
	}
	return ExecResult{ExitCode: in.ExitCode, Output: buf.String()}, nil
}
