package testenv

// pgimage.go builds a real PostgreSQL 15 image from the host's installation:
// there is no registry, so the host's binaries, their shared libraries (as
// ldd names them), share files and timezone data go into an image FROM
// scratch, with a small static Go entrypoint (./internal/testenv/pgentry)
// that does what the official postgres image's entrypoint does for the
// variables the agent sets. BuildHostImage is the generic part: any host
// program (redis-server too) can be packed the same way.
//
// Side effects: runs `go build` and ldd, reads host files, and creates an
// image in the local Docker Engine. Nothing is pulled.

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// HostImage is an image FROM scratch made of host files and a static Go
// entrypoint.
type HostImage struct {
	Tag string
	// Binaries are host executables (and shared objects) copied at the same
	// path, each with the shared libraries ldd lists for it.
	Binaries []string
	// Trees are host directories copied whole, at the same path; the ELF
	// files in them (extension .so) bring their libraries too.
	Trees []string
	// Files are extra files by path (e.g. /etc/passwd).
	Files map[string]string
	// Dirs are empty directories, owned by UID, mode 0700 unless Mode says.
	Dirs []HostDir
	// Entrypoint is the Go main package compiled static into /entrypoint,
	// relative to the module root, e.g. "./internal/testenv/pgentry".
	// Without one, Command is the image's ENTRYPOINT (a host binary).
	Entrypoint string
	Command    []string
	// User is the image's USER ("uid:gid").
	User  string
	Env   map[string]string
	Ports []string // EXPOSE lines, e.g. "5432/tcp"
}

// HostDir is an empty directory of a HostImage.
type HostDir struct {
	Path     string
	UID, GID int
	Mode     int64
}

// Postgres15Bin is where Debian's postgresql-15 package puts the server.
const Postgres15Bin = "/usr/lib/postgresql/15/bin"

// PostgresImageTag is the tag PostgresImage builds.
const PostgresImageTag = "redash-agent-test/postgres:15-host"

var (
	hostImagesMu sync.Mutex
	hostImages   = map[string]*imageBuild{}
)

// PostgresImage returns the tag of a PostgreSQL 15 image built from the
// host's postgresql-15, once per process: POSTGRES_PASSWORD, data in
// /var/lib/postgresql/data (initdb on first start), port 5432 on every
// address, scram-sha-256 for TCP, as uid 999. Skips (fails on CI) without
// the host's PostgreSQL 15 or Docker.
func PostgresImage(t testing.TB) string {
	t.Helper()
	if _, err := os.Stat(filepath.Join(Postgres15Bin, "postgres")); err != nil {
		Unavailable(t, "PostgreSQL 15 on the host (for the postgres test image)", "apt-get install postgresql-15")
		return ""
	}
	const uid = 999
	BuildHostImage(t, HostImage{
		Tag:      PostgresImageTag,
		Binaries: []string{Postgres15Bin + "/postgres", Postgres15Bin + "/initdb", "/bin/sh"},
		// initdb runs the server in bootstrap mode through popen: /bin/sh.
		Trees: []string{"/usr/lib/postgresql/15/lib", "/usr/share/postgresql/15", "/usr/share/zoneinfo"},
		Files: map[string]string{
			"/etc/passwd": fmt.Sprintf("root:x:0:0::/:/bin/sh\npostgres:x:%d:%d::/var/lib/postgresql:/bin/sh\n", uid, uid),
			"/etc/group":  fmt.Sprintf("root:x:0:\npostgres:x:%d:\n", uid),
		},
		Dirs: []HostDir{
			{Path: "/var/lib/postgresql", UID: uid, GID: uid, Mode: 0o755},
			{Path: "/var/lib/postgresql/data", UID: uid, GID: uid, Mode: 0o700},
			{Path: "/var/run/postgresql", UID: uid, GID: uid, Mode: 0o2775},
			{Path: "/tmp", Mode: 0o1777},
		},
		Entrypoint: "./internal/testenv/pgentry",
		User:       fmt.Sprintf("%d:%d", uid, uid),
		Env:        map[string]string{"PGDATA": "/var/lib/postgresql/data", "LANG": "C"},
		Ports:      []string{"5432/tcp"},
	})
	return PostgresImageTag
}

// BuildHostImage builds img once per process (per Tag) and returns its ID.
func BuildHostImage(t testing.TB, img HostImage) string {
	t.Helper()
	cli := DockerClient(t)
	hostImagesMu.Lock()
	b, ok := hostImages[img.Tag]
	if !ok {
		b = &imageBuild{}
		hostImages[img.Tag] = b
	}
	hostImagesMu.Unlock()
	b.once.Do(func() { b.id, b.err = buildHostImage(cli, img) })
	if b.err != nil {
		t.Fatalf("building host image %q: %v", img.Tag, b.err)
	}
	return b.id
}

func buildHostImage(cli *client.Client, img HostImage) (string, error) {
	files := map[string][]byte{} // image path -> content
	add := func(path string) error {
		if _, ok := files[path]; ok {
			return nil
		}
		data, err := os.ReadFile(path) // follows symlinks: the image gets plain files
		if err != nil {
			return fmt.Errorf("reading host file %q: %w", path, err)
		}
		files[path] = data
		return nil
	}
	var elves []string
	for _, b := range img.Binaries {
		elves = append(elves, b)
		if err := add(b); err != nil {
			return "", err
		}
	}
	for _, tree := range img.Trees {
		err := filepath.WalkDir(tree, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				if d.Name() == "bitcode" { // LLVM JIT bitcode: 20 MB nobody here uses
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				if st, err := os.Stat(path); err != nil || st.IsDir() {
					return nil // a link to a directory (zoneinfo/posix) or a dangling one
				}
			}
			if strings.HasSuffix(path, ".so") {
				elves = append(elves, path)
			}
			return add(path)
		})
		if err != nil {
			return "", fmt.Errorf("copying host directory %q: %w", tree, err)
		}
	}
	for _, elf := range elves {
		libs, err := sharedLibs(elf)
		if err != nil {
			return "", err
		}
		for _, l := range libs {
			if err := add(l); err != nil {
				return "", err
			}
		}
	}
	for p, c := range img.Files {
		files[p] = []byte(c)
	}
	entrypoint := img.Command
	if img.Entrypoint != "" {
		entry, err := compileStatic(img.Entrypoint)
		if err != nil {
			return "", err
		}
		files["/entrypoint"] = entry
		entrypoint = []string{"/entrypoint"}
	}
	if len(entrypoint) == 0 {
		return "", fmt.Errorf("image %q has neither an Entrypoint package nor a Command", img.Tag)
	}
	entryJSON, err := json.Marshal(entrypoint)
	if err != nil {
		return "", err
	}

	var df strings.Builder
	// ADD extracts a local tar keeping its owners; COPY would make all root's.
	df.WriteString("FROM scratch\nADD rootfs.tar /\n")
	for _, k := range slices.Sorted(maps.Keys(img.Env)) {
		fmt.Fprintf(&df, "ENV %s=%s\n", k, dockerfileQuote(img.Env[k]))
	}
	for _, p := range img.Ports {
		fmt.Fprintf(&df, "EXPOSE %s\n", p)
	}
	if img.User != "" {
		fmt.Fprintf(&df, "USER %s\n", img.User)
	}
	fmt.Fprintf(&df, "ENTRYPOINT %s\n", entryJSON)

	buildCtx, err := hostContext(df.String(), files, img.Dirs)
	if err != nil {
		return "", err
	}
	return runBuild(cli, img.Tag, buildCtx)
}

var lddLine = regexp.MustCompile(`(?:=> )?(/\S+) \(0x`)

// sharedLibs is what ldd says path loads, the dynamic loader included.
func sharedLibs(path string) ([]string, error) {
	out, err := exec.Command("ldd", path).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "not a dynamic executable") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %q: %w: %s", path, err, out)
	}
	var libs []string
	for _, l := range strings.Split(string(out), "\n") {
		if m := lddLine.FindStringSubmatch(l); m != nil {
			libs = append(libs, m[1])
		}
	}
	return libs, nil
}

// hostContext is the build context: the Dockerfile and rootfs.tar, which
// holds the files under their image paths and the directories with the
// owners dirs give them.
func hostContext(dockerfile string, files map[string][]byte, dirs []HostDir) (io.Reader, error) {
	mtime := time.Unix(0, 0)
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	write := func(tw *tar.Writer, h tar.Header, data []byte) error {
		h.ModTime = mtime
		h.Size = int64(len(data))
		if err := tw.WriteHeader(&h); err != nil {
			return fmt.Errorf("writing the build context: %w", err)
		}
		_, err := tw.Write(data)
		return err
	}
	made := map[string]bool{}
	var parents func(p string) error
	parents = func(p string) error {
		d := filepath.Dir(p)
		if d == "/" || made[d] {
			return nil
		}
		if err := parents(d); err != nil {
			return err
		}
		made[d] = true
		return write(tw, tar.Header{Name: d[1:] + "/", Mode: 0o755, Typeflag: tar.TypeDir}, nil)
	}
	for _, d := range dirs {
		if err := parents(d.Path); err != nil {
			return nil, err
		}
		mode := d.Mode
		if mode == 0 {
			mode = 0o700
		}
		made[d.Path] = true
		if err := write(tw, tar.Header{Name: d.Path[1:] + "/", Mode: mode, Uid: d.UID, Gid: d.GID, Typeflag: tar.TypeDir}, nil); err != nil {
			return nil, err
		}
	}
	for _, p := range slices.Sorted(maps.Keys(files)) {
		if err := parents(p); err != nil {
			return nil, err
		}
		if err := write(tw, tar.Header{Name: p[1:], Mode: 0o755, Typeflag: tar.TypeReg}, files[p]); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	outer := tar.NewWriter(&buf)
	if err := write(outer, tar.Header{Name: "Dockerfile", Mode: 0o644, Typeflag: tar.TypeReg}, []byte(dockerfile)); err != nil {
		return nil, err
	}
	if err := write(outer, tar.Header{Name: "rootfs.tar", Mode: 0o644, Typeflag: tar.TypeReg}, rootfs.Bytes()); err != nil {
		return nil, err
	}
	if err := outer.Close(); err != nil {
		return nil, err
	}
	return &buf, nil
}

// compileStatic builds the main package pkg (relative to the module root)
// static and returns the executable.
func compileStatic(pkg string) ([]byte, error) {
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("finding the go command to compile %s: %w; put go on PATH", pkg, err)
	}
	dir, err := os.MkdirTemp("", "hostimage-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "entrypoint")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+runtime.GOARCH)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("compiling %q: %w: %s", pkg, err, msg)
	}
	return os.ReadFile(out)
}
