package secrets

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

var (
	baseRefs = []Ref{{Name: CookieSecret}, {Name: SecretKey}, {Name: DBUser}, {Name: DBPassword}}
	alnum32  = regexp.MustCompile(`^[A-Za-z0-9]{32}$`)
)

func TestLocalStoreGeneratesOnceAndKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "local-secrets.json") // state/ does not exist yet
	first, err := (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, r := range baseRefs {
		s := first[r.Name]
		switch {
		case r.Name == DBUser && s.Value.Reveal() != "redash":
			t.Errorf("db-user = %q, want the fixed role name redash", s.Value.Reveal())
		case r.Name != DBUser && !alnum32.MatchString(s.Value.Reveal()):
			t.Errorf("%s = %q, want 32 alphanumerics", r.Name, s.Value.Reveal())
		}
		if s.VersionID == "" || seen[s.Value.Reveal()] || seen[s.VersionID] {
			t.Errorf("%s: empty or repeated value or version id %q", r.Name, s.VersionID)
		}
		seen[s.Value.Reveal()], seen[s.VersionID] = true, true
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode = %v, want 0600", st.Mode().Perm())
	}
	before, _ := os.ReadFile(path)

	// Second call, as after a reboot: a fresh store, same values and
	// versions, file untouched.
	second, err := (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range baseRefs {
		if a, b := first[r.Name], second[r.Name]; a.Value.Reveal() != b.Value.Reveal() || a.VersionID != b.VersionID {
			t.Errorf("%s changed between calls", r.Name)
		}
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Errorf("file rewritten without a new secret")
	}

	// A secret added later is generated; the old ones keep their values.
	third, err := (&LocalStore{Path: path}).Fetch(context.Background(), append([]Ref{{Name: RedisAuth}}, baseRefs[:2]...))
	if err != nil {
		t.Fatal(err)
	}
	if !alnum32.MatchString(third[RedisAuth].Value.Reveal()) {
		t.Errorf("redis-auth = %q", third[RedisAuth].Value.Reveal())
	}
	for _, r := range baseRefs[:2] {
		if third[r.Name].Value.Reveal() != first[r.Name].Value.Reveal() || third[r.Name].VersionID != first[r.Name].VersionID {
			t.Errorf("%s changed when redis-auth was added", r.Name)
		}
	}
	fourth, err := (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs)
	if err != nil {
		t.Fatal(err)
	}
	if fourth[DBPassword].Value.Reveal() != first[DBPassword].Value.Reveal() {
		t.Errorf("db-password lost after a fetch that did not ask for it")
	}

	// Someone loosened the mode: the next fetch tightens it.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode after fetch = %v, want 0600", st.Mode().Perm())
	}
}

// TestLocalStoreConcurrentFirstFetch: agent commands racing on a fresh host
// must agree on the first values (the file lock), not each hand out its own.
func TestLocalStoreConcurrentFirstFetch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "local-secrets.json")
	const n = 6
	results := make([]map[string]Secret, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i], errs[i] = (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("fetch %d: %v", i, errs[i])
		}
		if results[i][DBPassword].Value.Reveal() != results[0][DBPassword].Value.Reveal() {
			t.Errorf("fetch %d got a different db-password than fetch 0", i)
		}
	}
	final, err := (&LocalStore{Path: path}).Fetch(context.Background(), baseRefs)
	if err != nil {
		t.Fatal(err)
	}
	if final[DBPassword].Value.Reveal() != results[0][DBPassword].Value.Reveal() {
		t.Errorf("the saved db-password is not the one handed out")
	}
}

func TestLocalStoreErrors(t *testing.T) {
	tests := []struct {
		name    string
		content string // existing file; "" for none
		refs    []Ref
		want    string
	}{
		{"db-secret unsupported", "", []Ref{{Name: DBSecret}}, `secret "db-secret" is not supported by the local provider`},
		{"duplicate name", "", []Ref{{Name: SecretKey}, {Name: SecretKey}}, `secret "secret-key" is referenced twice`},
		{"corrupt file", `{"secrets": {"secret-key": {"value": "Pq9Zk2Lm`, []Ref{{Name: SecretKey}}, "not valid JSON at byte"},
		{"empty stored value", `{"secrets": {"secret-key": {"value": "", "version_id": "x"}}}`, []Ref{{Name: SecretKey}}, `local secret "secret-key"`},
		{"whitespace-only stored value", `{"secrets": {"secret-key": {"value": " \n\t", "version_id": "x"}}}`, []Ref{{Name: SecretKey}}, `local secret "secret-key" in`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "local-secrets.json")
			if tc.content != "" {
				if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := (&LocalStore{Path: path}).Fetch(context.Background(), tc.refs)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want one containing %q", err, tc.want)
			}
			if !isConfigError(err) {
				t.Errorf("isConfigError = false for %q", err)
			}
			if strings.Contains(err.Error(), "Pq9Zk2") {
				t.Errorf("error quotes the file's secret content: %q", err)
			}
			if got, _ := os.ReadFile(path); string(got) != tc.content {
				t.Errorf("file changed on error: %q", got)
			}
		})
	}
}

func TestLocalFileFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "local-secrets.json")
	got, err := (&LocalStore{Path: path}).Fetch(context.Background(), []Ref{{Name: CookieSecret}})
	if err != nil {
		t.Fatal(err)
	}
	var f localFile
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	e := f.Secrets[CookieSecret]
	if e.Value != got[CookieSecret].Value.Reveal() || e.VersionID != got[CookieSecret].VersionID || e.Created.IsZero() {
		t.Errorf("file entry %+v does not match the returned secret", e)
	}
}

func TestRandomAlnum(t *testing.T) {
	counts := map[rune]int{}
	for range 2000 {
		s := randomAlnum(localLength)
		if !alnum32.MatchString(s) {
			t.Fatalf("randomAlnum = %q", s)
		}
		for _, c := range s {
			counts[c]++
		}
	}
	// 64000 draws over 62 characters: about 1032 each. A biased or
	// truncated alphabet shows up as a missing or rare character.
	if len(counts) != len(alnum) {
		t.Errorf("%d distinct characters, want %d", len(counts), len(alnum))
	}
	for c, n := range counts {
		if n < 800 || n > 1300 {
			t.Errorf("character %q drawn %d times, want about 1032", c, n)
		}
	}
}
