package engine

// Against the real Docker Engine: a published port taken by a host process
// or by another container, and project networks duplicated by a create race
// (Docker before API 1.44).

import (
	"bytes"
	"context"
	"fmt"
	stdnet "net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// TestPortTakenByAHostProcessIsReported: the start fails, nothing is
// recreated in vain, and the error says no container holds the port; once
// the process lets go, the next Up converges.
func TestPortTakenByAHostProcessIsReported(t *testing.T) {
	s := newStack(t)
	l, err := stdnet.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", s.serverPort))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, err = converge(ctx, s.e, s.d)
	l.Close()
	if err == nil {
		t.Fatal("Up succeeded although the server's port is taken")
	}
	for _, want := range []string{fmt.Sprintf("no container publishes host port(s) [%d]", s.serverPort), "host process", "ss -ltnp"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(s.logs.String(), "creating it again") {
		t.Errorf("a port conflict recreated the container in vain:\n%s", s.logs)
	}
	s.up()
	s.assertConverged()
}

// TestPortTakenByAnotherContainerNamesIt: the error names the container
// that publishes the port.
func TestPortTakenByAnotherContainerNamesIt(t *testing.T) {
	s := newStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holder := s.d.Project.Name + "-squatter"
	port := nat.Port("5000/tcp")
	_, err := s.cli.ContainerCreate(ctx, &container.Config{Image: imageV1, Cmd: []string{"worker"}, ExposedPorts: nat.PortSet{port: {}}},
		&container.HostConfig{PortBindings: nat.PortMap{port: {{HostIP: "127.0.0.1", HostPort: fmt.Sprint(s.serverPort)}}}}, nil, nil, holder)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.cli.ContainerRemove(context.Background(), holder, container.RemoveOptions{Force: true}) })
	if err := s.cli.ContainerStart(ctx, holder, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = converge(ctx, s.e, s.d)
	if err == nil {
		t.Fatal("Up succeeded although another container publishes the server's port")
	}
	want := fmt.Sprintf("container %q publishes host port %d", holder, s.serverPort)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("error lacks %q:\n%v", want, err)
	}
}

// createDuplicateNetwork makes a second network of an existing name the
// way a create race on Docker 20.10 does. The Go client always sends
// CheckDuplicate=true to old daemons, so this posts the request itself.
func createDuplicateNetwork(t *testing.T, cli *client.Client, name, project string) {
	t.Helper()
	host := cli.DaemonHost()
	sock, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		t.Skipf("DOCKER_HOST %q is not a unix socket", host)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (stdnet.Conn, error) {
		return (&stdnet.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	body := fmt.Sprintf(`{"Name":%q,"CheckDuplicate":false,"Driver":"bridge","Labels":{%q:%q}}`, name, LabelProject, project)
	u := url.URL{Scheme: "http", Host: "docker", Path: "/v" + cli.ClientVersion() + "/networks/create"}
	resp, err := hc.Post(u.String(), "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		t.Skipf("this Docker Engine refuses duplicate network names (%s: %s); the race cannot happen here", resp.Status, strings.TrimSpace(b.String()))
	}
}

// TestDuplicateNetworksAdoptedByConcurrentRuns: with two networks of the
// project's name (a create race on Docker 20.10 left them), two one-offs
// (as two `migrate`) and two Ups at once all succeed, and the empty
// duplicate is removed.
func TestDuplicateNetworksAdoptedByConcurrentRuns(t *testing.T) {
	s := newStack(t)
	name := compose.NetworkName(s.d.Project.Name)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := s.e.ensureNetwork(ctx, s.d.Project.Name, true); err != nil {
		t.Fatal(err)
	}
	s.cli.NegotiateAPIVersion(ctx)
	createDuplicateNetwork(t, s.cli, name, s.d.Project.Name)
	count := func() int {
		nets, err := s.e.exactNetworks(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return len(nets)
	}
	if n := count(); n != 2 {
		t.Fatalf("%d networks named %q after the duplicate create, want 2", n, name)
	}
	t.Cleanup(func() {
		nets, _ := s.e.exactNetworks(context.Background(), name)
		for _, n := range nets {
			_ = s.cli.NetworkRemove(context.Background(), n.ID)
		}
	})

	var wg sync.WaitGroup
	errs := make([]error, 4)
	start := make(chan struct{})
	for i := range 2 {
		wg.Go(func() {
			<-start
			code, out, err := s.engine().RunOneOff(ctx, OneOff{Project: s.d.Project.Name, Service: "server", Name: "migrate", Image: imageV1, Cmd: []string{"env"}})
			if err == nil && code != 0 {
				err = fmt.Errorf("one-off exited %d: %s", code, out)
			}
			errs[i] = err
		})
		wg.Go(func() {
			<-start
			_, errs[2+i] = converge(ctx, s.engine(), s.d)
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("run %d: %v", i, err)
		}
	}
	if n := count(); n != 1 {
		t.Errorf("%d networks named %q after the runs, want the duplicate removed", n, name)
	}
	s.assertConverged()
}
