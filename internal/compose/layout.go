package compose

import (
	"strconv"
	"time"
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

// Stop grace periods (compose stop_grace_period): how long Docker waits
// after SIGTERM before SIGKILL.
const (
	// DefaultWorkerStopGrace is the grace of the services that run jobs
	// when Spec.WorkerStopGrace is zero (redash:worker-stop-grace).
	DefaultWorkerStopGrace = 5 * time.Minute
	// webStopGrace is the server's and nginx's: they only finish requests in
	// flight, and a recreate of the server should not hold nginx's restart.
	webStopGrace = 5 * time.Second
	// rqSchedulerStopGrace is the RQ scheduler's: it only enqueues, and
	// exits at once on SIGTERM.
	rqSchedulerStopGrace = 10 * time.Second
	// unreachableStopGrace is Docker's default, for a worker that never sees
	// SIGTERM (9.x): a longer grace would only delay the same SIGKILL.
	unreachableStopGrace = 10 * time.Second
)

// runsJobs reports whether the service executes jobs: the workers, and
// 8.x's scheduler (a Celery worker with beat, consuming the celery queue).
func (s service) runsJobs() bool { return s.queues != "" }

// stopGraceFor is the stop grace of one Redash service of family f.
func stopGraceFor(f Family, s service, workerGrace time.Duration) time.Duration {
	switch {
	case s.name == ServerService:
		return webStopGrace
	case !s.runsJobs():
		return rqSchedulerStopGrace
	case !f.WorkerGetsSIGTERM():
		return unreachableStopGrace
	case workerGrace == 0:
		return DefaultWorkerStopGrace
	}
	// From 10.x the image's supervisord cuts a job off after 10 s anyway
	// (Family.SupervisorStopWait); Docker's grace is the outer bound and
	// takes effect in full for 8.x, where celery is PID 1.
	return workerGrace
}
