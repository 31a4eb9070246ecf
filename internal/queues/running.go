package queues

import (
	"context"
	"slices"
	"strings"
)

// JobPrefix is the key prefix of RQ's job hashes ("rq:job:<id>"): rq sets
// "origin" (the queue) and "description" (the call, e.g.
// "redash.tasks.queries.execution.execute_query(...)").
const JobPrefix = "rq:job:"

// Job is a job a live worker is running.
type Job struct {
	ID       string
	Queue    string // the job's origin, "" if its hash is gone
	Function string // the description up to its arguments, "" if unknown
	Worker   string
	Hostname string
}

// Name is how the journal names the job: its id, with its queue and its
// function when known (never its arguments, which may hold query text).
func (j Job) Name() string {
	var b strings.Builder
	b.WriteString(j.ID)
	if j.Function != "" {
		b.WriteString(" " + j.Function)
	}
	if j.Queue != "" {
		b.WriteString(" (queue " + j.Queue + ")")
	}
	return b.String()
}

// JobsOnHosts lists the jobs that workers on the given hosts are running:
// the "current_job" field RQ's worker sets in its own hash while it works
// (rq/worker.py set_current_job_id) and clears after. A worker killed in
// the middle of a job leaves it there until its hash expires, so this also
// names the job a killed worker lost.
func (r *Reader) JobsOnHosts(ctx context.Context, hostnames []string) ([]Job, error) {
	keys, err := r.c.SMembers(ctx, WorkersKey).Result()
	if err != nil {
		return nil, r.wrap("reading the RQ worker set "+WorkersKey, err)
	}
	slices.Sort(keys)
	var out []Job
	for _, key := range keys {
		h, err := r.c.HMGet(ctx, key, "hostname", "current_job", "death").Result()
		if err != nil {
			return nil, r.wrap("reading RQ worker "+key, err)
		}
		host, _ := h[0].(string)
		id, _ := h[1].(string)
		if id == "" || h[2] != nil || !slices.Contains(hostnames, host) {
			continue
		}
		j := Job{ID: id, Worker: strings.TrimPrefix(key, WorkerPrefix), Hostname: host}
		if jh, err := r.c.HMGet(ctx, JobPrefix+id, "origin", "description").Result(); err == nil {
			j.Queue, _ = jh[0].(string)
			desc, _ := jh[1].(string)
			j.Function, _, _ = strings.Cut(desc, "(")
		}
		out = append(out, j)
	}
	return out, nil
}
