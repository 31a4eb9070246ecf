package main

// The Auto Scaling lifecycle end to end: the agent completes the launch
// hook right after READY=1 and ABANDONs it on a configuration error; at
// scale-in it drains (a running job finishes, no new job is taken, a job
// that outlives drain-timeout is named) and then completes the terminate
// hook. Auto Scaling is moto_server behind testenv.ASGProxy, because moto
// 5.2 lacks CompleteLifecycleAction and RecordLifecycleActionHeartbeat: the
// proxy answers those two as the API documents and records them. IMDS is
// ec2-metadata-mock in its asglifecycle mode.

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

const (
	testGroup         = "redash-workers"
	testLaunchHook    = "redash-launch"
	testTerminateHook = "redash-terminate"
)

// lifecycleSwitch is an IMDS endpoint in front of a mock whose target
// lifecycle state stays InService; terminate makes it answer from a second
// asglifecycle mock that says Terminated, the moment the test chooses.
type lifecycleSwitch struct {
	t          *testing.T
	endpoint   string
	terminated atomic.Pointer[httputil.ReverseProxy]
}

func newLifecycleSwitch(t *testing.T, tags map[string]string) *lifecycleSwitch {
	inService := testenv.StartIMDSMockASG(t, tags, 24*time.Hour, true)
	u, _ := url.Parse(inService.Endpoint)
	main := httputil.NewSingleHostReverseProxy(u)
	ls := &lifecycleSwitch{t: t}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := ls.terminated.Load(); p != nil && r.URL.Path == "/latest/meta-data/autoscaling/target-lifecycle-state" {
			p.ServeHTTP(w, r)
			return
		}
		main.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	ls.endpoint = srv.URL
	return ls
}

func (ls *lifecycleSwitch) terminate() {
	m := testenv.StartIMDSMockASG(ls.t, nil, 0, false)
	u, _ := url.Parse(m.Endpoint)
	ls.terminated.Store(httputil.NewSingleHostReverseProxy(u))
}

// startRunASG is startRun with Auto Scaling reached through the proxy.
func startRunASG(t *testing.T, f *fixture, imdsEndpoint, asgEndpoint, socket string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(agentBinary(t), append([]string{"--dir", f.dir, "--state-dir", filepath.Join(filepath.Dir(f.dir), "state"), "--config", f.config, "run"}, args...)...)
	cmd.Env = cleanEnv(
		"AWS_EC2_METADATA_SERVICE_ENDPOINT="+imdsEndpoint,
		"AWS_ENDPOINT_URL_SECRETS_MANAGER="+f.moto.Endpoint,
		"AWS_ENDPOINT_URL_AUTO_SCALING="+asgEndpoint,
		"NOTIFY_SOCKET="+socket,
	)
	p := &agentProc{cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redash-agent run: %v", err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("redash-agent run output:\n%s", p.out.Bytes())
		}
	})
	return p
}

func asgTags() map[string]string {
	return map[string]string{"redash:version": seedTags["redash:version"], "aws:autoscaling:groupName": testGroup}
}

// TestLaunchHookAbandonedOnConfigError: a configuration error at boot
// (exit 3) completes the launch hook with ABANDON before the agent exits,
// whether it is found in the tags and flags (after IMDS was read) or in the
// config file (before).
func TestLaunchHookAbandonedOnConfigError(t *testing.T) {
	f := newFixture(t, asgTags())
	proxy := testenv.StartASGProxy(t, f.moto)
	proxy.CreateGroup(t, testGroup, testLaunchHook, testTerminateHook)
	ls := newLifecycleSwitch(t, asgTags())
	good := readFileT(t, f.config)
	for _, tc := range []struct {
		name, config string
		args         []string
	}{
		{"bad flag", good, []string{"--set", "role=db"}},
		{"bad config file", "role: [web\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFileT(t, f.config, tc.config)
			mark := len(proxy.Calls())
			proxy.Pending(testGroup, testLaunchHook, testenv.IMDSMockInstanceID)
			ns := newNotifySocket(t)
			p := startRunASG(t, f, ls.endpoint, proxy.Endpoint, ns.path, tc.args...)
			select {
			case <-p.exited:
			case <-time.After(time.Minute):
				t.Fatal("run did not exit on a configuration error")
			}
			if code := exitCodeOf(p.err); code != 3 {
				t.Errorf("exit status %d, want 3", code)
			}
			calls := proxy.Calls()[mark:]
			if len(calls) != 1 || calls[0].Action != "CompleteLifecycleAction" || calls[0].Result != "ABANDON" || calls[0].Error != "" ||
				calls[0].Hook != testLaunchHook || calls[0].Instance != testenv.IMDSMockInstanceID {
				t.Fatalf("lifecycle calls %+v, want one ABANDON of %s for %s", calls, testLaunchHook, testenv.IMDSMockInstanceID)
			}
		})
	}
}

func readFileT(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFileT(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestScaleInLifecycle: launch hook CONTINUE within seconds of READY=1;
// then a scale-in with one short job and one long job running: the short
// one finishes, a job queued after the drain began is not taken, the long
// one is named in the journal when drain-timeout kills it, and the
// terminate hook is completed after that, with a heartbeat before.
func TestScaleInLifecycle(t *testing.T) {
	s := newStackTags(t, asgTags())
	proxy := testenv.StartASGProxy(t, s.moto)
	proxy.CreateGroup(t, testGroup, testLaunchHook, testTerminateHook)
	proxy.Pending(testGroup, testLaunchHook, testenv.IMDSMockInstanceID)
	proxy.Pending(testGroup, testTerminateHook, testenv.IMDSMockInstanceID)
	ls := newLifecycleSwitch(t, asgTags())
	ns := newNotifySocket(t)
	p := startRunASG(t, s.fixture, ls.endpoint, proxy.Endpoint, ns.path,
		"--set", "drain-timeout=10s", "--set", "drain-deregister-wait=1s")

	ready := ns.waitFor(t, "READY=1", 0, 3*time.Minute, p.exited, func(n notification) bool { return n.vars["READY"] == "1" })
	launch, ok := proxy.WaitFor(10*time.Second, func(c testenv.ASGCall) bool {
		return c.Action == "CompleteLifecycleAction" && c.Hook == testLaunchHook
	})
	if !ok || launch.Result != "CONTINUE" || launch.Error != "" {
		t.Fatalf("no launch hook CONTINUE within 10 s of READY=1; calls %+v", proxy.Calls())
	}
	after := launch.At.Sub(ready.at)
	t.Logf("launch hook completed %v after READY=1", after.Round(time.Millisecond))
	if after > 5*time.Second {
		t.Errorf("launch hook completed %v after READY=1, want within 5 s", after)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	rc := s.redis.Client()
	defer rc.Close()
	job := func(id, queue string, d time.Duration) {
		rc.HSet(ctx, "rq:job:"+id, "sleep_ms", d.Milliseconds(), "origin", queue, "description", "redash.tasks."+id+"('select 1')")
		rc.RPush(ctx, "rq:queue:"+queue, id)
	}
	status := func(id string) string { return rc.HGet(ctx, "rq:job:"+id, "status").Val() }
	waitStatus := func(id, want string, bound time.Duration) {
		t.Helper()
		for end := time.Now().Add(bound); status(id) != want; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("job %s: status %q after %v, want %q", id, status(id), bound, want)
			}
		}
	}
	job("short", "queries", 6*time.Second)
	job("long", "scheduled_queries", 40*time.Second)
	waitStatus("short", "started", 10*time.Second)
	waitStatus("long", "started", 10*time.Second)

	flip := time.Now()
	ls.terminate()
	for !strings.Contains(p.out.String(), "warm shutdown") {
		if time.Since(flip) > 15*time.Second {
			t.Fatal("no drain within 15 s of the Terminated state")
		}
		time.Sleep(100 * time.Millisecond)
	}
	drainSeen := time.Since(flip)
	time.Sleep(2 * time.Second) // the idle workers' last 1 s poll ends
	job("late", "queries", time.Second)

	term, ok := proxy.WaitFor(45*time.Second, func(c testenv.ASGCall) bool {
		return c.Action == "CompleteLifecycleAction" && c.Hook == testTerminateHook
	})
	if !ok || term.Result != "CONTINUE" || term.Error != "" {
		t.Fatalf("no terminate hook CONTINUE; calls %+v", proxy.Calls())
	}
	t.Logf("Terminated -> drain started %v, -> terminate hook completed %v", drainSeen.Round(time.Millisecond), term.At.Sub(flip).Round(time.Millisecond))

	if st := status("short"); st != "finished" {
		t.Errorf("short job: status %q after the drain, want finished", st)
	}
	ended, _ := time.Parse(time.RFC3339Nano, rc.HGet(ctx, "rq:job:short", "ended_at").Val())
	if !term.At.After(ended) {
		t.Errorf("terminate hook completed at %s, before the short job ended at %s", term.At, ended)
	}
	if st := status("late"); st != "" {
		t.Errorf("late job: status %q: a draining instance took a new job", st)
	}
	if n, err := rc.LLen(ctx, "rq:queue:queries").Result(); err != nil || n != 1 {
		t.Errorf("queue queries holds %d jobs (%v), want the late one still queued", n, err)
	}
	out := p.out.String()
	if !strings.Contains(out, "outlived the drain timeout") || !strings.Contains(out, "long redash.tasks.long (queue scheduled_queries)") {
		t.Errorf("the journal does not name the long job as cut short by the drain:\n%s", out)
	}
	if strings.Contains(out, "short redash.tasks.short") {
		t.Errorf("the journal names the short job, which finished")
	}
	if strings.Contains(out, "select 1") {
		t.Errorf("the journal shows a job's arguments")
	}
	var beat bool
	for _, c := range proxy.Calls() {
		beat = beat || c.Action == "RecordLifecycleActionHeartbeat" && c.Error == "" && c.At.Before(term.At)
	}
	if !beat {
		t.Errorf("no lifecycle heartbeat before the terminate hook was completed; calls %+v", proxy.Calls())
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "step=drain") || strings.Contains(l, "step=lifecycle") {
			t.Log(l)
		}
	}
	// No converge brings the stopped containers back.
	time.Sleep(time.Second)
	for svc, id := range s.containers(t) {
		in, err := s.docker.ContainerInspect(ctx, id)
		if err == nil && in.State.Running {
			t.Errorf("container of %s runs again after the drain", svc)
		}
	}
}
