package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var (
	fam8  = family{major: 8}
	fam9  = family{major: 9}
	fam10 = family{major: 10, minor: 1}
	fam25 = family{major: 25, minor: 1}
	fam26 = family{major: 26, minor: 3}
)

// TestRemoteAddr follows werkzeug's ProxyFix at the version each family
// pins: 0.11.11 (8.x), 0.16.1 (9.x, 10.x), 2.3.8 (25.x on).
func TestRemoteAddr(t *testing.T) {
	const peer = "172.18.0.3" // nginx
	type want struct {
		addr string
		err  bool
	}
	cases := []struct {
		name   string
		count  int
		xff    string
		hasXFF bool
		by     map[string]want // "8", "9-10", "25+"
	}{
		{"ALB and nginx, count 2", 2, "203.0.113.7, 10.0.1.5", true,
			map[string]want{"8": {"203.0.113.7", false}, "9-10": {"203.0.113.7", false}, "25+": {"203.0.113.7", false}}},
		{"client spoofs an entry, count 2", 2, "6.6.6.6, 203.0.113.7, 10.0.1.5", true,
			map[string]want{"8": {"203.0.113.7", false}, "9-10": {"203.0.113.7", false}, "25+": {"203.0.113.7", false}}},
		{"count 1 behind ALB and nginx: every user is the ALB node", 1, "203.0.113.7, 10.0.1.5", true,
			map[string]want{"8": {"10.0.1.5", false}, "9-10": {"10.0.1.5", false}, "25+": {"10.0.1.5", false}}},
		{"fewer entries than proxies keeps the peer", 3, "203.0.113.7, 10.0.1.5", true,
			map[string]want{"8": {peer, false}, "9-10": {peer, false}, "25+": {peer, false}}},
		// 0.11: forwarded_for[-0] is the first, client-written entry.
		{"count 0 with a header", 0, "6.6.6.6, 203.0.113.7", true,
			map[string]want{"8": {"6.6.6.6", false}, "9-10": {peer, false}, "25+": {peer, false}}},
		// 0.11: [][-0] raises IndexError: a 500.
		{"count 0 without a header", 0, "", false,
			map[string]want{"8": {"", true}, "9-10": {peer, false}, "25+": {peer, false}}},
		{"no header", 1, "", false,
			map[string]want{"8": {peer, false}, "9-10": {peer, false}, "25+": {peer, false}}},
		// 0.11 drops empty entries; 0.16 keeps them (an empty result keeps
		// the peer); 2.3's parse_http_list drops a trailing empty part only
		// (" " is not empty until it is stripped).
		{"trailing comma", 1, "203.0.113.7,", true,
			map[string]want{"8": {"203.0.113.7", false}, "9-10": {peer, false}, "25+": {"203.0.113.7", false}}},
		{"trailing comma and blank", 1, "203.0.113.7, ", true,
			map[string]want{"8": {"203.0.113.7", false}, "9-10": {peer, false}, "25+": {peer, false}}},
		{"empty middle entry", 2, "203.0.113.7,,10.0.1.5", true,
			map[string]want{"8": {"203.0.113.7", false}, "9-10": {peer, false}, "25+": {peer, false}}},
		{"quoted entry", 1, `"203.0.113.7"`, true,
			map[string]want{"8": {`"203.0.113.7"`, false}, "9-10": {`"203.0.113.7"`, false}, "25+": {"203.0.113.7", false}}},
	}
	groups := map[string][]family{"8": {fam8}, "9-10": {fam9, fam10}, "25+": {fam25, fam26}}
	for _, tc := range cases {
		for g, fams := range groups {
			for _, f := range fams {
				w := tc.by[g]
				got, err := remoteAddr(f, tc.count, tc.xff, tc.hasXFF, peer)
				if (err != nil) != w.err || got != w.addr {
					t.Errorf("%s, Redash %s: got %q, %v; want %q (error %v)", tc.name, f, got, err, w.addr, w.err)
				}
			}
		}
	}
}

func TestEntrypointCommands(t *testing.T) {
	for _, tc := range []struct {
		f                                family
		workersHealthcheck, devScheduler bool
	}{
		{fam8, false, false}, {fam9, false, true}, {fam10, false, true},
		{family{major: 25}, false, true}, {fam25, true, true}, {fam26, true, true},
	} {
		cmds := entrypointCommands(tc.f)
		for _, c := range []string{"server", "worker", "scheduler", "create_db", "manage", "celery_healthcheck"} {
			if !cmds[c] {
				t.Errorf("Redash %s lacks %s", tc.f, c)
			}
		}
		if cmds["celery_worker"] {
			t.Errorf("Redash %s has celery_worker; no release does", tc.f)
		}
		if cmds["workers_healthcheck"] != tc.workersHealthcheck || cmds["dev_scheduler"] != tc.devScheduler {
			t.Errorf("Redash %s: workers_healthcheck %v dev_scheduler %v, want %v %v", tc.f,
				cmds["workers_healthcheck"], cmds["dev_scheduler"], tc.workersHealthcheck, tc.devScheduler)
		}
	}
}

// TestMissingCommandIsExecNotFound: what `exec "$@"` does with a program
// the image lacks.
func TestMissingCommandIsExecNotFound(t *testing.T) {
	for _, tc := range []struct {
		f   family
		cmd string
	}{{fam8, "celery_worker"}, {fam10, "workers_healthcheck"}, {fam25, "celery_worker"}, {fam8, "dev_scheduler"}} {
		code, handled := runFamily(tc.f, tc.cmd, nil)
		if !handled || code != 127 {
			t.Errorf("Redash %s %s: exit %d (handled %v), want 127", tc.f, tc.cmd, code, handled)
		}
	}
}

func TestCookieSecretRequiredFrom10(t *testing.T) {
	t.Setenv("REDASH_COOKIE_SECRET", "")
	os.Unsetenv("REDASH_COOKIE_SECRET")
	for _, tc := range []struct {
		f    family
		cmd  string
		code int
	}{{fam10, "server", 1}, {fam25, "manage", 1}, {fam26, "create_db", 1}, {fam25, "scheduler", 1}} {
		if code, handled := runFamily(tc.f, tc.cmd, []string{"db", "upgrade"}); !handled || code != tc.code {
			t.Errorf("Redash %s %s without REDASH_COOKIE_SECRET: exit %d (handled %v), want %d", tc.f, tc.cmd, code, handled, tc.code)
		}
	}
	// 8.x and 9.x fall back to a constant; the health checks import nothing.
	for _, tc := range []struct {
		f   family
		cmd string
	}{{fam8, "server"}, {fam9, "server"}, {fam25, "workers_healthcheck"}} {
		code, handled := runFamily(tc.f, tc.cmd, nil)
		if handled && code != 0 {
			t.Errorf("Redash %s %s without REDASH_COOKIE_SECRET: exit %d, want it to run", tc.f, tc.cmd, code)
		}
	}
	// `is None`: an empty value passes.
	t.Setenv("REDASH_COOKIE_SECRET", "")
	if code, handled := runFamily(fam25, "server", nil); handled {
		t.Errorf("Redash 25 server with an empty REDASH_COOKIE_SECRET: exit %d, want it to run", code)
	}
}

func TestFamilyServerBootDelayAndLogin(t *testing.T) {
	t.Setenv("FAKEREDASH_BOOT_DELAY", "300ms")
	t.Setenv("REDASH_PROXIES_COUNT", "2")
	srv := httptest.NewServer(familyServer(fam25, serverHandler(os.Environ)))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/login", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.7, 10.0.1.5")
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Errorf("answered after %s, before the 300ms boot delay", took)
	}
	var body struct {
		RemoteAddr string `json:"remote_addr"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.RemoteAddr != "203.0.113.7" {
		t.Errorf("login: remote_addr %q (%v), want 203.0.113.7", body.RemoteAddr, err)
	}
	// /ping still answers after the boot.
	r2, err := http.Get(srv.URL + "/ping")
	if err != nil || r2.StatusCode != 200 {
		t.Fatalf("ping after boot: %v %v", r2, err)
	}
	r2.Body.Close()
}

func TestJobState(t *testing.T) {
	if _, err := os.Stat(filepath.Dir(jobStatePath)); err != nil {
		t.Skip("no /tmp")
	}
	t.Cleanup(func() { os.Remove(jobStatePath) })
	if err := startJob(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	end, ok := runningJob()
	if !ok || time.Until(end) <= time.Second {
		t.Fatalf("runningJob = %s, %v; want about 2s left", time.Until(end), ok)
	}
	if code := runJobCommand([]string{"-1s"}); code != 2 {
		t.Errorf("job -1s: exit %d, want 2", code)
	}
}

// TestHistoryIsAlembicsFormat: `manage db history` prints what Alembic's
// cmd_format(include_parents, include_doc) prints, newest first.
func TestHistoryIsAlembicsFormat(t *testing.T) {
	got := history([]string{"rev0", "rev1"}, "rev2")
	want := "rev1 -> rev2 (head), fake revision rev2\nrev0 -> rev1, fake revision rev1\n<base> -> rev0, fake revision rev0\n"
	if got != want {
		t.Errorf("history =\n%s\nwant\n%s", got, want)
	}
	if got := history(nil, "rev1"); got != "<base> -> rev1 (head), fake revision rev1\n" {
		t.Errorf("history of one revision = %q", got)
	}
}

func TestNumberedHistory(t *testing.T) {
	for head, want := range map[string]string{"rev3": "rev1,rev2", "r1": "", "lrev2": "lrev1", "abc": ""} {
		if got := strings.Join(numberedHistory(head), ","); got != want {
			t.Errorf("numberedHistory(%q) = %q, want %q", head, got, want)
		}
	}
}
