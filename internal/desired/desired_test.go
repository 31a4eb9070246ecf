package desired

import (
	"net/url"
	"strconv"
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

// TestDBSecretHostChecked: the RDS-shaped secret's host goes into
// REDASH_DATABASE_URL like redash:db-endpoint's, so it is held to the same
// rule; the error names the key, never the secret's content.
func TestDBSecretHostChecked(t *testing.T) {
	cases := []struct {
		name     string
		host     string
		endpoint string // redash:db-endpoint, which replaces the JSON's host
		wantErr  bool
	}{
		{name: "cluster endpoint", host: "redash.cluster-abc.us-east-1.rds.amazonaws.com"},
		{name: "IPv6 literal", host: "2001:db8::5"},
		{name: "host rewriting user and database", host: "evil@db/x?y", wantErr: true},
		{name: "host with space", host: "db host", wantErr: true},
		{name: "host with fragment", host: "db#frag", wantErr: true},
		{name: "IPv6 in brackets", host: "[2001:db8::5]", wantErr: true},
		{name: "bad host replaced by db-endpoint", host: "evil@db/x?y", endpoint: "db:5432"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]string{"db-secret": "rds!cluster", "redis-endpoint": "cache:6379"}
			if tc.endpoint != "" {
				vals["db-endpoint"] = tc.endpoint
			}
			cfg := resolve(t, vals)
			got := seed("ignored", "ignored")
			delete(got, secrets.DBUser)
			delete(got, secrets.DBPassword)
			got[secrets.DBSecret] = secret(secrets.DBSecret, `{"username":"admin","password":"Pw-Secret-1","host":`+strconv.Quote(tc.host)+`,"port":5432}`)
			st, err := Build(cfg, got, "/opt/redash")
			if !tc.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				if u, err := url.Parse(st.Env["REDASH_DATABASE_URL"]); err != nil || u.User.Username() != "admin" || u.Path != "/admin" {
					t.Errorf("url %q does not parse back to user admin, database admin: %v", st.Env["REDASH_DATABASE_URL"], err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; url = %q", st.Env["REDASH_DATABASE_URL"])
			}
			for _, w := range []string{`secret "db-secret"`, `(id "x/db-secret")`, `JSON key "host"`, "redash:db-endpoint"} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), tc.host) || strings.Contains(err.Error(), "Pw-Secret") {
				t.Errorf("error shows the secret's content: %v", err)
			}
		})
	}
}

// TestSecretEnv: a redash:secret-env: value reaches the env file under its
// variable's name.
func TestSecretEnv(t *testing.T) {
	cfg := resolve(t, map[string]string{"db-endpoint": "db:5432", "redis-endpoint": "cache:6379", "secret-env:REDASH_MAIL_PASSWORD": "Redash/Mail#password"})
	got := seed("u", "p")
	got["env:REDASH_MAIL_PASSWORD"] = secret("env:REDASH_MAIL_PASSWORD", "m@il-s3cret")
	st, err := Build(cfg, got, "/opt/redash")
	if err != nil {
		t.Fatal(err)
	}
	if st.Env["REDASH_MAIL_PASSWORD"] != "m@il-s3cret" {
		t.Errorf("REDASH_MAIL_PASSWORD = %q", st.Env["REDASH_MAIL_PASSWORD"])
	}
	delete(got, "env:REDASH_MAIL_PASSWORD")
	if _, err := Build(cfg, got, "/opt/redash"); err == nil || !strings.Contains(err.Error(), "env:REDASH_MAIL_PASSWORD") {
		t.Errorf("missing secret-env value: err = %v", err)
	}
}
