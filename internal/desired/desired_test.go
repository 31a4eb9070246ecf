package desired

import (
	"net/url"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

func resolve(t *testing.T, vals map[string]string) config.Config {
	t.Helper()
	c, err := config.Resolve(config.Defaults(), config.Layer{Source: config.SourceTag, Values: vals})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secret(name, v string) secrets.Secret {
	return secrets.Secret{Ref: secrets.Ref{Name: name, SecretID: "x/" + name}, Value: secrets.NewValue(v), VersionID: "v1"}
}

func seed(user, pass string) map[string]secrets.Secret {
	return map[string]secrets.Secret{
		secrets.DBUser:       secret(secrets.DBUser, user),
		secrets.DBPassword:   secret(secrets.DBPassword, pass),
		secrets.CookieSecret: secret(secrets.CookieSecret, "cookie"),
		secrets.SecretKey:    secret(secrets.SecretKey, "key"),
	}
}

func TestDatabaseURLEncoding(t *testing.T) {
	cases := []struct{ name, user, pass, want string }{
		{"plain", "redash", "s3cret", "postgresql://redash:s3cret@db:5432/redash"},
		{"reserved characters", "red@sh", "p@ss:w/rd?#%+ $", "postgresql://red%40sh:p%40ss%3Aw%2Frd%3F%23%25%2B%20%24@db:5432/red%40sh"},
		{"unicode", "u", "pässwörd", "postgresql://u:p%C3%A4ssw%C3%B6rd@db:5432/u"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := resolve(t, map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379"})
			st, err := Build(cfg, seed(tc.user, tc.pass), "/opt/redash")
			if err != nil {
				t.Fatal(err)
			}
			got := st.Env["REDASH_DATABASE_URL"]
			if got != tc.want {
				t.Errorf("url = %q, want %q", got, tc.want)
			}
			// Any RFC 3986 parser gets the exact credentials back.
			u, err := url.Parse(got)
			if err != nil {
				t.Fatal(err)
			}
			if p, _ := u.User.Password(); p != tc.pass || u.User.Username() != tc.user {
				t.Errorf("parsed back user=%q pass=%q", u.User.Username(), p)
			}
		})
	}
}

func TestRedisURL(t *testing.T) {
	cases := []struct {
		name string
		vals map[string]string
		auth string
		want string
	}{
		{"endpoint", map[string]string{"redis-endpoint": "cache:6379"}, "", "redis://cache:6379/0"},
		{"endpoint with auth", map[string]string{"redis-endpoint": "cache:6379", "secret:redis-auth": "Redis/Auth"}, "a@b/c", "redis://:a%40b%2Fc@cache:6379/0"},
		{"url", map[string]string{"redis-url": "rediss://cache:6380/1"}, "", "rediss://cache:6380/1"},
		{"url with auth", map[string]string{"redis-url": "rediss://cache:6380/1", "secret:redis-auth": "Redis/Auth"}, "tok", "rediss://:tok@cache:6380/1"},
		{"auth replaces url credentials", map[string]string{"redis-url": "rediss://old@cache:6380/1", "secret:redis-auth": "Redis/Auth"}, "tok", "rediss://:tok@cache:6380/1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.vals["db-endpoint"] = "db:5432"
			got := seed("u", "p")
			if tc.auth != "" {
				got[secrets.RedisAuth] = secret(secrets.RedisAuth, tc.auth)
			}
			st, err := Build(resolve(t, tc.vals), got, "/opt/redash")
			if err != nil {
				t.Fatal(err)
			}
			if st.Env["REDASH_REDIS_URL"] != tc.want {
				t.Errorf("REDASH_REDIS_URL = %q, want %q", st.Env["REDASH_REDIS_URL"], tc.want)
			}
		})
	}
}

func TestDBSecret(t *testing.T) {
	cfg := resolve(t, map[string]string{"db-secret": "rds!cluster", "redis-endpoint": "cache:6379", "db-name": "analytics"})
	got := seed("ignored", "ignored")
	delete(got, secrets.DBUser)
	delete(got, secrets.DBPassword)
	got[secrets.DBSecret] = secret(secrets.DBSecret, `{"username":"admin","password":"pw","host":"aurora.internal","port":5433,"dbname":"postgres","engine":"postgres"}`)
	st, err := Build(cfg, got, "/opt/redash")
	if err != nil {
		t.Fatal(err)
	}
	// db-name from the tag wins over the JSON's dbname.
	if want := "postgresql://admin:pw@aurora.internal:5433/analytics"; st.Env["REDASH_DATABASE_URL"] != want {
		t.Errorf("url = %q, want %q", st.Env["REDASH_DATABASE_URL"], want)
	}
	if st.DB.Host != "aurora.internal" || st.DB.Port != 5433 || st.DB.User != "admin" {
		t.Errorf("db = %+v", st.DB)
	}
}

func TestMissingSecretIsNamed(t *testing.T) {
	cfg := resolve(t, map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379"})
	got := seed("u", "hunter2")
	delete(got, secrets.CookieSecret)
	_, err := Build(cfg, got, "/opt/redash")
	if err == nil || !strings.Contains(err.Error(), `"cookie-secret"`) {
		t.Fatalf("err = %v, want it to name cookie-secret", err)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks a secret: %v", err)
	}
}

func TestLocalProvider(t *testing.T) {
	cfg, err := config.Resolve(config.Defaults(), config.Layer{Source: config.SourceFile, Values: map[string]string{"provider": "local"}})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]secrets.Secret{
		secrets.DBPassword:   secret(secrets.DBPassword, "pg"),
		secrets.CookieSecret: secret(secrets.CookieSecret, "c"),
		secrets.SecretKey:    secret(secrets.SecretKey, "k"),
	}
	st, err := Build(cfg, got, "/opt/redash")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Spec.Local {
		t.Error("local provider without endpoints must bundle postgres and redis")
	}
	want := map[string]string{
		"REDASH_DATABASE_URL": "postgresql://postgres:pg@postgres:5432/postgres",
		"REDASH_REDIS_URL":    "redis://redis:6379/0",
		"POSTGRES_PASSWORD":   "pg",
	}
	for k, v := range want {
		if st.Env[k] != v {
			t.Errorf("%s = %q, want %q", k, st.Env[k], v)
		}
	}
}

func TestExtraEnvAndSpec(t *testing.T) {
	cfg := resolve(t, map[string]string{
		"db-endpoint": "db:5432", "redis-endpoint": "cache:6379",
		"env:REDASH_FEATURE_EXTENDED_ALERT_OPTIONS": "true", "role": "web", "workers:adhoc_worker": "4",
	})
	st, err := Build(cfg, seed("u", "p"), "/srv/redash")
	if err != nil {
		t.Fatal(err)
	}
	if st.Env["REDASH_FEATURE_EXTENDED_ALERT_OPTIONS"] != "true" {
		t.Errorf("extra env missing: %v", st.Env)
	}
	if st.Spec.Role != "web" || st.Spec.Dir != "/srv/redash" || st.Spec.Workers["adhoc_worker"] != 4 || st.Spec.Local {
		t.Errorf("spec = %+v", st.Spec)
	}
}
