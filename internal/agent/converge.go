package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/redash-agent/redash-agent/internal/atomicfile"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/dirlock"
	"github.com/redash-agent/redash-agent/internal/engine"
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
// migrate, converge, wait until ready; each one logged step. The plan is
// made before anything changes and decides everything the engine does; its
// stages are applied as separate steps because the migration runs between
// them: after the images are present (it runs the new image), before any
// container of the new version starts. A failure before "converge
// containers" leaves running containers untouched.
func (a *Agent) Up(ctx context.Context) (UpResult, error) {
	var res UpResult
	// Rendering only reads (tags, secrets), so it may run before the lock;
	// an instance with nothing to configure then never creates --dir.
	r, err := a.Render(ctx)
	if err != nil {
		return res, err
	}
	res.Config = r.Config
	lock, err := a.Lock(ctx)
	if err != nil {
		return res, err
	}
	defer lock.Release()
	if res.Files, err = a.Write(ctx, r); err != nil {
		return res, err
	}
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return res, err
	}
	defer eng.Close()
	// At boot dockerd may still be starting: wait for it (bounded, logged)
	// instead of failing after the files were written.
	if err := eng.WaitDaemon(ctx, DockerWait); err != nil {
		return res, err
	}
	o, err := a.observe(ctx, eng, d)
	if err != nil {
		return res, err
	}
	res.Plan = a.plan(ctx, d, o)
	if err := a.step(ctx, "ensure images", func(ctx context.Context) error {
		return eng.Apply(ctx, d, res.Plan, engine.StageImages)
	}); err != nil {
		return res, err
	}
	if res.Migrate, err = a.Migrate(ctx, r, eng); err != nil {
		return res, err
	}
	if err := a.step(ctx, "converge containers", func(ctx context.Context) error {
		return eng.Apply(ctx, d, res.Plan, engine.StageContainers)
	}); err != nil {
		return res, err
	}
	err = a.step(ctx, "wait ready", func(ctx context.Context) error {
		return eng.Apply(ctx, d, res.Plan, engine.StageReady)
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
func (a *Agent) plan(ctx context.Context, d engine.Desired, o engine.Observed) engine.Plan {
	var p engine.Plan
	_ = a.step(ctx, "plan", func(context.Context) error {
		p = engine.ComputePlan(d, o)
		if p.Mutations() > 0 {
			a.log.Info("plan", "step", "plan", "changes", p.Mutations(), "plan", p.String())
		}
		return nil
	})
	return p
}

// Plan renders and observes, and returns what Up would do, changing nothing.
func (a *Agent) Plan(ctx context.Context) (Rendered, engine.Plan, error) {
	r, err := a.Render(ctx)
	if err != nil {
		return r, engine.Plan{}, err
	}
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return r, engine.Plan{}, err
	}
	defer eng.Close()
	o, err := a.observe(ctx, eng, d)
	if err != nil {
		return r, engine.Plan{}, err
	}
	return r, a.plan(ctx, d, o), nil
}

// Migrate creates or upgrades the database once per cluster, before any
// server of the new version starts.
func (a *Agent) Migrate(ctx context.Context, r Rendered, eng *engine.Engine) (migrate.Result, error) {
	var res migrate.Result
	if r.State.Spec.Local {
		// The bundled postgres is only reachable inside the project
		// network, not from the host where the agent holds the lock.
		a.log.Info("skipping database migration: provider local bundles its own postgres", "step", "migrate database")
		return res, nil
	}
	err := a.step(ctx, "migrate database", func(ctx context.Context) error {
		ref := r.Config.Image
		imageID, err := eng.ImageID(ctx, ref)
		if err == nil && imageID == "" {
			err = fmt.Errorf("not present: run up (it pulls missing images) or prepare-image")
		}
		if err != nil {
			return fmt.Errorf("inspecting image %q before migrating: %w", ref, err)
		}
		res, err = migrate.Run(ctx, migrate.Options{
			DB:         r.State.DB,
			Image:      ref,
			ImageID:    imageID,
			Project:    r.Project.Name,
			Service:    compose.ServerService,
			Env:        r.State.Env,
			Role:       r.Config.Role,
			HeadsCache: a.headsCache(),
			Runner:     eng,
			Logger:     a.log,
		})
		if err != nil {
			return err
		}
		a.log.Info("database state", "step", "migrate database", "before", res.Before, "after", res.After, "ran", res.Ran, "head", res.Head)
		return nil
	})
	return res, err
}

// ensureImages is the pipeline step that makes the images present (pulling
// only what is missing) before the migration runs one of them.
func (a *Agent) ensureImages(ctx context.Context, eng *engine.Engine, d engine.Desired) error {
	return a.step(ctx, "ensure images", func(ctx context.Context) error { return eng.EnsureImages(ctx, d) })
}

// Files in the state directory; none may be baked into an AMI.
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
func (a *Agent) MigrateOnly(ctx context.Context) (migrate.Result, error) {
	r, err := a.Render(ctx)
	if err != nil {
		return migrate.Result{}, err
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
	rep.Database = a.databaseState(ctx, r, eng)
	return rep, nil
}

// databaseState is "empty", "behind", "current" or why it is not known;
// it never includes credentials.
func (a *Agent) databaseState(ctx context.Context, r Rendered, eng *engine.Engine) string {
	if r.State.Spec.Local {
		return "bundled postgres (not inspected from the host)"
	}
	imageID, err := eng.ImageID(ctx, r.Config.Image)
	if err != nil || imageID == "" {
		return fmt.Sprintf("unknown: image %q is not present", r.Config.Image)
	}
	head, ok := migrate.CachedHead(a.headsCache(), imageID)
	if !ok {
		return "unknown: the image's head revision is not known yet (run `redash-agent migrate`)"
	}
	st, err := migrate.Inspect(ctx, r.State.DB, head)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return string(st) + " (image head " + head + ")"
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
	return q.databaseState(ctx, r, eng)
}
