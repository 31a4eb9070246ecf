package agent

// The fast look `run` takes between converges (every changePoll): a changed
// secret version in Secrets Manager, or a changed record in the cluster's
// table (internal/cluster: a new secret key or cookie secret recorded, an
// upgrade announced or finished), converges at once instead of at the next
// refresh. Both reads are cheap: one Secrets Manager call for every secret,
// one SQL row on a session kept open between looks.

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/redash-agent/redash-agent/internal/cluster"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/migrate"
)

// changePoll spaces the fast looks. A rotated database password, whose old
// value stops working at once, reaches the containers within about this plus
// one converge.
const changePoll = 5 * time.Second

// watchState is what the last converge saw, for the fast looks to compare
// against, and the session they read the cluster's table on.
type watchState struct {
	// generation is the cluster table's generation the last converge
	// decided with; db the database it read it from (zero: none yet).
	generation int64
	db         desired.DB
	conn       *pgx.Conn
}

// sawCluster records the cluster table's generation a converge decided
// with, so a later change wakes run.
func (a *Agent) sawCluster(db desired.DB, generation int64) {
	a.watch.db, a.watch.generation = db, generation
}

// pollChanges says why run must converge now, or "" when nothing changed.
// A failed look is logged and waits for the next one: the refresh still
// converges whatever it missed.
func (a *Agent) pollChanges(ctx context.Context) string {
	if why := a.secretsChanged(ctx); why != "" {
		return why
	}
	return a.clusterChanged(ctx)
}

// clusterChanged compares the cluster table's generation with the one the
// last converge saw, and writes this instance's heartbeat (its image's head
// and what its job services are paused for; no generation bump). A changed
// generation that announces an upgrade past this image stops the job
// services here and now, before the converge: the upgrader waits for the
// heartbeat that says so (pause.go).
func (a *Agent) clusterChanged(ctx context.Context) string {
	w := &a.watch
	if w.db.Host == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(ctx, changePoll)
	defer cancel()
	if w.conn == nil || w.conn.IsClosed() {
		conn, err := migrate.Dial(ctx, w.db, "redash-agent-watch "+host())
		if err != nil {
			a.log.Debug("not reading the cluster's records this time", "step", "watch", "err", err)
			return ""
		}
		w.conn = conn
	}
	g, err := cluster.Generation(ctx, w.conn)
	if err != nil {
		a.log.Debug("not reading the cluster's records this time", "step", "watch", "err", err)
		_ = w.conn.Close(context.Background())
		w.conn = nil
		return ""
	}
	if g != w.generation {
		if st, err := cluster.Read(ctx, w.conn); err == nil {
			a.applyPause(ctx, st) // may take the job services' stop grace
		}
	}
	hctx, hcancel := context.WithTimeout(context.WithoutCancel(ctx), changePoll)
	defer hcancel()
	a.writeHeartbeat(hctx, w.conn)
	if g == w.generation {
		return ""
	}
	return fmt.Sprintf("the cluster's records changed (generation %d -> %d)", w.generation, g)
}

// host names this instance in pg_stat_activity.
func host() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "unknown-host"
	}
	return h
}

// closeWatch ends the watch's session.
func (a *Agent) closeWatch() {
	if a.watch.conn != nil {
		_ = a.watch.conn.Close(context.Background())
		a.watch.conn = nil
	}
}
