package logging

import (
	"bytes"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/slogtest"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/redash-agent/redash-agent/internal/secrets"
)

type sent struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

// newTestHandler is a JournalHandler whose send records every record
// instead of writing to the journal socket.
func newTestHandler(send func(string, journal.Priority, map[string]string) error) *JournalHandler {
	return &JournalHandler{send: send, level: slog.LevelInfo, mu: new(sync.Mutex)}
}

// recorder collects what a handler sends.
type recorder struct {
	mu  sync.Mutex
	got []sent
}

func (r *recorder) send(m string, p journal.Priority, v map[string]string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, sent{m, p, v})
	return nil
}

func TestJournalFields(t *testing.T) {
	var rec recorder
	h := newTestHandler(rec.send)
	log := slog.New(h).With("step", "fetch secrets")
	log.Error("[failed] fetch secrets", "secret_id", "Redash/RDS/Password", "value", secrets.NewValue("hunter2-very-secret"))
	log.Debug("not sent at info level")

	got := rec.got
	if len(got) != 1 {
		t.Fatalf("sent %d records, want 1", len(got))
	}
	r := got[0]
	if r.pri != journal.PriErr {
		t.Errorf("priority %v, want err", r.pri)
	}
	want := map[string]string{"STEP": "fetch secrets", "SECRET_ID": "Redash/RDS/Password", "VALUE": "[redacted]", "SYSLOG_IDENTIFIER": "redash-agent"}
	for k, v := range want {
		if r.vars[k] != v {
			t.Errorf("field %s = %q, want %q", k, r.vars[k], v)
		}
	}
	if strings.Contains(r.msg, "hunter2") || !strings.Contains(r.msg, `step="fetch secrets"`) {
		t.Errorf("message = %q", r.msg)
	}
}

// TestJournalGroups: WithGroup qualifies only what is added after it, and a
// group attribute's members are fields of their own, never one "[k=v]" blob.
func TestJournalGroups(t *testing.T) {
	var rec recorder
	log := slog.New(newTestHandler(rec.send)).With("step", "converge").WithGroup("container").With("name", "redash-server-1")
	log.Info("created", "id", "abc", slog.Group("image", "ref", "redash/redash:25.8.0", "token", secrets.NewValue("hunter2")))
	if len(rec.got) != 1 {
		t.Fatalf("sent %d records, want 1", len(rec.got))
	}
	r := rec.got[0]
	want := map[string]string{"STEP": "converge", "CONTAINER_NAME": "redash-server-1", "CONTAINER_ID": "abc", "CONTAINER_IMAGE_REF": "redash/redash:25.8.0", "CONTAINER_IMAGE_TOKEN": "[redacted]"}
	for k, v := range want {
		if r.vars[k] != v {
			t.Errorf("field %s = %q, want %q (all: %v)", k, r.vars[k], v, r.vars)
		}
	}
	for _, k := range []string{"CONTAINER_STEP", "NAME", "ID", "IMAGE"} {
		if _, ok := r.vars[k]; ok {
			t.Errorf("field %s is set; groups qualify later attributes only (all: %v)", k, r.vars)
		}
	}
	wantMsg := "created step=converge container.name=redash-server-1 container.id=abc container.image.ref=redash/redash:25.8.0 container.image.token=[redacted]"
	if r.msg != wantMsg {
		t.Errorf("message = %q, want %q", r.msg, wantMsg)
	}
}

// TestSlogtest runs the standard library's handler conformance tests. The
// results are read back from the message line (keys are "group.key" there;
// the journal fields lose the case slogtest compares), and every field of
// the line must also be a journal field of the same value.
func TestSlogtest(t *testing.T) {
	var rec *recorder
	slogtest.Run(t, func(*testing.T) slog.Handler {
		rec = &recorder{}
		return newTestHandler(rec.send)
	}, func(t *testing.T) map[string]any {
		if len(rec.got) != 1 {
			t.Fatalf("sent %d records, want 1", len(rec.got))
		}
		r := rec.got[0]
		msg, attrs, err := parseLine(r.msg)
		if err != nil {
			t.Fatalf("message line %q: %v", r.msg, err)
		}
		m := map[string]any{slog.MessageKey: msg, slog.LevelKey: r.pri}
		// journald stamps each entry when it receives it, so the handler
		// drops Record.Time on purpose; slogtest's doc asks the results
		// function to add such a key back. The zero-time case checks that
		// it is absent.
		if !strings.HasSuffix(t.Name(), "/zero-time") {
			m[slog.TimeKey] = "set by journald"
		}
		for _, kv := range attrs {
			path := strings.Split(kv[0], ".")
			if got, want := r.vars[fieldName(path)], kv[1]; got != want {
				t.Errorf("journal field %s = %q, want %q as on the message line", fieldName(path), got, want)
			}
			g := m
			for _, p := range path[:len(path)-1] {
				sub, ok := g[p].(map[string]any)
				if !ok {
					sub = map[string]any{}
					g[p] = sub
				}
				g = sub
			}
			g[path[len(path)-1]] = kv[1]
		}
		return m
	})
}

// parseLine splits "msg k=v k2="quoted v"" into the message and its pairs.
func parseLine(line string) (msg string, attrs [][2]string, err error) {
	msg, rest, _ := strings.Cut(line, " ")
	for rest != "" {
		key, after, ok := strings.Cut(rest, "=")
		if !ok {
			return "", nil, fmt.Errorf("no = in %q", rest)
		}
		var val string
		if strings.HasPrefix(after, `"`) {
			q, err := strconv.QuotedPrefix(after)
			if err != nil {
				return "", nil, err
			}
			if val, err = strconv.Unquote(q); err != nil {
				return "", nil, err
			}
			after = after[len(q):]
		} else {
			val, after, _ = strings.Cut(after, " ")
			after = " " + after
		}
		attrs = append(attrs, [2]string{key, val})
		rest = strings.TrimPrefix(after, " ")
	}
	return msg, attrs, nil
}

func TestFieldName(t *testing.T) {
	cases := map[string]string{"step": "STEP", "secret id": "SECRET_ID", "_x": "X", "9lives": "LIVES", "took": "TOOK"}
	for in, want := range cases {
		if got := fieldName([]string{in}); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTextFallback(t *testing.T) {
	// Unset, and set but naming another stream than this stderr (a child
	// that inherited it while writing to a pipe): text, not the journal.
	for _, stream := range []string{"", "1:1"} {
		t.Setenv("JOURNAL_STREAM", stream)
		var b bytes.Buffer
		New(&b, "").Info("hello", "k", "v")
		if !strings.Contains(b.String(), "msg=hello k=v") {
			t.Errorf("JOURNAL_STREAM=%q: text log = %q", stream, b.String())
		}
	}
	var b bytes.Buffer
	New(&b, "json").Info("hello")
	if !strings.Contains(b.String(), `"msg":"hello"`) {
		t.Errorf("json log = %q", b.String())
	}
}

// TestNewJournalOffSystemd: --log-format journal where the journal does not
// answer logs text to the writer, after one warning (before: every line was
// dropped).
func TestNewJournalOffSystemd(t *testing.T) {
	for _, on := range []bool{false, true} {
		journalEnabled = func() bool { return on }
		var buf bytes.Buffer
		log := New(&buf, "journal")
		log.Info("[started] fetch secrets", "step", "fetch secrets")
		out := buf.String()
		if on {
			if _, ok := log.Handler().(*JournalHandler); !ok || out != "" {
				t.Errorf("on systemd: handler %T, wrote %q; want the journal", log.Handler(), out)
			}
			continue
		}
		if strings.Count(out, "systemd journal is not reachable") != 1 || !strings.Contains(out, `msg="[started] fetch secrets" step="fetch secrets"`) {
			t.Errorf("off systemd: want one warning and then text lines, got:\n%s", out)
		}
	}
	journalEnabled = journal.Enabled
}

func TestCheckFormat(t *testing.T) {
	for _, f := range append([]string{""}, Formats...) {
		if err := Check(f); err != nil {
			t.Errorf("Check(%q) = %v", f, err)
		}
	}
	err := Check("xml")
	if err == nil || !strings.Contains(err.Error(), `"xml"`) || !strings.Contains(err.Error(), "text, json, journal") {
		t.Errorf("Check(xml) = %v, want it refused naming the valid formats", err)
	}
}
