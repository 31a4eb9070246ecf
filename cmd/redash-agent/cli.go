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
	readOnly bool
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

// configRows lists the resolved configuration, one row per setting.
func configRows(cfg config.Config) []configRow {
	src := func(key string) string {
		if s, ok := cfg.Origins[key]; ok {
			return string(s)
		}
		return string(config.SourceDerived)
	}
	rows := []configRow{
		{"provider", cfg.Provider, src("provider")},
		{"project", cfg.Project, src("project")},
		{"version", cfg.Version, src("version")},
		{"image", cfg.Image, src("image")},
		{"role", cfg.Role, src("role")},
		{"nginx", fmt.Sprint(cfg.Nginx), src("nginx")},
		{"region", cfg.Region, src("region")},
	}
	add := func(key, val string) {
		if val != "" {
			rows = append(rows, configRow{key, val, src(key)})
		}
	}
	if cfg.Nginx {
		add("nginx-image", cfg.NginxImage)
	}
	add("db-endpoint", cfg.DBEndpoint)
	add("db-name", cfg.DBName)
	add("redis-endpoint", cfg.RedisEndpoint)
	add("redis-url", cfg.RedisURL)
	add("log-group", cfg.LogGroup)
	add("server-port", fmt.Sprint(cfg.ServerPort))
	if cfg.Nginx {
		add("nginx-port", fmt.Sprint(cfg.NginxPort))
	}
	if cfg.WebWorkers > 0 {
		add("web-workers", fmt.Sprint(cfg.WebWorkers))
	}
	add("refresh", cfg.Refresh.String())
	var names []string
	for n := range cfg.Secrets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		key := "secret:" + n
		if n == "db-secret" {
			key = "db-secret"
		}
		rows = append(rows, configRow{key, cfg.Secrets[n].String(), src(key)})
	}
	for _, m := range []map[string]string{cfg.Env} {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		sort.Strings(ks)
		for _, k := range ks {
			rows = append(rows, configRow{"env:" + k, m[k], src("env:" + k)})
		}
	}
	var ws []string
	for w := range cfg.Workers {
		ws = append(ws, w)
	}
	sort.Strings(ws)
	for _, w := range ws {
		rows = append(rows, configRow{"workers:" + w, fmt.Sprint(cfg.Workers[w]), src("workers:" + w)})
	}
	return rows
}
