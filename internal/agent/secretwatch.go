package agent

// The fast look for rotated secrets: every secret-poll (10 s by default)
// run asks Secrets Manager for the AWSCURRENT version id of every secret it
// uses, in one BatchGetSecretValue call, and converges at once when one
// differs from what the last fetch got. A database password rotated in
// place (the old one stops working at once) so reaches the containers
// within about secret-poll plus one converge, instead of a whole refresh.

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// versionReader is the one call of the look: the current version id of
// every ref, keyed by logical name.
type versionReader interface {
	Versions(ctx context.Context, refs []secrets.Ref) (map[string]string, error)
}

var _ versionReader = (*secrets.Fetcher)(nil)

// secretWatch is what the last successful fetch of secrets got, for the
// look to compare against.
type secretWatch struct {
	refs     []secrets.Ref
	region   string
	versions map[string]string // logical name -> VersionId
	poll     time.Duration     // config's secret-poll; 0: no look
	last     time.Time         // the last fetch or look
	// store is kept between looks: a new client every look would also
	// fetch new instance-role credentials from IMDS every look.
	store versionReader
}

// sawSecrets records the versions a successful fetch got. Provider local's
// secrets never rotate: nothing to look at.
func (a *Agent) sawSecrets(cfg config.Config, refs []secrets.Ref, got map[string]secrets.Secret) {
	w := &a.secretWatch
	if cfg.Provider != config.ProviderAWS {
		*w = secretWatch{}
		return
	}
	if w.region != cfg.Region {
		w.store = nil
	}
	w.refs, w.region, w.poll, w.last = refs, cfg.Region, cfg.SecretPoll, time.Now()
	w.versions = make(map[string]string, len(got))
	for name, s := range got {
		w.versions[name] = s.VersionID
	}
}

// secretsChanged says which secret has a new version in Secrets Manager
// since the last fetch, or "". It looks at most every secret-poll (on
// run's changePoll ticks, so at a 5 s resolution); a failed look is logged
// at debug and waits for the next one.
func (a *Agent) secretsChanged(ctx context.Context) string {
	w := &a.secretWatch
	// Half a tick of slack: a 10 s poll looks on every second 5 s tick.
	if w.poll <= 0 || len(w.refs) == 0 || time.Since(w.last)+changePoll/2 < w.poll {
		return ""
	}
	w.last = time.Now()
	if w.store == nil {
		s, err := a.remote.secrets(ctx, w.region, secrets.Refresh, a.log)
		vr, ok := s.(versionReader)
		if err != nil || !ok {
			a.log.Debug("not looking for new secret versions this time", "step", "watch", "err", err)
			return ""
		}
		w.store = vr
	}
	// One look must not hold run's loop for a whole Refresh budget.
	ctx, cancel := context.WithTimeout(ctx, changePoll)
	defer cancel()
	now, err := w.store.Versions(ctx, w.refs)
	if err != nil {
		a.log.Debug("not looking for new secret versions this time", "step", "watch", "err", err)
		return ""
	}
	names := make([]string, 0, len(w.versions))
	for name := range w.versions {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if v, ok := now[name]; ok && v != "" && v != w.versions[name] {
			a.log.LogAttrs(ctx, slog.LevelInfo, "secret has a new version", slog.String("step", "watch"), slog.String("secret", name),
				slog.String("version_id", v), slog.String("previous_version_id", w.versions[name]))
			return fmt.Sprintf("secret %s has a new version in Secrets Manager", name)
		}
	}
	return ""
}

// explainRefusedCredentials turns the database refusing the login the
// secrets give (for every role: migrate connects first, before any
// container changes) into what it means after a rotation and what to do.
// The cause stays wrapped: migrate.IsAuthFailure and exit codes still see it.
func (a *Agent) explainRefusedCredentials(r Rendered, err error) error {
	if r.State.Spec.Local || !migrate.IsAuthFailure(err) {
		return err
	}
	var from []string
	for _, name := range []string{secrets.DBUser, secrets.DBPassword, secrets.DBSecret} {
		if s, ok := r.Secrets[name]; ok {
			from = append(from, fmt.Sprintf("%s (id %s, version %s)", name, s.Ref.String(), s.VersionID))
		}
	}
	return &refusedCredentials{err: err, msg: fmt.Sprintf("the database refused the credentials of secret(s) %s: no container was changed, the running ones keep the credentials they started with. "+
		"If the password was just rotated, the secret's AWSCURRENT version must hold the password the database now accepts: store it with `aws secretsmanager put-secret-value`, "+
		"or finish the rotation (ALTER ROLE ... PASSWORD ...); the agent applies a version that logs in within secret-poll (default 10s) or at the next refresh",
		strings.Join(from, ", "))}
}

// refusedCredentials is a refused login explained; Unwrap keeps the cause.
type refusedCredentials struct {
	err error
	msg string
}

func (e *refusedCredentials) Error() string { return e.msg + ": " + e.err.Error() }
func (e *refusedCredentials) Unwrap() error { return e.err }
