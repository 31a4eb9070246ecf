package testenv

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// TestPrivateDockerd: the helper's daemon answers, through a proxy that
// can be cut and restored, and builds an image.
func TestPrivateDockerd(t *testing.T) {
	d := StartPrivateDockerd(t)
	if _, err := net.InterfaceByName("docker0"); err != nil {
		t.Fatalf("the machine's docker0 is gone after starting a private dockerd: %v", err)
	}
	p := NewSocketProxy(t, d.Socket)
	t.Setenv("DOCKER_HOST", p.Host)
	BuildFakeImage(t, FakeImage{Tag: "redash-agent-test/pdk:v1"})
	cli, err := client.NewClientWithOpts(client.WithHost(p.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ping := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err := cli.Ping(ctx)
		return err
	}
	p.Cut()
	if ping() == nil {
		t.Fatal("the daemon answers through a cut proxy")
	}
	p.Restore()
	if err := ping(); err != nil {
		t.Fatalf("no answer after Restore: %v", err)
	}
}
