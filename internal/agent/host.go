package agent

import (
	"context"
	"fmt"
	"strings"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/doctor"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// release is the Redash release r runs, for the host checks.
func release(r Rendered) (engine.Release, error) {
	f, err := compose.FamilyFor(r.Config.Version)
	if err != nil {
		return engine.Release{}, exitcode.ConfigError(err)
	}
	return engine.Release{Image: r.Config.Image, Family: f}, nil
}

// checkHost is the step between the pulls and the migration that refuses,
// with the fix, a host that cannot run the images (another architecture, no
// IPv6 for a release that binds [::]) while every container still runs.
func (a *Agent) checkHost(ctx context.Context, r Rendered, eng *engine.Engine, d engine.Desired) error {
	return a.step(ctx, "check host", func(ctx context.Context) error {
		rel, err := release(r)
		if err != nil {
			return err
		}
		if err := eng.CheckHost(ctx, d, rel, engine.DefaultHostProbe); err != nil {
			return fmt.Errorf("checking that this host can run Redash %s: %w", r.Config.Version, err)
		}
		return nil
	})
}

// checkHostDoctor is doctor's view of the same check: each problem with
// its fix.
func (a *Agent) checkHostDoctor(ctx context.Context, r Rendered, eng *engine.Engine) doctor.Result {
	d, err := a.desired(r)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error()}
	}
	rel, err := release(r)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error(), Fix: "set redash:version to a release tag"}
	}
	err = eng.CheckHost(ctx, d, rel, engine.DefaultHostProbe)
	if err == nil {
		return doctor.Result{Status: doctor.OK, Detail: "the present images are built for this host's platform" + ipv6Note(rel.Family)}
	}
	hes := engine.HostErrors(err)
	if len(hes) == 0 {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error(), Fix: "sudo systemctl start docker; check DOCKER_HOST"}
	}
	var problems, fixes []string
	for _, he := range hes {
		problems, fixes = append(problems, he.Problem), append(fixes, he.Fix)
	}
	return doctor.Result{Status: doctor.Fail, Detail: strings.Join(problems, "; "), Fix: strings.Join(fixes, "; ")}
}

func ipv6Note(f compose.Family) string {
	if f.BindsIPv6() {
		return "; the kernel has IPv6 for the server's [::]:5000"
	}
	return ""
}
