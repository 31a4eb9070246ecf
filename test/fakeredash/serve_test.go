package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// trickyEnv holds values that break naive quoting anywhere between the
// agent's env file and the container: quotes, $, backslashes, '=', spaces,
// non-ASCII and HTML metacharacters (which encoding/json escapes by default).
var trickyEnv = map[string]string{
	"REDASH_COOKIE_SECRET": `c0o"k'ie $HOME \n \\ =x= <&>`,
	"REDASH_SECRET_KEY":    "ünïcødé key with  spaces ",
	"REDASH_DATABASE_URL":  "postgresql://u%40s:p%24ss@db:5432/redash?sslmode=require",
	"EMPTY":                "",
}

func environOf(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	return out
}

func TestServerHandler(t *testing.T) {
	h := serverHandler(func() []string { return environOf(trickyEnv) })
	tests := []struct {
		name, method, path string
		wantCode           int
		wantBody           string // exact; empty means do not compare
	}{
		{"ping answers like redash", "GET", "/ping", 200, "PONG."},
		{"post to ping is refused", "POST", "/ping", 405, ""},
		{"unknown path is 404", "GET", "/nope", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("%s %s: status %d, want %d", tt.method, tt.path, rec.Code, tt.wantCode)
			}
			if tt.wantBody != "" && rec.Body.String() != tt.wantBody {
				t.Fatalf("%s %s: body %q, want %q", tt.method, tt.path, rec.Body.String(), tt.wantBody)
			}
		})
	}
	t.Run("env round-trips every value byte for byte", func(t *testing.T) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/env", nil))
		assertEnvJSON(t, rec.Body.Bytes(), trickyEnv, true)
	})
}

func TestEnvMap(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    map[string]string
	}{
		{"only the first = splits", []string{"A=b=c=="}, map[string]string{"A": "b=c=="}},
		{"empty value", []string{"A="}, map[string]string{"A": ""}},
		{"no = at all", []string{"A"}, map[string]string{"A": ""}},
		{"newline kept", []string{"A=x\ny"}, map[string]string{"A": "x\ny"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := envMap(tt.environ)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Fatalf("envMap(%q) = %q, want %q", tt.environ, got, tt.want)
			}
		})
	}
}

func TestDumpEnvIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "env")
	if err := dumpEnv(path, environOf(trickyEnv)); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("env dump mode %v, want 0600: it holds secrets", st.Mode().Perm())
	}
	data, _ := os.ReadFile(path)
	assertEnvJSON(t, data, trickyEnv, true)
}

func TestNginxHandler(t *testing.T) {
	up := httptest.NewServer(serverHandler(func() []string { return nil }))
	defer up.Close()
	upURL, _ := url.Parse(up.URL)
	dead, _ := url.Parse("http://127.0.0.1:1") // nothing listens on port 1

	tests := []struct {
		name     string
		upstream *url.URL
		wantCode int
		wantBody string
	}{
		{"proxies to the server", upURL, 200, "PONG."},
		{"server down is 502", dead, 502, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			nginxHandler(tt.upstream).ServeHTTP(rec, httptest.NewRequest("GET", "/ping", nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tt.wantCode, rec.Body.String())
			}
			if tt.wantBody != "" && rec.Body.String() != tt.wantBody {
				t.Fatalf("body %q, want %q", rec.Body.String(), tt.wantBody)
			}
		})
	}
}

func TestServeExitCodes(t *testing.T) {
	tests := []struct {
		name, cmd string
		want      int
	}{
		{"crash exits 1", "crash", 1},
		{"unknown command is a usage error", "celery", 2},
		{"empty command is a usage error", "", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serve(tt.cmd, nil); got != tt.want {
				t.Fatalf("serve(%q) = %d, want %d", tt.cmd, got, tt.want)
			}
		})
	}
}

// assertEnvJSON checks that data is a JSON object holding every want entry
// exactly; when exact is false, extra keys (PATH, HOSTNAME...) are allowed.
func assertEnvJSON(t *testing.T, data []byte, want map[string]string, exact bool) {
	t.Helper()
	var got map[string]string
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("env is not a JSON object of strings: %v\n%s", err, data)
	}
	for k, v := range want {
		g, ok := got[k]
		if !ok {
			t.Errorf("env lacks %s", k)
		} else if g != v {
			t.Errorf("env %s = %q, want %q", k, g, v)
		}
	}
	if exact && len(got) != len(want) {
		t.Errorf("env has %d keys, want %d: %q", len(got), len(want), got)
	}
}

// TestContainerRoles runs every role in a real container built by
// testenv.BuildFakeImage on the local Docker Engine: the way the engine,
// migrations and e2e tests use it.
func TestContainerRoles(t *testing.T) {
	cli := testenv.DockerClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	imageEnv := map[string]string{"FROM_IMAGE": `a "quoted" $VALUE \ here`}
	redashID := testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/fakeredash-selftest:redash", Env: imageEnv})
	nginxID := testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/fakeredash-selftest:nginx", Cmd: []string{"nginx"}})
	if again := testenv.BuildFakeImage(t, testenv.FakeImage{Tag: "redash-agent-test/fakeredash-selftest:redash", Env: imageEnv}); again != redashID {
		t.Fatalf("second BuildFakeImage with the same input gave %s, want the memoized %s", again, redashID)
	}
	ins, err := cli.ImageInspect(ctx, redashID)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ins.Config.Entrypoint, " ") + " | " + strings.Join(ins.Config.Cmd, " "); got != "/fakeredash | server" {
		t.Fatalf("image entrypoint | cmd = %q, want %q", got, "/fakeredash | server")
	}

	prefix := fmt.Sprintf("fakeredash-test-%d", os.Getpid())
	netResp, err := cli.NetworkCreate(ctx, prefix, network.CreateOptions{})
	if err != nil {
		t.Fatalf("creating network %q: %v", prefix, err)
	}
	t.Cleanup(func() { cli.NetworkRemove(context.Background(), netResp.ID) })

	run := func(role, image string, cmd []string, aliases ...string) string {
		t.Helper()
		name := prefix + "-" + role
		resp, err := cli.ContainerCreate(ctx,
			&container.Config{Image: image, Cmd: cmd, Env: environOf(trickyEnv)},
			&container.HostConfig{},
			&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
				prefix: {Aliases: aliases},
			}}, nil, name)
		if err != nil {
			t.Fatalf("creating container %q: %v", name, err)
		}
		t.Cleanup(func() {
			cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
		})
		if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
			t.Fatalf("starting container %q: %v", name, err)
		}
		return resp.ID
	}
	ipOf := func(id string) string {
		t.Helper()
		c, err := cli.ContainerInspect(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return c.NetworkSettings.Networks[prefix].IPAddress
	}
	wantEnv := map[string]string{"FROM_IMAGE": imageEnv["FROM_IMAGE"]}
	for k, v := range trickyEnv {
		wantEnv[k] = v
	}

	server := run("server", redashID, nil, "redash")
	worker := run("worker", redashID, []string{"worker"})
	scheduler := run("scheduler", redashID, []string{"scheduler"})
	nginx := run("nginx", nginxID, nil)

	t.Run("server answers ping and shows its env", func(t *testing.T) {
		base := "http://" + ipOf(server) + ":5000"
		if body := httpGet(t, base+"/ping"); body != "PONG." {
			t.Fatalf("GET /ping = %q, want PONG.", body)
		}
		assertEnvJSON(t, []byte(httpGet(t, base+"/env")), wantEnv, false)
	})
	t.Run("nginx proxies to the redash alias", func(t *testing.T) {
		if body := httpGet(t, "http://"+ipOf(nginx)+":80/ping"); body != "PONG." {
			t.Fatalf("GET nginx /ping = %q, want PONG.", body)
		}
	})
	for role, id := range map[string]string{"worker": worker, "scheduler": scheduler} {
		t.Run(role+" leaves its env in /tmp/env", func(t *testing.T) {
			assertEnvJSON(t, copyFile(t, cli, id, "/tmp/env"), wantEnv, false)
		})
	}
	for role, id := range map[string]string{"server": server, "worker": worker, "scheduler": scheduler, "nginx": nginx} {
		t.Run(role+" exits 0 promptly on SIGTERM", func(t *testing.T) {
			timeout := 10
			start := time.Now()
			if err := cli.ContainerStop(ctx, id, container.StopOptions{Timeout: &timeout}); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			c, err := cli.ContainerInspect(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			// 137 would mean Docker gave up waiting and sent SIGKILL.
			if c.State.ExitCode != 0 || took > 5*time.Second {
				t.Fatalf("%s stopped with exit %d after %v, want 0 well before the 10s kill", role, c.State.ExitCode, took)
			}
		})
	}

	oneShot := []struct {
		name     string
		cmd      []string
		wantCode int64
		wantOut  string // substring of stdout
	}{
		{"crash exits 1", []string{"crash"}, 1, ""},
		{"unknown command exits 2", []string{"bogus"}, 2, ""},
		{"env prints the environment", []string{"env"}, 0, `"REDASH_SECRET_KEY":"ünïcødé key with  spaces "`},
	}
	for _, tt := range oneShot {
		t.Run(tt.name, func(t *testing.T) {
			id := run("oneshot-"+tt.cmd[0], redashID, tt.cmd)
			waitC, errC := cli.ContainerWait(ctx, id, container.WaitConditionNotRunning)
			select {
			case w := <-waitC:
				if w.StatusCode != tt.wantCode {
					t.Fatalf("%v exited %d, want %d", tt.cmd, w.StatusCode, tt.wantCode)
				}
			case err := <-errC:
				t.Fatal(err)
			case <-time.After(30 * time.Second):
				t.Fatalf("%v still running after 30s", tt.cmd)
			}
			logs, err := cli.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true})
			if err != nil {
				t.Fatal(err)
			}
			defer logs.Close()
			var stdout, stderr bytes.Buffer
			stdcopy.StdCopy(&stdout, &stderr, logs)
			if !strings.Contains(stdout.String(), tt.wantOut) {
				t.Fatalf("%v stdout %q lacks %q", tt.cmd, stdout.String(), tt.wantOut)
			}
			if tt.cmd[0] == "env" {
				assertEnvJSON(t, stdout.Bytes(), wantEnv, false)
			}
		})
	}
}

// httpGet fetches url, retrying for a few seconds while the container starts.
func httpGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	var lastErr error
	for i := 0; i < 50; i++ {
		resp, err := c.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return string(body)
			}
			lastErr = fmt.Errorf("status %d: %s", resp.StatusCode, body)
		} else {
			lastErr = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("GET %s: %v", url, lastErr)
	return ""
}

// copyFile reads one file out of a container, retrying while the role starts.
func copyFile(t *testing.T, cli *client.Client, id, path string) []byte {
	t.Helper()
	var lastErr error
	for i := 0; i < 50; i++ {
		rc, _, err := cli.CopyFromContainer(context.Background(), id, path)
		if err == nil {
			tr := tar.NewReader(rc)
			_, err = tr.Next()
			if err == nil {
				var data []byte
				data, err = io.ReadAll(tr)
				if err == nil && len(data) > 0 {
					rc.Close()
					return data
				}
			}
			rc.Close()
		}
		lastErr = err
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("copying %s from container %s: %v", path, id, lastErr)
	return nil
}
