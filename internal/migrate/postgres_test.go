package migrate

// Tests against the real PostgreSQL of scripts/ci-postgres.sh, with no
// Docker: the runner only answers `manage db heads`, so any attempt to
// migrate fails the test.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

func target(pg testenv.PG, db string) desired.DB {
	return desired.DB{Host: pg.Host, Port: pg.Port, User: pg.User, Password: secrets.NewValue(pg.Password), Name: db}
}

func execSQL(t testing.TB, pg testenv.PG, db, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// assertNoSecret fails when err's text holds the password.
func assertNoSecret(t testing.TB, err error, pg testenv.PG) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), pg.Password) {
		t.Errorf("error text contains the password: %v", err)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestInspectRealPostgres(t *testing.T) {
	pg := testenv.Postgres(t)
	for _, tc := range []struct {
		name, setup string
		want        State
	}{
		{"empty", "", StateEmpty},
		{"other schemas do not count", "CREATE SCHEMA side; CREATE TABLE side.t (i int)", StateEmpty},
		{"at head", "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r2')", StateCurrent},
		{"behind", "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')", StateBehind},
		{"no alembic_version", "CREATE TABLE users (i int)", StateUnknown},
		{"alembic_version without row", "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)", StateUnknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := pg.NewDatabase(t)
			if tc.setup != "" {
				execSQL(t, pg, db, tc.setup)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			got, err := Inspect(ctx, target(pg, db), "r2")
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Inspect = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestRunCurrentDatabaseRunsNothing(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
	r := &headsRunner{t: t, head: "r1"}
	cache := t.TempDir() + "/heads.json"
	o := Options{DB: target(pg, db), Image: "img", ImageID: "sha256:1", Project: "p", Runner: r, HeadsCache: cache, Logger: testLogger(t)}
	for i := range 2 {
		res, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res != (Result{Before: StateCurrent, After: StateCurrent, Head: "r1"}) {
			t.Errorf("Run #%d = %+v", i, res)
		}
	}
	if got := r.calls(); len(got) != 1 {
		t.Errorf("one-offs = %q, want one heads for two runs (then cached)", got)
	}
}

func TestRunUnreachableDatabase(t *testing.T) {
	port := testenv.FreePort(t) // nothing listens there
	r := &headsRunner{t: t, head: "r1"}
	o := Options{
		DB:    desired.DB{Host: "127.0.0.1", Port: port, User: "redash", Password: secrets.NewValue("s3cret-pw"), Name: "redash"},
		Image: "img", Project: "p", Runner: r, Deadline: 3 * time.Second, Logger: testLogger(t),
	}
	start := time.Now()
	_, err := Run(context.Background(), o)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Run against a closed port succeeded")
	}
	t.Logf("error: %v", err)
	if want := "127.0.0.1:" + strconv.Itoa(port); !strings.Contains(err.Error(), want) {
		t.Errorf("error does not name %s: %v", want, err)
	}
	if strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("error contains the password: %v", err)
	}
	if elapsed > 6*time.Second {
		t.Errorf("Run took %s with a 3s deadline", elapsed)
	}
	if got := r.calls(); len(got) != 0 {
		t.Errorf("one-offs ran against an unreachable database: %q", got)
	}
}

func TestRunWrongPasswordIsFinal(t *testing.T) {
	pg := testenv.Postgres(t)
	tg := target(pg, "postgres")
	tg.Password = secrets.NewValue("definitely-wrong-pw")
	r := &headsRunner{t: t, head: "r1"}
	start := time.Now()
	_, err := Run(context.Background(), Options{DB: tg, Image: "img", Project: "p", Runner: r, Deadline: 20 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Fatalf("Run with a wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "definitely-wrong-pw") {
		t.Errorf("error contains the password: %v", err)
	}
	if !IsAuthFailure(err) {
		t.Errorf("IsAuthFailure(%v) = false; the agent explains a refused login by it", err)
	}
	if IsAuthFailure(errors.New("connection refused")) {
		t.Error("IsAuthFailure is true for an error that is no PostgreSQL refusal")
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("an authentication failure was retried for %s; it is final", time.Since(start))
	}
}

func TestRunLockTimeoutNamesHolder(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := pg.ConnConfig(db)
	cfg.RuntimeParams["application_name"] = "other-agent ip-10-0-0-7"
	holderConn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer holderConn.Close(context.Background())
	var pid int32
	if err := holderConn.QueryRow(ctx, "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l", lockKey).Scan(&pid); err != nil {
		t.Fatal(err)
	}

	r := &headsRunner{t: t, head: "r1"}
	o := Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, LockTimeout: time.Second, Logger: testLogger(t)}
	start := time.Now()
	_, err = Run(ctx, o)
	if err == nil {
		t.Fatal("Run took a lock another session holds")
	}
	t.Logf("error: %v", err)
	for _, want := range []string{"not granted within 1s", fmt.Sprintf("pid %d", pid), `"other-agent ip-10-0-0-7"`, "pg_terminate_backend"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q", want)
		}
	}
	assertNoSecret(t, err, pg)
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("lock wait took %s with a 1s LockTimeout", el)
	}
	if got := r.calls(); len(got) != 1 {
		t.Errorf("one-offs = %q, want only heads", got)
	}
}

func TestRunWorkerWaitsForHead(t *testing.T) {
	pg := testenv.Postgres(t)

	t.Run("times out when nobody migrates", func(t *testing.T) {
		db := pg.NewDatabase(t)
		r := &headsRunner{t: t, head: "r2"}
		o := Options{DB: target(pg, db), Image: "img", Project: "p", Role: compose.RoleWorker, Runner: r, Deadline: 3 * time.Second, Logger: testLogger(t)}
		start := time.Now()
		res, err := Run(context.Background(), o)
		if err == nil {
			t.Fatalf("worker Run on an empty database succeeded: %+v", res)
		}
		t.Logf("error: %v", err)
		for _, want := range []string{`reach revision "r2"`, "still empty", "never migrates", "redash:role=all"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not contain %q", want)
			}
		}
		if el := time.Since(start); el < 2*time.Second || el > 6*time.Second {
			t.Errorf("worker gave up after %s with a 3s deadline", el)
		}
		if got := r.calls(); len(got) != 1 {
			t.Errorf("a worker ran one-offs %q, want only heads", got)
		}
	})

	t.Run("returns once another instance migrated", func(t *testing.T) {
		db := pg.NewDatabase(t)
		execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
		r := &headsRunner{t: t, head: "r2"}
		o := Options{DB: target(pg, db), Image: "img", Project: "p", Role: compose.RoleWorker, Runner: r, Deadline: 30 * time.Second, Logger: testLogger(t)}
		go func() {
			time.Sleep(1500 * time.Millisecond)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			conn, err := pg.Connect(ctx, db)
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(ctx, "UPDATE alembic_version SET version_num = 'r2'"); err != nil {
				t.Error(err)
			}
		}()
		res, err := Run(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		if res != (Result{Before: StateBehind, After: StateCurrent, Head: "r2"}) {
			t.Errorf("worker Run = %+v", res)
		}
	})
}

// TestRunWaitsForOrphanedMigration: a session named like a migration
// one-off (PGAPPNAME) that outlived its agent's lock keeps the next lock
// holder from starting a second migration until it ends.
func TestRunWaitsForOrphanedMigration(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := pg.ConnConfig(db)
	cfg.RuntimeParams["application_name"] = oneOffAppPrefix + "ip-10-0-0-9"
	orphan, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer orphan.Close(context.Background())

	r := &headsRunner{t: t, head: "r1"}
	o := Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Deadline: 7 * time.Second, Logger: testLogger(t)}
	_, err = Run(ctx, o)
	if err == nil || !strings.Contains(err.Error(), "orphaned migration") || !strings.Contains(err.Error(), "ip-10-0-0-9") {
		t.Fatalf("Run beside a live migration session: %v; want an error naming it", err)
	}
	t.Logf("error: %v", err)

	go func() {
		time.Sleep(time.Second)
		orphan.Close(context.Background())
	}()
	start := time.Now()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 800*time.Millisecond {
		t.Errorf("Run did not wait for the orphaned session (%s)", el)
	}
	if res.After != StateCurrent || res.Ran != RanNone {
		t.Errorf("Run = %+v", res)
	}
}

// killedRunner answers `manage db heads` with head and kills every other
// one-off as a Docker daemon restart does (exit 137), then reports the
// project's containers as they are after the restart.
type killedRunner struct {
	headsRunner
	containers []engine.Container
	listErr    error
}

func (r *killedRunner) RunOneOff(ctx context.Context, spec OneOff) (int, string, error) {
	if cmd := strings.Join(spec.Cmd, " "); cmd == "manage db heads" || cmd == "manage db history" {
		return r.headsRunner.RunOneOff(ctx, spec)
	}
	return 137, "Running upgrade r1 -> r2\n", nil
}

func (r *killedRunner) Containers(context.Context, string) ([]engine.Container, error) {
	return r.containers, r.listErr
}

// TestRunCutShortReportsWhatIsServing: a migration cut short says what is
// true of the old containers (before: always "the old containers keep
// serving", also when the daemon restart that cut it had stopped them).
func TestRunCutShortReportsWhatIsServing(t *testing.T) {
	pg := testenv.Postgres(t)
	server := engine.Container{Name: "redash-server-1", Service: "server"}
	worker := engine.Container{Name: "redash-worker-1", Service: "worker"}
	oneOff := engine.Container{Name: "redash-migrate-x", OneOff: true, State: "running"}
	with := func(c engine.Container, state string) engine.Container { c.State = state; return c }
	tests := []struct {
		name       string
		containers []engine.Container
		listErr    error
		want       string
		notWant    string
	}{
		{"daemon restart stopped them", []engine.Container{with(server, "exited"), with(worker, "exited"), oneOff},
			nil, `Redash is down: no container of project "p" is running (redash-server-1 exited, redash-worker-1 exited)`, "keep serving"},
		{"still running", []engine.Container{with(server, "running"), with(worker, "running")},
			nil, "the old containers keep serving (redash-server-1, redash-worker-1 running)", "down"},
		{"some running", []engine.Container{with(server, "running"), with(worker, "exited")},
			nil, "some old containers keep serving (redash-server-1 running; redash-worker-1 exited)", "Redash is down"},
		{"first boot", nil, nil, `project "p" has no containers yet`, "keep serving"},
		{"docker not answering", nil, errors.New("Cannot connect to the Docker daemon"),
			"could not tell whether the old containers still serve (Cannot connect to the Docker daemon)", "keep serving ("},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := pg.NewDatabase(t)
			execSQL(t, pg, db, "CREATE TABLE users (i int); CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); INSERT INTO alembic_version VALUES ('r1')")
			r := &killedRunner{headsRunner: headsRunner{t: t, head: "r2"}, containers: tc.containers, listErr: tc.listErr}
			_, err := Run(context.Background(), Options{DB: target(pg, db), Image: "img", Project: "p", Runner: r, Deadline: 30 * time.Second, Logger: testLogger(t)})
			if err == nil {
				t.Fatal("Run with a killed one-off succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), "exit code 137") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error does not say %q", tc.want)
			}
			if strings.Contains(err.Error(), tc.notWant) {
				t.Errorf("error says %q, which is not true here", tc.notWant)
			}
		})
	}
}

// TestErrorsHideTheDBUser: the database user name comes from Secrets
// Manager and is treated as a secret (as the e2e leak scan does): neither
// pgx's "failed to connect to `user=…`" nor PostgreSQL's "password
// authentication failed for user …" may carry it, nor a database name that
// defaults to it, in Run's or Inspect's error (status, doctor, config --db).
func TestErrorsHideTheDBUser(t *testing.T) {
	pg := testenv.Postgres(t)
	const user = "redash_admin_7c1f"
	wrongPw := desired.DB{Host: pg.Host, Port: pg.Port, User: user, Password: secrets.NewValue("wrong-pw-x"), Name: user}
	refused := desired.DB{Host: "127.0.0.1", Port: testenv.FreePort(t), User: user, Password: secrets.NewValue("pw"), Name: user}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s succeeded", what)
		}
		t.Logf("%s: %v", what, err)
		if strings.Contains(err.Error(), user) {
			t.Errorf("%s: error names the database user: %v", what, err)
		}
		if !strings.Contains(err.Error(), "[redacted db user]") {
			t.Errorf("%s: error does not say what it left out: %v", what, err)
		}
	}
	_, err := Run(context.Background(), Options{DB: wrongPw, Image: "img", Project: "p", Runner: &headsRunner{t: t, head: "r1"}, Deadline: 10 * time.Second, Logger: log})
	check("Run, wrong password", err)
	if !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("the cause is gone: %v", err)
	}
	_, err = Inspect(context.Background(), wrongPw, "r1")
	check("Inspect, wrong password", err)
	_, err = Run(context.Background(), Options{DB: refused, Image: "img", Project: "p", Runner: &headsRunner{t: t, head: "r1"}, Deadline: 2 * time.Second, Logger: log})
	check("Run, refused", err)
	if strings.Contains(logs.String(), user) {
		t.Errorf("the log names the database user:\n%s", logs.String())
	}
}

func TestRedactUserWholeWords(t *testing.T) {
	err := redactUser(errors.New("failed to connect to `user=ab database=ab`: role \"ab\" absent; abc tab"), "ab")
	if want := "failed to connect to `user=[redacted db user] database=[redacted db user]`: role \"[redacted db user]\" absent; abc tab"; err.Error() != want {
		t.Errorf("got  %s\nwant %s", err, want)
	}
}
