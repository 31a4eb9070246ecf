package migrate

// An upgrade across the fleet: announced in the agent's records before it
// runs, so every instance's old scheduler and workers stop taking jobs
// (internal/agent pause.go) while the schema changes under them.

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
)

// Bounds of the drain.
var (
	// heartbeatFresh: an instance whose heartbeat is older is not waited
	// for (stopped, or its agent is not `run`).
	heartbeatFresh = time.Minute
	// drainLogEvery spaces the "still draining" lines.
	drainLogEvery = 10 * time.Second
	// drainPoll spaces the looks at the heartbeats.
	drainPoll = time.Second
)

// upgrade is one `manage db upgrade` under the lock and its record. A nil
// *upgrade (create_db) records nothing.
type upgrade struct {
	o    Options
	conn *pgx.Conn
	log  *slog.Logger
	rec  cluster.Upgrade
	// resume starts this instance's old workers again after a failure.
	resume func(context.Context)
}

// drain announces the upgrade, stops this instance's old workers and waits,
// bounded by o.DrainWait, until every other live instance of another head
// has paused its own. An instance that does not answer in time is named in
// the journal and the upgrade goes ahead: holding it back forever would
// keep the whole fleet's workers stopped. A failure to announce fails Run
// before anything was stopped.
func (u *upgrade) drain(ctx context.Context) error {
	u.rec.Phase, u.rec.StartedAt = cluster.PhaseDraining, time.Now().UTC()
	if err := u.put(ctx); err != nil {
		return fmt.Errorf("announcing the upgrade %s -> %s in the agent's records: %w; nothing was stopped", u.rec.FromHead, u.rec.ToHead, err)
	}
	u.log.Info("upgrade announced: every instance's old scheduler and workers stop taking jobs", "from", u.rec.FromHead, "to", u.rec.ToHead)
	if u.o.PauseOld != nil {
		var err error
		if u.resume, err = u.o.PauseOld(ctx); err != nil {
			u.finish(context.WithoutCancel(ctx), u.conn, err)
			return fmt.Errorf("stopping this instance's old scheduler and workers before the upgrade: %w; the upgrade did not start", err)
		}
	}
	if err := cluster.Heartbeat(ctx, u.conn, cluster.Instance{Name: u.o.Instance, Head: u.rec.ToHead, PausedFor: u.rec.ToHead}); err != nil {
		u.log.Warn("writing this instance's heartbeat", "err", err)
	}

	start := time.Now()
	deadline := start.Add(u.o.DrainWait)
	lastLog := start
	for {
		waiting, err := u.draining(ctx)
		if err != nil {
			u.log.Warn("reading the other instances' heartbeats", "err", err)
		}
		if err == nil && len(waiting) == 0 {
			u.log.Info("every instance paused its old scheduler and workers", "waited", time.Since(start).Round(time.Millisecond))
			return u.advance(ctx, cluster.PhaseMigrating)
		}
		if time.Now().After(deadline) {
			u.log.Warn(fmt.Sprintf("instances did not say they paused their old workers within %s; upgrading anyway: their old workers may fail jobs against the new schema until they converge", u.o.DrainWait),
				"instances", strings.Join(waiting, ", "))
			return u.advance(ctx, cluster.PhaseMigrating)
		}
		if time.Since(lastLog) >= drainLogEvery {
			u.log.Info("waiting for instances to pause their old workers (warm shutdown: running jobs finish)",
				"instances", strings.Join(waiting, ", "), "waited", time.Since(start).Round(time.Second), "bound", u.o.DrainWait)
			lastLog = time.Now()
		}
		select {
		case <-time.After(drainPoll):
		case <-ctx.Done():
			err := fmt.Errorf("waiting for instances %s to pause their old workers before the upgrade: %w", strings.Join(waiting, ", "), ctx.Err())
			u.finish(context.WithoutCancel(ctx), u.conn, err)
			return err
		}
	}
}

// draining lists the live instances of another head that have not said they
// paused for this upgrade.
func (u *upgrade) draining(ctx context.Context) ([]string, error) {
	st, err := cluster.Read(ctx, u.conn)
	if err != nil {
		return nil, err
	}
	var now time.Time
	if err := u.conn.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
		return nil, err
	}
	var out []string
	for _, in := range st.Instances {
		if in.Name == u.o.Instance || in.Head == u.rec.ToHead || in.PausedFor == u.rec.ToHead || now.Sub(in.SeenAt) > heartbeatFresh {
			continue
		}
		out = append(out, in.Name)
	}
	return out, nil
}

func (u *upgrade) advance(ctx context.Context, phase string) error {
	u.rec.Phase = phase
	if err := u.put(ctx); err != nil {
		err = fmt.Errorf("recording the upgrade's phase %q: %w; the upgrade did not start", phase, err)
		return err
	}
	return nil
}

// finish records the upgrade's end: done, or failed with err (the schema is
// where it was: Alembic's upgrade is one transaction on PostgreSQL), which
// lets the old workers run again. A failed write is logged: the next
// upgrade overwrites the record.
func (u *upgrade) finish(ctx context.Context, conn *pgx.Conn, err error) {
	if u == nil {
		return
	}
	u.conn = conn
	u.rec.EndedAt = time.Now().UTC()
	u.rec.Phase = cluster.PhaseDone
	if err != nil {
		u.rec.Phase, u.rec.Error = cluster.PhaseFailed, redactUser(err, u.o.DB.User).Error()
	}
	if perr := u.put(ctx); perr != nil {
		u.log.Error("recording the upgrade's end in the agent's records; instances of the old version keep their workers paused until the next upgrade record", "phase", u.rec.Phase, "err", perr)
	}
	if err != nil && u.resume != nil {
		// The schema is where it was: the old workers may work again.
		rctx, cancel := context.WithTimeout(ctx, recordTimeout)
		defer cancel()
		u.resume(rctx)
	}
}

func (u *upgrade) put(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	if err := cluster.Ensure(ctx, u.conn); err != nil {
		return err
	}
	return cluster.Put(ctx, u.conn, cluster.RecUpgrade, u.rec, u.o.Instance)
}
