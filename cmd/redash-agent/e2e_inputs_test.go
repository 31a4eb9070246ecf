package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRenderRefusesBadInputs: through the built binary, against
// ec2-metadata-mock and moto, each input that used to be accepted (and
// changed what Redash connects to, or silently dropped settings) ends with
// exit 3, a message naming the key and the fix, and the previous env and
// compose files byte-identical.
func TestRenderRefusesBadInputs(t *testing.T) {
	f := newFixture(t, seedTags)
	if _, stderr, code := f.run("render"); code != 0 {
		t.Fatalf("initial render failed: %s", stderr)
	}
	oldEnv := mustRead(t, filepath.Join(f.dir, "env"))
	oldCompose := mustRead(t, filepath.Join(f.dir, "docker-compose.yml"))

	f.moto.Put(t, "Redash/Blank", " \n")
	f.moto.Put(t, "Redash/RDSBadHost", `{"username":"u","password":"Pw-Secret-1","host":"evil@db/x?y","port":5432}`)
	const redisOnly = "redis-endpoint: redash.abc123.ng.0001.use1.cache.amazonaws.com:6379\n"

	cases := []struct {
		name   string
		config string // config.yaml content; seedConfigYAML if empty
		args   []string
		want   []string
		hidden string // content of a secret that must not be shown
	}{
		{name: "db host rewriting the URL", config: strings.Replace(seedConfigYAML, "aurora.cluster-abc.us-east-1.rds.amazonaws.com:5432", "evil@db/x?y:5432", 1),
			want: []string{"redash:db-endpoint", `"evil@db/x?y"`, "not a host name or IP address", "write host:port"}},
		{name: "redis url without host", config: "db-endpoint: db.internal:5432\nredis-url: redis://\n",
			want: []string{"redash:redis-url", "names no host"}},
		{name: "IPv6 without brackets", args: []string{"--set", "db-endpoint=2001:db8::1:5432"},
			want: []string{"redash:db-endpoint", "[2001:db8::1]:5432"}},
		{name: "version naming no release", args: []string{"--set", "version=10"},
			want: []string{"redash:version", `"10" is not a Redash version tag`}},
		{name: "version below 8", args: []string{"--set", "version=7.0.0"},
			want: []string{"redash:version", "older than Redash 8"}},
		{name: "hex port retyped by YAML", config: seedConfigYAML + "server-port: 0x1F90\n",
			want: []string{"redash:server-port", `"0x1F90" is not a TCP port`}},
		{name: "second YAML document", config: seedConfigYAML + "---\nrole: web\n",
			want: []string{"second YAML document", "one document"}},
		{name: "env routing RQ around the agent's Redis URL", args: []string{"--set", "env:RQ_REDIS_URL=redis://elsewhere:6379/0"},
			want: []string{"redash:env:RQ_REDIS_URL", "redash:redis-endpoint"}},
		{name: "explicit config file missing", args: []string{"--config", filepath.Join(t.TempDir(), "typo.yaml")},
			want: []string{"typo.yaml", "--config", "does not exist"}},
		{name: "whitespace-only secret", args: []string{"--set", "secret:secret-key=Redash/Blank"},
			want: []string{`secret "secret-key"`, "Redash/Blank", "only whitespace"}},
		{name: "db-secret host rewriting the URL", config: redisOnly, args: []string{"--set", "db-secret=Redash/RDSBadHost"},
			want: []string{`secret "db-secret"`, "Redash/RDSBadHost", `JSON key "host"`, "redash:db-endpoint"}, hidden: "evil@db"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			content := seedConfigYAML
			if tc.config != "" {
				content = tc.config
			}
			if err := os.WriteFile(f.config, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			_, stderr, code := f.run(append([]string{"render"}, tc.args...)...)
			if code != exitConfigErr {
				t.Errorf("exit code %d, want %d\nstderr: %s", code, exitConfigErr, stderr)
			}
			for _, w := range append([]string{"configuration error"}, tc.want...) {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "Pw-Secret") || tc.hidden != "" && strings.Contains(stderr, tc.hidden) {
				t.Errorf("stderr shows a secret's content:\n%s", stderr)
			}
			if got := mustRead(t, filepath.Join(f.dir, "env")); !bytes.Equal(got, oldEnv) {
				t.Error("the previous env file was changed by a refused render")
			}
			if got := mustRead(t, filepath.Join(f.dir, "docker-compose.yml")); !bytes.Equal(got, oldCompose) {
				t.Error("the previous compose file was changed by a refused render")
			}
		})
	}
	assertNoSecrets(t, f.outputs.Bytes(), "the binary's output")
}
