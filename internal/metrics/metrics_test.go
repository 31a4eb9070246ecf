package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/redis/go-redis/v9"

	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/queues"
	"github.com/redash-agent/redash-agent/internal/secrets"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// motoCloudWatch is a CloudWatch client of moto_server at endpoint.
func motoCloudWatch(endpoint string) *cloudwatch.Client {
	return cloudwatch.New(cloudwatch.Options{
		Region:       testenv.MotoRegion,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(testenv.MotoAccessKey, testenv.MotoSecretKey, ""),
	}, QueryProtocol)
}

// seedRQ lays out RQ's keys: 7 jobs waiting in queries, 2 in
// scheduled_queries, one running job in queries and one live worker.
func seedRQ(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	for i := range 7 {
		c.RPush(ctx, queues.QueuePrefix+"queries", fmt.Sprintf("job-q%d", i))
	}
	c.RPush(ctx, queues.QueuePrefix+"scheduled_queries", "job-s1", "job-s2")
	c.ZAdd(ctx, queues.StartedKey+"queries", redis.Z{Score: float64(time.Now().Unix() + 600), Member: "job-running"})
	c.SAdd(ctx, queues.WorkersKey, queues.WorkerPrefix+"w1")
	if err := c.HSet(ctx, queues.WorkerPrefix+"w1", "queues", "queries,scheduled_queries", "hostname", "h1").Err(); err != nil {
		t.Fatal(err)
	}
}

// seedCelery lays out kombu's lists: 7 in queries (two of them at
// priority 3), 2 in scheduled_queries.
func seedCelery(t *testing.T, c *redis.Client) {
	t.Helper()
	ctx := context.Background()
	for range 5 {
		c.LPush(ctx, "queries", "{}")
	}
	c.LPush(ctx, "queries\x06\x163", "{}", "{}")
	if err := c.LPush(ctx, "scheduled_queries", "{}", "{}").Err(); err != nil {
		t.Fatal(err)
	}
}

// readBack asks moto's GetMetricData for the statistic of one metric over
// the last ten minutes; ok is false when moto has no data point.
func readBack(t *testing.T, cw *cloudwatch.Client, stat, name string, dims map[string]string) (float64, bool) {
	t.Helper()
	// In the order they were published (Cluster, Queue): moto matches
	// dimensions as a list, where CloudWatch matches them as a set.
	var ds []types.Dimension
	for _, k := range slices.Sorted(maps.Keys(dims)) {
		ds = append(ds, types.Dimension{Name: aws.String(k), Value: aws.String(dims[k])})
	}
	now := time.Now()
	out, err := cw.GetMetricData(context.Background(), &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(now.Add(-10 * time.Minute)), EndTime: aws.Time(now.Add(time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{{
			Id: aws.String("m"),
			MetricStat: &types.MetricStat{
				Metric: &types.Metric{Namespace: aws.String(Namespace), MetricName: aws.String(name), Dimensions: ds},
				Period: aws.Int32(3600), Stat: aws.String(stat),
			},
		}},
	})
	if err != nil {
		t.Fatalf("GetMetricData %s %v: %v", name, dims, err)
	}
	if len(out.MetricDataResults) == 0 || len(out.MetricDataResults[0].Values) == 0 {
		return 0, false
	}
	var sum float64
	for _, v := range out.MetricDataResults[0].Values {
		sum += v
	}
	return sum, true
}

func wantMetric(t *testing.T, cw *cloudwatch.Client, want float64, name string, dims map[string]string) {
	t.Helper()
	got, ok := readBack(t, cw, "Maximum", name, dims)
	if !ok || got != want {
		t.Errorf("%s %v: moto has %v (found %v), want %v", name, dims, got, ok, want)
	}
}

// TestPublishReadsBack: 7 jobs queued in queries and 2 in
// scheduled_queries, RQ-shaped and Celery-shaped, are published and
// moto's GetMetricData returns those numbers; Celery has no RunningJobs or
// Workers.
func TestPublishReadsBack(t *testing.T) {
	srv := testenv.Redis(t)
	moto := testenv.StartMoto(t)
	cw := motoCloudWatch(moto.Endpoint)
	c := srv.Client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	seedRQ(t, c)
	src := Source{Cluster: "rq-cluster", Redis: queues.Conn{Addr: srv.Addr(), Password: srv.Password}, Queues: []string{"queries", "scheduled_queries", "emails"}}
	start := time.Now()
	s, err := Read(ctx, src, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	read := time.Since(start)
	if err := Publish(ctx, cw, s, 60); err != nil {
		t.Fatal(err)
	}
	t.Logf("one read (%d queues) took %s, read+publish %s", len(s.Backlog.Queues), read.Round(time.Microsecond), time.Since(start).Round(time.Microsecond))
	cl := func(kv ...string) map[string]string {
		m := map[string]string{DimCluster: "rq-cluster"}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	wantMetric(t, cw, 7, MetricQueued, cl(DimQueue, "queries"))
	wantMetric(t, cw, 2, MetricQueued, cl(DimQueue, "scheduled_queries"))
	wantMetric(t, cw, 0, MetricQueued, cl(DimQueue, "emails"))
	wantMetric(t, cw, 9, MetricQueued, cl())
	wantMetric(t, cw, 1, MetricRunning, cl(DimQueue, "queries"))
	wantMetric(t, cw, 1, MetricWorkers, cl())
	wantMetric(t, cw, 1, MetricWorkers, cl(DimQueue, "scheduled_queries"))

	// Celery, in another Redis database (kombu's keys are the bare names).
	c8 := redis.NewClient(&redis.Options{Addr: srv.Addr(), Password: srv.Password, DB: 1})
	defer c8.Close()
	seedCelery(t, c8)
	src8 := Source{Cluster: "celery-cluster", Celery: true, Redis: queues.Conn{Addr: srv.Addr(), DB: 1, Password: srv.Password},
		Queues: []string{"queries", "scheduled_queries", "celery", "schemas"}}
	s8, err := Read(ctx, src8, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := Publish(ctx, cw, s8, 1); err != nil {
		t.Fatal(err)
	}
	wantMetric(t, cw, 7, MetricQueued, map[string]string{DimCluster: "celery-cluster", DimQueue: "queries"})
	wantMetric(t, cw, 2, MetricQueued, map[string]string{DimCluster: "celery-cluster", DimQueue: "scheduled_queries"})
	wantMetric(t, cw, 9, MetricQueued, map[string]string{DimCluster: "celery-cluster"})
	for _, name := range []string{MetricRunning, MetricWorkers} {
		if _, ok := readBack(t, cw, "Maximum", name, map[string]string{DimCluster: "celery-cluster"}); ok {
			t.Errorf("Celery published %s, which Redis does not hold for Celery", name)
		}
	}
	for _, d := range Datums(s8, 1) {
		if *d.StorageResolution != 1 || d.Unit != types.StandardUnitCount {
			t.Errorf("datum %s: resolution %d unit %s, want 1 and Count", *d.MetricName, *d.StorageResolution, d.Unit)
		}
	}
}

// countingAPI counts the PutMetricData calls one publisher makes.
type countingAPI struct {
	API
	calls atomic.Int32
}

func (c *countingAPI) PutMetricData(ctx context.Context, in *cloudwatch.PutMetricDataInput, opts ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error) {
	c.calls.Add(1)
	return c.API.PutMetricData(ctx, in, opts...)
}

func testDB(t *testing.T) desired.DB {
	t.Helper()
	pg := testenv.Postgres(t)
	return desired.DB{Host: pg.Host, Port: pg.Port, User: pg.User, Password: secrets.NewValue(pg.Password), Name: pg.NewDatabase(t)}
}

type publisher struct {
	loop   *Loop
	api    *countingAPI
	log    *testenv.SyncBuffer
	cancel context.CancelFunc
	done   chan struct{}
}

func startPublisher(t *testing.T, api API, s Settings) *publisher {
	t.Helper()
	p := &publisher{api: &countingAPI{API: api}, log: &testenv.SyncBuffer{}, done: make(chan struct{})}
	p.loop = NewLoop(slog.New(slog.NewTextHandler(p.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	p.loop.NewAPI = func(context.Context, string) (API, error) { return p.api, nil }
	var ctx context.Context
	ctx, p.cancel = context.WithCancel(context.Background())
	go func() { defer close(p.done); p.loop.Run(ctx) }()
	p.loop.Set(s)
	t.Cleanup(p.stop)
	return p
}

func (p *publisher) stop() {
	p.cancel()
	<-p.done
}

// TestOnePublisherPerCluster: two publishers of one cluster (two agents'
// run loops) share the lease on a real PostgreSQL: per interval exactly one
// publishes, and moto counts that many data points; when the holder stops,
// the other takes over.
func TestOnePublisherPerCluster(t *testing.T) {
	srv := testenv.Redis(t)
	moto := testenv.StartMoto(t)
	db := testDB(t)
	cw := motoCloudWatch(moto.Endpoint)
	c := srv.Client()
	defer c.Close()
	seedRQ(t, c)

	const interval = 300 * time.Millisecond
	settings := func(instance string) Settings {
		return Settings{Publish: true, Interval: interval, Resolution: 1, Region: testenv.MotoRegion, DB: db, Instance: instance,
			Source: Source{Cluster: "two", Redis: queues.Conn{Addr: srv.Addr(), Password: srv.Password}, Queues: []string{"queries"}}}
	}
	a := startPublisher(t, cw, settings("host-a two"))
	b := startPublisher(t, cw, settings("host-b two"))
	time.Sleep(10*interval + interval/2)
	na, nb := a.api.calls.Load(), b.api.calls.Load()
	if (na == 0) == (nb == 0) {
		t.Fatalf("PutMetricData calls: host-a %d, host-b %d; want exactly one publisher\nA:\n%s\nB:\n%s", na, nb, a.log, b.log)
	}
	holder, other := a, b
	if nb > 0 {
		holder, other = b, a
	}
	// One call per interval (the first after one interval): 10, give or
	// take a tick at either end on a busy machine.
	if n := holder.api.calls.Load(); n < 8 || n > 11 {
		t.Errorf("the holder published %d times in 10.5 intervals, want about 10", n)
	}
	if !strings.Contains(other.log.String(), "another instance publishes them") {
		t.Errorf("the other publisher does not say who publishes:\n%s", other.log)
	}
	holder.stop() // releases the lease
	published := holder.api.calls.Load()
	points, _ := readBack(t, cw, "SampleCount", MetricQueued, map[string]string{DimCluster: "two"})
	if int32(points) != published {
		t.Errorf("moto holds %v all-queues QueuedJobs data points, the holder made %d calls", points, published)
	}
	deadline := time.Now().Add(20 * interval)
	for !other.loop.Last().Published {
		if time.Now().After(deadline) {
			t.Fatalf("the other publisher did not take over within %s of the holder's stop:\n%s", 20*interval, other.log)
		}
		time.Sleep(interval / 3)
	}
	if got := other.loop.Last(); !got.Published || got.Sample.Backlog.Queued() != 9 {
		t.Errorf("the new holder's tick: %+v, want 9 queued published", got)
	}
}

// TestRedisDownIsAGap: a Redis that does not answer is one warning for the
// outage and debug lines after it; the loop keeps ticking, publishes as
// soon as Redis answers, says so, and the password is in no log line.
func TestRedisDownIsAGap(t *testing.T) {
	const password = "gap-test-pw-5ecret"
	srv := testenv.RedisWithPassword(t, password)
	db := testDB(t)
	api := &countingAPI{API: nopAPI{}}
	down := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	const interval = 300 * time.Millisecond
	s := Settings{Publish: true, Interval: interval, Resolution: 60, Region: "us-east-1", DB: db, Instance: "host-a gap",
		Source: Source{Cluster: "gap", Redis: queues.Conn{Addr: down, Password: password}, Queues: []string{"queries"}}}
	p := startPublisher(t, api, s)
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(p.log.String(), "still a gap") < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no three ticks against the dead Redis within 10s:\n%s", p.log)
		}
		time.Sleep(interval)
	}
	logs := p.log.String()
	if n := strings.Count(logs, `level=WARN msg="backlog metrics: a gap: the queue backlog cannot be read`); n != 1 || !strings.Contains(logs, down) {
		t.Errorf("%d warnings for one Redis outage, want 1 naming %s:\n%s", n, down, logs)
	}
	if api.calls.Load() != 0 {
		t.Errorf("published %d times without a reading", api.calls.Load())
	}
	// Redis answers (the configuration points at the live one): it publishes again.
	s.Source.Redis.Addr = srv.Addr()
	p.loop.Set(s)
	for api.calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no publish within 10s once Redis answers:\n%s", p.log)
		}
		time.Sleep(interval)
	}
	p.stop()
	logs = p.log.String()
	if !strings.Contains(logs, "can be read again") {
		t.Errorf("the end of the outage is not logged:\n%s", logs)
	}
	if strings.Contains(logs, password) {
		t.Errorf("the Redis password is in the log:\n%s", logs)
	}
}

// nopAPI accepts every call.
type nopAPI struct{}

func (nopAPI) PutMetricData(context.Context, *cloudwatch.PutMetricDataInput, ...func(*cloudwatch.Options)) (*cloudwatch.PutMetricDataOutput, error) {
	return &cloudwatch.PutMetricDataOutput{}, nil
}

// BenchmarkReadPublish is one tick's work without the lease: read the six
// RQ default queues and the worker registry from a real Redis, publish to
// moto over loopback.
//
//	CI=true go test -run '^$' -bench ReadPublish -benchtime 50x ./internal/metrics
func BenchmarkReadPublish(b *testing.B) {
	srv := testenv.Redis(b)
	moto := testenv.StartMoto(b)
	cw := motoCloudWatch(moto.Endpoint)
	c := srv.Client()
	defer c.Close()
	ctx := context.Background()
	for i := range 7 {
		c.RPush(ctx, queues.QueuePrefix+"queries", fmt.Sprint(i))
	}
	src := Source{Cluster: "bench", Redis: queues.Conn{Addr: srv.Addr(), Password: srv.Password},
		Queues: []string{"scheduled_queries", "queries", "periodic", "emails", "default", "schemas"}}
	var readTotal time.Duration
	for b.Loop() {
		start := time.Now()
		s, err := Read(ctx, src, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		readTotal += time.Since(start)
		if err := Publish(ctx, cw, s, 60); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(readTotal.Microseconds())/float64(b.N), "read-µs/op")
}
