package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestSecretEnvReachesContainersOnly: a redash:secret-env: value is in the
// env file (0600) and the containers' environment, and nowhere else: not
// in what any command prints, the compose file, a label, a container's or a
// one-off's argv, nor in any other file under --dir or --state-dir.
func TestSecretEnvReachesContainersOnly(t *testing.T) {
	const canary = "Mail-Canary-q7Zr2Lx9Wm4"
	s := newStack(t)
	s.moto.Put(t, "Redash/Mail", fmt.Sprintf(`{"user":"mailer","password":%q}`, canary))
	s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\nsecret-env:REDASH_MAIL_PASSWORD: Redash/Mail#password\n", pgEndpoint(t), s.pgDB))

	// Every command a person runs, before and after up.
	for _, args := range [][]string{{"config"}, {"--json", "config"}, {"render", "--dry-run"}, {"render", "--plan"}} {
		stdout, stderr, code := s.run(args...)
		if code != 0 {
			t.Fatalf("%v exited %d:\n%s\n%s", args, code, stdout, stderr)
		}
		if args[len(args)-1] == "config" && !strings.Contains(stdout, "Redash/Mail#password") {
			t.Errorf("%v does not show the secret-env reference:\n%s", args, stdout)
		}
		if args[len(args)-1] == "--dry-run" && !strings.Contains(stdout, `REDASH_MAIL_PASSWORD="[redacted]"`) {
			t.Errorf("render --dry-run does not list REDASH_MAIL_PASSWORD as redacted:\n%s", stdout)
		}
	}
	s.up(t)
	for _, args := range [][]string{{"status"}, {"doctor"}, {"up"}} {
		s.run(args...)
	}
	if bytes.Contains(s.outputs.Bytes(), []byte(canary)) {
		t.Errorf("the binary's output holds the secret-env value:\n%s", s.outputs.String())
	}

	// In the containers' environment: every Redash service has it.
	ctx := context.Background()
	list, err := s.docker.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		inspect, err := s.docker.ContainerInspect(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		hasIt := slices.Contains(inspect.Config.Env, "REDASH_MAIL_PASSWORD="+canary)
		if svc := c.Labels["com.docker.compose.service"]; hasIt != (svc != "nginx") {
			t.Errorf("%s: REDASH_MAIL_PASSWORD in its env = %v", svc, hasIt)
		}
		// Everything else docker inspect shows: labels, argv, entrypoint.
		other := inspect
		other.Config.Env = nil
		b, _ := json.Marshal(map[string]any{"config": other.Config, "args": other.Args, "path": other.Path, "host": other.HostConfig})
		if bytes.Contains(b, []byte(canary)) {
			t.Errorf("docker inspect of %v holds the value outside Env", c.Names)
		}
	}
	// One-offs (the migration) are gone; the fake recorded their argv.
	conn, err := testenv.Postgres(t).Connect(ctx, s.pgDB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var cmds string
	if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(cmd, ' | '), '') FROM fakeredash.fakeredash_runs`).Scan(&cmds); err != nil {
		t.Fatal(err)
	}
	if cmds == "" {
		t.Error("the fake recorded no one-off command: the argv check checks nothing")
	}
	if strings.Contains(cmds, canary) {
		t.Errorf("a one-off's argv holds the value: %s", cmds)
	}

	// Files: only the 0600 env file holds it.
	var holders []string
	for _, root := range []string{s.dir, s.stateDir()} {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(canary)) {
				holders = append(holders, p)
				if info, _ := d.Info(); info.Mode().Perm() != 0o600 {
					t.Errorf("%s holds the value with mode %v, want 0600", p, info.Mode().Perm())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{filepath.Join(s.dir, "env")}; !slices.Equal(holders, want) {
		t.Errorf("files holding the value: %v, want only %v", holders, want)
	}
}
