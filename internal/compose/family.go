package compose

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Family is what the agent must know about a Redash release beyond its
// service layout: how its clients read the URLs the agent writes, which
// entrypoint commands it has, where its images run. Each fact was read in
// Redash's own source at v8.0.0, v9.0.0-beta, v10.1.0, v25.1.0 and v26.3.0
// (bin/docker-entrypoint, redash/settings, the requirements files); the
// methods say where.
type Family struct {
	Major, Minor int
}

// FamilyFor parses a Redash image tag such as "8.0.0.b32245",
// "10.1.0.b50633", "25.8.0" or "26.3.0". A tag without a numeric major
// version ("latest", "preview") is an error, since guessing would start the
// wrong services.
func FamilyFor(version string) (Family, error) {
	v := strings.TrimPrefix(version, "v")
	majorText, rest, _ := strings.Cut(v, ".")
	major, err := strconv.Atoi(majorText)
	if err != nil || major < 1 || majorText != strconv.Itoa(major) {
		return Family{}, fmt.Errorf("picking the service layout for Redash version %q: it does not start with a major version number: use a release tag like 8.0.0.b32245, 10.1.0.b50633 or 25.8.0", version)
	}
	minorText, _, _ := strings.Cut(rest, ".")
	minor, _ := strconv.Atoi(minorText) // "26.02.0-dev" is 2; a missing minor is 0
	return Family{Major: major, Minor: minor}, nil
}

func (f Family) String() string { return strconv.Itoa(f.Major) + ".x" }

func (f Family) atLeast(major, minor int) bool {
	return f.Major > major || f.Major == major && f.Minor >= minor
}

// Layout is the family's set of background services: Celery up to 8, RQ
// from 9 (v9.0.0-beta's requirements hold rq 1.1.0 and no Celery).
func (f Family) Layout() Layout {
	if f.Major < 9 {
		return Celery
	}
	return RQ
}

// RedisDecodesPassword reports whether redash.from_url percent-decodes the
// password of REDASH_REDIS_URL: redis-py 4 (25.x and later) does; redis-py 3
// (8.x: 3.2.1, 9.x: 3.3.11, 10.x: 3.5.0) does not, its decode_components
// defaults to false.
func (f Family) RedisDecodesPassword() bool { return f.Major >= 25 }

// HasCeleryBroker reports whether Celery reads the broker from
// REDASH_CELERY_BROKER (default REDASH_REDIS_URL). kombu percent-decodes
// the password even where redis-py does not (8.x).
func (f Family) HasCeleryBroker() bool { return f.Layout() == Celery }

// RequiresCookieSecret reports whether every command fails without
// REDASH_COOKIE_SECRET (10.x settings raise; 8.x and 9.x fall back to a
// constant).
func (f Family) RequiresCookieSecret() bool { return f.Major >= 10 }

// EnforcesCSRF reports whether getredash/setup turns REDASH_ENFORCE_CSRF on
// for this family (its setup.sh does for the releases it installs, 10.x on;
// the setting itself defaults to false).
func (f Family) EnforcesCSRF() bool { return f.Major >= 10 }

// WorkerHealthcheck is the entrypoint command that checks a worker
// container from inside it, or "" when the family has none that works:
// 8.x's celery_healthcheck pings the container's own Celery worker; from
// 25.1, workers_healthcheck counts the live RQ workers against
// WORKERS_COUNT. (9.x and 10.x only print that celery_healthcheck is
// deprecated.)
func (f Family) WorkerHealthcheck() string {
	switch {
	case f.Layout() == Celery:
		return "celery_healthcheck"
	case f.atLeast(25, 1):
		return "workers_healthcheck"
	}
	return ""
}

// SingleScheduler reports whether the scheduler must run once per cluster
// and only the agent can see to it: 8.x's Celery beat has no lock of its
// own; RQ's scheduler (9.x on) takes one in Redis.
func (f Family) SingleScheduler() bool { return f.Layout() == Celery }

// MultiArch reports whether the official images exist for arm64 too: up to
// 10.1 they are amd64 only.
func (f Family) MultiArch() bool { return f.Major >= 25 }

// BindsIPv6 reports whether the server binds [::]:5000 and so fails on a
// host whose kernel has no IPv6 (since 26.02, getredash/redash#7596).
func (f Family) BindsIPv6() bool { return f.atLeast(26, 2) }

// WorkerGetsSIGTERM reports whether `docker stop` reaches the processes that
// run jobs, so that a long stop grace lets them finish (a warm shutdown).
// 8.x's entrypoint execs celery, PID 1, which finishes its tasks on SIGTERM.
// From 10.x it execs supervisord, which passes TERM to each `rq worker`;
// but worker.conf sets no stopwaitsecs, so supervisord SIGKILLs a worker
// still in its job after its default 10 s, whatever Docker's grace. 9.x
// runs supervisord without exec (v9.0.0-beta:bin/docker-entrypoint): bash
// stays PID 1 with no SIGTERM handler, and the init of a PID namespace
// never gets a signal it has no handler for, so only the SIGKILL at the
// end of the grace stops the container.
func (f Family) WorkerGetsSIGTERM() bool { return f.Major != 9 }

// SupervisorStopWait is how long the image's supervisord lets an RQ worker
// finish after TERM before it SIGKILLs it (stopwaitsecs, default 10 s; no
// release's worker.conf sets it), or 0 where no supervisord stands between
// Docker and the worker (8.x's celery is PID 1).
func (f Family) SupervisorStopWait() time.Duration {
	if f.Layout() == Celery {
		return 0
	}
	return 10 * time.Second
}
