package agent

// The 8.x scheduler lease (internal/lease) as the pipeline uses it: only the
// instance that holds it hands the scheduler service to the engine. The
// compose file on disk keeps the scheduler, so `docker compose` users see
// the whole layout; the plan removes a scheduler this instance must not run.

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/redash-agent/redash-agent/internal/backoff"
	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/lease"
)

// schedulerService is the service that runs Celery beat on 8.x.
const schedulerService = "scheduler"

// How often `run` looks at the lease: the holder checks its session, the
// others try to take it (each spread ±25%, backoff.Spread). A holder's
// loss is seen by the server within about 25 s (lease's keepalives), so
// another instance takes over within a minute.
const (
	leaseHeldEvery = 10 * time.Second
	leaseTryEvery  = 15 * time.Second
)

// leaseMode is how a command uses the lease.
type leaseMode int

const (
	// leaseOnce is `up`: it takes a free lease for its converge only and
	// releases it when the converge ends (only `run` keeps it).
	leaseOnce leaseMode = iota
	// leaseKeep is `run`: it holds the lease across converges.
	leaseKeep
	// leasePeek is `render --plan`: it reads who holds the lease, takes nothing.
	leasePeek
)

// Reasons the plan and the journal give.
const (
	reasonOtherHolds  = "another instance holds the 8.x scheduler lease"
	reasonLeaseLost   = "lost the 8.x scheduler lease"
	reasonLeaseTaken  = "took the 8.x scheduler lease"
	reasonLeaseNoRead = "the 8.x scheduler lease could not be checked"
)

// schedulerLease is what one agent knows of the lease. It is used from one
// goroutine at a time (run's loop and the converges it runs).
type schedulerLease struct {
	mode     leaseMode
	instance string
	log      *slog.Logger

	applies bool       // the last converge's configuration needs the lease
	db      desired.DB // where it was last taken or tried
	held    *lease.Lease
	// last is the engine's view of the last converge, to stop the
	// scheduler at once when the lease is lost or `run` stops.
	last engine.Desired
	// holder is the last holder logged, so the journal says it once.
	holder string
	// failing: the last poll could not reach the database (logged once).
	failing bool
}

// schedulerChoice is one converge's decision.
type schedulerChoice struct {
	run    bool   // hand the scheduler service to the engine
	reason string // why not: the plan's reason for removing it
	note   string // a line for `render --plan` and up's output
	done   func() // releases a lease taken for this converge only
}

// instanceName names this instance's lease session: its host name and the
// compose project (two agents on one Docker, as the tests run them, differ
// by project; on EC2 the host name is the instance's private DNS name).
func instanceName(project string) string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "unknown-host"
	}
	return h + " " + project
}

// needsLease: the configuration runs an 8.x scheduler that only the agent
// can keep single. RQ (9 on) locks its own scheduler; provider local is one
// instance with a bundled database the host cannot reach.
func needsLease(r Rendered) bool {
	if r.Project == nil || r.State.Spec.Local {
		return false
	}
	if _, ok := r.Project.Services[schedulerService]; !ok {
		return false
	}
	f, err := compose.FamilyFor(r.Config.Version)
	return err == nil && f.SingleScheduler()
}

// scheduler decides whether this converge runs the scheduler: `run` (which
// set a.sched) keeps the lease, `up` takes it for this converge only, and
// peek (`render --plan`) only reads it. r is returned with the scheduler
// left out of the project when not. The decision is a logged step only
// where the lease applies.
func (a *Agent) scheduler(ctx context.Context, r Rendered, peek bool) (Rendered, schedulerChoice) {
	s := a.sched
	switch {
	case peek:
		s = &schedulerLease{mode: leasePeek}
	case s == nil:
		s = &schedulerLease{mode: leaseOnce}
	}
	s.log = a.log
	ch := schedulerChoice{run: true, done: func() {}}
	s.applies = needsLease(r)
	if !s.applies {
		s.drop("the configuration runs no 8.x scheduler")
		return r, ch
	}
	s.instance = instanceName(r.Project.Name)
	_ = a.step(ctx, "scheduler lease", func(ctx context.Context) error {
		ch = s.decide(ctx, r.State.DB)
		return nil
	})
	if ch.run {
		return r, ch
	}
	out := r
	p := *r.Project
	p.Services = types.Services(maps.Clone(r.Project.Services))
	delete(p.Services, schedulerService)
	out.Project = &p
	return out, ch
}

// decide is the lease's answer for one converge.
func (s *schedulerLease) decide(ctx context.Context, db desired.DB) schedulerChoice {
	ch := schedulerChoice{done: func() {}}
	if s.held != nil && !sameDB(s.held.DB(), db) {
		s.drop("the database moved")
	}
	if s.held != nil {
		err := s.held.Held(ctx)
		if err == nil {
			ch.run, ch.note = true, "8.x scheduler: this instance holds the lease"
			return ch
		}
		s.log.Warn(reasonLeaseLost, "step", "scheduler lease", "err", err)
		s.held = nil
	}
	s.db = db
	if s.mode == leasePeek {
		return s.peek(ctx, db)
	}
	l, hs, err := lease.Try(ctx, db, s.instance)
	if err != nil {
		s.log.Warn(reasonLeaseNoRead+"; the scheduler does not run here until it can be", "step", "scheduler lease", "err", err)
		ch.reason, ch.note = reasonLeaseNoRead, "8.x scheduler: not run here: "+err.Error()
		return ch
	}
	if l != nil {
		ch.run = true
		if s.mode == leaseKeep {
			s.held, s.holder = l, ""
			s.log.Info(reasonLeaseTaken+": this instance runs the scheduler", "step", "scheduler lease", "holder", l.Name())
			ch.note = "8.x scheduler: this instance holds the lease"
			return ch
		}
		// up: nobody keeps the lease after up exits.
		s.log.Warn("up took the 8.x scheduler lease for this converge only and starts the scheduler; the lease ends when up exits, "+
			"and only `redash-agent run` (the systemd unit) keeps it: run it on every instance, or another instance's run may start a second scheduler",
			"step", "scheduler lease", "holder", l.Name())
		ch.note = "8.x scheduler: no instance held the lease; up started the scheduler, but only `redash-agent run` keeps the lease"
		ch.done = l.Release
		return ch
	}
	if s.mode == leaseOnce && lease.HeldBy(hs, s.instance) {
		// This instance's own `run` holds it between its converges.
		ch.run, ch.note = true, "8.x scheduler: this instance's `redash-agent run` holds the lease"
		return ch
	}
	who := lease.Describe(hs)
	if who != s.holder {
		s.log.Info("the 8.x scheduler runs on another instance: not here", "step", "scheduler lease", "holder", who)
		s.holder = who
	}
	ch.reason, ch.note = reasonOtherHolds, "8.x scheduler: not run here: "+reasonOtherHolds+": "+who
	return ch
}

// peek is `render --plan`'s decision: what up would do, taking nothing.
func (s *schedulerLease) peek(ctx context.Context, db desired.DB) schedulerChoice {
	ch := schedulerChoice{done: func() {}}
	hs, err := lease.Holders(ctx, db)
	switch {
	case err != nil:
		ch.reason, ch.note = reasonLeaseNoRead, "8.x scheduler: up would not run it: "+err.Error()
	case len(hs) == 0:
		ch.run = true
		ch.note = "8.x scheduler: no instance holds the lease; up would take it for its converge and start the scheduler, but only `redash-agent run` keeps it"
	case lease.HeldBy(hs, s.instance):
		ch.run, ch.note = true, "8.x scheduler: this instance holds the lease"
	default:
		ch.reason, ch.note = reasonOtherHolds, "8.x scheduler: not run here: "+reasonOtherHolds+": "+lease.Describe(hs)
	}
	return ch
}

// explain gives the plan's stop and remove of the scheduler the lease's
// reason instead of "orphan".
func (ch schedulerChoice) explain(p *engine.Plan) {
	if ch.run {
		return
	}
	for i, a := range p.Actions {
		if a.Service == schedulerService && (a.Kind == engine.ActStop || a.Kind == engine.ActRemove) {
			p.Actions[i].Reason = ch.reason
		}
	}
}

// drop releases a held lease.
func (s *schedulerLease) drop(why string) {
	if s.held == nil {
		return
	}
	s.log.Info("releasing the 8.x scheduler lease", "step", "scheduler lease", "reason", why)
	s.held.Release()
	s.held = nil
}

// interval is the wait until run's next look at the lease; 0 when the
// configuration needs none.
func (s *schedulerLease) interval() time.Duration {
	switch {
	case s == nil || !s.applies:
		return 0
	case s.held != nil:
		return backoff.Spread(leaseHeldEvery)
	default:
		return backoff.Spread(leaseTryEvery)
	}
}

// poll is run's look at the lease between converges. It returns why to
// converge now ("" when nothing changed). A lost lease stops the scheduler
// at once, before the converge: that converge may fail before its plan (a
// Secrets Manager outage) while another instance starts its own.
func (a *Agent) pollLease(ctx context.Context) string {
	s := a.sched
	if s == nil || !s.applies {
		return ""
	}
	if s.held != nil {
		err := s.held.Held(ctx)
		if err == nil || ctx.Err() != nil {
			return ""
		}
		s.held = nil
		a.log.Warn(reasonLeaseLost+": stopping this instance's scheduler", "step", "scheduler lease", "err", err)
		a.stopScheduler(ctx, reasonLeaseLost)
		return reasonLeaseLost
	}
	l, hs, err := lease.Try(ctx, s.db, s.instance)
	if err != nil {
		// Once per outage: the database may stay away for a while.
		if ctx.Err() == nil && !s.failing {
			a.log.Warn(reasonLeaseNoRead+"; trying again every ~15 s, logged again once it answers", "step", "scheduler lease", "err", err)
		}
		s.failing = true
		return ""
	}
	if s.failing {
		a.log.Info("the database answers the scheduler lease again", "step", "scheduler lease")
		s.failing = false
	}
	if l == nil {
		if who := lease.Describe(hs); who != s.holder {
			a.log.Info("the 8.x scheduler runs on another instance: not here", "step", "scheduler lease", "holder", who)
			s.holder = who
		}
		return ""
	}
	s.held, s.holder = l, ""
	a.log.Info(reasonLeaseTaken+": this instance runs the scheduler", "step", "scheduler lease", "holder", l.Name())
	return reasonLeaseTaken
}

// stopSchedulerBound bounds stopScheduler (the container's stop grace included).
const stopSchedulerBound = 30 * time.Second

// stopScheduler stops and removes this project's scheduler container
// without a converge (a lost lease, or `run` stopping). Bounded; a failure
// is logged: the next converge's plan removes it.
func (a *Agent) stopScheduler(ctx context.Context, why string) {
	s := a.sched
	if s == nil || s.last.Project == nil {
		return
	}
	// Bounded well inside systemd's stop timeout (90 s) on the way out.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), stopSchedulerBound)
	defer cancel()
	eng, err := a.docker()
	if err != nil {
		a.log.Error("stopping the scheduler", "step", "scheduler lease", "err", err)
		return
	}
	defer eng.Close()
	project := s.last.Project.Name
	cs, err := eng.Containers(ctx, project)
	if err != nil {
		a.log.Error("stopping the scheduler: listing the containers", "step", "scheduler lease", "err", err)
		return
	}
	p := engine.Plan{Project: project}
	for _, c := range cs {
		if c.Service == schedulerService && !c.OneOff {
			stop := len(p.Actions)
			p.Actions = append(p.Actions,
				engine.Action{Stage: engine.StageContainers, Kind: engine.ActStop, Service: c.Service, Container: c.Name, ID: c.ID, Reason: why},
				engine.Action{Stage: engine.StageContainers, Kind: engine.ActRemove, Service: c.Service, Container: c.Name, ID: c.ID, Reason: why, After: []int{stop}})
		}
	}
	if len(p.Actions) == 0 {
		return
	}
	if err := eng.Apply(ctx, s.last, p, engine.StageContainers); err != nil {
		a.log.Error("stopping the scheduler", "step", "scheduler lease", "err", err)
	}
}

// releaseLease is run's last act on SIGTERM: a scheduler must not outlive
// the lease (another instance would start a second one), so the holder
// stops its scheduler, then releases. Every other container keeps running.
func (a *Agent) releaseLease(ctx context.Context) {
	s := a.sched
	if s == nil || s.held == nil {
		return
	}
	a.log.Info("stopping: this instance's 8.x scheduler stops with the lease; another instance takes it over", "step", "shutdown")
	a.stopScheduler(ctx, "redash-agent run stops: the 8.x scheduler lease ends")
	s.drop("redash-agent run stops")
}

// SchedulerLease says, for `status` and `doctor`, whether this instance
// holds the 8.x scheduler lease. It changes nothing. ok is false when the
// lease applies and another instance (or nobody) holds it.
func (a *Agent) SchedulerLease(ctx context.Context, r Rendered) (text string, ours bool) {
	if !needsLease(r) {
		return "not used: " + noLeaseWhy(r), true
	}
	hs, err := lease.Holders(ctx, r.State.DB)
	switch {
	case err != nil:
		return "unknown: " + err.Error(), false
	case len(hs) == 0:
		return "held by no instance: no 8.x scheduler runs under `redash-agent run`", false
	case lease.HeldBy(hs, instanceName(r.Project.Name)):
		return "held by this instance: " + lease.Describe(hs), true
	default:
		return "held by another instance: " + lease.Describe(hs), false
	}
}

func noLeaseWhy(r Rendered) string {
	if r.State.Spec.Local {
		return "provider local runs one instance"
	}
	if r.Project != nil {
		if _, ok := r.Project.Services[schedulerService]; !ok {
			return "role " + r.Config.Role + " runs no scheduler"
		}
	}
	return fmt.Sprintf("Redash %s's scheduler takes its own lock in Redis", r.Config.Version)
}

func sameDB(a, b desired.DB) bool {
	return a.Host == b.Host && a.Port == b.Port && a.Name == b.Name && a.User == b.User
}
