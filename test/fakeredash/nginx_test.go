package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestNginxForwardsTheClientAddress: the upstream sees the client's address
// appended to the X-Forwarded-For it came with (the ALB's), like
// $proxy_add_x_forwarded_for, plus X-Real-IP and the original Host.
func TestNginxForwardsTheClientAddress(t *testing.T) {
	var got http.Header
	var gotHost string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, gotHost = r.Header.Clone(), r.Host
	}))
	defer up.Close()
	upURL, _ := url.Parse(up.URL)
	proxy := httptest.NewServer(nginxHandler(upURL))
	defer proxy.Close()

	req, _ := http.NewRequest("GET", proxy.URL+"/login", nil)
	req.Host = "redash.example.com"
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	req.Header.Set("X-Forwarded-Proto", "https")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if want := "203.0.113.7, 127.0.0.1"; got.Get("X-Forwarded-For") != want {
		t.Errorf("X-Forwarded-For %q, want %q", got.Get("X-Forwarded-For"), want)
	}
	if got.Get("X-Real-Ip") != "127.0.0.1" || got.Get("X-Forwarded-Proto") != "https" || gotHost != "redash.example.com" {
		t.Errorf("X-Real-IP %q, X-Forwarded-Proto %q, Host %q; want 127.0.0.1, https, redash.example.com",
			got.Get("X-Real-Ip"), got.Get("X-Forwarded-Proto"), gotHost)
	}
}

// TestNginxUnresolvableUpstream: nginx's own start-up failure.
func TestNginxUnresolvableUpstream(t *testing.T) {
	noDNS := &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
		return nil, errors.New("no DNS server here")
	}}
	_, err := resolveUpstream(context.Background(), noDNS, "redash.invalid", "5000")
	want := `[emerg] host not found in upstream "redash.invalid:5000" in /etc/nginx/conf.d/default.conf:2`
	if err == nil || err.Error() != want {
		t.Fatalf("resolveUpstream error %v, want %q", err, want)
	}
}

// TestListenServer: 25.x binds IPv4; 26.2+ binds [::] dual stack (an IPv4
// client still connects) and fails like gunicorn when the kernel refuses an
// AF_INET6 socket.
func TestListenServer(t *testing.T) {
	freePort := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		return port
	}
	ok := func() error { return nil }
	noIPv6 := func() error { return fmt.Errorf("[Errno 97] %w", syscall.EAFNOSUPPORT) }

	for _, tt := range []struct {
		name     string
		f        family
		socket   func() error
		wantAddr string // prefix of the listener's address
		wantErr  string
	}{
		{"25.8 binds 0.0.0.0", family{25, 8}, noIPv6, "0.0.0.0:", ""},
		{"26.3 binds [::]", family{26, 3}, ok, "[::]:", ""},
		{"26.3 without IPv6 fails like gunicorn", family{26, 3}, noIPv6, "", "Can't connect to ('::', "},
		{"plain binds 0.0.0.0", family{}, noIPv6, "0.0.0.0:", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			port := freePort()
			ln, err := listenServer(tt.f, port, tt.socket)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "Address family not supported") && !strings.Contains(err.Error(), "address family not supported") {
					t.Fatalf("err %v, want %q with the errno", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			if !strings.HasPrefix(ln.Addr().String(), tt.wantAddr) {
				t.Fatalf("listening on %s, want %s...", ln.Addr(), tt.wantAddr)
			}
			c, err := net.DialTimeout("tcp4", "127.0.0.1:"+port, 2*time.Second)
			if err != nil {
				t.Fatalf("an IPv4 client cannot connect: %v", err)
			}
			c.Close()
		})
	}
}

// TestNginxContainerWithoutServer: in a container on a network where
// `redash` does not resolve, nginx exits 1 with nginx's message.
func TestNginxContainerWithoutServer(t *testing.T) {
	cli := testenv.DockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	img := testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/fakeredash-selftest:nginx", Cmd: []string{"nginx"}})
	name := fmt.Sprintf("fakeredash-nginx-alone-%d", os.Getpid())
	net, err := cli.NetworkCreate(ctx, name, network.CreateOptions{})
	if err != nil {
		t.Fatalf("creating network %q: %v", name, err)
	}
	t.Cleanup(func() { cli.NetworkRemove(context.Background(), net.ID) })
	resp, err := cli.ContainerCreate(ctx, &container.Config{Image: img}, &container.HostConfig{},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{name: {}}}, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true}) })
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	waitC, errC := cli.ContainerWait(ctx, resp.ID, container.WaitConditionNotRunning)
	select {
	case w := <-waitC:
		if w.StatusCode != 1 {
			t.Fatalf("nginx without a server exited %d, want 1", w.StatusCode)
		}
	case err := <-errC:
		t.Fatal(err)
	}
	logs, err := cli.ContainerLogs(ctx, resp.ID, container.LogsOptions{ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var stdout, stderr bytes.Buffer
	stdcopy.StdCopy(&stdout, &stderr, logs)
	if want := `host not found in upstream "redash:5000"`; !strings.Contains(stderr.String(), want) {
		t.Fatalf("nginx stderr %q lacks %q", stderr.String(), want)
	}
}
