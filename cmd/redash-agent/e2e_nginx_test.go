package main

// End-to-end test of issue 9 point 4: redash/nginx resolves `redash` once,
// at its start, so when the server is recreated on another address nginx
// must be restarted after it, or it answers 502 for good (and the ALB
// replaces the instance). The stand-in nginx (test/fakeredash/nginx.go)
// behaves that way.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestNginxFollowsARecreatedServer(t *testing.T) {
	s := newStack(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	netName := s.project + "_default"

	// Docker 20.10's IPAM hands out the lowest free address, so a server
	// recreated alone would get its old address back and hide the bug. A
	// placeholder takes the network's first address before the stack
	// starts and leaves before the recreate: the new server then gets the
	// placeholder's address, lower than the old one. (An allocator that
	// does not reuse addresses at once gives another address anyway.) The
	// network is made here with the labels the agent gives it; the agent
	// adopts a network of its project's name, as it does docker-compose v1's.
	netResp, err := s.docker.NetworkCreate(ctx, netName, network.CreateOptions{Driver: "bridge", Labels: map[string]string{
		"com.docker.compose.project": s.project, "com.docker.compose.network": "default",
	}})
	if err != nil {
		t.Fatalf("creating the project network %q: %v", netName, err)
	}
	placeholder, err := s.docker.ContainerCreate(ctx, &container.Config{Image: "redash-agent-test/redash:v1", Cmd: []string{"worker"}},
		&container.HostConfig{}, &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}},
		nil, s.project+"-address-placeholder")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.docker.ContainerRemove(context.Background(), placeholder.ID, container.RemoveOptions{Force: true})
		s.docker.NetworkRemove(context.Background(), netResp.ID) // gone already after `down --remove`
	})
	if err := s.docker.ContainerStart(ctx, placeholder.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	placeholderIP := s.ipOn(t, placeholder.ID, netName)

	// 1. The whole stack (role all, with nginx); nginx answers /ping.
	s.up(t)
	oldServer := s.containers(t)["server"]
	oldIP := s.ipOn(t, oldServer, netName)
	if body, code := nginxPing(t, s.nginxPort); code != 200 || body != "PONG." {
		t.Fatalf("GET /ping through nginx after the first up: %d %q", code, body)
	}

	// 2. Free the placeholder's address, then change what only the server
	// reads (REDASH_WEB_WORKERS is in its own environment).
	if err := s.docker.NetworkDisconnect(ctx, netResp.ID, placeholder.ID, true); err != nil {
		t.Fatalf("disconnecting the placeholder: %v", err)
	}
	s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\nweb-workers: 3\n", pgEndpoint(t), s.pgDB))

	// 3. render --plan says the server is recreated, alone, and nginx is
	// restarted after its start, and why.
	planOut, stderr, code := s.run("render", "--plan")
	if code != 0 {
		t.Fatalf("render --plan exited %d: %s", code, stderr)
	}
	lines := parsePlan(t, planOut)
	var serverStart, nginxRestart planLine
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l.text, "recreate ") && !strings.HasPrefix(l.text, "recreate server "):
			t.Errorf("plan recreates more than the server: %q", l.text)
		case l.text == "start server":
			serverStart = l
		case strings.HasPrefix(l.text, "restart nginx "):
			nginxRestart = l
		}
	}
	wantWhy := "restart nginx (server started anew: nginx resolves redash once, at its start, and would keep the old address)"
	if serverStart.n == 0 || nginxRestart.text != wantWhy || len(nginxRestart.after) != 1 || nginxRestart.after[0] != serverStart.n {
		t.Fatalf("render --plan after changing web-workers: want %q after the server's start, got:\n%s", wantWhy, planOut)
	}

	// 4. up: the server comes back on another address, and nginx with it.
	s.up(t)
	newServer := s.containers(t)["server"]
	newIP := s.ipOn(t, newServer, netName)
	if newServer == oldServer {
		t.Fatalf("the server was not recreated")
	}
	if newIP == oldIP {
		t.Fatalf("test setup: the recreated server got its old address %s back (placeholder had %s): the test would not show nginx keeping a stale address", oldIP, placeholderIP)
	}
	t.Logf("server moved from %s to %s (the placeholder had %s)", oldIP, newIP, placeholderIP)
	if body, code := nginxPing(t, s.nginxPort); code != 200 || body != "PONG." {
		t.Fatalf("GET /ping through nginx after the server moved from %s to %s: %d %q", oldIP, newIP, code, body)
	}
	// nginx resolved the new address at its restart (its log says which).
	if log := s.logs(t, s.containers(t)["nginx"]); !strings.Contains(log, "resolved once to "+newIP+":5000") {
		t.Errorf("nginx's log does not show it resolving the new server address %s:\n%s", newIP, log)
	}
}

// ipOn is a container's IPv4 address on the named network.
func (s *stack) ipOn(t *testing.T, id, netName string) string {
	t.Helper()
	c, err := s.docker.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	ep := c.NetworkSettings.Networks[netName]
	if ep == nil || ep.IPAddress == "" {
		t.Fatalf("container %s has no address on %s", c.Name, netName)
	}
	return ep.IPAddress
}

// logs is a container's stdout and stderr.
func (s *stack) logs(t *testing.T, id string) string {
	t.Helper()
	rc, err := s.docker.ContainerLogs(context.Background(), id, container.LogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var b strings.Builder
	stdcopy.StdCopy(&b, &b, rc)
	return b.String()
}

// nginxPing gets /ping through nginx's published port. A restarted nginx
// takes a moment to listen: a refused connection is retried (bounded); any
// HTTP answer, 502 included, is returned as is.
func nginxPing(t *testing.T, port int) (string, int) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	var lastErr error
	for range 50 {
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", port))
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(body), resp.StatusCode
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET /ping through nginx on port %d: %v", port, lastErr)
	return "", 0
}

// TestUpRefusesAnImageOfAnotherArchitecture (issue 9 point 9): switching
// to a Redash image built for another architecture is refused with exit 3
// and the fix, after the pull stage and before anything is stopped: the
// running stack stays as it was, and doctor reports the same problem.
func TestUpRefusesAnImageOfAnotherArchitecture(t *testing.T) {
	s := newStack(t)
	info, err := s.docker.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	foreignArch := "arm64"
	if info.Architecture == "aarch64" {
		foreignArch = "amd64"
	}
	const foreign = "redash-agent-test/redash:foreign-arch"
	testenv.ForeignImage(t, foreign, foreignArch)

	s.up(t)
	before := s.containers(t)
	s.writeConfig(foreign, fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	var stderr string
	var code int
	evs := s.mutatingEvents(t, func() { _, stderr, code = s.run("up") })
	if code != exitConfigErr {
		t.Fatalf("up with a linux/%s image exited %d, want %d\n%s", foreignArch, code, exitConfigErr, stderr)
	}
	for _, want := range []string{foreign, "is linux/" + foreignArch + " but this host is linux/", "name an image built for linux/"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("up's log lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, "migrate database") {
		t.Errorf("the migration ran before the platform check")
	}
	if len(evs) != 0 {
		t.Errorf("the refused up changed containers: %v", evs)
	}
	after := s.containers(t)
	for svc, id := range before {
		if after[svc] != id {
			t.Errorf("%s's container changed from %s to %s", svc, id, after[svc])
		}
	}
	if body, code := nginxPing(t, s.nginxPort); code != 200 || body != "PONG." {
		t.Errorf("the old stack stopped answering /ping through nginx: %d %q", code, body)
	}

	stdout, _, _ := s.run("doctor")
	if !strings.Contains(stdout, "host platform:") || !strings.Contains(stdout, `image "`+foreign+`" is linux/`+foreignArch) {
		t.Errorf("doctor does not report the image's platform:\n%s", stdout)
	}
}
