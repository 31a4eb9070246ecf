package testenv

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/redis/go-redis/v9"
)

// TestRedisImageServes runs the host-binary redis image and PINGs it at its
// container address, as provider local's readiness does.
func TestRedisImageServes(t *testing.T) {
	tag := RedisImage(t)
	cli := DockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: tag}, nil, nil, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	in, err := cli.ContainerInspect(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var ip string
	for _, n := range in.NetworkSettings.Networks {
		if n != nil && n.IPAddress != "" {
			ip = n.IPAddress
		}
	}
	rc := redis.NewClient(&redis.Options{Addr: net.JoinHostPort(ip, "6379"), MaxRetries: -1})
	defer rc.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := rc.Ping(ctx).Err()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			logs, _ := cli.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
			var b [4096]byte
			n, _ := logs.Read(b[:])
			t.Fatalf("redis image at %s does not answer PING: %v\n%s", ip, err, b[:n])
		}
		time.Sleep(100 * time.Millisecond)
	}
}
