package metrics

// loop.go: `run`'s publisher, in a goroutine of its own so that neither a
// Redis that does not answer nor a slow CloudWatch ever holds a converge or
// the loop that waits for the next one. Every tick is bounded (tickBound);
// a failure is a gap in the metrics, logged once per outage.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/schemas"
	"github.com/aws/smithy-go/transport/http/protocol/awsquery"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/lease"
)

// maxTickBound bounds one tick (lease, read, publish) however long the
// interval: a tick must end well before the next one is due.
const maxTickBound = 30 * time.Second

// NewCloudWatch is the CloudWatch client for region, from the SDK's
// standard settings (AWS_ENDPOINT_URL_CLOUDWATCH, the instance role).
func NewCloudWatch(ctx context.Context, region string) (*cloudwatch.Client, error) {
	if region == "" {
		return nil, exitcode.ConfigError(errors.New("choosing the AWS region for CloudWatch: none given: run on EC2 (the region comes from IMDS) or set AWS_REGION"))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(region),
		// Two attempts: a tick is bounded anyway, and the next one retries.
		awsconfig.WithRetryMaxAttempts(2))
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration for CloudWatch: %w: check the AWS_* environment variables and shared config files", err)
	}
	return cloudwatch.NewFromConfig(cfg, QueryProtocol), nil
}

// QueryProtocol makes a client speak CloudWatch's awsQuery protocol instead
// of the SDK's default, Smithy RPC v2 CBOR. CloudWatch serves both; the
// agent sends what its tests can check against moto_server (5.2 routes no
// CBOR request), so what is tested is what runs.
func QueryProtocol(o *cloudwatch.Options) {
	o.Protocol = awsquery.New(schemas.GraniteServiceVersion20100801)
}

// Settings are what the publisher does, from the last configuration.
type Settings struct {
	// Publish is false when this instance must not publish; Why says why
	// (logged once).
	Publish bool
	Why     string

	Source     Source
	Interval   time.Duration
	Resolution int    // 60 or 1
	Region     string // of the CloudWatch endpoint
	// DB and Instance take the lease: the cluster's database, and this
	// instance's name in pg_stat_activity.
	DB       desired.DB
	Instance string
}

// Loop publishes the backlog every Settings.Interval while this instance
// holds the lease. Set may be called from any goroutine; Run runs once.
type Loop struct {
	log *slog.Logger
	// NewAPI builds the CloudWatch client for a region (NewCloudWatch).
	NewAPI func(ctx context.Context, region string) (API, error)
	now    func() time.Time

	set chan Settings // the latest settings, at most one pending

	// Run's own state.
	api     API
	region  string
	held    *lease.Lease
	holder  string          // the other holder last logged
	failing map[string]bool // what failed at the last try (logged once)
	said    string          // the last "publishing / not publishing" logged

	mu   sync.Mutex
	last Tick
}

// Tick is what the last tick did, for tests and the log.
type Tick struct {
	Published bool
	Sample    Sample
	Took      time.Duration // the read and the publish
	Err       error
}

// NewLoop returns a publisher that logs to log.
func NewLoop(log *slog.Logger) *Loop {
	return &Loop{
		log: log, now: time.Now, set: make(chan Settings, 1), failing: map[string]bool{},
		NewAPI: func(ctx context.Context, region string) (API, error) { return NewCloudWatch(ctx, region) },
	}
}

// Set hands the loop new settings; the latest wins.
func (l *Loop) Set(s Settings) {
	for {
		select {
		case l.set <- s:
			return
		default:
		}
		select {
		case <-l.set: // drop the stale one
		default:
		}
	}
}

// Last is what the last tick did.
func (l *Loop) Last() Tick {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.last
}

// Run publishes until ctx ends, then releases the lease. The first tick
// comes one interval after the first settings: the lease holder already
// publishes, and a restarted agent is no reason for a burst of calls.
func (l *Loop) Run(ctx context.Context) {
	defer l.release("redash-agent run stops")
	var cur Settings
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// next is when the next tick is due: ticks keep to the interval's
	// grid however long each takes, so a period holds one data point.
	var next time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-l.set:
			if s.Publish != cur.Publish || s.Interval != cur.Interval {
				timer.Stop()
				if s.Publish {
					next = time.Now().Add(s.Interval)
					timer.Reset(time.Until(next))
				}
			}
			if !s.Publish {
				l.release(s.Why)
			}
			cur = s
			l.say(s)
		case <-timer.C:
			l.tick(ctx, cur)
			next = next.Add(cur.Interval)
			if now := time.Now(); next.Before(now) {
				next = now.Add(cur.Interval) // a tick overran: skip, do not catch up
			}
			timer.Reset(time.Until(next))
		}
	}
}

// say logs whether this instance takes part, when that changes.
func (l *Loop) say(s Settings) {
	msg := fmt.Sprintf("backlog metrics: publishing to CloudWatch namespace %s every %s (one instance per cluster, lease %q)", Namespace, s.Interval, Lease.NamePrefix+s.Instance)
	if !s.Publish {
		msg = "backlog metrics: not published from this instance: " + s.Why
	}
	if msg != l.said {
		l.log.Info(msg, "step", "metrics", "cluster", s.Source.Cluster)
		l.said = msg
	}
}

// tick publishes once if this instance holds (or takes) the lease.
func (l *Loop) tick(ctx context.Context, s Settings) {
	ctx, cancel := context.WithTimeout(ctx, min(s.Interval, maxTickBound))
	defer cancel()
	if !l.holdLease(ctx, s) {
		return
	}
	t := l.publish(ctx, s)
	l.mu.Lock()
	l.last = t
	l.mu.Unlock()
	if t.Published {
		l.log.Debug("backlog metrics published", "step", "metrics", "queued", t.Sample.Backlog.Queued(), "took", t.Took.Round(time.Millisecond))
	}
}

// publish reads and publishes once; a failure is a gap.
func (l *Loop) publish(ctx context.Context, s Settings) Tick {
	start := l.now()
	t := Tick{}
	t.Sample, t.Err = Read(ctx, s.Source, start)
	if t.Err != nil {
		l.gap("redis", "the queue backlog cannot be read", t.Err)
		return t
	}
	l.works("redis", "the queue backlog can be read again")
	if l.api == nil || l.region != s.Region {
		l.api, t.Err = l.NewAPI(ctx, s.Region)
		if t.Err != nil {
			l.api = nil
			l.gap("cloudwatch", "no CloudWatch client", t.Err)
			return t
		}
		l.region = s.Region
	}
	if t.Err = Publish(ctx, l.api, t.Sample, s.Resolution); t.Err != nil {
		l.gap("cloudwatch", "CloudWatch refuses or does not answer", t.Err)
		return t
	}
	l.works("cloudwatch", "CloudWatch takes the backlog metrics again")
	t.Published, t.Took = true, l.now().Sub(start)
	return t
}

// holdLease keeps or takes the lease; false when another instance holds
// it or the database cannot say.
func (l *Loop) holdLease(ctx context.Context, s Settings) bool {
	if l.held != nil && !sameDB(l.held.DB(), s.DB) {
		l.release("the database moved")
	}
	if l.held != nil {
		err := l.held.Held(ctx)
		if err == nil {
			return true
		}
		l.log.Warn("backlog metrics: lost the lease; another instance takes over publishing", "step", "metrics", "err", err)
		l.held = nil
	}
	got, hs, err := Lease.Try(ctx, s.DB, s.Instance)
	if err != nil {
		l.gap("lease", "the lease's database does not answer, so no instance is sure to publish", err)
		return false
	}
	l.works("lease", "the lease's database answers again")
	if got == nil {
		if who := lease.Describe(hs); who != l.holder {
			l.log.Info("backlog metrics: another instance publishes them", "step", "metrics", "holder", who)
			l.holder = who
		}
		return false
	}
	l.held, l.holder = got, ""
	l.log.Info("backlog metrics: this instance took the lease and publishes them", "step", "metrics", "holder", got.Name())
	return true
}

// release gives the lease up (a role change, metrics turned off, a stop).
func (l *Loop) release(why string) {
	if l.held == nil {
		return
	}
	l.log.Info("backlog metrics: releasing the lease", "step", "metrics", "reason", why)
	l.held.Release()
	l.held = nil
}

// gap logs a failure of what: once per outage at warn, then at debug.
func (l *Loop) gap(what, msg string, err error) {
	if !l.failing[what] {
		l.log.Warn("backlog metrics: a gap: "+msg+"; trying again every interval, logged again once it works", "step", "metrics", "err", err)
		l.failing[what] = true
		return
	}
	l.log.Debug("backlog metrics: still a gap: "+msg, "step", "metrics", "err", err)
}

// works ends what's outage, if there was one.
func (l *Loop) works(what, msg string) {
	if l.failing[what] {
		l.log.Info("backlog metrics: "+msg, "step", "metrics")
		delete(l.failing, what)
	}
}

func sameDB(a, b desired.DB) bool {
	return a.Host == b.Host && a.Port == b.Port && a.Name == b.Name && a.User == b.User
}
