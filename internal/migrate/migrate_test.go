package migrate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tables   int
		versions []string
		want     State
	}{
		{"no tables", 0, nil, StateEmpty},
		{"only alembic_version, at head", 1, []string{"r1"}, StateCurrent},
		{"at head", 5, []string{"r1"}, StateCurrent},
		{"other revision", 5, []string{"r0"}, StateBehind},
		{"tables without alembic_version", 3, nil, StateUnknown},
		{"alembic_version without a row", 3, []string{}, StateUnknown},
		{"two revisions", 3, []string{"r0", "r1"}, StateUnknown},
		{"blank revision", 3, []string{""}, StateUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classify(tc.tables, tc.versions, "r1"); got != tc.want {
				t.Errorf("classify(%d, %q, r1) = %q, want %q", tc.tables, tc.versions, got, tc.want)
			}
		})
	}
}

func TestParseHeads(t *testing.T) {
	for _, tc := range []struct {
		name, out, want, wantErr string
	}{
		{"plain", "89bc7873a3e0 (head)\n", "89bc7873a3e0", ""},
		{"warnings around it", "[2024-01-01] WARNING something\n  e5c7a4e2df4d (head)\nbye\n", "e5c7a4e2df4d", ""},
		{"branch label", "abc123 (mybranch) (head)\n", "abc123", ""},
		{"effective head", "abc123 (head) (effective head)\n", "abc123", ""},
		{"none", "Traceback (most recent call last):\n", "", "no \"<revision> (head)\" line"},
		{"branched", "aaa (head)\nbbb (head)\n", "", "several heads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseHeads(tc.out)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseHeads = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseHeads = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestTail(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		n    int
		want string
	}{
		{"short", "a\nb\n", 5, "a\nb"},
		{"cut", "1\n2\n3\n4\n", 2, "3\n4"},
		{"empty", "", 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tail(tc.in, tc.n); got != tc.want {
				t.Errorf("tail(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
			}
		})
	}
}

// TestConnConfigKeepsOddValues checks that quoting survives values libpq's
// keyword syntax treats specially, and that the password is set only on the
// config, with every TLS fallback pointing at the same endpoint.
func TestConnConfigKeepsOddValues(t *testing.T) {
	tg := desired.DB{Host: "db.example", Port: 6543, User: `o'brien \ x`, Password: secrets.NewValue("p@ss w'rd"), Name: "redash db"}
	cfg, err := connConfig(tg, "redash-agent host-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "db.example" || cfg.Port != 6543 || cfg.User != tg.User || cfg.Database != "redash db" || cfg.Password != "p@ss w'rd" {
		t.Errorf("config = host %q port %d user %q db %q", cfg.Host, cfg.Port, cfg.User, cfg.Database)
	}
	if got := cfg.RuntimeParams["application_name"]; got != "redash-agent host-1" {
		t.Errorf("application_name = %q", got)
	}
	for _, fb := range cfg.Fallbacks {
		if fb.Host != "db.example" || fb.Port != 6543 {
			t.Errorf("fallback %s:%d points elsewhere than the target", fb.Host, fb.Port)
		}
	}
	if s := fmt.Sprintf("%v %+v", tg, tg); strings.Contains(s, "p@ss") {
		t.Errorf("printing a desired.DB shows the password: %s", s)
	}
}

func TestValidateNamesEveryMissingField(t *testing.T) {
	err := Options{}.withDefaults().validate()
	if err == nil {
		t.Fatal("validate accepted empty options")
	}
	for _, f := range []string{"DB.Host", "DB.User", "DB.Name", "DB.Port", "Image", "Project", "Runner"} {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not name %s", err, f)
		}
	}
}

// headsRunner answers `manage db heads` and fails the test on anything else:
// it stands in where no migration may run.
type headsRunner struct {
	t    testing.TB
	head string
	mu   sync.Mutex
	cmds []string
}

func (r *headsRunner) RunOneOff(_ context.Context, spec OneOff) (int, string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := strings.Join(spec.Cmd, " ")
	r.cmds = append(r.cmds, cmd)
	switch cmd {
	case "manage db heads":
		return 0, "some warning\n" + r.head + " (head)\n", nil
	case "manage db history":
		return 0, "some warning\nr1 -> " + r.head + " (head), latest\nr0 -> r1, middle\n<base> -> r0, first\n", nil
	}
	r.t.Errorf("unexpected one-off %q", cmd)
	return 1, "", errors.New("unexpected one-off")
}

func (r *headsRunner) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.cmds...)
}

func TestHeadCachesPerImageID(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "state", "heads.json")
	r := &headsRunner{t: t, head: "abc123"}
	o := Options{Image: "redash/redash:25.1.0", ImageID: "sha256:1111", Runner: r, HeadsCache: cache}
	for i := range 3 {
		h, err := Head(context.Background(), o)
		if err != nil || h != "abc123" {
			t.Fatalf("Head #%d = %q, %v", i, h, err)
		}
	}
	if got := r.calls(); len(got) != 1 {
		t.Errorf("heads ran %d times for one image id, want 1: %q", len(got), got)
	}
	st, err := os.Stat(cache)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("cache mode = %v, want 0600", st.Mode().Perm())
	}

	// Another image id asks the image again and keeps the first entry.
	r.head = "def456"
	o.ImageID = "sha256:2222"
	if h, err := Head(context.Background(), o); err != nil || h != "def456" {
		t.Fatalf("Head for a second image = %q, %v", h, err)
	}
	data, _ := os.ReadFile(cache)
	want := "{\n  \"sha256:1111\": \"abc123\",\n  \"sha256:2222\": \"def456\"\n}\n"
	if string(data) != want {
		t.Errorf("cache file =\n%s\nwant\n%s", data, want)
	}

	// A tag without an image id is never cached: it may move.
	o.ImageID = ""
	before := len(r.calls())
	for range 2 {
		if _, err := Head(context.Background(), o); err != nil {
			t.Fatal(err)
		}
	}
	if got := len(r.calls()) - before; got != 2 {
		t.Errorf("heads ran %d times for an uncacheable tag, want 2", got)
	}
}

func TestHeadDamagedCacheIsRewritten(t *testing.T) {
	cache := filepath.Join(t.TempDir(), "heads.json")
	if err := os.WriteFile(cache, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &headsRunner{t: t, head: "abc123"}
	o := Options{Image: "img", ImageID: "sha256:1", Runner: r, HeadsCache: cache}
	if h, err := Head(context.Background(), o); err != nil || h != "abc123" {
		t.Fatalf("Head = %q, %v", h, err)
	}
	if h, err := Head(context.Background(), o); err != nil || h != "abc123" {
		t.Fatalf("Head = %q, %v", h, err)
	}
	if n := len(r.calls()); n != 1 {
		t.Errorf("heads ran %d times, want 1 (the damaged cache is replaced)", n)
	}
}

func TestParseHistory(t *testing.T) {
	out := `[2026-01-01 00:00:00,000][PID:1][WARNING][redash] some startup warning
89bc7873a3e0 -> 7205816877ec (head), change type of json fields from varchar to json
0ec979123ba4, e5c7a4e2df4d -> 89bc7873a3e0 (mergepoint), fix_multiple_heads
<base> -> 0ec979123ba4 (branchpoint), initial
`
	got := parseHistory(out)
	want := []string{"7205816877ec", "89bc7873a3e0", "0ec979123ba4", "e5c7a4e2df4d"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("parseHistory = %v, want %v", got, want)
	}
	if got := parseHistory("no revisions here\n"); len(got) != 0 {
		t.Errorf("parseHistory of noise = %v", got)
	}
}
