package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/jackc/pgx/v5"
)

// TestPostgresImage starts the image with a password and logs in over TCP
// at the container's address: initdb ran, listen_addresses is *, password
// auth works, and a wrong password is refused.
func TestPostgresImage(t *testing.T) {
	tag := PostgresImage(t)
	cli := DockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	name := fmt.Sprintf("pgimage-test-%d", time.Now().UnixNano())
	c, err := cli.ContainerCreate(ctx, &container.Config{Image: tag, Env: []string{"POSTGRES_PASSWORD=s3cret"}}, nil, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
	})
	if err := cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	ins, err := cli.ContainerInspect(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if ins.Config.User != "999:999" {
		t.Errorf("image runs as %q, want the non-root 999:999", ins.Config.User)
	}
	ip := ins.NetworkSettings.Networks["bridge"].IPAddress
	var conn *pgx.Conn
	for i := 0; ; i++ {
		conn, err = pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:s3cret@%s:5432/postgres?sslmode=disable&connect_timeout=2", ip))
		if err == nil {
			break
		}
		if i == 150 {
			logs, _ := cli.ContainerLogs(ctx, c.ID, container.LogsOptions{ShowStdout: true, ShowStderr: true})
			buf := make([]byte, 8192)
			n, _ := logs.Read(buf)
			t.Fatalf("connecting to the postgres image at %s: %v; logs:\n%s", ip, err, buf[:n])
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "show server_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	t.Logf("server_version %s at %s", v, ip)
	if _, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:wrong@%s:5432/postgres?sslmode=disable", ip)); err == nil {
		t.Error("a wrong password logged in: password auth is not on")
	}
}
