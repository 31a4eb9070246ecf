package main

// End-to-end test of the 8.x scheduler lease: two `run` agents (two compose
// projects on this Docker, one database, role all) stand for two instances
// of one cluster.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/lease"
	"github.com/redash-agent/redash-agent/internal/metrics"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// v8 makes both agents run Redash 8.x (the flag layer is above the tags),
// publishing the backlog every 10 s.
var v8 = []string{"--set", "version=8.0.0.b32245", "--set", "role=all", "--set", "metrics-interval=10s"}

// schedulerState is "running", another Docker state, or "" when the
// project has no scheduler container.
func schedulerState(t *testing.T, s *stack) string {
	t.Helper()
	c, err := s.docker.ContainerInspect(context.Background(), s.project+"-scheduler-1")
	if err != nil {
		return ""
	}
	return c.State.Status
}

func isReady(n notification) bool { return n.vars["READY"] == "1" }

func TestRunOneSchedulerPerCluster(t *testing.T) {
	start := time.Now()
	a, b := newStack(t), newStack(t)
	// One cluster: both instances on a's database.
	for _, s := range []*stack{a, b} {
		s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), a.pgDB))
	}
	pg := testenv.Postgres(t)
	// 7 jobs wait in each instance's Redis, as Celery's queue "queries".
	for _, s := range []*stack{a, b} {
		c := s.redis.Client()
		for range 7 {
			c.LPush(context.Background(), "queries", "{}")
		}
		c.Close()
	}
	ns := map[*stack]*notifySocket{a: newNotifySocket(t), b: newNotifySocket(t)}
	procs := map[*stack]*agentProc{}
	for _, s := range []*stack{a, b} {
		procs[s] = startRun(t, s.fixture, ns[s].path, v8...)
	}
	for _, s := range []*stack{a, b} {
		ns[s].waitFor(t, "READY=1 of "+s.project, 0, 3*time.Minute, procs[s].exited, isReady)
	}

	// 1. Exactly one scheduler between them; the other names the holder.
	var holder, other *stack
	switch sa, sb := schedulerState(t, a), schedulerState(t, b); {
	case sa == "running" && sb == "":
		holder, other = a, b
	case sb == "running" && sa == "":
		holder, other = b, a
	default:
		t.Fatalf("after both agents are ready: scheduler of %s %q, of %s %q; want exactly one running and no other container", a.project, sa, b.project, sb)
	}
	t.Logf("%s holds the lease; both ready %v after the start", holder.project, time.Since(start).Round(time.Millisecond))
	holderName := lease.Name(hostname(t) + " " + holder.project)
	if out := string(procs[other].out.Bytes()); !strings.Contains(out, "runs on another instance") || !strings.Contains(out, holder.project) {
		t.Errorf("the non-holder's journal does not say who holds the lease (%s):\n%s", holderName, out)
	}
	if hs, err := lease.Holders(context.Background(), leaseDB(pg, a.pgDB)); err != nil || !lease.HeldBy(hs, hostname(t)+" "+holder.project) {
		t.Errorf("pg_locks: holders %s (%v), want %s", lease.Describe(hs), err, holderName)
	}
	// The compose file keeps the whole layout for `docker compose` users.
	if f, err := os.ReadFile(filepath.Join(other.dir, "docker-compose.yml")); err != nil || !strings.Contains(string(f), "\n  scheduler:\n") {
		t.Errorf("the non-holder's compose file lost the scheduler service (%v)", err)
	}
	onePublisher(t, a, b, procs)

	stdout, _, _ := other.run(append(v8, "status")...)
	if !strings.Contains(stdout, "scheduler lease: held by another instance") {
		t.Errorf("status on the non-holder does not say another instance holds the lease:\n%s", stdout)
	}
	stdout, _, _ = holder.run(append(v8, "status")...)
	if !strings.Contains(stdout, "scheduler lease: held by this instance") {
		t.Errorf("status on the holder does not say it holds the lease:\n%s", stdout)
	}
	stdout, _, code := other.run(append(v8, "render", "--plan")...)
	if code != 0 || !strings.Contains(stdout, "# 8.x scheduler: not run here: another instance holds the 8.x scheduler lease") {
		t.Errorf("render --plan on the non-holder (exit %d) does not say why the scheduler is not run:\n%s", code, stdout)
	}

	// 2. The holder's instance dies: its agent is killed and its
	// containers go with it (its scheduler is removed). The other starts
	// its scheduler within a minute.
	ctx := context.Background()
	if err := procs[holder].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-procs[holder].exited
	if err := holder.docker.ContainerRemove(ctx, holder.project+"-scheduler-1", container.RemoveOptions{Force: true}); err != nil {
		t.Fatalf("removing the dead instance's scheduler: %v", err)
	}
	killed := time.Now()
	deadline := killed.Add(time.Minute)
	for schedulerState(t, other) != "running" {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start its scheduler within a minute of the holder's death; its output:\n%s", other.project, procs[other].out.Bytes())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("%s took over %v after the holder was killed", other.project, time.Since(killed).Round(time.Millisecond))
	if out := string(procs[other].out.Bytes()); !strings.Contains(out, "took the 8.x scheduler lease") {
		t.Errorf("the new holder's journal does not say it took the lease:\n%s", out)
	}

	// 3. The killed agent comes back (systemd restarts it): it must not
	// start a second scheduler.
	mark := len(ns[holder].all())
	restarted := startRun(t, holder.fixture, ns[holder].path, v8...)
	ns[holder].waitFor(t, "READY=1 of the restarted agent", mark, 3*time.Minute, restarted.exited, isReady)
	if st := schedulerState(t, holder); st != "" {
		t.Errorf("the restarted agent has a scheduler container (%s) while %s holds the lease", st, other.project)
	}
	if st := schedulerState(t, other); st != "running" {
		t.Errorf("the new holder's scheduler is %q after the old holder's agent came back", st)
	}
	if out := string(restarted.out.Bytes()); !strings.Contains(out, other.project) {
		t.Errorf("the restarted agent's journal does not name the new holder %s:\n%s", other.project, out)
	}

	// 4. The holder's agent is stopped (SIGTERM: systemctl stop, a package
	// upgrade): a scheduler must not outlive the lease, so it stops its
	// own, releases, and the other instance takes over. Every other
	// container keeps running.
	if err := procs[other].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-procs[other].exited:
	case <-time.After(90 * time.Second): // systemd's default TimeoutStopSec
		t.Fatal("the holder's agent did not exit within 90s of SIGTERM")
	}
	stopped := time.Now()
	if st := schedulerState(t, other); st != "" {
		t.Errorf("the stopped holder left its scheduler (%s) without the lease", st)
	}
	if st, err := other.docker.ContainerInspect(ctx, other.project+"-server-1"); err != nil || !st.State.Running {
		t.Errorf("stopping the agent stopped the server (%v)", err)
	}
	deadline = stopped.Add(time.Minute)
	for schedulerState(t, holder) != "running" {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start its scheduler within a minute of the holder's stop; its output:\n%s", holder.project, restarted.out.Bytes())
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("%s took over %v after the holder's agent stopped", holder.project, time.Since(stopped).Round(time.Millisecond))

	for _, p := range []*agentProc{procs[other], restarted} {
		assertNoSecrets(t, p.out.Bytes(), "the output of run")
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// onePublisher: of two run agents of one cluster, exactly one publishes
// the backlog (the metrics lease); each instance's moto is its CloudWatch.
func onePublisher(t *testing.T, a, b *stack, procs map[*stack]*agentProc) {
	t.Helper()
	published := func(s *stack) bool {
		v, ok := motoStat(t, s.moto.Endpoint, metrics.MetricQueued, map[string]string{metrics.DimCluster: s.project, metrics.DimQueue: "queries"})
		if ok && v != 7 {
			t.Errorf("%s published QueuedJobs queries = %v, want 7", s.project, v)
		}
		return ok
	}
	deadline := time.Now().Add(30 * time.Second) // metrics-interval 10s, from the boot render
	for !published(a) && !published(b) {
		if time.Now().After(deadline) {
			t.Fatalf("neither agent published the backlog within 30s of READY:\n%s\n%s", procs[a].out.Bytes(), procs[b].out.Bytes())
		}
		time.Sleep(time.Second)
	}
	time.Sleep(11 * time.Second) // the other's next tick
	if published(a) && published(b) {
		t.Errorf("both agents of one cluster published the backlog; want one (the metrics lease)")
	}
	for _, s := range []*stack{a, b} {
		if !published(s) && !strings.Contains(string(procs[s].out.Bytes()), "another instance publishes them") {
			t.Errorf("%s neither publishes nor says who does:\n%s", s.project, procs[s].out.Bytes())
		}
	}
}

func hostname(t *testing.T) string {
	h, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func leaseDB(pg testenv.PG, name string) desired.DB {
	return desired.DB{Host: pg.Host, Port: pg.Port, User: pg.User, Password: secrets.NewValue(pg.Password), Name: name}
}
