package main

// End-to-end tests of `up`: the built binary against ec2-metadata-mock,
// moto_server, the host's PostgreSQL and the real Docker Engine, with images
// built locally FROM scratch (test/fakeredash).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// stack is one simulated instance: its own project, ports and files.
type stack struct {
	*fixture
	project    string
	serverPort int
	nginxPort  int
	docker     *client.Client
	pgDB       string
	// redis is the stack's own Redis with AUTH; redisConfig is how the
	// config names it (redis-endpoint and the redis-auth secret).
	redis       testenv.RedisServer
	redisConfig string
}

// redisAuthSecret is the secret ID of the stacks' redis-auth token.
const redisAuthSecret = "Redash/Redis/Auth"

// redashImage builds a fake Redash image whose schema head is head; extra
// env (e.g. FAKEREDASH_UPGRADE_SLEEP) is baked in as well.
func redashImage(t *testing.T, tag, head string, extra ...string) string {
	env := map[string]string{"FAKEREDASH_HEAD": head}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: tag, Env: env})
	return tag
}

func newStack(t *testing.T) *stack { t.Helper(); return newStackTags(t, seedTags) }

// newStackTags is newStack on an instance with the given tags.
func newStackTags(t *testing.T, tags map[string]string) *stack {
	t.Helper()
	dc := testenv.DockerClient(t)
	pg := testenv.Postgres(t)
	s := &stack{
		fixture:    newFixture(t, tags),
		project:    fmt.Sprintf("rae2e%d", time.Now().UnixNano()%1_000_000_000),
		serverPort: testenv.FreePort(t),
		nginxPort:  testenv.FreePort(t),
		docker:     dc,
		pgDB:       pg.NewDatabase(t),
	}
	s.moto.Put(t, "Redash/RDS/User", pg.User)
	s.moto.Put(t, "Redash/RDS/Password", pg.Password)
	// Workers must reach a live consumer registry before READY.
	s.redis = testenv.Redis(t)
	s.moto.Put(t, redisAuthSecret, s.redis.Password)
	s.redisConfig = fmt.Sprintf("redis-endpoint: %s\nsecret:redis-auth: %s\n", s.redis.Addr(), redisAuthSecret)
	redashImage(t, "redash-agent-test/redash:v1", "rev1")
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/nginx:latest", Cmd: []string{"nginx"}})
	s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s:%d\ndb-name: %s\n", pg.Host, pg.Port, s.pgDB))
	// Cleanups run last-registered first: down, then what down left.
	removeProjectNetworksAtCleanup(t, dc, s.project)
	t.Cleanup(func() {
		// Leave nothing behind, whatever the test did.
		cmd := exec.Command(agentBinary(t), "--dir", s.dir, "--config", s.config, "--state-dir", s.stateDir(), "down", "--remove")
		cmd.Env = cleanEnv()
		if err := runAgent(t, cmd); err != nil {
			t.Logf("cleanup: down --remove: %v\n%s", err, outputOf(cmd))
		}
	})
	return s
}

func (s *stack) stateDir() string { return filepath.Join(filepath.Dir(s.dir), "state") }

func (s *stack) writeConfig(image, extra string) {
	cfg := fmt.Sprintf(`project: %s
image: %s
nginx-image: redash-agent-test/nginx:latest
server-port: %d
nginx-port: %d
%s%s`, s.project, image, s.serverPort, s.nginxPort, s.redisConfig, extra)
	if err := os.WriteFile(s.config, []byte(cfg), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

func (s *stack) up(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := s.run(append([]string{"up"}, args...)...)
	if code != 0 {
		t.Fatalf("up exited %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	return stdout
}

// containers maps service -> container ID for the project's service containers.
func (s *stack) containers(t *testing.T) map[string]string {
	t.Helper()
	list, err := s.docker.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project))})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, c := range list {
		if c.Labels["com.docker.compose.oneoff"] == "True" {
			t.Errorf("one-off container %v left behind", c.Names)
			continue
		}
		svc := c.Labels["com.docker.compose.service"]
		if _, dup := out[svc]; dup {
			t.Errorf("service %s has two containers", svc)
		}
		if want := "/" + s.project + "-" + svc + "-1"; len(c.Names) == 0 || c.Names[0] != want {
			t.Errorf("container %v, want name %s", c.Names, want)
		}
		out[svc] = c.ID
	}
	return out
}

// serverEnv asks the running server which environment it got.
func (s *stack) serverEnv(t *testing.T) map[string]string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/env", s.serverPort))
	if err != nil {
		t.Fatalf("asking the server for its env: %v", err)
	}
	defer resp.Body.Close()
	var env map[string]string
	if err := json.NewDecoder(resp.Body).Decode(&env); err != nil {
		t.Fatal(err)
	}
	return env
}

// mutatingEvents counts container/network changes of the project during fn.
func (s *stack) mutatingEvents(t *testing.T, fn func()) []string {
	t.Helper()
	since := time.Now()
	fn()
	time.Sleep(300 * time.Millisecond) // let the daemon record the last events
	until := time.Now()
	// The daemon should close the stream at Until; the timeout makes sure a
	// daemon that does not cannot hang the test.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	msgs, errs := s.docker.Events(ctx, events.ListOptions{
		// Sub-second: the previous up may have ended in the same second.
		Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Until:   fmt.Sprintf("%d.%09d", until.Unix(), until.Nanosecond()),
		Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project)),
	})
	var got []string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return got
			}
			switch m.Action {
			case "create", "start", "stop", "die", "destroy", "kill", "rename", "restart", "connect", "disconnect", "update":
				got = append(got, string(m.Type)+" "+string(m.Action)+" "+m.Actor.Attributes["name"])
			}
		case err := <-errs:
			if err != nil && err != io.EOF && ctx.Err() == nil {
				t.Fatalf("events: %v", err)
			}
			return got
		}
	}
}

func TestUpEndToEnd(t *testing.T) {
	s := newStack(t)

	// 1. From nothing to a running stack.
	s.up(t)
	ids := s.containers(t)
	for _, svc := range []string{"server", "scheduler", "scheduled_worker", "adhoc_worker", "worker", "nginx"} {
		if ids[svc] == "" {
			t.Errorf("no container for %s after up", svc)
		}
	}
	env := s.serverEnv(t)
	if env["REDASH_SECRET_KEY"] != seedSecrets["Redash/SecretKey"] || env["REDASH_COOKIE_SECRET"] != seedSecrets["Redash/CookieSecret"] {
		t.Errorf("server did not get the secrets byte for byte")
	}
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", s.nginxPort)); err != nil || resp.StatusCode != 200 {
		t.Errorf("nginx does not reach the server as redash:5000: %v", err)
	}

	// 2. Again: nothing changes, not one mutating Docker event.
	var out string
	if evs := s.mutatingEvents(t, func() { out = s.up(t) }); len(evs) != 0 {
		t.Errorf("no-op up caused Docker events: %v", evs)
	}
	if !strings.Contains(out, "up to date") {
		t.Errorf("no-op up printed %q", out)
	}

	// 3. Rotate a secret: the Redash services are recreated, nginx is not.
	s.moto.Put(t, "Redash/CookieSecret", "rotated-cookie-secret-value")
	// render --plan says so first, and changes nothing.
	var planOut string
	if evs := s.mutatingEvents(t, func() { planOut, _, _ = s.run("render", "--plan") }); len(evs) != 0 {
		t.Errorf("render --plan changed containers: %v", evs)
	}
	// Five Redash services recreated, and nginx restarted after the new
	// server: it resolved the old server's address at its start.
	if !strings.Contains(planOut, "# plan: 6 change(s)") || !strings.Contains(planOut, "recreate server") || strings.Contains(planOut, "recreate nginx") || !strings.Contains(planOut, "restart nginx") {
		t.Errorf("render --plan after a secret rotation:\n%s", planOut)
	}
	s.up(t)
	after := s.containers(t)
	for svc, id := range ids {
		recreated := after[svc] != id
		if want := svc != "nginx"; recreated != want {
			t.Errorf("after rotating the cookie secret: %s recreated=%v, want %v", svc, recreated, want)
		}
	}
	if got := s.serverEnv(t)["REDASH_COOKIE_SECRET"]; got != "rotated-cookie-secret-value" {
		t.Errorf("server has the old cookie secret after rotation")
	}

	// 4. A new version: every Redash service moves, and only after the
	// upgrade finished (it takes 2 s in this image).
	redashImage(t, "redash-agent-test/redash:v2", "rev2", "FAKEREDASH_UPGRADE_SLEEP", "2")
	s.writeConfig("redash-agent-test/redash:v2", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	s.up(t)
	list, _ := s.docker.ContainerList(context.Background(), container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project))})
	upgradeStarted := s.upgradeStart(t)
	for _, c := range list {
		if c.Labels["com.docker.compose.service"] != "nginx" && c.Image != "redash-agent-test/redash:v2" {
			t.Errorf("%v still runs %s", c.Names, c.Image)
		}
		if created := time.Unix(c.Created, 0); c.Image == "redash-agent-test/redash:v2" && created.Before(upgradeStarted.Add(time.Second)) {
			// Created has second resolution: allow one second of rounding.
			t.Errorf("%v (new version) was created at %s, before the 2 s upgrade that started at %s finished", c.Names, created, upgradeStarted)
		}
	}
	stdout, _, _ := s.run("status")
	if !strings.Contains(stdout, "database: current (image head rev2)") {
		t.Errorf("status does not show the upgraded database:\n%s", stdout)
	}
	if stdout, _, _ := s.run("config", "--db"); !strings.Contains(stdout, "current (image head rev2)") {
		t.Errorf("config --db does not show the database state:\n%s", stdout)
	}

	// 5. A failing migration: up fails with the migration's log lines and
	// the old stack keeps serving, untouched.
	before := s.containers(t)
	redashImage(t, "redash-agent-test/redash:v3-broken", "rev3", "FAKEREDASH_FAIL_UPGRADE", "1")
	s.writeConfig("redash-agent-test/redash:v3-broken", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	_, stderr, code := s.run("up")
	if code != exitFailure || !strings.Contains(stderr, "DuplicateColumn") {
		t.Errorf("up with a failing migration: exit %d, want %d with the migration's log lines:\n%s", code, exitFailure, stderr)
	}
	if after := s.containers(t); !maps.Equal(after, before) {
		t.Errorf("a failed migration touched the containers: before %v, after %v", before, after)
	}
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", s.serverPort)); err != nil || resp.StatusCode != 200 {
		t.Errorf("the old server stopped answering after a failed migration: %v", err)
	}
	s.writeConfig("redash-agent-test/redash:v2", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))

	// 6. docker-compose 1.29 sees the same stack.
	dc := testenv.RequireTool(t, "docker-compose", "apt-get install docker-compose")
	psOut, err := exec.Command(dc, "-p", s.project, "-f", filepath.Join(s.dir, "docker-compose.yml"), "ps").CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose ps: %v\n%s", err, psOut)
	}
	for _, svc := range []string{"server", "worker", "nginx"} {
		if !strings.Contains(string(psOut), s.project+"-"+svc+"-1") {
			t.Errorf("docker-compose ps does not list %s:\n%s", svc, psOut)
		}
	}

	// 7. A smaller layout: role web drops the scheduler and workers.
	s.up(t, "--set", "role=web")
	left := s.containers(t)
	if len(left) != 2 || left["server"] == "" || left["nginx"] == "" {
		t.Errorf("after role=web: containers %v, want server and nginx only", left)
	}

	assertNoSecrets(t, s.outputs.Bytes(), "the binary's output")
	// The stack's real database password (the seed's was replaced by it).
	if pw := testenv.Postgres(t).Password; bytes.Contains(s.outputs.Bytes(), []byte(pw)) {
		t.Error("the binary's output contains the database password")
	}
	assertNoLabelsHoldSecrets(t, s)
}

// upgradeStart is when the fake image's `manage db upgrade` began, as the
// fake recorded it in the database.
func (s *stack) upgradeStart(t *testing.T) time.Time {
	t.Helper()
	conn, err := testenv.Postgres(t).Connect(context.Background(), s.pgDB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var at time.Time
	if err := conn.QueryRow(context.Background(), `SELECT max(at) FROM fakeredash.fakeredash_runs WHERE cmd LIKE '%upgrade%'`).Scan(&at); err != nil {
		t.Fatalf("no upgrade recorded: %v", err)
	}
	return at
}

func pgEndpoint(t *testing.T) string {
	pg := testenv.Postgres(t)
	return fmt.Sprintf("%s:%d", pg.Host, pg.Port)
}

// assertNoLabelsHoldSecrets: labels and argv are world-readable through
// `docker inspect`/`ps`; the env is the only place a secret may be.
func assertNoLabelsHoldSecrets(t *testing.T, s *stack) {
	t.Helper()
	list, _ := s.docker.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project))})
	for _, c := range list {
		inspect, err := s.docker.ContainerInspect(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(map[string]any{"labels": inspect.Config.Labels, "cmd": inspect.Config.Cmd, "args": inspect.Args, "entrypoint": inspect.Config.Entrypoint})
		assertNoSecrets(t, b, fmt.Sprintf("labels/argv of %v", c.Names))
	}
}

// TestFirstBootRaceIsGone reproduces the old AMI: a stack started by
// docker-compose v1 with `restart: always` and a stale env (what the baked
// build left), then two agents started at the same moment. The agents must
// replace it with one fresh stack.
func TestFirstBootRaceIsGone(t *testing.T) {
	s := newStack(t)
	dcBin := testenv.RequireTool(t, "docker-compose", "apt-get install docker-compose")

	// What the AMI build left: the same services, compose v1 names, stale env, restart always.
	stale := t.TempDir()
	staleEnv := "REDASH_SECRET_KEY=stale-baked-value\nREDASH_COOKIE_SECRET=stale\n"
	staleCompose := `version: "2"
services:
  server:
    image: redash-agent-test/redash:v1
    command: server
    restart: always
    env_file: env
  worker:
    image: redash-agent-test/redash:v1
    command: worker
    restart: always
    env_file: env
`
	os.WriteFile(filepath.Join(stale, "env"), []byte(staleEnv), 0o600)
	os.WriteFile(filepath.Join(stale, "docker-compose.yml"), []byte(staleCompose), 0o644)
	if out, err := exec.Command(dcBin, "-p", s.project, "-f", filepath.Join(stale, "docker-compose.yml"), "up", "-d").CombinedOutput(); err != nil {
		t.Fatalf("starting the stale stack with docker-compose 1.29: %v\n%s", err, out)
	}

	var wg sync.WaitGroup
	codes := make([]int, 2)
	errs := make([]string, 2)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i], codes[i] = s.run("up")
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Errorf("agent %d exited %d: %s", i, c, errs[i])
		}
	}
	ids := s.containers(t) // fails on duplicates and on v1 names like <project>_server_1
	if len(ids) != 6 {
		t.Errorf("want 6 service containers, got %v", ids)
	}
	if got := s.serverEnv(t)["REDASH_SECRET_KEY"]; got != seedSecrets["Redash/SecretKey"] {
		t.Errorf("the server still runs with the baked env")
	}
	for _, id := range ids {
		c, err := s.docker.ContainerInspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if p := c.HostConfig.RestartPolicy.Name; p != container.RestartPolicyOnFailure {
			t.Errorf("%s restart policy %q, want on-failure (Docker must never start Redash by itself)", c.Name, p)
		}
	}
	nets, _ := s.docker.NetworkList(context.Background(), network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", s.project+"_default"))})
	if len(nets) != 1 {
		t.Errorf("%d networks named %s_default, want 1", len(nets), s.project)
	}
}

func TestDoctorAndPrepareImage(t *testing.T) {
	s := newStack(t)
	// redis-url instead of redis-endpoint: doctor must read it too.
	s.redisConfig = fmt.Sprintf("redis-url: redis://%s/0\nsecret:redis-auth: %s\n", s.redis.Addr(), redisAuthSecret)
	s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	s.up(t)

	stdout, stderr, code := s.run("doctor")
	if code != 0 {
		t.Fatalf("doctor on a healthy stack exited %d:\n%s\n%s", code, stdout, stderr)
	}
	for _, want := range []string{"[ok]    docker:", "[ok]    files:", "[ok]    database:", "[ok]    redis:", "[ok]    containers:", "[ok]    server:"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, stdout)
		}
	}

	// A readable env file is a failure with the fix.
	os.Chmod(filepath.Join(s.dir, "env"), 0o644)
	stdout, _, code = s.run("doctor")
	if code != exitFailure || !strings.Contains(stdout, "others can read the secrets") || !strings.Contains(stdout, "chmod 600") {
		t.Errorf("doctor with a 0644 env file: exit %d\n%s", code, stdout)
	}
	stdout, _, _ = s.run("doctor", "--json")
	var findings []map[string]any
	if err := json.Unmarshal([]byte(stdout), &findings); err != nil || len(findings) < 5 {
		t.Errorf("doctor --json: %v\n%s", err, stdout)
	}

	// Before prepare-image the instance state would be baked into an AMI.
	if _, _, code := s.run("doctor", "--offline"); code != exitFailure {
		t.Errorf("doctor --offline passed with an env file and containers present")
	}
	stdout, stderr, code = s.run("prepare-image")
	if code != 0 || !strings.Contains(stdout, "present: redash-agent-test/redash:v1") {
		t.Fatalf("prepare-image exited %d\n%s\n%s", code, stdout, stderr)
	}
	if ids := s.containers(t); len(ids) != 0 {
		t.Errorf("prepare-image left containers: %v", ids)
	}
	for _, p := range []string{filepath.Join(s.dir, "env"), filepath.Join(s.stateDir(), "hash-key")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("prepare-image left %s", p)
		}
	}
	stdout, _, code = s.run("doctor", "--offline")
	if code != 0 || !strings.Contains(stdout, "[ok]    clean image") {
		t.Errorf("doctor --offline after prepare-image: exit %d\n%s", code, stdout)
	}
	assertNoSecrets(t, s.outputs.Bytes(), "the binary's output")
}

// TestFiveInstancesMigrateOnce simulates an Auto Scaling Group launching five
// instances against one empty database: five `redash-agent migrate`
// processes at once, each with its own --dir and state. create_db must run
// exactly once, and every instance must see the schema current.
func TestFiveInstancesMigrateOnce(t *testing.T) {
	s := newStack(t)
	const n = 5
	var wg sync.WaitGroup
	outs := make([]string, n)
	codes := make([]int, n)
	for i := range n {
		// Each migrate's one-off makes its project's network; removed
		// however the test ends.
		removeProjectNetworksAtCleanup(t, s.docker, fmt.Sprintf("%s-i%d", s.project, i))
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			root := filepath.Join(filepath.Dir(s.dir), fmt.Sprintf("instance-%d", i))
			// Each instance has its own Docker on EC2; on this one shared
			// engine, its own project (and so network) stands in for that.
			cmd := exec.Command(agentBinary(t), "--dir", filepath.Join(root, "redash"), "--state-dir", filepath.Join(root, "state"), "--config", s.config,
				"--set", fmt.Sprintf("project=%s-i%d", s.project, i), "migrate")
			cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.imds, "AWS_ENDPOINT_URL_SECRETS_MANAGER="+s.moto.Endpoint)
			var out lockedBuffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := runAgent(t, cmd)
			outs[i] = out.String()
			codes[i] = exitCodeOf(err)
		}()
	}
	wg.Wait()
	ran := 0
	for i := range n {
		if codes[i] != 0 || !strings.Contains(outs[i], "-> current") {
			t.Errorf("instance %d: exit %d\n%s", i, codes[i], outs[i])
		}
		if strings.Contains(outs[i], "ran create_db") {
			ran++
		}
	}
	if ran != 1 {
		t.Errorf("%d instances say they ran create_db, want exactly 1", ran)
	}
	pg := testenv.Postgres(t)
	conn, err := pg.Connect(context.Background(), s.pgDB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var creates int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM fakeredash.fakeredash_runs WHERE cmd LIKE 'create_db%'`).Scan(&creates); err != nil {
		t.Fatal(err)
	}
	if creates != 1 {
		t.Errorf("create_db ran %d times in the database, want exactly 1", creates)
	}
	for i := range n {
		project := fmt.Sprintf("%s-i%d", s.project, i)
		list, _ := s.docker.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+project))})
		if len(list) != 0 {
			t.Errorf("instance %d: migrate left %d containers behind", i, len(list))
		}
	}
}

// TestKillDuringUpConverges kills the agent with SIGKILL at random points of
// an `up` that has work to do (a rotated secret recreates five services),
// and checks after every kill that the next `up` converges: exactly one
// container per service, under its final name, with the current secret, and
// no temp or half-created containers. At least 50 kills, bounded in time.
//
// It runs against a private dockerd: the next `up` removing a container
// whose start the killed agent had asked for can leave dockerd 20.10 with a
// stale endpoint count on the project network ("has active endpoints", no
// container attached, no endpoint to disconnect), which no API call removes.
// On the shared daemon that leaked one rae2e<N>_default network per run; a
// private daemon takes it with it.
func TestKillDuringUpConverges(t *testing.T) {
	// PostgreSQL listens on the machine daemon's gateway address, which
	// the private daemon's containers reach through the host.
	t.Setenv("PGTEST_HOST", testenv.Postgres(t).Host)
	t.Setenv("DOCKER_HOST", testenv.StartPrivateDockerd(t).Host)
	s := newStack(t)
	s.up(t)
	const kills = 50
	deadline := time.Now().Add(6 * time.Minute)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	done := 0
	for i := 0; i < kills && time.Now().Before(deadline); i++ {
		secret := fmt.Sprintf("cookie-rotation-%d-of-%d", i, kills)
		s.moto.Put(t, "Redash/CookieSecret", secret)

		cmd := exec.Command(agentBinary(t), "--dir", s.dir, "--state-dir", s.stateDir(), "--config", s.config, "up")
		cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.imds, "AWS_ENDPOINT_URL_SECRETS_MANAGER="+s.moto.Endpoint)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Up to 2.5 s covers render, write, migrate check and the
		// recreate of every service on this machine.
		time.Sleep(time.Duration(rng.Int64N(int64(2500 * time.Millisecond))))
		cmd.Process.Kill()
		cmd.Wait()
		done++

		s.up(t) // must converge whatever state the kill left
		if got := s.serverEnv(t)["REDASH_COOKIE_SECRET"]; got != secret {
			t.Fatalf("kill %d: after a full up the server has an old cookie secret", i)
		}
		if ids := s.containers(t); len(ids) != 6 { // also fails on duplicates and stray names
			t.Fatalf("kill %d: containers after a full up: %v", i, ids)
		}
	}
	if done < kills {
		t.Errorf("only %d kills within the time bound, want %d", done, kills)
	}
	t.Logf("%d kills, each followed by a converging up", done)
}
