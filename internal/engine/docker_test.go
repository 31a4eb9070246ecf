package engine

// Tests against the real Docker Engine, with images built FROM scratch from
// test/fakeredash (testenv.BuildFakeImage). Each test has its own project
// name and loopback ports and removes its containers and network at the end.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"

	"github.com/redash-agent/redash-agent/internal/testenv"

	"github.com/redash-agent/redash-agent/internal/compose"
)

const (
	imageV1    = "redash-agent-test/engine-redash:v1"
	imageV2    = "redash-agent-test/engine-redash:v2"
	imageNginx = "redash-agent-test/engine-nginx:v1"
)

// buildImages makes the fake images; v2 differs from v1 by one ENV line.
func buildImages(t testing.TB) {
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: imageV1})
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: imageV2, Env: map[string]string{"FAKEREDASH_VERSION": "2"}})
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: imageNginx, Cmd: []string{"nginx"}})
}

// syncBuffer collects log output from parallel goroutines.
type syncBuffer = testenv.SyncBuffer

// stack is one test's project with its engine and what it logged.
type stack struct {
	t          testing.TB
	cli        *client.Client
	e          *Engine
	d          Desired
	logs       *syncBuffer
	lockDir    string
	serverPort int
	nginxPort  int
}

// tricky env values: every character that breaks naive quoting.
func trickyEnv() map[string]string {
	return map[string]string{
		"REDASH_COOKIE_SECRET": `c$o"o k=i\e'` + "\nline2",
		"REDASH_SECRET_KEY":    "s3cr3t-key-" + fmt.Sprint(rand.Uint64()),
		"REDASH_DATABASE_URL":  "postgresql://u:p%40ss@db:5432/redash",
	}
}

func newStack(t testing.TB) *stack {
	t.Helper()
	cli := testenv.DockerClient(t)
	buildImages(t)
	s := &stack{t: t, cli: cli, logs: &syncBuffer{}, lockDir: t.TempDir(), serverPort: testenv.FreePort(t), nginxPort: testenv.FreePort(t)}
	s.e = s.engine()
	project := fmt.Sprintf("ratest-%08x", rand.Uint32())
	s.d = Desired{Project: stackProject(project, imageV1, s.serverPort, s.nginxPort), Env: trickyEnv(), HashKey: []byte("test-host-key")}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := s.engine().Down(ctx, project, true); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		s.assertNoSecretsLogged()
	})
	return s
}

// engine returns a new Engine on its own client, like a second process.
func (s *stack) engine() *Engine {
	cli := testenv.DockerClient(s.t)
	return &Engine{
		Docker:        cli,
		Logger:        slog.New(slog.NewTextHandler(s.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		CallTimeout:   30 * time.Second,
		HealthTimeout: 60 * time.Second,
		LockDir:       s.lockDir,
	}
}

func stackProject(name, image string, serverPort, nginxPort int) *types.Project {
	envFile := []types.EnvFile{{Path: "/opt/redash/env"}}
	svc := func(cmd string) types.ServiceConfig {
		return types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: image, Command: []string{cmd}, EnvFiles: envFile,
			StopGracePeriod: durationp(3 * time.Second)}}
	}
	server := svc("server")
	server.Environment = types.MappingWithEquals{"REDASH_WEB_WORKERS": strp("2")}
	server.Ports = []types.ServicePortConfig{{Target: 5000, Published: fmt.Sprint(serverPort), HostIP: "127.0.0.1", Protocol: "tcp"}}
	nginx := types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: imageNginx, Command: []string{"nginx"}}}
	nginx.DependsOn = types.DependsOnConfig{"server": {Condition: types.ServiceConditionStarted, Required: true}}
	nginx.Ports = []types.ServicePortConfig{{Target: 80, Published: fmt.Sprint(nginxPort), HostIP: "127.0.0.1", Protocol: "tcp"}}
	return &types.Project{Name: name, Services: types.Services{
		"server": server, "scheduler": svc("scheduler"), "worker": svc("worker"), "nginx": nginx,
	}}
}

func durationp(d time.Duration) *types.Duration { x := types.Duration(d); return &x }

func (s *stack) up() Plan {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	p, err := converge(ctx, s.e, s.d)
	if err != nil {
		s.t.Fatalf("Up: %v\nplan:\n%s\nlogs:\n%s", err, p, s.logs)
	}
	return p
}

func (s *stack) observe() Observed {
	s.t.Helper()
	o, err := s.e.Observe(context.Background(), s.d)
	if err != nil {
		s.t.Fatal(err)
	}
	return o
}

// ids maps container names to IDs.
func (s *stack) ids() map[string]string {
	m := map[string]string{}
	for _, c := range s.observe().Containers {
		m[c.Name] = c.ID
	}
	return m
}

// assertConverged checks the one-stack invariant: exactly one container per
// service under its canonical name, running, with the current hash, nothing
// else with the project label, and one project network.
func (s *stack) assertConverged() {
	s.t.Helper()
	o := s.observe()
	var names []string
	for _, c := range o.Containers {
		names = append(names, c.Name)
		svc, ok := s.d.Project.Services[c.Service]
		if !ok {
			s.t.Errorf("container %s of unknown service %q", c.Name, c.Service)
			continue
		}
		svc.Name = c.Service
		if c.Hash != ConfigHash(svc, s.d.Env, s.d.HashKey) {
			s.t.Errorf("container %s has a stale hash", c.Name)
		}
		if c.State != "running" {
			s.t.Errorf("container %s is %s, want running", c.Name, c.State)
		}
	}
	var want []string
	for name := range s.d.Project.Services {
		want = append(want, containerName(s.d.Project.Name, name))
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		s.t.Errorf("containers %v, want exactly %v", names, want)
	}
	nets, err := s.cli.NetworkList(context.Background(), network.ListOptions{Filters: filters.NewArgs(filters.Arg("name", s.d.Project.Name))})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(nets) != 1 || nets[0].Name != compose.NetworkName(s.d.Project.Name) {
		var ns []string
		for _, n := range nets {
			ns = append(ns, n.Name)
		}
		s.t.Errorf("networks %v, want exactly [%s]", ns, compose.NetworkName(s.d.Project.Name))
	}
}

func (s *stack) assertNoSecretsLogged() {
	logs := s.logs.String()
	for _, v := range s.d.Env {
		if strings.Contains(logs, v) {
			s.t.Errorf("an env value reached the log:\n%s", logs)
		}
	}
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b)
}

// serverEnv is the environment the running server sees.
func (s *stack) serverEnv() map[string]string {
	var m map[string]string
	if err := json.Unmarshal([]byte(httpGet(s.t, fmt.Sprintf("http://127.0.0.1:%d/env", s.serverPort))), &m); err != nil {
		s.t.Fatal(err)
	}
	return m
}

// mutatingEvents returns the mutating container and network events of the
// project between since and until. It filters on our side too: network
// connect events carry no container labels.
func (s *stack) mutatingEvents(since, until time.Time) []string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, errs := s.cli.Events(ctx, events.ListOptions{
		Since:   fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		Until:   fmt.Sprintf("%d.%09d", until.Unix(), until.Nanosecond()),
		Filters: filters.NewArgs(filters.Arg("type", "container"), filters.Arg("type", "network")),
	})
	mutating := []string{"create", "start", "stop", "die", "destroy", "kill", "rename", "restart", "pause", "unpause", "update", "connect", "disconnect", "remove"}
	var out []string
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return out
			}
			ours := m.Actor.Attributes[LabelProject] == s.d.Project.Name || m.Actor.Attributes["name"] == compose.NetworkName(s.d.Project.Name)
			action := strings.SplitN(string(m.Action), ":", 2)[0]
			if ours && slices.Contains(mutating, action) {
				out = append(out, fmt.Sprintf("%s %s %s", m.Type, action, m.Actor.Attributes["name"]))
			}
		case err := <-errs:
			if err != nil && err != io.EOF {
				s.t.Fatalf("reading events: %v", err)
			}
			return out
		}
	}
}

func TestUpFromNothing(t *testing.T) {
	s := newStack(t)
	p := s.up()
	if p.Mutations() != 5 {
		t.Errorf("first Up did %d mutations, want 5 (network + 4 containers):\n%s", p.Mutations(), p)
	}
	s.assertConverged()

	if got := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/ping", s.serverPort)); got != "PONG." {
		t.Errorf("/ping = %q", got)
	}
	// nginx reaches the server through the "redash" alias.
	if got := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/ping", s.nginxPort)); got != "PONG." {
		t.Errorf("/ping through nginx = %q", got)
	}
	env := s.serverEnv()
	for k, v := range s.d.Env {
		if env[k] != v {
			t.Errorf("server sees %s=%q, want %q", k, env[k], v)
		}
	}
	if env["REDASH_WEB_WORKERS"] != "2" {
		t.Errorf("service environment not applied: REDASH_WEB_WORKERS=%q", env["REDASH_WEB_WORKERS"])
	}

	// nginx has no env_file: it gets none of the secrets.
	in, err := s.cli.ContainerInspect(context.Background(), containerName(s.d.Project.Name, "nginx"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range in.Config.Env {
		if strings.HasPrefix(kv, "REDASH_") {
			t.Errorf("nginx got %s", strings.SplitN(kv, "=", 2)[0])
		}
	}
	if in.HostConfig.RestartPolicy.Name != "on-failure" {
		t.Errorf("restart policy %q", in.HostConfig.RestartPolicy.Name)
	}
	for _, c := range s.observe().Containers {
		in, err := s.cli.ContainerInspect(context.Background(), c.ID)
		if err != nil {
			t.Fatal(err)
		}
		labels, _ := json.Marshal(in.Config.Labels)
		for _, v := range s.d.Env {
			if strings.Contains(string(labels), v) {
				t.Errorf("a label of %s holds an env value", c.Name)
			}
		}
	}

	st, err := s.e.Status(context.Background(), s.d)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, x := range st {
		got = append(got, fmt.Sprintf("%s %s %s current=%v", x.Service, x.Container, x.State, x.HashCurrent))
	}
	want := []string{"server SERVER running current=true", "nginx NGINX running current=true", "scheduler SCHEDULER running current=true", "worker WORKER running current=true"}
	for i := range want {
		for _, svc := range []string{"server", "nginx", "scheduler", "worker"} {
			want[i] = strings.Replace(want[i], strings.ToUpper(svc), containerName(s.d.Project.Name, svc), 1)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("Status:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	t.Run("docker-compose 1.29 ps lists the stack", func(t *testing.T) {
		dc := testenv.RequireTool(t, "docker-compose", "apt-get install -y docker-compose")
		dir := t.TempDir()
		var yml strings.Builder
		yml.WriteString("version: \"3\"\nservices:\n")
		for _, name := range serviceOrder(s.d.Project) {
			fmt.Fprintf(&yml, "  %s:\n    image: %s\n", name, s.d.Project.Services[name].Image)
		}
		f := filepath.Join(dir, "docker-compose.yml")
		if err := os.WriteFile(f, []byte(yml.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, dc, "-p", s.d.Project.Name, "-f", f, "ps").CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose ps: %v\n%s", err, out)
		}
		for _, name := range serviceOrder(s.d.Project) {
			line := ""
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, containerName(s.d.Project.Name, name)+" ") {
					line = l
				}
			}
			if !strings.Contains(line, "Up") {
				t.Errorf("docker-compose ps shows no running %s:\n%s", containerName(s.d.Project.Name, name), out)
			}
		}
	})
}

func TestUpAgainIsNoop(t *testing.T) {
	s := newStack(t)
	s.up()
	before := s.ids()
	since := time.Now()
	p := s.up()
	until := time.Now().Add(500 * time.Millisecond)
	if p.Mutations() != 0 {
		t.Errorf("second Up planned mutations:\n%s", p)
	}
	time.Sleep(time.Until(until))
	if ev := s.mutatingEvents(since, until); len(ev) != 0 {
		t.Errorf("second Up caused %d mutating Docker events: %v", len(ev), ev)
	}
	if after := s.ids(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("containers changed: %v -> %v", before, after)
	}
}

func TestChangedSecretRecreatesEnvFileServicesOnly(t *testing.T) {
	s := newStack(t)
	s.up()
	before := s.ids()
	old := hashes(s.d)
	s.d.Env["REDASH_SECRET_KEY"] = "rotated-" + fmt.Sprint(rand.Uint64())

	st, err := s.e.Status(context.Background(), s.d)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range st {
		if x.HashCurrent != (x.Service == "nginx") {
			t.Errorf("Status before Up: %s current=%v", x.Service, x.HashCurrent)
		}
	}

	since := time.Now()
	p := s.up()
	until := time.Now().Add(300 * time.Millisecond)
	h := hashes(s.d)
	var got, want strings.Builder
	for _, svc := range serviceOrder(s.d.Project) {
		if svc == "nginx" {
			// nginx resolved the old server's address at its start.
			fmt.Fprintf(&want, "restart nginx (server started anew: nginx resolves redash once, at its start, and would keep the old address)\n")
			continue
		}
		fmt.Fprintf(&want, "recreate %s (image %s, hash %s -> %s, config changed)\n", svc, imageV1, shortHash(old[svc]), shortHash(h[svc]))
	}
	for _, a := range p.Actions {
		if (a.Kind == ActCreate || a.Kind == ActKeep || a.Kind == ActRestart) && a.Service != "" {
			fmt.Fprintln(&got, a.Text())
		}
	}
	if got.String() != want.String() {
		t.Errorf("plan:\n%s\nwant (its create, keep and restart lines):\n%s", p, want.String())
	}
	after := s.ids()
	for _, svc := range []string{"server", "scheduler", "worker"} {
		n := containerName(s.d.Project.Name, svc)
		if after[n] == before[n] {
			t.Errorf("%s was not recreated", n)
		}
	}
	ngx := containerName(s.d.Project.Name, "nginx")
	if after[ngx] != before[ngx] {
		t.Errorf("nginx was recreated for a secret it does not receive")
	}
	time.Sleep(time.Until(until))
	for _, ev := range s.mutatingEvents(since, until) {
		// Restarted (after the server), never recreated.
		if strings.HasSuffix(ev, " "+ngx) && !slices.Contains([]string{"container kill", "container die", "container stop", "container start", "container restart", "network disconnect", "network connect"}, strings.TrimSuffix(ev, " "+ngx)) {
			t.Errorf("nginx got a mutating event other than a restart: %s", ev)
		}
	}
	if got := s.serverEnv()["REDASH_SECRET_KEY"]; got != s.d.Env["REDASH_SECRET_KEY"] {
		t.Errorf("server sees the old secret")
	}
	s.assertConverged()
}

func TestChangedImageMovesRedashServices(t *testing.T) {
	s := newStack(t)
	s.up()
	before := s.ids()
	for _, name := range []string{"server", "scheduler", "worker"} {
		svc := s.d.Project.Services[name]
		svc.Image = imageV2
		s.d.Project.Services[name] = svc
	}
	s.up()
	s.assertConverged()
	for _, c := range s.observe().Containers {
		want := imageV2
		if c.Service == "nginx" {
			want = imageNginx
			if before[c.Name] != c.ID {
				t.Errorf("nginx was recreated")
			}
		}
		if c.Image != want {
			t.Errorf("%s runs %s, want %s", c.Name, c.Image, want)
		}
	}
	if got := s.serverEnv()["FAKEREDASH_VERSION"]; got != "2" {
		t.Errorf("server does not run the v2 image (FAKEREDASH_VERSION=%q)", got)
	}
}

func TestMissingImageFailsBeforeTouchingAnything(t *testing.T) {
	s := newStack(t)
	s.up()
	before := s.ids()
	// A loopback registry that does not exist: the pull fails at once,
	// without leaving the machine.
	missing := "127.0.0.1:1/redash-agent-test/missing:v0"
	svc := s.d.Project.Services["server"]
	svc.Image = missing
	s.d.Project.Services["server"] = svc
	_, err := converge(context.Background(), s.e, s.d)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", missing)) {
		t.Fatalf("Up with a missing image: err = %v, want one naming %q", err, missing)
	}
	if after := s.ids(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("a failed pull changed containers: %v -> %v", before, after)
	}
}

func TestRemovedServiceGoes(t *testing.T) {
	s := newStack(t)
	s.up()
	delete(s.d.Project.Services, "scheduler")
	p := s.up()
	if !strings.Contains(p.String(), "remove "+containerName(s.d.Project.Name, "scheduler")+" (orphan") {
		t.Errorf("plan does not remove the orphan:\n%s", p)
	}
	s.assertConverged()
}

func TestStaleStateConverges(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	project := s.d.Project.Name
	if _, err := s.cli.NetworkCreate(ctx, compose.NetworkName(project), network.CreateOptions{Labels: map[string]string{LabelProject: project}}); err != nil {
		t.Fatal(err)
	}
	// What the AMI's baked `docker-compose up` left: a v1-named server with
	// restart=always, stale env, holding the server's published port.
	v1 := &container.Config{Image: imageV1, Cmd: []string{"server"}, Env: []string{"REDASH_SECRET_KEY=stale"},
		ExposedPorts: nat.PortSet{"5000/tcp": {}},
		Labels:       map[string]string{LabelProject: project, LabelService: "server", LabelContainerNumber: "1", LabelOneOff: "False"}}
	host := &container.HostConfig{RestartPolicy: container.RestartPolicy{Name: "always"}, NetworkMode: container.NetworkMode(compose.NetworkName(project)),
		PortBindings: nat.PortMap{"5000/tcp": {{HostIP: "127.0.0.1", HostPort: fmt.Sprint(s.serverPort)}}}}
	mk := func(name string, cfg *container.Config) {
		r, err := s.cli.ContainerCreate(ctx, cfg, host, nil, nil, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.cli.ContainerStart(ctx, r.ID, container.StartOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mk(project+"_server_1", v1)
	// And an old-hash worker under the canonical name.
	old := *v1
	old.Cmd = []string{"worker"}
	old.Labels = map[string]string{LabelProject: project, LabelService: "worker", LabelContainerNumber: "1", LabelOneOff: "False", LabelConfigHash: "old"}
	host.PortBindings = nil
	mk(containerName(project, "worker"), &old)

	p := s.up()
	for _, want := range []string{"remove " + project + "_server_1 (service server: stale name", "recreate worker (image " + imageV1 + ", hash old -> "} {
		if !strings.Contains(p.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, p)
		}
	}
	s.assertConverged()
	if got := s.serverEnv()["REDASH_SECRET_KEY"]; got != s.d.Env["REDASH_SECRET_KEY"] {
		t.Errorf("server runs with stale env")
	}
}

func TestConcurrentUps(t *testing.T) {
	// Both as the CLI would do it (Up, serialized by the host lock) and with
	// two Applies of the same stale plan, where the second finds every name
	// taken by the first and must adopt, not duplicate or fail.
	for _, mode := range []string{"Up", "Apply of one stale plan"} {
		t.Run(mode, func(t *testing.T) {
			s := newStack(t)
			o := s.observe()
			plan := ComputePlan(s.d, o)
			engines := []*Engine{s.engine(), s.engine()}
			start := make(chan struct{})
			errs := make([]error, len(engines))
			var wg sync.WaitGroup
			for i, e := range engines {
				wg.Go(func() {
					<-start
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
					defer cancel()
					if mode == "Up" {
						_, errs[i] = converge(ctx, e, s.d)
					} else {
						errs[i] = applyAll(ctx, e, s.d, plan)
					}
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("%s #%d: %v", mode, i, err)
				}
			}
			s.assertConverged()
			if p := s.up(); p.Mutations() != 0 {
				t.Errorf("after two concurrent runs, a third still plans:\n%s", p)
			}
			if mode != "Up" && !strings.Contains(s.logs.String(), "adopting the identical container") {
				t.Errorf("the second Apply adopted nothing; the conflict path was not exercised:\n%s", s.logs)
			}
		})
	}
}

func TestCrashLoopReportedWithLogs(t *testing.T) {
	s := newStack(t)
	w := s.d.Project.Services["worker"]
	w.Command = []string{"crash"}
	s.d.Project.Services["worker"] = w
	s.e.HealthTimeout = 45 * time.Second
	start := time.Now()
	_, err := converge(context.Background(), s.e, s.d)
	took := time.Since(start)
	if err == nil {
		t.Fatal("Up succeeded with a crash-looping worker")
	}
	if !strings.Contains(err.Error(), "fakeredash: crash requested, exiting 1") || !strings.Contains(err.Error(), `"worker"`) {
		t.Errorf("error lacks the service or its log lines: %v", err)
	}
	if took > 40*time.Second {
		t.Errorf("crash loop reported after %s; it must not be waited on", took)
	}
	t.Logf("crash loop reported after %s: %v", took.Round(time.Millisecond), err)
}

func TestDownThenUp(t *testing.T) {
	s := newStack(t)
	s.up()
	ctx := context.Background()
	if err := s.e.Down(ctx, s.d.Project.Name, false); err != nil {
		t.Fatal(err)
	}
	for _, c := range s.observe().Containers {
		if c.State != "exited" {
			t.Errorf("after Down %s is %s", c.Name, c.State)
		}
	}
	p := s.up()
	if n := strings.Count(p.String(), "start "); n != 4 || p.Mutations() != 4 {
		t.Errorf("Up after Down should start the 4 containers:\n%s", p)
	}
	s.assertConverged()
	if err := s.e.Down(ctx, s.d.Project.Name, true); err != nil {
		t.Fatal(err)
	}
	o := s.observe()
	if len(o.Containers) != 0 || o.Network != nil {
		t.Errorf("after Down(remove): %d containers, network %v", len(o.Containers), o.Network)
	}
}

// staleCountDocker answers NetworkRemove as dockerd 20.10 does when it keeps
// a stale endpoint count (moby/moby#42119): "active endpoints", with none
// attached. The fault cannot be caused at will, so the test plays it.
type staleCountDocker struct{ Docker }

func (staleCountDocker) NetworkRemove(_ context.Context, id string) error {
	return fmt.Errorf("Error response from daemon: error while removing network: network p_default id %s has active endpoints: %w", id, cerrdefs.ErrPermissionDenied)
}

// TestDownRemoveNetworkLeftovers: a network that cannot be removed because
// a container not of the project is attached fails down, naming that
// container and how to detach it; one that dockerd refuses with nothing
// attached (its stale count) is a warning, and down succeeds: the project's
// containers are gone either way.
func TestDownRemoveNetworkLeftovers(t *testing.T) {
	s := newStack(t)
	s.up()
	ctx := context.Background()
	netName := s.observe().Network.Name

	// A container someone attached by hand.
	c, err := s.cli.ContainerCreate(ctx, &container.Config{Image: imageV1, Cmd: []string{"scheduler"}}, nil,
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{netName: {}}}, nil, s.d.Project.Name+"-by-hand")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cli.ContainerRemove(context.Background(), c.ID, container.RemoveOptions{Force: true}) })
	if err := s.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	err = s.e.Down(ctx, s.d.Project.Name, true)
	if err == nil || !strings.Contains(err.Error(), s.d.Project.Name+"-by-hand") || !strings.Contains(err.Error(), "docker network disconnect "+netName) {
		t.Fatalf("Down(remove) with a foreign container attached = %v, want an error naming it and the disconnect", err)
	}
	if o := s.observe(); len(o.Containers) != 0 {
		t.Errorf("the project's containers must be gone even so: %d left", len(o.Containers))
	}
	if err := s.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true}); err != nil {
		t.Fatal(err)
	}

	// dockerd's stale count: the network stays, down succeeds and says why.
	s.up()
	logs := &syncBuffer{}
	stale := &Engine{Docker: staleCountDocker{s.cli}, LockDir: s.lockDir, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	if err := stale.Down(ctx, s.d.Project.Name, true); err != nil {
		t.Fatalf("Down(remove) with a stale endpoint count = %v, want success with a warning", err)
	}
	o := s.observe()
	if len(o.Containers) != 0 || o.Network == nil {
		t.Errorf("after Down(remove): %d containers, network %v; want none, and the network left in place", len(o.Containers), o.Network)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "moby/moby#42119") || !strings.Contains(logs.String(), netName) {
		t.Errorf("no warning naming the network and the dockerd bug:\n%s", logs)
	}
	// The next up reuses the network; the stack's cleanup removes it.
	s.up()
	s.assertConverged()
}

func BenchmarkNoopUp(b *testing.B) {
	s := newStack(b)
	s.up()
	ctx := context.Background()
	for b.Loop() {
		p, err := converge(ctx, s.e, s.d)
		if err != nil || p.Mutations() != 0 {
			b.Fatalf("no-op Up: %v\n%s", err, p)
		}
	}
	if per := b.Elapsed() / time.Duration(b.N); per > 150*time.Millisecond {
		b.Logf("no-op Up took %s per call, above the 150ms target", per)
	}
}
