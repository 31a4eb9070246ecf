// Package migrate owns database creation and schema migrations for a Redash
// cluster whose instances share one PostgreSQL and boot together. Redash
// itself takes no lock (create_db on 8.x even stamps an old schema current),
// so before the server starts Run takes a session-level advisory lock on the
// target database, looks at alembic_version and runs exactly what is needed
// (create_db on an empty database, `manage db upgrade` when the schema is
// behind the image's head) as a one-off container of the target image.
// Every other instance waits on the lock and then finds the schema current.
//
// A migration, once started, is never killed: the deadline and the lock
// watcher bound only the waiting (for the lock, for an orphaned migration),
// and progress is logged every 30 s. If the lock session dies mid-migration
// the one-off runs on; the next holder's orphan wait (the one-off's
// PGAPPNAME session) keeps it from starting a second one beside it.
//
// The agent's records (internal/cluster) make the rest safe across the
// fleet: create_db is marked started and finished, so tables left by a
// create_db that was cut short are told from a foreign database and, when
// they hold no rows, dropped and created again; an upgrade is announced
// (draining), this instance's old workers are stopped (Options.PauseOld)
// and Run waits, bounded, until every other live instance says it paused
// its own, then records migrating and done or failed. A database whose
// revision the image does not know (StateAhead: migrated by a newer image)
// is refused before anything is stopped.
//
// Side effects: PostgreSQL sessions to the target database (one holds the
// advisory lock while a migration runs), the agent's records in schema
// redash_agent, one-off containers run through the Runner (the engine: on
// the project network, removed after they exit), and the heads cache file
// (image id -> head revision and revision list, 0600).
//
// Credentials never reach a log line or an error: the connection is built
// from fields, and the one-off's environment is only handed to Docker.
package migrate

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// State is what the schema looks like relative to the image's head revision.
type State string

const (
	// StateEmpty: no tables in the public schema; create_db builds it.
	StateEmpty State = "empty"
	// StateBehind: alembic_version holds a revision other than the head;
	// `manage db upgrade` moves it. Inspect cannot tell it from StateAhead
	// (that takes the image's revision graph, History); Run does.
	StateBehind State = "behind"
	// StateAhead: alembic_version holds a revision the image does not know:
	// a newer image migrated the database (or it is foreign). Run refuses it
	// before anything is stopped; roll the instance forward or restore.
	StateAhead State = "ahead"
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
	// Deadline bounds Run's waiting (the lock, an orphaned migration, a
	// worker's wait for the head); default 15m. A migration that started
	// runs to its end whatever the deadline.
	Deadline time.Duration

	// Instance names this instance in the agent's records (cluster.Put's
	// by, its heartbeat); default the host name.
	Instance string
	// PauseOld stops this instance's old scheduler and workers (a warm
	// shutdown: docker stop with their stop grace) before an upgrade, and
	// returns what starts them again should the upgrade fail; nil when
	// there are none to stop.
	PauseOld func(ctx context.Context) (resume func(context.Context), err error)
	// DrainWait bounds the wait for the other instances to pause their old
	// workers before an upgrade: their longest stop grace plus a minute.
	// Default defaultDrainWait.
	DrainWait time.Duration

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
	// Generation is the agent's records' generation after this Run's own
	// writes (create_db and upgrade records), 0 when it wrote none: the
	// caller's watch compares against it, so its own writes wake nobody
	// here (they are for the other instances).
	Generation int64
}

const (
	defaultLockTimeout = 5 * time.Minute
	defaultDeadline    = 15 * time.Minute
	// defaultDrainWait is the default worker stop grace plus a minute.
	defaultDrainWait = compose.DefaultWorkerStopGrace + time.Minute
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
	if o.Instance == "" {
		o.Instance = hostname()
	}
	if o.DrainWait <= 0 {
		o.DrainWait = defaultDrainWait
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
	if st == StateBehind {
		if st, err = aheadOrBehind(ctx, o, version); err != nil {
			return res, err
		}
	}
	res.Before, res.After = st, st
	log.Info("database state", "state", st, "version", version, "head", head)

	var cmd []string
	switch st {
	case StateCurrent:
		return res, nil
	case StateAhead:
		return res, aheadError(o, version, head)
	case StateEmpty:
		res.Ran, cmd = RanCreate, []string{"create_db"}
	case StateBehind:
		res.Ran, cmd = RanUpgrade, []string{"manage", "db", "upgrade"}
	default:
		partial, err := partialCreateDB(ctx, conn, o, version, log)
		if err != nil {
			return res, err
		}
		if !partial {
			return res, fmt.Errorf("database %q at %s has tables but alembic_version is %s: it is not a Redash database this agent can migrate; point redash:db-name at the Redash database or fix alembic_version by hand", dbLabel(o.DB), o.DB.Addr(), describeVersion(version))
		}
		res.Ran, cmd = RanCreate, []string{"create_db"}
	}

	// From here on the migration runs to its end: the deadline bounded the
	// waiting, and a cut-short create_db or upgrade is what this package
	// exists to avoid. The records and the last look get their own bounds.
	mctx := context.WithoutCancel(ctx)
	var up *upgrade
	switch res.Ran {
	case RanCreate:
		if err := markCreateDB(mctx, conn, o, cluster.CreateStarted); err != nil {
			return res, err
		}
	case RanUpgrade:
		up = &upgrade{o: o, conn: conn, log: log, rec: cluster.Upgrade{FromHead: firstVersion(version), ToHead: head, Image: o.Image, By: o.Instance}}
		if err := up.drain(ctx); err != nil {
			return res, err
		}
	}

	log.Info("[started] "+res.Ran, "image", o.Image)
	code, logs, err := runWatched(mctx, conn, o, res.Ran, cmd)
	// The lock session may have died while the one-off ran: the records
	// and the last look then use a new one.
	conn = alive(mctx, conn, o, log)
	if err == nil && code != 0 {
		err = fmt.Errorf("exit code %d", code)
	}
	if err != nil {
		log.Error("[failed] "+res.Ran, "err", err)
		up.finish(mctx, conn, err)
		return res, fmt.Errorf("running %q in a one-off of %q: %w; %s; last log lines:\n%s", res.Ran, o.Image, err, serving(o), tail(logs, 20))
	}

	ictx, icancel := context.WithTimeout(mctx, recordTimeout)
	defer icancel()
	after, version, err := inspect(ictx, conn, head)
	if err != nil {
		up.finish(mctx, conn, err)
		return res, fmt.Errorf("inspecting database %q at %s after %s: %w", dbLabel(o.DB), o.DB.Addr(), res.Ran, err)
	}
	res.After = after
	if after != StateCurrent {
		err := fmt.Errorf("after %q database %q is %s at %s, want head %q: check the one-off's output:\n%s", res.Ran, dbLabel(o.DB), after, describeVersion(version), head, tail(logs, 20))
		up.finish(mctx, conn, err)
		return res, err
	}
	if res.Ran == RanCreate {
		if err := markCreateDB(mctx, conn, o, cluster.CreateFinished); err != nil {
			log.Warn("create_db finished but its record could not say so; the schema is stamped, so nothing depends on it", "err", err)
		}
	}
	up.finish(mctx, conn, nil)
	if g, err := cluster.Generation(ictx, conn); err == nil {
		res.Generation = g
	}
	log.Info("[finished] "+res.Ran, "version", version)
	return res, nil
}

// recordTimeout bounds one write of the agent's records, or one look at the
// schema, after the migration.
const recordTimeout = 30 * time.Second

// progressEvery spaces the "still running" lines of a migration.
var progressEvery = 30 * time.Second

// runWatched runs the one-off to its end, logging every progressEvery that
// it still runs and, once, that the lock session died: the one-off is not
// stopped then (a create_db cut short leaves a partial schema), the next
// holder's orphan wait keeps a second migration from starting beside it.
func runWatched(ctx context.Context, conn *pgx.Conn, o Options, what string, cmd []string) (int, string, error) {
	log := o.Logger
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		start := time.Now()
		ping := time.NewTicker(time.Second)
		defer ping.Stop()
		progress := time.NewTicker(progressEvery)
		defer progress.Stop()
		lost := false
		for {
			select {
			case <-stop:
				return
			case <-progress.C:
				log.Info(fmt.Sprintf("%s still running after %s", what, time.Since(start).Round(time.Second)), "image", o.Image)
			case <-ping.C:
				if lost {
					continue
				}
				pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
				err := conn.Ping(pctx)
				pcancel()
				if err != nil {
					lost = true
					log.Warn(what+": lost the migration lock (its database session ended); the one-off runs on to its end, "+
						"and another instance waits for its session before migrating", "err", err)
				}
			}
		}
	}()
	code, logs, err := o.Runner.RunOneOff(ctx, oneOff(o, cmd))
	close(stop)
	<-done // the conn is not safe for concurrent use: the pinger must be gone
	return code, logs, err
}

// alive returns conn if its session still answers, else a new session (or
// the dead one, when none can be opened: the callers' writes then fail and
// say so).
func alive(ctx context.Context, conn *pgx.Conn, o Options, log *slog.Logger) *pgx.Conn {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if conn.Ping(pctx) == nil {
		return conn
	}
	cctx, ccancel := context.WithTimeout(ctx, recordTimeout)
	defer ccancel()
	fresh, err := connect(cctx, o.DB, log)
	if err != nil {
		log.Warn("the migration's database session ended and no new one opens", "err", redactUser(err, o.DB.User))
		return conn
	}
	_ = conn.Close(context.Background())
	return fresh
}

// aheadOrBehind tells a behind database from one that is ahead of the
// image: version must be one of the image's revisions.
func aheadOrBehind(ctx context.Context, o Options, version []string) (State, error) {
	revs, err := History(ctx, o)
	if err != nil {
		return "", err
	}
	for _, v := range version {
		if !slices.Contains(revs, v) {
			return StateAhead, nil
		}
	}
	return StateBehind, nil
}

// AheadAdvice is what to do about a database migrated by a newer image.
const AheadAdvice = "the database was migrated by a newer image: roll the instance forward (redash:version) or restore the database"

// AheadError is Run's refusal of a database migrated by a newer image.
type AheadError struct {
	Database, Addr string // the database's label and address
	Version        string // the database's revision(s), described
	Image, Head    string // the image and its head revision
}

func (e *AheadError) Error() string {
	return fmt.Sprintf("database %q at %s is at revision %s, which image %q (head %q) does not know: %s; nothing was stopped, the running containers keep serving",
		e.Database, e.Addr, e.Version, e.Image, e.Head, AheadAdvice)
}

func aheadError(o Options, version []string, head string) error {
	return exitcode.ConfigError(&AheadError{Database: dbLabel(o.DB), Addr: o.DB.Addr(), Version: describeVersion(version), Image: o.Image, Head: head})
}

func firstVersion(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
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
	knownBehind := false // the image knows the revision: another instance will upgrade it
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
		if st == StateBehind && !knownBehind {
			// A revision the image does not know never becomes its head.
			if st, err = aheadOrBehind(ctx, o, version); err != nil {
				return res, err
			}
			knownBehind = st == StateBehind
			res.After = st
			if res.Before == StateBehind {
				res.Before = st
			}
		}
		switch st {
		case StateCurrent:
			log.Info("database at head", "version", version, "waited", time.Since(start).Round(time.Millisecond))
			return res, nil
		case StateAhead:
			return res, aheadError(o, version, res.Head)
		case StateUnknown:
			// create_db commits table by table and stamps last: another
			// instance's create_db under way looks like this for a while.
			if !createDBStarted(ctx, conn, version) {
				return res, fmt.Errorf("database %q at %s has tables but alembic_version is %s: not a Redash database; point redash:db-name at the Redash database", dbLabel(o.DB), o.DB.Addr(), describeVersion(version))
			}
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
