package migrate

// Reencrypt runs Redash's `manage database reencrypt OLD NEW` (9.0 and
// later) without putting either key in argv: `docker inspect` and `ps`
// show a container's command. The one-off's command is python -c with a
// fixed script that reads both keys from its environment and calls the
// same click command manage.py would. The images' entrypoint execs any
// command it does not know ("*) exec "$@""), and python is on PATH in
// every python:*-slim based Redash image (9.x to 26.x).

import (
	"context"
	"fmt"
	"strings"

	"github.com/redash-agent/redash-agent/internal/secrets"
)

// Environment variables the reencrypt script reads the keys from.
const (
	ReencryptOldEnv = "REDASH_AGENT_REENCRYPT_OLD"
	ReencryptNewEnv = "REDASH_AGENT_REENCRYPT_NEW"
)

// ReencryptScript is the program the one-off runs with python -c. The
// stand-in (test/fakeredash) accepts exactly this text.
const ReencryptScript = `import os
from redash.cli import manager
old = os.environ.pop("` + ReencryptOldEnv + `")
new = os.environ.pop("` + ReencryptNewEnv + `")
manager.main(args=["database", "reencrypt", old, new], prog_name="manage.py", standalone_mode=False)
`

// ReencryptCmd is the one-off's command.
func ReencryptCmd() []string { return []string{"python", "-c", ReencryptScript} }

// ReencryptOptions say which image re-encrypts, with which environment.
type ReencryptOptions struct {
	Project string
	Service string // the server service, for the one-off's labels
	Image   string
	// Env is the Redash environment (the env file's content): the one-off
	// needs REDASH_DATABASE_URL.
	Env      map[string]string
	Old, New secrets.Value
	Runner   Runner
}

// Reencrypt runs the one-off to completion and returns its exit code and
// the last lines of its output, with both keys redacted (Redash never
// prints them; this is a second guard). err is a failure to run it at all.
func Reencrypt(ctx context.Context, o ReencryptOptions) (code int, logTail string, err error) {
	env := make(map[string]string, len(o.Env)+3)
	for k, v := range o.Env {
		env[k] = v
	}
	env["PGAPPNAME"] = oneOffAppName()
	env[ReencryptOldEnv] = o.Old.Reveal()
	env[ReencryptNewEnv] = o.New.Reveal()
	service := o.Service
	if service == "" {
		service = "server"
	}
	code, logs, err := o.Runner.RunOneOff(ctx, OneOff{
		Project: o.Project, Name: "reencrypt", Service: service, Image: o.Image,
		Cmd: ReencryptCmd(), Env: env,
	})
	logTail = redactValues(tail(logs, 20), o.Old, o.New)
	if err != nil {
		return code, logTail, fmt.Errorf("running `manage database reencrypt` in a one-off of %q: %s", o.Image, redactValues(err.Error(), o.Old, o.New))
	}
	return code, logTail, nil
}

// redactValues replaces every occurrence of the values in s.
func redactValues(s string, vs ...secrets.Value) string {
	for _, v := range vs {
		if v.Reveal() != "" {
			s = strings.ReplaceAll(s, v.Reveal(), "[redacted]")
		}
	}
	return s
}
