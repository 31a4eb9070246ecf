package main

// shutdown.go: the services that run jobs (the workers, and 8.x's
// scheduler, a Celery worker with beat) and what each family does with a
// job in flight when Docker stops the container:
//
//	8.x        celery is PID 1: warm shutdown, waits for the job, exits 0
//	9.x        bash is PID 1 (supervisord runs without exec) and has no
//	           SIGTERM handler: the signal is dropped, only SIGKILL ends it
//	10.x on    supervisord is PID 1: TERM to the worker, which finishes its
//	           job, but SIGKILL after stopwaitsecs (default 10 s); exits 0
//
// "A job is running" is a small state shared through a file, so a test can
// start one with `docker exec <c> /fakeredash job 12s`, and code in this
// process (a worker consuming a real queue) can set it with startJob too.

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// jobStatePath holds the end of the running job, in Unix nanoseconds.
const jobStatePath = "/tmp/fakeredash-job"

// supervisorStopWait is supervisord's default stopwaitsecs: no release's
// worker.conf sets another.
const supervisorStopWait = 10 * time.Second

// jobPoll is how often a worker looks at the job state, to log a new job.
const jobPoll = 100 * time.Millisecond

// startJob records a job that runs for d from now.
func startJob(d time.Duration) error {
	end := time.Now().Add(d).UnixNano()
	tmp := jobStatePath + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.FormatInt(end, 10)), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, jobStatePath)
}

// runningJob reports the end of the job in flight, if one is.
func runningJob() (end time.Time, ok bool) {
	b, err := os.ReadFile(jobStatePath)
	if err != nil {
		return time.Time{}, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	end = time.Unix(0, n)
	return end, time.Now().Before(end)
}

// runJobCommand is `fakeredash job <duration>`.
func runJobCommand(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: fakeredash job <duration>, e.g. job 12s")
		return 2
	}
	d, err := time.ParseDuration(args[0])
	if err != nil || d <= 0 {
		fmt.Fprintf(os.Stderr, "fakeredash job: %q is not a positive duration, e.g. 12s\n", args[0])
		return 2
	}
	if err := startJob(d); err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash job: recording the job: %v\n", err)
		return 1
	}
	fmt.Printf("job running for %s\n", d)
	return 0
}

// runJobService plays a worker, or 8.x's scheduler, until it is stopped.
func runJobService(f family, cmd string) int {
	if err := dumpEnv(envDumpPath, os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: writing the environment to %q: %v\n", envDumpPath, err)
		return 1
	}
	switch {
	case f.celery():
		fmt.Fprintf(os.Stderr, "Starting %s workers for queues: %s...\n", os.Getenv("WORKERS_COUNT"), os.Getenv("QUEUES"))
	default:
		fmt.Fprintln(os.Stderr, "Starting RQ worker...")
	}
	fmt.Fprintf(os.Stderr, "fakeredash: %s started\n", cmd)

	if !f.celery() && f.major == 9 {
		// bash, PID 1, waits for supervisord and never sees SIGTERM.
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
		go runBackground(context.Background(), cmd)
		watchJobs(context.Background())
		return 0 // not reached: only SIGKILL ends it
	}
	ctx, stop := stopContext()
	defer stop()
	// The queue side (worker.go: Redis, registration, jobs from the
	// queues) runs beside the job state a test sets with `fakeredash job`.
	consumed := make(chan struct{})
	go func() { runBackground(ctx, cmd); close(consumed) }()
	watchJobs(ctx)
	code := warmShutdown(f)
	<-consumed // its own warm shutdown: the running queue jobs end first
	return code
}

// watchJobs logs each job as the worker sees it start, until ctx ends.
func watchJobs(ctx context.Context) {
	var seen time.Time
	t := time.NewTicker(jobPoll)
	defer t.Stop()
	for {
		if end, ok := runningJob(); ok && !end.Equal(seen) {
			seen = end
			fmt.Fprintf(os.Stderr, "fakeredash: job started, runs for %s\n", time.Until(end).Round(time.Second))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// warmShutdown is what happens after SIGTERM reached the worker.
func warmShutdown(f family) int {
	end, busy := runningJob()
	if f.celery() {
		fmt.Fprintln(os.Stderr, "worker: Warm shutdown (MainProcess)")
		if busy {
			time.Sleep(time.Until(end))
			fmt.Fprintln(os.Stderr, "fakeredash: job finished")
		}
		return 0
	}
	fmt.Fprintln(os.Stderr, "WARN received SIGTERM indicating exit request")
	if busy {
		fmt.Fprintln(os.Stderr, "INFO waiting for worker-0 to die")
		if left := time.Until(end); left > supervisorStopWait {
			time.Sleep(supervisorStopWait)
			fmt.Fprintln(os.Stderr, "WARN killing 'worker-0' (pid 8) with SIGKILL")
			fmt.Fprintln(os.Stderr, "WARN stopped: worker-0 (terminated by SIGKILL)")
			fmt.Fprintln(os.Stderr, "fakeredash: job killed")
			return 0
		}
		time.Sleep(time.Until(end))
		fmt.Fprintln(os.Stderr, "fakeredash: job finished")
	}
	fmt.Fprintln(os.Stderr, "INFO stopped: worker-0 (exit status 0)")
	return 0
}

// supervisedWorkerCannotStart is an RQ worker container (10.x on) without
// REDASH_COOKIE_SECRET: supervisord stays up, PID 1, while each start of
// `manage.py rq worker` raises; after startretries (3) it gives up on the
// program and idles, consuming nothing, until it is stopped.
func supervisedWorkerCannotStart() int {
	ctx, stop := stopContext()
	defer stop()
	fmt.Fprintln(os.Stderr, "Starting RQ worker...")
	for range 4 {
		fmt.Fprintln(os.Stderr, cookieSecretError)
		fmt.Fprintln(os.Stderr, "INFO exited: worker-0 (exit status 1; not expected)")
	}
	fmt.Fprintln(os.Stderr, "INFO gave up: worker-0 entered FATAL state, too many start retries too quickly")
	<-ctx.Done()
	return 0
}
