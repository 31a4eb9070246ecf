// Command fakeredash stands in for the redash/redash and redash/nginx images
// in tests. It is built static and copied into an image FROM scratch, so no
// registry is needed. It plays the entrypoint commands the agent uses:
//
//	server                  answer GET /ping on :5000 with "PONG."
//	worker, scheduler       stay up until SIGTERM
//	nginx                   proxy :80 to redash:5000 (the compose alias)
//	create_db, manage ...   act on the real Postgres named by REDASH_DATABASE_URL
//	env                     print the environment and exit
//	python -c <script>      the agent's reencrypt script (datasources.go)
//
// With FAKEREDASH_FAMILY set it plays one Redash release (family.go): its
// entrypoint commands (commands.go), its ProxyFix and boot delay
// (proxyfix.go), its workers' warm shutdown (shutdown.go).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// early catches SIGTERM and SIGINT from the process's start. Without it a
// stop that lands before a command installs its handler (a converge that
// recreates a container just started) meets the Go runtime's default, which
// as PID 1 cannot die by the signal and exits 2: a stop would look like a
// crash. stopContext hands the signals to the command.
var early = make(chan os.Signal, 1)

func init() { signal.Notify(early, syscall.SIGTERM, syscall.SIGINT) }

// stopContext ends at the first SIGTERM or SIGINT, including one that came
// before it was called.
func stopContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-early:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakeredash server|worker|scheduler|nginx|create_db|manage|env")
		os.Exit(2)
	}
	os.Exit(run(os.Args[1], os.Args[2:]))
}

// run dispatches one entrypoint command. The long-running roles live in
// serve.go, the database commands in db.go, a family's own in commands.go.
func run(cmd string, args []string) int {
	if cmd == "python" { // the agent's reencrypt one-off (datasources.go)
		return runPython(familyFromEnv(), args)
	}
	if f := familyFromEnv(); !f.plain() {
		// A release's image: its own command set (commands.go).
		if code, handled := runFamily(f, cmd, args); handled {
			return code
		}
	}
	switch cmd {
	case "create_db", "manage":
		return runDB(cmd, args)
	default:
		return serve(cmd, args)
	}
}
