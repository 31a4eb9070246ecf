package main

// worker.go: the worker and scheduler roles against a real Redis.
//
// RQ families (9.x on, and plain mode when REDASH_REDIS_URL is set): the
// worker starts WORKERS_COUNT RQ workers on QUEUES (split on spaces and
// commas; empty means Redash's six default queues). Each registers itself
// as RQ does (the set rq:workers, the hash rq:worker:<name> with queues
// and hostname, rq:workers:<queue>), heartbeats the hash's TTL, takes jobs
// from rq:queue:<name> and unregisters on SIGTERM after its current job.
// The RQ scheduler stays idle: rq-scheduler registers nothing per host.
//
// Celery (8.x): worker and scheduler are one Celery node celery@<hostname>
// on -Q QUEUES; it keeps the key celeryNodeKey alive while it can reach
// its broker (REDASH_CELERY_BROKER, else REDASH_REDIS_URL, read by kombu)
// and REDASH_REDIS_URL (read by redis-py 3, as Redash's own code does);
// celery_healthcheck asks for that key, as `celery inspect ping` asks the
// node. In plain mode worker and scheduler keep the key too, so a plain
// image tagged as any version passes every family's check.
//
// A connection that fails (AUTH above all) is logged and retried forever:
// Celery retries its broker, and an RQ worker that dies is restarted by
// supervisord; either way the container stays up and only Redis shows it.
//
// Jobs: a test pushes a job ID onto rq:queue:<queue> and may set the hash
// rq:job:<id> field sleep_ms; the worker adds it to RQ's started registry
// rq:wip:<queue> and sets status "started" with started_at, worker_name,
// worker_host (the container's host name) and worker_head (FAKEREDASH_HEAD:
// which image's worker took it), then "finished" with ended_at when done,
// leaving the registry.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	rqWorkersKey = "rq:workers"
	rqWorkerKey  = "rq:worker:"
	rqQueueKey   = "rq:queue:"
	rqJobKey     = "rq:job:"
	rqStartedKey = "rq:wip:" // + queue: RQ's StartedJobRegistry
	// startedTTL is what a started job's expiry adds to its run time
	// (RQ adds 60 s to the timeout or heartbeat).
	startedTTL = 60 * time.Second
	// workerTTL is the registration's lifetime without a heartbeat (RQ's
	// is worker_ttl+60 s; shorter here so a killed stand-in clears sooner).
	workerTTL      = 30 * time.Second
	heartbeatEvery = 5 * time.Second
	retryEvery     = time.Second
	// celeryNodeTTL bounds how long celery_healthcheck answers for a
	// stopped node.
	celeryNodeTTL = 10 * time.Second
	// wrongQueuesEnv makes the worker register these queues instead of
	// QUEUES: a stand-in "whose worker registers the wrong queues".
	wrongQueuesEnv = "FAKEREDASH_WORKER_QUEUES"
)

// rqDefaultQueues is redash/worker.py's default_queues (9.x on).
var rqDefaultQueues = []string{"scheduled_queries", "queries", "periodic", "emails", "default", "schemas"}

// jobsRunning counts the jobs this process is running, for the warm
// shutdown (H1's shutdown.go reads the same counter through jobRunning).
var jobsRunning atomic.Int32

// jobRunning reports whether a job is in progress.
func jobRunning() bool { return jobsRunning.Load() > 0 }

func celeryNodeKey(hostname string) string { return "fakeredash:celery:celery@" + hostname }

// runBackground plays worker or scheduler until ctx ends. It reports
// whether it played against Redis (false: idle, as before Redis).
func runBackground(ctx context.Context, cmd string) bool {
	f := familyFromEnv()
	redisURL := os.Getenv("REDASH_REDIS_URL")
	switch {
	case !f.plain() && f.major < 9:
		broker := os.Getenv("REDASH_CELERY_BROKER")
		if broker == "" {
			broker = redisURL
		}
		celeryNode(ctx, cmd, broker, redisURL, redisPy3)
		return true
	case f.plain() && redisURL == "":
		return false
	}
	kind := redisPy4
	if !f.plain() && !f.atLeast(25, 0) {
		kind = redisPy3
	}
	var wg sync.WaitGroup
	if f.plain() {
		wg.Add(1)
		go func() { defer wg.Done(); celeryNode(ctx, cmd, redisURL, redisURL, redisPy4) }()
	}
	if cmd == "worker" {
		n := 2 // the entrypoint's ${WORKERS_COUNT:-2}
		if v, err := strconv.Atoi(os.Getenv("WORKERS_COUNT")); err == nil && v > 0 {
			n = v
		}
		queues := splitQueues(os.Getenv("QUEUES"))
		if len(queues) == 0 {
			queues = rqDefaultQueues
		}
		if v := os.Getenv(wrongQueuesEnv); v != "" {
			queues = splitQueues(v)
		}
		for range n {
			wg.Add(1)
			go func() { defer wg.Done(); rqWorker(ctx, redisURL, kind, queues) }()
		}
		go func() {
			<-ctx.Done()
			if jobRunning() {
				fmt.Fprintln(os.Stderr, "fakeredash: warm shutdown: waiting for the running job(s) to finish")
			}
		}()
	}
	wg.Wait()
	if cmd == "scheduler" && !f.plain() {
		<-ctx.Done()
	}
	return true
}

// splitQueues splits on spaces and commas, as `manage.py rq worker` reads
// supervisord's %(ENV_QUEUES)s and Celery reads -Q.
func splitQueues(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' })
}

// connectRetrying connects until it succeeds or ctx ends (nil), logging
// each failure as the real worker's log would show it.
func connectRetrying(ctx context.Context, who, url string, kind redisClientKind) *redis.Client {
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := connectRedis(cctx, url, kind)
		cancel()
		if err == nil {
			return c
		}
		fmt.Fprintf(os.Stderr, "fakeredash: %s: %v; retrying in %s\n", who, err, retryEvery)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(retryEvery):
		}
	}
}

// rqWorker is one RQ worker process of the container.
func rqWorker(ctx context.Context, url string, kind redisClientKind, queues []string) {
	c := connectRetrying(ctx, "rq worker", url, kind)
	if c == nil {
		return
	}
	defer c.Close()
	hostname, _ := os.Hostname()
	var b [16]byte
	_, _ = rand.Read(b[:])
	name := hex.EncodeToString(b[:])
	key := rqWorkerKey + name
	register := func() error {
		now := time.Now().UTC().Format(time.RFC3339Nano)
		p := c.TxPipeline()
		p.SAdd(context.Background(), rqWorkersKey, key)
		for _, q := range queues {
			p.SAdd(context.Background(), "rq:workers:"+q, key)
		}
		p.HSet(context.Background(), key, "birth", now, "last_heartbeat", now, "queues", strings.Join(queues, ","),
			"hostname", hostname, "pid", strconv.Itoa(os.Getpid()), "state", "idle")
		p.Expire(context.Background(), key, workerTTL)
		_, err := p.Exec(context.Background())
		return err
	}
	if err := register(); err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: registering: %v\n", name, err)
	}
	fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s started on %s, queues %s\n", name, hostname, strings.Join(queues, ","))
	defer func() {
		bg := context.Background()
		p := c.TxPipeline()
		p.SRem(bg, rqWorkersKey, key)
		for _, q := range queues {
			p.SRem(bg, "rq:workers:"+q, key)
		}
		p.HSet(bg, key, "death", time.Now().UTC().Format(time.RFC3339Nano))
		p.Expire(bg, key, time.Minute)
		if _, err := p.Exec(bg); err != nil {
			fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: unregistering: %v\n", name, err)
		}
		fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s stopped (warm shutdown)\n", name)
	}()
	queueKeys := make([]string, len(queues))
	for i, q := range queues {
		queueKeys[i] = rqQueueKey + q
	}
	lastBeat := time.Now()
	for ctx.Err() == nil {
		if time.Since(lastBeat) >= heartbeatEvery {
			if err := register(); err != nil {
				fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: heartbeat: %v\n", name, err)
			}
			lastBeat = time.Now()
		}
		// A short BLPOP, so SIGTERM and the heartbeat are never far off.
		res, err := c.BLPop(context.Background(), time.Second, queueKeys...).Result()
		if err == redis.Nil {
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: waiting for a job: %v\n", name, err)
			time.Sleep(retryEvery)
			continue
		}
		runJob(c, name, key, strings.TrimPrefix(res[0], rqQueueKey), res[1])
	}
}

// runJob runs one job to its end, even after SIGTERM (a warm shutdown).
func runJob(c *redis.Client, worker, workerKey, queue, id string) {
	bg := context.Background()
	jobsRunning.Add(1)
	defer jobsRunning.Add(-1)
	jobKey := rqJobKey + id
	ms, _ := strconv.Atoi(c.HGet(bg, jobKey, "sleep_ms").Val())
	// RQ's StartedJobRegistry: the job's ID scored by when it expires, in
	// whole Unix seconds (rq 1.1/1.5: now + its timeout; 1.16: now + a
	// heartbeat TTL it refreshes). Removed when the job ends.
	expires := time.Now().Add(time.Duration(ms)*time.Millisecond + startedTTL).Unix()
	c.ZAdd(bg, rqStartedKey+queue, redis.Z{Score: float64(expires), Member: id})
	c.HSet(bg, workerKey, "state", "busy", "current_job", id)
	host, _ := os.Hostname()
	c.HSet(bg, jobKey, "status", "started", "worker_name", worker, "origin", queue,
		"started_at", time.Now().UTC().Format(time.RFC3339Nano), "worker_host", host, "worker_head", os.Getenv("FAKEREDASH_HEAD"))
	fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: %s: job %s started\n", worker, queue, id)
	time.Sleep(time.Duration(ms) * time.Millisecond)
	c.HSet(bg, jobKey, "status", "finished", "ended_at", time.Now().UTC().Format(time.RFC3339Nano))
	c.ZRem(bg, rqStartedKey+queue, id)
	c.HSet(bg, workerKey, "state", "idle", "current_job", "")
	fmt.Fprintf(os.Stderr, "fakeredash: rq worker %s: %s: job %s finished\n", worker, queue, id)
}

// celeryNode keeps this container's Celery node alive in Redis while it
// reaches both its broker (kombu) and REDASH_REDIS_URL (redisKind).
func celeryNode(ctx context.Context, cmd, brokerURL, redisURL string, redisKind redisClientKind) {
	hostname, _ := os.Hostname()
	queues := os.Getenv("QUEUES")
	if queues == "" {
		queues = "queries,scheduled_queries,celery,schemas" // the 8.x entrypoint's worker default
		if cmd == "scheduler" {
			queues = "celery"
		}
	}
	broker := connectRetrying(ctx, "celery "+cmd+" broker", brokerURL, kombu)
	if broker == nil {
		return
	}
	defer broker.Close()
	app := connectRetrying(ctx, "celery "+cmd+" REDASH_REDIS_URL", redisURL, redisKind)
	if app == nil {
		return
	}
	app.Close()
	fmt.Fprintf(os.Stderr, "fakeredash: celery@%s ready, -Q %s\n", hostname, queues)
	key := celeryNodeKey(hostname)
	for {
		if err := broker.Set(context.Background(), key, queues, celeryNodeTTL).Err(); err != nil {
			fmt.Fprintf(os.Stderr, "fakeredash: celery@%s: broker: %v\n", hostname, err)
		}
		select {
		case <-ctx.Done():
			broker.Del(context.Background(), key)
			return
		case <-time.After(2 * time.Second):
		}
	}
}
