package secrets

import (
	"errors"
	"testing"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestFetchStageMoto(t *testing.T) {
	m := testenv.StartMoto(t)
	ctx := testCtx(t)
	f := &Fetcher{API: m.Client, Region: testenv.MotoRegion}
	ref := mustRef(t, SecretKey, "Redash/SecretKey")

	m.Put(t, "Redash/SecretKey", "key-first")
	if _, err := f.FetchStage(ctx, ref, StagePrevious); !errors.Is(err, ErrNoPreviousVersion) {
		t.Fatalf("a secret never changed: got %v, want ErrNoPreviousVersion", err)
	}
	m.Put(t, "Redash/SecretKey", "key-second")
	prev, err := f.FetchStage(ctx, ref, StagePrevious)
	if err != nil {
		t.Fatal(err)
	}
	if prev.Value.Reveal() != "key-first" {
		t.Errorf("AWSPREVIOUS = %q, want key-first", prev.Value.Reveal())
	}
	cur, err := f.FetchStage(ctx, ref, "AWSCURRENT")
	if err != nil || cur.Value.Reveal() != "key-second" {
		t.Errorf("AWSCURRENT = %q, %v", cur.Value.Reveal(), err)
	}
}
