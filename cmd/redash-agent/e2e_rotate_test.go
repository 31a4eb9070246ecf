package main

// End-to-end test of a database password rotated in place: two `run`
// agents (two compose projects, one database) stand for two instances of
// one cluster; the password changes in PostgreSQL and then in Secrets
// Manager, as RDS's single-user rotation does it.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// serverDBURL is REDASH_DATABASE_URL of the stack's running server.
func serverDBURL(t *testing.T, s *stack) string {
	t.Helper()
	c, err := s.docker.ContainerInspect(context.Background(), s.project+"-server-1")
	if err != nil {
		return ""
	}
	for _, kv := range c.Config.Env {
		if v, ok := strings.CutPrefix(kv, "REDASH_DATABASE_URL="); ok {
			return v
		}
	}
	return ""
}

func hasPassword(url, pw string) bool { return strings.Contains(url, ":"+escapeForTest(pw)+"@") }

func TestRunAppliesRotatedDBPassword(t *testing.T) {
	const window = 30 * time.Second
	a, b := newStack(t), newStack(t)
	pg := testenv.Postgres(t)
	ctx := context.Background()

	// The cluster's own database user, whose password is rotated.
	rnd := make([]byte, 4)
	rand.Read(rnd)
	role := "rot_" + hex.EncodeToString(rnd)
	pw := func(n int) string { return fmt.Sprintf("Rot%d-Pw-%s", n, hex.EncodeToString(rnd)) }
	admin, err := pg.Connect(ctx, a.pgDB)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	ident := pgx.Identifier{role}.Sanitize()
	exec(fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", ident, pw(1)))
	exec(fmt.Sprintf("ALTER DATABASE %s OWNER TO %s", pgx.Identifier{a.pgDB}.Sanitize(), ident))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := pg.Connect(ctx, a.pgDB)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, fmt.Sprintf("ALTER ROLE %s NOLOGIN", ident))
		_, _ = c.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
		_, _ = c.Exec(ctx, fmt.Sprintf("REASSIGN OWNED BY %s TO CURRENT_USER", ident))
		_, _ = c.Exec(ctx, fmt.Sprintf("DROP OWNED BY %s", ident))
		_, _ = c.Exec(ctx, fmt.Sprintf("DROP ROLE %s", ident))
	})
	// One Secrets Manager for the cluster: each stack has its own moto, so
	// every put goes to both.
	put := func(id, v string) {
		for _, s := range []*stack{a, b} {
			s.moto.Put(t, id, v)
		}
	}
	put("Redash/RDS/User", role)
	put("Redash/RDS/Password", pw(1))
	for _, s := range []*stack{a, b} {
		s.writeConfig("redash-agent-test/redash:v1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), a.pgDB))
	}
	ns := map[*stack]*notifySocket{a: newNotifySocket(t), b: newNotifySocket(t)}
	procs := map[*stack]*agentProc{}
	for _, s := range []*stack{a, b} {
		procs[s] = startRun(t, s.fixture, ns[s].path)
	}
	for _, s := range []*stack{a, b} {
		ns[s].waitFor(t, "READY=1 of "+s.project, 0, 3*time.Minute, procs[s].exited, isReady)
		if !hasPassword(serverDBURL(t, s), pw(1)) {
			t.Fatalf("%s's server does not run with the first password", s.project)
		}
	}

	// 1. Rotated in place: the old password stops working at once, then
	// the secret gets the new one. Every instance follows within 30 s.
	exec(fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", ident, pw(2)))
	put("Redash/RDS/Password", pw(2))
	rotated := time.Now()
	took := map[*stack]time.Duration{}
	for len(took) < 2 && time.Since(rotated) < window {
		for _, s := range []*stack{a, b} {
			if _, done := took[s]; !done && hasPassword(serverDBURL(t, s), pw(2)) {
				took[s] = time.Since(rotated)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, s := range []*stack{a, b} {
		if d, ok := took[s]; ok {
			t.Logf("%s's server runs with the rotated password %v after the new secret version", s.project, d.Round(time.Millisecond))
		} else {
			t.Errorf("%s's server does not run with the rotated password %v after the new secret version", s.project, window)
		}
	}
	for _, s := range []*stack{a, b} {
		if out := procs[s].out.String(); !strings.Contains(out, "secret db-password has a new version in Secrets Manager") {
			t.Errorf("%s's journal does not say why it converged", s.project)
		}
	}

	// 2. A version whose password does not log in: nothing is recreated,
	// and the journal says what happened and what to do.
	before := map[*stack]map[string]string{a: a.containers(t), b: b.containers(t)}
	mark := map[*stack]int{a: len(procs[a].out.String()), b: len(procs[b].out.String())}
	put("Redash/RDS/Password", pw(3))
	refusedAt := time.Now()
	const refused = "the database refused the credentials of secret(s)"
	for _, s := range []*stack{a, b} {
		for !strings.Contains(procs[s].out.String()[mark[s]:], refused) {
			if time.Since(refusedAt) > window {
				t.Fatalf("%s's journal does not say the new credentials were refused %v after the bad version", s.project, window)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s refused the bad version %v after it was stored", s.project, time.Since(refusedAt).Round(time.Millisecond))
	}
	for _, s := range []*stack{a, b} {
		if after := s.containers(t); !maps.Equal(after, before[s]) {
			t.Errorf("%s: a version that does not log in changed the containers: before %v, after %v", s.project, before[s], after)
		}
		if !hasPassword(serverDBURL(t, s), pw(2)) {
			t.Errorf("%s's server lost the working password", s.project)
		}
		out := procs[s].out.String()[mark[s]:]
		for _, w := range []string{"no container was changed", "put-secret-value", "db-password (id Redash/RDS/Password, version "} {
			if !strings.Contains(out, w) {
				t.Errorf("%s's journal lacks %q", s.project, w)
			}
		}
		// The whole journal, from the start: no password, no user name.
		out = procs[s].out.String()
		for n := 1; n <= 3; n++ {
			if strings.Contains(out, pw(n)) || strings.Contains(out, escapeForTest(pw(n))) {
				t.Errorf("%s's journal holds password %d", s.project, n)
			}
		}
		if strings.Contains(out, role) {
			t.Errorf("%s's journal holds the database user name", s.project)
		}
	}
}
