package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch"
	"github.com/aws/aws-sdk-go-v2/service/cloudwatch/types"
	"github.com/redis/go-redis/v9"

	"github.com/redash-agent/redash-agent/internal/metrics"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// metricsOnceEnv is a host where `metrics --once` reads a real Redis with
// a password and publishes to moto: provider local with an external Redis
// (redis-url), so no IMDS, Secrets Manager or Docker is involved.
type metricsOnceEnv struct {
	redis    testenv.RedisServer
	moto     *testenv.Moto
	config   string
	password string
}

func newMetricsOnceEnv(t *testing.T) metricsOnceEnv {
	t.Helper()
	const password = "once-Pw-7hQ2zX"
	e := metricsOnceEnv{redis: testenv.RedisWithPassword(t, password), moto: testenv.StartMoto(t), password: password}
	t.Setenv("AWS_ENDPOINT_URL_CLOUDWATCH", e.moto.Endpoint)
	t.Setenv("AWS_REGION", testenv.MotoRegion)
	t.Setenv("AWS_ACCESS_KEY_ID", testenv.MotoAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testenv.MotoSecretKey)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	root := t.TempDir()
	e.config = filepath.Join(root, "config.yaml")
	u := url.URL{Scheme: "redis", User: url.UserPassword("", password), Host: e.redis.Addr(), Path: "/0"}
	if err := os.WriteFile(e.config, []byte("provider: local\nproject: once\nredis-url: "+u.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e metricsOnceEnv) run(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	dir := t.TempDir()
	code = Main(append([]string{"--config", e.config, "--dir", dir, "--state-dir", filepath.Join(dir, "state")}, args...), &out, &errb)
	if strings.Contains(out.String()+errb.String(), e.password) {
		t.Errorf("the Redis password is in the output of %v:\n%s\n%s", args, out.String(), errb.String())
	}
	return code, out.String(), errb.String()
}

// moto's view of one metric: the maximum over the last ten minutes.
func motoMax(t *testing.T, endpoint, name string, dims map[string]string) float64 {
	t.Helper()
	v, ok := motoStat(t, endpoint, name, dims)
	if !ok {
		t.Fatalf("moto has no %s %v", name, dims)
	}
	return v
}

// motoStat is the maximum of one metric over the last ten minutes; ok is
// false when moto holds no data point of it.
func motoStat(t *testing.T, endpoint, name string, dims map[string]string) (float64, bool) {
	t.Helper()
	cw := cloudwatch.New(cloudwatch.Options{
		Region: testenv.MotoRegion, BaseEndpoint: aws.String(endpoint),
		Credentials: credentials.NewStaticCredentialsProvider(testenv.MotoAccessKey, testenv.MotoSecretKey, ""),
	}, metrics.QueryProtocol)
	// In the order they were published (Cluster, Queue): moto matches
	// dimensions as a list, where CloudWatch matches them as a set.
	var ds []types.Dimension
	for _, k := range slices.Sorted(maps.Keys(dims)) {
		ds = append(ds, types.Dimension{Name: aws.String(k), Value: aws.String(dims[k])})
	}
	now := time.Now()
	out, err := cw.GetMetricData(context.Background(), &cloudwatch.GetMetricDataInput{
		StartTime: aws.Time(now.Add(-10 * time.Minute)), EndTime: aws.Time(now.Add(time.Minute)),
		MetricDataQueries: []types.MetricDataQuery{{Id: aws.String("m"), MetricStat: &types.MetricStat{
			Metric: &types.Metric{Namespace: aws.String(metrics.Namespace), MetricName: aws.String(name), Dimensions: ds},
			Period: aws.Int32(3600), Stat: aws.String("Maximum"),
		}}},
	})
	if err != nil {
		t.Fatalf("GetMetricData: %v", err)
	}
	if len(out.MetricDataResults) == 0 || len(out.MetricDataResults[0].Values) == 0 {
		return 0, false
	}
	if vs := out.MetricDataResults[0].Values; len(vs) > 1 {
		t.Logf("moto returned %d values of %s %v in one period: %v", len(vs), name, dims, vs)
	}
	return slices.Max(out.MetricDataResults[0].Values), true
}

// TestMetricsOnce: with 7 jobs queued in queries and 2 in
// scheduled_queries (RQ, then Celery), `metrics --once` publishes those
// numbers, moto's GetMetricData returns them, and it prints them as a table
// and as JSON; the password appears nowhere.
func TestMetricsOnce(t *testing.T) {
	e := newMetricsOnceEnv(t)
	ctx := context.Background()
	c := e.redis.Client()
	defer c.Close()
	for range 7 {
		c.RPush(ctx, "rq:queue:queries", "j")
	}
	c.RPush(ctx, "rq:queue:scheduled_queries", "j", "j")

	code, out, errb := e.run(t, "metrics", "--once")
	if code != exitOK {
		t.Fatalf("metrics --once: exit %d\n%s\n%s", code, out, errb)
	}
	for _, want := range []string{"QUEUE", "queries  ", "(all)", "published to CloudWatch namespace Redash in us-east-1"} {
		if !strings.Contains(out, want) {
			t.Errorf("the table lacks %q:\n%s", want, out)
		}
	}
	for dims, want := range map[[2]string]float64{{"queries"}: 7, {"scheduled_queries"}: 2, {""}: 9} {
		d := map[string]string{metrics.DimCluster: "once"}
		if dims[0] != "" {
			d[metrics.DimQueue] = dims[0]
		}
		if got := motoMax(t, e.moto.Endpoint, metrics.MetricQueued, d); got != want {
			t.Errorf("QueuedJobs %v: moto has %v, want %v", d, got, want)
		}
	}

	// Celery (8.x): the queue's own list; --json; no running or workers.
	c1 := redis.NewClient(&redis.Options{Addr: e.redis.Addr(), Password: e.password, DB: 1})
	defer c1.Close()
	for range 7 {
		c1.LPush(ctx, "queries", "{}")
	}
	c1.LPush(ctx, "scheduled_queries", "{}", "{}")
	u := url.URL{Scheme: "redis", User: url.UserPassword("", e.password), Host: e.redis.Addr(), Path: "/1"}
	code, out, errb = e.run(t, "metrics", "--once", "--json", "--set", "version=8.0.0.b32245", "--set", "project=once8", "--set", "redis-url="+u.String())
	if code != exitOK {
		t.Fatalf("metrics --once --json (8.x): exit %d\n%s\n%s", code, out, errb)
	}
	var got metricsJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if got.QueueSystem != "celery" || got.Queued != 9 || got.Running != nil || got.Workers != nil || !got.Published || got.Cluster != "once8" {
		t.Errorf("--json: %+v, want celery, 9 queued, running and workers null, published", got)
	}
	for _, k := range jsonKeys(t, got) {
		if !snakeKey.MatchString(k) {
			t.Errorf("metrics --json has key %q, want snake_case", k)
		}
	}
	if v := motoMax(t, e.moto.Endpoint, metrics.MetricQueued, map[string]string{metrics.DimCluster: "once8", metrics.DimQueue: "queries"}); v != 7 {
		t.Errorf("8.x QueuedJobs queries: moto has %v, want 7", v)
	}
}

// TestMetricsOnceFailures: no --once is a usage error; a Redis that does
// not answer exits 1 naming its address, never the password; a bad
// metrics key is a configuration error (3).
func TestMetricsOnceFailures(t *testing.T) {
	e := newMetricsOnceEnv(t)
	if code, _, errb := e.run(t, "metrics"); code != exitUsage || !strings.Contains(errb, "--once") {
		t.Errorf("metrics without --once: exit %d, %s; want 2 naming --once", code, errb)
	}
	down := net.JoinHostPort("127.0.0.1", strconv.Itoa(testenv.FreePort(t)))
	u := url.URL{Scheme: "redis", User: url.UserPassword("", e.password), Host: down, Path: "/0"}
	code, out, errb := e.run(t, "metrics", "--once", "--set", "redis-url="+u.String())
	if code != exitFailure || !strings.Contains(errb, down) || out != "" {
		t.Errorf("metrics --once with Redis down: exit %d, stdout %q, stderr %s; want 1 naming %s", code, out, errb, down)
	}
	if code, _, errb := e.run(t, "metrics", "--once", "--set", "metrics-resolution=5"); code != exitConfigErr {
		t.Errorf("metrics-resolution=5: exit %d, %s; want 3", code, errb)
	}
}
