package desired

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

func buildRedis(t *testing.T, vals map[string]string, auth string) (map[string]string, error) {
	t.Helper()
	vals["db-endpoint"] = "db:5432"
	got := seed("u", "p")
	if auth != "" {
		vals["secret:redis-auth"] = "Redis/Auth"
		got[secrets.RedisAuth] = secret(secrets.RedisAuth, auth)
	}
	st, err := Build(resolve(t, vals), got, "/opt/redash")
	return st.Env, err
}

// TestRedisPasswordPerFamily: redis-py 3 (8.x-10.x) gets the password raw,
// redis-py 4 (25.x on) and kombu (8.x's REDASH_CELERY_BROKER) percent-encoded.
func TestRedisPasswordPerFamily(t *testing.T) {
	const token = "a!b%c:d@e"
	cases := []struct {
		version, wantRedis, wantBroker string
	}{
		{"8.0.0.b32245", "redis://:a!b%c:d@e@cache:6379/0", "redis://:a%21b%25c%3Ad%40e@cache:6379/0"},
		{"9.0.0-beta.b42121", "redis://:a!b%c:d@e@cache:6379/0", ""},
		{"10.1.0.b50633", "redis://:a!b%c:d@e@cache:6379/0", ""},
		{"25.1.0", "redis://:a%21b%25c%3Ad%40e@cache:6379/0", ""},
		{"26.3.0", "redis://:a%21b%25c%3Ad%40e@cache:6379/0", ""},
	}
	for _, tc := range cases {
		t.Run(tc.version, func(t *testing.T) {
			env, err := buildRedis(t, map[string]string{"version": tc.version, "redis-endpoint": "cache:6379"}, token)
			if err != nil {
				t.Fatal(err)
			}
			if env["REDASH_REDIS_URL"] != tc.wantRedis {
				t.Errorf("REDASH_REDIS_URL = %q, want %q", env["REDASH_REDIS_URL"], tc.wantRedis)
			}
			if env["REDASH_CELERY_BROKER"] != tc.wantBroker {
				t.Errorf("REDASH_CELERY_BROKER = %q, want %q", env["REDASH_CELERY_BROKER"], tc.wantBroker)
			}
			pythonReads(t, env["REDASH_REDIS_URL"], tc.version >= "25", token)
			if tc.wantBroker != "" {
				pythonReads(t, tc.wantBroker, true, token)
			}
		})
	}
}

// pythonReads checks with the machine's python3 that urlsplit (+ unquote
// where the client decodes) gives back want, as redis-py and kombu do.
func pythonReads(t *testing.T, u string, unquote bool, want string) {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Log("python3 not found: skipping the comparison with Python's urlsplit")
		return
	}
	script := "import sys; from urllib.parse import urlsplit, unquote; p = urlsplit(sys.argv[1]).password; sys.stdout.write(unquote(p) if sys.argv[2] == '1' else p)"
	flag := "0"
	if unquote {
		flag = "1"
	}
	out, err := exec.Command(py, "-c", script, u, flag).Output()
	if err != nil {
		t.Fatalf("python3 could not parse the URL: %v", err)
	}
	if string(out) != want {
		t.Errorf("python reads the password as %q, want %q", out, want)
	}
}

func TestRedisPasswordRefusedRaw(t *testing.T) {
	for _, tok := range []string{"ab#cd", "ab/cd", "ab?cd", "ab[cd", "ab]cd", "ab\tcd", "pässwörd"} {
		_, err := buildRedis(t, map[string]string{"version": "10.1.0.b50633", "redis-endpoint": "cache:6379"}, tok)
		if err == nil {
			t.Errorf("token %q accepted on 10.x", tok)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, "redis-auth") || !strings.Contains(msg, "10.1.0.b50633") || strings.Contains(msg, tok) || !strings.Contains(msg, "rotate") {
			t.Errorf("token %q: error %q must name redis-auth, the version and the fix, never the token", tok, msg)
		}
		// The agent wraps every Build error as a configuration error (exit 3).
		if exitcode.Of(exitcode.ConfigError(err)) != exitcode.Config {
			t.Errorf("not a config error")
		}
	}
	// 25.x encodes: the same tokens are fine.
	if _, err := buildRedis(t, map[string]string{"version": "25.8.0", "redis-endpoint": "cache:6379"}, "ab#cd/[x]"); err != nil {
		t.Errorf("25.x refused an encodable token: %v", err)
	}
}

func TestRedisURLUserinfoPerFamily(t *testing.T) {
	// A password written (percent-encoded) in redash:redis-url follows the same rules.
	env, err := buildRedis(t, map[string]string{"version": "10.1.0.b50633", "redis-url": "rediss://:a%21b%3Ac@cache:6380/1"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "rediss://:a!b:c@cache:6380/1"; env["REDASH_REDIS_URL"] != want {
		t.Errorf("REDASH_REDIS_URL = %q, want %q", env["REDASH_REDIS_URL"], want)
	}
	if _, err := buildRedis(t, map[string]string{"version": "10.1.0.b50633", "redis-url": "rediss://:a%2Fb@cache:6380/1"}, ""); err == nil || !strings.Contains(err.Error(), `"/"`) {
		t.Errorf("a '/' in redis-url's password on 10.x: err = %v", err)
	}
	env, err = buildRedis(t, map[string]string{"version": "8.0.0.b32245", "redis-endpoint": "cache:6379"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if env["REDASH_CELERY_BROKER"] != env["REDASH_REDIS_URL"] {
		t.Errorf("8.x without a password: broker %q != redis %q", env["REDASH_CELERY_BROKER"], env["REDASH_REDIS_URL"])
	}
}
