package main

// End-to-end tests of schema changes across the fleet: a create_db killed
// midway and finished by the next up, and an upgrade with jobs running on
// two `run` instances (two compose projects on this Docker, one database,
// one Redis) that pauses the old version's workers everywhere.

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// pgQuery runs one query on the stack's database and returns its single
// text value.
func pgQuery(t *testing.T, db, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := testenv.Postgres(t).Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var v *string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil && err != pgx.ErrNoRows {
		t.Fatalf("%s: %v", sql, err)
	}
	if v == nil {
		return ""
	}
	return *v
}

// TestCreateDBKilledMidwayIsFinished: `up` with a create_db that sleeps
// between its statements; the one-off container and the agent are killed
// midway, leaving tables without alembic_version. The next `up` finds the
// agent's create_db record, drops the empty tables, creates the schema and
// stamps it, and says so.
func TestCreateDBKilledMidwayIsFinished(t *testing.T) {
	s := newStack(t)
	slow := redashImage(t, "redash-agent-test/redash:slowcreate", "rev1", "FAKEREDASH_CREATE_SLEEP", "30")
	s.writeConfig(slow, fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))

	cmd := exec.Command(agentBinary(t), "--dir", s.dir, "--state-dir", s.stateDir(), "--config", s.config, "up")
	cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT="+s.imds, "AWS_ENDPOINT_URL_SECRETS_MANAGER="+s.moto.Endpoint)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	// Midway: the first table is there, the one-off sleeps before the next.
	deadline := time.Now().Add(2 * time.Minute)
	for pgQuery(t, s.pgDB, `SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public'`) == "0" {
		select {
		case <-exited:
			t.Fatalf("up ended before create_db made a table:\n%s", out.Bytes())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("create_db made no table within 2 minutes:\n%s", out.Bytes())
		}
		time.Sleep(200 * time.Millisecond)
	}
	ctx := context.Background()
	list, err := s.docker.ContainerList(ctx, container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project), filters.Arg("label", "com.docker.compose.oneoff=True"))})
	if err != nil || len(list) != 1 {
		t.Fatalf("running one-offs: %d (%v), want the create_db", len(list), err)
	}
	if err := s.docker.ContainerKill(ctx, list[0].ID, "KILL"); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Process.Kill()
	<-exited
	if got := pgQuery(t, s.pgDB, `SELECT coalesce(to_regclass('public.alembic_version')::text, 'missing')`); got != "missing" {
		t.Fatalf("after the kill alembic_version is %q, want missing (a partial create_db)", got)
	}
	partial := pgQuery(t, s.pgDB, `SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'`)
	t.Logf("tables the killed create_db left: %s", partial)

	// The next up, without the sleep, finishes it.
	s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	stdout, stderr, code := s.run("up")
	if code != 0 {
		t.Fatalf("up after a partial create_db exited %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout+stderr, "finishing a partial create_db") {
		t.Errorf("the journal does not say it finished a partial create_db:\n%s", stderr)
	}
	if got := pgQuery(t, s.pgDB, `SELECT version_num FROM alembic_version`); got != "rev1" {
		t.Errorf("alembic_version = %q, want rev1", got)
	}
	if got := pgQuery(t, s.pgDB, `SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'`); got != "alembic_version,data_sources,notification_destinations,organizations,queries,users" {
		t.Errorf("tables after up = %s", got)
	}
	if got := pgQuery(t, s.pgDB, `SELECT value->>'phase' FROM redash_agent.records WHERE name = $1`, cluster.RecCreateDB); got != cluster.CreateFinished {
		t.Errorf("create_db record phase = %q, want finished", got)
	}
}

// job is one RQ job as the stand-in's worker recorded it.
type job struct {
	id, status, head string
	started, ended   time.Time
}

func readJob(t *testing.T, s *stack, id string) job {
	t.Helper()
	rc := s.redis.Client()
	defer rc.Close()
	m, err := rc.HGetAll(context.Background(), "rq:job:"+id).Result()
	if err != nil {
		t.Fatal(err)
	}
	j := job{id: id, status: m["status"], head: m["worker_head"]}
	j.started, _ = time.Parse(time.RFC3339Nano, m["started_at"])
	j.ended, _ = time.Parse(time.RFC3339Nano, m["ended_at"])
	return j
}

// TestUpgradeWithJobsRunning: two `run` instances on v1 (head rev1) with
// workers taking jobs of a few seconds from one Redis; one switches to v2
// (head rev2). No v1 worker starts a job after the migration began, every
// job finishes, v2 workers start only after alembic_version is rev2, and
// the other instance's server answers /ping throughout.
func TestUpgradeWithJobsRunning(t *testing.T) {
	a, b := newStack(t), newStack(t)
	// One cluster: a's database and a's Redis.
	b.redis = a.redis
	b.moto.Put(t, redisAuthSecret, a.redis.Password)
	b.redisConfig = a.redisConfig
	shared := fmt.Sprintf("db-endpoint: %s\ndb-name: %s\nworker-stop-grace: 20s\n", pgEndpoint(t), a.pgDB)
	a.writeConfig("redash-agent-test/redash:v1", shared)
	b.writeConfig("redash-agent-test/redash:v1", shared+"refresh: 10s\n")
	v2 := redashImage(t, "redash-agent-test/redash:v2", "rev2", "FAKEREDASH_HISTORY", "rev1")

	ns := map[*stack]*notifySocket{a: newNotifySocket(t), b: newNotifySocket(t)}
	procs := map[*stack]*agentProc{}
	for _, s := range []*stack{a, b} {
		procs[s] = startRun(t, s.fixture, ns[s].path)
	}
	for _, s := range []*stack{a, b} {
		ns[s].waitFor(t, "READY=1 of "+s.project, 0, 3*time.Minute, procs[s].exited, isReady)
	}

	// a's server, probed all along.
	stopProbe := make(chan struct{})
	var pings, pingFailures atomic.Int32
	var probeDone sync.WaitGroup
	probeDone.Add(1)
	go func() {
		defer probeDone.Done()
		hc := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for {
			select {
			case <-stopProbe:
				return
			case <-time.After(100 * time.Millisecond):
			}
			resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/ping", a.serverPort))
			pings.Add(1)
			if err != nil || resp.StatusCode != http.StatusOK {
				pingFailures.Add(1)
			}
			if resp != nil {
				resp.Body.Close()
			}
		}
	}()

	// Jobs of 3 s, a new one every 300 ms, until the test ends.
	rc := a.redis.Client()
	defer rc.Close()
	var ids []string
	var idsMu sync.Mutex
	stopJobs := make(chan struct{})
	var enqueuer sync.WaitGroup
	enqueuer.Add(1)
	go func() {
		defer enqueuer.Done()
		for i := 0; ; i++ {
			select {
			case <-stopJobs:
				return
			case <-time.After(300 * time.Millisecond):
			}
			id := fmt.Sprintf("job-%03d", i)
			ctx := context.Background()
			rc.HSet(ctx, "rq:job:"+id, "sleep_ms", "3000", "status", "queued")
			rc.RPush(ctx, "rq:queue:queries", id)
			idsMu.Lock()
			ids = append(ids, id)
			idsMu.Unlock()
		}
	}()
	time.Sleep(5 * time.Second) // v1 workers busy

	// b switches to v2; its next refresh upgrades.
	switched := time.Now()
	b.writeConfig(v2, shared+"refresh: 10s\n")
	deadline := time.Now().Add(3 * time.Minute)
	var v2Worker container.InspectResponse
	for {
		if pgQuery(t, a.pgDB, `SELECT version_num FROM alembic_version`) == "rev2" {
			c, err := b.docker.ContainerInspect(context.Background(), b.project+"-adhoc_worker-1")
			if err == nil && c.Config.Image == v2 && c.State.Running {
				v2Worker = c
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("b did not upgrade and start v2 workers within 3 minutes; b's output:\n%s", procs[b].out.Bytes())
		}
		time.Sleep(500 * time.Millisecond)
	}
	time.Sleep(8 * time.Second) // v2 workers take jobs
	close(stopJobs)
	enqueuer.Wait()
	// No new job starts from here: what started must finish.
	if err := rc.Del(context.Background(), "rq:queue:queries").Err(); err != nil {
		t.Fatal(err)
	}

	// The record and the moment the schema began to change (the stand-in
	// records each command before it acts).
	var u cluster.Upgrade
	{
		ctx := context.Background()
		conn, err := testenv.Postgres(t).Connect(ctx, a.pgDB)
		if err != nil {
			t.Fatal(err)
		}
		st, err := cluster.Read(ctx, conn)
		conn.Close(ctx)
		if err != nil || st.Upgrade == nil {
			t.Fatalf("upgrade record: %+v, %v", st.Upgrade, err)
		}
		u = *st.Upgrade
	}
	migStart, err := time.Parse(time.RFC3339Nano, pgQuery(t, a.pgDB, `SELECT to_char(max(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') FROM fakeredash.fakeredash_runs WHERE cmd = 'manage db upgrade'`))
	if err != nil {
		t.Fatal(err)
	}
	if u.Phase != cluster.PhaseDone || u.FromHead != "rev1" || u.ToHead != "rev2" {
		t.Errorf("upgrade record = %+v", u)
	}
	v2Started, err := time.Parse(time.RFC3339Nano, v2Worker.State.StartedAt)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("measured: upgrade announced %s after the switch; drain (announced -> migration began) %s; migration began -> done %s; "+
		"b's workers paused for %s (announced -> v2 worker started)",
		u.StartedAt.Sub(switched).Round(time.Millisecond), migStart.Sub(u.StartedAt).Round(time.Millisecond),
		u.EndedAt.Sub(migStart).Round(time.Millisecond), v2Started.Sub(u.StartedAt).Round(time.Millisecond))

	// Every job that started finishes (warm shutdown), bounded.
	idsMu.Lock()
	all := append([]string(nil), ids...)
	idsMu.Unlock()
	finishBy := time.Now().Add(30 * time.Second)
	var v1Jobs, v2Jobs, queued int
	for _, id := range all {
		j := readJob(t, a, id)
		for j.status == "started" && time.Now().Before(finishBy) {
			time.Sleep(200 * time.Millisecond)
			j = readJob(t, a, id)
		}
		switch {
		case j.status == "queued":
			queued++
			continue
		case j.status != "finished":
			t.Errorf("job %s: status %q (worker head %q, started %s), want finished: a running job must finish", id, j.status, j.head, j.started.Format(time.RFC3339Nano))
		}
		switch j.head {
		case "rev1":
			v1Jobs++
			if !j.started.Before(migStart) {
				t.Errorf("job %s: a v1 worker started it at %s, after the migration began at %s", id, j.started.Format(time.RFC3339Nano), migStart.Format(time.RFC3339Nano))
			}
		case "rev2":
			v2Jobs++
			if j.started.Before(u.EndedAt) {
				t.Errorf("job %s: a v2 worker started it at %s, before the upgrade was done at %s", id, j.started.Format(time.RFC3339Nano), u.EndedAt.Format(time.RFC3339Nano))
			}
		default:
			t.Errorf("job %s: worker head %q", id, j.head)
		}
	}
	t.Logf("jobs: %d by v1 workers, %d by v2 workers, %d still queued", v1Jobs, v2Jobs, queued)
	if v1Jobs == 0 || v2Jobs == 0 {
		t.Errorf("want jobs run by both versions (v1 %d, v2 %d)", v1Jobs, v2Jobs)
	}
	if v2Started.Before(u.EndedAt) {
		t.Errorf("b's v2 worker started at %s, before the upgrade was done at %s", v2Worker.State.StartedAt, u.EndedAt)
	}
	// a runs v1 against a rev2 schema: its workers stay paused.
	if c, err := a.docker.ContainerInspect(context.Background(), a.project+"-adhoc_worker-1"); err == nil && c.State.Running {
		t.Errorf("a's v1 worker runs against the rev2 schema")
	}
	if out := string(procs[a].out.Bytes()); !strings.Contains(out, "pausing this instance's scheduler and workers") {
		t.Errorf("a's journal does not say it paused its workers:\n%s", out)
	}

	// Neither the journals nor the agent's records hold a secret.
	records := []byte(pgQuery(t, a.pgDB, `SELECT string_agg(name || ' ' || value::text || ' ' || updated_by, E'\n') FROM redash_agent.records`) +
		pgQuery(t, a.pgDB, `SELECT string_agg(name || ' ' || head || ' ' || paused_for, E'\n') FROM redash_agent.instances`))
	pw := testenv.Postgres(t).Password
	for what, b := range map[string][]byte{"a's journal": procs[a].out.Bytes(), "b's journal": procs[b].out.Bytes(), "the agent's records": records} {
		assertNoSecrets(t, b, what)
		if strings.Contains(string(b), pw) || strings.Contains(string(b), a.redis.Password) {
			t.Errorf("%s contains the database or Redis password", what)
		}
	}

	close(stopProbe)
	probeDone.Wait()
	if f := pingFailures.Load(); f != 0 {
		t.Errorf("a's server failed %d of %d /ping probes during the upgrade", f, pings.Load())
	}
	t.Logf("a's server answered %d /ping probes during the upgrade", pings.Load())
}
