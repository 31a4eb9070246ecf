package main

// End-to-end tests of the secret key and the cookie secret across a fleet
// (internal/agent/keys.go): three `run` agents (three compose projects on
// this Docker) share one database, as three instances behind one ALB; each
// has its own moto_server, and a rotation puts the same new value into all
// three, as into one Secrets Manager (AWSPREVIOUS then holds the old one).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/fernet"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// standInFP is test/fakeredash's fingerprint of a key in its tables.
func standInFP(v string) string {
	d := sha256.Sum256([]byte("fakeredash\x00" + v))
	return hex.EncodeToString(d[:8])
}

// serverEnv is one variable of the environment a stack's server runs with.
func serverEnv(t *testing.T, s *stack, name string) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/env", s.serverPort))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var env map[string]string
	if json.NewDecoder(resp.Body).Decode(&env) != nil {
		return ""
	}
	return env[name]
}

// waitAll waits until every stack's server runs with value for name and
// returns when the last one did.
func waitAll(t *testing.T, stacks []*stack, name, value string, limit time.Duration, procs []*agentProc) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		n := 0
		for _, s := range stacks {
			if serverEnv(t, s, name) == value {
				n++
			}
		}
		if n == len(stacks) {
			return time.Now()
		}
		if time.Now().After(deadline) {
			for i, p := range procs {
				t.Logf("agent %d output:\n%s", i, p.out.Bytes())
			}
			t.Fatalf("only %d of %d servers run with the new %s after %s", n, len(stacks), name, limit)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dataSource reads data source id through s's server: 200 and its options,
// or the status and body.
func dataSource(s *stack, id int) (int, string) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/data_sources/%d", s.serverPort, id))
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func recordedAt(t *testing.T, conn *pgx.Conn, name string) (fp string, at time.Time) {
	t.Helper()
	if err := conn.QueryRow(context.Background(), `SELECT value->>'fingerprint', updated_at FROM `+cluster.Schema+`.records WHERE name = $1`, name).Scan(&fp, &at); err != nil {
		t.Fatalf("reading record %s: %v", name, err)
	}
	return fp, at
}

func countRuns(t *testing.T, conn *pgx.Conn, cmd string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM fakeredash.fakeredash_runs WHERE cmd = $1`, cmd).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestRunKeysAcrossThreeInstances(t *testing.T) {
	start := time.Now()
	ctx := context.Background()
	stacks := []*stack{newFamilyStack(t, "25.1.0", "25.1"), newFamilyStack(t, "25.1.0", "25.1"), newFamilyStack(t, "25.1.0", "25.1")}
	a := stacks[0]
	image := redashImage(t, "redash-agent-test/redash:e2e-family-25.1", "rev1", "FAKEREDASH_FAMILY", "25.1")
	for _, s := range stacks {
		// One cluster on a's database; a refresh of 10 s is how an
		// instance notices a new version here (the version poll of
		// watch.go would make it 5 s).
		s.writeConfig(image, fmt.Sprintf("db-endpoint: %s\ndb-name: %s\nworker-stop-grace: 30s\nrefresh: 10s\n", pgEndpoint(t), a.pgDB))
	}
	pg := testenv.Postgres(t)
	conn, err := pg.Connect(ctx, a.pgDB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	var procs []*agentProc
	var socks []*notifySocket
	for _, s := range stacks {
		ns := newNotifySocket(t)
		socks = append(socks, ns)
		procs = append(procs, startRun(t, s.fixture, ns.path))
	}
	for i, s := range stacks {
		socks[i].waitFor(t, "READY=1 of "+s.project, 0, 3*time.Minute, procs[i].exited, isReady)
	}
	t.Logf("three instances ready after %v", time.Since(start).Round(time.Millisecond))

	key1 := seedSecrets["Redash/SecretKey"]
	// Data sources saved through one server, an alert destination as
	// Redash would store it.
	for i := 1; i <= 3; i++ {
		body := fmt.Sprintf(`{"name": "ds%d", "options": {"host": "db%d", "password": "pw-%d"}}`, i, i, i)
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/api/data_sources", a.serverPort), "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("creating a data source: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	if _, err := conn.Exec(ctx, `INSERT INTO public.notification_destinations (name, encrypted_options) VALUES ('slack', $1)`,
		fernet.KeyFromSecret(key1).Encrypt([]byte(`{"url": "https://hooks"}`), time.Now())); err != nil {
		t.Fatal(err)
	}

	t.Run("cookie secret change reaches every instance", func(t *testing.T) {
		const cookie2 = "cookie-secret-rotated-e2e-2"
		put := time.Now()
		for _, s := range stacks {
			s.moto.Put(t, "Redash/CookieSecret", cookie2)
		}
		last := waitAll(t, stacks, "REDASH_COOKIE_SECRET", cookie2, 60*time.Second, procs)
		_, recorded := recordedAt(t, conn, cluster.RecCookieSecret)
		t.Logf("cookie secret: recorded %v after the put; all three servers on it %v after the record (%v after the put)",
			recorded.Sub(put).Round(time.Millisecond), last.Sub(recorded).Round(time.Millisecond), last.Sub(put).Round(time.Millisecond))
		if w := last.Sub(recorded); w > 30*time.Second {
			t.Errorf("the fleet took %v after the record to follow the cookie secret; the README says within 30 s", w)
		}
		joined := ""
		for _, p := range procs {
			joined += string(p.out.Bytes())
		}
		if !strings.Contains(joined, "users will have to log in again") {
			t.Error("no journal says users will have to log in again")
		}
	})

	const key2 = "secret-key-rotated-e2e-2"
	t.Run("secret key rotation re-encrypts once", func(t *testing.T) {
		put := time.Now()
		for _, s := range stacks {
			s.moto.Put(t, "Redash/SecretKey", key2)
		}
		last := waitAll(t, stacks, "REDASH_SECRET_KEY", key2, 90*time.Second, procs)
		fp, recorded := recordedAt(t, conn, cluster.RecSecretKey)
		t.Logf("secret key: recorded %v after the put; all three servers on it %v after the record (%v after the put)",
			recorded.Sub(put).Round(time.Millisecond), last.Sub(recorded).Round(time.Millisecond), last.Sub(put).Round(time.Millisecond))
		if fp == "" {
			t.Error("no fingerprint recorded")
		}
		if w := last.Sub(recorded); w > 30*time.Second {
			t.Errorf("the fleet took %v after the record to use the new secret key; the README says within 30 s", w)
		}
		if n := countRuns(t, conn, "manage database reencrypt "+standInFP(key1)+" "+standInFP(key2)); n != 1 {
			t.Errorf("reencrypt old -> new ran %d times, want once", n)
		}
		var early int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM fakeredash.servers WHERE secret_key_fp = $1 AND started_at < $2`, standInFP(key2), recorded).Scan(&early); err != nil {
			t.Fatal(err)
		}
		if early > 0 {
			t.Errorf("%d servers started with the new key before it was recorded", early)
		}
		for _, s := range stacks {
			for id := 1; id <= 3; id++ {
				if code, body := dataSource(s, id); code != 200 || !strings.Contains(body, fmt.Sprintf("pw-%d", id)) {
					t.Errorf("data source %d on %s: %d %s", id, s.project, code, body)
				}
			}
		}
		c, err := fernet.CountDecryptable(ctx, conn, fernet.KeyFromSecret(key2))
		if err != nil || c.Total != 4 || c.OK[0] != 4 {
			t.Errorf("rows on the new key: %+v, %v; want all 4", c, err)
		}
	})

	t.Run("a failing reencrypt leaves all on the old key", func(t *testing.T) {
		if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS fakeredash.knobs (name text); INSERT INTO fakeredash.knobs VALUES ('fail-reencrypt')`); err != nil {
			t.Fatal(err)
		}
		const key3 = "secret-key-rotated-e2e-3"
		fpBefore, _ := recordedAt(t, conn, cluster.RecSecretKey)
		for _, s := range stacks {
			s.moto.Put(t, "Redash/SecretKey", key3)
		}
		// Wait for a failed attempt and its undo.
		forward := "manage database reencrypt " + standInFP(key2) + " " + standInFP(key3)
		back := "manage database reencrypt " + standInFP(key3) + " " + standInFP(key2)
		deadline := time.Now().Add(60 * time.Second)
		for countRuns(t, conn, back) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("no failed reencrypt was undone within 60 s")
			}
			time.Sleep(250 * time.Millisecond)
		}
		time.Sleep(3 * time.Second) // let that converge end
		if fp, _ := recordedAt(t, conn, cluster.RecSecretKey); fp != fpBefore {
			t.Error("a failed rotation changed the record")
		}
		for _, s := range stacks {
			if v := serverEnv(t, s, "REDASH_SECRET_KEY"); v != key2 {
				t.Errorf("%s's server does not run with the old key after the failure", s.project)
			}
			for id := 1; id <= 3; id++ {
				if code, body := dataSource(s, id); code != 200 {
					t.Errorf("data source %d on %s after the failure: %d %s", id, s.project, code, body)
				}
			}
		}
		var started int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM fakeredash.servers WHERE secret_key_fp = $1`, standInFP(key3)).Scan(&started); err != nil || started > 0 {
			t.Errorf("%d servers started with the key whose rotation failed (%v)", started, err)
		}
		c, err := fernet.CountDecryptable(ctx, conn, fernet.KeyFromSecret(key2))
		if err != nil || c.OK[0] != c.Total {
			t.Errorf("after the failure %d of %d rows decrypt with the old key (%v)", c.OK[0], c.Total, err)
		}
		out := ""
		for _, p := range procs {
			out += string(p.out.Bytes())
		}
		if !strings.Contains(out, "nothing was recorded and the previous key stays in use") {
			t.Error("no journal says the rotation failed and the old key stays")
		}
		// The failure is recorded under the lock: the other two instances,
		// which saw the same new version, wait instead of trying (and
		// undoing) it in turn, each leaving the rows briefly on key3.
		fwd, undos := countRuns(t, conn, forward), countRuns(t, conn, back)
		t.Logf("forward attempts %d, undos %d", fwd, undos)
		if fwd != 1 || undos != 1 {
			t.Errorf("%d forward attempts and %d undos within the hold, want 1 and 1 for the whole cluster", fwd, undos)
		}
	})

	for _, p := range procs {
		out := p.out.Bytes()
		assertNoSecrets(t, out, "the output of run")
		for _, k := range []string{key2, "secret-key-rotated-e2e-3", "cookie-secret-rotated-e2e-2"} {
			if strings.Contains(string(out), k) {
				t.Errorf("the output of run holds a rotated secret value")
			}
		}
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}

// On 8.x a new secret key is refused: the old one keeps running.
func TestUpRefusesSecretKeyRotationOn8x(t *testing.T) {
	s := newFamilyStack(t, "8.0.0.b32245", "8")
	s.up(t)
	before := s.containers(t)
	s.moto.Put(t, "Redash/SecretKey", "secret-key-rotated-on-8x")
	stdout, stderr, code := s.run("up")
	if code != 0 {
		t.Fatalf("up after the rotation exited %d:\n%s\n%s", code, stdout, stderr)
	}
	if after := s.containers(t); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("containers changed: before %v, after %v", before, after)
	}
	if !strings.Contains(stderr, "secret key rotation refused: Redash 8.x has no `manage database reencrypt`") {
		t.Errorf("the journal does not say why the rotation is refused:\n%s", stderr)
	}
	if v := serverEnv(t, s, "REDASH_SECRET_KEY"); v != seedSecrets["Redash/SecretKey"] {
		t.Error("the server does not run with the old key")
	}
	doctorOut, doctorErr, _ := s.run("doctor")
	if !strings.Contains(doctorOut+doctorErr, "secret key rotation refused") {
		t.Errorf("doctor does not say the rotation is refused:\n%s\n%s", doctorOut, doctorErr)
	}
	if strings.Contains(stdout+stderr+doctorOut+doctorErr, "secret-key-rotated-on-8x") {
		t.Error("the output holds the new key")
	}
}
