package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/lease"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// These tests run the lease decisions of run, up and render --plan against
// the real PostgreSQL, without Docker: each "instance" is an Agent with its
// own project name on one shared database.

func leaseAgent(t *testing.T, keep bool) (*Agent, *testenv.SyncBuffer) {
	t.Helper()
	logs := &testenv.SyncBuffer{}
	a := newAgent(Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), StateDir: t.TempDir(), Dir: t.TempDir()}, remotes{})
	if keep {
		a.sched = &schedulerLease{mode: leaseKeep, log: a.log}
		t.Cleanup(func() { a.releaseLease(context.Background()) })
	}
	return a, logs
}

func leaseRendered(db desired.DB, project, version string) Rendered {
	return Rendered{
		Config: config.Config{Version: version, Role: compose.RoleAll, Project: project},
		State:  desired.State{DB: db},
		Project: &types.Project{Name: project, Services: types.Services{
			compose.ServerService: {Name: compose.ServerService},
			schedulerService:      {Name: schedulerService},
		}},
	}
}

func leaseDB(t *testing.T) desired.DB {
	t.Helper()
	pg := testenv.Postgres(t)
	return desired.DB{Host: pg.Host, Port: pg.Port, User: pg.User, Password: secrets.NewValue(pg.Password), Name: pg.NewDatabase(t)}
}

func hasScheduler(r Rendered) bool {
	_, ok := r.Project.Services[schedulerService]
	return ok
}

func TestSchedulerLeaseRunTakesOver(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()
	a, _ := leaseAgent(t, true)
	b, bLogs := leaseAgent(t, true)
	ra, rb := leaseRendered(db, "inst-a", "8.0.0.b32245"), leaseRendered(db, "inst-b", "8.0.0.b32245")

	viewA, chA := a.scheduler(ctx, ra, false)
	if !chA.run || !hasScheduler(viewA) {
		t.Fatalf("the first run on a free lease does not run the scheduler: %+v", chA)
	}
	viewB, chB := b.scheduler(ctx, rb, false)
	if chB.run || hasScheduler(viewB) || chB.reason != reasonOtherHolds {
		t.Fatalf("the second run runs the scheduler while the first holds the lease: %+v", chB)
	}
	if !hasScheduler(rb) {
		t.Error("leaving the scheduler out changed the Rendered the compose file is written from")
	}
	if !strings.Contains(bLogs.String(), lease.Name(instanceName("inst-a"))) {
		t.Errorf("the non-holder's journal does not name the holder %q:\n%s", lease.Name(instanceName("inst-a")), bLogs)
	}
	if why := b.pollLease(ctx); why != "" {
		t.Errorf("a non-holder's poll while the holder lives: %q, want nothing", why)
	}
	if why := a.pollLease(ctx); why != "" {
		t.Errorf("the holder's poll of a live lease: %q, want nothing", why)
	}

	// The holder's session dies (failover, pg_terminate_backend).
	terminate(t, db, lease.Name(instanceName("inst-a")))
	if why := a.pollLease(ctx); why != reasonLeaseLost {
		t.Errorf("the holder's poll after its session died: %q, want %q", why, reasonLeaseLost)
	}
	if why := b.pollLease(ctx); why != reasonLeaseTaken {
		t.Errorf("the other's poll after the holder's loss: %q, want %q", why, reasonLeaseTaken)
	}
	if _, ch := b.scheduler(ctx, rb, false); !ch.run {
		t.Errorf("the new holder's converge does not run the scheduler: %+v", ch)
	}
	if view, ch := a.scheduler(ctx, ra, false); ch.run || hasScheduler(view) {
		t.Errorf("the old holder's converge still runs the scheduler: %+v", ch)
	}

	// A plan made without the scheduler says why it removes it.
	p := engine.Plan{Actions: []engine.Action{
		{Kind: engine.ActStop, Service: schedulerService, Reason: "orphan: service scheduler is no longer in the project"},
		{Kind: engine.ActRemove, Service: schedulerService, Reason: "orphan: service scheduler is no longer in the project"},
		{Kind: engine.ActRemove, Service: "old", Reason: "orphan: service old is no longer in the project"},
	}}
	_, ch := a.scheduler(ctx, ra, false)
	ch.explain(&p)
	if p.Actions[0].Reason != reasonOtherHolds || p.Actions[1].Reason != reasonOtherHolds || p.Actions[2].Reason == reasonOtherHolds {
		t.Errorf("plan reasons after explain: %q", p.String())
	}
}

func TestSchedulerLeaseUpAndPlan(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()

	// Nobody holds it: render --plan says up would start it; up takes it
	// for its converge only and warns that only run keeps it.
	plan, _ := leaseAgent(t, false)
	if _, ch := plan.scheduler(ctx, leaseRendered(db, "inst-a", "8.0.0.b32245"), true); !ch.run || !strings.Contains(ch.note, "only `redash-agent run` keeps it") {
		t.Errorf("render --plan on a free lease: %+v", ch)
	}
	up, upLogs := leaseAgent(t, false)
	_, ch := up.scheduler(ctx, leaseRendered(db, "inst-a", "8.0.0.b32245"), false)
	if !ch.run || !strings.Contains(upLogs.String(), "only `redash-agent run`") {
		t.Errorf("up on a free lease: %+v; log:\n%s", ch, upLogs)
	}
	if hs, _ := lease.Holders(ctx, db); !lease.HeldBy(hs, instanceName("inst-a")) {
		t.Errorf("up does not hold the lease during its converge: %s", lease.Describe(hs))
	}
	ch.done()
	if hs, _ := lease.Holders(ctx, db); len(hs) != 0 {
		t.Errorf("up's lease outlives its converge: %s", lease.Describe(hs))
	}

	// inst-b's run holds it: up on inst-b keeps the scheduler (its own
	// run's), up and render --plan on inst-a leave it out.
	run, _ := leaseAgent(t, true)
	if _, ch := run.scheduler(ctx, leaseRendered(db, "inst-b", "8.0.0.b32245"), false); !ch.run {
		t.Fatalf("run on a free lease: %+v", ch)
	}
	if _, ch := up.scheduler(ctx, leaseRendered(db, "inst-b", "8.0.0.b32245"), false); !ch.run {
		t.Errorf("up on the instance whose run holds the lease leaves the scheduler out: %+v", ch)
	}
	if view, ch := up.scheduler(ctx, leaseRendered(db, "inst-a", "8.0.0.b32245"), false); ch.run || hasScheduler(view) {
		t.Errorf("up on another instance runs the scheduler: %+v", ch)
	}
	if _, ch := plan.scheduler(ctx, leaseRendered(db, "inst-a", "8.0.0.b32245"), true); ch.run || !strings.Contains(ch.note, reasonOtherHolds) {
		t.Errorf("render --plan on another instance: %+v", ch)
	}
	text, ours := up.SchedulerLease(ctx, leaseRendered(db, "inst-b", "8.0.0.b32245"))
	if !ours || !strings.HasPrefix(text, "held by this instance") {
		t.Errorf("status on the holder: %q, %v", text, ours)
	}
	text, ours = up.SchedulerLease(ctx, leaseRendered(db, "inst-a", "8.0.0.b32245"))
	if ours || !strings.HasPrefix(text, "held by another instance") {
		t.Errorf("status on another instance: %q, %v", text, ours)
	}
}

func TestSchedulerLeaseOnlyFor8(t *testing.T) {
	db := leaseDB(t)
	ctx := context.Background()
	for _, v := range []string{"9.0.0-beta.b42121", "10.1.0.b50633", "25.8.0"} {
		a, logs := leaseAgent(t, true)
		view, ch := a.scheduler(ctx, leaseRendered(db, "inst-"+strings.Split(v, ".")[0], v), false)
		if !ch.run || !hasScheduler(view) || ch.note != "" || a.sched.interval() != 0 {
			t.Errorf("%s: %+v", v, ch)
		}
		if strings.Contains(logs.String(), "scheduler lease") {
			t.Errorf("%s: a lease step in the journal:\n%s", v, logs)
		}
	}
	if hs, _ := lease.Holders(ctx, db); len(hs) != 0 {
		t.Errorf("a lease was taken for RQ: %s", lease.Describe(hs))
	}
}

// terminate ends the sessions named app, as a failover or an operator would.
func terminate(t *testing.T, db desired.DB, app string) {
	t.Helper()
	ctx := context.Background()
	conn, err := testenv.Postgres(t).Connect(ctx, db.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var pid int32
	if err := conn.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&pid); err != nil {
		t.Fatalf("finding the session %q: %v", app, err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
}
