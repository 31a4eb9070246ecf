package testenv

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/pkg/jsonmessage"
)

var (
	hostImagesMu sync.Mutex
	hostImages   = map[string]*imageBuild{} // key: tag + Dockerfile + file list
)

// BuildHostBinaryImage builds tag FROM scratch holding the host's
// binaries (absolute paths), every shared library ldd lists for them (and
// the dynamic loader) at the same paths, and extraFiles (image path ->
// content), with cmd as its ENTRYPOINT-less CMD. It runs the host's own
// build of a real server (redis-server, postgres) in a container without a
// registry. A binary missing on the host skips the test (fails on CI).
// Idempotent per (tag, content) within a process.
func BuildHostBinaryImage(t testing.TB, tag string, binaries []string, extraFiles map[string][]byte, cmd []string) string {
	t.Helper()
	files := map[string]string{} // image path -> host path
	for _, bin := range binaries {
		if _, err := os.Stat(bin); err != nil {
			Unavailable(t, bin, "install the package that provides "+bin+" (apt-get install)")
			return ""
		}
		files[bin] = bin
		libs, err := sharedLibraries(bin)
		if err != nil {
			t.Fatalf("BuildHostBinaryImage %q: %v", tag, err)
		}
		for _, l := range libs {
			files[l] = l
		}
	}
	cmdJSON, err := json.Marshal(cmd)
	if err != nil {
		t.Fatal(err)
	}
	dockerfile := "FROM scratch\nCOPY root/ /\nCMD " + string(cmdJSON) + "\n"
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	key := tag + "\x00" + dockerfile + "\x00" + strings.Join(paths, ",")
	for p, data := range extraFiles {
		key += "\x00" + p + "=" + string(data)
	}
	cli := DockerClient(t)
	hostImagesMu.Lock()
	b, ok := hostImages[key]
	if !ok {
		b = &imageBuild{}
		hostImages[key] = b
	}
	hostImagesMu.Unlock()
	b.once.Do(func() {
		var ctxTar io.Reader
		ctxTar, b.err = hostImageContext(dockerfile, files, extraFiles)
		if b.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), imageBuildTimeout)
		defer cancel()
		resp, err := cli.ImageBuild(ctx, ctxTar, build.ImageBuildOptions{
			Tags: []string{tag}, Dockerfile: "Dockerfile", Remove: true, ForceRemove: true,
			Version: build.BuilderV1, Labels: map[string]string{FakeImageLabel: "true"},
		})
		if err != nil {
			b.err = fmt.Errorf("calling ImageBuild: %w", err)
			return
		}
		defer resp.Body.Close()
		dec := json.NewDecoder(resp.Body)
		for {
			var m jsonmessage.JSONMessage
			if err := dec.Decode(&m); err == io.EOF {
				break
			} else if err != nil {
				b.err = fmt.Errorf("reading the build output: %w", err)
				return
			}
			if m.Error != nil {
				b.err = fmt.Errorf("docker build failed: %s", m.Error.Message)
				return
			}
		}
		ins, err := cli.ImageInspect(ctx, tag)
		if err != nil {
			b.err = fmt.Errorf("inspecting the built image %q: %w", tag, err)
			return
		}
		b.id = ins.ID
	})
	if b.err != nil {
		t.Fatalf("building host-binary image %q: %v", tag, b.err)
	}
	return tag
}

var lddPath = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// sharedLibraries lists the absolute paths ldd prints for bin.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w (is it a dynamic executable? is ldd installed?)", bin, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		if m := lddPath.FindStringSubmatch(line); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, nil
}

// hostImageContext makes the build context: the Dockerfile, and root/
// holding each file at its image path (content of the host path, symlinks
// followed), /tmp, and extraFiles.
func hostImageContext(dockerfile string, files map[string]string, extra map[string][]byte) (io.Reader, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	add := func(h tar.Header, data []byte) error {
		h.Size, h.ModTime = int64(len(data)), mtime
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := add(tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, []byte(dockerfile)); err != nil {
		return nil, err
	}
	if err := add(tar.Header{Name: "root/tmp/", Mode: 0o1777, Typeflag: tar.TypeDir}, nil); err != nil {
		return nil, err
	}
	dirs := map[string]bool{}
	write := func(path string, data []byte, mode int64) error {
		for d := filepath.Dir(path); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			if err := add(tar.Header{Name: "root" + d + "/", Mode: 0o755, Typeflag: tar.TypeDir}, nil); err != nil {
				return err
			}
		}
		return add(tar.Header{Name: "root" + path, Mode: mode, Typeflag: tar.TypeReg}, data)
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths) // parents before children need not hold: dirs are added on demand
	for _, p := range paths {
		data, err := os.ReadFile(files[p])
		if err != nil {
			return nil, fmt.Errorf("reading %s for the image: %w", files[p], err)
		}
		if err := write(p, data, 0o755); err != nil {
			return nil, err
		}
	}
	for p, data := range extra {
		if err := write(p, data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}
