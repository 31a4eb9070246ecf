package secrets

import (
	"fmt"
	"strings"
)

// Error is the failure to obtain one logical secret. Its text names the
// logical name and the secret id and says what to do; it never holds the
// value or any fragment of it (so JSON parse errors, which quote the offending
// character, are deliberately not wrapped).
type Error struct {
	Name     string // logical name, e.g. "db-password"
	SecretID string // secret name or ARN
	// Config is true when retrying cannot help: the secret, its key or the
	// permission to read it is missing, or its content has the wrong shape.
	Config bool
	msg    string
	err    error // cause; may be nil
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.err }

// ConfigError marks the error for IsConfigError. Other packages can make their
// errors count as configuration errors by implementing the same method.
func (e *Error) ConfigError() bool { return e.Config }

// IsConfigError reports whether err is final and caused by configuration (a
// secret not found, access denied, a missing JSON key, invalid JSON, an empty
// value): the CLI exits 3 on it so systemd does not restart-loop. For an
// errors.Join of several failures it is true when any of them is a
// configuration error: a restart cannot succeed until that one is fixed.
func IsConfigError(err error) bool {
	if err == nil {
		return false
	}
	if c, ok := err.(interface{ ConfigError() bool }); ok && c.ConfigError() {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if IsConfigError(e) {
				return true
			}
		}
	case interface{ Unwrap() error }:
		return IsConfigError(u.Unwrap())
	}
	return false
}

// tagFor names the instance tag that points at the logical secret, so an
// error can say which tag to fix.
func tagFor(name string) string {
	if name == DBSecret {
		return "redash:db-secret"
	}
	return "redash:secret:" + name
}

// describe is the common prefix of every per-secret message.
func describe(r Ref) string {
	if r.JSONKey != "" {
		return fmt.Sprintf("secret %q (id %q, JSON key %q)", r.Name, r.SecretID, r.JSONKey)
	}
	return fmt.Sprintf("secret %q (id %q)", r.Name, r.SecretID)
}

func configErr(r Ref, cause error, format string, args ...any) *Error {
	return &Error{Name: r.Name, SecretID: r.SecretID, Config: true, msg: describe(r) + " " + fmt.Sprintf(format, args...), err: cause}
}

// quoteList renders JSON key names (never values) for an error message.
func quoteList(keys []string) string {
	if len(keys) == 0 {
		return "none"
	}
	q := make([]string, len(keys))
	for i, k := range keys {
		q[i] = fmt.Sprintf("%q", k)
	}
	return strings.Join(q, ", ")
}
