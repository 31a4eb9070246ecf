package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// fakeVersions is a secret store whose current versions the test sets.
type fakeVersions struct {
	versions map[string]string
	err      error
	looks    int
	refs     []secrets.Ref
}

func (f *fakeVersions) Fetch(context.Context, []secrets.Ref) (map[string]secrets.Secret, error) {
	return nil, errors.New("not used")
}

func (f *fakeVersions) Versions(_ context.Context, refs []secrets.Ref) (map[string]string, error) {
	f.looks++
	f.refs = refs
	return f.versions, f.err
}

func TestSecretsChanged(t *testing.T) {
	store := &fakeVersions{versions: map[string]string{"db-password": "v1", "cookie-secret": "c1"}}
	logs := &bytes.Buffer{}
	built := 0
	a := newAgent(Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), StateDir: t.TempDir(), Dir: t.TempDir()}, remotes{
		secrets: func(_ context.Context, region string, _ secrets.Policy, _ *slog.Logger) (secretStore, error) {
			built++
			if region != "eu-west-1" {
				t.Errorf("store built for region %q", region)
			}
			return store, nil
		},
	})
	ctx := context.Background()
	refs := []secrets.Ref{{Name: "cookie-secret", SecretID: "Redash/CookieSecret"}, {Name: "db-password", SecretID: "Redash/RDS/Password"}}
	cfg := config.Config{Provider: config.ProviderAWS, Region: "eu-west-1", SecretPoll: 10 * time.Second}
	a.sawSecrets(cfg, refs, map[string]secrets.Secret{"db-password": {VersionID: "v1"}, "cookie-secret": {VersionID: "c1"}})
	due := func() { a.secretWatch.last = time.Now().Add(-cfg.SecretPoll) }

	// Right after the fetch: not looked at yet (the poll is 10 s).
	if why := a.secretsChanged(ctx); why != "" || store.looks != 0 {
		t.Fatalf("right after a fetch: %q, %d looks; want no look", why, store.looks)
	}
	// On the tick 5 s before due: no look either.
	a.secretWatch.last = time.Now().Add(-5 * time.Second)
	if a.secretsChanged(ctx); store.looks != 0 {
		t.Fatalf("5 s after a fetch with a 10 s poll: %d looks", store.looks)
	}
	due()
	if why := a.secretsChanged(ctx); why != "" || store.looks != 1 || len(store.refs) != 2 {
		t.Fatalf("nothing changed: %q after %d looks of %v", why, store.looks, store.refs)
	}
	// A new version of the password.
	store.versions = map[string]string{"db-password": "v2", "cookie-secret": "c1"}
	due()
	if why := a.secretsChanged(ctx); why != "secret db-password has a new version in Secrets Manager" {
		t.Errorf("after a rotation: %q", why)
	}
	// A failed look: no reason, logged at debug, and the next look works.
	store.err = errors.New("throttled")
	due()
	if why := a.secretsChanged(ctx); why != "" || !strings.Contains(logs.String(), "not looking for new secret versions this time") {
		t.Errorf("failed look: %q\n%s", why, logs)
	}
	store.err = nil
	due()
	if why := a.secretsChanged(ctx); why == "" {
		t.Error("the look after a failed one missed the new version")
	}
	if built != 1 {
		t.Errorf("the store was built %d times, want once for all looks", built)
	}

	// secret-poll 0: never looks.
	a.sawSecrets(config.Config{Provider: config.ProviderAWS, Region: "eu-west-1"}, refs, map[string]secrets.Secret{"db-password": {VersionID: "v1"}})
	looks := store.looks
	a.secretWatch.last = time.Time{}
	if why := a.secretsChanged(ctx); why != "" || store.looks != looks {
		t.Errorf("secret-poll 0 looked: %q", why)
	}
	// Provider local: nothing to look at.
	a.sawSecrets(config.Config{Provider: config.ProviderLocal, SecretPoll: time.Second}, refs, nil)
	a.secretWatch.last = time.Time{}
	if why := a.secretsChanged(ctx); why != "" || store.looks != looks {
		t.Errorf("provider local looked: %q", why)
	}
}
