package main

// commands.go: the entrypoint command set of each Redash family, read from
// bin/docker-entrypoint at v8.0.0, v9.0.0-beta, v10.1.0, v25.1.0 and v26.3.0,
// and what every family does before a command runs. Only with
// FAKEREDASH_FAMILY set (see family.go); plain mode keeps serve.go's set.

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
)

// entrypointCommands are the `case "$1"` labels of the family's
// bin/docker-entrypoint. Anything else goes to `exec "$@"`.
func entrypointCommands(f family) map[string]bool {
	cmds := map[string]bool{
		"worker": true, "server": true, "scheduler": true, "dev_worker": true,
		"dev_server": true, "debug": true, "shell": true, "create_db": true,
		"manage": true, "tests": true, "help": true,
		// 8.x pings its own Celery worker; 9.x on only print that it is
		// deprecated.
		"celery_healthcheck": true,
	}
	if !f.celery() {
		cmds["dev_scheduler"] = true
	}
	if f.atLeast(25, 1) {
		cmds["workers_healthcheck"] = true
	}
	return cmds
}

// helperPrograms are the stand-in's own tools. They are programs in the
// image (env is /usr/bin/env in the real one), so `exec "$@"` finds them,
// and `docker exec <c> /fakeredash job 12s` reaches them directly.
var helperPrograms = map[string]bool{"env": true, "crash": true, "nginx": true, "job": true}

// loadsSettings lists the commands that import redash (and so
// redash/settings) before doing anything: gunicorn loads redash.wsgi, the
// others run manage.py. The health checks and help are plain shell.
var loadsSettings = map[string]bool{
	"server": true, "scheduler": true, "worker": true, "create_db": true, "manage": true,
	"dev_server": true, "debug": true, "shell": true, "tests": true, "dev_worker": true, "dev_scheduler": true,
}

// cookieSecretError is the last line of the traceback redash/settings
// raises from 10.x when REDASH_COOKIE_SECRET is not set.
const cookieSecretError = "Exception: You must set the REDASH_COOKIE_SECRET environment variable. Visit http://redash.io/help/open-source/admin-guide/secrets for more information."

// runFamily runs cmd the way family f's image would. handled is false when
// the command is one the shared code plays the same in every family
// (create_db, manage, the RQ scheduler, server, env, crash, nginx): the
// caller then runs it.
func runFamily(f family, cmd string, args []string) (code int, handled bool) {
	if helperPrograms[cmd] {
		if cmd == "job" {
			return runJobCommand(args), true
		}
		return 0, false
	}
	if !entrypointCommands(f)[cmd] {
		// bash's message for `exec "$@"` of a program not on PATH.
		fmt.Fprintf(os.Stderr, "/usr/local/bin/docker-entrypoint: line 1: exec: %s: not found\n", cmd)
		return 127, true
	}
	if f.requiresCookieSecret() && loadsSettings[cmd] {
		if _, ok := os.LookupEnv("REDASH_COOKIE_SECRET"); !ok {
			if cmd == "worker" {
				return supervisedWorkerCannotStart(), true
			}
			fmt.Fprintln(os.Stderr, "Traceback (most recent call last):")
			fmt.Fprintln(os.Stderr, "  File \"/app/redash/settings/__init__.py\", line 62, in <module>")
			fmt.Fprintln(os.Stderr, cookieSecretError)
			return 1, true
		}
	}
	switch cmd {
	case "server":
		if _, err := proxiesCount(os.LookupEnv("REDASH_PROXIES_COUNT")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		return 0, false
	case "worker":
		return runJobService(f, cmd), true
	case "scheduler":
		if f.celery() {
			return runJobService(f, cmd), true // a Celery worker with beat
		}
		return 0, false
	case "create_db", "manage":
		return 0, false
	case "celery_healthcheck":
		if f.celery() {
			return celeryHealthcheck(), true
		}
		fmt.Println("DEPRECATED: Celery has been replaced with RQ and now performs healthchecks autonomously as part of the 'worker' entrypoint.")
		return 0, true
	case "workers_healthcheck":
		return workersHealthcheck(), true
	case "help":
		fmt.Printf("Redash Docker.\n\nUsage:\n\n%s\n", strings.Join(sortedKeys(entrypointCommands(f)), "\n"))
		return 0, true
	}
	fmt.Fprintf(os.Stderr, "fakeredash: %q is an entrypoint command of Redash %s that the stand-in does not play\n", cmd, f)
	return 2, true
}

// proxiesCount reads REDASH_PROXIES_COUNT as Redash's settings do:
// int(os.environ.get("REDASH_PROXIES_COUNT", "1")). Python's int() takes
// surrounding blanks and a sign; anything else raises at import.
func proxiesCount(v string, set bool) (int, error) {
	if !set {
		return 1, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("ValueError: invalid literal for int() with base 10: '%s'", v)
	}
	return n, nil
}

func sortedKeys(m map[string]bool) []string { return slices.Sorted(maps.Keys(m)) }
