package main

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/queues"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestRQWorkerRegistersConsumesUnregisters plays a 10.x worker in-process
// against a real Redis: it registers WORKERS_COUNT workers with their
// queues and this host's name, runs a pushed job to "finished", and leaves
// the registry on stop.
func TestRQWorkerRegistersConsumesUnregisters(t *testing.T) {
	srv := testenv.RedisWithPassword(t, "p%41ss!w:rd")
	t.Setenv("FAKEREDASH_FAMILY", "10")
	t.Setenv("REDASH_REDIS_URL", "redis://:p%41ss!w:rd@"+srv.Addr()+"/0") // raw, as redis-py 3 reads it
	t.Setenv("QUEUES", "queries, schemas")
	t.Setenv("WORKERS_COUNT", "2")
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { runBackground(ctx, "worker"); close(done) }()

	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: srv.Password})
	defer r.Close()
	host, _ := os.Hostname()
	deadline := time.Now().Add(15 * time.Second)
	for {
		ws, err := r.Workers(context.Background())
		if err == nil && len(ws) == 2 && queues.Missing(ws, host, []string{"queries", "schemas"}) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers not registered within 15s: %v %v", ws, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	c := srv.Client()
	defer c.Close()
	// While it runs, the job is in RQ's started registry, as the backlog
	// metrics and a drain read it (internal/queues); then it leaves it.
	c.HSet(context.Background(), "rq:job:job1", "sleep_ms", "1500")
	c.RPush(context.Background(), "rq:queue:schemas", "job1")
	for c.HGet(context.Background(), "rq:job:job1", "status").Val() != "started" {
		if time.Now().After(deadline) {
			t.Fatal("job1 not started within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if b, err := r.RQBacklog(context.Background(), []string{"schemas"}, time.Now()); err != nil || b.Running() != 1 || b.Queued() != 0 {
		t.Errorf("backlog while job1 runs: %+v, %v; want 1 running, 0 queued", b, err)
	}
	for c.HGet(context.Background(), "rq:job:job1", "status").Val() != "finished" {
		if time.Now().After(deadline) {
			t.Fatal("job1 not finished within 15s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ids, err := r.RunningJobs(context.Background(), "schemas", time.Now()); err != nil || len(ids) != 0 {
		t.Errorf("started registry after job1 finished: %v, %v; want empty", ids, err)
	}
	stop()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("workers did not stop within 10s of the signal")
	}
	if ws, _ := r.Workers(context.Background()); len(ws) != 0 {
		t.Errorf("workers left registered after stop: %v", ws)
	}
}

// TestHealthchecks runs the health commands as `docker exec` would (the
// test binary re-executed), per family.
func TestHealthchecks(t *testing.T) {
	if os.Getenv("FAKEREDASH_HEALTHCHECK") != "" {
		code, _ := healthcheck(os.Getenv("FAKEREDASH_HEALTHCHECK"))
		os.Exit(code)
	}
	srv := testenv.Redis(t)
	url := "redis://:" + escapeAll(srv.Password) + "@" + srv.Addr() + "/0"
	run := func(family, cmd string, env ...string) int {
		c := exec.Command(os.Args[0], "-test.run=^TestHealthchecks$")
		c.Env = append(os.Environ(), "FAKEREDASH_HEALTHCHECK="+cmd, "FAKEREDASH_FAMILY="+family, "REDASH_REDIS_URL="+url, "HOSTNAME=h1")
		c.Env = append(c.Env, env...)
		err := c.Run()
		if e, ok := err.(*exec.ExitError); ok {
			return e.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	}
	if code := run("8", "celery_healthcheck"); code != 69 {
		t.Errorf("celery_healthcheck without a node: exit %d, want 69", code)
	}
	c := srv.Client()
	defer c.Close()
	c.Set(context.Background(), celeryNodeKey("h1"), "celery", time.Minute)
	if code := run("8", "celery_healthcheck"); code != 0 {
		t.Errorf("celery_healthcheck with a live node: exit %d", code)
	}
	if code := run("10", "celery_healthcheck"); code != 0 {
		t.Errorf("10.x celery_healthcheck (deprecated, prints only): exit %d", code)
	}
	if code := run("25.1", "celery_healthcheck"); code != 127 {
		t.Errorf("25.1 celery_healthcheck: exit %d, want 127 (no such command)", code)
	}
	if code := run("25.1", "workers_healthcheck", "WORKERS_COUNT=1"); code != 1 {
		t.Errorf("workers_healthcheck without workers: exit %d, want 1", code)
	}
	c.SAdd(context.Background(), rqWorkersKey, "rq:worker:w1")
	c.HSet(context.Background(), "rq:worker:w1", "queues", "default", "hostname", "h1")
	if code := run("25.1", "workers_healthcheck", "WORKERS_COUNT=1"); code != 0 {
		t.Errorf("workers_healthcheck with one live worker: exit %d", code)
	}
	if code := run("10", "workers_healthcheck", "WORKERS_COUNT=1"); code != 127 {
		t.Errorf("10.x workers_healthcheck: exit %d, want 127", code)
	}
}

func escapeAll(s string) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		b = append(b, '%', hex[s[i]>>4], hex[s[i]&15])
	}
	return string(b)
}
