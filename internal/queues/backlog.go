package queues

// backlog.go: how much work waits and runs, per queue, for the backlog
// metrics (internal/metrics).
//
// RQ (rq 1.1.0 in Redash 9, 1.5.0 in 10, 1.16.1 in 25 and 26; rq/queue.py,
// rq/registry.py, rq/worker.py): a queue's waiting jobs are the list
// "rq:queue:<name>"; a started job sits in the sorted set "rq:wip:<name>"
// (StartedJobRegistry) scored by the Unix time it expires at: now + the
// job's timeout in 1.1 and 1.5, now + the heartbeat TTL (refreshed while
// the job runs) in 1.16; "+inf" for a job without a timeout. RQ's own
// cleanup treats a score <= now as an abandoned job, so a running job is
// one whose score is in the future. The set "rq:queues" names every queue
// a job was ever enqueued on ("rq:queue:<name>").
//
// Celery (Redash 8.x, kombu 4.6.3's Redis transport): a queue is the list
// named after it, plus one list per priority step ("<name>\x06\x16<3|6|9>");
// kombu's own _size adds the four. A job a worker took is in kombu's
// "unacked" hash with the jobs it prefetched but does not yet run, and
// Celery registers its workers nowhere in Redis: for Celery only the
// queued count is known.

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// More keys of RQ's registry.
const (
	QueuesKey  = "rq:queues"
	StartedKey = "rq:wip:" // + queue name: the StartedJobRegistry
)

// celeryPrioritySep and celeryPriorities are kombu's Redis transport's
// sep and PRIORITY_STEPS above 0.
const celeryPrioritySep = "\x06\x16"

var celeryPriorities = []string{"3", "6", "9"}

// MaxQueues bounds how many queues one Backlog reads: a registry full of
// one-off queue names must not make a metrics tick unbounded.
const MaxQueues = 100

// QueueBacklog is one queue's work.
type QueueBacklog struct {
	Queue   string
	Queued  int64 // jobs waiting
	Running int64 // jobs started and not expired (RQ only)
	Workers int   // live workers consuming it (RQ only)
}

// Backlog is the whole queue system's work at one moment.
type Backlog struct {
	// Celery: Running and Workers are not known (see the file comment).
	Celery bool
	Queues []QueueBacklog // sorted by name
	// Workers is the number of live workers (RQ only).
	Workers int
}

// Queued is the jobs waiting on all queues.
func (b Backlog) Queued() int64 {
	var n int64
	for _, q := range b.Queues {
		n += q.Queued
	}
	return n
}

// Running is the jobs running on all queues (RQ only).
func (b Backlog) Running() int64 {
	var n int64
	for _, q := range b.Queues {
		n += q.Running
	}
	return n
}

// RQBacklog reads RQ's queues: those in want (reported even when empty),
// those in rq:queues and those a live worker consumes, at most MaxQueues.
// now decides which started jobs are still running.
func (r *Reader) RQBacklog(ctx context.Context, want []string, now time.Time) (Backlog, error) {
	workers, err := r.Workers(ctx)
	if err != nil {
		return Backlog{}, err
	}
	known, err := r.c.SMembers(ctx, QueuesKey).Result()
	if err != nil {
		return Backlog{}, r.wrap("reading the RQ queue set "+QueuesKey, err)
	}
	names := slices.Clone(want)
	for _, k := range known {
		names = append(names, strings.TrimPrefix(k, QueuePrefix))
	}
	for _, w := range workers {
		names = append(names, w.Queues...)
	}
	names = boundedQueues(names, want)

	// Still running: a score after now (RQ's scores are whole seconds).
	after := "(" + strconv.FormatInt(now.Unix(), 10)
	p := r.c.Pipeline()
	lens := make([]*redis.IntCmd, len(names))
	started := make([]*redis.IntCmd, len(names))
	for i, q := range names {
		lens[i] = p.LLen(ctx, QueuePrefix+q)
		started[i] = p.ZCount(ctx, StartedKey+q, after, "+inf")
	}
	if _, err := p.Exec(ctx); err != nil {
		return Backlog{}, r.wrap("reading the length of the RQ queues and their started registries", err)
	}
	b := Backlog{Workers: len(workers)}
	for i, q := range names {
		qb := QueueBacklog{Queue: q, Queued: lens[i].Val(), Running: started[i].Val()}
		for _, w := range workers {
			if slices.Contains(w.Queues, q) {
				qb.Workers++
			}
		}
		b.Queues = append(b.Queues, qb)
	}
	return b, nil
}

// CeleryBacklog reads the length of each Celery queue in want.
func (r *Reader) CeleryBacklog(ctx context.Context, want []string) (Backlog, error) {
	names := boundedQueues(slices.Clone(want), want)
	p := r.c.Pipeline()
	lens := make([][]*redis.IntCmd, len(names))
	for i, q := range names {
		lens[i] = append(lens[i], p.LLen(ctx, q))
		for _, pri := range celeryPriorities {
			lens[i] = append(lens[i], p.LLen(ctx, q+celeryPrioritySep+pri))
		}
	}
	if _, err := p.Exec(ctx); err != nil {
		return Backlog{}, r.wrap("reading the length of the Celery queues", err)
	}
	b := Backlog{Celery: true}
	for i, q := range names {
		qb := QueueBacklog{Queue: q}
		for _, l := range lens[i] {
			qb.Queued += l.Val()
		}
		b.Queues = append(b.Queues, qb)
	}
	return b, nil
}

// RunningJobs lists the IDs of queue's started RQ jobs that have not
// expired at now (the StartedJobRegistry), for a drain that names them.
func (r *Reader) RunningJobs(ctx context.Context, queue string, now time.Time) ([]string, error) {
	// ZRANGEBYSCORE itself: go-redis's wrapper is deprecated for ZRANGE
	// BYSCORE, which Redis before 6.2 (older ElastiCache) does not know.
	ids, err := r.c.Do(ctx, "ZRANGEBYSCORE", StartedKey+queue, "("+strconv.FormatInt(now.Unix(), 10), "+inf").StringSlice()
	if err != nil {
		return nil, r.wrap("reading RQ's started jobs of queue "+queue, err)
	}
	return ids, nil
}

// boundedQueues sorts and dedups names, drops empty ones, and keeps at most
// MaxQueues, those in want first.
func boundedQueues(names, want []string) []string {
	names = slices.DeleteFunc(names, func(s string) bool { return s == "" })
	slices.Sort(names)
	names = slices.Compact(names)
	if len(names) <= MaxQueues {
		return names
	}
	keep := slices.DeleteFunc(slices.Clone(names), func(s string) bool { return !slices.Contains(want, s) })
	for _, n := range names {
		if len(keep) >= MaxQueues {
			break
		}
		if !slices.Contains(keep, n) {
			keep = append(keep, n)
		}
	}
	keep = keep[:min(len(keep), MaxQueues)]
	slices.Sort(keep)
	return keep
}
