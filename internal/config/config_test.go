package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// minimal is the least an aws instance needs besides the defaults.
func minimal() Layer {
	return Layer{Source: SourceTag, Origin: "instance tag", Values: map[string]string{
		"db-endpoint":    "db.example.internal:5432",
		"redis-endpoint": "cache.example.internal:6379",
	}}
}

func TestPrecedence(t *testing.T) {
	file := Layer{Source: SourceFile, Origin: "/etc/redash-agent/config.yaml", Values: map[string]string{
		"version": "8.0.0.b32245", "role": "web", "log-group": "from-file", "nginx": "false",
	}}
	tags := minimal()
	tags.Values["version"] = "10.1.0.b50633"
	tags.Values["role"] = "worker"
	flags := Layer{Source: SourceFlag, Values: map[string]string{"role": "all"}}

	c, err := Resolve(Defaults(), file, tags, flags)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		key, got, want string
		src            Source
	}{
		{"version", c.Version, "10.1.0.b50633", SourceTag},    // tag beats file
		{"role", c.Role, "all", SourceFlag},                   // flag beats tag
		{"log-group", c.LogGroup, "from-file", SourceFile},    // file beats default
		{"project", c.Project, "redash", SourceDefault},       // default
		{"image", c.Image, "redash/redash:10.1.0.b50633", ""}, // derived from version
	}
	for _, tc := range cases {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.key, tc.got, tc.want)
		}
		if tc.src != "" && c.Origins[tc.key] != tc.src {
			t.Errorf("%s source = %q, want %q", tc.key, c.Origins[tc.key], tc.src)
		}
	}
	if c.Nginx {
		t.Errorf("nginx = true, want false from the file")
	}
}

func TestSeedSecretRefs(t *testing.T) {
	tags := minimal()
	tags.Values["secrets-prefix"] = "Prod/Redash"
	tags.Values["secret:cookie-secret"] = "arn:aws:secretsmanager:us-east-1:123456789012:secret:web-AbCdEf#cookie"
	c, err := Resolve(Defaults(), tags)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]secrets.Ref{
		secrets.DBUser:       {Name: secrets.DBUser, SecretID: "Prod/Redash/RDS/User"},
		secrets.DBPassword:   {Name: secrets.DBPassword, SecretID: "Prod/Redash/RDS/Password"},
		secrets.SecretKey:    {Name: secrets.SecretKey, SecretID: "Prod/Redash/SecretKey"},
		secrets.CookieSecret: {Name: secrets.CookieSecret, SecretID: "arn:aws:secretsmanager:us-east-1:123456789012:secret:web-AbCdEf", JSONKey: "cookie"},
	}
	if !reflect.DeepEqual(c.Secrets, want) {
		t.Errorf("secrets = %+v\nwant %+v", c.Secrets, want)
	}
}

func TestDBSecretReplacesUserAndPassword(t *testing.T) {
	tags := Layer{Source: SourceTag, Values: map[string]string{
		"db-secret":      "rds!cluster-1234",
		"redis-endpoint": "cache:6379",
	}}
	c, err := Resolve(Defaults(), tags)
	if err != nil {
		t.Fatalf("db-secret alone must be enough for the database: %v", err)
	}
	if _, ok := c.Secrets[secrets.DBUser]; ok {
		t.Errorf("db-user still fetched from the prefix although db-secret is set")
	}
	if c.Secrets[secrets.DBSecret].SecretID != "rds!cluster-1234" {
		t.Errorf("db-secret ref = %+v", c.Secrets[secrets.DBSecret])
	}
}

func TestLocalProviderNeedsNoEndpoints(t *testing.T) {
	c, err := Resolve(Defaults(), Layer{Source: SourceFile, Values: map[string]string{"provider": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n, r := range c.Secrets {
		names = append(names, n)
		if !strings.HasPrefix(r.SecretID, "local:") {
			t.Errorf("local secret %s has id %q", n, r.SecretID)
		}
	}
	if len(names) != 3 {
		t.Errorf("local secrets = %v, want db-password, cookie-secret, secret-key", names)
	}
}

// TestValidation: every bad key gets its own line, all in one error.
func TestValidation(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
		want []string // substrings, one per problem
	}{
		{"unknown key", map[string]string{"verison": "10.1.0"}, []string{"redash:verison", "unknown key"}},
		{"bad role", map[string]string{"role": "db"}, []string{"redash:role", `"db" is not a role`}},
		{"bad provider", map[string]string{"provider": "gcp"}, []string{"redash:provider", "not a provider"}},
		{"bad version", map[string]string{"version": "latest"}, []string{"redash:version", "not a Redash version"}},
		{"bad nginx", map[string]string{"nginx": "yes please"}, []string{"redash:nginx", "not true or false"}},
		{"bad port", map[string]string{"server-port": "99999"}, []string{"redash:server-port", "not a TCP port"}},
		{"bad db endpoint", map[string]string{"db-endpoint": "db.example.internal"}, []string{"redash:db-endpoint", "not host:port"}},
		{"bad redis url", map[string]string{"redis-url": "http://cache"}, []string{"redash:redis-url", "redis:// or rediss://"}},
		{"both redis", map[string]string{"redis-url": "redis://cache:6379/0"}, []string{"redash:redis-url", "keep one"}},
		{"bad secret name", map[string]string{"secret:api-key": "x"}, []string{"redash:secret:api-key", "not a secret name"}},
		{"empty json key", map[string]string{"secret:db-password": "Redash/DB#"}, []string{"redash:secret:db-password", "no JSON key"}},
		{"agent-owned env", map[string]string{"env:REDASH_DATABASE_URL": "postgresql://u:p@h/d"}, []string{"redash:env:REDASH_DATABASE_URL", "built by the agent"}},
		{"bad env name", map[string]string{"env:1BAD": "x"}, []string{"redash:env:1BAD", "not an environment variable name"}},
		{"bad worker service", map[string]string{"workers:celery_worker": "2"}, []string{"redash:workers:celery_worker", "not a worker service"}},
		{"bad worker count", map[string]string{"workers:adhoc_worker": "0"}, []string{"redash:workers:adhoc_worker", "between 1 and 64"}},
		{"bad log group", map[string]string{"log-group": "has space"}, []string{"redash:log-group", "CloudWatch Logs group"}},
		{"bad refresh", map[string]string{"refresh": "1s"}, []string{"redash:refresh", "at least 10s"}},
		{"long tag value", map[string]string{"env:LONG": strings.Repeat("x", 257)}, []string{"redash:env:LONG", "limit is 256"}},
		{"bad tag key chars", map[string]string{"env:A/B": "x"}, []string{"redash:env:A/B", "may only use"}},
		{"bad image", map[string]string{"image": "redash redash"}, []string{"redash:image", "not an image reference"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tags := minimal()
			for k, v := range tc.vals {
				tags.Values[k] = v
			}
			_, err := Resolve(Defaults(), tags)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("err = %v, want *config.Error", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestValidationReportsEveryProblemAtOnce(t *testing.T) {
	tags := Layer{Source: SourceTag, Origin: "instance tag", Values: map[string]string{
		"role": "db", "version": "latest", "nginx": "maybe",
	}}
	_, err := Resolve(Defaults(), tags)
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v", err)
	}
	// role, version, nginx, plus the missing db-endpoint and redis-endpoint.
	keys := map[string]bool{}
	for _, p := range ce.Problems {
		keys[p.Key] = true
		if p.Origin == "" {
			t.Errorf("problem %q has no origin", p.Key)
		}
	}
	for _, k := range []string{"role", "version", "nginx", "db-endpoint", "redis-endpoint"} {
		if !keys[k] {
			t.Errorf("no problem reported for %s; got %v", k, err)
		}
	}
}

func TestWorkersValidatedAgainstLayout(t *testing.T) {
	tags := minimal()
	tags.Values["version"] = "8.0.0.b32245"
	tags.Values["workers:worker"] = "2" // RQ-only service
	if _, err := Resolve(Defaults(), tags); err == nil || !strings.Contains(err.Error(), "redash:workers:worker") {
		t.Errorf("8.x has no `worker` service; err = %v", err)
	}
	tags.Values["version"] = "10.1.0.b50633"
	c, err := Resolve(Defaults(), tags)
	if err != nil {
		t.Fatal(err)
	}
	if c.Workers["worker"] != 2 {
		t.Errorf("workers = %v", c.Workers)
	}
}

func TestFromTagsIgnoresOtherTags(t *testing.T) {
	l := FromTags(map[string]string{"Name": "redash-1", "aws:autoscaling:groupName": "g", "redash:role": "web"})
	if !reflect.DeepEqual(l.Values, map[string]string{"role": "web"}) {
		t.Errorf("values = %v", l.Values)
	}
	if HasRedashTags(map[string]string{"Name": "x"}) {
		t.Error("HasRedashTags true without redash: tags")
	}
}

func TestParseFile(t *testing.T) {
	got, err := ParseFile([]byte(`
# comment
version: 10.1.0.b50633
redash:role: web
web-workers: 4
nginx: false
env:
  REDASH_FEATURE_EXTENDED_ALERT_OPTIONS: "true"
secret:
  db-password: Other/Password
workers:
  adhoc_worker: 3
log-group:
`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"version": "10.1.0.b50633", "role": "web", "web-workers": "4", "nginx": "false",
		"env:REDASH_FEATURE_EXTENDED_ALERT_OPTIONS": "true", "secret:db-password": "Other/Password",
		"workers:adhoc_worker": "3",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
	if _, err := ParseFile([]byte("db-endpoint:\n  host: x\n")); err == nil {
		t.Error("nested map under db-endpoint accepted")
	}
	if _, err := ParseFile([]byte("version: [1, 2]\n")); err == nil {
		t.Error("list value accepted")
	}
}

// TestErrorsAreConfigErrors: every way config rejects its input exits 3,
// so systemd does not restart the agent on a mistake only a person fixes.
func TestErrorsAreConfigErrors(t *testing.T) {
	_, err := Resolve(Defaults(), Layer{Source: SourceTag, Values: map[string]string{"role": "db"}})
	if got := exitcode.Of(err); got != exitcode.Config {
		t.Errorf("Resolve: exit status %d, want %d: %v", got, exitcode.Config, err)
	}
	dir := t.TempDir()
	bad := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(bad, []byte("env: [a, b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadFile(bad); exitcode.Of(err) != exitcode.Config || !strings.Contains(err.Error(), bad) {
		t.Errorf("LoadFile of malformed YAML: %v (exit status %d), want a configuration error naming the file", err, exitcode.Of(err))
	}
	if _, _, err := LoadFile(dir); exitcode.Of(err) != exitcode.Config {
		t.Errorf("LoadFile of a directory: %v (exit status %d), want a configuration error", err, exitcode.Of(err))
	}
	if _, present, err := LoadFile(filepath.Join(dir, "missing.yaml")); err != nil || present {
		t.Errorf("LoadFile of a missing file: present=%v err=%v, want an empty layer", present, err)
	}
}
