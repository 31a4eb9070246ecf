package secrets

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestBatchMoto: more ids than one batch call takes are read in two calls;
// a missing one among them is its own configuration error.
func TestBatchMoto(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)
	var refs []Ref
	want := map[string]string{}
	for i := range 23 {
		id := fmt.Sprintf("Redash/Extra%02d", i)
		m.Put(t, id, "value-"+id)
		name := EnvName(fmt.Sprintf("VAR_%02d", i))
		refs = append(refs, mustRef(t, name, id))
		want[name] = "value-" + id
	}
	api := &countingAPI{API: m.Client}
	f := &Fetcher{API: api, Region: testenv.MotoRegion}
	got, err := f.Fetch(ctx, refs)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range want {
		if got[name].Value.Reveal() != v || got[name].VersionID == "" {
			t.Errorf("%s = %q (version %q), want %q", name, got[name].Value.Reveal(), got[name].VersionID, v)
		}
	}
	if len(api.batches) != 2 || len(api.batches[0]) != 20 || len(api.batches[1]) != 3 || len(api.calls) != 0 {
		t.Errorf("batches %v, single calls %v: want 20 ids then 3, no single call", api.batches, api.calls)
	}

	// One missing id: the others are read, the fetch fails naming it.
	api = &countingAPI{API: m.Client}
	f = &Fetcher{API: api, Region: testenv.MotoRegion}
	_, err = f.Fetch(ctx, append(refs[:2:2], mustRef(t, EnvName("MISSING"), "Redash/NoSuchSecret")))
	if err == nil || !errors.Is(err, ErrNotFound) || exitcode.Of(err) != exitcode.Config {
		t.Fatalf("err = %v (exit %d), want not found, exit 3", err, exitcode.Of(err))
	}
	for _, w := range []string{`secret "env:MISSING" (id "Redash/NoSuchSecret") not found in region us-east-1`, "redash:secret-env:MISSING"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	t.Logf("batches %v, single calls %v: %v", api.batches, api.calls, err)
}

// TestBatchRefusedFallsBack: a role without BatchGetSecretValue still gets
// its secrets, one GetSecretValue each, and the log says so once.
func TestBatchRefusedFallsBack(t *testing.T) {
	fs := newFaultServer(t, func(int) reply { return ok("single-value") })
	t.Setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", fs.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	logger, logs := logBuffer()
	refs := []Ref{mustRef(t, DBPassword, "Redash/RDS/Password"), mustRef(t, CookieSecret, "Redash/CookieSecret")}
	for range 3 {
		f, err := NewAWS(testCtx(t), "us-east-1", logger, WithPolicy(fastPolicy))
		if err != nil {
			t.Fatal(err)
		}
		got, err := f.Fetch(testCtx(t), refs)
		if err != nil || got[DBPassword].Value.Reveal() != "single-value" {
			t.Fatalf("Fetch = %v, %v", got, err)
		}
		if v, err := f.Versions(testCtx(t), refs); err != nil || v[CookieSecret] != "v-1" {
			t.Fatalf("Versions = %v, %v", v, err)
		}
	}
	if n := strings.Count(logs.String(), "refused BatchGetSecretValue"); n != 1 {
		t.Errorf("the fallback was logged %d times, want once:\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `secretsmanager:BatchGetSecretValue on Resource \"*\"`) {
		t.Errorf("the log does not say which permission to grant:\n%s", logs)
	}
	// 3 fetches and 3 looks of 2 secrets, single calls only: the refusal
	// is remembered, not asked again each time.
	if c := fs.Calls(); c != 12 {
		t.Errorf("%d GetSecretValue calls, want 12", c)
	}
}

// TestVersionsAndStages: Versions sees a new version in one call;
// FetchStage reads AWSPREVIOUS, and a secret never rotated has none.
func TestVersionsAndStages(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)
	v1 := m.Put(t, "Redash/SecretKey", "key-one")
	m.Put(t, "Redash/CookieSecret", "cookie-one")
	api := &countingAPI{API: m.Client}
	f := &Fetcher{API: api, Region: testenv.MotoRegion}
	refs := []Ref{mustRef(t, SecretKey, "Redash/SecretKey"), mustRef(t, CookieSecret, "Redash/CookieSecret")}
	before, err := f.Versions(ctx, refs)
	if err != nil || before[SecretKey] != v1 || before[CookieSecret] == "" {
		t.Fatalf("Versions = %v, %v; want %s for the key", before, err, v1)
	}
	v2 := m.Put(t, "Redash/SecretKey", "key-two")
	after, err := f.Versions(ctx, refs)
	if err != nil || after[SecretKey] != v2 || after[CookieSecret] != before[CookieSecret] {
		t.Fatalf("after a put: Versions = %v, %v; want %s for the key, the cookie unchanged", after, err, v2)
	}
	if len(api.batches) != 2 || len(api.calls) != 0 {
		t.Errorf("batches %v, single calls %v: want one batch per look", api.batches, api.calls)
	}

	prev, err := f.FetchStage(ctx, refs[0], StagePrevious)
	if err != nil || prev.Value.Reveal() != "key-one" || prev.VersionID != v1 {
		t.Errorf("FetchStage(AWSPREVIOUS) = %q %q, %v; want key-one at %s", prev.Value.Reveal(), prev.VersionID, err, v1)
	}
	_, err = f.FetchStage(ctx, refs[1], StagePrevious)
	if !errors.Is(err, ErrNoPreviousVersion) || !strings.Contains(err.Error(), "has no version labelled AWSPREVIOUS") {
		t.Errorf("FetchStage of a secret never rotated: %v, want ErrNoPreviousVersion", err)
	}

	// The local provider: fixed versions, never a previous one.
	ls := &LocalStore{Path: filepath.Join(t.TempDir(), "local-secrets.json")}
	got, err := ls.Fetch(ctx, refs)
	if err != nil {
		t.Fatal(err)
	}
	lv, err := ls.Versions(context.Background(), refs)
	if err != nil || lv[SecretKey] != got[SecretKey].VersionID || lv[CookieSecret] != got[CookieSecret].VersionID {
		t.Errorf("LocalStore.Versions = %v, %v; want the fetched versions", lv, err)
	}
	if _, err := ls.FetchStage(ctx, refs[0], StagePrevious); !errors.Is(err, ErrNoPreviousVersion) {
		t.Errorf("LocalStore.FetchStage: %v, want ErrNoPreviousVersion", err)
	}
}
