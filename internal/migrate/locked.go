package migrate

// Locked: other decisions that must be made by one instance of the cluster
// at a time (recording a new secret key after re-encrypting the data
// sources) take the same advisory lock as a migration, so they also never
// overlap one.

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/desired"
)

// LockedWait bounds the wait for the migration lock in Locked: a migration
// holding it ends within minutes, a re-encryption within seconds.
const LockedWait = 5 * time.Minute

// Locked opens a session to db, takes the migration lock (waiting at most
// LockedWait, or ctx's deadline), calls fn with the session and releases the
// lock when fn returns. Its errors never name the database user.
func Locked(ctx context.Context, db desired.DB, log *slog.Logger, fn func(ctx context.Context, conn *pgx.Conn) error) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("db", dbLabel(db), "addr", db.Addr())
	conn, err := connect(ctx, db, log)
	if err != nil {
		return redactUser(err, db.User)
	}
	defer conn.Close(context.Background())
	release, err := acquireLock(ctx, conn, db, LockedWait, log)
	if err != nil {
		return redactUser(err, db.User)
	}
	defer release()
	return fn(ctx, conn)
}
