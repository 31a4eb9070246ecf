package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/fernet"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestReencryptScriptIsTheAgents(t *testing.T) {
	if reencryptScript != migrate.ReencryptScript || migrate.ReencryptOldEnv != "REDASH_AGENT_REENCRYPT_OLD" || migrate.ReencryptNewEnv != "REDASH_AGENT_REENCRYPT_NEW" {
		t.Fatal("the stand-in's reencrypt script differs from internal/migrate's")
	}
	if code := runPython(family{major: 10}, []string{"-c", "import os; print(os.environ)"}); code == 0 {
		t.Error("the stand-in ran a python program that is not the agent's script")
	}
	if code := runPython(family{major: 8}, []string{"-c", reencryptScript}); code == 0 {
		t.Error("8.x ran reencrypt")
	}
}

// Each family's reencrypt, against real PostgreSQL: what it converts, what
// it skips or stops at, and the partial failure.
func TestReencryptFamilies(t *testing.T) {
	pg := testenv.Postgres(t)
	old, nw, other := fernet.KeyFromSecret("old"), fernet.KeyFromSecret("new"), fernet.KeyFromSecret("other")
	setup := func(t *testing.T, foreign bool) *pgx.Conn {
		ctx := context.Background()
		conn, err := pg.Connect(ctx, pg.NewDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		if err := createDB(ctx, conn, "head"); err != nil {
			t.Fatal(err)
		}
		for _, table := range fernet.EncryptedTables {
			for i := 0; i < 2; i++ {
				if _, err := conn.Exec(ctx, `INSERT INTO public.`+table+` (name, encrypted_options) VALUES ('x', $1)`, old.Encrypt([]byte(`{"a": 1}`), time.Now())); err != nil {
					t.Fatal(err)
				}
			}
		}
		if foreign {
			if _, err := conn.Exec(ctx, `INSERT INTO public.data_sources (name, encrypted_options) VALUES ('y', $1)`, other.Encrypt([]byte(`{}`), time.Now())); err != nil {
				t.Fatal(err)
			}
		}
		return conn
	}
	counts := func(t *testing.T, conn *pgx.Conn) (onOld, onNew int) {
		c, err := fernet.CountDecryptable(context.Background(), conn, old, nw)
		if err != nil {
			t.Fatal(err)
		}
		return c.OK[0], c.OK[1]
	}
	ctx := context.Background()
	for _, c := range []struct {
		name           string
		f              family
		foreign        bool
		wantErr        bool
		wantOld, wantN int
	}{
		{"25.1 converts both tables", family{25, 1}, false, false, 0, 4},
		{"25.1 skips a foreign row", family{25, 1}, true, false, 0, 4},
		{"10 stops at a foreign row, data_sources rolled back", family{10, 0}, true, true, 4, 0},
		{"9 converts data_sources only", family{9, 0}, false, false, 2, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := setup(t, c.foreign)
			err := reencrypt(ctx, conn, c.f, old, nw)
			if (err != nil) != c.wantErr {
				t.Fatalf("err %v, want error %v", err, c.wantErr)
			}
			if o, n := counts(t, conn); o != c.wantOld || n != c.wantN {
				t.Errorf("rows on old %d, on new %d; want %d, %d", o, n, c.wantOld, c.wantN)
			}
		})
	}
	t.Run("failure after the first table's commit, then back", func(t *testing.T) {
		conn := setup(t, false)
		if _, err := conn.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS fakeredash; CREATE TABLE fakeredash.knobs (name text); INSERT INTO fakeredash.knobs VALUES ('fail-reencrypt')`); err != nil {
			t.Fatal(err)
		}
		if err := reencrypt(ctx, conn, family{10, 1}, old, nw); err == nil {
			t.Fatal("no failure with the knob set")
		}
		if o, n := counts(t, conn); o != 2 || n != 2 {
			t.Fatalf("after the partial failure: %d on old, %d on new; want 2, 2", o, n)
		}
		if _, err := conn.Exec(ctx, `DELETE FROM fakeredash.knobs`); err != nil {
			t.Fatal(err)
		}
		// 10.x going back stops at the first old row of the second table,
		// which rolls back only that table: everything is on old again.
		_ = reencrypt(ctx, conn, family{10, 1}, nw, old)
		if o, n := counts(t, conn); o != 4 || n != 0 {
			t.Errorf("after new -> old: %d on old, %d on new; want 4, 0", o, n)
		}
	})
}
