// Package metrics publishes Redash's queue backlog to CloudWatch, so an
// Auto Scaling group can scale its workers on the jobs that wait rather than
// on CPU. It reads the queue system's own keys in Redis (internal/queues)
// and sends one PutMetricData per tick, in namespace Redash:
//
//	QueuedJobs   Cluster, Queue   jobs waiting in the queue          (RQ and Celery)
//	QueuedJobs   Cluster          jobs waiting in all queues: the one to scale on
//	RunningJobs  Cluster, Queue   jobs started and not expired       (RQ only)
//	Workers      Cluster, Queue   live workers consuming the queue   (RQ only)
//	Workers      Cluster          live workers                       (RQ only)
//
// every one Unit Count. Celery (Redash 8.x) registers neither its workers
// nor its running tasks in Redis, so 8.x publishes the queued counts only.
//
// One instance per cluster publishes at a time (Loop): the queues are the
// cluster's, not the instance's, so a fleet would only pay N times for the
// same numbers. It holds Lease, a PostgreSQL advisory lock on a session of
// its own (internal/lease), that frees itself when its holder dies.
//
// Side effects: reads Redis; PutMetricData calls; one PostgreSQL session
// for the lease. The Redis password never reaches a log line or an error.
package metrics

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"

	"github.com/redash-agent/redash-agent/internal/lease"
	"github.com/redash-agent/redash-agent/internal/queues"
)

// Names CloudWatch sees: the template's scaling policy and dashboard use
// them (packaging/cloudformation), so they are fixed.
const (
	Namespace     = "Redash"
	MetricQueued  = "QueuedJobs"
	MetricRunning = "RunningJobs"
	MetricWorkers = "Workers"
	DimCluster    = "Cluster"
	DimQueue      = "Queue"
)

// LeaseKey is the advisory-lock key of the publisher's lease ("REDASHMT"),
// distinct from migrate's lock and the 8.x scheduler lease, and fixed
// forever: agents that disagreed on it would both publish.
const LeaseKey int64 = 0x524544415348_4d54

// Lease is the lease one publisher per cluster holds.
var Lease = lease.Kind{Key: LeaseKey, What: "the backlog metrics lease", NamePrefix: "redash-agent-metrics "}

// maxDatums is PutMetricData's limit of data points per request.
const maxDatums = 1000

// Source says where one cluster's backlog is and how to read it.
type Source struct {
	Cluster string // the Cluster dimension: the configuration's project
	Celery  bool   // Redash 8.x: Celery's queues, not RQ's
	Redis   queues.Conn
	// Queues are reported even while empty (a dashboard line at 0, not a
	// gap); RQ adds every queue its registry and live workers name.
	Queues []string
}

// Sample is one reading of the backlog.
type Sample struct {
	Cluster string
	Backlog queues.Backlog
	At      time.Time
}

// Read reads src's backlog once, bounded by ctx and the reader's own
// per-call timeouts.
func Read(ctx context.Context, src Source, now time.Time) (Sample, error) {
	r := queues.Open(src.Redis)
	defer r.Close()
	var b queues.Backlog
	var err error
	if src.Celery {
		b, err = r.CeleryBacklog(ctx, src.Queues)
	} else {
		b, err = r.RQBacklog(ctx, src.Queues, now)
	}
	if err != nil {
		return Sample{}, fmt.Errorf("reading the queue backlog: %w", err)
	}
	return Sample{Cluster: src.Cluster, Backlog: b, At: now}, nil
}

// Datums are the data points of s, at CloudWatch storage resolution
// (60 or 1 seconds).
func Datums(s Sample, resolution int) []types.MetricDatum {
	res := aws.Int32(int32(resolution))
	cluster := types.Dimension{Name: aws.String(DimCluster), Value: aws.String(s.Cluster)}
	at := aws.Time(s.At)
	datum := func(name string, v float64, dims ...types.Dimension) types.MetricDatum {
		return types.MetricDatum{
			MetricName: aws.String(name), Value: aws.Float64(v), Unit: types.StandardUnitCount,
			Dimensions: append([]types.Dimension{cluster}, dims...), Timestamp: at, StorageResolution: res,
		}
	}
	b := s.Backlog
	out := []types.MetricDatum{datum(MetricQueued, float64(b.Queued()))}
	if !b.Celery {
		out = append(out, datum(MetricWorkers, float64(b.Workers)))
	}
	for _, q := range b.Queues {
		queue := types.Dimension{Name: aws.String(DimQueue), Value: aws.String(q.Queue)}
		out = append(out, datum(MetricQueued, float64(q.Queued), queue))
		if !b.Celery {
			out = append(out, datum(MetricRunning, float64(q.Running), queue), datum(MetricWorkers, float64(q.Workers), queue))
		}
	}
	return out
}

// API is the one CloudWatch call the publisher makes.
type API interface {
	PutMetricData(ctx context.Context, in *cloudwatch.PutMetricDataInput, opts ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error)
}

var _ API = (*cloudwatch.Client)(nil)

// Publish sends s in as few PutMetricData calls as the API's limits allow.
func Publish(ctx context.Context, api API, s Sample, resolution int) error {
	ds := Datums(s, resolution)
	for chunk := range slices.Chunk(ds, maxDatums) {
		_, err := api.PutMetricData(ctx, &cloudwatch.PutMetricDataInput{Namespace: aws.String(Namespace), MetricData: chunk})
		if err != nil {
			return fmt.Errorf("publishing %d backlog metrics to CloudWatch (namespace %s): %w: the instance role needs cloudwatch:PutMetricData (condition cloudwatch:namespace = %s), and the instance needs a route to the monitoring endpoint",
				len(chunk), Namespace, err, Namespace)
		}
	}
	return nil
}
