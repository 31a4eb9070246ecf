package config

import (
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// readmeTagKeys parses the README's tag table: every `redash:KEY` in the
// first column of a row (a row may name two keys, "`a` / `b`" or "`a`, `b`";
// `redash:secret:<name>` is the prefix key "secret:").
func readmeTagKeys(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("reading the README: %v", err)
	}
	text := string(b)
	start := strings.Index(text, "| tag | meaning | default |")
	if start < 0 {
		t.Fatal("README has no tag table (header `| tag | meaning | default |`)")
	}
	keyRE := regexp.MustCompile("`redash:([a-z-]+:?)(?:<[^>]*>)?`")
	keys := map[string]bool{}
	for _, line := range strings.Split(text[start:], "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		first := strings.SplitN(strings.TrimPrefix(line, "|"), "|", 2)[0]
		for _, m := range keyRE.FindAllStringSubmatch(first, -1) {
			keys[m[1]] = true
		}
	}
	return keys
}

// TestREADMETableListsEveryKey: the README's tag table and the keys the
// agent accepts are the same set, so the README cannot fall behind the code
// (nor document a key the code refuses).
func TestREADMETableListsEveryKey(t *testing.T) {
	inREADME := readmeTagKeys(t)
	if len(inREADME) < 10 {
		t.Fatalf("parsed only %d keys from the README's table: %v", len(inREADME), inREADME)
	}
	code := map[string]bool{}
	for k := range plainKeys {
		code[k] = true
	}
	for _, p := range prefixKeys {
		code[p] = true
	}
	var missing, unknown []string
	for k := range code {
		if !inREADME[k] {
			missing = append(missing, k)
		}
	}
	for k := range inREADME {
		if !code[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(unknown)
	if len(missing) > 0 {
		t.Errorf("keys the agent accepts but the README's tag table lacks: %v (add a row to README.md)", missing)
	}
	if len(unknown) > 0 {
		t.Errorf("keys in the README's tag table that the agent does not accept: %v", unknown)
	}
}

// TestREADMETagKeyCharacters: the README states the characters tagKeyRE
// allows.
func TestREADMETagKeyCharacters(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const want = "Tag keys may use only letters, digits, spaces and `+ - = . , _ : @`"
	if !strings.Contains(string(b), want) {
		t.Errorf("README lacks %q", want)
	}
	for _, k := range []string{"redash:env:A B", "redash:a+b=c.d,e_f:g@h", "redash:Z9"} {
		if !tagKeyRE.MatchString(k) {
			t.Errorf("tagKeyRE refuses %q, which the README allows", k)
		}
	}
	for _, k := range []string{"redash:a/b", "redash:a#b", "redash:a*b"} {
		if tagKeyRE.MatchString(k) {
			t.Errorf("tagKeyRE accepts %q, which the README does not allow", k)
		}
	}
}
