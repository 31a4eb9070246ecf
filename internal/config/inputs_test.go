package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// resolveWith resolves the minimal aws tags with vals on top.
func resolveWith(vals map[string]string) (Config, error) {
	tags := minimal()
	for k, v := range vals {
		tags.Values[k] = v
	}
	return Resolve(Defaults(), tags)
}

// TestRefusedInputs: inputs that used to pass and change what Redash
// connects to or runs are configuration errors (exit 3) naming the key and
// saying what to write instead.
func TestRefusedInputs(t *testing.T) {
	cases := []struct {
		name string
		key  string
		val  string
		want []string // substrings of the one message
		not  string   // must not appear (a password)
	}{
		// Hosts are pasted into the URLs: '@' '/' '?' '#' and spaces rewrite them.
		{name: "db host rewriting user, database and options", key: "db-endpoint", val: "evil@db/x?y:5432",
			want: []string{"redash:db-endpoint", `"evil@db/x?y:5432"`, "not a host name or IP address"}},
		{name: "db host with space", key: "db-endpoint", val: "db host:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db host with hash", key: "db-endpoint", val: "db#x:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db host with slash", key: "db-endpoint", val: "db/other:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db host with question mark", key: "db-endpoint", val: "db?sslmode=disable:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db host with empty label", key: "db-endpoint", val: "db..internal:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db host label starting with hyphen", key: "db-endpoint", val: "-db.internal:5432", want: []string{"redash:db-endpoint", "not a host name"}},
		{name: "db IPv6 without brackets", key: "db-endpoint", val: "2001:db8::1:5432",
			want: []string{"redash:db-endpoint", "IPv6 address needs brackets", "[2001:db8::1]:5432"}},
		{name: "db IPv6 without brackets or port", key: "db-endpoint", val: "::1",
			want: []string{"redash:db-endpoint", "needs brackets", "[::1]:<port>"}},
		{name: "db IPv6 zone", key: "db-endpoint", val: "[fe80::1%eth0]:5432", want: []string{"redash:db-endpoint", "zone"}},
		{name: "db port with leading zero", key: "db-endpoint", val: "db:05432", want: []string{"redash:db-endpoint", "no valid port"}},
		{name: "redis host with at", key: "redis-endpoint", val: "evil@cache/1:6379", want: []string{"redash:redis-endpoint", "not a host name"}},
		{name: "redis IPv6 without brackets", key: "redis-endpoint", val: "2001:db8::7:6379",
			want: []string{"redash:redis-endpoint", "write [2001:db8::7]:6379"}},
		// redis-url must name a host, as one the agent would build.
		{name: "redis url without host", key: "redis-url", val: "redis://", want: []string{"redash:redis-url", "names no host"}},
		{name: "redis url with port but no host", key: "redis-url", val: "rediss://:6379/0", want: []string{"redash:redis-url", "names no host"}},
		{name: "redis url with space in host", key: "redis-url", val: "redis://ca che:6379/0", want: []string{"redash:redis-url", "not a URL"}},
		{name: "redis url with bad host", key: "redis-url", val: "redis://ca_che!:6379/0", want: []string{"redash:redis-url", "not a host name"}},
		{name: "redis url with non-numeric database", key: "redis-url", val: "redis://cache:6379/zero", want: []string{"redash:redis-url", "not a database number"}},
		{name: "redis url with fragment", key: "redis-url", val: "redis://cache:6379/0#x", want: []string{"redash:redis-url", "fragment"}},
		{name: "redis url with empty port", key: "redis-url", val: "redis://cache:/0", want: []string{"redash:redis-url", "empty port"}},
		{name: "redis url error hides its password", key: "redis-url", val: "redis://user:Hunter2Secret@bad host:6379/0",
			want: []string{"redash:redis-url", "user:xxxxx@"}, not: "Hunter2Secret"},
		// Versions that name no release.
		{name: "major only", key: "version", val: "10", want: []string{"redash:version", `"10" is not a Redash version tag`, "10.1.0.b50633"}},
		{name: "YAML float", key: "version", val: "10.10", want: []string{"redash:version", "not a Redash version tag"}},
		{name: "v prefix", key: "version", val: "v10.1.0", want: []string{"redash:version", "not a Redash version tag"}},
		{name: "leading zero", key: "version", val: "010.1.0", want: []string{"redash:version", "not a Redash version tag"}},
		{name: "release 7", key: "version", val: "7.0.0", want: []string{"redash:version", "older than Redash 8", "8.0.0.b32245"}},
		{name: "release 7 with build", key: "version", val: "7.0.0.b18042", want: []string{"redash:version", "older than Redash 8"}},
		{name: "release 0", key: "version", val: "0.12.0.b2449", want: []string{"redash:version", "older than Redash 8"}},
		// Ports are decimal as written: the YAML hex and octal spellings are not ports.
		{name: "hex port", key: "server-port", val: "0x1F90", want: []string{"redash:server-port", "not a TCP port"}},
		{name: "leading-zero port", key: "nginx-port", val: "080", want: []string{"redash:nginx-port", "not a TCP port"}},
		{name: "signed worker count", key: "web-workers", val: "+4", want: []string{"redash:web-workers", "worker count"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]string{tc.key: tc.val}
			if tc.key == "redis-url" {
				vals["redis-endpoint"] = "" // minimal sets the endpoint; keep one
			}
			_, err := resolveWithout(vals)
			assertConfigError(t, err, tc.key, tc.want)
			if tc.not != "" && strings.Contains(err.Error(), tc.not) {
				t.Errorf("error shows %q: %v", tc.not, err)
			}
		})
	}
}

// resolveWithout is resolveWith where an empty value removes the key.
func resolveWithout(vals map[string]string) (Config, error) {
	tags := minimal()
	for k, v := range vals {
		if v == "" {
			delete(tags.Values, k)
			continue
		}
		tags.Values[k] = v
	}
	return Resolve(Defaults(), tags)
}

// assertConfigError: err is a *Error with exit status 3 that has a problem
// for key, and its message holds every want.
func assertConfigError(t *testing.T, err error, key string, want []string) {
	t.Helper()
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want *config.Error", err)
	}
	if got := exitcode.Of(err); got != exitcode.Config {
		t.Errorf("exit status %d, want %d", got, exitcode.Config)
	}
	found := false
	for _, p := range ce.Problems {
		found = found || p.Key == key
	}
	if !found {
		t.Errorf("no problem for key %q in %v", key, err)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q\ndoes not contain %q", err, w)
		}
	}
}

// TestAcceptedInputs: the checks do not refuse what real deployments use.
func TestAcceptedInputs(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
	}{
		{"aurora endpoint", map[string]string{"db-endpoint": "redash.cluster-abc123.us-east-1.rds.amazonaws.com:5432"}},
		{"IPv4 endpoint", map[string]string{"db-endpoint": "10.0.12.7:5432"}},
		{"IPv6 endpoint in brackets", map[string]string{"db-endpoint": "[2001:db8::1]:5432"}},
		{"host with underscore (compose service)", map[string]string{"db-endpoint": "redash_postgres:5432"}},
		{"single-label host", map[string]string{"redis-endpoint": "redis:6379"}},
		{"redis url plain", map[string]string{"redis-endpoint": "", "redis-url": "redis://cache"}},
		{"redis url tls with db", map[string]string{"redis-endpoint": "", "redis-url": "rediss://master.redash.abc123.use1.cache.amazonaws.com:6379/0"}},
		{"redis url IPv6", map[string]string{"redis-endpoint": "", "redis-url": "redis://[2001:db8::1]:6379/2"}},
		{"redis url with credentials and options", map[string]string{"redis-endpoint": "", "redis-url": "rediss://:tok@cache:6380/1?ssl_cert_reqs=none"}},
		{"8.0.0 build", map[string]string{"version": "8.0.0.b32245"}},
		{"8.0.0 beta", map[string]string{"version": "8.0.0-beta.2"}},
		{"9.0.0 beta build", map[string]string{"version": "9.0.0-beta.b42121"}},
		{"10.0.0", map[string]string{"version": "10.0.0"}},
		{"10.1.0 build", map[string]string{"version": "10.1.0.b50633"}},
		{"25.1.0", map[string]string{"version": "25.1.0"}},
		{"25.8.0", map[string]string{"version": "25.8.0"}},
		{"26.3.0", map[string]string{"version": "26.3.0"}},
		{"celery broker TLS option", map[string]string{"version": "8.0.0.b32245", "env:REDASH_CELERY_BROKER_SSL_CA_CERTS": "/etc/ssl/ca.pem"}},
		{"log level", map[string]string{"env:REDASH_LOG_LEVEL": "DEBUG"}},
		{"LDAP URL", map[string]string{"env:REDASH_LDAP_URL": "ldaps://ldap.example.com"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := resolveWithout(tc.vals); err != nil {
				t.Errorf("refused: %v", err)
			}
		})
	}
}

// TestReservedEnvRefused: every variable the agent builds or that routes a
// connection around its URLs is refused through redash:env:, naming the key
// to set instead.
func TestReservedEnvRefused(t *testing.T) {
	names := ReservedEnv()
	for _, must := range []string{
		"REDASH_DATABASE_URL", "DATABASE_URL", "SQLALCHEMY_DATABASE_URI",
		"REDASH_REDIS_URL", "REDIS_URL", "RQ_REDIS_URL",
		"REDASH_CELERY_BROKER", "REDASH_CELERY_BACKEND", "REDASH_CELERY_RESULT_BACKEND", "REDASH_LIMITER_STORAGE",
		"REDASH_COOKIE_SECRET", "REDASH_SECRET_KEY",
		"QUEUES", "WORKERS_COUNT", "REDASH_WEB_WORKERS", "POSTGRES_PASSWORD",
	} {
		found := false
		for _, n := range names {
			found = found || n == must
		}
		if !found {
			t.Errorf("%s is not in ReservedEnv()", must)
		}
	}
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			_, err := resolveWith(map[string]string{"env:" + name: "redis://elsewhere:6379/0"})
			assertConfigError(t, err, "env:"+name, []string{"redash:env:" + name, "remove this key; use", reservedEnv[name]})
		})
	}
}

// TestEveryBadKeyInOneMessage: one error names all the refused keys.
func TestEveryBadKeyInOneMessage(t *testing.T) {
	_, err := resolveWithout(map[string]string{
		"db-endpoint":      "evil@db/x?y:5432",
		"redis-endpoint":   "",
		"redis-url":        "redis://",
		"version":          "10",
		"env:RQ_REDIS_URL": "redis://elsewhere/0",
	})
	for _, key := range []string{"db-endpoint", "redis-url", "version", "env:RQ_REDIS_URL"} {
		assertConfigError(t, err, key, []string{"redash:" + key})
	}
}

// TestParseFileKeepsLiteralText: every value is the text that was written,
// never YAML's reading of it.
func TestParseFileKeepsLiteralText(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want map[string]string
	}{
		{"float version", "version: 10.10\n", map[string]string{"version": "10.10"}},
		{"octal-looking project", "project: 0123\n", map[string]string{"project": "0123"}},
		{"hex port", "server-port: 0x1F90\n", map[string]string{"server-port": "0x1F90"}},
		{"exponent", "web-workers: 1e3\n", map[string]string{"web-workers": "1e3"}},
		{"YAML 1.1 boolean word", "nginx: off\n", map[string]string{"nginx": "off"}},
		{"capitalised boolean", "nginx: False\n", map[string]string{"nginx": "False"}},
		{"quoted", "env:\n  REDASH_FEATURE_X: \"true\"\n", map[string]string{"env:REDASH_FEATURE_X": "true"}},
		{"nested values literal too", "workers:\n  adhoc_worker: 010\n", map[string]string{"workers:adhoc_worker": "010"}},
		{"null and tilde unset", "log-group:\nimage: ~\nnginx-image: null\nrole: \"null\"\n", map[string]string{"role": "null"}},
		{"alias", "x-v: &v 10.1.0.b50633\n", map[string]string{"x-v": "10.1.0.b50633"}},
		{"leading document marker", "---\nversion: 25.8.0\n", map[string]string{"version": "25.8.0"}},
		{"comment then marker", "# baked into the AMI\n---\nversion: 25.8.0\n", map[string]string{"version": "25.8.0"}},
		{"trailing empty document", "version: 25.8.0\n---\n", map[string]string{"version": "25.8.0"}},
		{"empty file", "", map[string]string{}},
		{"comments only", "# version: 10.1.0\n", map[string]string{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFile([]byte(tc.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseFileRefuses(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{"second document", "version: 10.1.0.b50633\n---\nrole: web\n", []string{"line 2", "second YAML document", "one document"}},
		{"second document after an empty one", "---\n---\nrole: web\n", []string{"second YAML document"}},
		{"key set twice", "role: web\nnginx: true\nrole: worker\n", []string{"line 3", `key "role" is already set on line 1`}},
		{"key set with and without prefix", "role: web\nredash:role: worker\n", []string{`key "role" is already set`}},
		{"nested and flat env", "env:\n  A: x\nenv:A: y\n", []string{`key "env:A" is already set`}},
		{"list value", "version: [1, 2]\n", []string{`key "version"`, "single value"}},
		{"nested list", "env:\n  A: [1]\n", []string{`key "env:A"`, "single value"}},
		{"nested map elsewhere", "db-endpoint:\n  host: x\n", []string{"nested map is only allowed"}},
		{"not a map", "- version\n", []string{"not a map"}},
		{"complex key", "? [a, b]\n: c\n", []string{"plain name"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFile([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("accepted: %v", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestFileValuesReachResolveAsWritten: through LoadFile and Resolve, a
// retyped value is refused under its key instead of silently changed.
func TestFileValuesReachResolveAsWritten(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := "db-endpoint: db:5432\nredis-endpoint: cache:6379\nproject: 0123\nserver-port: 0x1F90\nversion: 10.10\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	file, present, err := LoadFile(path)
	if err != nil || !present {
		t.Fatalf("LoadFile: present=%v err=%v", present, err)
	}
	c, err := Resolve(Defaults(), file)
	if c.Project != "0123" {
		t.Errorf("project = %q, want 0123 as written", c.Project)
	}
	assertConfigError(t, err, "server-port", []string{`redash:server-port (from ` + path + `): "0x1F90" is not a TCP port`})
	assertConfigError(t, err, "version", []string{`redash:version (from ` + path + `): "10.10" is not a Redash version tag`})

	multi := filepath.Join(filepath.Dir(path), "multi.yaml")
	if err := os.WriteFile(multi, []byte("version: 25.8.0\n---\nrole: web\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadFile(multi); exitcode.Of(err) != exitcode.Config || !strings.Contains(err.Error(), multi) {
		t.Errorf("LoadFile of two documents: %v (exit status %d), want a configuration error naming the file", err, exitcode.Of(err))
	}
}

func TestRequireFile(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(present, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := RequireFile(present); err != nil {
		t.Errorf("existing file: %v", err)
	}
	missing := filepath.Join(dir, "confg.yaml")
	err := RequireFile(missing)
	if exitcode.Of(err) != exitcode.Config {
		t.Fatalf("missing file: %v (exit status %d), want a configuration error", err, exitcode.Of(err))
	}
	for _, w := range []string{`"` + missing + `"`, "--config", "does not exist", "fix the path"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
	if err := RequireFile(""); exitcode.Of(err) != exitcode.Config {
		t.Errorf("empty path: %v, want a configuration error", err)
	}
}

func TestCheckHost(t *testing.T) {
	cases := []struct {
		host string
		ok   bool
	}{
		{"db.example.internal", true},
		{"10.0.0.1", true},
		{"2001:db8::1", true}, // as net.SplitHostPort returns it
		{"db_1", true},
		{"", false},
		{"evil@db", false},
		{"db/x", false},
		{"db?x", false},
		{"db#x", false},
		{"db x", false},
		{"db%2F", false},
		{"[2001:db8::1]", false},
		{"fe80::1%eth0", false},
		{"db.", false},
		{strings.Repeat("a", 64) + ".example", false},
		{strings.Repeat("a.", 127) + "ab", false}, // 256 characters
	}
	for _, tc := range cases {
		if err := CheckHost(tc.host); (err == nil) != tc.ok {
			t.Errorf("CheckHost(%q) = %v, want ok=%v", tc.host, err, tc.ok)
		}
	}
}
