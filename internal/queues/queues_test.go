package queues_test

import (
	"context"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/redash-agent/redash-agent/internal/queues"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestParseQueues(t *testing.T) {
	got := queues.ParseQueues("queries, scheduled_queries,schemas  periodic queries")
	want := []string{"queries", "scheduled_queries", "schemas", "periodic"}
	if !slices.Equal(got, want) {
		t.Errorf("ParseQueues = %q, want %q", got, want)
	}
}

// TestWorkersAgainstRedis registers workers the way RQ does and reads them
// back: live ones with their queues, expired and dead ones left out; then
// Missing finds the queues without a consumer on one host.
func TestWorkersAgainstRedis(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := srv.Client()
	defer c.Close()
	register := func(name, host, qs string, ttl time.Duration, dead bool) {
		key := queues.WorkerPrefix + name
		c.SAdd(ctx, queues.WorkersKey, key)
		c.HSet(ctx, key, "queues", qs, "hostname", host, "birth", "2024-01-01T00:00:00Z")
		if dead {
			c.HSet(ctx, key, "death", "2024-01-01T00:00:01Z")
		}
		c.PExpire(ctx, key, ttl)
	}
	register("a.1", "c1", "queries,schemas", time.Minute, false)
	register("a.2", "c1", "periodic", time.Minute, false)
	register("b.1", "c2", "emails", time.Minute, false)
	register("dead", "c1", "emails", time.Minute, true)
	register("expired", "c1", "default", time.Millisecond, false)
	time.Sleep(20 * time.Millisecond) // let the 1 ms TTL pass: setup, not an assertion

	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: srv.Password})
	defer r.Close()
	ws, err := r.Workers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, w := range ws {
		names = append(names, w.Name+"@"+w.Hostname+"="+strings.Join(w.Queues, "+"))
	}
	want := []string{"a.1@c1=queries+schemas", "a.2@c1=periodic", "b.1@c2=emails"}
	if !slices.Equal(names, want) {
		t.Errorf("workers = %q, want %q", names, want)
	}
	if m := queues.Missing(ws, "c1", []string{"queries", "periodic", "emails", "default"}); !slices.Equal(m, []string{"emails", "default"}) {
		t.Errorf("Missing on c1 = %q, want [emails default] (b.1 consumes emails on another host)", m)
	}
	c.RPush(ctx, queues.QueuePrefix+"queries", "j1", "j2")
	if n, err := r.QueueLength(ctx, "queries"); err != nil || n != 2 {
		t.Errorf("QueueLength = %d, %v; want 2", n, err)
	}
}

func TestWrongPassword(t *testing.T) {
	srv := testenv.Redis(t)
	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: "not-the-pw-42"})
	defer r.Close()
	err := r.Ping(context.Background())
	if err == nil || !strings.Contains(err.Error(), srv.Addr()) || strings.Contains(err.Error(), "not-the-pw-42") {
		t.Errorf("Ping with a wrong password: %v (must fail, name the address, not the password)", err)
	}
}

// TestRQBacklog lays out RQ's keys as rq 1.x writes them: 7 jobs waiting in
// queries and 2 in scheduled_queries, started jobs scored by their expiry
// (one in the future, one without a timeout, one expired: abandoned), and
// two live workers and a dead one.
func TestRQBacklog(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := srv.Client()
	defer c.Close()
	now := time.Now()
	for i := range 7 {
		c.RPush(ctx, queues.QueuePrefix+"queries", "q"+string(rune('a'+i)))
	}
	c.RPush(ctx, queues.QueuePrefix+"scheduled_queries", "s1", "s2")
	c.SAdd(ctx, queues.QueuesKey, queues.QueuePrefix+"queries", queues.QueuePrefix+"scheduled_queries", queues.QueuePrefix+"adhoc_extra")
	c.ZAdd(ctx, queues.StartedKey+"queries",
		redis.Z{Score: float64(now.Unix() + 300), Member: "running-1"},
		redis.Z{Score: math.Inf(1), Member: "running-no-timeout"},
		redis.Z{Score: float64(now.Unix() - 10), Member: "abandoned"})
	reg := func(name, qs string, dead bool) {
		key := queues.WorkerPrefix + name
		c.SAdd(ctx, queues.WorkersKey, key)
		c.HSet(ctx, key, "queues", qs, "hostname", "h")
		if dead {
			c.HSet(ctx, key, "death", "x")
		}
	}
	reg("w1", "queries,scheduled_queries", false)
	reg("w2", "queries,periodic", false)
	reg("w3", "queries", true)

	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: srv.Password})
	defer r.Close()
	b, err := r.RQBacklog(ctx, []string{"queries", "scheduled_queries", "emails"}, now)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]queues.QueueBacklog{}
	var names []string
	for _, q := range b.Queues {
		got[q.Queue] = q
		names = append(names, q.Queue)
	}
	if want := []string{"adhoc_extra", "emails", "periodic", "queries", "scheduled_queries"}; !slices.Equal(names, want) {
		t.Errorf("queues %v, want %v (wanted, registered in rq:queues, consumed)", names, want)
	}
	if q := got["queries"]; q.Queued != 7 || q.Running != 2 || q.Workers != 2 {
		t.Errorf("queries: %+v, want 7 queued, 2 running (not the expired one), 2 live workers", q)
	}
	if q := got["scheduled_queries"]; q.Queued != 2 || q.Running != 0 || q.Workers != 1 {
		t.Errorf("scheduled_queries: %+v, want 2 queued, 1 worker", q)
	}
	if b.Queued() != 9 || b.Running() != 2 || b.Workers != 2 || b.Celery {
		t.Errorf("totals: queued %d running %d workers %d, want 9, 2, 2", b.Queued(), b.Running(), b.Workers)
	}
	ids, err := r.RunningJobs(ctx, "queries", now)
	if slices.Sort(ids); err != nil || !slices.Equal(ids, []string{"running-1", "running-no-timeout"}) {
		t.Errorf("RunningJobs: %v, %v", ids, err)
	}
}

// TestCeleryBacklog: kombu's Redis transport keeps a queue as the list named
// after it plus one list per priority step; the backlog adds them.
func TestCeleryBacklog(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := srv.Client()
	defer c.Close()
	for range 5 {
		c.LPush(ctx, "queries", "{}")
	}
	c.LPush(ctx, "queries\x06\x163", "{}", "{}")
	c.LPush(ctx, "scheduled_queries", "{}", "{}")
	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: srv.Password})
	defer r.Close()
	b, err := r.CeleryBacklog(ctx, []string{"queries", "scheduled_queries", "celery", "schemas"})
	if err != nil {
		t.Fatal(err)
	}
	want := []queues.QueueBacklog{{Queue: "celery"}, {Queue: "queries", Queued: 7}, {Queue: "scheduled_queries", Queued: 2}, {Queue: "schemas"}}
	if !slices.Equal(b.Queues, want) || !b.Celery || b.Queued() != 9 {
		t.Errorf("Celery backlog %+v, want %+v", b.Queues, want)
	}
}

// TestBacklogRedisDown: a Redis that does not answer is an error naming
// its address, never the password.
func TestBacklogRedisDown(t *testing.T) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	r := queues.Open(queues.Conn{Addr: addr, Password: "s3cr3t-token"})
	defer r.Close()
	_, err := r.RQBacklog(context.Background(), []string{"queries"}, time.Now())
	if err == nil || !strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "s3cr3t-token") {
		t.Errorf("RQBacklog on a closed port: %v; want an error naming %s without the password", err, addr)
	}
}

// TestJobsOnHosts: the jobs live workers on the given hosts are in the
// middle of, named by id, function and queue; idle, dead and other hosts'
// workers are left out.
func TestJobsOnHosts(t *testing.T) {
	srv := testenv.Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := srv.Client()
	defer c.Close()
	worker := func(name, host, job string, dead bool) {
		key := queues.WorkerPrefix + name
		c.SAdd(ctx, queues.WorkersKey, key)
		c.HSet(ctx, key, "queues", "queries", "hostname", host, "current_job", job)
		if dead {
			c.HSet(ctx, key, "death", "2024-01-01T00:00:01Z")
		}
	}
	worker("w1", "c1", "job-1", false)
	worker("w2", "c1", "", false)
	worker("w3", "c2", "job-3", false)
	worker("w4", "c1", "job-4", true)
	c.HSet(ctx, queues.JobPrefix+"job-1", "origin", "queries", "description", "redash.tasks.execute_query('select secret', 1)")

	r := queues.Open(queues.Conn{Addr: srv.Addr(), Password: srv.Password})
	defer r.Close()
	jobs, err := r.JobsOnHosts(ctx, []string{"c1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].Name() != "job-1 redash.tasks.execute_query (queue queries)" {
		t.Fatalf("RunningJobs = %+v, want only job-1 named without its arguments", jobs)
	}
}
