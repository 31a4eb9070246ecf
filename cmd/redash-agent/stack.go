package main

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/systemd"
)

func upCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "up",
		Short: "Converge once: render, migrate, start what is missing or stale, wait until the server answers /ping",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			res, err := a.Up(c.Context())
			if err != nil {
				return err
			}
			out := c.OutOrStdout()
			if g.json {
				return json.NewEncoder(out).Encode(map[string]any{
					"env_changed": res.Files.Env, "compose_changed": res.Files.Compose,
					"migration": migrationJSON(res.Migrate), "plan": res.Plan.String(), "mutations": res.Plan.Mutations(),
				})
			}
			if res.Plan.Mutations() == 0 {
				fmt.Fprintln(out, "up to date: nothing to do")
				return nil
			}
			fmt.Fprint(out, res.Plan.String())
			return nil
		},
	}
}

func downCmd(g *globals) *cobra.Command {
	var remove, volumes bool
	c := &cobra.Command{
		Use:   "down",
		Short: "Stop the Redash containers (--remove also removes them and the network; --volumes also the bundled database)",
		Long: `down stops every container of the project. --remove also removes them and the
project network. The bundled database of provider local lives in the volume
<project>_postgres-data, which --remove keeps: add --volumes (implies --remove)
to delete it too, and with it every query, dashboard and user of that database.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			remove = remove || volumes
			out := c.OutOrStdout()
			return locked(c.Context(), a, func() error {
				if err := a.Down(c.Context(), remove); err != nil {
					return err
				}
				switch {
				case volumes:
					name, removed, err := a.RemoveDBVolume(c.Context())
					if err != nil {
						return err
					}
					if removed {
						fmt.Fprintf(out, "removed the database volume %s and its data\n", name)
					}
				case remove:
					if name, exists, err := a.DBVolume(c.Context()); err == nil && exists {
						fmt.Fprintf(out, "kept the database volume %s (the bundled database's data): add --volumes to remove it too\n", name)
					}
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&remove, "remove", false, "remove the containers and the project network too")
	c.Flags().BoolVar(&volumes, "volumes", false, "with --remove, also delete the bundled database volume <project>_postgres-data and its data (provider local)")
	return c
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show each service's container: state, health, image, whether its configuration is current; and the database state",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			st, err := a.Status(c.Context())
			if err != nil {
				return err
			}
			out := c.OutOrStdout()
			if g.json {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(statusJSON(st))
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tCONTAINER\tSTATE\tHEALTH\tRESTARTS\tCONFIG\tIMAGE")
			for _, s := range st.Services {
				cur := "current"
				if !s.HashCurrent {
					cur = "stale"
				}
				if s.State == "missing" {
					cur = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", s.Service, s.Container, s.State, dash(s.Health), s.RestartCount, cur, s.Image)
			}
			tw.Flush()
			fmt.Fprintf(out, "database: %s\n", st.Database)
			if st.SchedulerLease != "" {
				fmt.Fprintf(out, "scheduler lease: %s\n", st.SchedulerLease)
			}
			return nil
		},
	}
}

func migrateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database once per cluster (advisory lock), without touching the containers",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			var res migrate.Result
			err = locked(c.Context(), a, func() error {
				res, err = a.MigrateOnly(c.Context())
				return err
			})
			if err != nil {
				return err
			}
			if g.json {
				return json.NewEncoder(c.OutOrStdout()).Encode(migrationJSON(res))
			}
			ran := res.Ran
			if ran == migrate.RanNone {
				ran = "nothing"
			}
			fmt.Fprintf(c.OutOrStdout(), "database: %s -> %s (ran %s; image head %s)\n", res.Before, res.After, ran, res.Head)
			return nil
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func runCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "run",
		Short: "The systemd service: converge, notify READY=1 when the server answers /ping, then keep the stack converged",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			return a.Run(c.Context(), systemd.New(a.Logger()))
		},
	}
}

// The JSON of every command uses lowercase snake_case keys (config, doctor,
// up, status): the types below give the engine's and migrate's structs,
// which have no json tags, those keys.

type serviceJSON struct {
	Service       string `json:"service"`
	Container     string `json:"container"`
	State         string `json:"state"`
	Health        string `json:"health"`
	Image         string `json:"image"`
	ConfigCurrent bool   `json:"config_current"` // created from the current configuration
	RestartCount  int    `json:"restart_count"`
}

type statusReportJSON struct {
	Services []serviceJSON `json:"services"`
	Database string        `json:"database"`
}

func statusJSON(st agent.StatusReport) statusReportJSON {
	out := statusReportJSON{Services: []serviceJSON{}, Database: st.Database}
	for _, s := range st.Services {
		out.Services = append(out.Services, serviceJSON{
			Service: s.Service, Container: s.Container, State: s.State, Health: s.Health,
			Image: s.Image, ConfigCurrent: s.HashCurrent, RestartCount: s.RestartCount,
		})
	}
	return out
}

type migrationResultJSON struct {
	Before string `json:"before"`
	After  string `json:"after"`
	Ran    string `json:"ran"`
	Head   string `json:"head"`
}

func migrationJSON(r migrate.Result) migrationResultJSON {
	return migrationResultJSON{Before: string(r.Before), After: string(r.After), Ran: r.Ran, Head: r.Head}
}
