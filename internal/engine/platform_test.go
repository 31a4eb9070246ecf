package engine

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestHostPlatform(t *testing.T) {
	for machine, want := range map[string]string{"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm", "s390x": "linux/s390x"} {
		if got := HostPlatform("linux", machine).String(); got != want {
			t.Errorf("HostPlatform(linux, %s) = %s, want %s", machine, got, want)
		}
	}
}

func TestCheckPlatform(t *testing.T) {
	amd64, arm64 := Platform{"linux", "amd64"}, Platform{"linux", "arm64"}
	v10, v25 := compose.Family{Major: 10, Minor: 1}, compose.Family{Major: 25, Minor: 8}
	tests := []struct {
		name      string
		img, host Platform
		redash    bool
		f         compose.Family
		want      []string // substrings of the error; none: no error
	}{
		{"same platform", amd64, amd64, true, v10, nil},
		{"image without a platform passes", Platform{}, arm64, true, v10, nil},
		{"10.1 on an arm64 host: amd64 only", amd64, arm64, true, v10,
			[]string{`image "ref" is linux/amd64 but this host is linux/arm64`, "Redash images up to 10.1 are amd64 only (this is 10.x): use 25.x or later (redash:version), or an x86_64 instance type"}},
		{"25.x image of the wrong platform: another tag", amd64, arm64, true, v25,
			[]string{"name an image built for linux/arm64 (a multi-arch tag) in redash:version or image, or use an instance type whose architecture is amd64"}},
		{"arm64 10.1 build on an x86_64 host: generic", arm64, amd64, true, v10,
			[]string{`is linux/arm64 but this host is linux/amd64`, "name an image built for linux/amd64"}},
		{"nginx image", amd64, arm64, false, v10, []string{"nginx-image"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckPlatform("ref", tt.img, tt.host, tt.redash, tt.f)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error, want a refusal")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if exitcode.Of(err) != exitcode.Config {
				t.Errorf("exit status %d, want %d", exitcode.Of(err), exitcode.Config)
			}
		})
	}
}

func TestCheckIPv6(t *testing.T) {
	dir := t.TempDir()
	withIPv6 := HostProbe{IfInet6: filepath.Join(dir, "if_inet6")}
	if err := os.WriteFile(withIPv6.IfInet6, nil, 0o444); err != nil { // empty, as in a container
		t.Fatal(err)
	}
	noIPv6 := HostProbe{IfInet6: filepath.Join(dir, "missing")}
	v26, v25 := compose.Family{Major: 26, Minor: 3}, compose.Family{Major: 25, Minor: 8}

	if err := CheckIPv6(v26, withIPv6); err != nil {
		t.Errorf("26.3 with IPv6: %v", err)
	}
	if err := CheckIPv6(v25, noIPv6); err != nil {
		t.Errorf("25.8 binds 0.0.0.0, needs no IPv6: %v", err)
	}
	err := CheckIPv6(v26, noIPv6)
	if err == nil {
		t.Fatal("26.3 on a kernel without IPv6 passed")
	}
	for _, w := range []string{"binds [::]:5000", noIPv6.IfInet6 + " does not exist", "enable IPv6 in the kernel", "run a 25.x release"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %q", err, w)
		}
	}
	if exitcode.Of(err) != exitcode.Config {
		t.Errorf("exit status %d, want %d", exitcode.Of(err), exitcode.Config)
	}
}

// TestCheckHostRefusesAForeignImage: a real arm64 image (loaded, not
// pulled) on this daemon is refused, naming both platforms; the native
// images pass.
func TestCheckHostRefusesAForeignImage(t *testing.T) {
	s := newStack(t)
	info, err := s.cli.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	host := HostPlatform(info.OSType, info.Architecture)
	foreignArch := "arm64"
	if host.Arch == "arm64" {
		foreignArch = "amd64"
	}
	const foreign = "redash-agent-test/engine-redash:foreign"
	testenv.ForeignImage(t, foreign, foreignArch)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rel := Release{Image: imageV1, Family: compose.Family{Major: 10, Minor: 1}}

	if err := s.e.CheckHost(ctx, s.d, rel, DefaultHostProbe); err != nil {
		t.Fatalf("native images refused: %v", err)
	}
	// 26.3 on a kernel without IPv6 is refused where the server runs.
	noIPv6 := HostProbe{IfInet6: filepath.Join(t.TempDir(), "if_inet6")}
	v26 := Release{Image: imageV1, Family: compose.Family{Major: 26, Minor: 3}}
	if err := s.e.CheckHost(ctx, s.d, v26, noIPv6); err == nil || !strings.Contains(err.Error(), "binds [::]:5000") || exitcode.Of(err) != exitcode.Config {
		t.Errorf("26.3 without IPv6: %v (exit %d), want the [::]:5000 refusal and exit 3", err, exitcode.Of(err))
	}
	workerOnly := Desired{Project: stackProject(s.d.Project.Name, imageV1, 0, 0), Env: s.d.Env, HashKey: s.d.HashKey}
	delete(workerOnly.Project.Services, compose.ServerService)
	delete(workerOnly.Project.Services, compose.NginxService)
	if err := s.e.CheckHost(ctx, workerOnly, v26, noIPv6); err != nil {
		t.Errorf("26.3 without IPv6 on a worker-only host (no server to bind [::]): %v", err)
	}
	for _, name := range []string{"server", "worker"} {
		svc := s.d.Project.Services[name]
		svc.Image = foreign
		s.d.Project.Services[name] = svc
	}
	rel.Image = foreign
	err = s.e.CheckHost(ctx, s.d, rel, DefaultHostProbe)
	if err == nil {
		t.Fatal("an image of another architecture passed")
	}
	want := `image "` + foreign + `" is linux/` + foreignArch + " but this host is " + host.String()
	if !strings.Contains(err.Error(), want) || exitcode.Of(err) != exitcode.Config {
		t.Fatalf("error %q (exit %d), want %q and exit 3", err, exitcode.Of(err), want)
	}
	if hes := HostErrors(err); len(hes) != 1 {
		t.Errorf("HostErrors found %d problems, want 1 (one image): %v", len(hes), err)
	}
	var he *HostError
	if !errors.As(err, &he) {
		t.Errorf("error is not a *HostError")
	}
}
