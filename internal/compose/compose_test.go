package compose

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const (
	celeryVersion = "8.0.0.b32245"
	rqVersion     = "10.1.0.b50633"
)

func spec(version, role string) Spec {
	return Spec{
		Project: "redash",
		Dir:     "/opt/redash",
		Version: version,
		Role:    role,
		Nginx:   true,
	}
}

// goldenCases are the artifacts under testdata/: every layout × role, plus
// the variants that change the file's shape.
func goldenCases() []struct {
	name string
	spec Spec
} {
	withLocal := spec(rqVersion, RoleAll)
	withLocal.Local = true
	withLocal.Nginx = false
	withLocal.ServerPort = 8080

	withLogs := spec(rqVersion, RoleAll)
	withLogs.LogGroup = "/redash/prod"
	withLogs.Region = "eu-west-1"

	withWorkers := spec(rqVersion, RoleWorker)
	withWorkers.Workers = map[string]int{"adhoc_worker": 6, "worker": 3}
	withWorkers.Image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/redash:10.1.0.b50633"

	celeryWorkers := spec(celeryVersion, RoleAll)
	celeryWorkers.Workers = map[string]int{"scheduler": 2, "scheduled_worker": 4}
	celeryWorkers.WebWorkers = 8
	celeryWorkers.NginxPort = 8081

	return []struct {
		name string
		spec Spec
	}{
		{"celery-all", spec(celeryVersion, RoleAll)},
		{"celery-web", spec(celeryVersion, RoleWeb)},
		{"celery-worker", spec(celeryVersion, RoleWorker)},
		{"rq-all", spec(rqVersion, RoleAll)},
		{"rq-web", spec(rqVersion, RoleWeb)},
		{"rq-worker", spec(rqVersion, RoleWorker)},
		{"rq-all-25", spec("25.8.0", RoleAll)},
		{"rq-local", withLocal},
		{"rq-awslogs", withLogs},
		{"rq-worker-overrides", withWorkers},
		{"celery-overrides", celeryWorkers},
	}
}

func render(t *testing.T, s Spec) (*types.Project, []byte) {
	t.Helper()
	p, err := Project(s)
	if err != nil {
		t.Fatalf("Project: %v", err)
	}
	out, err := Marshal(p)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	return p, out
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			_, got := render(t, tc.spec)
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("reading golden (run `go test ./internal/compose -update` to create it): %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the golden (rerun with -update if intended):\n--- got\n%s\n--- want\n%s", path, got, want)
			}
		})
	}
}

// TestRoundTrip: what the agent converges (Project) and what anyone loading
// the written file gets (Load) must be the same project, field for field.
func TestRoundTrip(t *testing.T) {
	cases := goldenCases()
	dollar := spec(rqVersion, RoleAll)
	dollar.LogGroup = "/redash/$prod/${HOME}/$$x"
	dollar.Region = "us-east-1"
	dollar.Image = "registry.local/redash:10.1.0.b50633"
	cases = append(cases, struct {
		name string
		spec Spec
	}{"dollar", dollar})
	otherProject := spec(rqVersion, RoleWeb)
	otherProject.Project = "analytics-2"
	otherProject.Dir = "/srv/somewhere"
	cases = append(cases, struct {
		name string
		spec Spec
	}{"project name not the dir", otherProject})

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want, out := render(t, tc.spec)
			got, err := Load(context.Background(), tc.spec.Dir, out)
			if err != nil {
				t.Fatalf("Load: %v\n%s", err, out)
			}
			if !reflect.DeepEqual(got, want) {
				gj, _ := json.MarshalIndent(got, "", " ")
				wj, _ := json.MarshalIndent(want, "", " ")
				t.Errorf("loaded project differs from the built one:\n--- loaded\n%s\n--- built\n%s", gj, wj)
			}
			again, err := Marshal(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, out) {
				t.Errorf("re-marshalled file differs:\n%s\n---\n%s", again, out)
			}
		})
	}
}

func TestDollarSurvives(t *testing.T) {
	s := spec(rqVersion, RoleAll)
	s.LogGroup = "/redash/$prod/${HOME}"
	s.Region = "us-east-1"
	p, out := render(t, s)
	if !bytes.Contains(out, []byte("awslogs-group: /redash/$$prod/$${HOME}")) {
		t.Errorf("written file does not escape $ as $$:\n%s", out)
	}

	// A custom value set by hand on the project (the path a future
	// `environment` knob would take) survives too.
	srv := p.Services[ServerService]
	srv.Environment["EXTRA"] = ptr("a$b $$ ${c}")
	p.Services[ServerService] = srv
	out, err := Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("EXTRA: a$$b $$$$ $${c}")) {
		t.Errorf("environment value not escaped:\n%s", out)
	}
	got, err := Load(context.Background(), s.Dir, out)
	if err != nil {
		t.Fatal(err)
	}
	if v := got.Services[ServerService].Environment["EXTRA"]; v == nil || *v != "a$b $$ ${c}" {
		t.Errorf("EXTRA after round trip = %v, want %q", v, "a$b $$ ${c}")
	}
	if g := got.Services["worker"].Logging.Options["awslogs-group"]; g != "/redash/$prod/${HOME}" {
		t.Errorf("awslogs-group after round trip = %q", g)
	}
}

// TestNoSecretInProject: the project never receives a secret, so the proof
// is structural: every Redash service reads the env file and `environment`
// holds only the layout's known, non-secret keys.
func TestNoSecretInProject(t *testing.T) {
	for _, tc := range goldenCases() {
		t.Run(tc.name, func(t *testing.T) {
			p, out := render(t, tc.spec)
			for name, svc := range p.Services {
				for k := range svc.Environment {
					if !slices.Contains(NonSecretEnv, k) {
						t.Errorf("service %q has environment key %q outside %v", name, k, NonSecretEnv)
					}
				}
				if len(svc.Labels) > 0 {
					t.Errorf("service %q has labels %v (the engine owns labels)", name, svc.Labels)
				}
				redash := name != NginxService && name != PostgresService && name != RedisService
				if redash && !reflect.DeepEqual(svc.EnvFiles, []types.EnvFile{{Path: "./env", Required: true}}) {
					t.Errorf("Redash service %q env_file = %+v, want ./env", name, svc.EnvFiles)
				}
				if name == RedisService && len(svc.EnvFiles) > 0 {
					t.Errorf("redis reads the env file; it needs nothing from it")
				}
			}
			for _, word := range []string{"PASSWORD", "SECRET_KEY", "COOKIE_SECRET", "DATABASE_URL", "REDIS_URL", "://"} {
				if bytes.Contains(bytes.ToUpper(out), []byte(strings.ToUpper(word))) {
					t.Errorf("compose file mentions %q:\n%s", word, out)
				}
			}
		})
	}
}

func TestServices(t *testing.T) {
	cases := []struct {
		name string
		spec func() Spec
		want []string
	}{
		{"celery all", func() Spec { return spec(celeryVersion, RoleAll) }, []string{"adhoc_worker", "nginx", "scheduled_worker", "scheduler", "server"}},
		{"celery web without nginx", func() Spec { s := spec(celeryVersion, RoleWeb); s.Nginx = false; return s }, []string{"server"}},
		{"celery worker", func() Spec { return spec(celeryVersion, RoleWorker) }, []string{"adhoc_worker", "scheduled_worker", "scheduler"}},
		{"rq all", func() Spec { return spec(rqVersion, RoleAll) }, []string{"adhoc_worker", "nginx", "scheduled_worker", "scheduler", "server", "worker"}},
		{"rq empty role is all", func() Spec { return spec(rqVersion, "") }, []string{"adhoc_worker", "nginx", "scheduled_worker", "scheduler", "server", "worker"}},
		{"rq web", func() Spec { return spec(rqVersion, RoleWeb) }, []string{"nginx", "server"}},
		{"rq worker ignores nginx", func() Spec { return spec(rqVersion, RoleWorker) }, []string{"adhoc_worker", "scheduled_worker", "scheduler", "worker"}},
		{"rq worker local", func() Spec { s := spec(rqVersion, RoleWorker); s.Local = true; return s }, []string{"adhoc_worker", "postgres", "redis", "scheduled_worker", "scheduler", "worker"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Project(tc.spec())
			if err != nil {
				t.Fatal(err)
			}
			if got := p.ServiceNames(); !slices.Equal(got, tc.want) {
				t.Errorf("services = %v, want %v", got, tc.want)
			}
			for name, svc := range p.Services {
				if svc.Restart != types.RestartPolicyOnFailure {
					t.Errorf("service %q restart = %q, want on-failure", name, svc.Restart)
				}
				if svc.Image == "" {
					t.Errorf("service %q has no image", name)
				}
			}
		})
	}
}

func TestEnvironment(t *testing.T) {
	env := func(p *types.Project, svc string) map[string]string {
		out := map[string]string{}
		for k, v := range p.Services[svc].Environment {
			out[k] = *v
		}
		return out
	}
	overrides := spec(rqVersion, RoleAll)
	overrides.Workers = map[string]int{"scheduled_worker": 5}
	overrides.WebWorkers = 9
	cases := []struct {
		name    string
		spec    Spec
		service string
		want    map[string]string
	}{
		{"celery server", spec(celeryVersion, RoleAll), "server", map[string]string{"REDASH_WEB_WORKERS": "4"}},
		{"celery scheduler", spec(celeryVersion, RoleAll), "scheduler", map[string]string{"QUEUES": "celery", "WORKERS_COUNT": "1"}},
		{"celery scheduled", spec(celeryVersion, RoleAll), "scheduled_worker", map[string]string{"QUEUES": "scheduled_queries,schemas", "WORKERS_COUNT": "1"}},
		{"celery adhoc", spec(celeryVersion, RoleAll), "adhoc_worker", map[string]string{"QUEUES": "queries", "WORKERS_COUNT": "2"}},
		{"rq scheduler has none", spec(rqVersion, RoleAll), "scheduler", map[string]string{}},
		{"rq scheduled", spec(rqVersion, RoleAll), "scheduled_worker", map[string]string{"QUEUES": "scheduled_queries schemas", "WORKERS_COUNT": "1"}},
		{"rq adhoc", spec(rqVersion, RoleAll), "adhoc_worker", map[string]string{"QUEUES": "queries", "WORKERS_COUNT": "2"}},
		{"rq worker", spec(rqVersion, RoleAll), "worker", map[string]string{"QUEUES": "periodic emails default", "WORKERS_COUNT": "1"}},
		{"override worker count", overrides, "scheduled_worker", map[string]string{"QUEUES": "scheduled_queries schemas", "WORKERS_COUNT": "5"}},
		{"override web workers", overrides, "server", map[string]string{"REDASH_WEB_WORKERS": "9"}},
		{"nginx has none", spec(rqVersion, RoleAll), "nginx", map[string]string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Project(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if got := env(p, tc.service); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("environment of %q = %v, want %v", tc.service, got, tc.want)
			}
		})
	}
}

func TestServerReachableAsRedash(t *testing.T) {
	p, err := Project(spec(rqVersion, RoleWeb))
	if err != nil {
		t.Fatal(err)
	}
	srv := p.Services[ServerService]
	if n := srv.Networks[DefaultNetwork]; n == nil || !slices.Equal(n.Aliases, []string{"redash"}) {
		t.Errorf("server networks = %+v, want alias redash on default", srv.Networks)
	}
	if len(srv.Links) > 0 || len(p.Services[NginxService].Links) > 0 {
		t.Error("links are set; the alias replaces them")
	}
	if got := p.Services[NginxService].Ports; len(got) != 1 || got[0].Published != "80" || got[0].Target != 80 {
		t.Errorf("nginx ports = %+v", got)
	}
	if got := srv.Ports; len(got) != 1 || got[0].Published != "5000" || got[0].Target != 5000 {
		t.Errorf("server ports = %+v", got)
	}
}

func TestLayoutFor(t *testing.T) {
	cases := []struct {
		version string
		want    Layout
		wantErr bool
	}{
		{"8.0.0.b32245", Celery, false},
		{"7.0.0.b18042", Celery, false},
		{"9.0.0-beta.b42121", RQ, false},
		{"10.0.0.b50363", RQ, false},
		{"10.1.0.b50633", RQ, false},
		{"25.8.0", RQ, false},
		{"v10.1.0", RQ, false},
		{"latest", 0, true},
		{"preview", 0, true},
		{"", 0, true},
		{"010.1", 0, true},
		{"-1.0", 0, true},
	}
	for _, tc := range cases {
		t.Run(tc.version, func(t *testing.T) {
			got, err := LayoutFor(tc.version)
			if (err != nil) != tc.wantErr {
				t.Fatalf("LayoutFor(%q) error = %v, want error %v", tc.version, err, tc.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "10.1.0.b50633") {
				t.Errorf("error does not say what to use: %v", err)
			}
			if got != tc.want {
				t.Errorf("LayoutFor(%q) = %v, want %v", tc.version, got, tc.want)
			}
		})
	}
}

func TestWorkerServices(t *testing.T) {
	if got, want := WorkerServices(Celery), []string{"scheduler", "scheduled_worker", "adhoc_worker"}; !slices.Equal(got, want) {
		t.Errorf("celery = %v, want %v", got, want)
	}
	if got, want := WorkerServices(RQ), []string{"scheduled_worker", "adhoc_worker", "worker"}; !slices.Equal(got, want) {
		t.Errorf("rq = %v, want %v", got, want)
	}
}

func TestProjectErrors(t *testing.T) {
	cases := []struct {
		name string
		mod  func(*Spec)
		want []string // every fragment must appear in the one error
	}{
		{"bad version", func(s *Spec) { s.Version = "latest" }, []string{`"latest"`}},
		{"relative dir", func(s *Spec) { s.Dir = "redash" }, []string{`"redash"`, "absolute"}},
		// Role, worker counts and ports are validated once, in config, whose
		// TestValidation has the cases that used to be here.
		{"log group without region", func(s *Spec) { s.LogGroup = "g" }, []string{`"g"`, "region"}},
		{"every bad field at once", func(s *Spec) { s.Version = "x"; s.Dir = ""; s.LogGroup = "g" }, []string{`"x"`, "absolute", "region"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := spec(rqVersion, RoleAll)
			tc.mod(&s)
			_, err := Project(s)
			if err == nil {
				t.Fatal("Project succeeded, want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestLoadRejects(t *testing.T) {
	cases := []struct{ name, yaml string }{
		{"not yaml", "services: [\n"},
		{"unknown field", "services:\n  server:\n    image: x\n    bogus: 1\n"},
		{"unset variable is not silently empty", "services:\n  server:\n    image: ${IMAGE:?set IMAGE}\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Load(context.Background(), "/opt/redash", []byte(tc.yaml)); err == nil {
				t.Errorf("Load accepted %q", tc.yaml)
			}
		})
	}
}

// TestDockerCompose129 has Debian's docker-compose 1.29, an independent
// reader, validate every golden beside an env file.
func TestDockerCompose129(t *testing.T) {
	bin := testenv.RequireTool(t, "docker-compose", "apt-get install docker-compose")
	cases := goldenCases()
	// Not a golden (CloudWatch group names cannot hold `$`), but it proves
	// 1.29 reads `$$` as a literal instead of interpolating a variable.
	dollar := spec(rqVersion, RoleAll)
	dollar.LogGroup = "/redash/$prod/${HOME}"
	dollar.Region = "us-east-1"
	cases = append(cases, struct {
		name string
		spec Spec
	}{"dollar", dollar})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, out := render(t, tc.spec)
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, EnvFileName), []byte("REDASH_SECRET_KEY=\"x\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			file := filepath.Join(dir, FileName)
			if err := os.WriteFile(file, out, 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "-f", file, "config", "-q")
			cmd.Dir = dir
			msg, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("docker-compose 1.29 rejects %s: %v\n%s\n%s", tc.name, err, msg, out)
			}
			if bytes.Contains(msg, []byte("is not set")) {
				t.Errorf("docker-compose 1.29 interpolated a variable in %s:\n%s", tc.name, msg)
			}
		})
	}
}

// TestFamilyFacts pins the per-release facts read in Redash's source; a
// change here must come with the source line that says so.
func TestFamilyFacts(t *testing.T) {
	for _, tc := range []struct {
		version                       string
		layout                        Layout
		decodes, broker, cookie, csrf bool
		healthcheck                   string
		single, multiArch, ipv6       bool
	}{
		{"8.0.0.b32245", Celery, false, true, false, false, "celery_healthcheck", true, false, false},
		{"9.0.0-beta.b42121", RQ, false, false, false, false, "", false, false, false},
		{"10.1.0.b50633", RQ, false, false, true, true, "", false, false, false},
		{"25.1.0", RQ, true, false, true, true, "workers_healthcheck", false, true, false},
		{"25.8.0", RQ, true, false, true, true, "workers_healthcheck", false, true, false},
		{"26.02.0-dev", RQ, true, false, true, true, "workers_healthcheck", false, true, true},
		{"26.3.0", RQ, true, false, true, true, "workers_healthcheck", false, true, true},
	} {
		f, err := FamilyFor(tc.version)
		if err != nil {
			t.Fatalf("FamilyFor(%q): %v", tc.version, err)
		}
		got := []any{f.Layout(), f.RedisDecodesPassword(), f.HasCeleryBroker(), f.RequiresCookieSecret(), f.EnforcesCSRF(), f.WorkerHealthcheck(), f.SingleScheduler(), f.MultiArch(), f.BindsIPv6()}
		want := []any{tc.layout, tc.decodes, tc.broker, tc.cookie, tc.csrf, tc.healthcheck, tc.single, tc.multiArch, tc.ipv6}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: fact %d = %v, want %v (all: %v)", tc.version, i, got[i], want[i], got)
			}
		}
	}
	if _, err := FamilyFor("latest"); err == nil {
		t.Error(`FamilyFor("latest") succeeded; want an error naming a release tag`)
	}
}
