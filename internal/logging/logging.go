// Package logging builds the agent's slog logger. Under systemd (stderr is
// the journal, JOURNAL_STREAM says so) records go to the journal natively,
// each attribute as its own field (STEP=, SERVICE=, SECRET_ID=, ...), so an
// operator can filter with `journalctl -u redash-agent STEP="fetch secrets"`.
// Elsewhere it writes text or JSON lines to stderr.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns the logger for format "text", "json" or "journal" ("" picks
// journal when stderr is connected to it, else text).
func New(w io.Writer, format string) *slog.Logger {
	if format == "" {
		format = "text"
		if os.Getenv("JOURNAL_STREAM") != "" && journal.Enabled() {
			format = "journal"
		}
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil))
	case "journal":
		return slog.New(&JournalHandler{send: journal.Send, level: slog.LevelInfo})
	default:
		return slog.New(slog.NewTextHandler(w, nil))
	}
}

// JournalHandler sends records to the systemd journal with one field per
// attribute. Values go through slog's LogValuer, so secrets.Value redacts.
type JournalHandler struct {
	send   func(message string, priority journal.Priority, vars map[string]string) error
	level  slog.Level
	attrs  []slog.Attr
	groups []string
	mu     sync.Mutex
}

// NewJournalHandler is for tests: send receives every record.
func NewJournalHandler(send func(string, journal.Priority, map[string]string) error) *JournalHandler {
	return &JournalHandler{send: send, level: slog.LevelInfo}
}

func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	vars := map[string]string{"SYSLOG_IDENTIFIER": "redash-agent"}
	var text []string
	add := func(a slog.Attr) {
		a.Value = a.Value.Resolve()
		if a.Equal(slog.Attr{}) {
			return
		}
		key := fieldName(append(append([]string{}, h.groups...), a.Key))
		val := a.Value.String()
		vars[key] = val
		text = append(text, a.Key+"="+quoteIfNeeded(val))
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(func(a slog.Attr) bool { add(a); return true })
	msg := r.Message
	if len(text) > 0 {
		// The message line carries the fields too, for `journalctl` without -o verbose.
		msg += " " + strings.Join(text, " ")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.send(msg, priority(r.Level), vars)
}

func (h *JournalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &JournalHandler{send: h.send, level: h.level, groups: h.groups}
	n.attrs = append(append([]slog.Attr{}, h.attrs...), as...)
	return n
}

func (h *JournalHandler) WithGroup(name string) slog.Handler {
	n := &JournalHandler{send: h.send, level: h.level, attrs: h.attrs}
	n.groups = append(append([]string{}, h.groups...), name)
	return n
}

// fieldName maps "secret id" / "secret_id" / "secretID" style keys to
// journal field names: uppercase letters, digits and underscores, not
// starting with an underscore (those are trusted fields).
func fieldName(parts []string) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('_')
		}
		for _, c := range p {
			switch {
			case c >= 'a' && c <= 'z':
				b.WriteRune(c - 'a' + 'A')
			case c >= 'A' && c <= 'Z' || c >= '0' && c <= '9':
				b.WriteRune(c)
			default:
				b.WriteByte('_')
			}
		}
	}
	s := strings.TrimLeft(b.String(), "_0123456789")
	if s == "" {
		s = "FIELD"
	}
	return s
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}

func quoteIfNeeded(s string) string {
	if strings.ContainsAny(s, " \t\n\"=") {
		return fmt.Sprintf("%q", s)
	}
	return s
}
