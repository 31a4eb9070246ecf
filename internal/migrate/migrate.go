// Package migrate owns database creation and schema migrations for a Redash
// cluster whose instances share one PostgreSQL and boot together. Redash
// itself takes no lock (create_db on 8.x even stamps an old schema current),
// so before the server starts Run takes a session-level advisory lock on the
// target database, looks at alembic_version and runs exactly what is needed
// (create_db on an empty database, `manage db upgrade` when the schema is
// behind the image's head) as a one-off container of the target image.
// Every other instance waits on the lock and then finds the schema current.
//
// Side effects: PostgreSQL sessions to the target database (one holds the
// advisory lock while a migration runs), one-off containers run through the
// Runner (the engine: on the project network, removed after they exit), and
// the heads cache file (image id -> head revision, 0600).
//
// Credentials never reach a log line or an error: the connection is built
// from fields, and the one-off's environment is only handed to Docker.
package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
)

// State is what the schema looks like relative to the image's head revision.
type State string

const (
	// StateEmpty: no tables in the public schema; create_db builds it.
	StateEmpty State = "empty"
	// StateBehind: alembic_version holds a revision other than the head;
	// `manage db upgrade` moves it. Without the image's revision graph a
	// schema that is ahead (migrated by a newer image) looks the same; the
	// upgrade then fails and Run returns its log lines, which is safe.
	StateBehind State = "behind"
	// StateCurrent: alembic_version holds the head.
	StateCurrent State = "current"
	// StateUnknown: tables exist but no single alembic revision says what
	// they are; Run refuses to touch such a database.
	StateUnknown State = "unknown"
)

// Commands the one-off runs, as the redash/redash entrypoint names them.
const (
	RanNone    = ""
	RanCreate  = "create_db"
	RanUpgrade = "manage db upgrade"
)

// Options says what to migrate with which image. Zero durations get defaults.
type Options struct {
	DB      desired.DB // the database Redash uses; its password only leaves through Reveal into the pgx config
	Image   string     // image reference the one-off runs
	ImageID string     // content id ("sha256:..."), the heads cache key
	Project string     // compose project, e.g. "redash"
	Service string     // server service name, for the one-off's compose labels; default "server"
	// Env is the one-off's environment: the env file's content, which holds
	// REDASH_DATABASE_URL. It is handed to Docker only, never logged.
	Env  map[string]string
	Role string // "worker": never migrate, wait (bounded) until the schema is at head

	LockTimeout time.Duration // longest wait for another instance's migration; default 5m
	Deadline    time.Duration // bound on the whole Run, migration included; default 15m

	HeadsCache string // JSON file image id -> head revision; "" disables caching
	Runner     Runner
	Logger     *slog.Logger
}

// containerLister is the engine's read of a project's containers. A Runner
// that has it lets a failed migration say whether Redash is still up: a
// migration is cut short by a daemon restart too, and that restart stops
// the running containers as well (their policy is on-failure).
type containerLister interface {
	Containers(ctx context.Context, project string) ([]engine.Container, error)
}

var _ containerLister = (*engine.Engine)(nil)

// servingTimeout bounds the look at the containers after a failure; the
// caller's context may be the one that just ended.
const servingTimeout = 5 * time.Second

// serving says what is true of the project's long-running containers after
// a failed migration, for the error: the old containers still serving, none
// running (and that the agent restarts them), or that it could not tell.
func serving(o Options) string {
	l, ok := o.Runner.(containerLister)
	if !ok {
		return "whether the old containers still serve was not checked: see `redash-agent status`"
	}
	ctx, cancel := context.WithTimeout(context.Background(), servingTimeout)
	defer cancel()
	cs, err := l.Containers(ctx, o.Project)
	if err != nil {
		return fmt.Sprintf("could not tell whether the old containers still serve (%v): see `redash-agent status` once Docker answers", err)
	}
	var running, stopped []string
	for _, c := range cs {
		if c.OneOff {
			continue
		}
		if c.State == "running" {
			running = append(running, c.Name)
		} else {
			stopped = append(stopped, c.Name+" "+c.State)
		}
	}
	switch {
	case len(running) > 0 && len(stopped) == 0:
		return fmt.Sprintf("the old containers keep serving (%s running)", strings.Join(running, ", "))
	case len(running) > 0:
		return fmt.Sprintf("some old containers keep serving (%s running; %s)", strings.Join(running, ", "), strings.Join(stopped, ", "))
	case len(stopped) > 0:
		return fmt.Sprintf("Redash is down: no container of project %q is running (%s), as a Docker daemon restart leaves them; "+
			"the agent starts them after the migration succeeds (`redash-agent up`, or run's next converge)", o.Project, strings.Join(stopped, ", "))
	default:
		return fmt.Sprintf("project %q has no containers yet, so nothing was serving", o.Project)
	}
}

// Result says what Run found and did.
type Result struct {
	Before, After State
	Ran           string // RanNone, RanCreate or RanUpgrade
	Head          string // the image's head revision
}

const (
	defaultLockTimeout = 5 * time.Minute
	defaultDeadline    = 15 * time.Minute
	// workerPoll is how often a worker looks at the schema while it waits.
	workerPoll = 2 * time.Second
)

func (o Options) withDefaults() Options {
	if o.Service == "" {
		o.Service = compose.ServerService
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = defaultLockTimeout
	}
	if o.Deadline <= 0 {
		o.Deadline = defaultDeadline
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate() error {
	var missing []string
	for _, f := range []struct{ name, v string }{
		{"DB.Host", o.DB.Host}, {"DB.User", o.DB.User}, {"DB.Name", o.DB.Name},
		{"Image", o.Image}, {"Project", o.Project},
	} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if o.DB.Port <= 0 || o.DB.Port > 65535 {
		missing = append(missing, "DB.Port")
	}
	if o.Runner == nil {
		missing = append(missing, "Runner")
	}
	if len(missing) > 0 {
		return fmt.Errorf("migrate options: missing or invalid %v: the caller must resolve the database endpoint and image first", missing)
	}
	return nil
}

// Run brings the schema to the image's head exactly once across every
// instance sharing the database, or (role worker) waits until another
// instance has. It returns an error, and runs nothing, when the database is
// unreachable; when the one-off fails the error carries its last log lines
// and the caller should keep the old containers serving.
//
// The database user name is a credential (it comes from Secrets Manager):
// it never appears in the error or the log, and neither does a database
// name that is the user name (the default).
func Run(ctx context.Context, o Options) (Result, error) {
	res, err := run(ctx, o)
	return res, redactUser(err, o.DB.User)
}

func run(ctx context.Context, o Options) (Result, error) {
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Deadline)
	defer cancel()
	log := o.Logger.With("db", dbLabel(o.DB), "addr", o.DB.Addr())

	// Reach the database before touching Docker: an unreachable database
	// must leave no container behind.
	conn, err := connect(ctx, o.DB, log)
	if err != nil {
		return Result{}, err
	}
	defer conn.Close(context.Background())

	head, err := Head(ctx, o)
	if err != nil {
		return Result{}, err
	}
	res := Result{Head: head}

	if o.Role == compose.RoleWorker {
		return waitForHead(ctx, conn, o, res, log)
	}

	release, err := acquireLock(ctx, conn, o.DB, o.LockTimeout, log)
	if err != nil {
		return res, err
	}
	defer release()

	// A migration started by an agent that died (its lock went with its
	// session) may still be running in an orphaned one-off; let it end.
	if err := waitForOrphans(ctx, conn, o.DB, log); err != nil {
		return res, err
	}

	st, version, err := inspect(ctx, conn, head)
	if err != nil {
		return res, fmt.Errorf("inspecting database %q at %s: %w", dbLabel(o.DB), o.DB.Addr(), err)
	}
	res.Before, res.After = st, st
	log.Info("database state", "state", st, "version", version, "head", head)

	var cmd []string
	switch st {
	case StateCurrent:
		return res, nil
	case StateEmpty:
		res.Ran, cmd = RanCreate, []string{"create_db"}
	case StateBehind:
		res.Ran, cmd = RanUpgrade, []string{"manage", "db", "upgrade"}
	default:
		return res, fmt.Errorf("database %q at %s has tables but alembic_version is %s: it is not a Redash database this agent can migrate; point redash:db-name at the Redash database or fix alembic_version by hand", dbLabel(o.DB), o.DB.Addr(), describeVersion(version))
	}

	log.Info("[started] "+res.Ran, "image", o.Image)
	code, logs, err := runWatched(ctx, conn, o, cmd)
	if err != nil {
		log.Error("[failed] "+res.Ran, "err", err)
		return res, fmt.Errorf("running %q in a one-off of %q: %w; %s", res.Ran, o.Image, err, serving(o))
	}
	if code != 0 {
		log.Error("[failed] "+res.Ran, "exit", code)
		return res, fmt.Errorf("running %q in a one-off of %q: exit code %d; %s; last log lines:\n%s", res.Ran, o.Image, code, serving(o), tail(logs, 20))
	}

	after, version, err := inspect(ctx, conn, head)
	if err != nil {
		return res, fmt.Errorf("inspecting database %q at %s after %s: %w", dbLabel(o.DB), o.DB.Addr(), res.Ran, err)
	}
	res.After = after
	if after != StateCurrent {
		return res, fmt.Errorf("after %q database %q is %s at %s, want head %q: check the one-off's output:\n%s", res.Ran, dbLabel(o.DB), after, describeVersion(version), head, tail(logs, 20))
	}
	log.Info("[finished] "+res.Ran, "version", version)
	return res, nil
}

// errLockLost ends a one-off whose agent no longer holds the lock.
var errLockLost = errors.New("lost the migration lock (the database session holding it ended)")

// runWatched runs the one-off while checking, every second, that the lock
// session is alive. If it dies (pg_terminate_backend, failover) another
// instance may start migrating, so the one-off is stopped: the migration's
// transaction rolls back and the next holder starts from a clean state.
func runWatched(ctx context.Context, conn *pgx.Conn, o Options, cmd []string) (int, string, error) {
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-runCtx.Done():
				return
			case <-t.C:
				pctx, pcancel := context.WithTimeout(runCtx, 5*time.Second)
				err := conn.Ping(pctx)
				pcancel()
				if err != nil && runCtx.Err() == nil {
					cancel(errLockLost)
					return
				}
			}
		}
	}()
	code, logs, err := o.Runner.RunOneOff(runCtx, oneOff(o, cmd))
	close(stop)
	<-done // the conn is not safe for concurrent use: the pinger must be gone
	if cause := context.Cause(runCtx); errors.Is(cause, errLockLost) {
		return code, logs, errLockLost
	}
	return code, logs, err
}

func oneOff(o Options, cmd []string) OneOff {
	env := make(map[string]string, len(o.Env)+1)
	for k, v := range o.Env {
		env[k] = v
	}
	// libpq (psycopg2 in Redash) names its session after PGAPPNAME, which
	// lets the next lock holder see a migration that outlived its agent.
	env["PGAPPNAME"] = oneOffAppName()
	return OneOff{
		Project: o.Project,
		Name:    oneOffName,
		Service: o.Service,
		Image:   o.Image,
		Cmd:     cmd,
		Env:     env,
	}
}

// waitForHead is the worker's path: it never migrates, it polls until the
// schema is at head or the deadline passes.
func waitForHead(ctx context.Context, conn *pgx.Conn, o Options, res Result, log *slog.Logger) (Result, error) {
	start := time.Now()
	first := true
	for {
		st, version, err := inspect(ctx, conn, res.Head)
		if err != nil {
			if ctx.Err() != nil {
				return res, fmt.Errorf("waiting for database %q at %s to reach revision %q: deadline of %s passed while inspecting it: %w", dbLabel(o.DB), o.DB.Addr(), res.Head, o.Deadline, err)
			}
			return res, fmt.Errorf("inspecting database %q at %s: %w", dbLabel(o.DB), o.DB.Addr(), err)
		}
		if first {
			res.Before = st
			first = false
		}
		res.After = st
		switch st {
		case StateCurrent:
			log.Info("database at head", "version", version, "waited", time.Since(start).Round(time.Millisecond))
			return res, nil
		case StateUnknown:
			return res, fmt.Errorf("database %q at %s has tables but alembic_version is %s: not a Redash database; point redash:db-name at the Redash database", dbLabel(o.DB), o.DB.Addr(), describeVersion(version))
		}
		log.Info("waiting for another instance to migrate", "state", st, "version", version, "head", res.Head)
		if backoff.Sleep(ctx, backoff.Spread(workerPoll)) != nil {
			return res, fmt.Errorf("waiting for database %q at %s to reach revision %q: still %s (%s) after %s; role %q never migrates: start an instance with redash:role=all or web, or run `redash-agent migrate` on one", dbLabel(o.DB), o.DB.Addr(), res.Head, st, describeVersion(version), time.Since(start).Round(time.Second), compose.RoleWorker)
		}
	}
}

// hostname names this instance in pg_stat_activity, so a lock timeout says
// which instance holds the lock.
func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown-host"
	}
	return h
}

func lockAppName() string   { return "redash-agent " + hostname() }
func oneOffAppName() string { return oneOffAppPrefix + hostname() }

// oneOffAppPrefix marks the sessions of migration one-offs.
const oneOffAppPrefix = "redash-agent-migrate "
