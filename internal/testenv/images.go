package testenv

// images.go builds the fake Redash images (test/fakeredash) that stand in for
// redash/redash and redash/nginx. There is no registry: the Go program is
// compiled static once per test process and sent to the local Docker Engine
// as an in-memory build context for an image FROM scratch. Side effects: runs
// `go build` into a temporary directory (removed afterwards) and creates or
// retags images in the local Docker Engine. Nothing is pulled.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/jsonmessage"
)

// FakeImage describes one image built from test/fakeredash.
type FakeImage struct {
	// Tag is the reference the image gets, e.g. "redash-agent-test/redash:v1".
	// A later build with the same Tag and another Cmd or Env moves the tag;
	// the ID returned for the earlier build stays valid.
	Tag string
	// Cmd is the image's CMD (the entrypoint command); default ["server"].
	Cmd []string
	// Env becomes ENV lines of the image.
	Env map[string]string
}

// FakeImageLabel marks every image BuildFakeImage makes, so a cleanup can
// find them: docker image ls --filter label=redash-agent-test.fakeredash
const FakeImageLabel = "redash-agent-test.fakeredash"

// imageBuildTimeout bounds one docker build; a FROM scratch COPY takes well
// under a second, the slack is for a machine busy compiling.
const imageBuildTimeout = 2 * time.Minute

var (
	binOnce sync.Once
	binData []byte // the static fakeredash executable
	binErr  error

	imagesMu sync.Mutex
	images   = map[string]*imageBuild{} // key: canonical (Tag, Cmd, Env)
)

// imageBuild is one (Tag, Cmd, Env) build; once makes concurrent callers of
// the same image wait for a single build.
type imageBuild struct {
	once sync.Once
	id   string
	err  error
}

// DockerClient returns a client for the Docker Engine named by the
// environment (DOCKER_HOST, default the local socket) with API version
// negotiation, closed when the test ends. If the daemon does not answer a
// Ping, the test is skipped (failed on CI).
func DockerClient(t testing.TB) *client.Client {
	t.Helper()
	cli, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		Unavailable(t, "Docker Engine", fmt.Sprintf("creating a Docker client from the environment failed (%v); fix DOCKER_HOST", err))
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(ctx); err != nil {
		cli.Close()
		Unavailable(t, "Docker Engine", fmt.Sprintf("the daemon did not answer a ping (%v); start dockerd or set DOCKER_HOST", err))
		return nil
	}
	// Negotiation happened in Ping; later calls use the daemon's API version.
	t.Cleanup(func() { cli.Close() })
	return cli
}

// BuildFakeImage builds test/fakeredash (CGO_ENABLED=0, static) once per
// process and an image FROM scratch containing /fakeredash as ENTRYPOINT, the
// given CMD (default ["server"]) and ENV lines, through the Docker Engine API
// ImageBuild with a tar context made in memory. Nothing is pulled. Returns the
// image ID. Idempotent per (daemon, Tag, Cmd, Env) within a process; safe to call
// from parallel tests.
func BuildFakeImage(t testing.TB, img FakeImage) string {
	t.Helper()
	if img.Tag == "" {
		t.Fatalf("BuildFakeImage: FakeImage.Tag is empty; name the image, e.g. redash-agent-test/redash:v1")
	}
	if len(img.Cmd) == 0 {
		img.Cmd = []string{"server"}
	}
	dockerfile, err := fakeDockerfile(img)
	if err != nil {
		t.Fatalf("BuildFakeImage %q: %v", img.Tag, err)
	}
	cli := DockerClient(t)

	// Per daemon: a test on a private dockerd needs its own copy.
	key := cli.DaemonHost() + "\x00" + img.Tag + "\x00" + dockerfile
	imagesMu.Lock()
	b, ok := images[key]
	if !ok {
		b = &imageBuild{}
		images[key] = b
	}
	imagesMu.Unlock()

	b.once.Do(func() {
		bin, err := fakeredashBinary()
		if err != nil {
			b.err = err
			return
		}
		b.id, b.err = buildImage(cli, img.Tag, dockerfile, bin)
	})
	if b.err != nil {
		t.Fatalf("building fake image %q: %v", img.Tag, b.err)
	}
	return b.id
}

// fakeDockerfile renders the Dockerfile for img. Env keys are sorted so the
// same FakeImage always gives the same text (and the same build cache hits).
func fakeDockerfile(img FakeImage) (string, error) {
	cmd, err := json.Marshal(img.Cmd)
	if err != nil {
		return "", fmt.Errorf("encoding CMD: %w", err)
	}
	var sb strings.Builder
	sb.WriteString("FROM scratch\n")
	// /tmp exists so the long-running roles can leave /tmp/env there.
	sb.WriteString("COPY tmp /tmp\n")
	sb.WriteString("COPY fakeredash /fakeredash\n")
	keys := make([]string, 0, len(img.Env))
	for k := range img.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var bad []string
	for _, k := range keys {
		v := img.Env[k]
		if k == "" || strings.ContainsAny(k, "= \t\r\n\"'\\$") || strings.ContainsAny(v, "\r\n") {
			bad = append(bad, fmt.Sprintf("%q", k))
			continue
		}
		fmt.Fprintf(&sb, "ENV %s=%s\n", k, dockerfileQuote(v))
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("env keys %s: a key must be a plain name and a value one line (Dockerfile ENV cannot hold a newline)", strings.Join(bad, ", "))
	}
	sb.WriteString(`ENTRYPOINT ["/fakeredash"]` + "\n")
	fmt.Fprintf(&sb, "CMD %s\n", cmd)
	return sb.String(), nil
}

// dockerfileQuote double-quotes v for an ENV line: inside double quotes the
// builder expands $VAR and honours backslash escapes, so escape those.
func dockerfileQuote(v string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `$`, `\$`)
	return `"` + r.Replace(v) + `"`
}

// fakeredashBinary compiles test/fakeredash once per process.
func fakeredashBinary() ([]byte, error) {
	binOnce.Do(func() { binData, binErr = compileFakeredash() })
	return binData, binErr
}

func compileFakeredash() ([]byte, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	// `go test` puts its own GOROOT/bin first on the PATH of the tests it
	// runs, so the go command that builds the tests builds fakeredash too.
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("finding the go command to compile ./test/fakeredash: %w; put go on PATH", err)
	}
	dir, err := os.MkdirTemp("", "fakeredash-build-")
	if err != nil {
		return nil, fmt.Errorf("creating a build directory: %w", err)
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "fakeredash")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// -trimpath and no build ID keep the bytes stable between processes, so
	// Docker's build cache gives the same image again.
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w -buildid=",
		"-o", out, "./test/fakeredash")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("compiling %q in %q: %w: %s; run `go build ./test/fakeredash` to see why",
			"./test/fakeredash", root, err, msg)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("reading the compiled fakeredash: %w", err)
	}
	return data, nil
}

// ModuleRoot returns the directory holding go.mod, walking up from the
// working directory (a test runs in its package's directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the working directory: %w", err)
	}
	for d := dir; ; {
		if st, err := os.Stat(filepath.Join(d, "go.mod")); err == nil && !st.IsDir() {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("finding go.mod above %q: none found; run the tests inside the module", dir)
		}
		d = parent
	}
}

// buildImage sends an in-memory context (Dockerfile, tmp/, fakeredash) to the
// daemon's classic builder and returns the ID of the image tagged tag.
func buildImage(cli *client.Client, tag, dockerfile string, bin []byte) (string, error) {
	buildCtx, err := fakeContext(dockerfile, bin)
	if err != nil {
		return "", err
	}
	return runBuild(cli, tag, buildCtx)
}

// runBuild sends a build context to the classic builder and returns the
// ID of the image tagged tag. Version 1 (classic builder): BuildKit over the
// API needs a session, and FROM scratch + COPY gains nothing from it.
func runBuild(cli *client.Client, tag string, buildCtx io.Reader) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), imageBuildTimeout)
	defer cancel()
	resp, err := cli.ImageBuild(ctx, buildCtx, build.ImageBuildOptions{
		Tags: []string{tag}, Dockerfile: "Dockerfile", Remove: true, ForceRemove: true,
		Version: build.BuilderV1,
		Labels:  map[string]string{FakeImageLabel: "true"},
	})
	if err != nil {
		return "", fmt.Errorf("calling ImageBuild: %w", err)
	}
	defer resp.Body.Close()
	if log, err := readJSONMessages(resp.Body); err != nil {
		return "", fmt.Errorf("docker build: %w; build output:\n%s", err, log)
	}
	ins, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		return "", fmt.Errorf("inspecting the built image %q: %w", tag, err)
	}
	return ins.ID, nil
}

// readJSONMessages reads a build's or load's JSON message stream to its
// end: the text it streamed, and the error it reported, if any.
func readJSONMessages(r io.Reader) (string, error) {
	var log bytes.Buffer
	dec := json.NewDecoder(r)
	for {
		var m jsonmessage.JSONMessage
		if err := dec.Decode(&m); err == io.EOF {
			return log.String(), nil
		} else if err != nil {
			return log.String(), fmt.Errorf("reading the daemon's answer: %w", err)
		}
		if m.Error != nil {
			return log.String(), errors.New(m.Error.Message)
		}
		log.WriteString(m.Stream)
	}
}

// fakeContext makes the build context tar in memory.
func fakeContext(dockerfile string, bin []byte) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed mtime keeps the context identical between runs, so the
	// builder's cache (which hashes content and metadata) is hit.
	mtime := time.Unix(0, 0)
	entries := []struct {
		hdr  tar.Header
		data []byte
	}{
		{tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, []byte(dockerfile)},
		{tar.Header{Name: "tmp/", Mode: 0o1777, Typeflag: tar.TypeDir}, nil},
		{tar.Header{Name: "fakeredash", Mode: 0o755, Typeflag: tar.TypeReg}, bin},
	}
	for _, e := range entries {
		h := e.hdr
		h.Size = int64(len(e.data))
		h.ModTime = mtime
		if err := tw.WriteHeader(&h); err != nil {
			return nil, fmt.Errorf("writing the build context: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("writing the build context: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("writing the build context: %w", err)
	}
	return &buf, nil
}

// FakeFamilyImage builds the stand-in playing one Redash release family
// ("8", "9", "10", "25.1", "26.3"; see test/fakeredash/family.go), tagged
// redash-agent-test/redash:family-<family>. Use it with a matching
// redash:version (8.0.0.b32245 for "8", and so on).
func FakeFamilyImage(t testing.TB, family string) string {
	t.Helper()
	tag := "redash-agent-test/redash:family-" + family
	BuildFakeImage(t, FakeImage{Tag: tag, Env: map[string]string{"FAKEREDASH_FAMILY": family}})
	return tag
}
