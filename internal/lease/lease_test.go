package lease

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// testDB is a fresh database on the test PostgreSQL (scripts/ci-postgres.sh).
func testDB(t *testing.T) desired.DB {
	t.Helper()
	pg := testenv.Postgres(t)
	return desired.DB{Host: pg.Host, Port: pg.Port, User: pg.User, Password: secrets.NewValue(pg.Password), Name: pg.NewDatabase(t)}
}

func mustTry(t *testing.T, db desired.DB, instance string) *Lease {
	t.Helper()
	l, hs, err := Try(context.Background(), db, instance)
	if err != nil {
		t.Fatalf("Try(%s): %v", instance, err)
	}
	if l == nil {
		t.Fatalf("Try(%s): not taken; held by %s", instance, Describe(hs))
	}
	t.Cleanup(l.Release)
	return l
}

func mustNotTry(t *testing.T, db desired.DB, instance, holder string) {
	t.Helper()
	l, hs, err := Try(context.Background(), db, instance)
	if err != nil {
		t.Fatalf("Try(%s): %v", instance, err)
	}
	if l != nil {
		l.Release()
		t.Fatalf("Try(%s) took the lease while %s holds it", instance, holder)
	}
	if !HeldBy(hs, holder) || HeldBy(hs, instance) {
		t.Errorf("Try(%s): holders %s, want only %s's session", instance, Describe(hs), holder)
	}
}

func TestOnlyOneHolds(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	if hs, err := Holders(ctx, db); err != nil || len(hs) != 0 {
		t.Fatalf("Holders on a fresh database: %v, %v; want none", hs, err)
	}
	a := mustTry(t, db, "host-a proj")
	mustNotTry(t, db, "host-b proj", "host-a proj")
	if err := a.Held(ctx); err != nil {
		t.Fatalf("Held on a live lease: %v", err)
	}
	hs, err := Holders(ctx, db)
	if err != nil || !HeldBy(hs, "host-a proj") || len(hs) != 1 {
		t.Errorf("Holders: %s, %v; want host-a's one session", Describe(hs), err)
	}

	// Release frees it at once, and Held reports the release.
	a.Release()
	if err := a.Held(ctx); err == nil {
		t.Error("Held after Release: nil, want an error")
	}
	a.Release() // a second time is fine
	mustTry(t, db, "host-b proj")
	mustNotTry(t, db, "host-a proj", "host-b proj")
}

func TestClosingTheSessionFreesIt(t *testing.T) {
	db := testDB(t)
	a := mustTry(t, db, "host-a proj")
	// No unlock: the connection just goes, as when the agent is killed.
	a.mu.Lock()
	if err := a.conn.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.mu.Unlock()
	// The server ends the backend as soon as it reads the close; bounded.
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, hs, err := Try(context.Background(), db, "host-b proj")
		if err != nil {
			t.Fatal(err)
		}
		if l != nil {
			l.Release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the lease is still held 5s after its session closed: %s", Describe(hs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestTerminatedBackendIsLoss(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	a := mustTry(t, db, "host-a proj")

	pg := testenv.Postgres(t)
	admin, err := pg.Connect(ctx, db.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var pid int32
	if err := admin.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, a.Name()).Scan(&pid); err != nil {
		t.Fatalf("finding the lease's backend (application_name %q): %v", a.Name(), err)
	}
	var killed bool
	if err := admin.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend(%d): %v, %v", pid, killed, err)
	}
	err = a.Held(ctx)
	if err == nil {
		t.Fatal("Held after pg_terminate_backend: nil, want the loss")
	}
	if !strings.Contains(err.Error(), "no longer") || strings.Contains(err.Error(), pg.User) {
		t.Errorf("Held's error %q: want it to say the session is gone, without the db user", err)
	}
	if again := a.Held(ctx); again == nil {
		t.Error("Held a second time after the loss: nil")
	}
	mustTry(t, db, "host-b proj")
}

func TestNameFitsApplicationName(t *testing.T) {
	db := testDB(t)
	long := "ip-10-0-128-254.eu-central-1.compute.internal my-redash-production-project"
	if n := Name(long); len(n) != maxName || !strings.HasPrefix(n, namePrefix) {
		t.Errorf("Name(long) = %q (%d bytes), want the prefix and %d bytes", n, len(n), maxName)
	}
	mustTry(t, db, long)
	hs, err := Holders(context.Background(), db)
	if err != nil || !HeldBy(hs, long) {
		t.Errorf("the server's application_name does not match Name: %s, %v", Describe(hs), err)
	}
}

func TestTryUnreachable(t *testing.T) {
	db := desired.DB{Host: "127.0.0.1", Port: testenv.FreePort(t), User: "someone_secret", Password: secrets.NewValue("pw"), Name: "redash"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, _, err := Try(ctx, db, "host-a proj")
	if l != nil || err == nil {
		t.Fatalf("Try on a closed port: %v, %v; want an error", l, err)
	}
	if !strings.Contains(err.Error(), db.Addr()) || strings.Contains(err.Error(), "someone_secret") {
		t.Errorf("error %q: want the address and not the db user", err)
	}
}

// TestKindsAreIndependent: another Kind (the metrics lease) is a lock of its
// own: holding it does not hold the scheduler's, and its sessions are named
// by its prefix.
func TestKindsAreIndependent(t *testing.T) {
	db := testDB(t)
	ctx := context.Background()
	other := Kind{Key: 0x5245444153484d54, What: "the test lease", NamePrefix: "redash-agent-test "}
	l, _, err := other.Try(ctx, db, "host-a proj")
	if err != nil || l == nil {
		t.Fatalf("other.Try: %v, %v", l, err)
	}
	defer l.Release()
	if !strings.HasPrefix(l.Name(), "redash-agent-test ") {
		t.Errorf("Name %q, want the kind's prefix", l.Name())
	}
	if err := l.Held(ctx); err != nil {
		t.Fatalf("Held: %v", err)
	}
	mustTry(t, db, "host-b proj") // the scheduler's lease is still free
	l2, hs, err := other.Try(ctx, db, "host-b proj")
	if err != nil || l2 != nil || !other.HeldBy(hs, "host-a proj") {
		t.Fatalf("other.Try by a second instance: %v, %s, %v; want refused, held by host-a", l2, Describe(hs), err)
	}
	l.Release()
	if err := l.Held(ctx); err == nil || !strings.Contains(err.Error(), "the test lease") {
		t.Errorf("Held after Release: %v, want it to name the lease", err)
	}
}
