package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/envfile"
)

func renderCmd(g *globals) *cobra.Command {
	var dryRun, plan bool
	c := &cobra.Command{
		Use:   "render",
		Short: "Write DIR/env and DIR/docker-compose.yml (or print them with --dry-run, secrets redacted)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			// A dry run leaves the state directory as it found it: no local
			// secrets, no hash key. A plan makes those two (and nothing
			// else), so the hashes it prints are the ones up will use.
			g.readOnly = dryRun || plan
			g.keepState = plan
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			out := c.OutOrStdout()
			if plan {
				r, p, note, err := a.Plan(c.Context())
				if err != nil {
					return err
				}
				images, err := a.Images(c.Context(), r)
				if err != nil {
					return err
				}
				if err := printDryRun(out, g.dir, r); err != nil {
					return err
				}
				printImages(out, images)
				fmt.Fprintf(out, "# plan: %d change(s)\n%s", p.Mutations(), p.String())
				if note != "" {
					fmt.Fprintf(out, "# %s\n", note)
				}
				return nil
			}
			r, err := a.Render(c.Context())
			if err != nil {
				return err
			}
			if dryRun {
				return printDryRun(out, g.dir, r)
			}
			// Rendering only reads, like Up's; the lock guards the write.
			var ch agent.Changes
			err = locked(c.Context(), a, func() error {
				ch, err = a.Write(c.Context(), r)
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "%s: %s\n%s: %s\n",
				filepath.Join(g.dir, compose.EnvFileName), changedWord(ch.Env),
				filepath.Join(g.dir, compose.FileName), changedWord(ch.Compose))
			return nil
		},
	}
	c.Flags().BoolVar(&dryRun, "dry-run", false, "print the files instead of writing them; secret values are redacted")
	// No backquotes in flag usages: pflag takes a backquoted word as the
	// value's placeholder and prints "--plan up".
	c.Flags().BoolVar(&plan, "plan", false, "also print the images up would pull and what it would do to the containers; writes nothing but the state directory's hash key")
	return c
}

// printImages lists each image of the plan, the key that sets it, and
// whether up would pull it.
func printImages(w io.Writer, images []engine.ImageUse) {
	pull := 0
	for _, im := range images {
		if !im.Present {
			pull++
		}
	}
	fmt.Fprintf(w, "# images: %d, %d to pull\n", len(images), pull)
	for _, im := range images {
		what := "present"
		if !im.Present {
			what = "pull"
		}
		fmt.Fprintf(w, "#   %-7s %s (%s; %s)\n", what, im.Ref, im.Key, strings.Join(im.Services, ", "))
	}
}

func changedWord(changed bool) string {
	if changed {
		return "written"
	}
	return "unchanged"
}

// printDryRun prints both files. Every env value that holds any secret is
// replaced whole: a partial mask of a URL could still leak a short password.
func printDryRun(w io.Writer, dir string, r agent.Rendered) error {
	red := map[string]string{}
	for k, v := range r.State.Env {
		red[k] = v
		if holdsSecret(v, r) {
			red[k] = "[redacted]"
		}
	}
	env, err := envfile.Render(red)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "# %s (dry run, secret values redacted)\n%s\n", filepath.Join(dir, compose.EnvFileName), env)
	fmt.Fprintf(w, "# %s (dry run)\n%s", filepath.Join(dir, compose.FileName), r.Compose)
	return nil
}

// holdsSecret looks for each secret as written and as percent-encoded in a URL.
func holdsSecret(v string, r agent.Rendered) bool {
	plain := []string{r.State.DB.Password.Reveal()}
	for _, s := range r.Secrets {
		plain = append(plain, s.Value.Reveal())
	}
	for _, p := range plain {
		if p != "" && (strings.Contains(v, p) || strings.Contains(v, desired.Escape(p))) {
			return true
		}
	}
	return false
}
