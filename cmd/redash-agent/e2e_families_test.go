package main

// End-to-end tests of `up` with stand-ins that play one Redash release each
// (test/fakeredash with FAKEREDASH_FAMILY): the client address Redash
// computes behind the ALB and nginx, and what a worker's stop grace means
// for a job in flight when the agent recreates it.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// newFamilyStack is newStack with the stand-in of one release: version is
// its redash:version tag, family its FAKEREDASH_FAMILY.
func newFamilyStack(t *testing.T, version, family string) *stack {
	t.Helper()
	s := newStackTags(t, map[string]string{"redash:version": version, "redash:secrets-prefix": "Redash/"})
	pg := testenv.Postgres(t)
	// FakeFamilyImage plus a schema head, which the migrations need.
	image := redashImage(t, "redash-agent-test/redash:e2e-family-"+family, "rev1", "FAKEREDASH_FAMILY", family)
	// provider aws: load-balancer defaults to alb.
	s.writeConfig(image, fmt.Sprintf("db-endpoint: %s:%d\ndb-name: %s\nworker-stop-grace: 30s\n", pg.Host, pg.Port, s.pgDB))
	return s
}

// login asks the server, through nginx, which client address it computed,
// sending the X-Forwarded-For the ALB would: the client's address.
func (s *stack) login(t *testing.T, client string) string {
	t.Helper()
	req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/login", s.nginxPort), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Forwarded-For", client)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET /login through nginx: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var got struct {
		RemoteAddr string `json:"remote_addr"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil {
		t.Fatalf("GET /login through nginx: %s %s", resp.Status, body)
	}
	return got.RemoteAddr
}

// startJob makes the worker in container id run a job for d, as
// `docker exec <c> /fakeredash job <d>` would.
func (s *stack) startJob(t *testing.T, id string, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ex, err := s.docker.ContainerExecCreate(ctx, id, container.ExecOptions{Cmd: []string{"/fakeredash", "job", d.String()}})
	if err != nil {
		t.Fatalf("docker exec job: %v", err)
	}
	if err := s.docker.ContainerExecStart(ctx, ex.ID, container.ExecStartOptions{Detach: true}); err != nil {
		t.Fatalf("docker exec job: %v", err)
	}
	for ctx.Err() == nil {
		in, err := s.docker.ContainerExecInspect(ctx, ex.ID)
		if err != nil {
			t.Fatalf("inspecting docker exec job: %v", err)
		}
		if !in.Running {
			if in.ExitCode != 0 {
				t.Fatalf("docker exec job exited %d", in.ExitCode)
			}
			return
		}
		time.Sleep(50 * time.Millisecond) // polling a bounded loop, not an assertion
	}
	t.Fatal("docker exec job did not finish in 30s")
}

// stopOf is how a container was stopped: when it got SIGTERM, when it
// died, with which exit code.
type stopOf struct {
	term, die time.Time
	exitCode  int
}

// watchStops streams the daemon's events for the containers ids from now
// on; the returned func ends the stream, once each container has died (or
// after 15 s), and says how each was stopped. A stream, not a replay with
// --since: the daemon replays only its last 256 events, which a busy
// machine's other tests push out within seconds.
func (s *stack) watchStops(t *testing.T, ids []string) func() map[string]stopOf {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	args := filters.NewArgs()
	for _, id := range ids {
		args.Add("container", id)
	}
	msgs, errs := s.docker.Events(ctx, events.ListOptions{Filters: args})
	var mu sync.Mutex
	stops := map[string]stopOf{}
	for _, id := range ids {
		stops[id] = stopOf{exitCode: -1}
	}
	died := make(chan struct{}, len(ids))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case m := <-msgs:
				at := time.Unix(0, m.TimeNano)
				mu.Lock()
				st, ok := stops[m.Actor.ID]
				switch {
				case !ok:
				case m.Action == events.ActionKill && m.Actor.Attributes["signal"] == "15" && st.term.IsZero():
					st.term = at
				case m.Action == events.ActionDie && st.die.IsZero():
					st.die = at
					st.exitCode, _ = strconv.Atoi(m.Actor.Attributes["exitCode"])
					died <- struct{}{}
				}
				if ok {
					stops[m.Actor.ID] = st
				}
				mu.Unlock()
			case err := <-errs:
				if err != nil && ctx.Err() == nil {
					t.Errorf("events: %v", err)
				}
				return
			}
		}
	}()
	return func() map[string]stopOf {
		deadline := time.After(15 * time.Second)
	wait:
		for range ids {
			select {
			case <-died:
			case <-deadline:
				break wait
			}
		}
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(stops)
	}
}

func TestFamiliesEndToEnd(t *testing.T) {
	cases := []struct {
		version, family string
		jobs            []string // services that run jobs, given one each
		// supervisord (10.x on) SIGKILLs a worker still in its job after
		// its default stopwaitsecs, whatever Docker's grace.
		cutAfter time.Duration
	}{
		{"8.0.0.b32245", "8", []string{"adhoc_worker", "scheduler"}, 0},
		{"25.1.0", "25.1", []string{"adhoc_worker"}, 10 * time.Second},
		// The client address (and nginx after a recreate) only: 9.x drops
		// SIGTERM, 10.x cuts like 25.1, 26.x like 25.x; the server of 26.3
		// binds [::]:5000.
		{"9.0.0-beta.b42121", "9", nil, 0},
		{"10.1.0.b50633", "10", nil, 0},
		{"26.3.0", "26.3", nil, 0},
	}
	for _, tc := range cases {
		t.Run(tc.family, func(t *testing.T) {
			s := newFamilyStack(t, tc.version, tc.family)
			s.up(t)

			// ALB (the test plays it: X-Forwarded-For holds the client)
			// then nginx (appends the ALB's address): REDASH_PROXIES_COUNT 2.
			if got := s.serverEnv(t)["REDASH_PROXIES_COUNT"]; got != "2" {
				t.Errorf("REDASH_PROXIES_COUNT = %q, want 2 (ALB and nginx)", got)
			}
			if got := s.login(t, "203.0.113.7"); got != "203.0.113.7" {
				t.Errorf("Redash %s computed client address %q, want 203.0.113.7", tc.family, got)
			}

			// A job in flight, then a recreate (a rotated secret).
			ids := s.containers(t)
			job := 12 * time.Second
			if tc.cutAfter > 0 {
				job = 40 * time.Second // outlasts supervisord's cut, whenever the stop comes
			}
			var old []string
			for _, svc := range tc.jobs {
				old = append(old, ids[svc])
			}
			stopsOf := s.watchStops(t, old)
			jobStart := time.Now()
			for _, svc := range tc.jobs {
				s.startJob(t, ids[svc], job)
			}
			s.moto.Put(t, "Redash/CookieSecret", "rotated-cookie-secret-value")
			s.up(t)
			stops := stopsOf()
			after := s.containers(t)
			for _, svc := range tc.jobs {
				if after[svc] == ids[svc] {
					t.Fatalf("%s was not recreated", svc)
				}
				st := stops[ids[svc]]
				if st.die.IsZero() {
					t.Fatalf("%s: no die event for the old container", svc)
				}
				if st.exitCode != 0 {
					t.Errorf("%s exited %d %s after the job started, want 0 (a warm shutdown, not a SIGKILL by Docker)", svc, st.exitCode, st.die.Sub(jobStart).Round(time.Millisecond))
					continue
				}
				if st.term.IsZero() {
					t.Fatalf("%s: no SIGTERM event for the old container", svc)
				}
				took := st.die.Sub(st.term)
				t.Logf("%s: SIGTERM %s after the job started; stop took %s; exit %d", svc, st.term.Sub(jobStart).Round(time.Millisecond), took.Round(time.Millisecond), st.exitCode)
				if tc.cutAfter == 0 {
					if st.die.Before(jobStart.Add(job)) {
						t.Errorf("%s died %s after the job started, before its %s job ended", svc, st.die.Sub(jobStart).Round(time.Millisecond), job)
					}
					continue
				}
				if took < tc.cutAfter || st.die.After(jobStart.Add(job)) {
					t.Errorf("%s: stop took %s, want supervisord's %s cut before the %s job ended", svc, took, tc.cutAfter, job)
				}
			}
			if got := s.login(t, "203.0.113.7"); got != "203.0.113.7" {
				t.Errorf("after the recreate: client address %q, want 203.0.113.7", got)
			}
		})
	}
}
