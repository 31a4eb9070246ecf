package exitcode

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
)

// statusErr is a package's own error type carrying a status, like
// secrets.Error.
type statusErr int

func (s statusErr) Error() string   { return fmt.Sprintf("status %d", int(s)) }
func (s statusErr) ExitStatus() int { return int(s) }

func TestOf(t *testing.T) {
	notConfigured := New(OK, "nothing to do")
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, OK},
		{"plain error is a failure", io.EOF, Failure},
		{"context cancelled is a failure", context.Canceled, Failure},
		{"config", ConfigError(io.EOF), Config},
		{"usage", UsageError(io.EOF), Usage},
		{"own type", statusErr(Config), Config},
		{"wrapped with %w keeps the status", fmt.Errorf("step: %w", ConfigError(io.EOF)), Config},
		{"outermost status wins", UsageError(fmt.Errorf("x: %w", statusErr(Config))), Usage},
		{"sentinel with status 0", fmt.Errorf("%w: tag the instance", notConfigured), OK},
		{"join: the highest status", errors.Join(statusErr(Failure), statusErr(Config)), Config},
		{"join of failures", errors.Join(io.EOF, statusErr(Failure)), Failure},
		{"join with a plain error", errors.Join(io.EOF, ConfigError(io.EOF)), Config},
		{"%w twice", fmt.Errorf("%w and %w", io.EOF, ConfigError(io.EOF)), Config},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Of(tc.err); got != tc.want {
				t.Errorf("Of(%v) = %d, want %d", tc.err, got, tc.want)
			}
		})
	}
}

func TestWrappersKeepTextAndChain(t *testing.T) {
	if ConfigError(nil) != nil || UsageError(nil) != nil {
		t.Error("a nil error must stay nil")
	}
	err := ConfigError(fmt.Errorf("reading %q: %w", "f", io.EOF))
	if err.Error() != `reading "f": EOF` || !errors.Is(err, io.EOF) {
		t.Errorf("ConfigError changed the text or the chain: %q", err)
	}
}
