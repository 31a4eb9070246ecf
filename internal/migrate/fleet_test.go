package migrate

// Tests of what the agent's records (internal/cluster) add to Run, against
// the real PostgreSQL and a runner that plays the one-offs in SQL: a
// partial create_db finished, a database ahead of the image refused, an
// upgrade announced and drained, and a migration never cut short.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// sqlRunner answers heads and history for head (history r0, r1, head) and
// plays create_db and `manage db upgrade` with SQL on db, after sleep.
type sqlRunner struct {
	t      testing.TB
	pg     testenv.PG
	db     string
	head   string
	sleep  time.Duration
	during func() // called while the migration runs, before it ends
	mu     sync.Mutex
	cmds   []string
	ctxErr error // the one-off's context's error when it ended
}

func (r *sqlRunner) RunOneOff(ctx context.Context, spec OneOff) (int, string, error) {
	cmd := strings.Join(spec.Cmd, " ")
	r.mu.Lock()
	r.cmds = append(r.cmds, cmd)
	r.mu.Unlock()
	switch cmd {
	case "manage db heads":
		return 0, r.head + " (head)\n", nil
	case "manage db history":
		return 0, "r1 -> " + r.head + " (head), b\nr0 -> r1, a\n<base> -> r0, init\n", nil
	}
	if r.during != nil {
		r.during()
	}
	select {
	case <-time.After(r.sleep):
	case <-ctx.Done():
		r.mu.Lock()
		r.ctxErr = ctx.Err()
		r.mu.Unlock()
		return -1, "", fmt.Errorf("one-off stopped: %w", ctx.Err())
	}
	switch cmd {
	case "create_db":
		execSQL(r.t, r.pg, r.db, "CREATE TABLE organizations (id int); CREATE TABLE users (id int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
		execSQL(r.t, r.pg, r.db, "INSERT INTO alembic_version VALUES ($1)", r.head)
	case "manage db upgrade":
		execSQL(r.t, r.pg, r.db, "UPDATE alembic_version SET version_num = $1", r.head)
	default:
		r.t.Errorf("unexpected one-off %q", cmd)
		return 1, "", nil
	}
	return 0, "done\n", nil
}

func (r *sqlRunner) migrations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, c := range r.cmds {
		if c == "create_db" || c == "manage db upgrade" {
			out = append(out, c)
		}
	}
	return out
}

func readCluster(t testing.TB, pg testenv.PG, db string) cluster.State {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	st, err := cluster.Read(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func withCluster(t testing.TB, pg testenv.PG, db string, f func(ctx context.Context, q cluster.Querier) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := cluster.Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := f(ctx, conn); err != nil {
		t.Fatal(err)
	}
}

func logTo(t testing.TB, b *testenv.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, nil))
}

func TestRunMarksCreateDB(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	r := &sqlRunner{t: t, pg: pg, db: db, head: "r2", during: func() {
		st := readCluster(t, pg, db)
		if st.CreateDB == nil || st.CreateDB.Phase != cluster.CreateStarted {
			t.Errorf("while create_db runs the record is %+v, want started", st.CreateDB)
		}
	}}
	res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Instance: "i-1", Runner: r, Logger: testLogger(t)})
	if err != nil || res.Ran != RanCreate || res.After != StateCurrent {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	st := readCluster(t, pg, db)
	if c := st.CreateDB; c == nil || c.Phase != cluster.CreateFinished || c.By != "i-1" || c.StartedAt.IsZero() || c.EndedAt.IsZero() {
		t.Errorf("create_db record after = %+v", c)
	}
}

func TestRunFinishesPartialCreateDB(t *testing.T) {
	pg := testenv.Postgres(t)
	started := func(db string) {
		withCluster(t, pg, db, func(ctx context.Context, q cluster.Querier) error {
			return cluster.Put(ctx, q, cluster.RecCreateDB, cluster.CreateDB{Phase: cluster.CreateStarted, Image: "img", By: "i-0", StartedAt: time.Now()}, "i-0")
		})
	}

	t.Run("empty tables are dropped and create_db runs again", func(t *testing.T) {
		db := pg.NewDatabase(t)
		started(db)
		execSQL(t, pg, db, "CREATE TABLE organizations (id int PRIMARY KEY); CREATE TABLE users (id int, org int REFERENCES organizations (id))")
		var logs testenv.SyncBuffer
		r := &sqlRunner{t: t, pg: pg, db: db, head: "r2"}
		res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Logger: logTo(t, &logs)})
		t.Log(logs.String())
		if err != nil || res.Before != StateUnknown || res.Ran != RanCreate || res.After != StateCurrent {
			t.Fatalf("Run = %+v, %v", res, err)
		}
		if !strings.Contains(logs.String(), "finishing a partial create_db") {
			t.Errorf("the journal does not say it finished a partial create_db")
		}
		if st := readCluster(t, pg, db); st.CreateDB.Phase != cluster.CreateFinished {
			t.Errorf("record = %+v", st.CreateDB)
		}
	})

	t.Run("tables with rows are refused and kept", func(t *testing.T) {
		db := pg.NewDatabase(t)
		started(db)
		execSQL(t, pg, db, "CREATE TABLE organizations (id int); CREATE TABLE users (id int); INSERT INTO users VALUES (1)")
		r := &sqlRunner{t: t, pg: pg, db: db, head: "r2"}
		_, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Logger: testLogger(t)})
		if err == nil {
			t.Fatal("Run dropped or used tables holding rows")
		}
		t.Logf("error: %v", err)
		for _, want := range []string{"never finished", "hold rows, so the agent will not drop them: users", "DROP SCHEMA public CASCADE", "restore"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not say %q", want)
			}
		}
		if got := r.migrations(); len(got) != 0 {
			t.Errorf("ran %v", got)
		}
		execSQL(t, pg, db, "SELECT 1 FROM organizations, users")
	})

	t.Run("no record: unknown, refused", func(t *testing.T) {
		db := pg.NewDatabase(t)
		execSQL(t, pg, db, "CREATE TABLE organizations (id int)")
		r := &sqlRunner{t: t, pg: pg, db: db, head: "r2"}
		_, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Logger: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "not a Redash database") {
			t.Fatalf("Run = %v, want the unknown refusal", err)
		}
		execSQL(t, pg, db, "SELECT 1 FROM organizations")
	})
}

// TestRunRefusesADatabaseAhead: a revision the image's history lacks is a
// newer image's; nothing runs and nothing is paused, whatever the role.
func TestRunRefusesADatabaseAhead(t *testing.T) {
	pg := testenv.Postgres(t)
	for _, role := range []string{compose.RoleAll, compose.RoleWorker} {
		t.Run(role, func(t *testing.T) {
			db := pg.NewDatabase(t)
			execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r9')")
			r := &sqlRunner{t: t, pg: pg, db: db, head: "r2"}
			paused := false
			start := time.Now()
			res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img:old", Project: "p", Role: role, Runner: r, Deadline: time.Minute,
				PauseOld: func(context.Context) (func(context.Context), error) {
					paused = true
					return func(context.Context) {}, nil
				}, Logger: testLogger(t)})
			if err == nil {
				t.Fatalf("Run = %+v, want a refusal", res)
			}
			t.Logf("error: %v", err)
			var ahead *AheadError
			if !errors.As(err, &ahead) || exitcode.Of(err) != exitcode.Of(exitcode.ConfigError(errors.New("x"))) {
				t.Errorf("error is not a typed configuration error: %T", err)
			}
			for _, want := range []string{`"r9"`, `head "r2"`, "roll the instance forward", "restore the database"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not say %q", want)
				}
			}
			if res.Before != StateAhead || paused || len(r.migrations()) != 0 {
				t.Errorf("res %+v, paused %v, ran %v", res, paused, r.migrations())
			}
			if el := time.Since(start); el > 10*time.Second {
				t.Errorf("took %s: a worker must not wait for a head that never comes", el)
			}
		})
	}
}

// TestRunUpgradeDrainsTheFleet: the upgrade is announced, this instance's
// old workers are paused, and the migration waits until every live
// instance of the old head says it paused; a stale one is not waited for.
func TestRunUpgradeDrainsTheFleet(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
	withCluster(t, pg, db, func(ctx context.Context, q cluster.Querier) error {
		if err := cluster.Heartbeat(ctx, q, cluster.Instance{Name: "old-a", Head: "r1"}); err != nil {
			return err
		}
		if err := cluster.Heartbeat(ctx, q, cluster.Instance{Name: "stale", Head: "r1"}); err != nil {
			return err
		}
		_, err := q.Exec(ctx, `UPDATE redash_agent.instances SET seen_at = now() - interval '5 minutes' WHERE name = 'stale'`)
		return err
	})
	var pausedAt, migratedAt time.Time
	r := &sqlRunner{t: t, pg: pg, db: db, head: "r2", during: func() {
		migratedAt = time.Now()
		st := readCluster(t, pg, db)
		if u := st.Upgrade; u == nil || u.Phase != cluster.PhaseMigrating || u.FromHead != "r1" || u.ToHead != "r2" || u.By != "i-new" {
			t.Errorf("while the upgrade runs the record is %+v", u)
		}
	}}
	const otherPauses = 2 * time.Second
	go func() {
		time.Sleep(otherPauses)
		// old-a saw the record and paused (pause.go's heartbeat).
		withCluster(t, pg, db, func(ctx context.Context, q cluster.Querier) error {
			st, err := cluster.Read(ctx, q)
			if err != nil {
				return err
			}
			if !st.Upgrade.InProgress() {
				t.Errorf("old-a saw no upgrade in progress: %+v", st.Upgrade)
			}
			return cluster.Heartbeat(ctx, q, cluster.Instance{Name: "old-a", Head: "r1", PausedFor: st.Upgrade.ToHead})
		})
	}()
	start := time.Now()
	res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img:new", Project: "p", Instance: "i-new", Runner: r, Logger: testLogger(t),
		PauseOld: func(context.Context) (func(context.Context), error) {
			pausedAt = time.Now()
			return func(context.Context) {}, nil
		}, DrainWait: 20 * time.Second})
	if err != nil || res.Ran != RanUpgrade || res.After != StateCurrent {
		t.Fatalf("Run = %+v, %v", res, err)
	}
	if pausedAt.IsZero() || migratedAt.Before(pausedAt) {
		t.Errorf("own workers paused at %v, migration at %v", pausedAt, migratedAt)
	}
	if w := migratedAt.Sub(start); w < otherPauses || w > otherPauses+5*time.Second {
		t.Errorf("the migration started %s after Run, want just after old-a paused (%s)", w, otherPauses)
	}
	t.Logf("drain took %s", migratedAt.Sub(start).Round(time.Millisecond))
	st := readCluster(t, pg, db)
	if u := st.Upgrade; u == nil || u.Phase != cluster.PhaseDone || u.EndedAt.IsZero() {
		t.Errorf("record after = %+v", u)
	}
}

// TestRunUpgradeDrainIsBounded: an instance that never pauses holds the
// upgrade back for DrainWait only; a failed upgrade is recorded so.
func TestRunUpgradeDrainIsBounded(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
	withCluster(t, pg, db, func(ctx context.Context, q cluster.Querier) error {
		return cluster.Heartbeat(ctx, q, cluster.Instance{Name: "deaf", Head: "r1"})
	})
	var logs testenv.SyncBuffer
	r := &killedRunner{headsRunner: headsRunner{t: t, head: "r2"}}
	start := time.Now()
	resumed := false
	_, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img:new", Project: "p", Runner: r, Logger: logTo(t, &logs), DrainWait: 2 * time.Second,
		PauseOld: func(context.Context) (func(context.Context), error) {
			return func(context.Context) { resumed = true }, nil
		}})
	if !resumed {
		t.Errorf("the failed upgrade did not start this instance's old workers again")
	}
	t.Log(logs.String())
	if err == nil {
		t.Fatal("the killed upgrade succeeded")
	}
	if el := time.Since(start); el < 2*time.Second || el > 10*time.Second {
		t.Errorf("Run took %s with a 2s drain bound", el)
	}
	if !strings.Contains(logs.String(), "deaf") {
		t.Errorf("the journal does not name the instance that did not pause")
	}
	if u := readCluster(t, pg, db).Upgrade; u == nil || u.Phase != cluster.PhaseFailed || !strings.Contains(u.Error, "exit code 137") {
		t.Errorf("record after a failed upgrade = %+v", u)
	}
}

// TestRunNeverCutsAMigrationShort: the deadline bounds the waiting, not the
// migration; progress is logged while it runs.
func TestRunNeverCutsAMigrationShort(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	defer func(d time.Duration) { progressEvery = d }(progressEvery)
	progressEvery = 500 * time.Millisecond
	var logs testenv.SyncBuffer
	r := &sqlRunner{t: t, pg: pg, db: db, head: "r2", sleep: 3 * time.Second}
	res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Deadline: time.Second + 500*time.Millisecond, Logger: logTo(t, &logs)})
	t.Log(logs.String())
	if err != nil || res.After != StateCurrent {
		t.Fatalf("Run = %+v, %v; want the create_db to finish past the deadline", res, err)
	}
	if r.ctxErr != nil {
		t.Errorf("the one-off's context ended: %v", r.ctxErr)
	}
	if !strings.Contains(logs.String(), "create_db still running after") {
		t.Errorf("no progress line")
	}
}

// TestWorkerWaitsThroughACreateDB: tables without a revision while the
// records say a create_db runs are not "unknown" to a worker: it waits for
// the stamp.
func TestWorkerWaitsThroughACreateDB(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	withCluster(t, pg, db, func(ctx context.Context, q cluster.Querier) error {
		return cluster.Put(ctx, q, cluster.RecCreateDB, cluster.CreateDB{Phase: cluster.CreateStarted, By: "i-0"}, "i-0")
	})
	execSQL(t, pg, db, "CREATE TABLE organizations (id int)")
	go func() {
		time.Sleep(1500 * time.Millisecond)
		execSQL(t, pg, db, "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r2')")
	}()
	res, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Role: compose.RoleWorker, Runner: &headsRunner{t: t, head: "r2"}, Deadline: 20 * time.Second, Logger: testLogger(t)})
	if err != nil || res.After != StateCurrent {
		t.Fatalf("worker Run = %+v, %v", res, err)
	}
}
