// Package agent is the boot pipeline of docs/design.md, top to bottom:
//
//	imds tags -> config.Resolve -> secrets.Fetch -> envfile/compose render -> host lock, atomic write
//	  -> engine.Observe -> engine.ComputePlan (pure) -> apply: images -> migrate (cluster lock)
//	  -> apply: containers, each waited ready after its start -> sd_notify
//
// The plan decides everything that happens to Docker, in order; Apply runs its
// stages in separate calls (the containers together with their readiness
// waits), so migrations sit between the image pulls and the first container a
// new version starts (Agent.Up reads exactly so).
//
// Each step is one call, logged as [started]/[finished]/[failed] so the
// journal reads like a checklist, and wrapped in one error that says what to
// do. The pure steps (config, desired, compose, envfile render, plan) live in
// their own packages; this package owns the side effects' order.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/redash-agent/redash-agent/internal/atomicfile"
	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/envfile"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/imds"
	"github.com/redash-agent/redash-agent/internal/metrics"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// DefaultStateDir holds the generated local secrets, the hash key and caches.
const DefaultStateDir = "/var/lib/redash-agent"

// Options are the command line's settings.
type Options struct {
	Dir          string
	StateDir     string
	ConfigFile   string
	Provider     string            // --provider; "" = config.yaml or aws
	Set          map[string]string // --set key=value, the flag layer
	IMDSDeadline time.Duration
	// LockWait bounds the wait for another agent's lock on Dir (default LockWait).
	LockWait time.Duration
	// HealthTimeout bounds the wait for the server's /ping (engine default when 0).
	HealthTimeout time.Duration
	Logger        *slog.Logger
	Status        func(string) // STATUS= for systemd; may be nil
	// ReadOnly is for dry runs (render --dry-run, --plan): local secrets and
	// the hash key that do not exist yet are made in memory only, so the
	// state directory is left exactly as it was.
	ReadOnly bool
	// KeepState, with ReadOnly, still creates the hash key and provider
	// local's secrets when missing (render --plan): the hashes a plan prints
	// are then the ones up uses. Nothing else is written.
	KeepState bool
}

func (o Options) lockWait() time.Duration {
	if o.LockWait > 0 {
		return o.LockWait
	}
	return LockWait
}

// Agent runs the pipeline's steps.
type Agent struct {
	o   Options
	log *slog.Logger
	// The remote services the agent reads, behind the calls it makes: New
	// sets the real clients, unit tests fakes (tailscale's awsstore
	// newStore(…, client) pattern).
	remote remotes
	// secretsPolicy bounds each Secrets Manager fetch: secrets.Boot until
	// the first READY (a boot rides out tens of seconds of trouble), then
	// run switches to the shorter secrets.Refresh so a refresh never holds
	// the loop, or a stop, for a minute.
	secretsPolicy secrets.Policy
	// timings of this converge's steps, for the one-line boot summary.
	timings []timing
	// sched is the 8.x scheduler lease `run` keeps across converges; nil
	// for the one-shot commands (lease.go).
	sched *schedulerLease
	// watch is what run's fast looks compare against (watch.go).
	watch watchState
	// secretWatch is what the look for new secret versions compares
	// against (secretwatch.go).
	secretWatch secretWatch
	// pause is this instance's part in a fleet's schema upgrade (pause.go).
	pause pauseState
	// metrics is run's backlog publisher; nil for the one-shot commands (metrics.go).
	metrics *metrics.Loop
	// scale is what the lifecycle hooks and the drain need (lifecycle.go).
	scale scaleState
	// notConfiguredGrace and tagsPoll are unconfiguredTagsGrace and
	// tagsPollInterval; tests shorten them.
	notConfiguredGrace, tagsPoll time.Duration
	// keysHold spaces failed secret-key re-encryptions (keys.go).
	keysHold keyHold
}

// instanceReader is the one IMDS call the agent makes.
type instanceReader interface {
	Instance(ctx context.Context) (imds.Instance, error)
}

// secretStore is the one call the agent makes to a secret provider.
type secretStore interface {
	Fetch(ctx context.Context, refs []secrets.Ref) (map[string]secrets.Secret, error)
}

var (
	_ instanceReader = (*imds.Client)(nil)
	_ secretStore    = (*secrets.Fetcher)(nil)
	_ secretStore    = (*secrets.LocalStore)(nil)
)

// remotes builds the clients of the remote services. They are constructors,
// not clients, because what they need is known only during a step: the
// IMDS deadlines depend on whether anything is configured locally, and the
// Secrets Manager client on the region the configuration resolves to.
type remotes struct {
	imds    func(imds.Options) instanceReader
	secrets func(ctx context.Context, region string, policy secrets.Policy, log *slog.Logger) (secretStore, error)
}

// awsRemotes are the real IMDSv2 and Secrets Manager clients.
func awsRemotes() remotes {
	return remotes{
		imds: func(o imds.Options) instanceReader { return imds.New(o) },
		secrets: func(ctx context.Context, region string, policy secrets.Policy, log *slog.Logger) (secretStore, error) {
			return secrets.NewAWS(ctx, region, log, secrets.WithPolicy(policy))
		},
	}
}

// New returns an Agent that talks to IMDS and Secrets Manager.
func New(o Options) *Agent { return newAgent(o, awsRemotes()) }

func newAgent(o Options, r remotes) *Agent {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if o.StateDir == "" {
		o.StateDir = DefaultStateDir
	}
	return &Agent{o: o, log: o.Logger, remote: r, secretsPolicy: secrets.Boot,
		notConfiguredGrace: unconfiguredTagsGrace, tagsPoll: tagsPollInterval}
}

// ErrNotConfigured means the instance carries no redash: tags and no
// config.yaml settings: an Image Builder build or test instance. The agent
// exits cleanly (status 0) instead of blocking a boot it was not meant to
// configure. Resolve adds what to do when the instance should run Redash.
var ErrNotConfigured error = exitcode.New(exitcode.OK, "nothing to do: this instance has no redash: tags and no settings in the config file")

// unconfiguredTagsGrace is how long the agent keeps re-reading the tags, when
// they are the only possible configuration, before it calls the instance
// "not configured" (README: 15 s), whether IMDS answers 404 for the tag
// listing or lists tags without a redash: one. Tags given at launch are in
// IMDS as soon as IMDS answers, so a longer wait only delays a boot that has
// nothing to do; a later tag needs a restart of the unit (README).
const unconfiguredTagsGrace = 15 * time.Second

// tagsPollInterval spaces the re-reads during the grace.
const tagsPollInterval = time.Second

// stepConvergeContainers is the step that stops, creates and starts
// containers and waits until each is ready (see stepBudgetFor).
const stepConvergeContainers = "converge containers"

// step runs one pipeline step with [started]/[finished]/[failed] journal lines.
func (a *Agent) step(ctx context.Context, name string, fn func(context.Context) error) error {
	if a.o.Status != nil {
		a.o.Status(name)
	}
	start := time.Now()
	a.log.Info("[started] "+name, "step", name)
	err := fn(ctx)
	took := time.Since(start).Round(time.Millisecond)
	a.timings = append(a.timings, timing{name, took})
	if errors.Is(err, ErrNotConfigured) {
		// Not a failure: there is nothing for the agent to do here.
		a.log.Info("[finished] "+name+": not configured", "step", name, "took", took, "reason", err.Error())
		return err
	}
	if err != nil {
		a.log.Error("[failed] "+name, "step", name, "took", took, "err", err)
		return err
	}
	a.log.Info("[finished] "+name, "step", name, "took", took)
	return nil
}

// localLayers reads the layers that need no AWS: the config file (and
// whether it exists) and the flags.
func (a *Agent) localLayers() (file config.Layer, present bool, flags config.Layer, err error) {
	path := a.o.ConfigFile
	if path == "" {
		path = config.DefaultFile
	}
	file, present, err = config.LoadFile(path)
	if err != nil {
		return file, present, flags, err
	}
	flags = config.Layer{Source: config.SourceFlag, Origin: "flag --set", Values: map[string]string{}}
	for k, v := range a.o.Set {
		flags.Values[k] = v
	}
	if a.o.Provider != "" {
		flags.Values["provider"] = a.o.Provider
	}
	return file, present, flags, nil
}

// Resolved is the configuration with what the layers were.
type Resolved struct {
	Config config.Config
	Tags   map[string]string
}

// Resolve reads the layers (config file, instance tags for provider aws,
// flags, AWS_REGION) and resolves them.
func (a *Agent) Resolve(ctx context.Context) (Resolved, error) {
	var r Resolved
	err := a.step(ctx, "resolve configuration", func(ctx context.Context) error {
		file, present, flags, err := a.localLayers()
		if err != nil {
			return err
		}
		// The provider decides whether IMDS is read at all, so it comes
		// from the layers that need no AWS: flags, then the file.
		provider := config.ProviderAWS
		if v := file.Values["provider"]; v != "" {
			provider = v
		}
		if v := flags.Values["provider"]; v != "" {
			provider = v
		}

		layers := []config.Layer{config.Defaults(), file}
		imdsRegion := ""
		// With no config file settings and no flags, the tags are all there
		// is: an instance without them (an Image Builder build or test
		// instance) must not hold its boot for the whole IMDS deadline.
		nothingLocal := (!present || len(file.Values) == 0) && len(a.o.Set) == 0
		if provider == config.ProviderAWS {
			inst, err := a.readInstance(ctx, nothingLocal)
			if err != nil {
				if errors.Is(err, imds.ErrTagsNotEnabled) {
					if nothingLocal {
						// The imds error's own advice is left out: it is
						// said once, here, for the case at hand.
						return fmt.Errorf("%w (and its metadata tags are not visible): if this instance should run Redash, "+
							"enable InstanceMetadataTags in its launch template's MetadataOptions and tag it", ErrNotConfigured)
					}
					// The config file says Redash should run here, and
					// waiting longer will not make the tags appear.
					return exitcode.ConfigError(fmt.Errorf("reading instance tags from IMDS: %w", err))
				}
				return fmt.Errorf("reading instance tags from IMDS: %w", err)
			}
			r.Tags = inst.Tags
			if !config.HasRedashTags(inst.Tags) && nothingLocal {
				return fmt.Errorf("%w after %s: to run Redash here, tag the instance (e.g. redash:version) and run `systemctl restart redash-agent` (or reboot)", ErrNotConfigured, a.grace())
			}
			layers = append(layers, config.FromTags(inst.Tags))
			imdsRegion = inst.Region
		}
		layers = append(layers, flags)
		cfg, err := config.Resolve(layers...)
		if err != nil {
			return err // a *config.Error: exit 3
		}
		if imdsRegion != "" {
			cfg.Region = imdsRegion
			cfg.Origins["region"] = config.SourceIMDS
		}
		if env := os.Getenv("AWS_REGION"); env != "" {
			cfg.Region = env
			cfg.Origins["region"] = config.SourceEnv
		}
		if cfg.Provider == config.ProviderAWS && cfg.Region == "" {
			return exitcode.ConfigError(errors.New("choosing the AWS region: IMDS gave none and AWS_REGION is not set: set AWS_REGION in the unit's environment"))
		}
		r.Config = cfg
		return nil
	})
	return r, err
}

// readInstance reads the instance and its tags from IMDS. When the tags are
// all the configuration there can be (nothingLocal), "no redash: tags" and
// "tags not visible" are re-read until the grace, counted from the first
// call, has passed: tags added just after launch (by a script or a Lambda
// rather than the launch template) then still configure this boot, and the
// decision takes the same time whichever way IMDS says "nothing".
func (a *Agent) readInstance(ctx context.Context, nothingLocal bool) (imds.Instance, error) {
	until := time.Now().Add(a.grace())
	for attempt := 1; ; attempt++ {
		opts := imds.Options{Deadline: a.o.IMDSDeadline, Logger: a.log}
		if nothingLocal {
			// What is left of the grace, but at least one poll interval:
			// the last re-read starts when the grace is all but spent and
			// must still hear IMDS's answer (a 404 takes more than the
			// millisecond or so left then on a loaded host). Never 0,
			// which means "no bound".
			opts.TagsDeadline = max(time.Until(until), a.tagsPoll, time.Millisecond)
		}
		inst, err := a.remote.imds(opts).Instance(ctx)
		if err == nil {
			a.scale.instance = inst
		}
		nothingYet := errors.Is(err, imds.ErrTagsNotEnabled) || err == nil && !config.HasRedashTags(inst.Tags)
		left := time.Until(until)
		if !nothingLocal || !nothingYet || left <= 0 {
			return inst, err
		}
		wait := min(a.tagsPoll, left)
		a.log.Info("no redash: tags yet; reading them again", "attempt", attempt, "in", wait.Round(time.Millisecond), "grace_left", left.Round(time.Millisecond))
		if err := backoff.Sleep(ctx, wait); err != nil {
			return inst, fmt.Errorf("waiting for the instance's redash: tags: %w", err)
		}
	}
}

// grace is how long an instance with nothing local waits for redash: tags.
func (a *Agent) grace() time.Duration {
	if a.notConfiguredGrace > 0 {
		return a.notConfiguredGrace
	}
	return unconfiguredTagsGrace
}

// FetchSecrets gets every secret the configuration references, in parallel.
func (a *Agent) FetchSecrets(ctx context.Context, cfg config.Config) (map[string]secrets.Secret, error) {
	var got map[string]secrets.Secret
	err := a.step(ctx, "fetch secrets", func(ctx context.Context) error {
		refs := make([]secrets.Ref, 0, len(cfg.Secrets))
		for _, r := range cfg.Secrets {
			refs = append(refs, r)
		}
		sort.Slice(refs, func(i, j int) bool { return refs[i].Name < refs[j].Name })
		var store secretStore
		if cfg.Provider == config.ProviderLocal {
			readOnly := a.o.ReadOnly && !a.o.KeepState
			if !readOnly {
				if err := os.MkdirAll(a.o.StateDir, 0o700); err != nil {
					return fmt.Errorf("creating state directory %q: %w", a.o.StateDir, err)
				}
			}
			store = &secrets.LocalStore{Path: a.localSecrets(), ReadOnly: readOnly}
		} else {
			var err error
			if store, err = a.remote.secrets(ctx, cfg.Region, a.secretsPolicy, a.log); err != nil {
				return err
			}
		}
		// A *secrets.Error carries its own exit status: 3 for a missing
		// secret or key, 1 when Secrets Manager kept failing.
		var err error
		got, err = store.Fetch(ctx, refs)
		if err == nil {
			a.sawSecrets(cfg, refs, got)
		}
		return err
	})
	return got, err
}

// Rendered is what `render` writes and `up` converges.
type Rendered struct {
	Config  config.Config
	State   desired.State
	Secrets map[string]secrets.Secret
	Project *types.Project
	EnvFile []byte
	Compose []byte
	// keys is what the cluster's records say about the secret key and the
	// cookie secret (keys.go).
	keys keyView
}

// Render resolves, fetches and renders, without writing anything. The
// secret key and cookie secret are the ones the cluster's records say
// (keys.go): read, never written.
func (a *Agent) Render(ctx context.Context) (Rendered, error) { return a.render(ctx, false) }

// render is Render; forUp makes a refused secret key an error (up and run
// keep their containers) rather than a warning (dry runs, status).
func (a *Agent) render(ctx context.Context, forUp bool) (Rendered, error) {
	var out Rendered
	res, err := a.Resolve(ctx)
	if err != nil {
		return out, err
	}
	out.Config = res.Config
	if out.Secrets, err = a.FetchSecrets(ctx, res.Config); err != nil {
		return out, err
	}
	err = a.step(ctx, "render env file and compose file", func(ctx context.Context) error {
		if st, err := desired.Build(res.Config, out.Secrets, a.o.Dir); err == nil {
			if out.keys, err = a.readKeys(ctx, res.Config, out.Secrets, st.DB, forUp); err != nil {
				return err
			}
		}
		return a.renderFiles(&out)
	})
	return out, err
}

// renderFiles builds the state, the compose project and both files from
// r.Config and r.Secrets.
func (a *Agent) renderFiles(out *Rendered) error {
	// desired, compose and envfile reject only what the configuration
	// or the secrets' contents gave them: configuration errors.
	st, err := desired.Build(out.Config, out.Secrets, a.o.Dir)
	if err != nil {
		return exitcode.ConfigError(err)
	}
	out.State = st
	if out.Project, err = compose.Project(st.Spec); err != nil {
		return exitcode.ConfigError(fmt.Errorf("building the compose project: %w", err))
	}
	if out.Compose, err = compose.Marshal(out.Project); err != nil {
		return fmt.Errorf("writing the compose project as YAML: %w", err)
	}
	if out.EnvFile, err = envfile.Render(st.Env); err != nil {
		return exitcode.ConfigError(fmt.Errorf("rendering the env file: %w", err))
	}
	return nil
}

// Changes says which written files changed.
type Changes struct{ Env, Compose bool }

// Write writes the env file (0600) and the compose file as one generation:
// both or neither (atomicfile.WriteFiles writes both temps before the first
// rename, and puts the env file back if the compose file's rename fails), so
// a full disk never leaves env from one configuration beside a compose file
// from another. A file whose content is unchanged is not rewritten. On error
// the old files stay.
func (a *Agent) Write(ctx context.Context, r Rendered) (Changes, error) {
	var ch Changes
	err := a.step(ctx, "write "+a.o.Dir, func(ctx context.Context) error {
		if err := os.MkdirAll(a.o.Dir, 0o755); err != nil {
			return fmt.Errorf("creating %q: %w", a.o.Dir, err)
		}
		if err := a.tightenState(); err != nil {
			return err
		}
		// The env file first: should a power cut fall between the two
		// renames, a compose file that names ./env is never on disk
		// without its env file (and the next start rewrites both).
		changed, err := atomicfile.WriteFiles([]atomicfile.File{
			{Path: filepath.Join(a.o.Dir, compose.EnvFileName), Data: r.EnvFile, Perm: 0o600},
			{Path: filepath.Join(a.o.Dir, compose.FileName), Data: r.Compose, Perm: 0o644},
		})
		if err != nil {
			return fmt.Errorf("writing the env file and the compose file in %q (both or neither): %w", a.o.Dir, err)
		}
		ch.Env, ch.Compose = changed[0], changed[1]
		return nil
	})
	return ch, err
}

// tightenState gives the state directory 0700 and its key and secret files
// 0600, whatever mode they were found with (a restored backup, a hand-made
// directory, an older agent): the hash key lets anyone who reads it test
// guesses of a secret against the config-hash labels, so it is kept like the
// env file. Called at every start that writes, before the hash key is read.
func (a *Agent) tightenState() error {
	st, err := os.Lstat(a.o.StateDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // created 0700 when first needed
	}
	if err != nil {
		return fmt.Errorf("checking state directory %q: %w", a.o.StateDir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("checking state directory %q: not a directory: remove it or point --state-dir elsewhere", a.o.StateDir)
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(a.o.StateDir, 0o700); err != nil {
			return fmt.Errorf("setting mode 0700 on state directory %q: %w", a.o.StateDir, err)
		}
		a.log.Warn("tightened the state directory's mode", "path", a.o.StateDir, "was", st.Mode().Perm().String(), "now", "-rwx------")
	}
	for _, path := range []string{a.hashKeyPath(), a.localSecrets(), a.headsCache()} {
		st, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("checking %q: %w", path, err)
		}
		// A symlink is not followed: chmod would change its target.
		if !st.Mode().IsRegular() || st.Mode().Perm() == 0o600 {
			continue
		}
		if err := os.Chmod(path, 0o600); err != nil {
			return fmt.Errorf("setting mode 0600 on %q: %w", path, err)
		}
		a.log.Warn("tightened a state file's mode", "path", path, "was", st.Mode().Perm().String(), "now", "-rw-------")
	}
	return nil
}

// Logger is the agent's logger, for the parts of the CLI around it.
func (a *Agent) Logger() *slog.Logger { return a.log }
