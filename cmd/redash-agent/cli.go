package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/logging"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// Exit codes of the CLI contract; exitcode owns them.
const (
	exitOK        = exitcode.OK
	exitFailure   = exitcode.Failure
	exitUsage     = exitcode.Usage
	exitConfigErr = exitcode.Config // the unit's RestartPreventExitStatus: fixing it needs a person
)

// globals are the flags every command shares.
type globals struct {
	dir        string
	stateDir   string
	configFile string
	// configGiven is whether --config was on the command line: a path the
	// operator typed must exist, while the default one may be absent.
	configGiven  bool
	provider     string
	set          []string
	json         bool
	imdsDeadline time.Duration
	logFormat    string
	// readOnly is set by a command that must write nothing (render
	// --dry-run, --plan), not by a flag of its own.
	readOnly, keepState bool
}

// Main runs the CLI and returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	var g globals
	root := &cobra.Command{
		Use:           "redash-agent",
		Short:         "Configure and run Redash on this EC2 instance from its tags and Secrets Manager",
		SilenceUsage:  true,
		SilenceErrors: true,
		// Without Args cobra reports an unknown command from inside Find,
		// as text; with it the command line reaches rootArgs, which says
		// so with a usage error. A root with Args must be runnable, or
		// cobra prints help and exits 0 for any word.
		Args: rootArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
		// cobra's default, which it sets only on its own unknown-command path.
		SuggestionsMinimumDistance: 2,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	pf := root.PersistentFlags()
	pf.StringVar(&g.dir, "dir", "/opt/redash", "directory holding env and docker-compose.yml")
	pf.StringVar(&g.stateDir, "state-dir", agent.DefaultStateDir, "directory for generated local secrets, the hash key and caches")
	pf.StringVar(&g.configFile, "config", config.DefaultFile, "config file (keys are the redash: tag names without the prefix)")
	pf.StringVar(&g.provider, "provider", "", "aws (instance tags + Secrets Manager) or local (config file + generated secrets)")
	pf.StringArrayVar(&g.set, "set", nil, "override one setting, KEY=VALUE with KEY a tag name without redash: (repeatable)")
	pf.BoolVar(&g.json, "json", false, "print data as JSON")
	pf.DurationVar(&g.imdsDeadline, "imds-deadline", 2*time.Minute, "how long to wait for IMDS and the instance tags at boot")
	pf.StringVar(&g.logFormat, "log-format", "", "log format: text, json or journal (default: journal under systemd, else text; journal where the journal does not answer is text on stderr, with a warning)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return exitcode.UsageError(err) })
	// Flags are checked before any command runs: an unknown format would
	// otherwise be text without a word, and a typo in a unit file unseen.
	// One hook: cobra runs only PersistentPreRunE when both are set.
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		g.configGiven = c.Flags().Changed("config")
		if err := logging.Check(g.logFormat); err != nil {
			return exitcode.UsageError(err)
		}
		return nil
	}

	root.AddCommand(
		versionCmd(),
		configCmd(&g),
		renderCmd(&g),
		upCmd(&g),
		downCmd(&g),
		statusCmd(&g),
		migrateCmd(&g),
		runCmd(&g),
		doctorCmd(&g),
		prepareImageCmd(&g),
		metricsCmd(&g),
	)

	for _, c := range root.Commands() {
		c.Args = usageArgs(c.Args)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := root.ExecuteContext(ctx)
	return exitCode(err, stderr)
}

// rootArgs rejects any word that is not a command (cobra finds the commands
// before this runs), with cobra's spelling suggestions.
func rootArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t") + "\n"
	}
	return exitcode.UsageError(errors.New(msg))
}

// usageArgs makes a command's argument validator's error a usage error
// (exit 2): cobra's own validators return plain text errors.
func usageArgs(validate cobra.PositionalArgs) cobra.PositionalArgs {
	if validate == nil {
		return nil
	}
	return func(c *cobra.Command, args []string) error {
		return exitcode.UsageError(validate(c, args))
	}
}

// exitCode prints err for the operator and returns the exit status it
// carries (exitcode.Of): the classification is the error's type, never its
// text.
func exitCode(err error, stderr io.Writer) int {
	if err == nil {
		return exitOK
	}
	code := exitcode.Of(err)
	switch code {
	case exitUsage:
		fmt.Fprintln(stderr, "redash-agent:", err)
		fmt.Fprintln(stderr, "run 'redash-agent --help' for usage")
	case exitConfigErr:
		fmt.Fprintln(stderr, "redash-agent: configuration error:", err)
	default:
		// Also "not configured" (exit 0): it says why there is nothing to do.
		fmt.Fprintln(stderr, "redash-agent:", err)
	}
	return code
}

// newAgent builds the agent from the global flags.
func (g *globals) newAgent(stderr io.Writer) (*agent.Agent, error) {
	set := map[string]string{}
	for _, kv := range g.set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, exitcode.UsageError(fmt.Errorf("--set %q: want KEY=VALUE, e.g. --set role=web", kv))
		}
		set[strings.TrimPrefix(k, config.TagPrefix)] = v
	}
	if g.configGiven {
		if err := config.RequireFile(g.configFile); err != nil {
			return nil, err
		}
	}
	return agent.New(agent.Options{
		Dir:          g.dir,
		StateDir:     g.stateDir,
		ConfigFile:   g.configFile,
		Provider:     g.provider,
		Set:          set,
		IMDSDeadline: g.imdsDeadline,
		Logger:       g.logger(stderr),
		ReadOnly:     g.readOnly,
		KeepState:    g.keepState,
	}), nil
}

func (g *globals) logger(w io.Writer) *slog.Logger { return logging.New(w, g.logFormat) }

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the agent's version",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintln(c.OutOrStdout(), "redash-agent", version)
			return nil
		},
	}
}

// configRow is one resolved setting for `redash-agent config`.
type configRow struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source string `json:"source"`
}

func configCmd(g *globals) *cobra.Command {
	var withDB bool
	c := &cobra.Command{
		Use:   "config",
		Short: "Print each resolved setting and where it came from (secrets as their ids, never values)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			res, err := a.Resolve(c.Context())
			if err != nil {
				return err
			}
			rows := configRows(res.Config)
			if withDB {
				rows = append(rows, configRow{"database-state", a.DatabaseState(c.Context()), "database"})
			}
			if g.json {
				enc := json.NewEncoder(c.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KEY\tVALUE\tSOURCE")
			for _, r := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Key, r.Value, r.Source)
			}
			return tw.Flush()
		},
	}
	c.Flags().BoolVar(&withDB, "db", false, "also connect to the database and show its schema state (empty, behind, current)")
	return c
}

// configKeys are the plain keys `config` lists, in the README table's
// order of interest; TestConfigListingCoversREADME holds it to the README.
var configKeys = []string{
	"provider", "project", "version", "image", "nginx-image", "postgres-image", "redis-image", "role", "nginx",
	"secrets-prefix", "db-endpoint", "db-name", "redis-endpoint", "redis-url", "web-workers", "log-group",
	"server-port", "nginx-port", "refresh", "secret-poll", "load-balancer", "worker-stop-grace",
	"metrics-interval", "metrics-resolution",
	"lifecycle-hook-launch", "lifecycle-hook-terminate", "drain-timeout", "drain-deregister-wait",
}

// configRows lists the resolved configuration, one row per setting that has
// a value: every plain key, then region, secrets, env and workers. A key
// that does not apply (nginx-port without nginx, the bundled images under
// provider aws) is listed only when it was set.
func configRows(cfg config.Config) []configRow {
	src := func(key string) string {
		if s, ok := cfg.Origins[key]; ok {
			return string(s)
		}
		return string(config.SourceDerived)
	}
	local := cfg.Provider == config.ProviderLocal
	_, dbSecret := cfg.Secrets["db-secret"]
	applies := map[string]bool{
		"nginx-image":    cfg.Nginx,
		"nginx-port":     cfg.Nginx,
		"postgres-image": local,
		"redis-image":    local,
		"secrets-prefix": !local && !dbSecret,
	}
	itoa := func(n int) string {
		if n <= 0 {
			return ""
		}
		return fmt.Sprint(n)
	}
	values := map[string]string{
		"provider": cfg.Provider, "project": cfg.Project, "version": cfg.Version, "image": cfg.Image,
		"nginx-image": cfg.NginxImage, "postgres-image": cfg.PostgresImage, "redis-image": cfg.RedisImage,
		"role": cfg.Role, "nginx": fmt.Sprint(cfg.Nginx), "secrets-prefix": cfg.SecretsPrefix,
		"db-endpoint": cfg.DBEndpoint, "db-name": cfg.DBName, "redis-endpoint": cfg.RedisEndpoint,
		"redis-url": cfg.RedisURL, "web-workers": itoa(cfg.WebWorkers), "log-group": cfg.LogGroup,
		"server-port": itoa(cfg.ServerPort), "nginx-port": itoa(cfg.NginxPort), "refresh": cfg.Refresh.String(),
		"secret-poll":   cfg.SecretPoll.String(),
		"load-balancer": cfg.LoadBalancer, "worker-stop-grace": cfg.WorkerStopGrace.String(),
		"metrics-interval": metricsInterval(cfg), "metrics-resolution": itoa(cfg.MetricsResolution),
		"lifecycle-hook-launch": cfg.Lifecycle.LaunchHook, "lifecycle-hook-terminate": cfg.Lifecycle.TerminateHook,
	}
	if cfg.Lifecycle.DrainTimeout > 0 {
		values["drain-timeout"] = cfg.Lifecycle.DrainTimeout.String()
	}
	if cfg.Lifecycle.LaunchHook != "" {
		// A zero wait is a setting (no wait), unlike a zero Config.
		values["drain-deregister-wait"] = cfg.Lifecycle.DeregisterWait.String()
	}
	if cfg.WorkerStopGrace <= 0 {
		values["worker-stop-grace"] = ""
	}
	if cfg.Refresh <= 0 {
		values["refresh"] = ""
	}
	var rows []configRow
	add := func(key, val string) {
		if val != "" {
			rows = append(rows, configRow{key, val, src(key)})
		}
	}
	for _, k := range configKeys {
		set := src(k) != string(config.SourceDefault) && src(k) != string(config.SourceDerived)
		if ok, listed := applies[k]; listed && !ok && !set {
			continue
		}
		add(k, values[k])
	}
	add("region", cfg.Region)
	var names []string
	for n := range cfg.Secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		key := "secret:" + n
		if n == "db-secret" {
			key = "db-secret"
		} else if v, ok := secrets.EnvVar(n); ok {
			key = "secret-env:" + v // a reference (id#key), never the value
		}
		add(key, cfg.Secrets[n].String())
	}
	for _, k := range sortedKeys(cfg.Env) {
		// An env value may legitimately be empty: still a setting.
		rows = append(rows, configRow{"env:" + k, cfg.Env[k], src("env:" + k)})
	}
	var ws []string
	for w := range cfg.Workers {
		ws = append(ws, w)
	}
	sort.Strings(ws)
	for _, w := range ws {
		add("workers:"+w, fmt.Sprint(cfg.Workers[w]))
	}
	return rows
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
