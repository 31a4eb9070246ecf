package engine

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// recordingDocker answers the calls Apply makes for creates and starts and
// records them; creating the service named in failCreate fails. Any other
// call panics through the nil embedded interface: Apply must not make it.
type recordingDocker struct {
	Docker
	failCreate string
	mu         sync.Mutex
	calls      []string
}

func (r *recordingDocker) record(s string) {
	r.mu.Lock()
	r.calls = append(r.calls, s)
	r.mu.Unlock()
}

func (r *recordingDocker) ContainerCreate(_ context.Context, cfg *container.Config, _ *container.HostConfig, _ *network.NetworkingConfig, _ *ocispec.Platform, name string) (container.CreateResponse, error) {
	r.record("create " + name)
	if cfg.Labels[LabelService] == r.failCreate {
		return container.CreateResponse{}, errors.New("no space left on device")
	}
	return container.CreateResponse{ID: "id-" + name}, nil
}

func (r *recordingDocker) ContainerStart(_ context.Context, id string, _ container.StartOptions) error {
	r.record("start " + id)
	return nil
}

// NetworkList finds the one project network: Apply lists it before
// attaching to it, to remove duplicates (none here).
func (r *recordingDocker) NetworkList(context.Context, network.ListOptions) ([]network.Summary, error) {
	return []network.Summary{{ID: net.ID, Name: net.Name}}, nil
}

func TestApplyRunsNothingAfterAFailedDependency(t *testing.T) {
	d := desired()
	o := Observed{Project: "p", Network: net, Images: images}
	p := ComputePlan(d, o)
	rd := &recordingDocker{failCreate: "server"}
	e := &Engine{Docker: rd, LockDir: t.TempDir()}
	err := e.Apply(context.Background(), d, p, StageContainers)
	if err == nil || !strings.Contains(err.Error(), `creating container "p-server-1"`) {
		t.Fatalf("Apply = %v, want the server's create error", err)
	}
	slices.Sort(rd.calls)
	// nginx is created (it needs only the network) but never started:
	// its start comes after the server's. The others do not depend on it.
	want := []string{"create p-nginx-1", "create p-scheduler-1", "create p-server-1", "create p-worker-1", "start id-p-scheduler-1", "start id-p-worker-1"}
	if !slices.Equal(rd.calls, want) {
		t.Errorf("Docker calls:\n%s\nwant:\n%s", strings.Join(rd.calls, "\n"), strings.Join(want, "\n"))
	}
}

func TestApplyOfANoopPlanCallsNothing(t *testing.T) {
	d := desired()
	p := ComputePlan(d, Observed{Project: "p", Network: net, Images: images, Containers: allCurrent(d)})
	rd := &recordingDocker{}
	e := &Engine{Docker: rd, LockDir: t.TempDir()}
	for _, st := range []Stage{StageImages, StageContainers} {
		if err := e.Apply(context.Background(), d, p, st); err != nil {
			t.Fatal(err)
		}
	}
	if len(rd.calls) != 0 {
		t.Errorf("a plan without changes made Docker calls: %v", rd.calls)
	}
}
