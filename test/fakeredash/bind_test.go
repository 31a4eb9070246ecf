package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// noIPv6Seccomp makes socket(AF_INET6, ...) fail with EAFNOSUPPORT (97),
// as on a kernel booted with ipv6.disable=1, without touching the host.
const noIPv6Seccomp = `{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["socket"],"action":"SCMP_ACT_ERRNO","errnoRet":97,` +
	`"args":[{"index":0,"value":10,"op":"SCMP_CMP_EQ"}]}]}`

// TestServer26OnAKernelWithoutIPv6: the 26.3 stand-in's server in a
// container that cannot open IPv6 sockets exits 1 like gunicorn; with
// IPv6 it answers /ping over IPv4 through its [::] socket.
func TestServer26OnAKernelWithoutIPv6(t *testing.T) {
	cli := testenv.DockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img := testenv.FakeFamilyImage(t, "26.3")
	env := []string{"REDASH_COOKIE_SECRET=c", "REDASH_SECRET_KEY=s"}

	start := func(name string, hc *container.HostConfig) string {
		t.Helper()
		resp, err := cli.ContainerCreate(ctx, &container.Config{Image: img, Cmd: []string{"server"}, Env: env}, hc, nil, nil, name)
		if err != nil {
			t.Fatalf("creating %s: %v", name, err)
		}
		t.Cleanup(func() { cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}) })
		if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			t.Fatalf("starting %s: %v", name, err)
		}
		return resp.ID
	}
	prefix := fmt.Sprintf("fakeredash-ipv6-%d", os.Getpid())

	t.Run("without IPv6 it exits 1 like gunicorn", func(t *testing.T) {
		id := start(prefix+"-off", &container.HostConfig{SecurityOpt: []string{"seccomp=" + noIPv6Seccomp}})
		waitC, errC := cli.ContainerWait(ctx, id, container.WaitConditionNotRunning)
		select {
		case w := <-waitC:
			if w.StatusCode != 1 {
				t.Fatalf("server exited %d, want 1", w.StatusCode)
			}
		case err := <-errC:
			t.Fatal(err)
		}
		logs, err := cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStderr: true, ShowStdout: true})
		if err != nil {
			t.Fatal(err)
		}
		defer logs.Close()
		var out bytes.Buffer
		stdcopy.StdCopy(&out, &out, logs)
		for _, want := range []string{"[Errno 97]", "Can't connect to ('::', 5000)"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("server log %q lacks %q", out.String(), want)
			}
		}
	})
	t.Run("with IPv6 it serves IPv4 clients on [::]", func(t *testing.T) {
		id := start(prefix+"-on", &container.HostConfig{})
		c, err := cli.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		ep := c.NetworkSettings.Networks["bridge"]
		if ep == nil {
			t.Fatalf("container not on the default bridge: %v", c.NetworkSettings.Networks)
		}
		if body := httpGet(t, "http://"+ep.IPAddress+":5000/ping"); body != "PONG." {
			t.Fatalf("GET /ping = %q", body)
		}
	})
}
