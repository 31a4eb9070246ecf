package config

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// TestSecretEnvRef: redash:secret-env:<VAR> becomes a secret reference
// named env:<VAR>, from a tag, config.yaml or --set alike, and never an
// entry of Env (which `config` prints in plain text).
func TestSecretEnvRef(t *testing.T) {
	for _, src := range []Source{SourceTag, SourceFile, SourceFlag} {
		tags := minimal()
		extra := Layer{Source: src, Values: map[string]string{"secret-env:REDASH_LDAP_BIND_PASSWORD": "Redash/Ldap#password"}}
		c, err := Resolve(Defaults(), tags, extra)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		want := secrets.Ref{Name: "env:REDASH_LDAP_BIND_PASSWORD", SecretID: "Redash/Ldap", JSONKey: "password"}
		if got := c.Secrets[want.Name]; got != want {
			t.Errorf("%s: ref = %+v, want %+v", src, got, want)
		}
		if _, inEnv := c.Env["REDASH_LDAP_BIND_PASSWORD"]; inEnv {
			t.Errorf("%s: the secret-env reference landed in Env", src)
		}
		if c.Origins["secret-env:REDASH_LDAP_BIND_PASSWORD"] != src {
			t.Errorf("%s: origin = %q", src, c.Origins["secret-env:REDASH_LDAP_BIND_PASSWORD"])
		}
	}
}

// TestSecretEnvRefused: every bad secret-env key is a configuration error
// (exit 3) that names the key and says what to do.
func TestSecretEnvRefused(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
		key  string
		want string // part of the message: the fix
	}{
		{"invalid name", map[string]string{"secret-env:1BAD": "Redash/X"}, "secret-env:1BAD", "not an environment variable name"},
		{"reserved url", map[string]string{"secret-env:REDASH_DATABASE_URL": "Redash/X"}, "secret-env:REDASH_DATABASE_URL", "redash:db-endpoint"},
		{"agent's secret key", map[string]string{"secret-env:REDASH_SECRET_KEY": "Redash/X"}, "secret-env:REDASH_SECRET_KEY", "redash:secret:secret-key"},
		{"agent's cookie secret", map[string]string{"secret-env:REDASH_COOKIE_SECRET": "Redash/X"}, "secret-env:REDASH_COOKIE_SECRET", "written by the agent"},
		{"agent's redis url", map[string]string{"secret-env:REDASH_REDIS_URL": "Redash/X"}, "secret-env:REDASH_REDIS_URL", "redash:redis-endpoint"},
		{"agent-set setting", map[string]string{"secret-env:REDASH_LOG_LEVEL": "Redash/X"}, "secret-env:REDASH_LOG_LEVEL", "set redash:env:REDASH_LOG_LEVEL"},
		{"also env", map[string]string{"secret-env:REDASH_MAIL_PASSWORD": "Redash/Mail", "env:REDASH_MAIL_PASSWORD": "plain"}, "secret-env:REDASH_MAIL_PASSWORD", "remove redash:env:REDASH_MAIL_PASSWORD"},
		{"empty id", map[string]string{"secret-env:REDASH_MAIL_PASSWORD": "#key"}, "secret-env:REDASH_MAIL_PASSWORD", "empty secret id"},
		{"local provider", map[string]string{"provider": "local", "secret-env:REDASH_MAIL_PASSWORD": "Redash/Mail"}, "secret-env:REDASH_MAIL_PASSWORD", "provider local has no Secrets Manager"},
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
				t.Fatalf("err = %v, want a *config.Error", err)
			}
			if exitcode.Of(err) != exitcode.Config {
				t.Errorf("exit status %d, want %d", exitcode.Of(err), exitcode.Config)
			}
			found := false
			for _, p := range ce.Problems {
				if p.Key == tc.key && strings.Contains(p.Msg, tc.want) {
					found = true
				}
			}
			if !found {
				t.Errorf("no problem for %s containing %q in:\n%v", tc.key, tc.want, err)
			}
		})
	}
}

func TestSecretPoll(t *testing.T) {
	c, err := Resolve(Defaults(), minimal())
	if err != nil {
		t.Fatal(err)
	}
	if c.SecretPoll != 10*time.Second {
		t.Errorf("default secret-poll = %v, want 10s", c.SecretPoll)
	}
	for v, want := range map[string]time.Duration{"0": 0, "0s": 0, "30s": 30 * time.Second, "1h": time.Hour} {
		tags := minimal()
		tags.Values["secret-poll"] = v
		c, err := Resolve(Defaults(), tags)
		if err != nil || c.SecretPoll != want {
			t.Errorf("secret-poll %q = %v, %v; want %v", v, c.SecretPoll, err, want)
		}
	}
	for _, v := range []string{"10", "500ms", "2h", "-5s", "soon"} {
		tags := minimal()
		tags.Values["secret-poll"] = v
		if _, err := Resolve(Defaults(), tags); err == nil || !strings.Contains(err.Error(), "secret-poll") {
			t.Errorf("secret-poll %q: err = %v, want a problem with secret-poll", v, err)
		}
	}
}
