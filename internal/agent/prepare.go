package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/dirlock"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// bakeLayer stands in for the endpoints an image build does not have: the
// images of a layout do not depend on them, and validation wants them.
func bakeLayer(given ...config.Layer) config.Layer {
	set := map[string]bool{}
	for _, l := range given {
		for k := range l.Values {
			set[k] = true
		}
	}
	vals := map[string]string{}
	if !set["db-endpoint"] && !set["db-secret"] {
		vals["db-endpoint"] = "unused.invalid:5432"
	}
	if !set["redis-endpoint"] && !set["redis-url"] {
		vals["redis-endpoint"] = "unused.invalid:6379"
	}
	return config.Layer{Source: config.SourceDefault, Origin: "prepare-image", Values: vals}
}

// PrepareImage is what the Image Builder build phase runs: pull the images of
// the configured version so that boot needs no pull, then leave no
// containers, env file, state or lock in the image. It reads no instance tags
// and no secrets: the build instance has neither.
//
// It reports each image once and each file it removed with why: the
// generated local secrets (provider local) are one host's secrets, which an
// AMI must not carry to every instance launched from it.
func (a *Agent) PrepareImage(ctx context.Context) (PrepareResult, error) {
	var res PrepareResult
	var cfg config.Config
	err := a.step(ctx, "resolve configuration", func(ctx context.Context) error {
		file, _, flags, err := a.localLayers()
		if err != nil {
			return err
		}
		cfg, err = config.Resolve(config.Defaults(), bakeLayer(file, flags), file, flags)
		return err
	})
	if err != nil {
		return res, err
	}
	// Every role's images: the AMI serves web and worker instances alike.
	cfg.Role = compose.RoleAll
	st, err := desired.Build(cfg, placeholderSecrets(cfg), a.o.Dir)
	if err != nil {
		return res, exitcode.ConfigError(err)
	}
	spec := st.Spec
	if cfg.Provider == config.ProviderLocal {
		spec.Local = true
	}
	proj, err := compose.Project(spec)
	if err != nil {
		return res, exitcode.ConfigError(fmt.Errorf("building the compose project: %w", err))
	}
	eng, err := a.docker()
	if err != nil {
		return res, err
	}
	defer eng.Close()
	d := engine.Desired{Project: proj, Env: map[string]string{}, HashKey: []byte("prepare-image")}
	if err := a.step(ctx, "pull images", func(ctx context.Context) error { return eng.EnsureImages(ctx, d) }); err != nil {
		return res, err
	}
	seen := map[string]bool{}
	for _, s := range proj.Services {
		if !seen[s.Image] {
			seen[s.Image] = true
			res.Images = append(res.Images, s.Image)
		}
	}
	sort.Strings(res.Images)
	res.Kept = a.bakeRevisions(ctx, eng, cfg, st)
	err = a.step(ctx, "clean the image", func(ctx context.Context) error {
		if err := eng.Down(ctx, proj.Name, true); err != nil {
			return err
		}
		if cfg.Provider == config.ProviderLocal {
			// The bundled database was initialised with the local secrets
			// removed below: an instance booted from the image generates
			// new ones, which that database would refuse.
			name := compose.BundledDBVolume(proj.Name)
			removed, err := eng.RemoveVolume(ctx, name)
			if err != nil {
				return err
			}
			if removed {
				res.Removed = append(res.Removed, RemovedFile{"docker volume " + name,
					"this host's bundled database, set up with the local secrets removed below: every instance starts an empty one with its own"})
			}
		}
		files, err := a.removeInstanceState()
		res.Removed = append(res.Removed, files...)
		return err
	})
	return res, err
}

// bakeRevisions learns the Redash image's schema head and revision history
// (`manage db heads` and `manage db history` in one-offs, with the
// placeholder settings) into a fresh heads cache, which the image keeps: it
// is keyed by image ID, the same on every instance the AMI launches, and
// holds no secret. Each new instance then skips those one-offs at its first
// boot (seconds each with real Redash, which imports the whole app). A
// failure costs only that: it is a warning, and the cache is not kept.
func (a *Agent) bakeRevisions(ctx context.Context, eng *engine.Engine, cfg config.Config, st desired.State) []RemovedFile {
	path := a.headsCache()
	learn := func(ctx context.Context) error {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the old heads cache %q: %w", path, err)
		}
		id, err := eng.ImageID(ctx, cfg.Image)
		if err != nil {
			return err
		}
		if id == "" {
			return fmt.Errorf("image %q is not present", cfg.Image)
		}
		o := migrate.Options{Image: cfg.Image, ImageID: id, Project: cfg.Project, Service: compose.ServerService,
			Env: st.Env, HeadsCache: path, Runner: eng, Logger: a.log}
		if _, err := migrate.Head(ctx, o); err != nil {
			return err
		}
		_, err = migrate.History(ctx, o)
		return err
	}
	var kept []RemovedFile
	_ = a.step(ctx, "learn the image's schema revisions", func(ctx context.Context) error {
		if err := learn(ctx); err != nil {
			// Not a failed bake: instances learn them at boot, as without a cache.
			a.log.Warn("the image will not carry its schema revisions: every instance learns them at its first boot, in one-off containers of the Redash image", "err", err)
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				a.log.Warn("removing a partial heads cache", "path", path, "err", err)
			}
			return nil
		}
		kept = append(kept, RemovedFile{path, "the image's schema head and revisions, the same for every instance: it spares each one the `manage db heads` and `history` one-offs at its first boot"})
		return nil
	})
	return kept
}

// PrepareResult is what prepare-image did: the images now present (each
// once), the instance files (and, for provider local, the bundled database
// volume) it removed, and the files it made for every instance and kept.
type PrepareResult struct {
	Images  []string
	Removed []RemovedFile
	Kept    []RemovedFile
}

// RemovedFile is one file prepare-image deleted, and why.
type RemovedFile struct{ Path, Why string }

// removeInstanceState deletes what must never be baked into an AMI: the env
// file (secrets), the lock, the hash key and caches, and generated secrets.
// It returns what it removed, each with the reason, for the operator.
func (a *Agent) removeInstanceState() ([]RemovedFile, error) {
	var removed []RemovedFile
	var errs []error
	remove := func(p, why string) {
		err := os.RemoveAll(p)
		if _, statErr := os.Lstat(p); err == nil && errors.Is(statErr, fs.ErrNotExist) {
			removed = append(removed, RemovedFile{p, why})
		} else if err != nil {
			errs = append(errs, fmt.Errorf("removing %q: %w", p, err))
		}
	}
	for _, f := range []RemovedFile{
		{filepath.Join(a.o.Dir, compose.EnvFileName), "this host's rendered settings and secrets"},
		{filepath.Join(a.o.Dir, compose.FileName), "rendered for this host; every instance renders its own at boot"},
		{filepath.Join(a.o.Dir, dirlock.FileName), "a lock file: an image carries none"},
	} {
		if _, err := os.Lstat(f.Path); err == nil {
			remove(f.Path, f.Why)
		}
	}
	entries, err := os.ReadDir(a.o.StateDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("reading state directory %q: %w", a.o.StateDir, err))
	}
	for _, e := range entries {
		p := filepath.Join(a.o.StateDir, e.Name())
		if p == a.headsCache() {
			continue // bakeRevisions made it for every instance (or removed it)
		}
		why := "state of this host: every instance makes its own"
		switch p {
		case a.localSecrets():
			why = "secrets generated for this host (provider local): an AMI must not give every instance the same secrets; " +
				"each instance generates its own. A database set up with them on this host needs them: restore from a backup if that was wanted"
		case a.hashKeyPath():
			why = "this host's config-hash key: every instance makes its own"
		}
		remove(p, why)
	}
	return removed, errors.Join(errs...)
}

// placeholderSecrets satisfies desired.Build without fetching anything: the
// images to pull do not depend on secret values, and nothing rendered from
// them is kept.
func placeholderSecrets(cfg config.Config) map[string]secrets.Secret {
	out := map[string]secrets.Secret{}
	for name, ref := range cfg.Secrets {
		v := "unused"
		if name == secrets.DBSecret {
			v = `{"username":"unused","password":"unused","host":"unused.invalid","port":5432}`
		}
		out[name] = secrets.Secret{Ref: ref, Value: secrets.NewValue(v)}
	}
	return out
}
