package engine

// platform.go: can this host run the project's images at all? Checked after
// the pulls and before the migration and the containers stage, so a host
// that cannot run them refuses with the fix (exit 3) and every container
// keeps running, instead of stopping the stack for containers that die with
// "exec format error" or crash-loop on a bind (issue 9, point 9).

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// Platform is an OS and CPU architecture as images name them
// ("linux", "amd64").
type Platform struct{ OS, Arch string }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// HostPlatform is the platform of a daemon whose Info reports osType and
// the kernel's architecture (uname -m): x86_64 is amd64, aarch64 arm64.
func HostPlatform(osType, machine string) Platform {
	arch := machine
	switch machine {
	case "x86_64":
		arch = "amd64"
	case "aarch64", "arm64":
		arch = "arm64"
	case "i386", "i686":
		arch = "386"
	case "armv7l", "armv6l", "armhf":
		arch = "arm"
	}
	return Platform{OS: osType, Arch: arch}
}

// Release is the Redash release the project runs: its image and family.
type Release struct {
	Image  string
	Family compose.Family
}

// HostProbe is where the host's kernel is read; tests point it elsewhere.
type HostProbe struct {
	// IfInet6 lists the kernel's IPv6 addresses. It is missing exactly when
	// the kernel has no IPv6 (booted with ipv6.disable=1); then
	// socket(AF_INET6) fails in every container. net.ipv6.conf.*.
	// disable_ipv6=1 does not make it disappear, and does not stop a bind
	// of [::] (Docker itself sets it in every container of a network
	// without IPv6, where binding [::] works and takes IPv4).
	IfInet6 string
}

// DefaultHostProbe reads the running kernel.
var DefaultHostProbe = HostProbe{IfInet6: "/proc/net/if_inet6"}

// HostError says why this host cannot run the project as configured, and
// what to change. It is a configuration error: a restart cannot fix it.
type HostError struct {
	Problem string
	Fix     string
}

func (e *HostError) Error() string   { return e.Problem + ": " + e.Fix }
func (e *HostError) ExitStatus() int { return exitcode.Config }

// CheckHost checks that this host can run d's images: each present image's
// platform is the daemon's, and a release whose server binds [::] finds
// IPv6 in the kernel (only where this host runs the server). It only reads.
// Mismatches are joined into one error; an image that is not present is
// left to the pull.
func (e *Engine) CheckHost(ctx context.Context, d Desired, rel Release, probe HostProbe) error {
	if err := validate(d); err != nil {
		return err
	}
	cctx, cancel := e.call(ctx)
	info, err := e.Docker.Info(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("asking the docker engine at %q for its architecture: %w: check that dockerd is running", e.Docker.DaemonHost(), err)
	}
	host := HostPlatform(info.OSType, info.Architecture)

	var refs []string
	for _, svc := range d.Project.Services {
		if svc.Image != "" && !slices.Contains(refs, svc.Image) {
			refs = append(refs, svc.Image)
		}
	}
	slices.Sort(refs)
	var errs []error
	for _, ref := range refs {
		cctx, cancel := e.call(ctx)
		in, err := e.Docker.ImageInspect(cctx, ref)
		cancel()
		if cerrdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("inspecting image %q for its platform: %w: check that dockerd is running", ref, err)
		}
		img := Platform{OS: in.Os, Arch: in.Architecture}
		if herr := CheckPlatform(ref, img, host, ref == rel.Image, rel.Family); herr != nil {
			errs = append(errs, herr)
		}
	}
	if _, runsServer := d.Project.Services[compose.ServerService]; runsServer {
		if herr := CheckIPv6(rel.Family, probe); herr != nil {
			errs = append(errs, herr)
		}
	}
	return errors.Join(errs...)
}

// CheckPlatform compares an image's platform with the host's. redash says
// ref is the Redash image of family f, whose fix names the releases that
// exist for the host. An image that does not say its platform passes.
func CheckPlatform(ref string, img, host Platform, redash bool, f compose.Family) *HostError {
	if img.Arch == "" || img.OS == "" || img == host {
		return nil
	}
	problem := fmt.Sprintf("image %q is %s but this host is %s: its containers would fail with \"exec format error\"", ref, img, host)
	if redash && !f.MultiArch() && host.Arch != "amd64" {
		return &HostError{Problem: problem, Fix: fmt.Sprintf("Redash images up to 10.1 are amd64 only (this is %s): use 25.x or later (redash:version), or an x86_64 instance type", f)}
	}
	setting := "nginx-image, image or redash:version"
	if redash {
		setting = "redash:version or image"
	}
	return &HostError{Problem: problem, Fix: fmt.Sprintf("name an image built for %s (a multi-arch tag) in %s, or use an instance type whose architecture is %s", host, setting, img.Arch)}
}

// CheckIPv6 refuses a release whose server binds [::]:5000 on a kernel
// without IPv6, where gunicorn cannot open the socket and the server would
// crash-loop.
func CheckIPv6(f compose.Family, probe HostProbe) *HostError {
	if !f.BindsIPv6() {
		return nil
	}
	_, err := os.Stat(probe.IfInet6)
	if err == nil {
		return nil
	}
	why := "cannot read " + probe.IfInet6 + ": " + err.Error()
	if errors.Is(err, fs.ErrNotExist) {
		why = probe.IfInet6 + " does not exist: the kernel has no IPv6 (booted with ipv6.disable=1?)"
	}
	return &HostError{
		Problem: fmt.Sprintf("Redash %d.%d's server binds [::]:5000 (gunicorn -b [::]:5000, since 26.02) and this host cannot open an IPv6 socket: %s", f.Major, f.Minor, why),
		Fix:     "enable IPv6 in the kernel (remove ipv6.disable=1 from the kernel command line and reboot; net.ipv6.conf.all.disable_ipv6=1 alone is fine), or run a 25.x release (redash:version)",
	}
}

// HostErrors are the HostErrors in err (one, or a join of them), for a
// report that shows each problem with its fix.
func HostErrors(err error) []*HostError {
	var out []*HostError
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var h *HostError
		if errors.As(err, &h) {
			out = append(out, h)
		}
	}
	walk(err)
	return out
}
