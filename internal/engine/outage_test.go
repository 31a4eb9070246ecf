package engine

// Docker faults no real daemon produces on demand: a start wedged by a
// daemon restart, an events stream that ends, a daemon that answers late.

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dtypes "github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/network"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// wedgedDocker fails the start of every container in wedged with what
// containerd says after a daemon restart cut a start short.
type wedgedDocker struct {
	Docker
	mu      sync.Mutex
	calls   []string
	wedged  map[string]bool
	created int
}

func (w *wedgedDocker) record(s string) { w.mu.Lock(); w.calls = append(w.calls, s); w.mu.Unlock() }

func (w *wedgedDocker) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	w.record("start " + id)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.wedged[id] {
		return errors.New("Error response from daemon: failed to create task for container: task " + id + " already exists: unknown")
	}
	return nil
}

func (w *wedgedDocker) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	w.record("inspect " + id)
	return container.InspectResponse{
		ContainerJSONBase: &container.ContainerJSONBase{ID: id, HostConfig: &container.HostConfig{NetworkMode: "net-1"}},
		Config:            &container.Config{Labels: map[string]string{LabelImage: "sha256:img"}},
	}, nil
}

func (w *wedgedDocker) ContainerRemove(_ context.Context, id string, o container.RemoveOptions) error {
	w.record("remove " + id)
	return nil
}

func (w *wedgedDocker) ContainerCreate(_ context.Context, cfg *container.Config, h *container.HostConfig, _ *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	w.record("create " + name + " net=" + string(h.NetworkMode) + " image=" + cfg.Labels[LabelImage])
	w.mu.Lock()
	defer w.mu.Unlock()
	w.created++
	id := "new-" + name
	if w.wedged["all"] {
		w.wedged[id] = true
	}
	return container.CreateResponse{ID: id}, nil
}

// TestStartOfAWedgedContainerRecreatesIt: a container left "created" by a
// daemon restart that no start can run is removed and created again (same
// network, same image label, same hash) and the new one starts.
func TestStartOfAWedgedContainerRecreatesIt(t *testing.T) {
	d := desired()
	c := current(d, "worker", "created")
	p := ComputePlan(d, Observed{Project: "p", Network: net, Images: images,
		Containers: []Container{current(d, "nginx", "running"), current(d, "scheduler", "running"), current(d, "server", "running"), c}})
	if !strings.Contains(p.String(), "start worker") {
		t.Fatalf("the plan does not start the created worker:\n%s", p)
	}
	w := &wedgedDocker{wedged: map[string]bool{c.ID: true}}
	e := &Engine{Docker: w, LockDir: t.TempDir()}
	if err := e.Apply(context.Background(), d, p, StageContainers); err != nil {
		t.Fatalf("Apply = %v, want the worker started on a new container", err)
	}
	want := []string{"start id-worker", "inspect id-worker", "remove id-worker", "create p-worker-1 net=net-1 image=sha256:img", "start new-p-worker-1"}
	if !slices.Equal(w.calls, want) {
		t.Errorf("Docker calls:\n%s\nwant:\n%s", strings.Join(w.calls, "\n"), strings.Join(want, "\n"))
	}
}

// TestStartThatKeepsFailingIsRecreatedOnce: the recreate is bounded to one;
// the error says both attempts failed and where to look.
func TestStartThatKeepsFailingIsRecreatedOnce(t *testing.T) {
	d := desired()
	c := current(d, "worker", "created")
	p := ComputePlan(d, Observed{Project: "p", Network: net, Images: images,
		Containers: []Container{current(d, "nginx", "running"), current(d, "scheduler", "running"), current(d, "server", "running"), c}})
	w := &wedgedDocker{wedged: map[string]bool{c.ID: true, "all": true}}
	e := &Engine{Docker: w, LockDir: t.TempDir()}
	err := e.Apply(context.Background(), d, p, StageContainers)
	if err == nil {
		t.Fatal("Apply succeeded although every start fails")
	}
	for _, s := range []string{`starting container "p-worker-1"`, "already exists", "the first attempt", "docker logs p-worker-1"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not contain %q", err, s)
		}
	}
	if w.created != 1 {
		t.Errorf("created %d new containers, want exactly 1 (bounded)", w.created)
	}
}

// flakyDaemon: an events stream that ends when the daemon stops, and a
// daemon that answers its version only after down probes.
type flakyDaemon struct {
	Docker
	mu      sync.Mutex
	down    int // probes still to fail
	probes  int
	streams int
	events  chan events.Message
}

func (f *flakyDaemon) DaemonHost() string { return "unix:///fake/docker.sock" }

func (f *flakyDaemon) ServerVersion(context.Context) (dtypes.Version, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes++
	if f.down > 0 {
		f.down--
		return dtypes.Version{}, errors.New("Cannot connect to the Docker daemon at unix:///fake/docker.sock. Is the docker daemon running?")
	}
	return dtypes.Version{Version: "20.10.24"}, nil
}

func (f *flakyDaemon) Events(ctx context.Context, _ events.ListOptions) (<-chan events.Message, <-chan error) {
	f.mu.Lock()
	f.streams++
	n := f.streams
	f.mu.Unlock()
	errs := make(chan error, 1)
	if n == 1 {
		// The first stream ends: the daemon went away.
		errs <- errors.New("unexpected EOF")
		return make(chan events.Message), errs
	}
	return f.events, errs
}

// TestWatchWakesWhenTheDaemonReturns: an events stream that ends is not
// the end of the watch: the daemon is probed with backoff and the watch
// wakes the caller as soon as it answers, so `run` converges then instead
// of at its next refresh.
func TestWatchWakesWhenTheDaemonReturns(t *testing.T) {
	f := &flakyDaemon{down: 3, events: make(chan events.Message)}
	logs := &testenv.SyncBuffer{}
	e := &Engine{Docker: f, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	start := time.Now()
	wake, stop := e.WatchContainers(t.Context(), "p", WatchOptions{})
	defer stop()
	select {
	case w := <-wake:
		if !w.DaemonBack {
			t.Fatalf("woke with %+v, want DaemonBack", w)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no wake within 10s of the daemon answering; logs:\n%s", logs)
	}
	took := time.Since(start)
	f.mu.Lock()
	probes := f.probes
	f.mu.Unlock()
	if probes != 4 {
		t.Errorf("%d probes, want 4 (3 failed, then the answer)", probes)
	}
	// Three failed probes back off 125-250, 250-500 and 500-1000 ms.
	if took < 800*time.Millisecond || took > 3*time.Second {
		t.Errorf("woke after %v, want the backoff of three probes (0.9-1.8s)", took)
	}
	for _, s := range []string{"docker events stream ended", "docker engine does not answer", "docker engine answers again"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("logs lack %q:\n%s", s, logs)
		}
	}
}

// TestWatchStartedWhileDaemonDown: after a converge that could not reach
// the daemon, the watch probes first and wakes when it answers.
func TestWatchStartedWhileDaemonDown(t *testing.T) {
	f := &flakyDaemon{down: 1, streams: 1, events: make(chan events.Message)}
	e := &Engine{Docker: f}
	wake, stop := e.WatchContainers(t.Context(), "p", WatchOptions{DaemonDown: true})
	defer stop()
	select {
	case w := <-wake:
		if !w.DaemonBack {
			t.Fatalf("woke with %+v, want DaemonBack", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no wake after the daemon answered")
	}
	// A healthy stream reports a container death as before.
	f2 := &flakyDaemon{streams: 1, events: make(chan events.Message, 1)}
	f2.events <- events.Message{Actor: events.Actor{Attributes: map[string]string{"name": "p-server-1"}}}
	wake2, stop2 := (&Engine{Docker: f2}).WatchContainers(t.Context(), "p", WatchOptions{})
	defer stop2()
	if w := <-wake2; w.Container != "p-server-1" || w.DaemonBack {
		t.Errorf("woke with %+v, want the server's death", w)
	}
}

// TestWaitDaemonIsBounded: the wait for a daemon that never answers ends
// at its bound with an error naming the bound, the host and what to check.
func TestWaitDaemonIsBounded(t *testing.T) {
	f := &flakyDaemon{down: 1 << 30}
	logs := &testenv.SyncBuffer{}
	e := &Engine{Docker: f, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	start := time.Now()
	err := e.WaitDaemon(t.Context(), 1500*time.Millisecond)
	took := time.Since(start)
	if err == nil {
		t.Fatal("WaitDaemon succeeded without a daemon")
	}
	if took < 1400*time.Millisecond || took > 3*time.Second {
		t.Errorf("gave up after %v, want the 1.5s bound", took)
	}
	for _, s := range []string{"unix:///fake/docker.sock", "1.5s", "Cannot connect", "systemctl status docker"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
	if !strings.Contains(logs.String(), "bound=1.5s") {
		t.Errorf("the wait's log does not say its bound:\n%s", logs)
	}
	// A daemon that answers on the third probe ends the wait then.
	f2 := &flakyDaemon{down: 2}
	if err := (&Engine{Docker: f2}).WaitDaemon(t.Context(), time.Minute); err != nil {
		t.Errorf("WaitDaemon = %v for a daemon that answers on the third probe", err)
	}
}
