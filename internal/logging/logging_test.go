package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/coreos/go-systemd/v22/journal"

	"github.com/redash-agent/redash-agent/internal/secrets"
)

type sent struct {
	msg  string
	pri  journal.Priority
	vars map[string]string
}

func TestJournalFields(t *testing.T) {
	var got []sent
	h := NewJournalHandler(func(m string, p journal.Priority, v map[string]string) error {
		got = append(got, sent{m, p, v})
		return nil
	})
	log := slog.New(h).With("step", "fetch secrets")
	log.Error("[failed] fetch secrets", "secret_id", "Redash/RDS/Password", "value", secrets.NewValue("hunter2-very-secret"))
	log.Debug("not sent at info level")

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

func TestFieldName(t *testing.T) {
	cases := map[string]string{"step": "STEP", "secret id": "SECRET_ID", "_x": "X", "9lives": "LIVES", "took": "TOOK"}
	for in, want := range cases {
		if got := fieldName([]string{in}); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestTextFallback(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var b bytes.Buffer
	New(&b, "").Info("hello", "k", "v")
	if !strings.Contains(b.String(), "msg=hello k=v") {
		t.Errorf("text log = %q", b.String())
	}
	b.Reset()
	New(&b, "json").Info("hello")
	if !strings.Contains(b.String(), `"msg":"hello"`) {
		t.Errorf("json log = %q", b.String())
	}
}
