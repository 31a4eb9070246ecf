package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"

	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/imds"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// These tests run the pipeline's reading half (resolve, fetch, render) with
// fakes for IMDS and Secrets Manager: no Docker, IMDS mock, moto or
// PostgreSQL. The fakes stand in only for the network; the real
// secrets.Fetcher maps their answers to errors, as in production.

// fakeIMDS answers Instance with a fixed instance or error and records the
// options the agent built the client with.
type fakeIMDS struct {
	inst imds.Instance
	err  error

	// lateTags, when set, are the tags every call after the first
	// lateAfter answers: an instance tagged after it booted.
	lateTags  map[string]string
	lateAfter int

	// answerTakes, when set, is how long IMDS takes to answer the tag
	// listing: a read whose TagsDeadline is shorter ends on that deadline,
	// as the imds package's does, not with IMDS's answer.
	answerTakes time.Duration

	mu    sync.Mutex
	calls int
	opts  imds.Options
}

func (f *fakeIMDS) Instance(context.Context) (imds.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.answerTakes > 0 && f.opts.TagsDeadline > 0 && f.opts.TagsDeadline < f.answerTakes {
		return imds.Instance{}, fmt.Errorf("listing the tags of instance %q: reading /latest/meta-data/tags/instance: gave up after 1 attempt(s) in %s: %w",
			f.inst.InstanceID, f.opts.TagsDeadline, context.DeadlineExceeded)
	}
	if f.lateTags != nil && f.calls > f.lateAfter {
		inst := f.inst
		inst.Tags = f.lateTags
		return inst, nil
	}
	return f.inst, f.err
}

// fakeSM is Secrets Manager's GetSecretValue over a map of secret id to
// value; an unknown id is ResourceNotFoundException, and fail (when set)
// answers every call, as a network that keeps failing would.
type fakeSM struct {
	values map[string]string
	fail   error
}

func (f *fakeSM) GetSecretValue(_ context.Context, in *secretsmanager.GetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	id := aws.ToString(in.SecretId)
	v, ok := f.values[id]
	if !ok {
		return nil, &types.ResourceNotFoundException{Message: aws.String("Secrets Manager can't find the specified secret.")}
	}
	return &secretsmanager.GetSecretValueOutput{Name: in.SecretId, SecretString: aws.String(v), VersionId: aws.String("v-" + id)}, nil
}

// BatchGetSecretValue answers every id as GetSecretValue would, in one call.
func (f *fakeSM) BatchGetSecretValue(ctx context.Context, in *secretsmanager.BatchGetSecretValueInput, _ ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error) {
	if f.fail != nil {
		return nil, f.fail
	}
	out := &secretsmanager.BatchGetSecretValueOutput{}
	for _, id := range in.SecretIdList {
		v, ok := f.values[id]
		if !ok {
			out.Errors = append(out.Errors, types.APIErrorType{SecretId: aws.String(id), ErrorCode: aws.String("ResourceNotFoundException"), Message: aws.String("Secrets Manager can't find the specified secret.")})
			continue
		}
		out.SecretValues = append(out.SecretValues, types.SecretValueEntry{Name: aws.String(id), SecretString: aws.String(v), VersionId: aws.String("v-" + id)})
	}
	return out, nil
}

var _ secrets.API = (*fakeSM)(nil)

// Secret values of the fake; long enough that a leak is unmistakable.
const (
	dbPassword   = "Pw-Unit-Test-7f3c9a"
	cookieSecret = "Cookie-Unit-Test-2b8e1d"
	secretKey    = "Key-Unit-Test-5d0a4c"
)

func seedSecrets() map[string]string {
	return map[string]string{
		"Redash/RDS/User":     "redash",
		"Redash/RDS/Password": dbPassword,
		"Redash/CookieSecret": cookieSecret,
		"Redash/SecretKey":    secretKey,
	}
}

// redashTags are an instance's tags that configure Redash completely.
func redashTags() map[string]string {
	return map[string]string{
		"Name":                  "redash-web",
		"redash:db-endpoint":    "db.example.internal:5432",
		"redash:redis-endpoint": "cache.example.internal:6379",
	}
}

// harness is an agent over fakes, with its log captured.
type harness struct {
	*Agent
	imds *fakeIMDS
	sm   *fakeSM
	logs *bytes.Buffer
	// region and budget the agent asked the Secrets Manager client for.
	smRegion string
	smPolicy secrets.Policy
}

type setup struct {
	tags    map[string]string // nil: the instance has no tags at all
	imdsErr error
	region  string // IMDS region; "" = us-east-1, "-" = none
	config  string // config.yaml content; "" = no file
	set     map[string]string
	sm      *fakeSM // nil = the seed's four secrets
	// imdsAnswerTakes: how long IMDS takes to answer the tag listing.
	imdsAnswerTakes time.Duration
}

func newHarness(t *testing.T, s setup) *harness {
	t.Helper()
	// The region comes from IMDS unless AWS_REGION is set; the tests that
	// want it set say so.
	t.Setenv("AWS_REGION", "")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if s.config != "" {
		if err := os.WriteFile(cfgPath, []byte(s.config), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	region := s.region
	switch region {
	case "":
		region = "us-east-1"
	case "-":
		region = ""
	}
	tags := s.tags
	if tags == nil {
		tags = map[string]string{}
	}
	h := &harness{
		imds: &fakeIMDS{inst: imds.Instance{InstanceID: "i-0123456789abcdef0", Region: region, Tags: tags}, err: s.imdsErr, answerTakes: s.imdsAnswerTakes},
		sm:   s.sm,
		logs: &bytes.Buffer{},
	}
	if h.sm == nil {
		h.sm = &fakeSM{values: seedSecrets()}
	}
	h.Agent = newAgent(Options{
		Dir:          filepath.Join(dir, "opt-redash"),
		StateDir:     filepath.Join(dir, "state"),
		ConfigFile:   cfgPath,
		Set:          s.set,
		IMDSDeadline: 2 * time.Minute,
		Logger:       slog.New(slog.NewTextHandler(h.logs, nil)),
	}, remotes{
		imds: func(o imds.Options) instanceReader {
			h.imds.mu.Lock()
			h.imds.opts = o
			h.imds.mu.Unlock()
			return h.imds
		},
		secrets: func(_ context.Context, region string, policy secrets.Policy, _ *slog.Logger) (secretStore, error) {
			h.smRegion, h.smPolicy = region, policy
			// Boot's budget shrunk: a failing fake is retried until it ends.
			return &secrets.Fetcher{API: h.sm, Region: region, Policy: secrets.Policy{Deadline: 300 * time.Millisecond, BackoffBase: 10 * time.Millisecond, BackoffMax: 50 * time.Millisecond}}, nil
		},
	})
	// The not-configured grace shrunk: the fakes answer at once.
	h.notConfiguredGrace, h.tagsPoll = testGrace, testGrace/5
	return h
}

// TestResolvePrecedence: defaults < config.yaml < instance tags < --set,
// each value with the layer it came from; the region from IMDS unless
// AWS_REGION is set.
func TestResolvePrecedence(t *testing.T) {
	tags := redashTags()
	tags["redash:version"] = "10.1.0.b50633"
	tags["redash:role"] = "worker"
	tags["redash:log-group"] = "from-tag"
	h := newHarness(t, setup{
		tags: tags,
		config: `version: 8.0.0.b32245
role: web
nginx: false
log-group: from-file
db-name: from_file
`,
		set: map[string]string{"role": "all", "log-group": "from-flag"},
	})
	res, err := h.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c := res.Config
	tests := []struct {
		key, got, want string
		src            config.Source
	}{
		{"project", c.Project, "redash", config.SourceDefault},
		{"nginx", fmt.Sprint(c.Nginx), "false", config.SourceFile},
		{"db-name", c.DBName, "from_file", config.SourceFile},
		{"version", c.Version, "10.1.0.b50633", config.SourceTag},
		{"db-endpoint", c.DBEndpoint, "db.example.internal:5432", config.SourceTag},
		{"role", c.Role, "all", config.SourceFlag},
		{"log-group", c.LogGroup, "from-flag", config.SourceFlag},
		{"region", c.Region, "us-east-1", config.SourceIMDS},
	}
	for _, tc := range tests {
		if tc.got != tc.want || c.Origins[tc.key] != tc.src {
			t.Errorf("%s = %q from %q, want %q from %q", tc.key, tc.got, c.Origins[tc.key], tc.want, tc.src)
		}
	}
	if res.Tags["Name"] != "redash-web" {
		t.Errorf("Resolved.Tags = %v, want the instance's tags", res.Tags)
	}
	// Settings in the config file: the tags get the whole IMDS deadline.
	if h.imds.opts.Deadline != 2*time.Minute || h.imds.opts.TagsDeadline != 0 {
		t.Errorf("IMDS options %+v, want the 2m deadline for the tags too", h.imds.opts)
	}

	t.Setenv("AWS_REGION", "eu-west-1")
	res, err = h.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Config.Region != "eu-west-1" || res.Config.Origins["region"] != config.SourceEnv {
		t.Errorf("region = %q from %q, want eu-west-1 from AWS_REGION", res.Config.Region, res.Config.Origins["region"])
	}
}

// errTagsOff is what imds returns when the tag listing stays 404.
var errTagsOff = fmt.Errorf("reading the tags of instance %q (404 for 15s): %w; enable them", "i-0123456789abcdef0", imds.ErrTagsNotEnabled)

// TestResolveNotConfigured: an instance with nothing to configure is "not
// configured" (exit 0, quickly), but one whose config file or flags say it
// should run Redash fails as a configuration error when its tags are missing.
func TestResolveNotConfigured(t *testing.T) {
	tests := []struct {
		name          string
		s             setup
		notConfigured bool
		status        int
		want          []string // substrings of the error
		// quick: the tag listing's 404 is retried only for the grace.
		quick bool
	}{
		{name: "no tags and no config file",
			s:             setup{tags: map[string]string{"Name": "imagebuilder-build"}},
			notConfigured: true, status: exitcode.OK, quick: true,
			want: []string{"no redash: tags", "tag the instance"}},
		{name: "tags not enabled and no config file",
			s:             setup{imdsErr: errTagsOff},
			notConfigured: true, status: exitcode.OK, quick: true,
			want: []string{"no redash: tags", "InstanceMetadataTags"}},
		{name: "tags not enabled, IMDS slow to answer (a loaded host)",
			// The last re-read, when the grace is all but spent, must
			// still hear the 404 (TestUnconfiguredWithoutTagsExitsQuickly
			// failed in CI with exit 1 on that).
			s:             setup{imdsErr: errTagsOff, imdsAnswerTakes: 20 * time.Millisecond},
			notConfigured: true, status: exitcode.OK, quick: true,
			want: []string{"no redash: tags", "InstanceMetadataTags"}},
		{name: "an empty config file is nothing local",
			s:             setup{config: "# all commented out\n", tags: map[string]string{}},
			notConfigured: true, status: exitcode.OK, quick: true},
		{name: "tags not enabled with a config file",
			s:      setup{imdsErr: errTagsOff, config: "db-endpoint: db:5432\nredis-endpoint: cache:6379\n"},
			status: exitcode.Config, want: []string{"reading instance tags from IMDS", "not enabled"}},
		{name: "tags not enabled with --set",
			s:      setup{imdsErr: errTagsOff, set: map[string]string{"role": "web"}},
			status: exitcode.Config, want: []string{"reading instance tags from IMDS"}},
		{name: "IMDS not answering is transient",
			s:      setup{imdsErr: errors.New("reading /latest/meta-data/instance-id: connection refused")},
			status: exitcode.Failure, quick: true, want: []string{"reading instance tags from IMDS", "connection refused"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.s)
			_, err := h.Resolve(context.Background())
			if err == nil {
				t.Fatal("Resolve succeeded")
			}
			if got := errors.Is(err, ErrNotConfigured); got != tc.notConfigured {
				t.Errorf("errors.Is(err, ErrNotConfigured) = %v, want %v: %v", got, tc.notConfigured, err)
			}
			if got := exitcode.Of(err); got != tc.status {
				t.Errorf("exit status %d, want %d: %v", got, tc.status, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			// The grace bounds the tag listing (what is left of it on
			// the last re-read) exactly when nothing local configures.
			if got := h.imds.opts.TagsDeadline > 0 && h.imds.opts.TagsDeadline <= testGrace; got != tc.quick {
				t.Errorf("IMDS TagsDeadline = %v, want within the %v grace: %v", h.imds.opts.TagsDeadline, testGrace, tc.quick)
			}
			if tc.notConfigured && !strings.Contains(h.logs.String(), "[finished] resolve configuration: not configured") {
				t.Errorf("not configured is logged as a finished step, not a failure:\n%s", h.logs)
			}
			if _, err := os.Stat(h.o.Dir); err == nil {
				t.Errorf("resolving created %s", h.o.Dir)
			}
		})
	}
}

// TestResolveWithoutIMDS: configuration from the config file alone, as
// provider local (which never reads IMDS) and as provider aws with an
// instance that has no redash: tags but a config file that says what to run.
func TestResolveWithoutRedashTags(t *testing.T) {
	h := newHarness(t, setup{
		tags:   map[string]string{"Name": "x"},
		config: "db-endpoint: db:5432\nredis-endpoint: cache:6379\nversion: 10.1.0.b50633\n",
	})
	res, err := h.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Config.Version != "10.1.0.b50633" || res.Config.Origins["version"] != config.SourceFile {
		t.Errorf("version %q from %q, want the config file's", res.Config.Version, res.Config.Origins["version"])
	}

	h = newHarness(t, setup{config: "provider: local\n", imdsErr: errors.New("must not be called")})
	res, err = h.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.imds.calls != 0 {
		t.Errorf("provider local read IMDS %d times", h.imds.calls)
	}
	if res.Config.Provider != config.ProviderLocal {
		t.Errorf("provider %q, want local", res.Config.Provider)
	}
}

// TestRenderErrorClassification: each way the reading half can fail ends
// with the exit status the CLI contract gives it (3: a person must fix the
// configuration; 1: a restart may help), with an error that names what is
// wrong and never holds a secret value.
func TestRenderErrorClassification(t *testing.T) {
	withTag := func(k, v string) map[string]string {
		tags := redashTags()
		tags[k] = v
		return tags
	}
	tests := []struct {
		name   string
		s      setup
		status int
		want   []string
	}{
		{name: "bad tag value",
			s:      setup{tags: withTag("redash:role", "database")},
			status: exitcode.Config, want: []string{"redash:role", `"database"`, "instance tag"}},
		{name: "unknown tag key",
			s:      setup{tags: withTag("redash:colour", "blue")},
			status: exitcode.Config, want: []string{"redash:colour", "unknown key"}},
		{name: "bad --set",
			s:      setup{tags: redashTags(), set: map[string]string{"nginx": "maybe"}},
			status: exitcode.Config, want: []string{"redash:nginx", "flag --set"}},
		{name: "malformed config file",
			s:      setup{tags: redashTags(), config: "env: [a, b\n"},
			status: exitcode.Config, want: []string{"parsing config file", "YAML"}},
		{name: "no region",
			s:      setup{tags: redashTags(), region: "-"},
			status: exitcode.Config, want: []string{"AWS_REGION"}},
		{name: "missing secret",
			s:      setup{tags: withTag("redash:secret:secret-key", "Redash/DoesNotExist")},
			status: exitcode.Config, want: []string{`"secret-key"`, "Redash/DoesNotExist", "not found in region us-east-1", "redash:secret:secret-key"}},
		{name: "missing JSON key",
			s: setup{tags: withTag("redash:secret:db-password", "Redash/Json#password"),
				sm: &fakeSM{values: merge(seedSecrets(), map[string]string{"Redash/Json": `{"pass":"` + dbPassword + `"}`})}},
			status: exitcode.Config, want: []string{"Redash/Json", `"password"`, `keys present: "pass"`}},
		{name: "Secrets Manager keeps failing",
			s:      setup{tags: redashTags(), sm: &fakeSM{fail: errors.New("dial tcp: i/o timeout")}},
			status: exitcode.Failure, want: []string{"the agent tries again when it restarts", "i/o timeout"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.s)
			_, err := h.Render(context.Background())
			if err == nil {
				t.Fatal("Render succeeded")
			}
			if got := exitcode.Of(err); got != tc.status {
				t.Errorf("exit status %d, want %d: %v", got, tc.status, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			assertNoSecret(t, "the error", err.Error())
			assertNoSecret(t, "the log", h.logs.String())
			if !strings.Contains(h.logs.String(), "[failed]") {
				t.Errorf("the failed step is not logged as [failed]:\n%s", h.logs)
			}
		})
	}
}

// TestRenderDryRun is what `render --dry-run` prints, short of the
// redaction done in the CLI: the env file holds the secrets, the compose
// file none, and the log names secrets by id and version only.
func TestRenderDryRun(t *testing.T) {
	tags := redashTags()
	tags["redash:env:REDASH_FEATURE_EXTENDED_ALERT_OPTIONS"] = "true"
	h := newHarness(t, setup{tags: tags})
	r, err := h.Render(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.smRegion != "us-east-1" {
		t.Errorf("Secrets Manager client for region %q, want the instance's us-east-1", h.smRegion)
	}
	if len(r.Secrets) != 4 || r.Secrets[secrets.DBPassword].VersionID != "v-Redash/RDS/Password" {
		t.Errorf("secrets %v, want the four seed secrets with their VersionIds", r.Secrets)
	}
	env := string(r.EnvFile)
	for _, w := range []string{
		`REDASH_DATABASE_URL="postgresql://redash:` + dbPassword + `@db.example.internal:5432/redash"`,
		`REDASH_REDIS_URL="redis://cache.example.internal:6379/0"`,
		`REDASH_COOKIE_SECRET="` + cookieSecret + `"`,
		`REDASH_SECRET_KEY="` + secretKey + `"`,
		`REDASH_FEATURE_EXTENDED_ALERT_OPTIONS="true"`,
	} {
		if !strings.Contains(env, w) {
			t.Errorf("env file lacks %s:\n%s", w, env)
		}
	}
	for _, w := range []string{"server:", "scheduler:", "nginx:", "image: redash/redash:" + config.DefaultVersion} {
		if !strings.Contains(string(r.Compose), w) {
			t.Errorf("compose file lacks %q:\n%s", w, r.Compose)
		}
	}
	assertNoSecret(t, "the compose file", string(r.Compose))
	assertNoSecret(t, "the log", h.logs.String())
	for _, step := range []string{"[finished] resolve configuration", "[finished] fetch secrets", "[finished] render env file and compose file"} {
		if !strings.Contains(h.logs.String(), step) {
			t.Errorf("log lacks %q:\n%s", step, h.logs)
		}
	}
	if _, err := os.Stat(h.o.Dir); err == nil {
		t.Errorf("Render wrote %s; only Write may", h.o.Dir)
	}
}

// TestRenderLocal: provider local needs no AWS at all; its secrets are
// generated once under the state directory and reused.
func TestRenderLocal(t *testing.T) {
	h := newHarness(t, setup{config: "provider: local\n", imdsErr: errors.New("must not be called")})
	h.remote.secrets = func(context.Context, string, secrets.Policy, *slog.Logger) (secretStore, error) {
		t.Error("provider local asked for a Secrets Manager client")
		return nil, errors.New("unreachable")
	}
	first, err := h.Render(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	second, err := h.Render(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.EnvFile, second.EnvFile) {
		t.Error("a second render generated new local secrets")
	}
	for _, svc := range []string{"postgres:", "redis:"} {
		if !strings.Contains(string(first.Compose), svc) {
			t.Errorf("compose file lacks the bundled %s service", svc)
		}
	}
	st, err := os.Stat(h.localSecrets())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("local secrets file: %v, mode %v, want 0600", err, st.Mode().Perm())
	}
}

// TestRenderFix: doctor chooses its fix line by the error's type.
func TestRenderFix(t *testing.T) {
	notFound := newHarness(t, setup{tags: withSecretTag("Redash/Nope")})
	_, nfErr := notFound.Render(context.Background())
	failing := newHarness(t, setup{tags: redashTags(), sm: &fakeSM{fail: errors.New("connection reset")}})
	_, trErr := failing.Render(context.Background())
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"secret not found", nfErr, "secretsmanager:GetSecretValue"},
		{"access denied", fmt.Errorf("fetching: %w", errors.Join(wrapped(secrets.ErrAccessDenied))), "secretsmanager:GetSecretValue"},
		{"Secrets Manager unreachable", trErr, "reaches Secrets Manager"},
		{"bad setting", &config.Error{Problems: []config.Problem{{Key: "role", Origin: "instance tag", Msg: "not a role"}}}, "redash-agent config"},
	}
	for _, tc := range tests {
		if tc.err == nil {
			t.Fatalf("%s: no error to classify", tc.name)
		}
		if got := renderFix(tc.err); !strings.Contains(got, tc.want) {
			t.Errorf("%s: fix %q, want one mentioning %q", tc.name, got, tc.want)
		}
	}
}

func withSecretTag(id string) map[string]string {
	tags := redashTags()
	tags["redash:secret:db-password"] = id
	return tags
}

// wrapped stands for an error whose chain carries sentinel, as secrets.Error's does.
func wrapped(sentinel error) error { return fmt.Errorf("secret %q: %w", "db-password", sentinel) }

func merge(a, b map[string]string) map[string]string {
	for k, v := range b {
		a[k] = v
	}
	return a
}

func assertNoSecret(t *testing.T, where, s string) {
	t.Helper()
	for _, v := range []string{dbPassword, cookieSecret, secretKey} {
		if strings.Contains(s, v) {
			t.Errorf("%s holds a secret value:\n%s", where, s)
		}
	}
}

// TestSecretsBudget: a boot fetch gets the patient secrets.Boot budget; once
// run has switched to secrets.Refresh, the next fetch gets that one.
func TestSecretsBudget(t *testing.T) {
	h := newHarness(t, setup{tags: redashTags()})
	if _, err := h.Render(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.smPolicy != secrets.Boot {
		t.Errorf("boot fetch budget = %+v, want secrets.Boot %+v", h.smPolicy, secrets.Boot)
	}
	h.secretsPolicy = secrets.Refresh
	if _, err := h.Render(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h.smPolicy != secrets.Refresh {
		t.Errorf("refresh fetch budget = %+v, want secrets.Refresh %+v", h.smPolicy, secrets.Refresh)
	}
}
