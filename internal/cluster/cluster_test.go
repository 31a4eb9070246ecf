package cluster

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

func connect(t *testing.T) *pgx.Conn {
	t.Helper()
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	ctx := context.Background()
	conn, err := pg.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestRecordsRoundTripAndBumpTheGeneration(t *testing.T) {
	ctx := context.Background()
	conn := connect(t)

	st, err := Read(ctx, conn)
	if err != nil || st.Exists {
		t.Fatalf("Read before Ensure = %+v, %v; want an empty state and no error", st, err)
	}
	if g, err := Generation(ctx, conn); err != nil || g != 0 {
		t.Fatalf("Generation before Ensure = %d, %v; want 0, nil", g, err)
	}
	if err := Ensure(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if err := Ensure(ctx, conn); err != nil {
		t.Fatalf("second Ensure: %v", err)
	}
	st, err = Read(ctx, conn)
	if err != nil || !st.Exists || st.Salt == "" || st.Generation != 0 {
		t.Fatalf("Read after Ensure = %+v, %v", st, err)
	}

	fp := Fingerprint(st.Salt, RecSecretKey, secrets.NewValue("old-key"))
	if err := Put(ctx, conn, RecSecretKey, KeyRecord{Fingerprint: fp, Since: time.Now()}, "i-1"); err != nil {
		t.Fatal(err)
	}
	up := Upgrade{FromHead: "a", ToHead: "b", Image: "redash:2", Phase: PhaseDraining, By: "i-1", StartedAt: time.Now()}
	if err := Put(ctx, conn, RecUpgrade, up, "i-1"); err != nil {
		t.Fatal(err)
	}
	if err := Heartbeat(ctx, conn, Instance{Name: "i-2", Head: "a", PausedFor: "b"}); err != nil {
		t.Fatal(err)
	}
	if g, _ := Generation(ctx, conn); g != 2 {
		t.Fatalf("generation after two records and a heartbeat = %d, want 2 (heartbeats do not bump it)", g)
	}
	st, err = Read(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if st.SecretKey == nil || st.SecretKey.Fingerprint != fp {
		t.Errorf("secret-key record = %+v, want fingerprint %s", st.SecretKey, fp)
	}
	if st.Upgrade == nil || !st.Upgrade.InProgress() || st.Upgrade.ToHead != "b" {
		t.Errorf("upgrade record = %+v", st.Upgrade)
	}
	if len(st.Instances) != 1 || st.Instances[0].PausedFor != "b" {
		t.Errorf("instances = %+v", st.Instances)
	}
	if st.CookieSecret != nil || st.CreateDB != nil {
		t.Errorf("records never written read back: %+v %+v", st.CookieSecret, st.CreateDB)
	}
}

func TestEnsureConcurrently(t *testing.T) {
	pg := testenv.Postgres(t)
	db := pg.NewDatabase(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Go(func() {
			conn, err := pg.Connect(ctx, db)
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close(ctx)
			errs[i] = Ensure(ctx, conn)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Ensure %d: %v", i, err)
		}
	}
}

func TestFingerprintIsKeyedAndHidesTheValue(t *testing.T) {
	v := secrets.NewValue("a-secret-key-value-1234567890")
	a := Fingerprint("salt1", RecSecretKey, v)
	if a != Fingerprint("salt1", RecSecretKey, v) {
		t.Fatal("not deterministic")
	}
	for _, other := range []string{
		Fingerprint("salt2", RecSecretKey, v),
		Fingerprint("salt1", RecCookieSecret, v),
		Fingerprint("salt1", RecSecretKey, secrets.NewValue("a-secret-key-value-1234567891")),
	} {
		if other == a {
			t.Errorf("fingerprint collides across salt, name or value: %s", a)
		}
	}
	if strings.Contains(a, "secret") || len(a) != 32 {
		t.Errorf("fingerprint %q: want 32 hex characters", a)
	}
}

func TestKeyFailureHolds(t *testing.T) {
	now := time.Now()
	f := &KeyFailure{Pair: "v1>v2", Until: now.Add(time.Minute)}
	if !f.Holds("v1>v2", now) {
		t.Error("a failure does not hold back its own pair before Until")
	}
	if f.Holds("v1>v3", now) || f.Holds("v1>v2", now.Add(2*time.Minute)) {
		t.Error("a failure holds back another pair, or after Until")
	}
	var none *KeyFailure
	if none.Holds("v1>v2", now) {
		t.Error("no failure record holds something back")
	}
}
