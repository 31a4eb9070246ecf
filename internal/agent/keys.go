package agent

// keys.go: REDASH_SECRET_KEY and REDASH_COOKIE_SECRET are values the whole
// fleet must agree on, so with provider aws the values an instance renders
// are the ones the cluster's records (internal/cluster) say, not simply
// Secrets Manager's AWSCURRENT:
//
//   - the secret key encrypts every data source's and alert destination's
//     options. When AWSCURRENT differs from the record and AWSPREVIOUS is the
//     recorded value, one instance, under the migration lock, re-encrypts
//     the rows (Redash >= 9), checks with Fernet that every row decrypts with
//     the new key, and records it; only then does any instance render it.
//     A failed re-encryption is undone (new -> old) and nothing is recorded.
//     8.x has no reencrypt: the recorded value keeps being rendered.
//   - the cookie secret signs sessions; there is no data to convert, so the
//     first instance to see a new value records it and the others follow
//     through the records' generation (watch.go), within seconds.
//
// Provider local's secrets never rotate (local-secrets.json is made once),
// so it skips all of this. `render --dry-run`, `--plan`, `status` and
// `config` read the records and never write them.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/doctor"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/fernet"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// keyAction is what to do about one of the two keys.
type keyAction int

const (
	// keyKeep: the record is AWSCURRENT's value.
	keyKeep keyAction = iota
	// keyRecord: nothing recorded yet: record AWSCURRENT's value.
	keyRecord
	// keyRotate: the record is AWSPREVIOUS's value: re-encrypt to
	// AWSCURRENT's, then record it. Until then, render the previous.
	keyRotate
	// keyRefuseNoReencrypt: as keyRotate, on a Redash without reencrypt
	// (8.x): keep rendering the previous value.
	keyRefuseNoReencrypt
	// keyFollow: the cookie secret changed: record AWSCURRENT's value.
	keyFollow
	// keyUnknown: neither AWSCURRENT nor AWSPREVIOUS is the recorded value.
	keyUnknown
)

func (k keyAction) String() string {
	return [...]string{"keep", "record", "rotate", "refuse (no reencrypt)", "follow", "unknown"}[k]
}

// decideKey is the rule, without I/O. recorded, current and previous are
// fingerprints ("" when there is no record, or no previous version).
func decideKey(name, recorded, current, previous string, canReencrypt bool) keyAction {
	switch {
	case recorded == "":
		return keyRecord
	case recorded == current:
		return keyKeep
	case name == cluster.RecCookieSecret:
		return keyFollow
	case previous != "" && recorded == previous:
		if canReencrypt {
			return keyRotate
		}
		return keyRefuseNoReencrypt
	default:
		return keyUnknown
	}
}

// canReencrypt: `manage database reencrypt` exists from 9.0 (redash/cli/database.py).
func canReencrypt(f compose.Family) bool { return f.Major >= 9 }

// keyView is what Render learned from the records.
type keyView struct {
	// checked: the records were read (provider aws, database reachable).
	checked    bool
	db         desired.DB
	generation int64
	canReenc   bool
	secretKey  keyAction
	cookie     keyAction
	// current and previous are the secret key's AWSCURRENT and, when the
	// record is not AWSCURRENT, its AWSPREVIOUS; cookie the AWSCURRENT
	// cookie secret.
	current, previous, cookieCur secrets.Secret
	// note says, for STATUS and doctor, why the secret key in use is not
	// AWSCURRENT's ("" when it is).
	note string
}

// keysReadTimeout bounds Render's read of the records: a database that does
// not answer must not hold a dry run.
const keysReadTimeout = 10 * time.Second

// stageStore is the Secrets Manager call for AWSPREVIOUS (secrets.Fetcher).
type stageStore interface {
	FetchStage(ctx context.Context, ref secrets.Ref, stage string) (secrets.Secret, error)
}

var _ stageStore = (*secrets.Fetcher)(nil)

// readKeys reads the records and decides both keys; got is changed to hold
// the values to render. forUp: a refusal is an error (exit 3); otherwise it
// is a warning and AWSCURRENT is shown.
func (a *Agent) readKeys(ctx context.Context, cfg config.Config, got map[string]secrets.Secret, db desired.DB, forUp bool) (keyView, error) {
	var v keyView
	if cfg.Provider != config.ProviderAWS || db.Host == "" {
		return v, nil
	}
	cur, okKey := got[secrets.SecretKey]
	cookie, okCookie := got[secrets.CookieSecret]
	if !okKey || !okCookie {
		return v, nil // desired.Build names what is missing
	}
	fam, err := compose.FamilyFor(cfg.Version)
	if err != nil {
		return v, nil // config validated it; desired.Build says so otherwise
	}
	rctx, cancel := context.WithTimeout(ctx, keysReadTimeout)
	defer cancel()
	conn, err := migrate.Dial(rctx, db, "redash-agent-keys "+host())
	if err != nil {
		// Up's migration needs the database too and fails with the full
		// story; nothing is recorded and the containers stay as they are.
		a.log.Warn("could not read the cluster's key records; rendering Secrets Manager's current values", "step", "keys", "err", err)
		return v, nil
	}
	defer conn.Close(context.Background())
	st, err := cluster.Read(rctx, conn)
	if err != nil {
		a.log.Warn("could not read the cluster's key records; rendering Secrets Manager's current values", "step", "keys", "err", err)
		return v, nil
	}
	v = keyView{checked: true, db: db, generation: st.Generation, canReenc: canReencrypt(fam), current: cur, cookieCur: cookie}
	if !st.Exists {
		v.secretKey, v.cookie = keyRecord, keyRecord
		return v, nil
	}
	v.decide(ctx, a, cfg, st)
	return v, a.applyView(&v, got, forUp)
}

// decide fills in both actions from st, fetching AWSPREVIOUS when needed.
func (v *keyView) decide(ctx context.Context, a *Agent, cfg config.Config, st cluster.State) {
	fp := func(name string, s secrets.Secret) string { return cluster.Fingerprint(st.Salt, name, s.Value) }
	recKey, recCookie := "", ""
	if st.SecretKey != nil {
		recKey = st.SecretKey.Fingerprint
	}
	if st.CookieSecret != nil {
		recCookie = st.CookieSecret.Fingerprint
	}
	v.cookie = decideKey(cluster.RecCookieSecret, recCookie, fp(cluster.RecCookieSecret, v.cookieCur), "", true)
	curFP := fp(cluster.RecSecretKey, v.current)
	prevFP := ""
	if recKey != "" && recKey != curFP {
		if v.previous.Value.IsZero() {
			v.previous = a.fetchPrevious(ctx, cfg, v.current.Ref)
		}
		if !v.previous.Value.IsZero() {
			prevFP = fp(cluster.RecSecretKey, v.previous)
		}
	}
	v.secretKey = decideKey(cluster.RecSecretKey, recKey, curFP, prevFP, v.canReenc)
}

// fetchPrevious reads the secret key's AWSPREVIOUS; a zero Secret when it
// cannot (logged): the rule then refuses, which keeps the old containers.
func (a *Agent) fetchPrevious(ctx context.Context, cfg config.Config, ref secrets.Ref) secrets.Secret {
	return a.fetchStage(ctx, cfg, ref, secrets.StagePrevious)
}

// fetchStage reads ref at a staging label; a zero Secret when it cannot.
func (a *Agent) fetchStage(ctx context.Context, cfg config.Config, ref secrets.Ref, stage string) secrets.Secret {
	store, err := a.remote.secrets(ctx, cfg.Region, a.secretsPolicy, a.log)
	if err != nil {
		a.log.Warn("could not read the secret key's version", "step", "keys", "stage", stage, "err", err)
		return secrets.Secret{}
	}
	ss, ok := store.(stageStore)
	if !ok {
		return secrets.Secret{}
	}
	got, err := ss.FetchStage(ctx, ref, stage)
	if err != nil {
		if !errors.Is(err, secrets.ErrNoPreviousVersion) {
			a.log.Warn("could not read the secret key's version", "step", "keys", "stage", stage, "err", err)
		}
		return secrets.Secret{}
	}
	return got
}

// applyView puts the values to render into got and says what is refused.
func (a *Agent) applyView(v *keyView, got map[string]secrets.Secret, forUp bool) error {
	v.note = ""
	got[secrets.SecretKey] = v.current
	got[secrets.CookieSecret] = v.cookieCur
	id := v.current.Ref.SecretID
	switch v.secretKey {
	case keyRotate:
		got[secrets.SecretKey] = v.previous
		v.note = "the secret key changed in Secrets Manager; the data sources are re-encrypted under the migration lock before any instance uses it"
	case keyRefuseNoReencrypt:
		got[secrets.SecretKey] = v.previous
		v.note = fmt.Sprintf("secret key rotation refused: Redash 8.x has no `manage database reencrypt`, so the data sources would become unreadable; "+
			"the previous value (AWSPREVIOUS of %q) keeps running. Upgrade to Redash 10 or later first, or put the previous value back as AWSCURRENT "+
			"(aws secretsmanager update-secret-version-stage --secret-id %s --version-stage AWSCURRENT --move-to-version-id <AWSPREVIOUS's version id>)", id, id)
		a.log.Warn(v.note, "step", "keys", "secret_id", id)
	case keyUnknown:
		err := exitcode.ConfigError(fmt.Errorf("refusing the secret key of %q: neither its AWSCURRENT nor its AWSPREVIOUS version is the key the cluster's data sources are encrypted with "+
			"(recorded in %s.records), so Redash could not read them; the running containers are kept. Put the old value back: "+
			"find its version with `aws secretsmanager list-secret-version-ids --secret-id %s --include-deprecated` and make it AWSCURRENT "+
			"(aws secretsmanager update-secret-version-stage --secret-id %s --version-stage AWSCURRENT --move-to-version-id <id>), then change it in one step "+
			"(put-secret-value), which keeps the old one as AWSPREVIOUS", id, cluster.Schema, id, id))
		if forUp {
			return err
		}
		v.note = firstLine(err.Error())
		a.log.Warn(v.note, "step", "keys")
	}
	return nil
}

// keyHold spaces failed re-encryptions: one attempt per refresh, not one
// every converge.
type keyHold struct {
	pair  string // previous and current fingerprints
	until time.Time
}

// settleKeys is Up's write side, after the host lock and before the files
// are written: it records what has no record yet, follows a new cookie
// secret, and rotates the secret key. It returns the values to render
// (changed in got) and whether they changed.
func (a *Agent) settleKeys(ctx context.Context, r *Rendered) (changed bool, err error) {
	v := &r.keys
	if !v.checked {
		return false, nil
	}
	if v.secretKey == keyKeep && v.cookie == keyKeep || v.secretKey == keyRefuseNoReencrypt && v.cookie == keyKeep {
		a.sawCluster(v.db, v.generation)
		return false, nil
	}
	pair := v.previous.VersionID + ">" + v.current.VersionID
	if v.secretKey == keyRotate && a.keysHold.pair == pair && time.Now().Before(a.keysHold.until) && v.cookie == keyKeep {
		a.log.Warn("the secret key rotation failed recently; keeping the previous key until the next attempt", "step", "keys", "next_attempt", a.keysHold.until.Format(time.RFC3339))
		a.sawCluster(v.db, v.generation)
		return false, nil
	}
	before := [2]string{r.Secrets[secrets.SecretKey].Value.Reveal(), r.Secrets[secrets.CookieSecret].Value.Reveal()}
	var rotateErr error
	err = a.step(ctx, "settle the secret key and cookie secret", func(ctx context.Context) error {
		return migrate.Locked(ctx, v.db, a.log, func(ctx context.Context, conn *pgx.Conn) error {
			if err := cluster.Ensure(ctx, conn); err != nil {
				return err
			}
			// Another instance may have decided while this one waited.
			st, err := cluster.Read(ctx, conn)
			if err != nil {
				return err
			}
			v.decide(ctx, a, r.Config, st)
			if v.secretKey == keyUnknown {
				// This converge's AWSCURRENT may predate a rotation another
				// instance just recorded: read it again before refusing.
				if cur := a.fetchStage(ctx, r.Config, v.current.Ref, "AWSCURRENT"); !cur.Value.IsZero() {
					v.current, v.previous = cur, secrets.Secret{}
					v.decide(ctx, a, r.Config, st)
				}
			}
			if err := a.applyView(v, r.Secrets, true); err != nil {
				return err
			}
			fp := func(name string, s secrets.Secret) string { return cluster.Fingerprint(st.Salt, name, s.Value) }
			switch v.cookie {
			case keyRecord, keyFollow:
				if err := cluster.Put(ctx, conn, cluster.RecCookieSecret, cluster.KeyRecord{Fingerprint: fp(cluster.RecCookieSecret, v.cookieCur), VersionID: v.cookieCur.VersionID, Since: time.Now().UTC()}, host()); err != nil {
					return err
				}
				if v.cookie == keyFollow {
					a.log.Warn("the cookie secret changed: every instance switches to it within seconds, and users will have to log in again", "step", "keys", "version_id", v.cookieCur.VersionID)
				}
				v.cookie = keyKeep
			}
			switch v.secretKey {
			case keyRecord:
				if err := a.checkRows(ctx, conn, v.current); err != nil {
					return err
				}
				if err := cluster.Put(ctx, conn, cluster.RecSecretKey, cluster.KeyRecord{Fingerprint: fp(cluster.RecSecretKey, v.current), VersionID: v.current.VersionID, Since: time.Now().UTC()}, host()); err != nil {
					return err
				}
				v.secretKey = keyKeep
			case keyRotate:
				// The fleet-wide hold names the two values by fingerprint
				// (version ids are the same only when instances share one
				// Secrets Manager, the values always).
				failedPair := fp(cluster.RecSecretKey, v.previous) + ">" + fp(cluster.RecSecretKey, v.current)
				if f := st.SecretKeyFailed; f.Holds(failedPair, time.Now()) {
					// Another instance's attempt failed: the whole fleet
					// waits, or each would try (and undo) it in turn.
					a.keysHold = keyHold{pair: pair, until: f.Until}
					a.log.Warn("the secret key rotation failed on another instance; keeping the previous key until the next attempt", "step", "keys", "failed_on", f.By, "next_attempt", f.Until.Format(time.RFC3339))
					break
				}
				if rotateErr = a.rotate(ctx, conn, r, v); rotateErr != nil {
					a.keysHold = keyHold{pair: pair, until: time.Now().Add(r.Config.Refresh)}
					if err := cluster.Put(ctx, conn, cluster.RecSecretKeyFailed, cluster.KeyFailure{Pair: failedPair, Until: a.keysHold.until.UTC(), By: host()}, host()); err != nil {
						a.log.Warn("could not record the failed rotation for the other instances; they may try it too", "step", "keys", "err", err)
					}
					break // the cookie's record stands; the key stays the old one
				}
				if err := cluster.Put(ctx, conn, cluster.RecSecretKey, cluster.KeyRecord{Fingerprint: fp(cluster.RecSecretKey, v.current), VersionID: v.current.VersionID, Since: time.Now().UTC()}, host()); err != nil {
					return err
				}
				a.log.Info("the cluster now uses the new secret key; every instance recreates its containers with it within seconds", "step", "keys", "version_id", v.current.VersionID)
				v.secretKey = keyKeep
				if err := a.applyView(v, r.Secrets, true); err != nil {
					return err
				}
			}
			g, err := cluster.Generation(ctx, conn)
			if err != nil {
				return err
			}
			v.generation = g
			return nil
		})
	})
	if err != nil {
		return false, err
	}
	a.sawCluster(v.db, v.generation)
	if rotateErr != nil {
		return false, rotateErr
	}
	after := [2]string{r.Secrets[secrets.SecretKey].Value.Reveal(), r.Secrets[secrets.CookieSecret].Value.Reveal()}
	return before != after, nil
}

// checkRows warns when rows do not decrypt with the key being recorded for
// the first time (an older agent, or a rotation done by hand).
func (a *Agent) checkRows(ctx context.Context, conn *pgx.Conn, key secrets.Secret) error {
	c, err := fernet.CountDecryptable(ctx, conn, fernet.KeyFromSecret(key.Value.Reveal()))
	if err != nil {
		return fmt.Errorf("checking which key the data sources are encrypted with: %w", err)
	}
	if c.OK[0] < c.Total {
		a.log.Warn("recording the secret key although some encrypted rows do not decrypt with it: those data sources or alert destinations are unreadable in Redash",
			"step", "keys", "rows", c.Total, "decrypt", c.OK[0])
	}
	return nil
}

// rotate re-encrypts the rows from the previous key to the current one and
// checks the result with Fernet; on any failure it re-encrypts back and
// checks that too. It runs under the migration lock.
func (a *Agent) rotate(ctx context.Context, conn *pgx.Conn, r *Rendered, v *keyView) error {
	oldK, newK := fernet.KeyFromSecret(v.previous.Value.Reveal()), fernet.KeyFromSecret(v.current.Value.Reveal())
	count := func() (fernet.Count, error) { return fernet.CountDecryptable(ctx, conn, oldK, newK) }
	before, err := count()
	if err != nil {
		return fmt.Errorf("re-encrypting the data sources for the new secret key: reading them: %w; the previous key stays in use", err)
	}
	readable := before.OK[0] + before.OK[1]
	a.log.Info("[started] re-encrypting the data sources and alert destinations with the new secret key", "step", "keys",
		"rows", before.Total, "on_previous", before.OK[0], "on_new", before.OK[1])
	if readable < before.Total {
		a.log.Warn("some encrypted rows decrypt with neither the previous nor the new secret key; they stay unreadable", "step", "keys", "rows", before.Total-readable)
	}
	if before.OK[0] > 0 {
		fail := func(what string) error {
			back := a.reencrypt(ctx, r, v.current.Value, v.previous.Value)
			after, cerr := count()
			state := "every row decrypts with the previous key again"
			if back != nil || cerr != nil || after.OK[0] < readable {
				state = fmt.Sprintf("putting the rows back on the previous key did not fully work (%d of %d rows decrypt with it; %v): "+
					"run `manage database reencrypt` by hand before changing anything else", after.OK[0], readable, errors.Join(back, cerr))
			}
			return fmt.Errorf("re-encrypting the data sources for the new secret key of %q: %s; %s; nothing was recorded and the previous key stays in use "+
				"(the running containers are unchanged); the agent tries again at the next refresh. If it keeps failing, put the previous value back as AWSCURRENT",
				v.current.Ref.SecretID, what, state)
		}
		if err := a.reencrypt(ctx, r, v.previous.Value, v.current.Value); err != nil {
			return fail(err.Error())
		}
		after, err := count()
		if err != nil {
			return fail("checking the result: " + err.Error())
		}
		if after.OK[1] < readable {
			return fail(fmt.Sprintf("after reencrypt only %d of %d rows decrypt with the new key (Redash 9.x does not re-encrypt alert destinations)", after.OK[1], readable))
		}
	}
	a.log.Info("[finished] re-encrypting the data sources and alert destinations with the new secret key", "step", "keys", "rows", readable)
	return nil
}

// reencrypt runs one reencrypt one-off from old to new on this converge's
// image (pulled first when missing).
func (a *Agent) reencrypt(ctx context.Context, r *Rendered, old, new secrets.Value) error {
	eng, err := a.docker()
	if err != nil {
		return err
	}
	defer eng.Close()
	if err := eng.WaitDaemon(ctx, DockerWait); err != nil {
		return err
	}
	d, err := a.desired(*r)
	if err != nil {
		return err
	}
	if id, err := eng.ImageID(ctx, r.Config.Image); err != nil || id == "" {
		if err := eng.EnsureImages(ctx, d); err != nil {
			return err
		}
	}
	code, tail, err := migrate.Reencrypt(ctx, migrate.ReencryptOptions{
		Project: r.Project.Name, Service: compose.ServerService, Image: r.Config.Image,
		Env: r.State.Env, Old: old, New: new, Runner: eng,
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return fmt.Errorf("`manage database reencrypt` in a one-off of %q exited %d; last log lines:\n%s", r.Config.Image, code, indent(tail))
	}
	return nil
}

func indent(s string) string { return "  " + strings.ReplaceAll(s, "\n", "\n  ") }

// checkKeys is doctor's look at the two keys: what the records say against
// Secrets Manager, read only.
func (a *Agent) checkKeys(r Rendered) doctor.Result {
	v := r.keys
	switch {
	case r.Config.Provider == config.ProviderLocal:
		return doctor.Result{Status: doctor.OK, Detail: "provider local: the secret key and cookie secret never rotate, so nothing is coordinated"}
	case !v.checked:
		return doctor.Result{Status: doctor.Warn, Detail: "the cluster's key records (schema " + cluster.Schema + ") could not be read",
			Fix: "see the database check; until they are read, a rotated secret key is not applied safely"}
	}
	switch v.secretKey {
	case keyRefuseNoReencrypt:
		return doctor.Result{Status: doctor.Warn, Detail: v.note, Fix: "upgrade to Redash 10 or later, or put the previous value back as AWSCURRENT"}
	case keyUnknown:
		return doctor.Result{Status: doctor.Fail, Detail: v.note, Fix: "put the value the cluster records back as AWSCURRENT (see the detail)"}
	case keyRotate:
		return doctor.Result{Status: doctor.Warn, Detail: v.note + "; the next converge (up, or run within seconds) does it"}
	}
	if v.cookie == keyFollow {
		return doctor.Result{Status: doctor.Warn, Detail: "the cookie secret changed in Secrets Manager; the next converge records it and users will have to log in again"}
	}
	if v.secretKey == keyRecord || v.cookie == keyRecord {
		return doctor.Result{Status: doctor.OK, Detail: "not recorded yet: the next up records the current values"}
	}
	return doctor.Result{Status: doctor.OK, Detail: "the secret key and the cookie secret are the values the cluster records"}
}
