package packaging

import (
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/config"
)

// settingLine matches a commented-out setting ("#key: v" or "#  NAME: v"),
// as opposed to prose ("# text").
var settingLine = regexp.MustCompile(`^#(\S|  )`)

func uncomment(text string) string {
	var b strings.Builder
	for _, line := range strings.Split(text, "\n") {
		if settingLine.MatchString(line) {
			line = line[1:]
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

func TestConfigAsShippedSetsNothing(t *testing.T) {
	got, err := config.ParseFile([]byte(readFile(t, "config.yaml")))
	if err != nil {
		t.Fatalf("the shipped config.yaml does not parse: %v", err)
	}
	if len(got) != 0 {
		t.Errorf("the shipped config.yaml sets %v; every line must be commented out so tags decide", got)
	}
}

// TestConfigDocumentsEveryKey uncomments every example and checks that the
// agent's own parser accepts them, that each is a key it knows, and that
// the tag table of docs/design.md is covered.
func TestConfigDocumentsEveryKey(t *testing.T) {
	got, err := config.ParseFile([]byte(uncomment(readFile(t, "config.yaml"))))
	if err != nil {
		t.Fatalf("config.yaml with every example uncommented does not parse: %v", err)
	}
	var keys []string
	for k := range got {
		keys = append(keys, k)
		if !config.KnownKey(k) {
			t.Errorf("config.yaml documents %q, which the agent does not know", k)
		}
	}
	sort.Strings(keys)
	t.Logf("documented keys: %s", strings.Join(keys, " "))

	// The tag table of docs/design.md; prefixed families need one example each.
	design := []string{
		"version", "image", "role", "secrets-prefix", "db-secret", "db-endpoint", "db-name",
		"redis-endpoint", "redis-url", "web-workers", "log-group", "nginx",
		"secret:db-user", "secret:db-password", "secret:cookie-secret", "secret:secret-key", "secret:redis-auth",
		"env:", "workers:",
	}
	for _, want := range design {
		ok := slices.ContainsFunc(keys, func(k string) bool {
			return k == want || strings.HasSuffix(want, ":") && strings.HasPrefix(k, want)
		})
		if !ok {
			t.Errorf("config.yaml does not document redash:%s from the tag table of docs/design.md", want)
		}
	}
}
