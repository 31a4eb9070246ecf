package main

// The database commands act on the real PostgreSQL named by
// REDASH_DATABASE_URL, the way Redash's create_db and Flask-Migrate do, so
// tests of internal/migrate observe real effects:
//
//	create_db            empty public schema: create the tables of
//	                     createDBTables one statement at a time, each
//	                     committed on its own (SQLAlchemy's create_all), then
//	                     alembic_version stamped with the head, last;
//	                     otherwise do nothing (10.x on: is_db_empty; Redash
//	                     takes no lock and checks nothing else)
//	manage db heads      print "<head> (head)"; needs no database
//	manage db history    print Alembic's history, newest first:
//	                     "<down> -> <rev> (head), <doc>" ... "<base> -> <rev>, <doc>"
//	                     for FAKEREDASH_HISTORY (comma-separated earlier
//	                     revisions, oldest first) then the head; unset, a
//	                     head that ends in a number N (rev3) has the
//	                     earlier ones of its prefix (rev1, rev2)
//	manage db upgrade    when version_num != head: add one table for the head
//	                     revision and set version_num = head, in one transaction
//
// The head is FAKEREDASH_HEAD (baked into the test image). Knobs:
// FAKEREDASH_UPGRADE_SLEEP=<seconds> sleeps inside the upgrade transaction (a
// kill then rolls it back, as with Alembic on PostgreSQL);
// FAKEREDASH_FAIL_UPGRADE=1 prints a few log lines and exits 1;
// FAKEREDASH_CREATE_SLEEP=<seconds> sleeps between create_db's statements,
// so a test can kill it midway.
//
// Every create_db and upgrade is recorded in fakeredash.fakeredash_runs
// (cmd, at) before it does anything, so tests can count invocations. It lives
// in its own schema so that recording does not make the public schema
// non-empty. The URL holds a password, so it is never printed.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

func runDB(cmd string, args []string) int {
	full := strings.TrimSpace(cmd + " " + strings.Join(args, " "))
	head := os.Getenv("FAKEREDASH_HEAD")
	if head == "" {
		fmt.Fprintln(os.Stderr, "fakeredash: FAKEREDASH_HEAD is not set: bake it into the test image with ENV")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	var err error
	switch full {
	case "manage db heads":
		// Alembic's output for a single-head history.
		fmt.Printf("%s (head)\n", head)
		return 0
	case "manage db history":
		earlier, set := os.LookupEnv("FAKEREDASH_HISTORY")
		revs := splitQueues(earlier)
		if !set {
			revs = numberedHistory(head)
		}
		fmt.Print(history(revs, head))
		return 0
	case "create_db", "manage database create_tables":
		err = withDB(ctx, full, func(conn *pgx.Conn) error { return createDB(ctx, conn, head) })
	case "manage db upgrade":
		err = withDB(ctx, full, func(conn *pgx.Conn) error { return upgrade(ctx, conn, head) })
	default:
		fmt.Fprintf(os.Stderr, "fakeredash: unknown database command %q\n", full)
		return 2
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: %s: %v\n", full, err)
		return 1
	}
	return 0
}

// withDB connects, records the run and calls f.
func withDB(ctx context.Context, full string, f func(*pgx.Conn) error) error {
	url := os.Getenv("REDASH_DATABASE_URL")
	if url == "" {
		return errors.New("REDASH_DATABASE_URL is not set")
	}
	// ParseConfig also reads PGAPPNAME, as libpq does for Redash, so the
	// agent can see this session in pg_stat_activity.
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return errors.New("REDASH_DATABASE_URL does not parse") // the parse error would echo the URL
	}
	cfg.ConnectTimeout = 10 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS fakeredash;
CREATE TABLE IF NOT EXISTS fakeredash.fakeredash_runs (cmd text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())`); err != nil {
		// Concurrent CREATE ... IF NOT EXISTS can still collide on the
		// catalog; the table exists afterwards either way.
		if _, err2 := conn.Exec(ctx, `SELECT 1 FROM fakeredash.fakeredash_runs LIMIT 0`); err2 != nil {
			return fmt.Errorf("creating fakeredash.fakeredash_runs: %w", err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO fakeredash.fakeredash_runs (cmd) VALUES ($1)`, full); err != nil {
		return fmt.Errorf("recording the run: %w", err)
	}
	return f(conn)
}

// createDBTables is what create_db makes, in order: Redash's models (a
// few), each statement committed on its own as SQLAlchemy's create_all does.
var createDBTables = []string{
	`CREATE TABLE public.organizations (id serial PRIMARY KEY, name text NOT NULL)`,
	`CREATE TABLE public.users (id serial PRIMARY KEY, org_id int REFERENCES public.organizations (id), email text NOT NULL)`,
	`CREATE TABLE public.queries (id serial PRIMARY KEY, org_id int REFERENCES public.organizations (id), query text NOT NULL)`,
	// Encrypted with REDASH_SECRET_KEY as Redash does (datasources.go).
	`CREATE TABLE public.data_sources (id serial PRIMARY KEY, name text NOT NULL, encrypted_options text)`,
	`CREATE TABLE public.notification_destinations (id serial PRIMARY KEY, name text NOT NULL, encrypted_options text)`,
}

// createDB plays `manage database create_tables`: nothing unless the public
// schema is empty (is_db_empty), then the tables one by one, autocommitted,
// and the stamp last (flask_migrate.stamp, in its own transaction). A kill
// between statements leaves tables without alembic_version.
func createDB(ctx context.Context, conn *pgx.Conn, head string) error {
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		fmt.Println("database is not empty: nothing to create")
		return nil
	}
	var pause time.Duration
	if s := os.Getenv("FAKEREDASH_CREATE_SLEEP"); s != "" {
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("FAKEREDASH_CREATE_SLEEP=%q is not a number of seconds", s)
		}
		pause = time.Duration(secs * float64(time.Second))
	}
	for i, stmt := range createDBTables {
		if i > 0 && pause > 0 {
			fmt.Printf("sleeping %s before the next table\n", pause)
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return err
		}
		fmt.Printf("created table %d of %d\n", i+1, len(createDBTables))
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `CREATE TABLE public.alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO public.alembic_version (version_num) VALUES ($1)`, head); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	fmt.Printf("created tables, stamped %s\n", head)
	return nil
}

var trailingNumber = regexp.MustCompile(`^(.*?)([0-9]+)$`)

// numberedHistory is the default history of head: rev3 follows rev1 and
// rev2; a head without a number has none.
func numberedHistory(head string) []string {
	m := trailingNumber.FindStringSubmatch(head)
	if m == nil {
		return nil
	}
	n, _ := strconv.Atoi(m[2])
	var out []string
	for i := 1; i < n; i++ {
		out = append(out, m[1]+strconv.Itoa(i))
	}
	return out
}

// history is Alembic's `history` output (cmd_format with parents and doc)
// for the linear history earlier..., head: newest first.
func history(earlier []string, head string) string {
	revs := append(append([]string(nil), earlier...), head)
	var b strings.Builder
	for i := len(revs) - 1; i >= 0; i-- {
		down := "<base>"
		if i > 0 {
			down = revs[i-1]
		}
		mark := ""
		if i == len(revs)-1 {
			mark = " (head)"
		}
		fmt.Fprintf(&b, "%s -> %s%s, fake revision %s\n", down, revs[i], mark, revs[i])
	}
	return b.String()
}

var revIdentChars = regexp.MustCompile(`[^a-z0-9_]+`)

func upgrade(ctx context.Context, conn *pgx.Conn, head string) error {
	if os.Getenv("FAKEREDASH_FAIL_UPGRADE") == "1" {
		fmt.Println("INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.")
		fmt.Println("INFO  [alembic.runtime.migration] Will assume transactional DDL.")
		fmt.Printf("INFO  [alembic.runtime.migration] Running upgrade -> %s, fake failing revision\n", head)
		fmt.Println(`sqlalchemy.exc.ProgrammingError: (psycopg2.errors.DuplicateColumn) column "is_draft" of relation "queries" already exists`)
		return errors.New("upgrade failed (FAKEREDASH_FAIL_UPGRADE=1)")
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS public.alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)`); err != nil {
		return err
	}
	var current string
	err = tx.QueryRow(ctx, `SELECT version_num FROM public.alembic_version`).Scan(&current)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if current == head {
		fmt.Println("INFO  [alembic.runtime.migration] Context impl PostgresqlImpl.")
		return tx.Commit(ctx)
	}
	fmt.Printf("INFO  [alembic.runtime.migration] Running upgrade %s -> %s\n", current, head)
	table := "rev_" + revIdentChars.ReplaceAllString(strings.ToLower(head), "_")
	if _, err := tx.Exec(ctx, `CREATE TABLE public.`+pgx.Identifier{table}.Sanitize()+` (id serial PRIMARY KEY)`); err != nil {
		return err
	}
	if s := os.Getenv("FAKEREDASH_UPGRADE_SLEEP"); s != "" {
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("FAKEREDASH_UPGRADE_SLEEP=%q is not a number of seconds", s)
		}
		fmt.Printf("sleeping %gs inside the migration\n", secs)
		select {
		case <-time.After(time.Duration(secs * float64(time.Second))):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if _, err := tx.Exec(ctx, `DELETE FROM public.alembic_version`); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO public.alembic_version (version_num) VALUES ($1)`, head); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
