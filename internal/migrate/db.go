package migrate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/desired"
)

// lockKey is the advisory lock every agent of a cluster takes. Advisory
// locks are scoped to the current database, so clusters sharing a server
// but not a database do not block each other. The value is arbitrary but
// fixed forever: changing it would let old and new agents migrate at once.
const lockKey int64 = 0x5245444153484d47 // "REDASHMG"

// SchedulerLockKey is the 8.x scheduler lease (internal/lease), held on a
// session of its own for as long as an instance runs Celery beat. Another
// key than lockKey, so a migration and the lease never wait for each other;
// fixed forever for the same reason.
const SchedulerLockKey int64 = 0x5245444153485344 // "REDASHSD"

// maxConnectTimeout bounds one connection attempt; the deadline bounds all.
const maxConnectTimeout = 10 * time.Second

// connConfig builds the pgx config from fields. The DSN given to ParseConfig
// carries no password, so no parse error can echo one, and the TLS fallbacks
// (sslmode=prefer by default) point at the same host and port.
func connConfig(t desired.DB, appName string, timeout time.Duration) (*pgx.ConnConfig, error) {
	secs := int(timeout.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s connect_timeout=%d application_name=%s",
		dsnQuote(t.Host), t.Port, dsnQuote(t.User), dsnQuote(t.Name), secs, dsnQuote(appName))
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("building the connection to %s, database %q: %w", t.Addr(), dbLabel(t), err)
	}
	cfg.Password = t.Password.Reveal()
	return cfg, nil
}

// redacted stands for the database user name in errors and logs.
const redacted = "[redacted db user]"

// dbLabel is how errors and logs name the database: its name, unless that is
// the user name (the default, as in the seed), which is a credential.
func dbLabel(t desired.DB) string { return DatabaseLabel(t) }

// DatabaseLabel is how output names the database t: its name, or a
// placeholder when the name is the user name (the default), a credential.
func DatabaseLabel(t desired.DB) string {
	if t.Name == t.User {
		return redacted
	}
	return t.Name
}

// redactUser hides the database user name in err's text: pgx puts it in
// every connection error ("failed to connect to `user=… database=…`") and
// PostgreSQL in its own ("password authentication failed for user …").
// errors.Is and errors.As still see the original chain.
func redactUser(err error, user string) error {
	if err == nil || user == "" {
		return err
	}
	// Only whole words: a short user name must not garble other words.
	re := regexp.MustCompile(`(^|[^A-Za-z0-9_$])` + regexp.QuoteMeta(user) + `($|[^A-Za-z0-9_$])`)
	text := err.Error()
	for { // adjacent matches share a boundary character: repeat until none
		next := re.ReplaceAllString(text, "${1}"+redacted+"${2}")
		if next == text {
			break
		}
		text = next
	}
	return &redactedError{text: text, err: err}
}

// redactedError is err with its text redacted.
type redactedError struct {
	text string
	err  error
}

func (e *redactedError) Error() string { return e.text }
func (e *redactedError) Unwrap() error { return e.err }

// dsnQuote quotes a keyword/value DSN value as libpq does.
func dsnQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// pgCannotConnectNow is "the database system is starting up" (or shutting
// down): a server that answers but will accept connections in a moment,
// as a freshly started bundled postgres does. It is retried.
const pgCannotConnectNow = "57P03"

// IsAuthFailure says whether err is PostgreSQL refusing the login: a wrong
// password (28P01) or no pg_hba entry or role for it (28000).
func IsAuthFailure(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000")
}

// connectRetry spaces connection attempts: an Aurora failover takes tens of
// seconds, so the cap keeps retrying often enough to notice its end.
var connectRetry = backoff.Policy{Base: 500 * time.Millisecond, Max: 5 * time.Second}

// connect opens the agent's session, retrying network failures with
// backoff until ctx ends. A server's refusal (bad password, no such
// database) is final: retrying cannot fix it.
func connect(ctx context.Context, t desired.DB, log *slog.Logger) (*pgx.Conn, error) {
	var lastErr error
	for attempt := 1; ; attempt++ {
		timeout := maxConnectTimeout
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
			timeout = time.Until(dl)
		}
		cfg, err := connConfig(t, lockAppName(), timeout)
		if err != nil {
			return nil, err
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			return conn, nil
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code != pgCannotConnectNow {
			return nil, fmt.Errorf("connecting to PostgreSQL at %s, database %q: %w: check the db-user/db-password secrets and redash:db-name", t.Addr(), dbLabel(t), err)
		}
		// An attempt cut short by the deadline says less than the one
		// before it ("connection refused", "no route to host").
		if lastErr == nil || ctx.Err() == nil {
			lastErr = err
		}
		log.Warn("database not reachable yet", "attempt", attempt, "err", redactUser(err, t.User))
		if backoff.Sleep(ctx, connectRetry.Next(attempt)) != nil {
			return nil, fmt.Errorf("connecting to PostgreSQL at %s, database %q: not reachable after %d attempts: %w: check redash:db-endpoint, the security groups and that the database is up", t.Addr(), dbLabel(t), attempt, lastErr)
		}
	}
}

// Inspect connects once and reports the schema's state relative to head,
// for `status` and `config`. It takes no lock and changes nothing.
func Inspect(ctx context.Context, t desired.DB, head string) (State, error) {
	st, err := inspectOnce(ctx, t, head)
	return st, redactUser(err, t.User)
}

func inspectOnce(ctx context.Context, t desired.DB, head string) (State, error) {
	st, _, err := inspectVersion(ctx, t, head)
	return st, err
}

// inspectVersion is one look on a session of its own: the state and the
// revision(s) alembic_version holds.
func inspectVersion(ctx context.Context, t desired.DB, head string) (State, []string, error) {
	timeout := maxConnectTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	cfg, err := connConfig(t, lockAppName(), timeout)
	if err != nil {
		return "", nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return "", nil, fmt.Errorf("connecting to PostgreSQL at %s, database %q: %w: check redash:db-endpoint and the database credentials", t.Addr(), dbLabel(t), err)
	}
	defer conn.Close(context.Background())
	st, version, err := inspect(ctx, conn, head)
	if err != nil {
		return "", nil, fmt.Errorf("inspecting database %q at %s: %w", dbLabel(t), t.Addr(), err)
	}
	return st, version, nil
}

// inspect reads the public schema and alembic_version (the table
// Flask-Migrate keeps) in one statement. query_to_xml would let one SQL text
// read a table that may not exist; a CASE keeps it from being evaluated when
// alembic_version is absent, so an empty database costs no error.
func inspect(ctx context.Context, conn *pgx.Conn, head string) (State, []string, error) {
	var tables int
	var versions []string
	err := conn.QueryRow(ctx, `
SELECT
  (SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = 'public'),
  CASE WHEN to_regclass('public.alembic_version') IS NULL THEN NULL
       ELSE (SELECT coalesce(array_agg(v::text ORDER BY v::text), '{}')
             FROM unnest(xpath('/table/row/version_num/text()',
                  query_to_xml('SELECT version_num FROM public.alembic_version', false, false, ''))) AS v)
  END`).Scan(&tables, &versions)
	if err != nil {
		return "", nil, err
	}
	return classify(tables, versions, head), versions, nil
}

// classify is the pure decision: versions is nil when alembic_version does
// not exist, empty when it has no row.
func classify(publicTables int, versions []string, head string) State {
	switch {
	case publicTables == 0:
		return StateEmpty
	case len(versions) != 1 || versions[0] == "":
		return StateUnknown
	case versions[0] == head:
		return StateCurrent
	default:
		return StateBehind
	}
}

func describeVersion(v []string) string {
	switch {
	case v == nil:
		return "missing"
	case len(v) == 0:
		return "empty"
	case len(v) == 1:
		return strconv.Quote(v[0])
	default:
		return fmt.Sprintf("%q (several heads)", v)
	}
}

// acquireLock takes the session-level advisory lock on conn. lock_timeout
// ends the wait with a PostgreSQL error rather than a cancelled context, so
// the session stays usable to ask who holds the lock. The returned release
// unlocks; if the session is gone the lock went with it.
func acquireLock(ctx context.Context, conn *pgx.Conn, t desired.DB, timeout time.Duration, log *slog.Logger) (func(), error) {
	// Leave room before the deadline to ask who holds the lock.
	if dl, ok := ctx.Deadline(); ok {
		if room := time.Until(dl) - 5*time.Second; room < timeout {
			timeout = max(room, 100*time.Millisecond)
		}
	}
	ms := strconv.FormatInt(timeout.Milliseconds(), 10)
	if _, err := conn.Exec(ctx, `SELECT set_config('lock_timeout', $1, false)`, ms); err != nil {
		return nil, fmt.Errorf("setting lock_timeout on database %q at %s: %w", dbLabel(t), t.Addr(), err)
	}
	start := time.Now()
	// Try first so the journal says when an instance has to wait.
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, lockKey).Scan(&got); err != nil {
		return nil, fmt.Errorf("taking the migration lock on database %q at %s: %w", dbLabel(t), t.Addr(), err)
	}
	if !got {
		log.Info("waiting for the migration lock", "holder", describeHolders(holders(ctx, conn, lockKey)), "timeout", timeout)
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, lockKey); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
				return nil, fmt.Errorf("taking the migration lock on database %q at %s: not granted within %s; held by %s: that instance is migrating or stuck; if stuck, end its session with pg_terminate_backend(pid)", dbLabel(t), t.Addr(), timeout, describeHolders(holders(ctx, conn, lockKey)))
			}
			return nil, fmt.Errorf("taking the migration lock on database %q at %s: %w", dbLabel(t), t.Addr(), err)
		}
	}
	log.Info("migration lock taken", "waited", time.Since(start).Round(time.Millisecond))
	return func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1)`, lockKey); err != nil {
			// The lock is session-level: closing the connection frees it.
			log.Warn("releasing the migration lock; closing the session frees it", "err", err)
		}
	}, nil
}

// holder is one session in pg_stat_activity.
type holder struct {
	PID          int32
	AppName      string
	ClientAddr   string
	BackendStart time.Time
}

func (h holder) String() string {
	return fmt.Sprintf("pid %d (application_name %q, client %s, connected %s)", h.PID, h.AppName, h.ClientAddr, h.BackendStart.UTC().Format(time.RFC3339))
}

// holders lists the sessions holding advisory lock key in this database. A
// bigint key is stored as classid (high 32 bits), objid (low), objsubid 1.
func holders(ctx context.Context, conn *pgx.Conn, key int64) []holder {
	rows, err := conn.Query(ctx, `
SELECT a.pid, coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), a.backend_start
FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
  AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid`,
		int64(uint64(key)>>32), int64(uint64(key)&0xffffffff))
	if err != nil {
		return nil
	}
	hs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[holder])
	if err != nil {
		return nil
	}
	return hs
}

func describeHolders(hs []holder) string {
	if len(hs) == 0 {
		return "an unknown session (it may have just released it)"
	}
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.String()
	}
	return strings.Join(s, "; ")
}

// orphans lists sessions of migration one-offs (marked by PGAPPNAME) in
// this database other than our own.
func orphans(ctx context.Context, conn *pgx.Conn) ([]holder, error) {
	rows, err := conn.Query(ctx, `
SELECT pid, coalesce(application_name, ''), coalesce(host(client_addr), 'local'), backend_start
FROM pg_catalog.pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND starts_with(application_name, $1)`, oneOffAppPrefix)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowToStructByPos[holder])
}

// waitForOrphans waits, under the lock, until no migration one-off of an
// agent that lost its lock still has a session: running a second migration
// beside it is exactly what the lock is for.
func waitForOrphans(ctx context.Context, conn *pgx.Conn, t desired.DB, log *slog.Logger) error {
	for logged := false; ; {
		hs, err := orphans(ctx, conn)
		if err != nil {
			return fmt.Errorf("looking for running migrations in database %q at %s: %w", dbLabel(t), t.Addr(), err)
		}
		if len(hs) == 0 {
			return nil
		}
		if !logged {
			log.Warn("a migration whose agent lost the lock is still running; waiting for it to end", "sessions", describeHolders(hs))
			logged = true
		}
		if backoff.Sleep(ctx, backoff.Spread(time.Second)) != nil {
			return fmt.Errorf("waiting for an orphaned migration in database %q at %s to end: still running: %s: stop that one-off container (name <project>-migrate-*) or end the session with pg_terminate_backend(pid)", dbLabel(t), t.Addr(), describeHolders(hs))
		}
	}
}
