package secrets

import (
	"fmt"
	"log/slog"
	"strings"
)

// redacted is what every printing path shows instead of a secret value.
const redacted = "[redacted]"

// Value holds one secret string. Every way Go prints or encodes a value
// (fmt verbs, slog, JSON, text marshalling) shows "[redacted]"; the only way
// to the plaintext is Reveal, so leaking a secret takes a deliberate call.
type Value struct{ s string }

// NewValue wraps a plaintext secret.
func NewValue(s string) Value { return Value{s: s} }

// Reveal returns the plaintext. Call it only where the value is written to
// the 0600 env file or handed to a container or database driver.
func (v Value) Reveal() string { return v.s }

// IsZero reports whether the value is empty.
func (v Value) IsZero() bool { return v.s == "" }

// IsBlank reports whether a fetched secret s is empty or only whitespace. No
// password, key or user name is blank on purpose: it is a secret created
// with a stray newline or space, and Redash would run with it (a cookie
// secret of "\n" signs every session with a guessable key).
func IsBlank(s string) bool { return strings.TrimSpace(s) == "" }

func (v Value) String() string                { return redacted }
func (v Value) GoString() string              { return redacted }
func (v Value) LogValue() slog.Value          { return slog.StringValue(redacted) }
func (v Value) MarshalText() ([]byte, error)  { return []byte(redacted), nil }
func (v Value) MarshalJSON() ([]byte, error)  { return []byte(`"` + redacted + `"`), nil }
func (v Value) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(redacted)) }

var (
	_ fmt.Stringer   = Value{}
	_ fmt.GoStringer = Value{}
	_ fmt.Formatter  = Value{}
	_ slog.LogValuer = Value{}
)
