package packaging

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

const testVersion = "0.1.0"

var (
	debsOnce sync.Once
	debsDir  string
	debsErr  error
	debsNote string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if debsDir != "" {
		os.RemoveAll(debsDir)
	}
	os.Exit(code)
}

// debs runs `make deb` once for all tests and returns arch -> .deb path. When
// cmd/redash-agent does not build (parallel development), a laptop run falls
// back to a placeholder binary so the packaging itself is still tested; on CI
// that is a failure.
func debs(t *testing.T) map[string]string {
	t.Helper()
	nfpm := testenv.RequireTool(t, "nfpm", "go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2")
	testenv.RequireTool(t, "make", "apt-get install -y make")
	debsOnce.Do(func() {
		debsDir, debsErr = os.MkdirTemp("", "redash-agent-deb")
		if debsErr != nil {
			return
		}
		args := []string{"deb", "DIST=" + debsDir, "VERSION=" + testVersion, "NFPM=" + nfpm, "SOURCE_DATE_EPOCH=1700000000"}
		out, err := runErr(10*time.Minute, repoRoot, nil, "make", args...)
		if err != nil && !testenv.InCI() {
			debsNote = fmt.Sprintf("cmd/redash-agent did not package (%v), using packaging/testdata/placeholder:\n%s", err, tail(out, 8))
			out, err = runErr(10*time.Minute, repoRoot, nil, "make", append(args, "PKG=./packaging/testdata/placeholder")...)
		}
		if err != nil {
			debsErr = fmt.Errorf("make deb: %v\n%s", err, out)
		}
	})
	if debsErr != nil {
		t.Fatal(debsErr)
	}
	if debsNote != "" {
		t.Log(debsNote)
	}
	got := map[string]string{}
	for _, arch := range []string{"amd64", "arm64"} {
		p := filepath.Join(debsDir, fmt.Sprintf("redash-agent_%s-1_%s.deb", testVersion, arch))
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("make deb did not produce %s: %v", filepath.Base(p), err)
		}
		got[arch] = p
	}
	return got
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// debFiles reads the data archive of a .deb: path -> header and content.
func debFiles(t *testing.T, deb string) (map[string]*tar.Header, map[string][]byte) {
	t.Helper()
	cmd := exec.Command("dpkg-deb", "--fsys-tarfile", deb)
	raw, err := cmd.Output()
	if err != nil {
		t.Fatalf("dpkg-deb --fsys-tarfile %s: %v", deb, err)
	}
	hdrs, data := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(raw))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		name := "/" + strings.TrimPrefix(strings.TrimPrefix(h.Name, "."), "/")
		hdrs[name] = h
		if h.Typeflag == tar.TypeReg {
			data[name], _ = io.ReadAll(tr)
		}
	}
	return hdrs, data
}

func TestDebContents(t *testing.T) {
	testenv.RequireTool(t, "dpkg-deb", "apt-get install -y dpkg")
	wantFiles := map[string]os.FileMode{
		"/usr/bin/redash-agent":                           0o755,
		"/lib/systemd/system/redash-agent.service":        0o644,
		"/etc/redash-agent/config.yaml":                   0o640,
		"/usr/lib/tmpfiles.d/redash-agent.conf":           0o644,
		"/usr/share/man/man8/redash-agent.8.gz":           0o644,
		"/usr/share/doc/redash-agent/copyright":           0o644,
		"/usr/share/doc/redash-agent/changelog.Debian.gz": 0o644,
		"/usr/share/doc/redash-agent/README":              0o644,
		"/usr/share/lintian/overrides/redash-agent":       0o644,
	}
	sameAsRepo := map[string]string{
		"/lib/systemd/system/redash-agent.service": "redash-agent.service",
		"/etc/redash-agent/config.yaml":            "config.yaml",
		"/usr/lib/tmpfiles.d/redash-agent.conf":    "tmpfiles.conf",
	}
	machine := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

	for arch, deb := range debs(t) {
		t.Run(arch, func(t *testing.T) {
			hdrs, data := debFiles(t, deb)
			var regular []string
			for name, h := range hdrs {
				if h.Typeflag != tar.TypeReg {
					continue
				}
				regular = append(regular, name)
				want, ok := wantFiles[name]
				if !ok {
					t.Errorf("unexpected file %s in the package", name)
					continue
				}
				if got := os.FileMode(h.Mode).Perm(); got != want {
					t.Errorf("%s has mode %04o, want %04o", name, got, want)
				}
				if h.Uid != 0 || h.Gid != 0 {
					t.Errorf("%s is owned by %d:%d, want root", name, h.Uid, h.Gid)
				}
			}
			sort.Strings(regular)
			for name := range wantFiles {
				if _, ok := hdrs[name]; !ok {
					t.Errorf("%s is missing; the package has %v", name, regular)
				}
			}
			for inDeb, src := range sameAsRepo {
				if string(data[inDeb]) != readFile(t, src) {
					t.Errorf("%s in the package differs from packaging/%s", inDeb, src)
				}
			}
			// The right binary in the right package, and static.
			f, err := elf.NewFile(bytes.NewReader(data["/usr/bin/redash-agent"]))
			if err != nil {
				t.Fatalf("/usr/bin/redash-agent is not ELF: %v", err)
			}
			if f.Machine != machine[arch] {
				t.Errorf("/usr/bin/redash-agent is for %v, want %v", f.Machine, machine[arch])
			}
			if libs, _ := f.ImportedLibraries(); len(libs) != 0 {
				t.Errorf("/usr/bin/redash-agent links %v; want a static CGO_ENABLED=0 binary", libs)
			}
		})
	}
}

func TestDebControl(t *testing.T) {
	testenv.RequireTool(t, "dpkg-deb", "apt-get install -y dpkg")
	for arch, deb := range debs(t) {
		t.Run(arch, func(t *testing.T) {
			fields := map[string]string{}
			for _, f := range []string{"Package", "Version", "Architecture", "Depends", "Section", "Maintainer"} {
				fields[f] = strings.TrimSpace(run(t, time.Minute, "", "dpkg-deb", "--field", deb, f))
			}
			want := map[string]string{
				"Package":      "redash-agent",
				"Version":      testVersion + "-1",
				"Architecture": arch,
				"Depends":      "docker.io | docker-ce | moby-engine | docker-engine",
				"Section":      "admin",
			}
			for k, v := range want {
				if fields[k] != v {
					t.Errorf("%s: %q, want %q", k, fields[k], v)
				}
			}
			if !regexp.MustCompile(`<[^@>]+@[^>]+>$`).MatchString(fields["Maintainer"]) {
				t.Errorf("Maintainer %q has no e-mail address", fields["Maintainer"])
			}
			conffiles := strings.TrimSpace(run(t, time.Minute, "", "dpkg-deb", "--info", deb, "conffiles"))
			if conffiles != "/etc/redash-agent/config.yaml" {
				t.Errorf("conffiles = %q, want exactly /etc/redash-agent/config.yaml", conffiles)
			}
			for _, s := range []string{"postinst", "prerm", "postrm"} {
				got := run(t, time.Minute, "", "dpkg-deb", "--info", deb, s)
				if got != readFile(t, filepath.Join("scripts", s)) {
					t.Errorf("the package's %s differs from packaging/scripts/%s", s, s)
				}
			}
		})
	}
}

// TestLintian: no errors or warnings; every override in lintian-overrides
// carries its reason. Info and pedantic tags are printed but do not fail:
// spelling-error-in-binary, for one, flags whatever words the linker happens
// to place side by side in the Go string table, and changes with every build.
func TestLintian(t *testing.T) {
	lintian := testenv.RequireTool(t, "lintian", "apt-get install -y lintian")
	for arch, deb := range debs(t) {
		t.Run(arch, func(t *testing.T) {
			out, err := runErr(5*time.Minute, "", nil, lintian, "--fail-on", "error,warning", "--pedantic", "--display-info", deb)
			var findings []string
			for _, l := range strings.Split(out, "\n") {
				if regexp.MustCompile(`^[EW]: `).MatchString(l) {
					findings = append(findings, l)
				}
			}
			if err != nil || len(findings) > 0 {
				t.Errorf("lintian (%v):\n%s", err, out)
			} else if strings.TrimSpace(out) != "" {
				t.Logf("lintian info/pedantic tags (not failures):\n%s", out)
			}
		})
	}
}

// debianRoot returns a cached `debootstrap --variant=minbase bookworm` root,
// building it once per machine under a lock.
func debianRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "root", "run as root (chroot and dpkg need it): sudo go test ./packaging/ -run Install")
	}
	cache := "/var/cache/redash-agent-test"
	if x := os.Getenv("XDG_CACHE_HOME"); x != "" {
		cache = filepath.Join(x, "redash-agent-test")
	}
	root := filepath.Join(cache, "bookworm-minbase-amd64")
	ready := func() bool { _, err := os.Stat(filepath.Join(root, "var/lib/dpkg/status")); return err == nil }
	if ready() {
		return root
	}
	debootstrap := testenv.RequireTool(t, "debootstrap", "apt-get install -y debootstrap")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(cache, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	// Another test binary may be bootstrapping the same root right now.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if ready() {
		return root
	}
	tmp := root + ".tmp"
	os.RemoveAll(tmp)
	t.Logf("bootstrapping a Debian root into %s (once per machine, a few minutes)", root)
	out, err := runErr(15*time.Minute, "", nil, debootstrap, "--variant=minbase", "--arch=amd64", "bookworm", tmp, "http://deb.debian.org/debian")
	if err != nil {
		os.RemoveAll(tmp)
		testenv.Unavailable(t, "a Debian bookworm root", fmt.Sprintf("debootstrap needs http://deb.debian.org (%v):\n%s", err, tail(out, 10)))
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	return root
}

// fakeDocker builds an empty docker-ce package: the test is about our
// package, and the real daemon is a 100 MB download.
func fakeDocker(t *testing.T, dir string) string {
	t.Helper()
	nfpm := testenv.RequireTool(t, "nfpm", "go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2")
	cfg := filepath.Join(dir, "docker-ce.yaml")
	if err := os.WriteFile(cfg, []byte(`name: docker-ce
arch: all
version: 0.0.0~test
maintainer: test <test@example.com>
description: empty stand-in for the Docker daemon in packaging tests
`), 0o644); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "docker-ce.deb")
	run(t, time.Minute, dir, nfpm, "package", "--config", cfg, "--packager", "deb", "--target", deb)
	return deb
}

// TestInstallIntoDebianRoot installs the amd64 .deb into a fresh Debian root
// with dpkg, as Image Builder's apt would, and follows the package through
// upgrade, remove and purge. /run/systemd/system exists and systemctl is a
// recorder, so the scripts take their "running under systemd" branches and
// every start or stop they attempt is visible.
func TestInstallIntoDebianRoot(t *testing.T) {
	chroot := testenv.RequireTool(t, "chroot", "apt-get install -y coreutils")
	deb := debs(t)["amd64"]
	cached := debianRoot(t)

	root := filepath.Join(t.TempDir(), "root")
	run(t, 5*time.Minute, "", "cp", "-a", cached, root)
	for src, dst := range map[string]string{deb: "/tmp/redash-agent.deb", fakeDocker(t, t.TempDir()): "/tmp/docker-ce.deb"} {
		run(t, time.Minute, "", "cp", src, filepath.Join(root, dst))
	}
	if err := os.MkdirAll(filepath.Join(root, "run/systemd/system"), 0o755); err != nil {
		t.Fatal(err)
	}
	recorder := "#!/bin/sh\necho \"$*\" >> /var/log/systemctl.calls\n"
	if err := os.WriteFile(filepath.Join(root, "usr/local/sbin/systemctl"), []byte(recorder), 0o755); err != nil {
		t.Fatal(err)
	}
	in := func(args ...string) string {
		t.Helper()
		return run(t, 5*time.Minute, "", chroot, append([]string{root}, args...)...)
	}
	calls := func() []string {
		b, _ := os.ReadFile(filepath.Join(root, "var/log/systemctl.calls"))
		os.Remove(filepath.Join(root, "var/log/systemctl.calls"))
		return strings.Fields(strings.ReplaceAll(string(b), "\n", " | "))
	}
	starts := func(c []string) bool {
		for _, w := range c {
			if w == "start" || w == "restart" || w == "reload-or-restart" {
				return true
			}
		}
		return false
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants/redash-agent.service")

	// Fresh install: files in place, enabled, not started.
	in("dpkg", "-i", "/tmp/docker-ce.deb", "/tmp/redash-agent.deb")
	if st := in("dpkg-query", "-W", "-f=${Status}", "redash-agent"); st != "install ok installed" {
		t.Fatalf("dpkg status %q, want install ok installed", st)
	}
	for p, mode := range map[string]os.FileMode{
		"usr/bin/redash-agent": 0o755, "lib/systemd/system/redash-agent.service": 0o644,
		"etc/redash-agent/config.yaml": 0o640, "usr/share/doc/redash-agent/copyright": 0o644,
	} {
		st, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Errorf("/%s not installed: %v", p, err)
		} else if st.Mode().Perm() != mode {
			t.Errorf("/%s has mode %04o, want %04o", p, st.Mode().Perm(), mode)
		}
	}
	if target, err := os.Readlink(wants); err != nil || target != "/lib/systemd/system/redash-agent.service" {
		t.Errorf("unit not enabled: %s -> %q (%v)", wants, target, err)
	}
	if c := calls(); starts(c) {
		t.Errorf("a fresh install must not start the agent (it would converge inside the AMI build); systemctl calls: %v", c)
	}
	if out := in("/usr/bin/redash-agent", "version"); !strings.Contains(out, testVersion) {
		t.Errorf("redash-agent version printed %q, want it to contain %s", out, testVersion)
	}
	if out, _ := exec.Command("pgrep", "-f", root+"/usr/bin/redash-agent").Output(); len(out) > 0 {
		t.Errorf("a redash-agent process from the test root is running: %s", out)
	}

	// Upgrade (same version again: dpkg passes the old version as $2). The
	// only allowed action is try-restart, a no-op unless the agent runs.
	if err := os.WriteFile(filepath.Join(root, "etc/redash-agent/config.yaml"), []byte("role: web\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	in("dpkg", "--force-confold", "-i", "/tmp/redash-agent.deb")
	c := calls()
	if starts(c) || !strings.Contains(strings.Join(c, " "), "try-restart redash-agent.service") {
		t.Errorf("upgrade: want try-restart and no start; systemctl calls: %v", c)
	}
	if got := readFile(t, filepath.Join(root, "etc/redash-agent/config.yaml")); got != "role: web\n" {
		t.Errorf("upgrade replaced the admin's config.yaml: %q", got)
	}

	// Remove: stops the agent (not Redash), masks the unit, keeps the conffile.
	if err := os.MkdirAll(filepath.Join(root, "var/lib/redash-agent"), 0o700); err != nil {
		t.Fatal(err)
	}
	in("dpkg", "-r", "redash-agent")
	if c := calls(); !strings.Contains(strings.Join(c, " "), "stop redash-agent.service") {
		t.Errorf("remove: want the agent stopped; systemctl calls: %v", c)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/redash-agent/config.yaml")); err != nil {
		t.Errorf("remove deleted the conffile: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(root, "usr/bin/redash-agent")); err == nil {
		t.Error("remove left /usr/bin/redash-agent")
	}

	// Purge: conffile, enablement and state are gone.
	in("dpkg", "--purge", "redash-agent")
	for _, p := range []string{"etc/redash-agent/config.yaml", "var/lib/redash-agent", wants[len(root)+1:], "etc/systemd/system/redash-agent.service"} {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("purge left /%s", p)
		}
	}
}
