// Package queues reads the queue system's own registry in Redis: which RQ
// workers are alive, on which host, consuming which queues, and how long
// each queue is. The agent's readiness asks it whether every queue of a
// worker container has a live consumer in that container; the same reader
// serves backlog metrics. It only reads: it never writes to Redis.
//
// RQ's layout (rq 1.1.0 in Redash 9, 1.5.0 in 10, 1.16.1 in 25 and 26, in
// rq/worker_registration.py and rq/worker.py): the set "rq:workers" holds
// each live worker's key "rq:worker:<name>", a hash whose "queues" field is
// the comma-joined queue names and whose "hostname" is socket.gethostname(),
// i.e. the container's hostname. The hash expires unless the worker
// heartbeats; a worker that dies cleanly leaves the set and sets "death".
// A queue's jobs wait in the list "rq:queue:<name>"; backlog.go reads the
// rest of the backlog (started jobs, and Celery's queues).
package queues

import (
	"context"
	"crypto/tls"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Keys of RQ's registry.
const (
	WorkersKey     = "rq:workers"
	WorkerPrefix   = "rq:worker:"
	QueuePrefix    = "rq:queue:"
	dialTimeout    = 5 * time.Second
	requestTimeout = 5 * time.Second
)

// Conn says how to reach Redis. Password is the AUTH token (never logged).
type Conn struct {
	Addr     string // host:port
	DB       int
	TLS      bool // rediss://, ElastiCache in-transit encryption
	Username string
	Password string
}

// Reader reads RQ's registry over one connection pool.
type Reader struct {
	c    *redis.Client
	addr string
}

// quietPool drops go-redis's own log lines (a pool that fails to dial
// prints one per attempt to stderr): every failure already reaches the
// caller as an error naming the address, and the callers decide how often
// the journal hears of it (the backlog metrics: once per outage).
type quietPool struct{}

func (quietPool) Printf(context.Context, string, ...any) {}

func init() { redis.SetLogger(quietPool{}) }

// Open returns a Reader for c; it does not dial until the first call.
func Open(c Conn) *Reader {
	opt := &redis.Options{
		Addr: c.Addr, DB: c.DB, Username: c.Username, Password: c.Password,
		DialTimeout: dialTimeout, ReadTimeout: requestTimeout, WriteTimeout: requestTimeout,
		MaxRetries: -1, // the caller polls: a retry inside would only stretch its bound
		PoolSize:   2,
	}
	if c.TLS {
		host, _, _ := strings.Cut(c.Addr, ":")
		opt.TLSConfig = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return &Reader{c: redis.NewClient(opt), addr: c.Addr}
}

// Close releases the connections.
func (r *Reader) Close() error { return r.c.Close() }

// Worker is one live RQ worker as it registered itself.
type Worker struct {
	Name     string
	Hostname string
	Queues   []string
}

// Workers lists the live workers: members of rq:workers whose hash still
// exists (a killed worker's hash expires after its TTL while its key may
// stay in the set until someone cleans it) and holds no "death".
func (r *Reader) Workers(ctx context.Context) ([]Worker, error) {
	keys, err := r.c.SMembers(ctx, WorkersKey).Result()
	if err != nil {
		return nil, r.wrap("reading the RQ worker set "+WorkersKey, err)
	}
	slices.Sort(keys)
	// One round trip for all of them: a fleet may run hundreds.
	p := r.c.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, key := range keys {
		cmds[i] = p.HMGet(ctx, key, "queues", "hostname", "death")
	}
	if len(keys) > 0 {
		if _, err := p.Exec(ctx); err != nil {
			return nil, r.wrap("reading the RQ workers of "+WorkersKey, err)
		}
	}
	var out []Worker
	for i, key := range keys {
		h := cmds[i].Val()
		queues, _ := h[0].(string)
		hostname, _ := h[1].(string)
		if h[0] == nil && h[1] == nil || h[2] != nil {
			continue // expired or dead
		}
		w := Worker{Name: strings.TrimPrefix(key, WorkerPrefix), Hostname: hostname}
		for _, q := range strings.Split(queues, ",") {
			if q = strings.TrimSpace(q); q != "" {
				w.Queues = append(w.Queues, q)
			}
		}
		out = append(out, w)
	}
	return out, nil
}

// QueueLength is the number of jobs waiting in queue.
func (r *Reader) QueueLength(ctx context.Context, queue string) (int64, error) {
	n, err := r.c.LLen(ctx, QueuePrefix+queue).Result()
	if err != nil {
		return 0, r.wrap("reading the length of RQ queue "+queue, err)
	}
	return n, nil
}

// Ping checks that Redis answers and accepts the credentials.
func (r *Reader) Ping(ctx context.Context) error {
	if err := r.c.Ping(ctx).Err(); err != nil {
		return r.wrap("PING", err)
	}
	return nil
}

func (r *Reader) wrap(what string, err error) error {
	return fmt.Errorf("redis at %s: %s: %w", r.addr, what, err)
}

// Missing returns the queues of want that no worker on hostname consumes,
// in want's order; nil when each has a consumer there.
func Missing(workers []Worker, hostname string, want []string) []string {
	have := map[string]bool{}
	for _, w := range workers {
		if w.Hostname != hostname {
			continue
		}
		for _, q := range w.Queues {
			have[q] = true
		}
	}
	var missing []string
	for _, q := range want {
		if !have[q] {
			missing = append(missing, q)
		}
	}
	return missing
}

// ParseQueues splits a worker's QUEUES setting the way `rq worker` reads
// its arguments in Redash's worker.conf: on spaces and, since rq 1.0's
// split, on commas.
func ParseQueues(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' }) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}
