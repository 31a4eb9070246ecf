package migrate

// The connection code of the migration lock, for the other advisory lock
// the agent holds: the 8.x scheduler lease (internal/lease).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/redash-agent/redash-agent/internal/desired"
)

// Dial opens one session to t's database, named appName in
// pg_stat_activity: a single attempt, bounded by ctx and maxConnectTimeout.
// Its error names the endpoint and the fix, never the database user.
func Dial(ctx context.Context, t desired.DB, appName string) (*pgx.Conn, error) {
	timeout := maxConnectTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	cfg, err := connConfig(t, appName, timeout)
	if err != nil {
		return nil, redactUser(err, t.User)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil, redactUser(fmt.Errorf("connecting to PostgreSQL at %s, database %q: %w: check the db-user/db-password secrets and redash:db-name", t.Addr(), dbLabel(t), err), t.User)
		}
		return nil, redactUser(fmt.Errorf("connecting to PostgreSQL at %s, database %q: %w: check redash:db-endpoint, the security groups and that the database is up", t.Addr(), dbLabel(t), err), t.User)
	}
	return conn, nil
}

// Holder is a session that holds an advisory lock.
type Holder struct {
	PID          int32
	AppName      string // application_name: the agent names its lock sessions after the instance
	ClientAddr   string
	BackendStart time.Time
}

func (h Holder) String() string { return holder(h).String() }

// LockHolders lists the sessions holding advisory lock key in conn's
// database; nil when none does (or pg_locks could not be read).
func LockHolders(ctx context.Context, conn *pgx.Conn, key int64) []Holder {
	var out []Holder
	for _, h := range holders(ctx, conn, key) {
		out = append(out, Holder(h))
	}
	return out
}
