package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/redash-agent/redash-agent/internal/agent"
)

// errDoctorFailed makes `doctor` exit 1 after printing its report.
var errDoctorFailed = errors.New("doctor found problems (see [fail] above)")

func doctorCmd(g *globals) *cobra.Command {
	var offline bool
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Check everything the agent depends on and say how to fix what is wrong",
		Long: `doctor runs its checks in boot order and prints one line per check:
[ok], [warn], [fail] or [skip] (a check whose dependency failed), with a fix: line
under each problem. It exits 1 if any check failed. --offline checks only what an
image build can (Docker, disk, no instance state left in the image).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			rep := a.Doctor(c.Context(), offline)
			if g.json {
				if err := rep.WriteJSON(c.OutOrStdout()); err != nil {
					return err
				}
			} else {
				rep.WriteText(c.OutOrStdout())
			}
			if rep.Failed() {
				return errDoctorFailed
			}
			return nil
		},
	}
	c.Flags().BoolVar(&offline, "offline", false, "check only what needs no AWS or database (for an Image Builder test phase)")
	return c
}

func prepareImageCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "prepare-image",
		Short: "For EC2 Image Builder: pull the configured version's images, then leave no containers, env file, state or lock",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			// PrepareImage deletes the lock file last (an image must carry
			// none); the lock itself is released when the command returns.
			var res agent.PrepareResult
			err = locked(c.Context(), a, func() error {
				res, err = a.PrepareImage(c.Context())
				return err
			})
			// What was removed is said even when a later removal failed.
			for _, f := range res.Removed {
				fmt.Fprintf(c.OutOrStdout(), "removed: %s (%s)\n", f.Path, f.Why)
			}
			if err != nil {
				return err
			}
			for _, img := range res.Images {
				fmt.Fprintln(c.OutOrStdout(), "present:", img)
			}
			for _, f := range res.Kept {
				fmt.Fprintf(c.OutOrStdout(), "kept: %s (%s)\n", f.Path, f.Why)
			}
			return nil
		},
	}
}
