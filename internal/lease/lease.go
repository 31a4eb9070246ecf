// Package lease is a cluster-wide lease: a session-level PostgreSQL
// advisory lock on the Redash database, held on a dedicated session, so it
// lasts exactly as long as that session. Each Kind is one lease with its own
// fixed key. Scheduler is the lease on Redash 8.x's scheduler: Celery beat
// has no lock of its own, so with role all on several instances every
// periodic task would run once per instance (migrate.SchedulerLockKey);
// internal/metrics holds another so one instance publishes the backlog. Release, the agent's exit or death (the kernel closes the
// socket), pg_terminate_backend and a failover all end it, and Held sees
// the end.
//
// Who holds it is the holding session's application_name (Name): it lives
// and dies with the lock, so it is never stale after a crash, it needs no
// table in Redash's database (where migrate would count it as a Redash
// table), and every session of the same role can read it in pg_stat_activity.
//
// Side effects: one PostgreSQL session per Lease; Try and Holders open a
// short-lived one. Credentials never reach an error (migrate.Dial).
package lease

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/migrate"
)

// HeldTimeout bounds Held's query: a session that does not answer within
// it is lost (a partition, a failover in progress).
const HeldTimeout = 5 * time.Second

// tryTimeout bounds Try and Holders as a whole, the connection included.
const tryTimeout = 15 * time.Second

// Kind is one lease: its advisory-lock key, fixed forever (two agents that
// disagree on it would both hold "the" lease), what errors call it, and
// the prefix of its sessions' application_name.
type Kind struct {
	Key        int64
	What       string // e.g. "the 8.x scheduler lease"
	NamePrefix string // e.g. "redash-agent-scheduler "
}

// Scheduler is the 8.x scheduler lease.
var Scheduler = Kind{Key: migrate.SchedulerLockKey, What: "the 8.x scheduler lease", NamePrefix: namePrefix}

// namePrefix starts the application_name of every scheduler lease session.
const namePrefix = "redash-agent-scheduler "

// maxName is PostgreSQL's limit on application_name (NAMEDATALEN-1 bytes);
// a longer name is truncated by the server, so Name truncates it first and
// compares equal to what pg_stat_activity shows.
const maxName = 63

// Name is the application_name of instance's scheduler lease session.
func Name(instance string) string { return Scheduler.Name(instance) }

// Name is the application_name of instance's session of this lease.
func (k Kind) Name(instance string) string {
	n := k.NamePrefix + instance
	if len(n) > maxName {
		n = n[:maxName]
	}
	return n
}

// keepalive makes the server notice a holder that vanished without closing
// its socket (an instance terminated, a network partition) within about
// 10 s + 3 × 5 s, so the lock is free for another instance well within a
// minute instead of the kernel's 2 hours. idle_session_timeout (PostgreSQL
// 14 and later) would end the idle lease session: it is turned off for it.
// Settings the server does not know are skipped.
const keepalive = `
SELECT set_config(s.name, s.value, false)
FROM (VALUES ('tcp_keepalives_idle', '10'), ('tcp_keepalives_interval', '5'),
             ('tcp_keepalives_count', '3'), ('idle_session_timeout', '0')) AS s(name, value)
WHERE s.name IN (SELECT name FROM pg_catalog.pg_settings)`

// Lease is a held scheduler lease. Its methods are safe for concurrent use.
type Lease struct {
	kind Kind
	db   desired.DB
	name string

	mu   sync.Mutex
	conn *pgx.Conn // nil once lost or released
	lost error
}

// Try opens a session named Name(instance) and takes the lease without
// waiting. It returns the lease when it got it; otherwise nil and the
// sessions that hold it (empty if it could not tell), having closed its
// own. An error means the database could not be asked: try again later.
func Try(ctx context.Context, db desired.DB, instance string) (*Lease, []migrate.Holder, error) {
	return Scheduler.Try(ctx, db, instance)
}

// Try takes this lease as Try takes the scheduler's.
func (k Kind) Try(ctx context.Context, db desired.DB, instance string) (*Lease, []migrate.Holder, error) {
	ctx, cancel := context.WithTimeout(ctx, tryTimeout)
	defer cancel()
	name := k.Name(instance)
	conn, err := migrate.Dial(ctx, db, name)
	if err != nil {
		return nil, nil, fmt.Errorf("taking %s: %w", k.What, err)
	}
	if _, err := conn.Exec(ctx, keepalive); err != nil {
		conn.Close(context.Background())
		return nil, nil, fmt.Errorf("taking %s on database %q at %s: setting the session's keepalives: %w", k.What, migrate.DatabaseLabel(db), db.Addr(), err)
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, k.Key).Scan(&got); err != nil {
		conn.Close(context.Background())
		return nil, nil, fmt.Errorf("taking %s on database %q at %s: %w", k.What, migrate.DatabaseLabel(db), db.Addr(), err)
	}
	if !got {
		hs := migrate.LockHolders(ctx, conn, k.Key)
		conn.Close(context.Background())
		return nil, hs, nil
	}
	return &Lease{kind: k, db: db, name: name, conn: conn}, nil, nil
}

// Name is the application_name the lease is held under.
func (l *Lease) Name() string { return l.name }

// DB is the database the lease is held in.
func (l *Lease) DB() desired.DB { return l.db }

// Held checks, bounded by HeldTimeout, that the session still answers and
// still holds the lock. Any failure is the loss of the lease: the session
// is closed (so a backend that still lives cannot keep the lock for a
// holder that gave it up) and every later call returns the same error.
func (l *Lease) Held(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return l.lost
	}
	ctx, cancel := context.WithTimeout(ctx, HeldTimeout)
	defer cancel()
	var held bool
	err := l.conn.QueryRow(ctx, `
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks
  WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 1
    AND classid = $1::bigint::oid AND objid = $2::bigint::oid)`,
		int64(uint64(l.kind.Key)>>32), int64(uint64(l.kind.Key)&0xffffffff)).Scan(&held)
	switch {
	case err != nil:
		l.lost = fmt.Errorf("%s's session on database %q at %s no longer answers: %w", l.kind.What, migrate.DatabaseLabel(l.db), l.db.Addr(), err)
	case !held:
		l.lost = fmt.Errorf("%s's session on database %q at %s no longer holds the lock", l.kind.What, migrate.DatabaseLabel(l.db), l.db.Addr())
	default:
		return nil
	}
	l.closeLocked()
	return l.lost
}

// Release unlocks and closes the session. It is safe after a loss and more
// than once; closing the session frees the lock even if the unlock fails.
func (l *Lease) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), HeldTimeout)
	defer cancel()
	_, _ = l.conn.Exec(ctx, `SELECT pg_advisory_unlock($1)`, l.kind.Key)
	l.lost = fmt.Errorf("%s was released", l.kind.What) // Held's answer from now on
	l.closeLocked()
}

func (l *Lease) closeLocked() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
	l.conn = nil
}

// Holders reads who holds the lease in db's database without taking it:
// for status, doctor and `render --plan`.
func Holders(ctx context.Context, db desired.DB) ([]migrate.Holder, error) {
	return Scheduler.Holders(ctx, db)
}

// Holders reads who holds this lease, as Holders does the scheduler's.
func (k Kind) Holders(ctx context.Context, db desired.DB) ([]migrate.Holder, error) {
	ctx, cancel := context.WithTimeout(ctx, tryTimeout)
	defer cancel()
	conn, err := migrate.Dial(ctx, db, "redash-agent lease reader")
	if err != nil {
		return nil, fmt.Errorf("reading who holds %s: %w", k.What, err)
	}
	defer conn.Close(context.Background())
	return migrate.LockHolders(ctx, conn, k.Key), nil
}

// Describe names the holders for a log line or a status.
func Describe(hs []migrate.Holder) string {
	if len(hs) == 0 {
		return "no session (it may have just been released)"
	}
	s := make([]string, len(hs))
	for i, h := range hs {
		s[i] = h.String()
	}
	return strings.Join(s, "; ")
}

// HeldBy reports whether one of hs is a scheduler lease session of instance's.
func HeldBy(hs []migrate.Holder, instance string) bool { return Scheduler.HeldBy(hs, instance) }

// HeldBy reports whether one of hs is a session of instance's of this lease.
func (k Kind) HeldBy(hs []migrate.Holder, instance string) bool {
	for _, h := range hs {
		if h.AppName == k.Name(instance) {
			return true
		}
	}
	return false
}
