package compose

import (
	"fmt"
	"strconv"
	"strings"
)

// Layout is the set of background services a Redash release expects. It
// changed once: Redash 10 replaced Celery with RQ.
type Layout int

const (
	// Celery is the layout of Redash 8 and earlier: the scheduler is a Celery
	// worker with beat, so it takes QUEUES and WORKERS_COUNT like the workers.
	Celery Layout = iota + 1
	// RQ is the layout of Redash 10 and later: an RQ scheduler plus workers,
	// with a general `worker` service for periodic jobs and e-mails.
	RQ
)

func (l Layout) String() string {
	switch l {
	case Celery:
		return "celery"
	case RQ:
		return "rq"
	}
	return "Layout(" + strconv.Itoa(int(l)) + ")"
}

// rqMajor is the first Redash major version on RQ. Redash 9 only ever
// shipped as betas that were half-way between the two; like getredash/setup
// (which jumped from 8 to 10) it is treated as Celery.
const rqMajor = 10

// LayoutFor picks the layout from a Redash image tag such as "8.0.0.b32245",
// "10.1.0.b50633" or "25.8.0". Only the major version counts; a tag without a
// numeric major version ("latest", "preview") is an error, since guessing
// would start the wrong services.
func LayoutFor(version string) (Layout, error) {
	v := strings.TrimPrefix(version, "v")
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil || n < 1 || major != strconv.Itoa(n) {
		return 0, fmt.Errorf("picking the service layout for Redash version %q: it does not start with a major version number: use a release tag like 8.0.0.b32245, 10.1.0.b50633 or 25.8.0", version)
	}
	if n < rqMajor {
		return Celery, nil
	}
	return RQ, nil
}

// service is one Redash container of a layout.
type service struct {
	name    string
	command string
	// queues and workers are QUEUES and WORKERS_COUNT; empty queues means the
	// service takes neither (the RQ scheduler, the server).
	queues  string
	workers int
}

// Defaults follow getredash/setup's compose files for each generation.
//
// RQ queues are separated by spaces, not commas as in setup's newest file:
// Redash 10's `manage.py rq worker` takes the queues as separate arguments
// (supervisord splits %(ENV_QUEUES)s on spaces) and does not split commas, so
// "scheduled_queries,schemas" would be one queue nobody feeds. Releases after
// 10 split every argument on commas too, so spaces work for all of them.
// Celery takes -Q with a comma list, as setup's 8.x file has it.
var layouts = map[Layout][]service{
	Celery: {
		{name: ServerService, command: "server"},
		{name: "scheduler", command: "scheduler", queues: "celery", workers: 1},
		{name: "scheduled_worker", command: "worker", queues: "scheduled_queries,schemas", workers: 1},
		{name: "adhoc_worker", command: "worker", queues: "queries", workers: 2},
	},
	RQ: {
		{name: ServerService, command: "server"},
		{name: "scheduler", command: "scheduler"},
		{name: "scheduled_worker", command: "worker", queues: "scheduled_queries schemas", workers: 1},
		{name: "adhoc_worker", command: "worker", queues: "queries", workers: 2},
		{name: "worker", command: "worker", queues: "periodic emails default", workers: 1},
	},
}

// defaultWebWorkers is REDASH_WEB_WORKERS in getredash/setup.
const defaultWebWorkers = 4

// WorkerServices lists the services of a layout that take WORKERS_COUNT, in
// layout order: the keys allowed in redash:workers:<service>.
func WorkerServices(l Layout) []string {
	var out []string
	for _, s := range layouts[l] {
		if s.workers > 0 {
			out = append(out, s.name)
		}
	}
	return out
}
