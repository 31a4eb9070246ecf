package packaging

// boot_test.go boots the .deb under a real systemd as PID 1: a container made
// from the cached debootstrapped bookworm root with systemd installed, the
// host's Docker socket bind-mounted in, a stand-in docker.service (oneshot,
// since the real daemon is the host's) and `provider: local` with the
// FROM-scratch stand-in images. It is the test that catches what
// `systemd-analyze verify` cannot: a namespace that fails at start, an
// ordering that never starts the unit, a hardening line that breaks a call.

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// systemdImageTag names the cached image; bump the suffix when
// buildSystemdImage changes what goes into it.
const systemdImageTag = "redash-agent-test/bookworm-systemd:2"

// masked are units that would touch the shared host (sysctls, binfmt, kernel
// modules) or make no sense in a container (consoles, logins, networking:
// the container uses the host's network).
var masked = []string{
	"systemd-sysctl.service", "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
	"systemd-modules-load.service", "getty@.service", "console-getty.service", "getty.target",
	"systemd-logind.service", "systemd-networkd.service", "systemd-networkd.socket",
	"systemd-remount-fs.service", "systemd-firstboot.service",
}

// standInDocker is docker.service for the booted root: the daemon the agent
// talks to is the host's, reached through the bind-mounted socket, so
// "starting Docker" is a oneshot that stays active, which is what the
// agent's Requires=/WantedBy= see of the real unit.
const standInDocker = `[Unit]
Description=stand-in for the Docker daemon (the host's, via /run/docker.sock)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target
`

// buildSystemdImage returns the tag of a local image holding the cached
// bookworm root plus systemd, the stand-in docker.service and the masks.
// Built once per machine (apt needs the Debian mirror, as debootstrap does).
func buildSystemdImage(t *testing.T, docker string) string {
	t.Helper()
	if out, err := runErr(time.Minute, "", nil, docker, "image", "inspect", "--format", "{{.Id}}", systemdImageTag); err == nil {
		t.Logf("using cached image %s (%s)", systemdImageTag, strings.TrimSpace(out))
		return systemdImageTag
	}
	root := debianRoot(t)
	base := systemdImageTag + "-base"
	// docker import reads the root as a tarball; tar from the root keeps
	// owners and modes as debootstrap made them.
	run(t, 10*time.Minute, "", "sh", "-c", fmt.Sprintf("tar -C %q -c . | %q import - %q", root, docker, base))
	defer runErr(time.Minute, "", nil, docker, "image", "rm", base)

	var masks []string
	for _, u := range masked {
		masks = append(masks, "ln -sf /dev/null /etc/systemd/system/"+u)
	}
	script := strings.Join([]string{
		"set -eu",
		"export DEBIAN_FRONTEND=noninteractive",
		"apt-get update -qq",
		"apt-get install -y -qq --no-install-recommends systemd systemd-sysv >/dev/null",
		"apt-get clean",
		"cat > /lib/systemd/system/docker.service <<'EOF'\n" + standInDocker + "EOF",
		"mkdir -p /etc/systemd/system/multi-user.target.wants",
		"ln -sf /lib/systemd/system/docker.service /etc/systemd/system/multi-user.target.wants/docker.service",
		strings.Join(masks, "\n"),
	}, "\n")
	name := fmt.Sprintf("redash-agent-systemd-build-%d", time.Now().UnixNano())
	out, err := runErr(10*time.Minute, "", nil, docker, "run", "--name", name, "--network", "host", base, "sh", "-c", script)
	defer runErr(time.Minute, "", nil, docker, "rm", "-f", name)
	if err != nil {
		testenv.Unavailable(t, "a bookworm root with systemd", fmt.Sprintf("apt-get install systemd needs http://deb.debian.org (%v):\n%s", err, tail(out, 10)))
	}
	run(t, 5*time.Minute, "", docker, "commit", "--change", `CMD ["/sbin/init"]`, name, systemdImageTag)
	return systemdImageTag
}

// dockerSocket is the host socket the booted root gets as /run/docker.sock.
func dockerSocket(t *testing.T) string {
	h := os.Getenv("DOCKER_HOST")
	if h == "" {
		return "/var/run/docker.sock"
	}
	if p, ok := strings.CutPrefix(h, "unix://"); ok {
		return p
	}
	testenv.Unavailable(t, "a Docker socket", fmt.Sprintf("DOCKER_HOST=%s is not unix://: the booted root needs a socket to bind-mount", h))
	return ""
}

// booted is one container running systemd as PID 1 with the package's view
// of an EC2 instance.
type booted struct {
	t       *testing.T
	docker  string
	name    string
	project string
	ports   []int // server, nginx
}

// exec runs a command inside the booted root and returns its output.
func (b *booted) exec(args ...string) (string, error) {
	return runErr(2*time.Minute, "", nil, b.docker, append([]string{"exec", b.name}, args...)...)
}

func (b *booted) must(args ...string) string {
	b.t.Helper()
	out, err := b.exec(args...)
	if err != nil {
		b.t.Fatalf("in the booted root: %s: %v\n%s\n%s", strings.Join(args, " "), err, out, b.journal())
	}
	return out
}

// journal is the unit's journal of this boot, for failure messages.
func (b *booted) journal() string {
	out, _ := b.exec("journalctl", "-u", "redash-agent", "--no-pager", "-o", "short-monotonic", "-n", "60")
	return "redash-agent's journal (last 60 lines):\n" + out
}

// waitBooted waits for systemd to finish starting units. "degraded" is fine
// (some host-facing unit may fail in a container); the unit under test is
// checked on its own.
func (b *booted) waitBooted() {
	b.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, _ := b.exec("systemctl", "is-system-running", "--wait")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			if state == "degraded" {
				failed, _ := b.exec("systemctl", "--failed", "--no-legend", "--plain")
				b.t.Logf("system degraded; failed units:\n%s", failed)
			}
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("systemd did not finish booting in 2m: is-system-running=%q", state)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// unitState is what `systemctl show` says about redash-agent.service.
func (b *booted) unitState() map[string]string {
	out, _ := b.exec("systemctl", "show", "redash-agent.service", "-p", "ActiveState,SubState,StatusText,Result,ExecMainStatus")
	st := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			st[k] = v
		}
	}
	return st
}

// waitAgentReady waits until the unit is active (running): with Type=notify
// that is after READY=1, which the agent sends once /ping answers.
func (b *booted) waitAgentReady(why string) {
	b.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	var st map[string]string
	for time.Now().Before(deadline) {
		st = b.unitState()
		if st["ActiveState"] == "active" && st["SubState"] == "running" {
			b.t.Logf("%s: active (running), STATUS=%q", why, st["StatusText"])
			return
		}
		time.Sleep(time.Second)
	}
	b.t.Fatalf("%s: redash-agent.service not active (running) in 3m: %v\n%s", why, st, b.journal())
}

// waitAgentStopped waits for the unit to leave the active state.
func (b *booted) waitAgentStopped(why string) {
	b.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if st := b.unitState(); st["ActiveState"] == "inactive" {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
	b.t.Fatalf("%s: redash-agent.service still %v after 1m", why, b.unitState())
}

// restart reboots the container: a new /run tmpfs and a fresh systemd, as an
// instance launched from the image would have.
func (b *booted) restart() {
	b.t.Helper()
	run(b.t, 2*time.Minute, "", b.docker, "restart", "-t", "30", b.name)
	b.waitBooted()
}

// containers maps each running Redash container of the project to its ID.
func (b *booted) containers() map[string]string {
	b.t.Helper()
	out := run(b.t, time.Minute, "", b.docker, "ps", "-a", "--filter", "label=com.docker.compose.project="+b.project,
		"--format", `{{.Label "com.docker.compose.service"}} {{.ID}} {{.State}}`)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 3 {
			got[f[0]] = f[1] + " " + f[2]
		}
	}
	return got
}

// servesPing checks the server's /ping and nginx in front of it from the
// host's network, as the ALB would.
func (b *booted) servesPing(why string) {
	b.t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	for _, port := range b.ports {
		url := fmt.Sprintf("http://127.0.0.1:%d/ping", port)
		var body string
		var err error
		for i := 0; i < 20; i++ {
			var resp *http.Response
			if resp, err = hc.Get(url); err == nil {
				raw, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(raw)
				if resp.StatusCode == 200 && strings.Contains(body, "PONG") {
					break
				}
				err = fmt.Errorf("status %d body %q", resp.StatusCode, body)
			}
			time.Sleep(250 * time.Millisecond)
		}
		if err != nil {
			b.t.Fatalf("%s: GET %s: %v\ncontainers: %v\n%s", why, url, err, b.containers(), b.journal())
		}
	}
}

// checkJournalClean fails on any sign that the sandbox refused the agent
// something it needs.
func (b *booted) checkJournalClean(why string) {
	b.t.Helper()
	out := b.must("journalctl", "-u", "redash-agent", "--no-pager", "-o", "cat")
	bad := regexp.MustCompile(`(?i)EPERM|EACCES|EROFS|SIGSYS|operation not permitted|permission denied|read-only file system|bad system call|status=226|NAMESPACE`)
	for _, l := range strings.Split(out, "\n") {
		if bad.MatchString(l) {
			b.t.Errorf("%s: the unit's journal shows the sandbox refusing something: %q", why, l)
		}
	}
}

// TestBootUnderSystemd installs the .deb into a booted bookworm root and
// follows an instance's life: first boot, stop of the agent, an AMI baked by
// prepare-image and booted, a Docker stop/start as a package upgrade does it,
// and a missing /opt/redash.
func TestBootUnderSystemd(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Unavailable(t, "root", "run as root (debootstrap and the booted container need it): sudo go test ./packaging/ -run Boot")
	}
	docker := testenv.RequireTool(t, "docker", "install the Docker CLI (docker.io)")
	testenv.DockerClient(t) // fails on CI, skips on a laptop, when the daemon does not answer
	socket := dockerSocket(t)
	deb := debs(t)["amd64"]
	image := buildSystemdImage(t, docker)

	// Stand-in images, FROM scratch: nothing is pulled.
	const tag = "boot"
	redash := "redash-agent-test/redash:" + tag
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: redash, Env: map[string]string{"FAKEREDASH_HEAD": "rev1"}})
	nginx := "redash-agent-test/nginx:" + tag
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: nginx, Cmd: []string{"nginx"}})
	// The bundled postgres and redis are real ones (the host's, FROM
	// scratch): up migrates the bundled database, and READY waits for the
	// workers to register their queues in redis.
	postgres := testenv.PostgresImage(t)
	redis := testenv.RedisImage(t)

	b := &booted{
		t:       t,
		docker:  docker,
		name:    fmt.Sprintf("redash-agent-boot-%d", time.Now().UnixNano()%1_000_000_000),
		project: fmt.Sprintf("raboot%d", time.Now().UnixNano()%1_000_000_000),
		ports:   []int{testenv.FreePort(t), testenv.FreePort(t)},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(b.journal())
		}
		runErr(time.Minute, "", nil, docker, "rm", "-f", "-v", b.name)
		ids, _ := runErr(time.Minute, "", nil, docker, "ps", "-aq", "--filter", "label=com.docker.compose.project="+b.project)
		if ids := strings.Fields(ids); len(ids) > 0 {
			runErr(time.Minute, "", nil, docker, append([]string{"rm", "-f"}, ids...)...)
		}
		runErr(time.Minute, "", nil, docker, "network", "rm", b.project+"_default")
		runErr(time.Minute, "", nil, docker, "volume", "rm", b.project+"_postgres-data")
	})

	// What worked on this kind of machine without --privileged (which would
	// let systemd write the shared host's sysctls): SYS_ADMIN for its mounts
	// and namespaces, no seccomp filter (systemd installs its own), the
	// host's cgroups read-only, a fresh /run per boot.
	run(t, 2*time.Minute, "", docker, "run", "-d", "--name", b.name,
		// systemd halts on SIGRTMIN+3; SIGTERM would only re-exec it.
		"--stop-signal", "SIGRTMIN+3",
		"--network", "host", "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
		"--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
		"--tmpfs", "/run", "--tmpfs", "/run/lock", "-e", "container=docker",
		"-v", socket+":/run/docker.sock", image)
	b.waitBooted()

	// Install as Image Builder's apt does: with systemd running, so the
	// maintainer scripts take their systemd branches.
	run(t, time.Minute, "", docker, "cp", deb, b.name+":/tmp/redash-agent.deb")
	run(t, time.Minute, "", docker, "cp", fakeDocker(t, t.TempDir()), b.name+":/tmp/docker-ce.deb")
	b.must("dpkg", "-i", "/tmp/docker-ce.deb", "/tmp/redash-agent.deb")
	if st := b.unitState(); st["ActiveState"] != "inactive" {
		t.Fatalf("a fresh install started the agent (it would converge inside the AMI build): %v", st)
	}
	for _, target := range []string{"multi-user.target", "docker.service"} {
		link := "/etc/systemd/system/" + target + ".wants/redash-agent.service"
		if out, err := b.exec("readlink", link); err != nil || strings.TrimSpace(out) != "/lib/systemd/system/redash-agent.service" {
			t.Errorf("the package did not enable the unit for %s: readlink %s = %q (%v)", target, link, out, err)
		}
	}
	b.must("test", "-d", "/opt/redash")

	config := fmt.Sprintf(`provider: local
project: %s
image: %s
nginx-image: %s
postgres-image: %s
redis-image: %s
server-port: %d
nginx-port: %d
`, b.project, redash, nginx, postgres, redis, b.ports[0], b.ports[1])
	b.must("sh", "-c", "cat > /etc/redash-agent/config.yaml <<'EOF'\n"+config+"EOF")

	// 1. First boot of a fresh install.
	b.restart()
	b.waitAgentReady("first boot")
	b.servesPing("first boot")
	b.checkJournalClean("first boot")
	if st := b.unitState(); st["StatusText"] == "" {
		t.Errorf("first boot: the agent sent no STATUS= text: %v", st)
	}
	// The journal's STEP= field filters one step's lines.
	out := b.must("journalctl", "-u", "redash-agent", "STEP=resolve configuration", "-o", "json", "--no-pager")
	var steps int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("journalctl -o json printed %q: %v", l, err)
		}
		if e["STEP"] != "resolve configuration" {
			t.Errorf("journalctl STEP=resolve configuration gave an entry with STEP=%v", e["STEP"])
		}
		steps++
	}
	if steps < 2 {
		t.Errorf("journalctl -u redash-agent STEP='resolve configuration' gave %d entries, want [started] and [finished]:\n%s", steps, out)
	}

	// 2. Stopping the agent leaves Redash running, the same containers.
	before := b.containers()
	if len(before) < 6 {
		t.Fatalf("first boot: want server, scheduler, workers, nginx, postgres and redis; have %v", before)
	}
	b.must("systemctl", "stop", "redash-agent")
	if after := b.containers(); !maps.Equal(before, after) {
		t.Errorf("systemctl stop redash-agent changed the containers:\nbefore %v\nafter  %v", before, after)
	}
	b.servesPing("after systemctl stop redash-agent")

	// 3. prepare-image, then a boot of the baked image.
	if out := b.must("redash-agent", "prepare-image"); !strings.Contains(out, "kept: /var/lib/redash-agent/heads.json (") {
		t.Errorf("prepare-image did not keep the image's schema revisions:\n%s", out)
	}
	b.must("test", "-d", "/opt/redash") // the unit's ReadWritePaths= needs it at the next boot
	if out, err := b.exec("test", "-e", "/opt/redash/env"); err == nil {
		t.Errorf("prepare-image left /opt/redash/env (secrets) in the image %s", out)
	}
	if c := b.containers(); len(c) != 0 {
		t.Errorf("prepare-image left containers: %v", c)
	}
	bakedBoot := strings.TrimSpace(b.must("date", "+%Y-%m-%d %H:%M:%S"))
	b.restart()
	b.waitAgentReady("boot of the baked image")
	b.servesPing("boot of the baked image")
	b.checkJournalClean("boot of the baked image")
	// The image carried its schema head: this boot migrated (a new bundled
	// database) without a `manage db heads` one-off to learn it.
	if j := b.must("journalctl", "-u", "redash-agent", "--since", bakedBoot, "--no-pager", "-o", "cat"); !strings.Contains(j, "database state") || strings.Contains(j, "learned the image's head revision") {
		t.Errorf("boot of the baked image: want a migrate step that used the baked head, not one that ran `manage db heads`:\n%s", j)
	}

	// 4. A Docker stop/start, as a package upgrade does: the stop takes the
	// agent down (Requires=) and the daemon's containers with it; the start
	// must bring both back without a reboot (WantedBy=docker.service).
	b.must("systemctl", "stop", "docker")
	b.waitAgentStopped("systemctl stop docker")
	ids := run(t, time.Minute, "", docker, "ps", "-q", "--filter", "label=com.docker.compose.project="+b.project)
	run(t, 2*time.Minute, "", docker, append([]string{"stop", "-t", "10"}, strings.Fields(ids)...)...)
	b.must("systemctl", "start", "docker")
	b.waitAgentReady("systemctl start docker")
	b.servesPing("systemctl start docker")
	for svc, st := range b.containers() {
		if !strings.HasSuffix(st, " running") {
			t.Errorf("after systemctl start docker, %s is %s", svc, st)
		}
	}

	// 5. /opt/redash gone (an image baked by an older prepare-image, a
	// careless rm): the unit must still start, not fail at NAMESPACE.
	b.must("systemctl", "stop", "redash-agent")
	b.must("rm", "-rf", "/opt/redash")
	b.must("systemctl", "start", "redash-agent")
	b.waitAgentReady("start with /opt/redash missing")
	b.must("test", "-f", "/opt/redash/env")
	b.checkJournalClean("start with /opt/redash missing")
}
