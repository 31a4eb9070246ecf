package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/redash-agent/redash-agent/internal/agent"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/metrics"
)

func metricsCmd(g *globals) *cobra.Command {
	var once bool
	c := &cobra.Command{
		Use:   "metrics --once",
		Short: "Read the queue backlog from Redis, publish it to CloudWatch once now, and print it",
		Long: `metrics --once reads each queue's queued and running jobs and live workers
from Redis (RQ; Redash 8.x's Celery: queued only) and publishes them now to
CloudWatch namespace ` + metrics.Namespace + `, without the cluster's metrics lease: an
operator asked. It writes nothing on the host. ` + "`run`" + ` publishes every
metrics-interval from one instance per cluster.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !once {
				return exitcode.UsageError(errors.New("metrics needs --once: `redash-agent run` publishes every metrics-interval by itself"))
			}
			g.readOnly = true // provider local's secrets are made in memory, not written
			a, err := g.newAgent(c.ErrOrStderr())
			if err != nil {
				return err
			}
			rep, err := a.MetricsOnce(c.Context())
			if rep.Sample.Cluster != "" { // read: print it, published or not
				if perr := printMetrics(c.OutOrStdout(), rep, g.json); perr != nil && err == nil {
					err = perr
				}
			}
			return err
		},
	}
	c.Flags().BoolVar(&once, "once", false, "publish one set now and exit")
	return c
}

// metricsQueueJSON is one queue in `metrics --once --json`; running and
// workers are null for Celery (8.x), which keeps neither in Redis.
type metricsQueueJSON struct {
	Queue   string `json:"queue"`
	Queued  int64  `json:"queued"`
	Running *int64 `json:"running"`
	Workers *int   `json:"workers"`
}

type metricsJSON struct {
	Cluster     string             `json:"cluster"`
	QueueSystem string             `json:"queue_system"` // rq or celery
	Namespace   string             `json:"namespace"`
	Region      string             `json:"region"`
	Published   bool               `json:"published"`
	TookMS      int64              `json:"took_ms"`
	Queued      int64              `json:"queued"`
	Running     *int64             `json:"running"`
	Workers     *int               `json:"workers"`
	Queues      []metricsQueueJSON `json:"queues"`
}

func metricsReportJSON(rep agent.MetricsReport) metricsJSON {
	b := rep.Sample.Backlog
	out := metricsJSON{
		Cluster: rep.Sample.Cluster, QueueSystem: "rq", Namespace: metrics.Namespace, Region: rep.Region,
		Published: rep.Published, TookMS: rep.Took.Milliseconds(), Queued: b.Queued(), Queues: []metricsQueueJSON{},
	}
	if b.Celery {
		out.QueueSystem = "celery"
	} else {
		running, workers := b.Running(), b.Workers
		out.Running, out.Workers = &running, &workers
	}
	for _, q := range b.Queues {
		row := metricsQueueJSON{Queue: q.Queue, Queued: q.Queued}
		if !b.Celery {
			running, workers := q.Running, q.Workers
			row.Running, row.Workers = &running, &workers
		}
		out.Queues = append(out.Queues, row)
	}
	return out
}

func printMetrics(w io.Writer, rep agent.MetricsReport, asJSON bool) error {
	j := metricsReportJSON(rep)
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(j)
	}
	dash := func(p any) string {
		switch v := p.(type) {
		case *int64:
			if v != nil {
				return fmt.Sprint(*v)
			}
		case *int:
			if v != nil {
				return fmt.Sprint(*v)
			}
		}
		return "-"
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE\tQUEUED\tRUNNING\tWORKERS")
	for _, q := range j.Queues {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", q.Queue, q.Queued, dash(q.Running), dash(q.Workers))
	}
	fmt.Fprintf(tw, "(all)\t%d\t%s\t%s\n", j.Queued, dash(j.Running), dash(j.Workers))
	if err := tw.Flush(); err != nil {
		return err
	}
	state := "published"
	if !j.Published {
		state = "NOT published"
	}
	fmt.Fprintf(w, "cluster %s (%s): %s to CloudWatch namespace %s in %s (%d ms)\n", j.Cluster, j.QueueSystem, state, j.Namespace, orDash(j.Region), j.TookMS)
	if j.QueueSystem == "celery" {
		fmt.Fprintln(w, "Celery (Redash 8.x) keeps neither its running tasks nor its workers in Redis: only queued jobs are published")
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// metricsInterval is how `config` shows metrics-interval: "off" for 0.
func metricsInterval(cfg config.Config) string {
	switch {
	case cfg.MetricsResolution == 0: // not resolved
		return ""
	case cfg.MetricsInterval <= 0:
		return "off"
	}
	return cfg.MetricsInterval.String()
}
