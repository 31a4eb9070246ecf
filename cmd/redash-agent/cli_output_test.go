package main

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

var snakeKey = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// jsonKeys collects every object key in a JSON document.
func jsonKeys(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case map[string]any:
			for k, v := range x {
				keys = append(keys, k)
				walk(v)
			}
		case []any:
			for _, v := range x {
				walk(v)
			}
		}
	}
	walk(doc)
	return keys
}

// TestJSONKeysAreSnakeCase: every --json output uses one key style, the
// lowercase snake_case of config, doctor and up (status once printed
// HashCurrent next to services).
func TestJSONKeysAreSnakeCase(t *testing.T) {
	st := agent.StatusReport{Database: "current", Services: []engine.ServiceStatus{{
		Service: "server", Container: "redash-server-1", State: "running", Image: "redash/redash:25.8.0", HashCurrent: true,
	}}}
	mig := migrate.Result{Before: "empty", After: "current", Ran: "create_db", Head: "rev1"}
	outputs := map[string]any{
		"status":  statusJSON(st),
		"migrate": migrationJSON(mig),
		"up":      map[string]any{"env_changed": true, "migration": migrationJSON(mig)},
		"config":  configRows(config.Config{Provider: "aws", Project: "redash", Origins: map[string]config.Source{}}),
		"images":  []engine.ImageUse{{Ref: "r", Key: "image", Services: []string{"server"}}},
	}
	for name, v := range outputs {
		keys := jsonKeys(t, v)
		if len(keys) == 0 {
			t.Errorf("%s: no keys", name)
		}
		for _, k := range keys {
			if !snakeKey.MatchString(k) {
				t.Errorf("%s --json has key %q, want lowercase snake_case", name, k)
			}
		}
	}
	var got statusReportJSON
	b, _ := json.Marshal(statusJSON(st))
	if err := json.Unmarshal(b, &got); err != nil || !got.Services[0].ConfigCurrent {
		t.Errorf("status JSON lost config_current: %s", b)
	}
}

// TestConfigRowsHaveNoEmptyRows: `config` lists every key that has a value
// and no row without one; keys that do not apply are left out unless set.
func TestConfigRowsHaveNoEmptyRows(t *testing.T) {
	cfg := config.Config{
		Provider: "aws", Project: "redash", Version: "25.8.0", Image: "redash/redash:25.8.0",
		NginxImage: "redash/nginx:latest", PostgresImage: "postgres:15-alpine", RedisImage: "redis:7-alpine",
		Role: "all", Nginx: false, SecretsPrefix: "Redash/", DBEndpoint: "db:5432", RedisEndpoint: "redis:6379",
		ServerPort: 5000, NginxPort: 80, Refresh: 5 * time.Minute,
		Secrets: map[string]secrets.Ref{"db-password": {Name: "db-password", SecretID: "Redash/RDS/Password"}},
		Env:     map[string]string{"REDASH_X": "1"},
		Workers: map[string]int{"worker": 2},
		Origins: map[string]config.Source{"project": config.SourceDefault, "redis-image": config.SourceFile},
	}
	got := map[string]string{}
	for _, r := range configRows(cfg) {
		if r.Value == "" {
			t.Errorf("row %q has no value", r.Key)
		}
		got[r.Key] = r.Value
	}
	for _, want := range []string{"provider", "project", "version", "image", "role", "nginx", "secrets-prefix",
		"db-endpoint", "redis-endpoint", "server-port", "refresh", "secret:db-password", "env:REDASH_X", "workers:worker",
		"redis-image"} { // set in config.yaml, so listed although provider aws does not use it
		if _, ok := got[want]; !ok {
			t.Errorf("config lacks %q: %v", want, got)
		}
	}
	for _, absent := range []string{"nginx-image", "nginx-port", "postgres-image", "db-name", "redis-url", "web-workers", "log-group", "region"} {
		if _, ok := got[absent]; ok {
			t.Errorf("config lists %q, which does not apply or has no value", absent)
		}
	}
}

// TestREADMEListsEveryGlobalFlagAndConfigKey: every global flag is in the
// README, and `config` has a row for every plain key of its tag table
// (db-secret shows with the secrets).
func TestREADMEListsEveryGlobalFlagAndConfigKey(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	var out, errb bytes.Buffer
	if code := Main([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help: exit %d %s", code, errb.String())
	}
	flagRE := regexp.MustCompile(`(?m)^\s+(?:-\w, )?(--[a-z-]+)`)
	flags := flagRE.FindAllStringSubmatch(out.String(), -1)
	if len(flags) < 8 {
		t.Fatalf("parsed %d flags from --help:\n%s", len(flags), out.String())
	}
	for _, f := range flags {
		if f[1] == "--help" {
			continue
		}
		if !strings.Contains(readme, "`"+f[1]) {
			t.Errorf("README does not list the global flag %s", f[1])
		}
	}

	listed := map[string]bool{}
	for _, k := range configKeys {
		listed[k] = true
		if !config.KnownKey(k) {
			t.Errorf("config lists %q, which the agent does not accept", k)
		}
	}
	table := readme[strings.Index(readme, "| tag | meaning | default |"):]
	table = table[:strings.Index(table, "\n\n")]
	for _, m := range regexp.MustCompile("`redash:([a-z-]+)`").FindAllStringSubmatch(table, -1) {
		if k := m[1]; !listed[k] && k != "db-secret" {
			t.Errorf("config has no row for %q, a key of the README's table", k)
		}
	}
}
