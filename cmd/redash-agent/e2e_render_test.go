package main

// End-to-end tests of the render path: the built binary against a real
// ec2-metadata-mock (IMDSv2 only) and a real moto_server, with the endpoints
// given only through the AWS SDK's standard environment variables.

import (
	"bytes"
	"flag"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// seedSecrets are the four secrets of the seed, with values chosen to break
// naive quoting and URL building.
var seedSecrets = map[string]string{
	"Redash/RDS/User":     "redash_admin",
	"Redash/RDS/Password": `p@ss:w/rd?#%"$HOME\n 'x'`,
	"Redash/CookieSecret": "cookie-secret-9f8e7d6c5b4a",
	"Redash/SecretKey":    "secret-key-0a1b2c3d4e5f ",
}

// seedTags are the instance tags (ec2-metadata-mock serves two); the
// endpoints come from config.yaml, as a baked AMI might carry them.
var seedTags = map[string]string{
	"redash:version":        "10.1.0.b50633",
	"redash:secrets-prefix": "Redash/",
}

const seedConfigYAML = `# endpoints baked into the AMI; tags carry the rest
db-endpoint: aurora.cluster-abc.us-east-1.rds.amazonaws.com:5432
redis-endpoint: redash.abc123.ng.0001.use1.cache.amazonaws.com:6379
version: 8.0.0.b32245 # overridden by the tag
`

// fixture is one set of real peers plus a place to write.
type fixture struct {
	t    *testing.T
	imds string
	moto *testenv.Moto
	dir  string
	// config is the config.yaml the binary reads.
	config string
	// outputs collects everything the binary printed, for the leak scan.
	outputs *bytes.Buffer
}

func newFixture(t *testing.T, tags map[string]string) *fixture {
	t.Helper()
	root := t.TempDir()
	f := &fixture{t: t, dir: filepath.Join(root, "redash"), config: filepath.Join(root, "config.yaml"), outputs: &bytes.Buffer{}}
	if err := os.WriteFile(f.config, []byte(seedConfigYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	f.imds = testenv.StartIMDSMock(t, tags).Endpoint
	f.moto = testenv.StartMoto(t)
	for name, v := range seedSecrets {
		f.moto.Put(t, name, v)
	}
	return f
}

// run executes the binary with only the standard AWS endpoint settings.
func (f *fixture) run(args ...string) (stdout, stderr string, code int) {
	f.t.Helper()
	cmd := exec.Command(agentBinary(f.t), append([]string{"--dir", f.dir, "--state-dir", filepath.Join(filepath.Dir(f.dir), "state"), "--config", f.config}, args...)...)
	cmd.Env = cleanEnv(
		"AWS_EC2_METADATA_SERVICE_ENDPOINT="+f.imds,
		"AWS_ENDPOINT_URL_SECRETS_MANAGER="+f.moto.Endpoint,
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := runAgent(f.t, cmd)
	code = exitCodeOf(err)
	if code < 0 {
		f.t.Fatalf("running redash-agent %s: %v", strings.Join(args, " "), err)
	}
	f.outputs.WriteString(out.String())
	f.outputs.WriteString(errb.String())
	return out.String(), errb.String(), code
}

// cleanEnv is the process environment without any AWS setting that could
// reach a real account, plus extra.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AWS_") {
			continue
		}
		env = append(env, kv)
	}
	// Shared config files could name a real profile; credentials must come
	// from the mock IMDS, as on EC2.
	env = append(env, "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_CONFIG_FILE=/nonexistent")
	return append(env, extra...)
}

var builtBinary string

// agentBinary builds the agent once per test process.
func agentBinary(t testing.TB) string {
	t.Helper()
	if builtBinary != "" {
		return builtBinary
	}
	dir, err := os.MkdirTemp("", "redash-agent-bin-")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "redash-agent")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	builtBinary = bin
	return bin
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if builtBinary != "" {
		os.RemoveAll(filepath.Dir(builtBinary))
	}
	os.Exit(code)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden %s (run with -update to create it): %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from its golden file (run `go test ./cmd/redash-agent -run %s -update` after checking the change)\n--- got\n%s\n--- want\n%s", name, t.Name(), got, want)
	}
}

func TestRenderEndToEnd(t *testing.T) {
	f := newFixture(t, seedTags)
	stdout, stderr, code := f.run("render")
	if code != 0 {
		t.Fatalf("render exited %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	env := mustRead(t, filepath.Join(f.dir, "env"))
	composeFile := mustRead(t, filepath.Join(f.dir, "docker-compose.yml"))
	golden(t, "e2e-env.golden", env)
	golden(t, "e2e-docker-compose.yml.golden", composeFile)
	wantMode(t, filepath.Join(f.dir, "env"), 0o600)
	wantMode(t, filepath.Join(f.dir, "docker-compose.yml"), 0o644)

	// Debian's docker-compose 1.29 is an independent checker of the file.
	dc := testenv.RequireTool(t, "docker-compose", "apt-get install docker-compose")
	if out, err := exec.Command(dc, "-f", filepath.Join(f.dir, "docker-compose.yml"), "config", "-q").CombinedOutput(); err != nil {
		t.Errorf("docker-compose config -q rejected the compose file: %v\n%s", err, out)
	}

	// A second render changes nothing and says so.
	st, _ := os.Stat(filepath.Join(f.dir, "env"))
	stdout, _, code = f.run("render")
	if code != 0 || !strings.Contains(stdout, "unchanged") {
		t.Errorf("second render: code %d, stdout %q", code, stdout)
	}
	if st2, _ := os.Stat(filepath.Join(f.dir, "env")); !st2.ModTime().Equal(st.ModTime()) {
		t.Error("unchanged env file was rewritten")
	}

	// --dry-run prints both files, redacted, and writes nothing.
	os.RemoveAll(f.dir)
	stdout, stderr, code = f.run("render", "--dry-run")
	if code != 0 {
		t.Fatalf("render --dry-run exited %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, `REDASH_SECRET_KEY="[redacted]"`) || !strings.Contains(stdout, "services:") {
		t.Errorf("dry run output lacks the redacted env file or the compose file:\n%s", stdout)
	}
	if _, err := os.Stat(f.dir); err == nil {
		t.Error("--dry-run created the directory")
	}

	// `config` shows ids and sources, never values.
	stdout, _, code = f.run("config")
	if code != 0 || !strings.Contains(stdout, "Redash/RDS/Password") || !strings.Contains(stdout, "tag") {
		t.Errorf("config: code %d\n%s", code, stdout)
	}
	stdout, _, code = f.run("config", "--json")
	if code != 0 || !strings.Contains(stdout, `"source": "tag"`) {
		t.Errorf("config --json: code %d\n%s", code, stdout)
	}

	assertNoSecrets(t, f.outputs.Bytes(), "the binary's output")
	assertNoSecrets(t, composeFile, "docker-compose.yml")
}

// assertNoSecrets fails when any seed secret value (or its URL-encoded
// form) occurs in b. The DB user name is a secret too in the seed.
func assertNoSecrets(t *testing.T, b []byte, what string) {
	t.Helper()
	for name, v := range seedSecrets {
		for _, form := range []string{strings.TrimSpace(v), escapeForTest(v)} {
			if len(form) >= 6 && bytes.Contains(b, []byte(form)) {
				t.Errorf("%s contains the value of secret %s", what, name)
			}
		}
	}
}

func escapeForTest(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

func TestRenderFailuresKeepOldFiles(t *testing.T) {
	f := newFixture(t, seedTags)
	if _, stderr, code := f.run("render"); code != 0 {
		t.Fatalf("initial render failed: %s", stderr)
	}
	oldEnv := mustRead(t, filepath.Join(f.dir, "env"))

	noTags := tagsDisabledIMDS(t)

	// A port where nothing listens: IMDS never answers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := "http://" + l.Addr().String()
	l.Close()

	cases := []struct {
		name     string
		imds     string
		args     []string
		setup    func()
		wantCode int
		want     []string
	}{
		{
			name: "tags not enabled", imds: noTags, args: []string{"--imds-deadline", "2s"},
			wantCode: exitConfigErr, want: []string{"InstanceMetadataTags", "enabled"},
		},
		{
			name: "imds not answering", imds: deadAddr, args: []string{"--imds-deadline", "2s"},
			wantCode: exitFailure, want: []string{deadAddr},
		},
		{
			name: "missing secret", args: []string{"--set", "secret:secret-key=Redash/DoesNotExist"},
			wantCode: exitConfigErr, want: []string{"Redash/DoesNotExist", "secret-key", "not found"},
		},
		{
			name: "missing json key", args: []string{"--set", "secret:db-password=Redash/Json#password"},
			setup:    func() { f.moto.Put(t, "Redash/Json", `{"pass":"json-secret-value"}`) },
			wantCode: exitConfigErr, want: []string{"Redash/Json", `"password"`},
		},
		{
			name: "bad tag via flag", args: []string{"--set", "role=database"},
			wantCode: exitConfigErr, want: []string{"redash:role", "database"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			saved := f.imds
			if tc.imds != "" {
				f.imds = tc.imds
			}
			defer func() { f.imds = saved }()
			start := time.Now()
			_, stderr, code := f.run(append([]string{"render"}, tc.args...)...)
			if code != tc.wantCode {
				t.Errorf("exit code %d, want %d\nstderr: %s", code, tc.wantCode, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "json-secret-value") {
				t.Error("stderr leaks a secret value")
			}
			if took := time.Since(start); took > 30*time.Second {
				t.Errorf("took %v; the deadline was 2s", took)
			}
			if got := mustRead(t, filepath.Join(f.dir, "env")); !bytes.Equal(got, oldEnv) {
				t.Error("the previous env file was changed by a failed render")
			}
		})
	}
	assertNoSecrets(t, f.outputs.Bytes(), "the binary's output")
}

// tagsDisabledIMDS answers the token, instance id and region, and 404 on
// everything else: an instance whose metadata tags are not enabled.
func tagsDisabledIMDS(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
			// Like IMDS, the answer says how long the token lives.
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			w.Write([]byte("token"))
		case r.URL.Path == "/latest/meta-data/instance-id":
			w.Write([]byte("i-0123456789abcdef0"))
		case r.URL.Path == "/latest/meta-data/placement/region":
			w.Write([]byte("us-east-1"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestUnconfiguredWithoutTagsExitsQuickly: no config file settings and
// metadata tags disabled (an Image Builder instance) is "not configured",
// after a short grace, not a 2-minute wait and a failed unit.
func TestUnconfiguredWithoutTagsExitsQuickly(t *testing.T) {
	f := newFixture(t, map[string]string{"Name": "imagebuilder-test"})
	// A config file without settings: --config must name a file that
	// exists, and an empty one configures nothing, like the shipped one.
	if err := os.WriteFile(f.config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.imds = tagsDisabledIMDS(t)
	start := time.Now()
	_, stderr, code := f.run("render") // --imds-deadline stays at its 2m default
	if code != 0 || !strings.Contains(stderr, "no redash: tags") || !strings.Contains(stderr, "InstanceMetadataTags") {
		t.Errorf("code %d, stderr %s", code, stderr)
	}
	if took := time.Since(start); took > 40*time.Second {
		t.Errorf("took %v; an unconfigured instance must not wait the whole IMDS deadline", took)
	}
	if _, err := os.Stat(f.dir); err == nil {
		t.Error("an unconfigured instance got files written")
	}
}

func TestNoRedashTagsExitsCleanly(t *testing.T) {
	f := newFixture(t, map[string]string{"Name": "imagebuilder-build"})
	// A config file without settings: --config must name a file that
	// exists, and an empty one configures nothing, like the shipped one.
	if err := os.WriteFile(f.config, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := f.run("render")
	if code != 0 || !strings.Contains(stderr, "no redash: tags") {
		t.Errorf("code %d, stderr %s", code, stderr)
	}
	if _, err := os.Stat(f.dir); err == nil {
		t.Error("an unconfigured instance got files written")
	}
}

func TestUsageErrorExitsTwo(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"render", "--no-such-flag"}, &out, &errb); code != exitUsage {
		t.Errorf("unknown flag: exit %d, want %d (%s)", code, exitUsage, errb.String())
	}
	if code := Main([]string{"no-such-command"}, &out, &errb); code != exitUsage {
		t.Errorf("unknown command: exit %d, want %d", code, exitUsage)
	}
	if code := Main([]string{"version"}, &out, &errb); code != exitOK || !strings.Contains(out.String(), "redash-agent") {
		t.Errorf("version: exit %d, out %q", code, out.String())
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wantMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s mode = %v, want %v", path, st.Mode().Perm(), want)
	}
}
