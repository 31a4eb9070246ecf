package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// TestUsageErrors: every bad command line exits 2 and says how to get help,
// classified by type (cobra's argument validators and flag errors are
// wrapped), not by cobra's wording. No peer is needed: none of these get as
// far as running a command.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"no-such-command"}, `unknown command "no-such-command"`},
		{"unknown command with a suggestion", []string{"rendr"}, "Did you mean this?\n\trender"},
		{"argument to a command that takes none", []string{"version", "extra"}, `unknown command "extra" for "redash-agent version"`},
		{"unknown flag", []string{"render", "--no-such-flag"}, "unknown flag: --no-such-flag"},
		{"bad flag value", []string{"up", "--imds-deadline", "soon"}, `invalid argument "soon"`},
		{"--set without =", []string{"config", "--set", "role"}, `--set "role": want KEY=VALUE`},
		{"unknown log format", []string{"--log-format", "xml", "render"}, `log format "xml": unknown: use one of text, json, journal`},
		{"unknown log format, any command", []string{"version", "--log-format", "JSON"}, `log format "JSON": unknown`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := Main(tc.args, &out, &errb); code != exitUsage {
				t.Errorf("exit %d, want %d\n%s", code, exitUsage, errb.String())
			}
			if !strings.Contains(errb.String(), tc.want) || !strings.Contains(errb.String(), "redash-agent --help") {
				t.Errorf("stderr %q, want %q and a pointer to --help", errb.String(), tc.want)
			}
		})
	}
	var out, errb bytes.Buffer
	if code := Main(nil, &out, &errb); code != exitOK || !strings.Contains(out.String(), "Available Commands") {
		t.Errorf("no command: exit %d, want help and 0\n%s%s", code, out.String(), errb.String())
	}
}

// TestExitCode: the status comes from the error's type; the message is
// printed once, with "configuration error:" for exit 3.
func TestExitCode(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		code   int
		prefix string
	}{
		{"ok", nil, exitOK, ""},
		{"not configured", fmt.Errorf("%w: tag the instance", agent.ErrNotConfigured), exitOK, "redash-agent: nothing to do"},
		{"bad setting", &config.Error{Problems: []config.Problem{{Key: "role", Origin: "instance tag", Msg: "not a role"}}}, exitConfigErr, "redash-agent: configuration error: configuration has 1 problem(s)"},
		{"wrapped configuration error", fmt.Errorf("resolving: %w", exitcode.ConfigError(errors.New("no region"))), exitConfigErr, "redash-agent: configuration error: resolving: no region"},
		{"usage", exitcode.UsageError(errors.New("bad flag")), exitUsage, "redash-agent: bad flag\nrun 'redash-agent --help'"},
		{"transient", errors.New("connection refused"), exitFailure, "redash-agent: connection refused"},
		{"doctor found problems", errDoctorFailed, exitFailure, "redash-agent: doctor found problems"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var errb bytes.Buffer
			if code := exitCode(tc.err, &errb); code != tc.code {
				t.Errorf("exit %d, want %d", code, tc.code)
			}
			if !strings.HasPrefix(errb.String(), tc.prefix) {
				t.Errorf("stderr %q, want it to start with %q", errb.String(), tc.prefix)
			}
		})
	}
}
