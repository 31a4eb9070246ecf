package secrets

import (
	"errors"
	"fmt"
	"strings"

	"github.com/redash-agent/redash-agent/internal/exitcode"
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
	kind   error // ErrNotFound, ErrAccessDenied, ErrNoPreviousVersion or nil, for Is
}

func (e *Error) Error() string { return e.msg }
func (e *Error) Unwrap() error { return e.err }

// ExitStatus makes the CLI exit 3 on a configuration error, so that systemd
// does not restart-loop on something only a person can fix, and 1 (restart
// and try again) on a transient one. For an errors.Join of several secrets'
// failures exitcode.Of takes the highest: a restart cannot succeed until the
// configuration error among them is fixed.
func (e *Error) ExitStatus() int {
	if e.Config {
		return exitcode.Config
	}
	return exitcode.Failure
}

// Is lets a caller branch on why Secrets Manager refused (errors.Is with
// ErrNotFound or ErrAccessDenied) without reading the message.
func (e *Error) Is(target error) bool { return e.kind != nil && target == e.kind }

// Reasons a secret could not be read that a caller branches on: doctor
// points at the secret and the instance role for these. Match them with
// errors.Is; the message of the *Error says which secret and what to do.
var (
	// ErrNotFound: no secret with that id exists in the region.
	ErrNotFound = errors.New("secret not found")
	// ErrAccessDenied: the instance role may not call
	// secretsmanager:GetSecretValue on the secret.
	ErrAccessDenied = errors.New("access to the secret denied")
	// ErrNoPreviousVersion: the secret has no version under the asked
	// staging label (FetchStage with StagePrevious on a secret never
	// rotated).
	ErrNoPreviousVersion = errors.New("no previous version of the secret")
)

// tagFor names the instance tag that points at the logical secret, so an
// error can say which tag to fix.
func tagFor(name string) string {
	if name == DBSecret {
		return "redash:db-secret"
	}
	if v, ok := EnvVar(name); ok {
		return "redash:secret-env:" + v
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
