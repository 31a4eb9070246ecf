package migrate

// create_db is not atomic: Redash's DDL autocommits table by table and the
// alembic stamp comes last. The agent marks it started and finished in its
// records, so the tables a cut-short create_db left are told from a foreign
// database and finished on the next run.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
)

// markCreateDB writes the create_db record in phase (cluster.CreateStarted
// or CreateFinished). The records live in schema redash_agent, so the public
// schema create_db looks at stays empty.
func markCreateDB(ctx context.Context, conn *pgx.Conn, o Options, phase string) error {
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	rec := cluster.CreateDB{Phase: phase, Image: o.Image, By: o.Instance}
	if phase == cluster.CreateFinished {
		if st, err := cluster.Read(ctx, conn); err == nil && st.CreateDB != nil {
			rec.StartedAt = st.CreateDB.StartedAt
		}
		rec.EndedAt = time.Now().UTC()
	} else {
		rec.StartedAt = time.Now().UTC()
	}
	if err := cluster.Ensure(ctx, conn); err != nil {
		return fmt.Errorf("marking create_db %s in the agent's records: %w; create_db did not run", phase, err)
	}
	if err := cluster.Put(ctx, conn, cluster.RecCreateDB, rec, o.Instance); err != nil {
		return fmt.Errorf("marking create_db %s in the agent's records: %w", phase, err)
	}
	return nil
}

// partialCreateDB decides, under the lock and after the orphan wait, about a
// database with tables and no revision: when the records say a create_db
// started and never finished and every public table is empty, it drops the
// tables (only they: create_db runs again and makes them) and returns true.
// With rows in any table it refuses with what it found; with no such record
// it returns false (a foreign database, refused by the caller).
func partialCreateDB(ctx context.Context, conn *pgx.Conn, o Options, version []string, log *slog.Logger) (bool, error) {
	if !createDBStarted(ctx, conn, version) { // a revision, or no create_db of the agent's: not its doing
		return false, nil
	}
	st, err := cluster.Read(ctx, conn)
	if err != nil {
		return false, err
	}
	tables, err := publicTables(ctx, conn)
	if err != nil {
		return false, fmt.Errorf("looking at the tables of a partial create_db in database %q at %s: %w", dbLabel(o.DB), o.DB.Addr(), err)
	}
	var withRows []string
	for _, t := range tables {
		var has bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM public.`+pgx.Identifier{t}.Sanitize()+`)`).Scan(&has); err != nil {
			return false, fmt.Errorf("counting the rows of table %q of a partial create_db in database %q at %s: %w", t, dbLabel(o.DB), o.DB.Addr(), err)
		}
		if has {
			withRows = append(withRows, t)
		}
	}
	c := st.CreateDB
	if len(withRows) > 0 {
		return false, fmt.Errorf("database %q at %s holds %d tables and no alembic_version: a create_db started by %s at %s (image %q) never finished, "+
			"but these tables hold rows, so the agent will not drop them: %s; if that data is not wanted, drop every table of the public schema by hand "+
			"(e.g. DROP SCHEMA public CASCADE; CREATE SCHEMA public;) and run `redash-agent up` again, otherwise restore the database from a backup",
			dbLabel(o.DB), o.DB.Addr(), len(tables), c.By, c.StartedAt.Format(time.RFC3339), c.Image, strings.Join(withRows, ", "))
	}
	log.Warn("finishing a partial create_db: a create_db started earlier never finished (it was cut short); its tables are empty, dropping them and running create_db again",
		"started_by", c.By, "started_at", c.StartedAt.Format(time.RFC3339), "tables", len(tables))
	idents := make([]string, len(tables))
	for i, t := range tables {
		idents[i] = "public." + pgx.Identifier{t}.Sanitize()
	}
	if len(idents) > 0 {
		if _, err := conn.Exec(ctx, `DROP TABLE IF EXISTS `+strings.Join(idents, ", ")+` CASCADE`); err != nil {
			return false, fmt.Errorf("dropping the empty tables of a partial create_db in database %q at %s: %w", dbLabel(o.DB), o.DB.Addr(), err)
		}
	}
	return true, nil
}

func publicTables(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public' ORDER BY tablename`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// createDBStarted says whether tables without a revision may be a create_db
// under way (or cut short): the records say one started and did not finish.
func createDBStarted(ctx context.Context, conn *pgx.Conn, version []string) bool {
	if len(version) > 0 {
		return false
	}
	st, err := cluster.Read(ctx, conn)
	return err == nil && st.CreateDB != nil && st.CreateDB.Phase == cluster.CreateStarted
}
