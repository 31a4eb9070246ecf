package agent

// The fleet's view of a schema upgrade, as one instance acts on it: while
// another instance upgrades the schema to a head this instance's image does
// not have, or after it moved the database past this image (ahead), this
// instance's scheduler and workers stay stopped, so old code takes no job
// against a schema that changes under it. Redash's upgrade guide stops them
// by hand; the agent's records (internal/cluster) make it fleet-wide:
//
//   - the upgrader (internal/migrate) records the upgrade as draining,
//     stops its own old job containers (migrate.Options.PauseOld, supplied
//     here) and waits, bounded, for every live instance's heartbeat to say
//     PausedFor the new head;
//   - every other instance sees the record on its next fast look (watch.go,
//     every changePoll), stops its job containers with their stop grace (a
//     warm shutdown: running jobs finish), then says PausedFor in its
//     heartbeat; every converge leaves them out of the project while the
//     pause lasts, and the plan says why;
//   - when the upgrade is done and this instance runs the new image, or it
//     failed (the schema is where it was), they come back on the converge.
//
// The server, nginx and the bundled services are never paused.

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/migrate"
)

// pauseState is what this instance last decided and reported.
type pauseState struct {
	instance  string         // its name in the records (instanceName)
	head      string         // its image's head revision ("" until known)
	pausedFor string         // the ToHead its job services are stopped for; "" when they run
	last      engine.Desired // the last converge's view, to stop the job services between converges
}

// reasonPaused is the plan's reason for stopping a paused job service.
const reasonPaused = "paused for a schema upgrade by another instance"

// jobService says whether a service runs jobs (a scheduler or a worker of
// any layout): what an upgrade pauses.
func jobService(name string) bool {
	switch name {
	case compose.ServerService, compose.NginxService, compose.PostgresService, compose.RedisService:
		return false
	}
	return true
}

// pauseFor is the pure decision: the head an instance whose image has head
// must pause its job services for, or "". head "" (not known yet) pauses
// for any upgrade in progress: it may be the old version.
func pauseFor(u *cluster.Upgrade, head string) string {
	switch {
	case u == nil || u.ToHead == head:
		return ""
	case u.InProgress():
		return u.ToHead
	case u.Phase == cluster.PhaseDone && head != "" && u.FromHead == head:
		// The last upgrade moved the database past this image: it is ahead.
		return u.ToHead
	}
	return ""
}

// imageHead is this converge's image's head revision, from the heads cache
// (migrate learns it); "" when not known yet.
func (a *Agent) imageHead(ctx context.Context, image string) string {
	eng, err := a.docker()
	if err != nil {
		return ""
	}
	defer eng.Close()
	id, err := eng.ImageID(ctx, image)
	if err != nil || id == "" {
		return ""
	}
	head, _ := migrate.CachedHead(a.headsCache(), id)
	return head
}

// pauseChoice is one converge's decision.
type pauseChoice struct{ pausedFor string }

// explain gives the plan's stops of paused job services their reason.
func (ch pauseChoice) explain(p *engine.Plan) {
	if ch.pausedFor == "" {
		return
	}
	for i, act := range p.Actions {
		if jobService(act.Service) && (act.Kind == engine.ActStop || act.Kind == engine.ActRemove) {
			p.Actions[i].Reason = reasonPaused + " (to revision " + ch.pausedFor + ")"
		}
	}
}

// pauseJobs is the converge's step: it reads the records, decides, writes
// this instance's heartbeat and returns r without its job services while
// they are paused. Provider local is one instance: nothing to coordinate.
// A database it cannot read leaves the decision as it was (logged): the
// migration step then says what is wrong with it.
func (a *Agent) pauseJobs(ctx context.Context, r Rendered) (Rendered, pauseChoice) {
	var ch pauseChoice
	if r.Project == nil || r.State.Spec.Local {
		return r, ch
	}
	p := &a.pause
	p.instance = instanceName(r.Project.Name)
	_ = a.step(ctx, "upgrade pause", func(ctx context.Context) error {
		p.head = a.imageHead(ctx, r.Config.Image)
		st, err := a.readCluster(ctx, r.State.DB)
		if err != nil {
			a.log.Warn("reading the agent's records; keeping the last pause decision", "step", "upgrade pause", "err", err)
		} else {
			if p.last.Project == nil { // the first converge: the containers a previous agent left
				p.last, _ = a.desired(r)
			}
			a.applyPause(ctx, st)
			a.sawCluster(r.State.DB, st.Generation)
			a.heartbeat(ctx, r.State.DB)
		}
		ch.pausedFor = p.pausedFor
		return nil
	})
	return withoutJobs(r, ch), ch
}

// peekTimeout bounds render --plan's look at the records.
const peekTimeout = 2 * time.Second

// pausePeek is `render --plan`'s decision: what up would do, changing
// nothing (no stop, no heartbeat).
func (a *Agent) pausePeek(ctx context.Context, r Rendered) (Rendered, pauseChoice) {
	var ch pauseChoice
	if r.Project == nil || r.State.Spec.Local {
		return r, ch
	}
	// A plan may be made where the database does not answer: a short look.
	rctx, cancel := context.WithTimeout(ctx, peekTimeout)
	defer cancel()
	if st, err := a.readCluster(rctx, r.State.DB); err == nil {
		ch.pausedFor = pauseFor(st.Upgrade, a.imageHead(ctx, r.Config.Image))
	}
	return withoutJobs(r, ch), ch
}

// withoutJobs is r without its job services while ch pauses them.
func withoutJobs(r Rendered, ch pauseChoice) Rendered {
	if ch.pausedFor == "" {
		return r
	}
	out := r
	proj := *r.Project
	proj.Services = types.Services(maps.Clone(r.Project.Services))
	for name := range proj.Services {
		if jobService(name) {
			delete(proj.Services, name)
		}
	}
	out.Project = &proj
	return out
}

// decidePause updates the decision from the records and logs a change.
func (a *Agent) decidePause(st cluster.State) (changed bool) {
	p := &a.pause
	next := pauseFor(st.Upgrade, p.head)
	if next == p.pausedFor {
		return false
	}
	if next != "" {
		u := st.Upgrade
		a.log.Warn("pausing this instance's scheduler and workers: another instance upgrades the schema past this image (warm shutdown: running jobs finish)",
			"step", "upgrade pause", "upgrade_by", u.By, "from", u.FromHead, "to", u.ToHead, "phase", u.Phase, "image_head", p.head)
	} else {
		a.log.Info("resuming this instance's scheduler and workers: no upgrade holds them", "step", "upgrade pause", "image_head", p.head)
	}
	p.pausedFor = next
	return true
}

// applyPause decides from the records and, when the decision is a new
// pause, stops the job containers before anything says they are paused.
// A stop that fails leaves the decision unpaused, so the next look tries
// again and the heartbeat never claims a pause that did not happen.
func (a *Agent) applyPause(ctx context.Context, st cluster.State) {
	if !a.decidePause(st) || a.pause.pausedFor == "" {
		return
	}
	if !a.pauseNow(ctx) {
		a.pause.pausedFor = ""
	}
}

// readCluster reads the records on a session of its own.
func (a *Agent) readCluster(ctx context.Context, db desired.DB) (cluster.State, error) {
	ctx, cancel := context.WithTimeout(ctx, changePoll)
	defer cancel()
	conn, err := migrate.Dial(ctx, db, "redash-agent-pause "+host())
	if err != nil {
		return cluster.State{}, err
	}
	defer conn.Close(context.Background())
	return cluster.Read(ctx, conn)
}

// heartbeat writes this instance's heartbeat on its own session; a failure
// is logged (an upgrader then stops waiting for this instance after a
// minute).
func (a *Agent) heartbeat(ctx context.Context, db desired.DB) {
	ctx, cancel := context.WithTimeout(ctx, changePoll)
	defer cancel()
	conn, err := migrate.Dial(ctx, db, "redash-agent-pause "+host())
	if err != nil {
		a.log.Debug("not writing the heartbeat this time", "step", "upgrade pause", "err", err)
		return
	}
	defer conn.Close(context.Background())
	a.writeHeartbeat(ctx, conn)
}

func (a *Agent) writeHeartbeat(ctx context.Context, q cluster.Querier) {
	p := &a.pause
	if p.instance == "" {
		return
	}
	beat := cluster.Instance{Name: p.instance, Head: p.head, PausedFor: p.pausedFor}
	err := cluster.Heartbeat(ctx, q, beat)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") { // no table, no schema: a new database
		if err = cluster.Ensure(ctx, q); err == nil {
			err = cluster.Heartbeat(ctx, q, beat)
		}
	}
	if err != nil {
		a.log.Debug("not writing the heartbeat this time", "step", "upgrade pause", "err", err)
	}
}

// pauseBound bounds stopping the job services between converges: the
// longest worker stop grace and some room.
const pauseBound = config.MaxWorkerStopGrace + time.Minute

// drainWait is how long an upgrader waits for the other instances to pause:
// the longest stop grace of this configuration's job services plus a minute
// (the others run the same configuration, one version older).
func drainWait(r Rendered) time.Duration {
	longest := compose.DefaultWorkerStopGrace
	if r.Project != nil {
		longest = 0
		for name, svc := range r.Project.Services {
			if jobService(name) && svc.StopGracePeriod != nil {
				longest = max(longest, time.Duration(*svc.StopGracePeriod))
			}
		}
	}
	return longest + time.Minute
}

// stopJobs stops this project's job containers with their services' stop
// grace (a warm shutdown: running jobs finish) without a converge: the
// watch's reaction to an announced upgrade, and the upgrader's PauseOld.
// The containers are only stopped; the next converge's plan removes or
// recreates them. It returns the IDs it stopped.
func (a *Agent) stopJobs(ctx context.Context, eng *engine.Engine, d engine.Desired, why string) ([]string, error) {
	if d.Project == nil {
		return nil, nil
	}
	cs, err := eng.Containers(ctx, d.Project.Name)
	if err != nil {
		return nil, err
	}
	p := engine.Plan{Project: d.Project.Name}
	var names, ids []string
	for _, c := range cs {
		if c.OneOff || !jobService(c.Service) || c.State != "running" {
			continue
		}
		if _, ok := d.Project.Services[c.Service]; !ok {
			continue // its stop grace is not known here; the plan stops it
		}
		p.Actions = append(p.Actions, engine.Action{Stage: engine.StageContainers, Kind: engine.ActStop, Service: c.Service, Container: c.Name, ID: c.ID, Reason: why})
		names, ids = append(names, c.Name), append(ids, c.ID)
	}
	if len(p.Actions) == 0 {
		return nil, nil
	}
	slices.Sort(names)
	a.log.Info("stopping the scheduler and workers (warm shutdown: running jobs finish)", "step", "upgrade pause", "containers", names, "reason", why)
	return ids, eng.Apply(ctx, d, p, engine.StageContainers)
}

// pauseNow is the watch's reaction to a new pause decision: stop the job
// containers at once (the upgrader waits for this instance's heartbeat),
// then say so. Bounded; a failure is logged and the heartbeat does not
// claim the pause.
func (a *Agent) pauseNow(ctx context.Context) bool {
	p := &a.pause
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), pauseBound)
	defer cancel()
	eng, err := a.docker()
	if err != nil {
		a.log.Error("pausing the scheduler and workers", "step", "upgrade pause", "err", err)
		return false
	}
	defer eng.Close()
	if _, err := a.stopJobs(ctx, eng, p.last, reasonPaused+" (to revision "+p.pausedFor+")"); err != nil {
		a.log.Error("pausing the scheduler and workers; the next converge stops them", "step", "upgrade pause", "err", err)
		return false
	}
	return true
}

// pauseOld is the upgrader's migrate.Options.PauseOld: stop this instance's
// own job containers (the old version's) before the upgrade runs; the
// converge's plan then recreates them with the new image after it. Should
// the upgrade fail, resume starts them again as they were.
func (a *Agent) pauseOld(r Rendered, eng *engine.Engine) func(context.Context) (func(context.Context), error) {
	return func(ctx context.Context) (func(context.Context), error) {
		d, err := a.desired(r)
		if err != nil {
			return nil, err
		}
		ids, err := a.stopJobs(ctx, eng, d, "the schema upgrade this instance runs")
		resume := func(ctx context.Context) {
			for _, id := range ids {
				if err := eng.Docker.ContainerStart(ctx, id, container.StartOptions{}); err != nil {
					a.log.Error("starting an old worker again after the failed upgrade; the next converge does", "step", "upgrade pause", "container", id, "err", err)
				}
			}
			if len(ids) > 0 {
				a.log.Info("the upgrade failed: this instance's old scheduler and workers run again", "step", "upgrade pause", "containers", len(ids))
			}
		}
		if err != nil {
			resume(ctx)
			return nil, err
		}
		return resume, nil
	}
}
