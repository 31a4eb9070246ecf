package compose

import (
	"strconv"
)

// Layout is the set of background services a Redash release expects. It
// changed once: Redash 9 replaced Celery with RQ.
type Layout int

const (
	// Celery is the layout of Redash 8 and earlier: the scheduler is a Celery
	// worker with beat, so it takes QUEUES and WORKERS_COUNT like the workers.
	Celery Layout = iota + 1
	// RQ is the layout of Redash 9 and later: an RQ scheduler plus workers,
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

// LayoutFor picks the layout from a Redash image tag such as "8.0.0.b32245",
// "9.0.0-beta.b42121", "10.1.0.b50633" or "25.8.0" (see FamilyFor).
func LayoutFor(version string) (Layout, error) {
	f, err := FamilyFor(version)
	if err != nil {
		return 0, err
	}
	return f.Layout(), nil
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
// RQ queues are separated by spaces: supervisord passes %(ENV_QUEUES)s to
// `manage.py rq worker` as separate arguments, and that command also splits
// each argument on commas (redash/cli/rq.py, since 9.0), so either works;
// spaces match getredash/setup's older files. Celery takes -Q with a comma
// list, as setup's 8.x file has it.
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
