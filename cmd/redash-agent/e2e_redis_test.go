package main

// e2e_redis_test.go: Redis AUTH per Redash family and READY meaning "every
// worker queue has a consumer", against the stand-in playing each family
// (test/fakeredash reads REDASH_REDIS_URL exactly as that family's redis-py
// or kombu would) and a real redis-server with requirepass.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/queues"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// authToken holds '!', '%' and ':'; its "%41" reads as "A" to a client that
// percent-decodes, so a URL written the wrong way for a family fails AUTH.
const authToken = "p%41ss!w:rd"

// familyStack is a stack whose instance runs Redash version, played by the
// stand-in of family, with a Redis requiring token.
func familyStack(t *testing.T, version, family, token string) *stack {
	t.Helper()
	s := newStackTags(t, map[string]string{"redash:version": version, "redash:secrets-prefix": "Redash/"})
	s.redis = testenv.RedisWithPassword(t, token)
	s.moto.Put(t, redisAuthSecret, token)
	s.redisConfig = fmt.Sprintf("redis-endpoint: %s\nsecret:redis-auth: %s\n", s.redis.Addr(), redisAuthSecret)
	tag := "redash-agent-test/redash:family-" + family + "-rev1"
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: tag, Env: map[string]string{"FAKEREDASH_FAMILY": family, "FAKEREDASH_HEAD": "rev1"}})
	s.writeConfig(tag, fmt.Sprintf("db-endpoint: %s\ndb-name: %s\n", pgEndpoint(t), s.pgDB))
	return s
}

// hostnames maps service -> container hostname for the project's containers.
func (s *stack) hostnames(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for svc, id := range s.containers(t) {
		in, err := s.docker.ContainerInspect(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		out[svc] = in.Config.Hostname
	}
	return out
}

func (s *stack) registry(t *testing.T) []queues.Worker {
	t.Helper()
	r := queues.Open(queues.Conn{Addr: s.redis.Addr(), Password: s.redis.Password})
	defer r.Close()
	ws, err := r.Workers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestRedisAuthPerFamily(t *testing.T) {
	for _, tc := range []struct{ version, family string }{
		{"8.0.0.b32245", "8"},
		{"10.1.0.b50633", "10"},
		{"25.1.0", "25.1"},
	} {
		t.Run(tc.family, func(t *testing.T) {
			s := familyStack(t, tc.version, tc.family, authToken)
			s.up(t)
			hosts := s.hostnames(t)
			if tc.family == "8" {
				// READY came after celery_healthcheck answered in each
				// node; the nodes' keys are still alive.
				c := s.redis.Client()
				defer c.Close()
				for _, svc := range []string{"scheduler", "scheduled_worker", "adhoc_worker"} {
					if c.Exists(context.Background(), "fakeredash:celery:celery@"+hosts[svc]).Val() != 1 {
						t.Errorf("8.x %s: no live Celery node in Redis after up", svc)
					}
				}
				return
			}
			ws := s.registry(t)
			for svc, want := range map[string][]string{
				"scheduled_worker": {"scheduled_queries", "schemas"},
				"adhoc_worker":     {"queries"},
				"worker":           {"periodic", "emails", "default"},
			} {
				if m := queues.Missing(ws, hosts[svc], want); m != nil {
					t.Errorf("%s %s: queues %v have no registered worker after up: %v", tc.family, svc, m, ws)
				}
			}
		})
	}
}

func TestRedisTokenRefusedOn10(t *testing.T) {
	const token = "ab#cd/ef"
	s := familyStack(t, "10.1.0.b50633", "10", token)
	start := time.Now()
	_, stderr, code := s.run("up")
	if code != 3 {
		t.Fatalf("up with a token holding '#' and '/' on 10.x exited %d, want 3:\n%s", code, stderr)
	}
	for _, want := range []string{"redis-auth", "10.1.0.b50633", `"#"`, `"/"`, "rotate"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if strings.Contains(stderr, token) || strings.Contains(stderr, "ab#cd") {
		t.Errorf("stderr shows the token:\n%s", stderr)
	}
	if len(s.containers(t)) != 0 {
		t.Errorf("containers were created before the refusal")
	}
	t.Logf("refused in %s", time.Since(start).Round(time.Millisecond))
}

// TestRQConsumesAllSixQueues: on 9.x a job pushed to each of Redash's six
// RQ queues is run by the stack's workers.
func TestRQConsumesAllSixQueues(t *testing.T) {
	s := familyStack(t, "9.0.0-beta.b42121", "9", authToken)
	s.up(t)
	c := s.redis.Client()
	defer c.Close()
	ctx := context.Background()
	all := []string{"scheduled_queries", "queries", "periodic", "emails", "default", "schemas"}
	for _, q := range all {
		c.RPush(ctx, "rq:queue:"+q, "job-"+q)
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, q := range all {
		for c.HGet(ctx, "rq:job:job-"+q, "status").Val() != "finished" {
			if time.Now().After(deadline) {
				t.Fatalf("job on queue %s not finished within 30s (status %q)", q, c.HGet(ctx, "rq:job:job-"+q, "status").Val())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if got := c.HGet(ctx, "rq:job:job-"+q, "origin").Val(); got != q {
			t.Errorf("job-%s ran from queue %q", q, got)
		}
	}
}

// TestNotReadyWithoutConsumers: a worker that registers the wrong queues
// keeps READY back; up fails within the health timeout (2 min) naming the
// queues and showing the worker's log tail.
func TestNotReadyWithoutConsumers(t *testing.T) {
	s := familyStack(t, "10.1.0.b50633", "10", authToken)
	s.writeConfig("redash-agent-test/redash:family-10-rev1", fmt.Sprintf("db-endpoint: %s\ndb-name: %s\nenv:FAKEREDASH_WORKER_QUEUES: wrong\n", pgEndpoint(t), s.pgDB))
	start := time.Now()
	_, stderr, code := s.run("up")
	took := time.Since(start)
	if code == 0 {
		t.Fatal("up succeeded while no worker consumes the layout's queues")
	}
	for _, want := range []string{"no live RQ worker", "consumes queue(s)", "last log lines of", "queues wrong"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	t.Logf("up failed after %s:\n%s", took.Round(time.Second), stderr)
	if took > 4*time.Minute {
		t.Errorf("up failed after %s; the bound is the 2 min health timeout", took)
	}
	// The workers run (only their queues are wrong): "running" alone would have passed.
	list, _ := s.docker.ContainerList(context.Background(), container.ListOptions{Filters: filters.NewArgs(filters.Arg("label", "com.docker.compose.project="+s.project), filters.Arg("status", "running"))})
	var running []string
	for _, c := range list {
		running = append(running, c.Labels["com.docker.compose.service"])
	}
	if !slices.Contains(running, "adhoc_worker") {
		t.Errorf("adhoc_worker is not running (%v): the test must fail on queues, not on a crash", running)
	}
}
