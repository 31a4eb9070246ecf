package queues_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

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

// TestRunningJobs: the jobs live workers on the given hosts are in the
// middle of, named by id, function and queue; idle, dead and other hosts'
// workers are left out.
func TestRunningJobs(t *testing.T) {
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
	jobs, err := r.RunningJobs(ctx, []string{"c1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].Name() != "job-1 redash.tasks.execute_query (queue queries)" {
		t.Fatalf("RunningJobs = %+v, want only job-1 named without its arguments", jobs)
	}
}
