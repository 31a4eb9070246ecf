// Package logging builds the agent's slog logger. Under systemd (stderr is
// the journal's stream, as go-systemd's StderrIsJournalStream tells) records
// go to the journal natively, each attribute as its own field (STEP=,
// SERVICE=, SECRET_ID=, ...), so an operator can filter with `journalctl -u redash-agent STEP="fetch secrets"`.
// Elsewhere it writes text or JSON lines to stderr.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// Formats are the values New accepts ("" picks one).
var Formats = []string{"text", "json", "journal"}

// journalEnabled is journal.Enabled; tests replace it to be on or off
// systemd whatever the machine is.
var journalEnabled = journal.Enabled

// Check refuses a format New does not know, naming the ones it does.
func Check(format string) error {
	if format == "" {
		return nil
	}
	for _, f := range Formats {
		if format == f {
			return nil
		}
	}
	return fmt.Errorf("using log format %q: unknown: use one of %s (or leave --log-format out: journal under systemd, else text)", format, strings.Join(Formats, ", "))
}

// New returns the logger for format "text", "json" or "journal" ("" picks
// journal when stderr is connected to it, else text). "journal" where the
// journal's socket does not answer (off systemd, in a container) would drop
// every line, so it falls back to text on w and says so once, first. A
// format Check refuses is text; callers check first.
func New(w io.Writer, format string) *slog.Logger {
	if format == "" {
		format = "text"
		// go-systemd compares stderr's device and inode with JOURNAL_STREAM,
		// so a child that inherited the variable but writes elsewhere (a
		// pipe, a file) keeps text. A malformed variable also means text.
		if toJournal, err := journal.StderrIsJournalStream(); err == nil && toJournal && journalEnabled() {
			format = "journal"
		}
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil))
	case "journal":
		if !journalEnabled() {
			l := slog.New(slog.NewTextHandler(w, nil))
			l.Warn("the systemd journal is not reachable (no socket at /run/systemd/journal/socket): logging text to stderr instead", "log_format", "journal")
			return l
		}
		return slog.New(&JournalHandler{send: journal.Send, level: slog.LevelInfo, mu: new(sync.Mutex)})
	default:
		return slog.New(slog.NewTextHandler(w, nil))
	}
}

// JournalHandler sends records to the systemd journal with one field per
// attribute. Values go through slog's LogValuer, so secrets.Value redacts.
//
// Groups follow slog.Handler's contract: WithGroup qualifies the attributes
// added after it (by With or in a record), not those added before, and a
// group attribute contributes its members. A qualified key is written
// "group.key" on the message line, as slog's text handler does, and
// GROUP_KEY as a journal field, the journal's only separator.
type JournalHandler struct {
	send  func(message string, priority journal.Priority, vars map[string]string) error
	level slog.Level
	// pre are the attributes from WithAttrs, resolved and qualified by
	// the groups open when they were added.
	pre []field
	// groups are the groups open now; they qualify later attributes.
	groups []string
	// mu is shared by a handler and its With/WithGroup clones, so one
	// record's send never interleaves with another's.
	mu *sync.Mutex
}

// field is one attribute flattened to its qualified key.
type field struct {
	path []string // groups, then the attribute's key
	val  string
}

func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	fields := append([]field{}, h.pre...)
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.groups, a)
		return true
	})
	vars := map[string]string{"SYSLOG_IDENTIFIER": "redash-agent"}
	var text []string
	for _, f := range fields {
		vars[fieldName(f.path)] = f.val
		text = append(text, strings.Join(f.path, ".")+"="+quoteIfNeeded(f.val))
	}
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
	if len(as) == 0 {
		return h
	}
	n := *h
	n.pre = append([]field{}, h.pre...)
	for _, a := range as {
		n.pre = appendAttr(n.pre, h.groups, a)
	}
	return &n
}

func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	n := *h
	n.groups = append(append([]string{}, h.groups...), name)
	return &n
}

// appendAttr flattens a under the groups: an empty attribute and an empty
// group add nothing, and a group without a key is inlined.
func appendAttr(fs []field, groups []string, a slog.Attr) []field {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return fs
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			groups = append(append([]string{}, groups...), a.Key)
		}
		for _, m := range a.Value.Group() {
			fs = appendAttr(fs, groups, m)
		}
		return fs
	}
	return append(fs, field{path: append(append([]string{}, groups...), a.Key), val: a.Value.String()})
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
