package main

import (
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

var urlCases = []string{
	"redis://:plain@cache:6379/0",
	"redis://:a!b%c:d@e@cache:6379/1",
	"redis://:a%21b%25c%3Ad@cache/0",
	"redis://user:p%zz@cache:6380/2",
	"redis://:ab#cd@cache:6379/0",
	"redis://:ab/cd@cache:6379/0",
	"redis://:ab?cd@cache:6379/0",
	"redis://:ab[cd@cache:6379/0",
	"redis://:ab\tcd@cache:6379/0",
	"redis://cache:6379/0",
	"REDIS://:x@Cache:6379",
}

// TestURLSplitMatchesPython compares pyURLSplit (+ pyUnquote) with the
// machine's python3 on each URL: the error-ness, then password, hostname
// and port.
func TestURLSplitMatchesPython(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not on PATH: install python3 to compare the URL parser with Python's")
	}
	script := `
import sys, json
from urllib.parse import urlsplit, unquote
out = []
for u in sys.argv[1:]:
    try:
        p = urlsplit(u)
        out.append({"ok": True, "password": p.password, "unquoted": unquote(p.password) if p.password is not None else None,
                    "hostname": p.hostname, "port": p.port or 0})
    except ValueError as e:
        out.append({"ok": False})
print(json.dumps(out))`
	raw, err := exec.Command(py, append([]string{"-c", script}, urlCases...)...).Output()
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	var want []struct {
		OK                 bool
		Password, Unquoted *string
		Hostname           *string
		Port               int
	}
	if err := json.Unmarshal(raw, &want); err != nil {
		t.Fatal(err)
	}
	for i, u := range urlCases {
		got, err := pyURLSplit(u)
		w := want[i]
		if (err == nil) != w.OK {
			t.Errorf("%q: error %v, python ok=%v", u, err, w.OK)
			continue
		}
		if err != nil {
			continue
		}
		if w.Password == nil {
			if got.hasPassword {
				t.Errorf("%q: password %q, python none", u, got.password)
			}
		} else if got.password != *w.Password || pyUnquote(got.password) != *w.Unquoted {
			t.Errorf("%q: password %q / unquoted %q, python %q / %q", u, got.password, pyUnquote(got.password), *w.Password, *w.Unquoted)
		}
		if w.Hostname != nil && got.hostname != *w.Hostname || got.port != w.Port {
			t.Errorf("%q: host %q port %d, python %v %d", u, got.hostname, got.port, *w.Hostname, w.Port)
		}
	}
}

// TestClientsAuthenticate: the raw URL authenticates as redis-py 3 and fails
// as redis-py 4 for a password whose %XX decodes; the encoded URL the other
// way round; kombu reads like redis-py 4.
func TestClientsAuthenticate(t *testing.T) {
	const pw = "p%41ss!w:rd"
	srv := testenv.RedisWithPassword(t, pw)
	raw := "redis://:" + pw + "@" + srv.Addr() + "/0"
	enc := "redis://:p%2541ss%21w%3Ard@" + srv.Addr() + "/0"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		url  string
		kind redisClientKind
		ok   bool
	}{{raw, redisPy3, true}, {raw, redisPy4, false}, {enc, redisPy4, true}, {enc, kombu, true}, {enc, redisPy3, false}} {
		c, err := connectRedis(ctx, tc.url, tc.kind)
		if (err == nil) != tc.ok {
			t.Errorf("%s on %s URL: err = %v, want ok=%v", tc.kind, map[bool]string{true: "raw", false: "encoded"}[tc.url == raw], err, tc.ok)
		}
		if err != nil && strings.Contains(err.Error(), "ss!w") {
			t.Errorf("error shows the password: %v", err)
		}
		if c != nil {
			c.Close()
		}
	}
}
