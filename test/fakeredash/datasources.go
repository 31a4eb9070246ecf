package main

// datasources.go: Redash's encrypted data, as the agent's secret-key
// rotation sees it.
//
//   - The server stores data sources the way Redash does: the options' JSON
//     as a Fernet token made with sqlalchemy_utils' FernetEngine key of
//     REDASH_SECRET_KEY (falling back to REDASH_COOKIE_SECRET, as
//     redash/settings' DATASOURCE_SECRET_KEY does), in
//     public.data_sources.encrypted_options. POST /api/data_sources
//     {"name", "options"} creates one; GET /api/data_sources/<id> decrypts
//     it (HTTP 500 with the reason when the token does not decrypt).
//   - At start the server records (host, fingerprints of its
//     REDASH_SECRET_KEY and REDASH_COOKIE_SECRET, started_at) in
//     fakeredash.servers, so a test can tell which key every server ran
//     with and since when.
//   - `python -c <the agent's script>` plays `manage database reencrypt OLD
//     NEW` with OLD and NEW read from the script's environment variables,
//     family by family (redash/cli/database.py): 8.x has no such command;
//     9.x re-encrypts data_sources only and stops at a row OLD does not
//     decrypt; 10.x does both tables, one transaction each, and stops the
//     same way; 25.x on (and plain) skip such rows, logging "Invalid
//     Decryption Key for id N in table T". FAKEREDASH_FAIL_REENCRYPT=1, or
//     a row 'fail-reencrypt' in fakeredash.knobs, fails after the first
//     table's commit. Any other python program is refused. Every run is
//     recorded in fakeredash.fakeredash_runs.
//
// The fingerprints are sha256("fakeredash\x00" + value), 16 hex digits:
// test-only, and unrelated to the Fernet key (sha256(value)).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/fernet"
)

// reencryptScript is migrate.ReencryptScript (a test keeps them equal).
const reencryptScript = `import os
from redash.cli import manager
old = os.environ.pop("REDASH_AGENT_REENCRYPT_OLD")
new = os.environ.pop("REDASH_AGENT_REENCRYPT_NEW")
manager.main(args=["database", "reencrypt", old, new], prog_name="manage.py", standalone_mode=False)
`

// keyFingerprint is how the stand-in names a key in its tables.
func keyFingerprint(v string) string {
	d := sha256.Sum256([]byte("fakeredash\x00" + v))
	return hex.EncodeToString(d[:8])
}

// dataSourceKey is DATASOURCE_SECRET_KEY.
func dataSourceKey() fernet.Key {
	if v, ok := os.LookupEnv("REDASH_SECRET_KEY"); ok {
		return fernet.KeyFromSecret(v)
	}
	return fernet.KeyFromSecret(os.Getenv("REDASH_COOKIE_SECRET"))
}

// dbConn opens a session on REDASH_DATABASE_URL without printing it.
func dbConn(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(os.Getenv("REDASH_DATABASE_URL"))
	if err != nil {
		return nil, errors.New("REDASH_DATABASE_URL is not set or does not parse")
	}
	cfg.ConnectTimeout = 5 * time.Second
	return pgx.ConnectConfig(ctx, cfg)
}

// recordServerStart notes which keys this server runs with. Best effort:
// a server without a database (unit tests) still serves /ping.
func recordServerStart() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := dbConn(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: not recording the server's keys: %v\n", err)
		return
	}
	defer conn.Close(context.Background())
	host, _ := os.Hostname()
	_, err = conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS fakeredash;
CREATE TABLE IF NOT EXISTS fakeredash.servers (host text NOT NULL, secret_key_fp text NOT NULL, cookie_fp text NOT NULL,
  started_at timestamptz NOT NULL DEFAULT clock_timestamp())`)
	if err == nil {
		_, err = conn.Exec(ctx, `INSERT INTO fakeredash.servers (host, secret_key_fp, cookie_fp) VALUES ($1, $2, $3)`,
			host, keyFingerprint(os.Getenv("REDASH_SECRET_KEY")), keyFingerprint(os.Getenv("REDASH_COOKIE_SECRET")))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: recording the server's keys: %v\n", err)
	}
}

// addDataSourceRoutes adds the data source API to the server's mux.
func addDataSourceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/data_sources", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Name    string          `json:"name"`
			Options json.RawMessage `json:"options"`
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err := json.Unmarshal(body, &in); err != nil || in.Name == "" || len(in.Options) == 0 {
			http.Error(w, `{"message": "name and options are required"}`, http.StatusBadRequest)
			return
		}
		var id int
		err := withConn(r.Context(), func(conn *pgx.Conn) error {
			tok := dataSourceKey().Encrypt(in.Options, time.Now())
			return conn.QueryRow(r.Context(), `INSERT INTO public.data_sources (name, encrypted_options) VALUES ($1, $2) RETURNING id`, in.Name, tok).Scan(&id)
		})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id": %d, "name": %q}`+"\n", id, in.Name)
	})
	mux.HandleFunc("GET /api/data_sources/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.Atoi(r.PathValue("id"))
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		var name, tok string
		err = withConn(r.Context(), func(conn *pgx.Conn) error {
			return conn.QueryRow(r.Context(), `SELECT name, encrypted_options FROM public.data_sources WHERE id = $1`, id).Scan(&name, &tok)
		})
		if errors.Is(err, pgx.ErrNoRows) {
			http.Error(w, `{"message": "Not Found"}`, http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		opts, err := dataSourceKey().Decrypt(tok)
		if err != nil {
			// What Redash's 500 comes from: sqlalchemy_utils raising
			// cryptography.fernet.InvalidToken while loading the row.
			http.Error(w, "cryptography.fernet.InvalidToken: data source "+strconv.Itoa(id)+" does not decrypt with this server's REDASH_SECRET_KEY", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id": %d, "name": %q, "options": %s}`+"\n", id, name, opts)
	})
}

func withConn(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := dbConn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return f(conn)
}

// runPython plays the python interpreter for the one program the agent
// runs: the reencrypt script.
func runPython(f family, args []string) int {
	if len(args) != 2 || args[0] != "-c" || args[1] != reencryptScript {
		fmt.Fprintf(os.Stderr, "fakeredash: python %q: the stand-in only runs the agent's reencrypt script\n", args)
		return 2
	}
	if !f.plain() && f.major < 9 {
		// click's UsageError, raised since standalone_mode=False.
		fmt.Fprintln(os.Stderr, "Traceback (most recent call last):")
		fmt.Fprintln(os.Stderr, `click.exceptions.UsageError: No such command "reencrypt".`)
		return 1
	}
	old, okOld := os.LookupEnv("REDASH_AGENT_REENCRYPT_OLD")
	nw, okNew := os.LookupEnv("REDASH_AGENT_REENCRYPT_NEW")
	if !okOld || !okNew {
		fmt.Fprintln(os.Stderr, "Traceback (most recent call last):")
		fmt.Fprintln(os.Stderr, "KeyError: 'REDASH_AGENT_REENCRYPT_OLD'")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := "manage database reencrypt " + keyFingerprint(old) + " " + keyFingerprint(nw)
	err := withDB(ctx, cmd, func(conn *pgx.Conn) error {
		return reencrypt(ctx, conn, f, fernet.KeyFromSecret(old), fernet.KeyFromSecret(nw))
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "Traceback (most recent call last):")
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	return 0
}

// reencrypt is redash/cli/database.py's reencrypt for family f.
func reencrypt(ctx context.Context, conn *pgx.Conn, f family, old, nw fernet.Key) error {
	tables := fernet.EncryptedTables
	if f.major == 9 {
		tables = tables[:1] // v9.0.0-beta: data_sources only
	}
	skips := f.plain() || f.major >= 25
	for i, table := range tables {
		if err := reencryptTable(ctx, conn, table, skips, old, nw); err != nil {
			return err
		}
		if i == 0 && failReencrypt(ctx, conn) {
			return errors.New("psycopg2.OperationalError: server closed the connection unexpectedly (FAKEREDASH_FAIL_REENCRYPT)")
		}
	}
	return nil
}

func reencryptTable(ctx context.Context, conn *pgx.Conn, table string, skips bool, old, nw fernet.Key) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	type row struct {
		ID  int
		Tok *string
	}
	rows, err := tx.Query(ctx, `SELECT id, encrypted_options FROM public.`+table+` ORDER BY id`)
	if err != nil {
		return err
	}
	all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
	if err != nil {
		return err
	}
	for _, r := range all {
		if r.Tok == nil {
			continue
		}
		plain, err := old.Decrypt(*r.Tok)
		if err != nil {
			if skips {
				fmt.Fprintf(os.Stderr, "ERROR:root:Invalid Decryption Key for id %d in table %s\n", r.ID, table)
				continue
			}
			return errors.New("cryptography.fernet.InvalidToken")
		}
		if _, err := tx.Exec(ctx, `UPDATE public.`+table+` SET encrypted_options = $1 WHERE id = $2`, nw.Encrypt(plain, time.Now()), r.ID); err != nil {
			return err
		}
	}
	return tx.Commit(ctx)
}

// failReencrypt reads the failure knob: the environment, or a row in
// fakeredash.knobs (so a test can switch it without a new image).
func failReencrypt(ctx context.Context, conn *pgx.Conn) bool {
	if os.Getenv("FAKEREDASH_FAIL_REENCRYPT") == "1" {
		return true
	}
	var on bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('fakeredash.knobs') IS NOT NULL`).Scan(&on)
	if err != nil || !on {
		return false
	}
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fakeredash.knobs WHERE name = 'fail-reencrypt')`).Scan(&on)
	return err == nil && on
}
