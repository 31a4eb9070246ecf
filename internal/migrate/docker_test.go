package migrate

// Tests against the real Docker Engine and the real PostgreSQL: one-offs of
// test images built FROM scratch from test/fakeredash, whose create_db and
// `manage db upgrade` change the real database and record each run in
// fakeredash.fakeredash_runs.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"

	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

type dockerEnv struct {
	pg      testenv.PG
	cli     *client.Client
	project string
}

func newDockerEnv(t *testing.T) dockerEnv {
	t.Helper()
	pg := testenv.Postgres(t)
	cli := testenv.DockerClient(t)
	var b [3]byte
	_, _ = rand.Read(b[:])
	project := "migtest" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, c := range projectContainers(t, cli, project) {
			_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
		}
		_ = cli.NetworkRemove(ctx, project+"_default")
	})
	return dockerEnv{pg: pg, cli: cli, project: project}
}

func projectContainers(t testing.TB, cli *client.Client, project string) []container.Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", engine.LabelProject+"="+project))})
	if err != nil {
		t.Fatalf("listing containers of %q: %v", project, err)
	}
	return list
}

// fakeImage builds the fake Redash image whose migrations end at head.
func fakeImage(t *testing.T, head string) (ref, id string) {
	t.Helper()
	ref = "redash-agent-test/migrate:" + head
	id = testenv.BuildFakeImage(t, testenv.FakeImage{Tag: ref, Cmd: []string{"server"}, Env: map[string]string{"FAKEREDASH_HEAD": head}})
	return ref, id
}

// countingRunner records every one-off it passes on.
type countingRunner struct {
	Runner
	mu   sync.Mutex
	cmds []string
}

func (r *countingRunner) RunOneOff(ctx context.Context, spec OneOff) (int, string, error) {
	r.mu.Lock()
	r.cmds = append(r.cmds, strings.Join(spec.Cmd, " "))
	r.mu.Unlock()
	return r.Runner.RunOneOff(ctx, spec)
}

// Containers passes the engine's read through, so a failure reports what
// the real daemon holds.
func (r *countingRunner) Containers(ctx context.Context, project string) ([]engine.Container, error) {
	return r.Runner.(containerLister).Containers(ctx, project)
}

func (r *countingRunner) calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.cmds...)
}

func (e dockerEnv) options(t *testing.T, db, ref, id string) (Options, *countingRunner) {
	r := &countingRunner{Runner: &engine.Engine{Docker: e.cli, Logger: testLogger(t)}}
	return Options{
		DB:          target(e.pg, db),
		Image:       ref,
		ImageID:     id,
		Project:     e.project,
		Env:         map[string]string{"REDASH_DATABASE_URL": e.pg.URL(db)},
		LockTimeout: 90 * time.Second,
		Deadline:    2 * time.Minute,
		HeadsCache:  t.TempDir() + "/heads.json",
		Runner:      r,
		Logger:      testLogger(t),
	}, r
}

func (e dockerEnv) query(t testing.TB, db, sql string, args ...any) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := e.pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(ctx, sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func (e dockerEnv) runs(t testing.TB, db, cmd string) string {
	return e.query(t, db, "SELECT count(*)::text FROM fakeredash.fakeredash_runs WHERE cmd = $1", cmd)
}

// assertNoLeftovers checks that every one-off of the project is gone.
func (e dockerEnv) assertNoLeftovers(t *testing.T) {
	t.Helper()
	if left := projectContainers(t, e.cli, e.project); len(left) != 0 {
		for _, c := range left {
			t.Errorf("leftover container %v (%s)", c.Names, c.State)
		}
	}
}

func TestRunCreatesThenUpgrades(t *testing.T) {
	e := newDockerEnv(t)
	db := e.pg.NewDatabase(t)
	ref1, id1 := fakeImage(t, "r1")
	ref2, id2 := fakeImage(t, "r2")
	ctx := context.Background()

	o, r := e.options(t, db, ref1, id1)
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	// create_db's started and finished records: generation 2.
	if want := (Result{Before: StateEmpty, After: StateCurrent, Ran: RanCreate, Head: "r1", Generation: 2}); res != want {
		t.Errorf("first Run = %+v, want %+v", res, want)
	}
	if got := e.query(t, db, "SELECT version_num FROM alembic_version"); got != "r1" {
		t.Errorf("version after create_db = %q", got)
	}
	if got := e.query(t, db, "SELECT count(*)::text FROM pg_tables WHERE schemaname = 'public' AND tablename = 'users'"); got != "1" {
		t.Errorf("create_db made no users table")
	}
	if got := r.calls(); strings.Join(got, ",") != "manage db heads,create_db" {
		t.Errorf("one-offs = %q", got)
	}

	o2, r2 := e.options(t, db, ref2, id2)
	res, err = Run(ctx, o2)
	if err != nil {
		t.Fatal(err)
	}
	// The upgrade's draining, migrating and done records: generation 5.
	if want := (Result{Before: StateBehind, After: StateCurrent, Ran: RanUpgrade, Head: "r2", Generation: 5}); res != want {
		t.Errorf("upgrade Run = %+v, want %+v", res, want)
	}
	if got := e.query(t, db, "SELECT version_num FROM alembic_version"); got != "r2" {
		t.Errorf("version after upgrade = %q", got)
	}
	if got := e.query(t, db, "SELECT count(*)::text FROM pg_tables WHERE tablename = 'rev_r2'"); got != "1" {
		t.Errorf("upgrade did not add its table")
	}

	// At head with the head cached: one query, no container.
	before := len(r2.calls())
	res, err = Run(ctx, o2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ran != RanNone || res.After != StateCurrent {
		t.Errorf("Run at head = %+v", res)
	}
	if n := len(r2.calls()) - before; n != 0 {
		t.Errorf("Run at head with a cached head ran %d one-offs", n)
	}
	if got := e.runs(t, db, "create_db") + "/" + e.runs(t, db, "manage db upgrade"); got != "1/1" {
		t.Errorf("create_db/upgrade runs = %s, want 1/1", got)
	}
	e.assertNoLeftovers(t)
}

// runFive starts five agents at once, each with its own connection,
// engine and heads cache, and returns their results.
func (e dockerEnv) runFive(t *testing.T, db, ref, id string) []Result {
	var wg sync.WaitGroup
	results := make([]Result, 5)
	errs := make([]error, 5)
	for i := range 5 {
		o, _ := e.options(t, db, ref, id)
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = Run(context.Background(), o)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("agent %d: %v", i, err)
		}
	}
	return results
}

func TestRunFiveAgentsAtOnce(t *testing.T) {
	e := newDockerEnv(t)
	ref1, id1 := fakeImage(t, "r1")
	ref2, id2 := fakeImage(t, "r2")

	t.Run("empty database", func(t *testing.T) {
		db := e.pg.NewDatabase(t)
		ran := 0
		for i, res := range e.runFive(t, db, ref1, id1) {
			if res.After != StateCurrent {
				t.Errorf("agent %d ended %q", i, res.After)
			}
			if res.Ran == RanCreate {
				ran++
			} else if res.Ran != RanNone || res.Before != StateCurrent {
				t.Errorf("agent %d: %+v", i, res)
			}
		}
		if ran != 1 {
			t.Errorf("%d agents say they ran create_db, want 1", ran)
		}
		if got := e.runs(t, db, "create_db"); got != "1" {
			t.Errorf("create_db ran %s times in the database, want 1", got)
		}
		e.assertNoLeftovers(t)
	})

	t.Run("version change", func(t *testing.T) {
		db := e.pg.NewDatabase(t)
		o, _ := e.options(t, db, ref1, id1)
		if _, err := Run(context.Background(), o); err != nil {
			t.Fatal(err)
		}
		ran := 0
		for i, res := range e.runFive(t, db, ref2, id2) {
			if res.After != StateCurrent {
				t.Errorf("agent %d ended %q", i, res.After)
			}
			if res.Ran == RanUpgrade {
				ran++
			} else if res.Ran != RanNone || res.Before != StateCurrent {
				t.Errorf("agent %d: %+v", i, res)
			}
		}
		if ran != 1 {
			t.Errorf("%d agents say they ran the upgrade, want 1", ran)
		}
		if got := e.runs(t, db, "manage db upgrade"); got != "1" {
			t.Errorf("upgrade ran %s times in the database, want 1", got)
		}
		if got := e.query(t, db, "SELECT version_num FROM alembic_version"); got != "r2" {
			t.Errorf("version = %q, want r2", got)
		}
		e.assertNoLeftovers(t)
	})
}

func TestRunFailingUpgradeReturnsLogs(t *testing.T) {
	e := newDockerEnv(t)
	db := e.pg.NewDatabase(t)
	ref1, id1 := fakeImage(t, "r1")
	ref2, id2 := fakeImage(t, "r2")
	o, _ := e.options(t, db, ref1, id1)
	if _, err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}

	o2, _ := e.options(t, db, ref2, id2)
	o2.Env["FAKEREDASH_FAIL_UPGRADE"] = "1"
	res, err := Run(context.Background(), o2)
	if err == nil {
		t.Fatalf("a failing upgrade returned no error: %+v", res)
	}
	t.Logf("error: %v", err)
	// The test's project runs no server: the error says so instead of
	// claiming old containers keep serving.
	for _, want := range []string{`"manage db upgrade"`, "exit code 1", "DuplicateColumn", "Running upgrade -> r2", `project "` + o2.Project + `" has no containers yet`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q", want)
		}
	}
	assertNoSecret(t, err, e.pg)
	if strings.Contains(err.Error(), e.pg.URL(db)) {
		t.Errorf("error contains the database URL")
	}
	if res.Before != StateBehind || res.Ran != RanUpgrade {
		t.Errorf("result = %+v", res)
	}
	if got := e.query(t, db, "SELECT version_num FROM alembic_version"); got != "r1" {
		t.Errorf("version after a failed upgrade = %q, want r1", got)
	}
	e.assertNoLeftovers(t)
}

// TestRunLockHolderKilledMidMigration ends the lock holder's session while
// its upgrade sleeps inside its transaction. The one-off is never stopped:
// it runs to its end and the holder reports success, and a second agent
// started at that moment waits for the orphaned migration session, then
// finds the schema current and runs nothing.
func TestRunLockHolderKilledMidMigration(t *testing.T) {
	e := newDockerEnv(t)
	db := e.pg.NewDatabase(t)
	ref1, id1 := fakeImage(t, "r1")
	ref2, id2 := fakeImage(t, "r2")
	o, _ := e.options(t, db, ref1, id1)
	if _, err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}

	slow, _ := e.options(t, db, ref2, id2)
	slow.Env["FAKEREDASH_UPGRADE_SLEEP"] = "6"
	type outcome struct {
		res Result
		err error
	}
	first := make(chan outcome, 1)
	go func() {
		res, err := Run(context.Background(), slow)
		first <- outcome{res, err}
	}()

	// Wait (bounded) until the upgrade is inside its transaction.
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := e.query(t, db, "SELECT count(*)::text FROM pg_stat_activity WHERE datname = current_database() AND starts_with(application_name, $1) AND state = 'idle in transaction'", oneOffAppPrefix)
		if n == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the slow upgrade never reached its transaction")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The one-off carries compose's one-off labels and our name pattern.
	var oneoff container.Summary
	for _, c := range projectContainers(t, e.cli, e.project) {
		if c.State == container.StateRunning {
			oneoff = c
		}
	}
	if oneoff.Labels[engine.LabelOneOff] != "True" || oneoff.Labels[engine.LabelService] != "server" || len(oneoff.Names) != 1 || !strings.HasPrefix(oneoff.Names[0], "/"+e.project+"-migrate-") {
		t.Errorf("running one-off: names %v labels %v", oneoff.Names, oneoff.Labels)
	}

	killed := e.query(t, db, `SELECT pg_terminate_backend(l.pid)::text FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	if killed != "true" {
		t.Fatalf("pg_terminate_backend = %s", killed)
	}

	// The head is cached, so the second agent reaches the lock at once,
	// usually while the orphaned one-off still has its session.
	o2, _ := e.options(t, db, ref2, id2)
	o2.HeadsCache = slow.HeadsCache
	res2, err2 := Run(context.Background(), o2)

	var out outcome
	select {
	case out = <-first:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent whose lock session was killed did not return within 30s")
	}
	if out.err != nil || out.res.Ran != RanUpgrade || out.res.After != StateCurrent {
		t.Errorf("killed holder: %+v, %v; want its upgrade to run to its end", out.res, out.err)
	}
	if err2 != nil {
		t.Fatalf("second agent: %v", err2)
	}
	if res2.Ran != RanNone || res2.After != StateCurrent {
		t.Errorf("second agent = %+v, want it to wait and run nothing", res2)
	}
	if got := e.query(t, db, "SELECT version_num FROM alembic_version"); got != "r2" {
		t.Errorf("version = %q, want r2", got)
	}
	if got := e.runs(t, db, "manage db upgrade"); got != "1" {
		t.Errorf("upgrade started %s times, want 1", got)
	}
	e.assertNoLeftovers(t)
}
