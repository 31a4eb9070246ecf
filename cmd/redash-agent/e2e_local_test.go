package main

// End-to-end tests of provider local, the embedded default: no AWS at all
// (IMDS points at a refusing loopback port), a real PostgreSQL 15 image
// built from the host's (testenv.PostgresImage), a real redis built from the
// host's redis-server, and the fake Redash image whose create_db and
// `manage db upgrade` act on that database.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/client"
	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/envfile"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// localCommandTimeout bounds each agent command: a hung one fails the test
// with its output instead of hanging the suite.
const localCommandTimeout = 4 * time.Minute

// localStack is one provider-local stack: its project, ports and files.
type localStack struct {
	t          *testing.T
	root       string
	dir        string
	config     string
	project    string
	serverPort int
	docker     *client.Client
	noIMDS     string // a loopback endpoint where nothing listens
}

func newLocalStack(t *testing.T) *localStack {
	t.Helper()
	root := t.TempDir()
	s := &localStack{
		t: t, root: root,
		dir:        filepath.Join(root, "redash"),
		config:     filepath.Join(root, "config.yaml"),
		project:    fmt.Sprintf("ralocal%d", time.Now().UnixNano()%1_000_000_000),
		serverPort: testenv.FreePort(t),
		docker:     testenv.DockerClient(t),
		noIMDS:     fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t)),
	}
	redashImage(t, "redash-agent-test/redash:local-r1", "lrev1")
	redashImage(t, "redash-agent-test/redash:local-r2", "lrev2")
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/nginx:latest", Cmd: []string{"nginx"}})
	testenv.PostgresImage(t)
	testenv.RedisImage(t)
	s.writeConfig("redash-agent-test/redash:local-r1")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		exec.CommandContext(ctx, agentBinary(t), "--dir", s.dir, "--config", s.config, "--state-dir", s.stateDir(), "down", "--remove").Run()
		_ = s.docker.VolumeRemove(ctx, s.volume(), true)
	})
	return s
}

func (s *localStack) stateDir() string { return filepath.Join(s.root, "state") }
func (s *localStack) volume() string   { return compose.VolumeName(s.project, "postgres-data") }

func (s *localStack) writeConfig(image string) {
	cfg := fmt.Sprintf(`provider: local
project: %s
image: %s
nginx-image: redash-agent-test/nginx:latest
postgres-image: %s
redis-image: redash-agent-test/redis:host
server-port: %d
nginx: false
`, s.project, image, testenv.PostgresImageTag, s.serverPort)
	if err := os.WriteFile(s.config, []byte(cfg), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// run executes the binary, bounded in time, with IMDS at a port where
// nothing listens: provider local must never need it.
func (s *localStack) run(args ...string) (stdout, stderr string, code int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), localCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, agentBinary(s.t), append([]string{"--dir", s.dir, "--state-dir", s.stateDir(), "--config", s.config}, args...)...)
	cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.noIMDS, "AWS_ENDPOINT_URL_SECRETS_MANAGER="+s.noIMDS)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		s.t.Fatalf("redash-agent %v did not finish within %s\nstdout: %s\nstderr: %s", args, localCommandTimeout, out.String(), errb.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("running redash-agent: %v", err)
	}
	return out.String(), errb.String(), code
}

func (s *localStack) up(t *testing.T) string {
	t.Helper()
	_, stderr, code := s.run("--log-format", "json", "up")
	if code != 0 {
		t.Fatalf("up --provider local exited %d:\n%s", code, stderr)
	}
	return stderr
}

// schemaVersion reads alembic_version from the bundled database directly:
// at the postgres container's address, with the password from the env file.
func (s *localStack) schemaVersion(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dir, compose.EnvFileName))
	if err != nil {
		t.Fatal(err)
	}
	env, err := envfile.Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ins, err := s.docker.ContainerInspect(ctx, s.project+"-postgres-1")
	if err != nil {
		t.Fatal(err)
	}
	ip := ins.NetworkSettings.Networks[compose.NetworkName(s.project)].IPAddress
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=5432 user=postgres dbname=postgres sslmode=disable", ip))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = env["POSTGRES_PASSWORD"]
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connecting to the bundled postgres at %s: %v", net.JoinHostPort(ip, "5432"), err)
	}
	defer conn.Close(ctx)
	var v string
	if err := conn.QueryRow(ctx, "SELECT version_num FROM alembic_version").Scan(&v); err != nil {
		t.Fatalf("reading alembic_version in the bundled database: %v", err)
	}
	return v
}

// migrations lists the migration one-offs up's JSON log says it ran.
func migrations(stderr string) []string {
	var ran []string
	for _, l := range strings.Split(stderr, "\n") {
		var rec struct {
			Msg, Ran string
		}
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "database state" && rec.Ran != "" {
			ran = append(ran, rec.Ran)
		}
	}
	return ran
}

// TestLocalUpMigratesAndUpgrades: up with provider local creates the
// bundled database's schema at the image's head (create_db), a new image
// upgrades it (`manage db upgrade`), `migrate` reports it current, and
// `render --plan` prints what up does, in order; then doctor's local checks:
// healthy, every check passes (and IMDS is never asked); the bundled
// postgres stopped, the database check fails with the fix.
func TestLocalUpMigratesAndUpgrades(t *testing.T) {
	s := newLocalStack(t)

	planOut, stderr, code := s.run("render", "--plan")
	if code != 0 {
		t.Fatalf("render --plan exited %d: %s", code, stderr)
	}
	plan := parsePlan(t, planOut)
	upLog := s.up(t)
	var want, got []string
	for _, p := range plan {
		if !strings.HasPrefix(p.text, "keep ") {
			want = append(want, fmt.Sprintf("%d %s", p.n, p.text))
		}
	}
	finishedAt := map[int]int{}
	for i, d := range performed(t, upLog) {
		got = append(got, fmt.Sprintf("%d %s", d.n, d.text))
		finishedAt[d.n] = i
	}
	if strings.Join(sorted(got), "\n") != strings.Join(sorted(want), "\n") {
		t.Fatalf("up carried out:\n%s\nrender --plan printed:\n%s", strings.Join(got, "\n"), planOut)
	}
	for _, p := range plan {
		for _, a := range p.after {
			if i, ok := finishedAt[p.n]; ok {
				if j, ok := finishedAt[a]; ok && j > i {
					t.Errorf("up finished action %d (%s) before action %d, which the plan puts first", p.n, p.text, a)
				}
			}
		}
	}
	// The migration sits between the bundled services and the server.
	iBacking := strings.Index(upLog, `"[finished] start bundled postgres and redis"`)
	iMigrate := strings.Index(upLog, `"[finished] migrate database"`)
	iServer := strings.Index(upLog, `"action":"create server`)
	if iBacking < 0 || iMigrate < iBacking || iServer < iMigrate {
		t.Errorf("up's steps are not backing services (%d), migration (%d), server (%d):\n%s", iBacking, iMigrate, iServer, upLog)
	}
	if ran := migrations(upLog); len(ran) != 1 || ran[0] != "create_db" {
		t.Errorf("first up ran %v, want [create_db]", ran)
	}
	if v := s.schemaVersion(t); v != "lrev1" {
		t.Fatalf("after the first up the bundled database is at %q, want the image's head lrev1", v)
	}

	// A new version: the schema is upgraded before the new server starts.
	s.writeConfig("redash-agent-test/redash:local-r2")
	upLog = s.up(t)
	if ran := migrations(upLog); len(ran) != 1 || ran[0] != "manage db upgrade" {
		t.Errorf("up with a newer image ran %v, want [manage db upgrade]", ran)
	}
	if v := s.schemaVersion(t); v != "lrev2" {
		t.Fatalf("after the upgrade the bundled database is at %q, want lrev2", v)
	}
	out, stderr, code := s.run("migrate")
	if code != 0 || !strings.Contains(out, "database: current -> current (ran nothing; image head lrev2)") {
		t.Errorf("migrate on a current local database: exit %d\n%s%s", code, out, stderr)
	}

	t.Run("doctor healthy", func(t *testing.T) {
		out, stderr, code := s.run("doctor")
		if code != 0 {
			t.Fatalf("doctor on a healthy local stack exited %d:\n%s%s", code, out, stderr)
		}
		t.Logf("doctor:\n%s", out)
		for _, want := range []string{"[ok]    database: bundled postgres", "current (image head lrev2)", "[ok]    redis: redis at", "[ok]    containers:", "[ok]    server:"} {
			if !strings.Contains(out, want) {
				t.Errorf("doctor output lacks %q:\n%s", want, out)
			}
		}
		for _, not := range []string{"imds", "ALB", "security group"} {
			if strings.Contains(out, not) {
				t.Errorf("doctor in local mode says %q:\n%s", not, out)
			}
		}
	})

	t.Run("doctor with the bundled postgres stopped", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.docker.ContainerStop(ctx, s.project+"-postgres-1", container.StopOptions{}); err != nil {
			t.Fatal(err)
		}
		out, stderr, code := s.run("doctor")
		if code != exitFailure {
			t.Errorf("doctor with the bundled postgres stopped exited %d, want %d:\n%s%s", code, exitFailure, out, stderr)
		}
		t.Logf("doctor:\n%s", out)
		for _, want := range []string{"[fail]  database: bundled postgres (container " + s.project + "-postgres-1)", "is not running", "fix: start it with `sudo redash-agent up --provider local`"} {
			if !strings.Contains(out, want) {
				t.Errorf("doctor output lacks %q:\n%s", want, out)
			}
		}
	})
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestLocalPasswordMismatch: `migrate` alone creates the bundled database;
// then a fresh state directory next to its volume generates a new password the old database does not know; up explains
// which volume, what to restore or which commands start empty, exits 3 and
// never reports green.
func TestLocalPasswordMismatch(t *testing.T) {
	s := newLocalStack(t)
	// `migrate` alone starts the bundled postgres and creates the schema.
	out, stderr, code := s.run("migrate")
	if code != 0 || !strings.Contains(out, "database: empty -> current (ran create_db; image head lrev1)") {
		t.Fatalf("migrate on a new local stack: exit %d\n%s%s", code, out, stderr)
	}
	if v := s.schemaVersion(t); v != "lrev1" {
		t.Fatalf("after migrate the bundled database is at %q, want lrev1", v)
	}
	if _, stderr, code := s.run("down", "--remove"); code != 0 {
		t.Fatalf("down --remove exited %d: %s", code, stderr)
	}
	if err := os.RemoveAll(s.stateDir()); err != nil {
		t.Fatal(err)
	}
	out, stderr, code = s.run("up")
	if i := strings.Index(stderr, "redash-agent: "); i >= 0 {
		t.Logf("up with a fresh state directory:\n%s", stderr[i:])
	}
	if code != exitConfigErr {
		t.Fatalf("up with a fresh state directory and the old volume exited %d, want %d:\n%s%s", code, exitConfigErr, out, stderr)
	}
	for _, want := range []string{
		"volume " + s.volume() + " was initialised with another password",
		"restore that state directory's local-secrets.json",
		"`redash-agent down --remove`, then `docker volume rm " + s.volume() + "`",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("up's error lacks %q:\n%s", want, stderr)
		}
	}
	data, _ := os.ReadFile(filepath.Join(s.dir, compose.EnvFileName))
	env, _ := envfile.Parse(data)
	if pw := env["POSTGRES_PASSWORD"]; pw == "" || strings.Contains(stderr+out, pw) {
		t.Errorf("the password is missing from the env file or reached the output")
	}
	// Nothing answers for Redash: the server was never started.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.docker.ContainerInspect(ctx, s.project+"-server-1"); err == nil {
		t.Errorf("a server container exists after the refused password: up went on past the migration")
	}
}
