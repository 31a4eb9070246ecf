// Package cluster is the agent's own record of what the instances sharing one
// Redash database have agreed on: which REDASH_SECRET_KEY and
// REDASH_COOKIE_SECRET the fleet runs with (as keyed fingerprints, never the
// values), a schema upgrade under way and which instances have paused their
// old workers for it, and a create_db that started.
//
// It lives in the schema redash_agent of the Redash database: beside Redash's
// tables, so it shares their backups and failovers, but outside the public
// schema that Redash's create_db and the agent's "empty database" test look
// at. Every write of a record bumps one generation number, so an instance
// notices any change with one cheap read (Generation) instead of a refresh;
// the per-instance heartbeats (instances) do not bump it.
//
// Writers that decide something (record a new key, begin an upgrade) hold the
// migration lock (internal/migrate) while they read and write; the package
// itself takes no lock. Side effects: SQL on the connection it is given.
package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/redash-agent/redash-agent/internal/secrets"
)

// Schema holds the agent's tables; fixed forever (old and new agents of one
// fleet must read the same records).
const Schema = "redash_agent"

// Record names.
const (
	// RecSecretKey is the fingerprint of the REDASH_SECRET_KEY the database's
	// data sources and alert destinations are encrypted with (KeyRecord).
	RecSecretKey = "secret-key"
	// RecCookieSecret is the fingerprint of the REDASH_COOKIE_SECRET every
	// instance signs sessions with (KeyRecord).
	RecCookieSecret = "cookie-secret"
	// RecUpgrade is a schema upgrade under way or the last one (Upgrade).
	RecUpgrade = "upgrade"
	// RecCreateDB is a create_db that started (CreateDB).
	RecCreateDB = "create-db"
	// RecSecretKeyFailed holds back further attempts at a secret key
	// rotation that failed, fleet-wide, until a time (KeyFailure): without
	// it every instance that sees the new version would try (and undo) it
	// in turn, each attempt leaving the rows briefly on the new key.
	RecSecretKeyFailed = "secret-key-failed"
)

// KeyFailure is a failed secret key rotation: from and to the values Pair
// names ("<previous fingerprint>><current fingerprint>") no instance tries
// again before Until.
type KeyFailure struct {
	Pair  string    `json:"pair"`
	Until time.Time `json:"until"`
	By    string    `json:"by"`
}

// Holds says whether f holds back a rotation of pair at now.
func (f *KeyFailure) Holds(pair string, now time.Time) bool {
	return f != nil && f.Pair == pair && now.Before(f.Until)
}

// Querier is what the package needs of a session: *pgx.Conn and pgx.Tx both
// have it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

var (
	_ Querier = (*pgx.Conn)(nil)
	_ Querier = (pgx.Tx)(nil)
)

// KeyRecord says which value of a secret the cluster runs with.
type KeyRecord struct {
	Fingerprint string    `json:"fingerprint"`
	VersionID   string    `json:"version_id,omitempty"` // the Secrets Manager version recorded, for people
	Since       time.Time `json:"since"`
}

// Upgrade phases.
const (
	// PhaseDraining: the upgrade was announced; instances of another head
	// stop their scheduler and workers (warm shutdown) and say so in
	// instances; the upgrader waits for them, bounded.
	PhaseDraining = "draining"
	// PhaseMigrating: `manage db upgrade` runs.
	PhaseMigrating = "migrating"
	// PhaseDone: the schema is at ToHead.
	PhaseDone = "done"
	// PhaseFailed: the upgrade failed; the schema is where it was (Alembic
	// on PostgreSQL is transactional) and old workers may run again.
	PhaseFailed = "failed"
)

// Upgrade is a schema upgrade, announced before it starts.
type Upgrade struct {
	FromHead  string    `json:"from_head"` // the database's revision before
	ToHead    string    `json:"to_head"`   // the upgrading image's head
	Image     string    `json:"image"`
	Phase     string    `json:"phase"`
	By        string    `json:"by"` // the instance that runs it
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	Error     string    `json:"error,omitempty"` // why it failed, PhaseFailed only
}

// InProgress says whether old workers must stay paused for u.
func (u *Upgrade) InProgress() bool {
	return u != nil && (u.Phase == PhaseDraining || u.Phase == PhaseMigrating)
}

// CreateDB phases.
const (
	CreateStarted  = "started"
	CreateFinished = "finished"
)

// CreateDB marks a create_db: Redash's DDL autocommits statement by
// statement and stamps alembic_version last, so a create_db that did not
// finish leaves tables without a revision. The mark tells such a database
// from a foreign one.
type CreateDB struct {
	Phase     string    `json:"phase"`
	Image     string    `json:"image"`
	By        string    `json:"by"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
}

// Instance is one instance's heartbeat: which head its image has and, during
// an upgrade, whether it paused its scheduler and workers for it.
type Instance struct {
	Name string
	Head string
	// PausedFor is the ToHead of the upgrade this instance's old workers
	// are stopped for; "" when they run.
	PausedFor string
	SeenAt    time.Time
}

// State is everything the records say.
type State struct {
	// Exists is false when the agent's tables are not there yet (a new
	// database, or an older agent): every record is then nil.
	Exists     bool
	Generation int64
	Salt       string
	SecretKey  *KeyRecord
	// SecretKeyFailed: the last failed rotation, nil when none.
	SecretKeyFailed *KeyFailure
	CookieSecret    *KeyRecord
	Upgrade         *Upgrade
	CreateDB        *CreateDB
	Instances       []Instance
}

// Ensure creates the schema and tables when missing and the cluster row with
// a random salt. Several instances may call it at once: the loser of a
// catalog race finds the objects there and succeeds.
func Ensure(ctx context.Context, q Querier) error {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return err
	}
	ddl := `
CREATE SCHEMA IF NOT EXISTS ` + Schema + `;
CREATE TABLE IF NOT EXISTS ` + Schema + `.cluster (
  id boolean PRIMARY KEY DEFAULT true CHECK (id),
  generation bigint NOT NULL DEFAULT 0,
  salt text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS ` + Schema + `.records (
  name text PRIMARY KEY,
  value jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  updated_by text NOT NULL);
CREATE TABLE IF NOT EXISTS ` + Schema + `.instances (
  name text PRIMARY KEY,
  head text NOT NULL DEFAULT '',
  paused_for text NOT NULL DEFAULT '',
  seen_at timestamptz NOT NULL DEFAULT clock_timestamp())`
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		if _, err = q.Exec(ctx, ddl); err == nil || !isCatalogRace(err) {
			break
		}
	}
	if err != nil {
		return explain("creating the agent's tables (schema "+Schema+")", err)
	}
	if _, err := q.Exec(ctx, `INSERT INTO `+Schema+`.cluster (id, salt) VALUES (true, $1) ON CONFLICT (id) DO NOTHING`,
		hex.EncodeToString(salt)); err != nil {
		return explain("creating the agent's cluster row", err)
	}
	return nil
}

// isCatalogRace is a concurrent CREATE ... IF NOT EXISTS losing on the
// catalog's unique index (PostgreSQL checks existence before it inserts).
func isCatalogRace(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "42P06" || pgErr.Code == "42P07")
}

// explain names what failed and, for a missing privilege, the grant.
func explain(what string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" { // insufficient_privilege
		return fmt.Errorf("%s: %w: the Redash database user needs CREATE on the database (GRANT CREATE ON DATABASE <db> TO <user>) "+
			"to keep the agent's records in schema %s", what, err, Schema)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// exists says whether the agent's tables are there; it costs no error when
// they are not.
func exists(ctx context.Context, q Querier) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL`,
		Schema+".cluster", Schema+".records", Schema+".instances").Scan(&ok)
	return ok, err
}

// Generation is the cheap read a watching instance makes every few seconds:
// it changes whenever a record does. 0 when the tables are not there.
func Generation(ctx context.Context, q Querier) (int64, error) {
	var g *int64
	err := q.QueryRow(ctx, `SELECT CASE WHEN to_regclass($1) IS NULL THEN NULL
  ELSE (xpath('/row/generation/text()', query_to_xml('SELECT generation FROM `+Schema+`.cluster', false, true, '')))[1]::text::bigint END`,
		Schema+".cluster").Scan(&g)
	if err != nil {
		return 0, fmt.Errorf("reading the agent's generation (schema %s): %w", Schema, err)
	}
	if g == nil {
		return 0, nil
	}
	return *g, nil
}

// Read returns every record. Tables that are not there read as an empty
// State (Exists false), not an error.
func Read(ctx context.Context, q Querier) (State, error) {
	var st State
	ok, err := exists(ctx, q)
	if err != nil || !ok {
		return st, wrapRead(err)
	}
	st.Exists = true
	if err := q.QueryRow(ctx, `SELECT generation, salt FROM `+Schema+`.cluster`).Scan(&st.Generation, &st.Salt); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			st.Exists = false // Ensure is between its two statements
			return st, nil
		}
		return st, wrapRead(err)
	}
	rows, err := q.Query(ctx, `SELECT name, value FROM `+Schema+`.records`)
	if err != nil {
		return st, wrapRead(err)
	}
	type rec struct {
		Name  string
		Value []byte
	}
	recs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rec])
	if err != nil {
		return st, wrapRead(err)
	}
	for _, r := range recs {
		var dst any
		switch r.Name {
		case RecSecretKey:
			st.SecretKey = &KeyRecord{}
			dst = st.SecretKey
		case RecCookieSecret:
			st.CookieSecret = &KeyRecord{}
			dst = st.CookieSecret
		case RecSecretKeyFailed:
			st.SecretKeyFailed = &KeyFailure{}
			dst = st.SecretKeyFailed
		case RecUpgrade:
			st.Upgrade = &Upgrade{}
			dst = st.Upgrade
		case RecCreateDB:
			st.CreateDB = &CreateDB{}
			dst = st.CreateDB
		default:
			continue // a newer agent's record
		}
		if err := json.Unmarshal(r.Value, dst); err != nil {
			return st, fmt.Errorf("reading the agent's record %q in %s.records: %w: a newer agent may have written it; upgrade this instance's agent", r.Name, Schema, err)
		}
	}
	rows, err = q.Query(ctx, `SELECT name, head, paused_for, seen_at FROM `+Schema+`.instances ORDER BY name`)
	if err != nil {
		return st, wrapRead(err)
	}
	if st.Instances, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Instance]); err != nil {
		return st, wrapRead(err)
	}
	return st, nil
}

func wrapRead(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("reading the agent's records (schema %s): %w", Schema, err)
}

// Put writes record name (value marshalled as JSON) and bumps the
// generation, in one transaction when q is a connection. by names the
// instance. The tables must exist (Ensure).
func Put(ctx context.Context, q Querier, name string, value any, by string) error {
	b, err := json.Marshal(value)
	if err != nil {
		return fmt.Errorf("encoding the agent's record %q: %w", name, err)
	}
	_, err = q.Exec(ctx, `WITH w AS (
  INSERT INTO `+Schema+`.records (name, value, updated_at, updated_by) VALUES ($1, $2, clock_timestamp(), $3)
  ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by
  RETURNING 1)
UPDATE `+Schema+`.cluster SET generation = generation + 1, updated_at = clock_timestamp() WHERE EXISTS (SELECT 1 FROM w)`, name, b, by)
	if err != nil {
		return explain(fmt.Sprintf("writing the agent's record %q", name), err)
	}
	return nil
}

// Heartbeat records this instance's image head and what its old workers are
// paused for. It does not bump the generation: an upgrader polls instances.
func Heartbeat(ctx context.Context, q Querier, inst Instance) error {
	_, err := q.Exec(ctx, `INSERT INTO `+Schema+`.instances (name, head, paused_for, seen_at) VALUES ($1, $2, $3, clock_timestamp())
ON CONFLICT (name) DO UPDATE SET head = EXCLUDED.head, paused_for = EXCLUDED.paused_for, seen_at = EXCLUDED.seen_at`,
		inst.Name, inst.Head, inst.PausedFor)
	if err != nil {
		return explain("writing this instance's heartbeat", err)
	}
	return nil
}

// Fingerprint is a keyed digest of one secret's value, comparable across
// the instances of a cluster (they share salt) and useless without the
// value: HMAC-SHA256 keyed with the value itself over the record name and
// the cluster's salt. The values it is used on are long random keys, so
// knowing the fingerprint does not help guess them.
func Fingerprint(salt, name string, v secrets.Value) string {
	m := hmac.New(sha256.New, []byte(v.Reveal()))
	m.Write([]byte("redash-agent fingerprint v1\x00" + name + "\x00" + salt))
	return hex.EncodeToString(m.Sum(nil)[:16])
}
