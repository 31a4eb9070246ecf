package envfile

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/dotenv"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// tricky holds values that break naive env file writers. None is a real
// secret; they are shaped like the ones Redash gets.
var tricky = map[string]string{
	"REDASH_DATABASE_URL":     "postgresql://redash:p%40ss%24w0rd@db.example.internal:5432/redash",
	"REDASH_REDIS_URL":        "redis://cache.example.internal:6379/0",
	"REDASH_COOKIE_SECRET":    `c$o"o'k\ie`,
	"REDASH_SECRET_KEY":       "${HOME} $HOME $$ \\$ ${X:-default} ${Y:?err}",
	"WITH_HASH":               "# not a comment #",
	"SPACES":                  "  both ends  ",
	"EQUALS":                  "a=b==c",
	"MULTILINE":               "line1\nline2\n",
	"BACKSLASHES":             `\n is not a newline, \\ is two, \t\a\0123`,
	"CARRIAGE_RETURN":         "a\r\nb\r",
	"TAB":                     "\tx\t",
	"EMPTY":                   "",
	"UNICODE":                 "héllo wörld ✓ \u00a0nbsp\u0085nel",
	"INVALID_UTF8":            "\xff\xfe\x80ok",
	"QUOTE_AT_END":            `ends with a quote"`,
	"BACKSLASH_AT_END":        `ends with a backslash\`,
	"_LEADING_UNDERSCORE":     "x",
	"lower_case":              "y",
	"REDASH_WEB_WORKERS":      "4",
	"PYTHONUNBUFFERED":        "0",
	"REDASH_LOG_LEVEL":        "INFO",
	"SINGLE_QUOTED_LOOKALIKE": `'quoted'`,
	"EXPORT_LOOKALIKE":        "export FOO=bar",
}

// composeParse reads data the way Docker Compose v2 reads an env_file:
// types.loadEnvFile -> dotenv.ParseWithFormat with the default format.
// lookup is what compose would resolve ${VAR} from.
func composeParse(t testing.TB, data []byte, lookup dotenv.LookupFn) map[string]string {
	t.Helper()
	vars := map[string]string{}
	if err := dotenv.ParseWithFormat(bytes.NewReader(data), "env", vars, lookup, ""); err != nil {
		t.Fatalf("compose-go could not parse our env file: %v", err)
	}
	return vars
}

func noLookup(string) (string, bool) { return "", false }

// leakyLookup answers every variable, like a host environment would; if our
// quoting let any interpolation through, its marker would show up.
func leakyLookup(string) (string, bool) { return "LEAKED", true }

func TestRenderGolden(t *testing.T) {
	got, err := Render(tricky)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "env.golden")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("reading golden file (run `go test ./internal/envfile/ -run TestRenderGolden -update` to create it): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("Render differs from %s (rerun with -update if the change is intended)\ngot:\n%s\nwant:\n%s", golden, got, want)
	}
}

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
	}{
		{"empty", map[string]string{}},
		{"one empty value", map[string]string{"A": ""}},
		{"tricky", tricky},
		{"64KiB of escapes", map[string]string{"BIG": strings.Repeat("$\\\"\n#{}", 64<<10/7)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, err := Render(tc.env)
			if err != nil {
				t.Fatal(err)
			}
			checkRoundTrip(t, tc.env, data)
		})
	}
}

// checkRoundTrip asserts that data, rendered from env, reads back as env
// through compose-go (with and without a host environment to interpolate
// from) and through our Parse, and that Parse+Render is the identity.
func checkRoundTrip(t *testing.T, env map[string]string, data []byte) {
	t.Helper()
	for name, lookup := range map[string]dotenv.LookupFn{"no lookup": noLookup, "leaky lookup": leakyLookup} {
		if got := composeParse(t, data, lookup); !maps.Equal(got, env) {
			t.Errorf("compose-go (%s) read back a different env:\n%s", name, diff(env, got))
		}
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if !maps.Equal(got, env) {
		t.Errorf("Parse read back a different env:\n%s", diff(env, got))
	}
	again, err := Render(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, data) {
		t.Errorf("Render(Parse(data)) != data")
	}
}

func diff(want, got map[string]string) string {
	var b strings.Builder
	for k, w := range want {
		if g, ok := got[k]; !ok {
			fmt.Fprintf(&b, "  %s: missing\n", k)
		} else if g != w {
			fmt.Fprintf(&b, "  %s: got %q, want %q\n", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "  %s: unexpected, %q\n", k, g)
		}
	}
	return b.String()
}

// secretMarker stands for a secret in error tests: no error may contain it.
const secretMarker = "s3cr3t-VALUE"

func TestRenderErrors(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		wantErr []string // substrings; every bad key must be named
	}{
		{"key starts with digit", map[string]string{"1A": secretMarker}, []string{`"1A"`}},
		{"key with dash", map[string]string{"A-B": secretMarker}, []string{`"A-B"`}},
		{"key with dot", map[string]string{"A.B": secretMarker}, []string{`"A.B"`}},
		{"empty key", map[string]string{"": secretMarker}, []string{`key ""`}},
		{"key with newline", map[string]string{"A\nB=1": secretMarker}, []string{`"A\nB=1"`}},
		{"NUL in value", map[string]string{"OK": "fine", "DB_PASSWORD": secretMarker + "\x00" + secretMarker}, []string{`"DB_PASSWORD"`, "NUL"}},
		{"every bad key named", map[string]string{"A B": "x", "C\x00": "y", "D": "z\x00" + secretMarker}, []string{`"A B"`, `"C\x00"`, `"D"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data, err := Render(tc.env)
			if err == nil {
				t.Fatalf("Render succeeded, want an error; output:\n%s", data)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), secretMarker) || strings.Contains(fmt.Sprintf("%q", err.Error()), secretMarker) {
				t.Errorf("error leaks the value: %q", err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	h := Header + "\n"
	cases := []struct {
		name    string
		data    string
		wantErr string
	}{
		{"no header", `A="` + secretMarker + "\"\n", "line 1 is not the header"},
		{"other comment header", "# hello\n" + `A="` + secretMarker + "\"\n", "line 1 is not the header"},
		{"missing final newline", h + `A="` + secretMarker + `"`, "line 2: missing final newline"},
		{"blank line", h + "\n", "line 2: not KEY"},
		{"comment line", h + "# " + secretMarker + "\n", "line 2: not KEY"},
		{"bad key", h + `A-B="` + secretMarker + "\"\n", `line 2: key "A-B"`},
		{"duplicate key", h + `A="x"` + "\n" + `A="` + secretMarker + "\"\n", `line 3: key "A" appears twice`},
		{"unsorted", h + `B="x"` + "\n" + `A="` + secretMarker + "\"\n", `line 3: key "A" is out of order`},
		{"unquoted", h + "A=" + secretMarker + "\n", `line 2: value of "A" is not double-quoted`},
		{"single quoted", h + "A='" + secretMarker + "'\n", `line 2: value of "A" is not double-quoted`},
		{"space before quote", h + `A= "` + secretMarker + "\"\n", "not double-quoted"},
		{"unknown escape", h + `A="` + secretMarker + `\t"` + "\n", "byte 13: unsupported escape"},
		{"unescaped dollar", h + `A="$` + secretMarker + "\"\n", "byte 1: unescaped '$'"},
		{"unescaped quote", h + `A="` + secretMarker + `"x"` + "\n", "unescaped '\"'"},
		{"trailing backslash", h + `A="` + secretMarker + `\"` + "\n", "byte 13: backslash at the end"},
		{"NUL", h + "A=\"" + secretMarker + "\x00\"\n", "NUL byte"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env, err := Parse([]byte(tc.data))
			if err == nil {
				t.Fatalf("Parse succeeded with %q, want an error", env)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("error %q does not contain %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), secretMarker) {
				t.Errorf("error leaks the value: %q", err)
			}
		})
	}
}

func TestWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "env")
	env := map[string]string{"REDASH_SECRET_KEY": secretMarker, "B": "1"}
	want, err := Render(env)
	if err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name        string
		before      func(t *testing.T)
		env         map[string]string
		wantChanged bool
		wantData    []byte
	}{
		{"first write creates the file", nil, env, true, want},
		{"same content is not rewritten", nil, env, false, want},
		{"wrong mode is fixed", func(t *testing.T) { chmod(t, path, 0o644) }, env, true, want},
		{"edited content is restored", func(t *testing.T) { writeRaw(t, path, "A=1\n") }, env, true, want},
		{"invalid env writes nothing", nil, map[string]string{"BAD KEY": "x"}, false, want},
		{"new content is written", nil, map[string]string{"B": "2"}, true, []byte(Header + "\nB=\"2\"\n")},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.before != nil {
				s.before(t)
			}
			before := stat(t, path)
			changed, err := Write(path, s.env)
			if s.env["BAD KEY"] != "" {
				if err == nil || !strings.Contains(err.Error(), `"BAD KEY"`) {
					t.Fatalf("Write error = %v, want one naming the bad key", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if changed != s.wantChanged {
				t.Errorf("changed = %v, want %v", changed, s.wantChanged)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, s.wantData) {
				t.Errorf("file content:\n%s\nwant:\n%s", got, s.wantData)
			}
			after := stat(t, path)
			if after.Mode().Perm() != 0o600 {
				t.Errorf("mode = %v, want 0600", after.Mode().Perm())
			}
			// An unchanged file must be the same inode with the same
			// mtime: nothing watching it should see a write.
			if !s.wantChanged && before != nil && (!os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime())) {
				t.Errorf("file was replaced although changed=false")
			}
		})
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only env (temp files left behind?)", len(entries))
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func writeRaw(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	st, err := os.Stat(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// FuzzRoundTrip proves that any two values without NUL survive Render and
// come back unchanged from compose-go's env_file parser (with no lookup and
// with one that answers every variable) and from our Parse. Two values
// checks that one value cannot bleed into its neighbour. Values with a NUL
// must be refused with an error naming the key.
//
// Run it with -fuzzminimizetime=2s: the default 60s of minimising each new
// input makes the fuzzer sit idle for most of a short run.
func FuzzRoundTrip(f *testing.F) {
	seeds := []string{
		"", " ", "plain", "  both ends  ", "\t", "\n", "\n\n", "\r", "\r\n", "a\nb",
		`"`, `""`, `\`, `\\`, `\"`, `"\`, `\n`, `\$`, `\0123`, `\x41`, `\u00e9`,
		"$", "$$", "$HOME", "${HOME}", "${X:-d}", "${X:?e}", "${X", "$}", "${", "${}", "$1",
		"#", " #c", "a #c", "#!", "=", "a=b", "==", "'", "'x'", "`x`", "export A=1",
		"B=\"injected\"", "\nB=\"injected\"", "\"\nB=\"x", "\xff", "\xc3", "\xef\xbb\xbf", "\u00a0", "\u0085",
		// Big values stay small here: the fuzzer minimises every new
		// interesting input byte by byte, which stalls on a 64 KiB seed.
		// TestRoundTrip covers a 64 KiB value.
		"postgresql://u:p%40s@h:5432/d", strings.Repeat("$\\\"\n#{}", 512),
		"\x00", "a\x00b",
	}
	for _, s := range seeds {
		f.Add(s, "")
		f.Add("x", s)
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if len(a) > 64<<10 || len(b) > 64<<10 {
			t.Skip("values above 64 KiB are out of scope")
		}
		env := map[string]string{"A": a, "B": b}
		data, err := Render(env)
		if strings.ContainsRune(a, 0) || strings.ContainsRune(b, 0) {
			if err == nil || !strings.Contains(err.Error(), "NUL") {
				t.Fatalf("Render error = %v, want one about a NUL byte", err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		checkRoundTrip(t, env, data)
	})
}

// BenchmarkRender renders an env of the size Redash gets (~30 keys).
func BenchmarkRender(b *testing.B) {
	env := map[string]string{}
	for k, v := range tricky {
		env[k] = v
	}
	for i := len(env); i < 30; i++ {
		env[fmt.Sprintf("REDASH_SETTING_%02d", i)] = fmt.Sprintf("value-%d-with-some-length", i)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Render(env); err != nil {
			b.Fatal(err)
		}
	}
}
