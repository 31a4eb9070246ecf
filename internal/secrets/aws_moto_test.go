package secrets

import (
	"bytes"
	"context"
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

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// countingAPI counts GetSecretValue calls per secret id, and
// BatchGetSecretValue calls, on their way to the real client.
type countingAPI struct {
	API
	mu      sync.Mutex
	calls   map[string]int
	batches [][]string // the SecretIdList of each batch call
}

func (c *countingAPI) BatchGetSecretValue(ctx context.Context, in *secretsmanager.BatchGetSecretValueInput, opt ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error) {
	c.mu.Lock()
	c.batches = append(c.batches, in.SecretIdList)
	c.mu.Unlock()
	return c.API.BatchGetSecretValue(ctx, in, opt...)
}

func (c *countingAPI) GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, opt ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	c.mu.Lock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[aws.ToString(in.SecretId)]++
	c.mu.Unlock()
	return c.API.GetSecretValue(ctx, in, opt...)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// logBuffer captures every log record, at every level, as text.
func logBuffer() (*slog.Logger, *syncWriter) {
	w := &syncWriter{w: &bytes.Buffer{}}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})), w
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// String is what was logged so far; the fetch goroutines may still write.
func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.String()
}

func mustRef(t *testing.T, name, s string) Ref {
	t.Helper()
	r, err := ParseRef(name, s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestFetchMoto(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)

	cookieV := m.Put(t, "Redash/CookieSecret", "cookie-Zq81Vd0T")
	keyV := m.Put(t, "Redash/SecretKey", "key-4bQ9sLm2")
	redisV := m.Put(t, "Redash/RedisAuth", "redis-7HhPq0aa")
	rdsV := m.Put(t, "Redash/RDS", `{"username":"redash_rw","password":"p@ss:/word#1","engine":"postgres","host":"db.internal","port":5432,"dbname":"redash"}`)
	rdsStrV := m.Put(t, "Redash/RDS-string-port", `{"username":"u2","password":"pw2","host":"h2","port":"6543","dbname":"d2"}`)

	api := &countingAPI{API: m.Client}
	f := &Fetcher{API: api, Region: testenv.MotoRegion}
	refs := []Ref{
		mustRef(t, CookieSecret, "Redash/CookieSecret"),
		mustRef(t, SecretKey, "Redash/SecretKey"),
		mustRef(t, RedisAuth, "Redash/RedisAuth"),
		mustRef(t, DBUser, "Redash/RDS#username"),
		mustRef(t, DBPassword, "Redash/RDS#password"),
		mustRef(t, DBSecret, "Redash/RDS-string-port"),
	}
	got, err := f.Fetch(ctx, refs)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	want := map[string]struct{ value, version string }{
		CookieSecret: {"cookie-Zq81Vd0T", cookieV},
		SecretKey:    {"key-4bQ9sLm2", keyV},
		RedisAuth:    {"redis-7HhPq0aa", redisV},
		DBUser:       {"redash_rw", rdsV},
		DBPassword:   {"p@ss:/word#1", rdsV},
		DBSecret:     {`{"username":"u2","password":"pw2","host":"h2","port":"6543","dbname":"d2"}`, rdsStrV},
	}
	if len(got) != len(want) {
		t.Errorf("got %d secrets, want %d", len(got), len(want))
	}
	for name, w := range want {
		s := got[name]
		if s.Value.Reveal() != w.value || s.VersionID != w.version || s.Ref.Name != name {
			t.Errorf("%s: got value %q version %q ref %+v, want %q %q", name, s.Value.Reveal(), s.VersionID, s.Ref, w.value, w.version)
		}
	}
	// One BatchGetSecretValue for the five distinct ids, no single call.
	if len(api.calls) != 0 || len(api.batches) != 1 || len(api.batches[0]) != 5 {
		t.Errorf("GetSecretValue calls = %v, batch calls = %v; want one batch of the 5 ids", api.calls, api.batches)
	}

	// The RDS shape, with the port as a string and as a number.
	db, err := ParseDBSecret(got[DBSecret])
	if err != nil {
		t.Fatal(err)
	}
	if db.Username != "u2" || db.Password.Reveal() != "pw2" || db.Host != "h2" || db.Port != 6543 || db.DBName != "d2" {
		t.Errorf("string port: got %+v (password %q)", db, db.Password.Reveal())
	}
	whole, err := f.Fetch(ctx, []Ref{mustRef(t, DBSecret, "Redash/RDS")})
	if err != nil {
		t.Fatal(err)
	}
	db, err = ParseDBSecret(whole[DBSecret])
	if err != nil {
		t.Fatal(err)
	}
	if db.Username != "redash_rw" || db.Password.Reveal() != "p@ss:/word#1" || db.Host != "db.internal" || db.Port != 5432 || db.DBName != "redash" {
		t.Errorf("number port: got %+v (password %q)", db, db.Password.Reveal())
	}

	// A new version is picked up with its new VersionId.
	newV := m.Put(t, "Redash/CookieSecret", "cookie-rotated")
	again, err := f.Fetch(ctx, refs[:1])
	if err != nil {
		t.Fatal(err)
	}
	if s := again[CookieSecret]; s.Value.Reveal() != "cookie-rotated" || s.VersionID != newV || newV == cookieV {
		t.Errorf("after rotation: value %q version %q, want cookie-rotated %q (old %q)", s.Value.Reveal(), s.VersionID, newV, cookieV)
	}
}

func TestFetchMotoErrors(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)
	m.Put(t, "json", `{"username":"u","password":"hunter2-Xy","nested":{"a":1},"blank":""}`)
	m.Put(t, "notjson", "plain-Ab12Cd34")

	tests := []struct {
		name string
		ref  Ref
		want []string // substrings of the error text
	}{
		{"not found", mustRef(t, DBPassword, "Redash/RDS/Password"),
			[]string{`secret "db-password" (id "Redash/RDS/Password") not found in region us-east-1: create it, or point tag redash:secret:db-password at the right id`}},
		{"db-secret not found names its tag", mustRef(t, DBSecret, "nope"),
			[]string{`secret "db-secret" (id "nope") not found`, "tag redash:db-secret"}},
		{"missing key", mustRef(t, DBUser, "json#user"),
			[]string{`secret "db-user" (id "json", JSON key "user") has no such JSON key`, `keys present: "blank", "nested", "password", "username"`, "redash:secret:db-user"}},
		{"invalid JSON", mustRef(t, DBUser, "notjson#username"),
			[]string{`secret "db-user" (id "notjson", JSON key "username") is not a JSON object`, `drop "#username"`}},
		{"key holds an object", mustRef(t, DBUser, "json#nested"),
			[]string{`(id "json", JSON key "nested") is not a string or number`}},
		{"key holds an empty string", mustRef(t, DBUser, "json#blank"),
			[]string{`(id "json", JSON key "blank") is empty`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &Fetcher{API: m.Client, Region: testenv.MotoRegion}
			got, err := f.Fetch(ctx, []Ref{tc.ref})
			if err == nil {
				t.Fatalf("Fetch succeeded with %v, want an error", got)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			if !isConfigError(err) {
				t.Errorf("isConfigError(%q) = false, want true", err)
			}
			if got != nil {
				t.Errorf("got secrets %v alongside the error", got)
			}
		})
	}

	t.Run("every failure in one error", func(t *testing.T) {
		f := &Fetcher{API: m.Client, Region: testenv.MotoRegion}
		var refs []Ref
		// Distinct logical names, as a real configuration has.
		names := []string{DBPassword, DBSecret, DBUser, SecretKey}
		for i, tc := range tests[:4] {
			r := tc.ref
			r.Name = names[i]
			refs = append(refs, r)
		}
		refs = append(refs, mustRef(t, CookieSecret, "json#username")) // this one is fine
		_, err := f.Fetch(ctx, refs)
		if err == nil {
			t.Fatal("want an error")
		}
		if n := len(errorsOf(err)); n != 4 {
			t.Errorf("error has %d parts, want 4:\n%v", n, err)
		}
		for _, r := range refs[:4] {
			if !strings.Contains(err.Error(), fmt.Sprintf("secret %q (id %q", r.Name, r.SecretID)) {
				t.Errorf("error does not name %s %s:\n%v", r.Name, r, err)
			}
		}
		if strings.Contains(err.Error(), CookieSecret) {
			t.Errorf("error names the secret that was fetched fine:\n%v", err)
		}
	})
}

// TestNoSecretInErrorsOrLogs fetches good and broken secrets through
// NewAWS (the production constructor, pointed at moto the standard way) and
// fails if any value, or any 6-character piece of one, shows up in an error,
// a log line or the printed results.
func TestNoSecretInErrorsOrLogs(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)
	setAWSEnv(t, m.Endpoint)

	values := []string{"GoodPlainQ7w3E9r1T5y", "JsonPassZ8x6C4v2B0n", "JsonOtherM1k3J5h7G9", "NotJsonL2p4O6i8U0y{"}
	m.Put(t, "good", values[0])
	m.Put(t, "blob", fmt.Sprintf(`{"password":%q,"other":%q}`, values[1], values[2]))
	m.Put(t, "broken", values[3])

	logger, logs := logBuffer()
	f, err := NewAWS(ctx, testenv.MotoRegion, logger)
	if err != nil {
		t.Fatal(err)
	}
	good, err := f.Fetch(ctx, []Ref{mustRef(t, CookieSecret, "good"), mustRef(t, DBPassword, "blob#password")})
	if err != nil {
		t.Fatal(err)
	}
	if good[CookieSecret].Value.Reveal() != values[0] || good[DBPassword].Value.Reveal() != values[1] {
		t.Fatalf("NewAWS through AWS_ENDPOINT_URL_SECRETS_MANAGER fetched wrong values")
	}
	logger.Info("printing results", "secrets", good, "one", good[DBPassword])
	printed := fmt.Sprintf("%v %+v %#v", good, good, good)

	_, err = f.Fetch(ctx, []Ref{
		mustRef(t, DBUser, "blob#username"), // missing key: the error lists key names only
		mustRef(t, SecretKey, "broken#k"),   // not JSON: the decoder's error would quote a character
		mustRef(t, RedisAuth, "missing"),
	})
	if err == nil {
		t.Fatal("want an error")
	}
	logger.Error("fetch failed", "error", err)
	if !strings.Contains(logs.String(), "fetched secret") {
		t.Errorf("no fetch was logged:\n%s", logs)
	}

	for _, out := range []struct{ what, text string }{{"error", err.Error()}, {"log", logs.String()}, {"printed results", printed}} {
		for _, v := range values {
			for i := 0; i+6 <= len(v); i++ {
				if strings.Contains(out.text, v[i:i+6]) {
					t.Errorf("%s contains %q, a piece of a secret value:\n%s", out.what, v[i:i+6], out.text)
					break
				}
			}
		}
	}
}

// setAWSEnv points the default AWS config at endpoint with static test
// credentials, and keeps the host's own AWS files and IMDS out of it.
func setAWSEnv(t *testing.T, endpoint string) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ENDPOINT_URL_SECRETS_MANAGER": endpoint,
		"AWS_ACCESS_KEY_ID":                testenv.MotoAccessKey,
		"AWS_SECRET_ACCESS_KEY":            testenv.MotoSecretKey,
		"AWS_SESSION_TOKEN":                "",
		"AWS_PROFILE":                      "",
		"AWS_REGION":                       "",
		"AWS_MAX_ATTEMPTS":                 "",
		"AWS_RETRY_MODE":                   "",
		"AWS_CONFIG_FILE":                  filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE":      filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED":        "true",
	} {
		t.Setenv(k, v)
		if v == "" {
			os.Unsetenv(k)
		}
	}
}

// errorsOf flattens a joined error into its parts.
func errorsOf(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	if err == nil {
		return nil
	}
	return []error{err}
}
