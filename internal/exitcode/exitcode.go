// Package exitcode is the CLI's exit status contract (0 ok, 1 failure,
// 2 usage, 3 configuration error) and the one way an error says which of them
// it ends the process with: an ExitStatus method, as consul-template's
// ErrExitable. A caller classifies an error with Of, never by its text.
//
// The distinction matters to systemd: the unit restarts the agent on 1 (a
// network or AWS hiccup may pass) and not on 3 (RestartPreventExitStatus),
// because a missing secret or a bad tag stays broken until a person fixes
// it. The package has no side effects.
package exitcode

import "errors"

// Exit statuses of the CLI.
const (
	OK      = 0
	Failure = 1 // the default: retrying (a restart) may succeed
	Usage   = 2 // a bad command line
	Config  = 3 // bad or missing configuration, secret or JSON key; a restart cannot fix it
)

// Exitable is an error that carries the exit status the process should end
// with. Packages implement it on their own error types (config.Error,
// secrets.Error); Error wraps an error from a package that has none.
type Exitable interface {
	error
	ExitStatus() int
}

// Of returns the exit status err asks for: OK for nil, else the status of
// the outermost Exitable in its chain, else Failure. For an errors.Join it
// is the highest status among the joined errors, so one configuration
// error among transient ones still stops systemd from restart-looping: the
// restart cannot succeed until that one is fixed.
func Of(err error) int {
	if err == nil {
		return OK
	}
	if e, ok := err.(Exitable); ok {
		return e.ExitStatus()
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			return Of(inner)
		}
	case interface{ Unwrap() []error }:
		status := -1
		for _, e := range u.Unwrap() {
			if e != nil {
				status = max(status, Of(e))
			}
		}
		if status >= 0 {
			return status
		}
	}
	return Failure
}

// Error gives an error that has no status of its own an exit status. Its
// text is the wrapped error's: the status is for the CLI, not the operator.
type Error struct {
	Status int
	Err    error
}

func (e *Error) Error() string   { return e.Err.Error() }
func (e *Error) Unwrap() error   { return e.Err }
func (e *Error) ExitStatus() int { return e.Status }

// New returns an error with text msg that ends the process with status; for
// sentinels such as "not configured" (exit 0).
func New(status int, msg string) *Error {
	return &Error{Status: status, Err: errors.New(msg)}
}

// ConfigError marks err as a configuration error (exit 3). nil stays nil.
func ConfigError(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Status: Config, Err: err}
}

// UsageError marks err as a bad command line (exit 2). nil stays nil.
func UsageError(err error) error {
	if err == nil {
		return nil
	}
	return &Error{Status: Usage, Err: err}
}
