package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/redash-agent/redash-agent/internal/atomicfile"
	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/dirlock"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/migrate"
)

// LockWait bounds how long a second agent waits for the first one's lock on --dir.
const LockWait = 5 * time.Minute

// DockerWait bounds how long up, run and migrate wait for the Docker Engine
// to answer: at boot dockerd may start after the agent (or restart), and a
// unit restart would only write the files again. Two minutes covers a slow
// boot and stays inside the step's EXTEND_TIMEOUT_USEC.
const DockerWait = 2 * time.Minute

// UpResult says what one converge did.
type UpResult struct {
	Config  config.Config
	Files   Changes
	Migrate migrate.Result
	Plan    engine.Plan
	// KeysNote says why the secret key in use is not Secrets Manager's
	// AWSCURRENT (a refused or pending rotation), for STATUS; "" when it is.
	KeysNote string
}

// docker connects to Docker and returns the engine over it; the caller
// closes it.
func (a *Agent) docker() (*engine.Engine, error) {
	c, err := engine.NewDockerClient()
	if err != nil {
		return nil, err
	}
	return &engine.Engine{Docker: c, Logger: a.log, LockDir: a.o.StateDir, HealthTimeout: a.o.HealthTimeout}, nil
}

// dockerFor connects to Docker and returns the engine and its view of r.
// The caller closes the engine.
func (a *Agent) dockerFor(r Rendered) (*engine.Engine, engine.Desired, error) {
	d, err := a.desired(r)
	if err != nil {
		return nil, d, err
	}
	eng, err := a.docker()
	return eng, d, err
}

// Lock takes the lock on --dir so two agents never interleave.
func (a *Agent) Lock(ctx context.Context) (*dirlock.Lock, error) {
	if err := os.MkdirAll(a.o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %q: %w", a.o.Dir, err)
	}
	return dirlock.Acquire(ctx, a.o.Dir, a.o.lockWait(), a.log)
}

// Up is the whole boot pipeline once: render, write, observe, plan, pull,
// check that the host can run the images, start the bundled services
// (provider local), migrate, converge, wait until ready; each one logged
// step. The plan is made before anything changes and decides everything the
// engine does; its stages are applied as separate steps because the
// migration runs between them: after the images are present (it runs the
// new image) and the bundled database runs (it migrates that), before any
// Redash container of the new version starts. A failure before "converge
// containers" leaves the running Redash containers untouched.
func (a *Agent) Up(ctx context.Context) (UpResult, error) {
	var res UpResult
	// Rendering only reads (tags, secrets), so it may run before the lock;
	// an instance with nothing to configure then never creates --dir.
	r, err := a.render(ctx, true)
	if err != nil {
		return res, err
	}
	res.Config = r.Config
	a.setMetrics(r) // run's publisher follows the configuration, whatever the converge does next
	a.scale.redis = r.State.Redis
	lock, err := a.Lock(ctx)
	if err != nil {
		return res, err
	}
	defer lock.Release()
	// The secret key and cookie secret the cluster agreed on (keys.go):
	// recorded, followed or re-encrypted under the migration lock.
	if changed, err := a.settleKeys(ctx, &r); err != nil {
		return res, err
	} else if changed {
		if err := a.renderFiles(&r); err != nil {
			return res, err
		}
	}
	res.KeysNote = r.keys.note
	if res.Files, err = a.Write(ctx, r); err != nil {
		return res, err
	}
	// The file keeps the 8.x scheduler; the engine gets it only while this
	// instance holds the lease (lease.go).
	r, sched := a.scheduler(ctx, r, false)
	defer sched.done()
	// An upgrade by another instance keeps the job services out (pause.go).
	r, pause := a.pauseJobs(ctx, r)
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return res, err
	}
	defer eng.Close()
	if a.sched != nil {
		a.sched.last = d
	}
	a.pause.last = d
	// At boot dockerd may still be starting: wait for it (bounded, logged)
	// instead of failing after the files were written.
	if err := eng.WaitDaemon(ctx, DockerWait); err != nil {
		return res, err
	}
	o, err := a.observe(ctx, eng, d)
	if err != nil {
		return res, err
	}
	res.Plan = a.plan(ctx, d, o, sched)
	pause.explain(&res.Plan)
	if err := a.step(ctx, "ensure images", func(ctx context.Context) error {
		return eng.Apply(ctx, d, res.Plan, engine.StageImages)
	}); err != nil {
		return res, err
	}
	if err := a.checkHost(ctx, r, eng, d); err != nil {
		return res, err
	}
	if err := a.startBacking(ctx, eng, d, res.Plan); err != nil {
		return res, err
	}
	if res.Migrate, err = a.Migrate(ctx, r, eng); err != nil {
		return res, err
	}
	// Each service is waited on as soon as it started, while the others
	// still start: the plan puts each wait after its own start.
	err = a.step(ctx, stepConvergeContainers, func(ctx context.Context) error {
		return eng.Apply(ctx, d, res.Plan, engine.StageContainers, engine.StageReady)
	})
	return res, err
}

// observe is the step that reads what Docker holds for the project.
func (a *Agent) observe(ctx context.Context, eng *engine.Engine, d engine.Desired) (engine.Observed, error) {
	var o engine.Observed
	err := a.step(ctx, "observe containers", func(ctx context.Context) error {
		var err error
		o, err = eng.Observe(ctx, d)
		return err
	})
	return o, err
}

// plan is the pure step that decides everything Up does to the containers.
func (a *Agent) plan(ctx context.Context, d engine.Desired, o engine.Observed, sched schedulerChoice) engine.Plan {
	var p engine.Plan
	_ = a.step(ctx, "plan", func(context.Context) error {
		p = engine.ComputePlan(d, o)
		sched.explain(&p)
		if p.Mutations() > 0 {
			a.log.Info("plan", "step", "plan", "changes", p.Mutations(), "plan", p.String())
		}
		return nil
	})
	return p
}

// Plan renders and observes, and returns what Up would do, changing
// nothing; note says what up would do with the 8.x scheduler ("" when the
// lease does not apply). The returned Rendered is the whole configuration.
func (a *Agent) Plan(ctx context.Context) (r Rendered, p engine.Plan, note string, err error) {
	r, err = a.Render(ctx)
	if err != nil {
		return r, p, "", err
	}
	view, sched := a.scheduler(ctx, r, true)
	view, pause := a.pausePeek(ctx, view)
	eng, d, err := a.dockerFor(view)
	if err != nil {
		return r, p, sched.note, err
	}
	defer eng.Close()
	o, err := a.observe(ctx, eng, d)
	if err != nil {
		return r, p, sched.note, err
	}
	p = a.plan(ctx, d, o, sched)
	pause.explain(&p)
	return r, p, sched.note, nil
}

// startBacking is the step that starts provider local's bundled postgres
// and redis (the plan's StageBacking), so the migration can reach the
// database; a plan without them has nothing to do here.
func (a *Agent) startBacking(ctx context.Context, eng *engine.Engine, d engine.Desired, p engine.Plan) error {
	if !p.Has(engine.StageBacking) {
		return nil
	}
	return a.step(ctx, "start bundled postgres and redis", func(ctx context.Context) error {
		return eng.Apply(ctx, d, p, engine.StageBacking)
	})
}

// dbTarget is the database as the agent, on the host, reaches it: for the
// bundled postgres, which publishes no port, its container's address on the
// project network (the one-off, on that network, still uses the name).
func (a *Agent) dbTarget(ctx context.Context, r Rendered, eng *engine.Engine) (desired.DB, error) {
	db := r.State.DB
	if !r.State.Spec.Local {
		return db, nil
	}
	ip, err := eng.ServiceAddress(ctx, r.Project.Name, compose.PostgresService)
	if err != nil {
		return db, fmt.Errorf("reaching the bundled postgres: %w", err)
	}
	db.Host = ip
	return db, nil
}

// localDBWait bounds the wait for a just started bundled postgres to accept
// connections: initdb on an empty volume takes seconds, not minutes.
const localDBWait = 2 * time.Minute

// waitLocalDB waits until the bundled postgres accepts TCP connections, and
// fails at once when its container stops (a crash at start) instead of
// leaving the migration to retry "connection refused" for its deadline.
func (a *Agent) waitLocalDB(ctx context.Context, r Rendered, eng *engine.Engine, db desired.DB) error {
	if !r.State.Spec.Local {
		return nil
	}
	name := compose.ContainerName(r.Project.Name, compose.PostgresService)
	deadline := time.Now().Add(localDBWait)
	for attempt := 1; ; attempt++ {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", db.Addr())
		if err == nil {
			c.Close()
			return nil
		}
		if _, serr := eng.ServiceAddress(ctx, r.Project.Name, compose.PostgresService); serr != nil {
			return fmt.Errorf("waiting for the bundled postgres to accept connections: %w", serr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the bundled postgres (container %s) did not accept connections on %s within %s: see `docker logs %s`", name, db.Addr(), localDBWait, name)
		}
		if err := backoff.Sleep(ctx, backoff.Policy{Base: 100 * time.Millisecond, Max: time.Second}.Next(attempt)); err != nil {
			return fmt.Errorf("waiting for the bundled postgres: %w", err)
		}
	}
}

// explainLocalAuth turns the bundled postgres refusing the local secrets'
// password into what happened and what to do: the postgres image sets the
// password only when it initialises an empty volume, so a refusal means the
// volume holds a database made with another state directory's secrets.
func (a *Agent) explainLocalAuth(r Rendered, err error) error {
	if !r.State.Spec.Local || !migrate.IsAuthFailure(err) {
		return err
	}
	volume := compose.BundledDBVolume(r.Project.Name)
	return exitcode.ConfigError(fmt.Errorf("the bundled postgres refused the password in %s: its volume %s was initialised with another password "+
		"(a fresh or replaced state directory next to an old volume). Either restore that state directory's %s (from a backup), "+
		"or start with an empty database, losing its data: `redash-agent down --remove`, then `docker volume rm %s`, then `redash-agent up` again",
		a.localSecrets(), volume, filepath.Base(a.localSecrets()), volume))
}

// Migrate creates or upgrades the database once per cluster, before any
// server of the new version starts. With provider local the bundled
// postgres must run already (startBacking).
func (a *Agent) Migrate(ctx context.Context, r Rendered, eng *engine.Engine) (migrate.Result, error) {
	var res migrate.Result
	err := a.step(ctx, "migrate database", func(ctx context.Context) error {
		ref := r.Config.Image
		imageID, err := eng.ImageID(ctx, ref)
		if err == nil && imageID == "" {
			err = fmt.Errorf("not present: run up (it pulls missing images) or prepare-image")
		}
		if err != nil {
			return fmt.Errorf("inspecting image %q before migrating: %w", ref, err)
		}
		db, err := a.dbTarget(ctx, r, eng)
		if err != nil {
			return err
		}
		if err := a.waitLocalDB(ctx, r, eng, db); err != nil {
			return err
		}
		res, err = migrate.Run(ctx, migrate.Options{
			DB:         db,
			Image:      ref,
			ImageID:    imageID,
			Project:    r.Project.Name,
			Service:    compose.ServerService,
			Env:        r.State.Env,
			Role:       r.Config.Role,
			HeadsCache: a.headsCache(),
			Runner:     eng,
			Logger:     a.log,
			Instance:   instanceName(r.Config.Project),
			PauseOld:   a.pauseOld(r, eng),
			DrainWait:  drainWait(r),
		})
		if err != nil {
			return a.explainRefusedCredentials(r, a.explainLocalAuth(r, err))
		}
		a.log.Info("database state", "step", "migrate database", "before", res.Before, "after", res.After, "ran", res.Ran, "head", res.Head)
		if res.Generation > 0 && !r.State.Spec.Local {
			// This converge's own create_db/upgrade records are for the
			// other instances: they must not wake this one's watch.
			a.sawCluster(db, res.Generation)
		}
		return nil
	})
	return res, err
}

// ensureImages is the pipeline step that makes the images present (pulling
// only what is missing) before the migration runs one of them.
func (a *Agent) ensureImages(ctx context.Context, eng *engine.Engine, d engine.Desired) error {
	return a.step(ctx, "ensure images", func(ctx context.Context) error { return eng.EnsureImages(ctx, d) })
}

// Files in the state directory. prepare-image removes all but the heads
// cache, which it makes for the image (bakeRevisions).
func (a *Agent) headsCache() string   { return filepath.Join(a.o.StateDir, "heads.json") }
func (a *Agent) hashKeyPath() string  { return filepath.Join(a.o.StateDir, "hash-key") }
func (a *Agent) localSecrets() string { return filepath.Join(a.o.StateDir, "local-secrets.json") }

// desired is the engine's view of the rendered state.
func (a *Agent) desired(r Rendered) (engine.Desired, error) {
	key, err := a.hashKey()
	if err != nil {
		return engine.Desired{}, err
	}
	return engine.Desired{Project: r.Project, Env: r.State.Env, HashKey: key, Ready: readiness(r)}, nil
}

// hashKey is the host-local key that secrets enter the config hash under:
// a label then reveals nothing, not even whether two hosts share a password.
func (a *Agent) hashKey() ([]byte, error) {
	path := a.hashKeyPath()
	key, err := os.ReadFile(path)
	if err == nil && len(key) >= 32 {
		return key, nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the config hash key %q: %w", path, err)
	}
	if a.o.ReadOnly && !a.o.KeepState {
		// A dry run keeps no key: with none on disk no container was
		// labelled under one, and every hash compares as stale either way.
		key = make([]byte, 32)
		_, _ = rand.Read(key)
		return key, nil
	}
	if err := os.MkdirAll(a.o.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory %q: %w", a.o.StateDir, err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	if _, err := atomicfile.WriteFile(path, key, 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// MigrateOnly renders (without writing) and runs the migration step alone.
// With provider local the database is the bundled postgres: the files are
// written and it is started first (only it and redis, as up would start
// them), since there is nothing to migrate without it.
func (a *Agent) MigrateOnly(ctx context.Context) (migrate.Result, error) {
	r, err := a.Render(ctx)
	if err != nil {
		return migrate.Result{}, err
	}
	if r.State.Spec.Local {
		if _, err := a.Write(ctx, r); err != nil {
			return migrate.Result{}, err
		}
	}
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return migrate.Result{}, err
	}
	defer eng.Close()
	if err := eng.WaitDaemon(ctx, DockerWait); err != nil {
		return migrate.Result{}, err
	}
	if err := a.ensureImages(ctx, eng, d); err != nil {
		return migrate.Result{}, err
	}
	if r.State.Spec.Local {
		o, err := a.observe(ctx, eng, d)
		if err != nil {
			return migrate.Result{}, err
		}
		// Only the plan's backing stage is applied, so the 8.x scheduler
		// lease has no say here.
		if err := a.startBacking(ctx, eng, d, a.plan(ctx, d, o, schedulerChoice{run: true})); err != nil {
			return migrate.Result{}, err
		}
	}
	return a.Migrate(ctx, r, eng)
}

// Down stops the project's containers; remove also deletes them and the
// network. It needs no configuration beyond the project name.
func (a *Agent) Down(ctx context.Context, remove bool) error {
	project := a.projectName()
	eng, err := a.docker()
	if err != nil {
		return err
	}
	defer eng.Close()
	return a.step(ctx, "down", func(ctx context.Context) error { return eng.Down(ctx, project, remove) })
}

// projectName is the project from flags or the config file, without
// reading IMDS: `down` must work when AWS does not.
func (a *Agent) projectName() string {
	if p := a.o.Set["project"]; p != "" {
		return p
	}
	if file, _, _, err := a.localLayers(); err == nil && file.Values["project"] != "" {
		return file.Values["project"]
	}
	return compose.DefaultProject
}

// StatusReport is `status`: the containers and the database.
type StatusReport struct {
	Services []engine.ServiceStatus `json:"services"`
	Database string                 `json:"database"`
	// SchedulerLease says whether this instance holds the 8.x scheduler
	// lease (lease.go); empty when the configuration needs none.
	SchedulerLease string `json:"scheduler_lease,omitempty"`
}

// Status reports each service and the database state. It changes nothing.
func (a *Agent) Status(ctx context.Context) (StatusReport, error) {
	var rep StatusReport
	r, err := a.Render(ctx)
	if err != nil {
		return rep, err
	}
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return rep, err
	}
	defer eng.Close()
	if rep.Services, err = eng.Status(ctx, d); err != nil {
		return rep, err
	}
	rep.Database = a.databaseState(ctx, r, eng).text
	if needsLease(r) {
		rep.SchedulerLease, _ = a.SchedulerLease(ctx, r)
	}
	return rep, nil
}

// dbState is what databaseState learned: text for people ("empty",
// "behind", "current" or why it is not known; never credentials), and
// what doctor picks its fix by (never the text).
type dbState struct {
	text   string
	schema migrate.State // StateUnknown unless the database answered
	// noHead: the image's head revision is not cached yet; wrongPassword:
	// the bundled postgres refused the local secrets (explainLocalAuth).
	noHead, wrongPassword bool
	// upgrading: the agent's records say a schema upgrade is under way.
	upgrading bool
}

func (a *Agent) databaseState(ctx context.Context, r Rendered, eng *engine.Engine) dbState {
	unknown := func(why string) dbState { return dbState{text: "unknown: " + why, schema: migrate.StateUnknown} }
	imageID, err := eng.ImageID(ctx, r.Config.Image)
	if err != nil || imageID == "" {
		return unknown(fmt.Sprintf("image %q is not present", r.Config.Image))
	}
	head, ok := migrate.CachedHead(a.headsCache(), imageID)
	if !ok {
		st := unknown("the image's head revision is not known yet (run `redash-agent migrate`)")
		st.noHead = true
		return st
	}
	db, err := a.dbTarget(ctx, r, eng)
	if err != nil {
		return unknown(err.Error())
	}
	revisions, _ := migrate.CachedHistory(a.headsCache(), imageID)
	st, err := migrate.InspectKnown(ctx, db, head, revisions)
	if err != nil {
		s := unknown(a.explainLocalAuth(r, err).Error())
		s.wrongPassword = r.State.Spec.Local && migrate.IsAuthFailure(err)
		return s
	}
	text := string(st) + " (image head " + head + ")"
	if st == migrate.StateAhead {
		text += ": " + migrate.AheadAdvice
	}
	out := dbState{text: text, schema: st}
	if !r.State.Spec.Local {
		// An upgrade under way: old job services are paused (pause.go).
		if cs, err := a.readCluster(ctx, db); err == nil && cs.Upgrade.InProgress() {
			u := cs.Upgrade
			out.upgrading = true
			out.text += fmt.Sprintf("; an upgrade %s -> %s by %s is %s since %s (old schedulers and workers are paused)",
				u.FromHead, u.ToHead, u.By, u.Phase, u.StartedAt.UTC().Format(time.RFC3339))
		}
	}
	return out
}

// DatabaseState renders and inspects the database, bounded in time, for
// `config --db`. It never fails: what it cannot learn it says.
func (a *Agent) DatabaseState(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	q := a.quiet()
	r, err := q.Render(ctx)
	if err != nil {
		return "unknown: " + firstLine(err.Error())
	}
	eng, err := q.docker()
	if err != nil {
		return "unknown: " + err.Error()
	}
	defer eng.Close()
	return q.databaseState(ctx, r, eng).text
}
