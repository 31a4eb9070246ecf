package agent

// The Auto Scaling lifecycle hooks (docs/scaling.md): the launch hook is
// completed with CONTINUE as soon as `run` is READY, so a new instance is in
// service in the time one converge takes (ABANDON on a configuration error,
// so the group launches another instead of waiting out the hook's timeout);
// the terminate hook is completed after the scale-in drain (drain.go). The
// group comes from the aws:autoscaling:groupName instance tag, the instance
// from IMDS; an instance in no group has nothing to do. No call here is
// fatal: an uncompleted hook ends with its own timeout and default result.

import (
	"context"
	"errors"
	"time"

	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/imds"
	"github.com/redash-agent/redash-agent/internal/lifecycle"
)

// scaleInPoll spaces the looks at autoscaling/target-lifecycle-state.
const scaleInPoll = 5 * time.Second

// scaleState is what the lifecycle work keeps from the converges.
type scaleState struct {
	instance    imds.Instance     // the last IMDS read: id, region, tags
	redis       desired.RedisConn // the workers' Redis, to name running jobs
	saidNoGroup bool              // "not in a group" is said once (run's goroutine only)
}

// lifecycleAction names this instance's action on hook, or false when it
// is in no Auto Scaling group (said once) or not on AWS.
func (a *Agent) lifecycleAction(cfg config.Config, hook string) (lifecycle.Action, bool) {
	inst := a.scale.instance
	if cfg.Provider == config.ProviderLocal || inst.InstanceID == "" {
		return lifecycle.Action{}, false
	}
	group := inst.Tags[imds.GroupNameTag]
	if group == "" {
		if !a.scale.saidNoGroup {
			a.scale.saidNoGroup = true
			a.log.Info("not in an Auto Scaling group (no "+imds.GroupNameTag+" instance tag in IMDS): no lifecycle hook to complete, no scale-in to watch",
				"step", "lifecycle", "instance", inst.InstanceID)
		}
		return lifecycle.Action{}, false
	}
	if hook == "" {
		hook = config.DefaultLaunchHook
	}
	return lifecycle.Action{Group: group, Hook: hook, InstanceID: inst.InstanceID}, true
}

// region is cfg's region, or the instance's when the configuration did
// not resolve.
func (a *Agent) region(cfg config.Config) string {
	if cfg.Region != "" {
		return cfg.Region
	}
	return a.scale.instance.Region
}

// startLifecycle is run's one call after READY=1: it completes the launch
// hook with CONTINUE (in the background: a slow API must not hold the
// loop) and starts watching for a scale-in (see watchScaleIn).
func (a *Agent) startLifecycle(ctx context.Context, cfg config.Config) <-chan struct{} {
	if act, ok := a.lifecycleAction(cfg, cfg.Lifecycle.LaunchHook); ok {
		go a.completeLaunch(ctx, a.region(cfg), act, lifecycle.Continue)
	}
	return a.watchScaleIn(ctx, cfg)
}

// completeLaunch completes the launch action with result.
func (a *Agent) completeLaunch(ctx context.Context, region string, act lifecycle.Action, result lifecycle.Result) {
	start := time.Now()
	c, err := lifecycle.New(ctx, region)
	if err == nil {
		err = c.Complete(ctx, act, result)
	}
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case errors.Is(err, lifecycle.ErrNoAction):
		// A restart of the agent on an instance long in service.
		a.log.Info("no launch lifecycle action pending: nothing to complete", "step", "lifecycle", "action", act.String(), "detail", err.Error())
	case err != nil:
		a.log.Error("completing the launch lifecycle action failed; the hook's timeout and default result decide instead",
			"step", "lifecycle", "result", string(result), "err", err)
	default:
		a.log.Info("launch lifecycle action completed", "step", "lifecycle", "result", string(result), "action", act.String(), "took", took)
	}
}

// abandonLaunch completes the launch hook with ABANDON when the boot
// failed on a configuration error (exit 3): no restart fixes it, so the
// group should replace the instance now rather than at the hook's timeout.
func (a *Agent) abandonLaunch(cfg config.Config, err error) {
	if exitcode.Of(err) != exitcode.Config {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if a.scale.instance.InstanceID == "" && cfg.Provider != config.ProviderLocal {
		// The error came before IMDS was read (a bad config file): read the
		// instance and its group now, briefly and quietly (off EC2 nothing
		// answers, and the configuration error is what matters).
		if inst, err := imds.New(imds.Options{Deadline: 3 * time.Second}).Instance(ctx); err == nil {
			a.scale.instance = inst
		}
	}
	act, ok := a.lifecycleAction(cfg, cfg.Lifecycle.LaunchHook)
	if !ok {
		return
	}
	a.log.Warn("configuration error at boot: abandoning the launch lifecycle action so the group replaces this instance", "step", "lifecycle")
	a.completeLaunch(ctx, a.region(cfg), act, lifecycle.Abandon)
}

// watchScaleIn polls IMDS's target lifecycle state every scaleInPoll; the
// channel receives once when the group moves this instance to Terminated.
// It never receives for an instance in no group.
func (a *Agent) watchScaleIn(ctx context.Context, cfg config.Config) <-chan struct{} {
	ch := make(chan struct{})
	if _, ok := a.lifecycleAction(cfg, cfg.Lifecycle.TerminateHook); !ok {
		return ch
	}
	client := imds.New(imds.Options{Logger: a.log})
	go func() {
		t := time.NewTicker(scaleInPoll)
		defer t.Stop()
		failing := false
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			state, err := client.TargetLifecycleState(ctx)
			if err != nil {
				if !failing && ctx.Err() == nil {
					a.log.Warn("reading the target lifecycle state from IMDS failed; looking again every "+scaleInPoll.String(), "step", "lifecycle", "err", err)
				}
				failing = true
				continue
			}
			failing = false
			if state == "Terminated" {
				a.log.Info("scale-in: the Auto Scaling group terminates this instance; draining", "step", "drain")
				select {
				case ch <- struct{}{}:
				case <-ctx.Done():
				}
				return
			}
		}
	}()
	return ch
}
