package testenv

// dockerd.go starts a private Docker Engine for tests that stop, restart or
// cut the daemon: the machine's daemon is shared by every test and must
// never be stopped or reconfigured. Side effects: a bridge interface the
// test creates and names itself (deleted at the end), a temporary directory
// with the daemon's data root, exec root, pidfile, socket and an empty
// config file (removed at the end), the dockerd process (with the
// containerd it manages under its exec root), and one iptables rule in the
// DOCKER-USER chain that lets its containers reach each other (removed at
// the end; see allowForwarding). Never `--bridge none`: that deletes the
// machine's docker0.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// PrivateDockerd is a dockerd of the test's own.
type PrivateDockerd struct {
	// Host is its DOCKER_HOST value, unix://<dir>/docker.sock.
	Host string
	// Socket is the path of its socket.
	Socket string

	t      testing.TB
	dir    string
	bin    string
	args   []string
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *SyncBuffer
}

const dockerdHint = "run the tests as root on a host with /usr/sbin/dockerd and `ip` (iproute2)"

// StartPrivateDockerd starts a private dockerd and waits until it answers.
// It is stopped, and its bridge and directories removed, when the test
// ends (after the test's own cleanups registered later). It fails under
// CI=true and skips otherwise when it cannot start one.
func StartPrivateDockerd(t testing.TB) *PrivateDockerd {
	t.Helper()
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/dockerd"); serr == nil {
			dockerd = "/usr/sbin/dockerd"
		} else {
			Unavailable(t, "dockerd", dockerdHint)
			return nil
		}
	}
	if os.Geteuid() != 0 {
		Unavailable(t, "a private dockerd (needs root)", dockerdHint)
		return nil
	}
	// A short path: the socket must fit in sun_path's 108 bytes.
	dir, err := os.MkdirTemp("", "pdk")
	if err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%06x", rand.Uint32()&0xffffff)
	bridge := "radk" + id // 10 characters: under IFNAMSIZ
	bridgeNet, pool, ok := freeSubnets()
	if !ok {
		os.RemoveAll(dir)
		Unavailable(t, "a free 192.168.240.0/20 /24 pair for a private dockerd", "free some of 192.168.240.0/20 on this host")
		return nil
	}
	for _, args := range [][]string{
		{"link", "add", bridge, "type", "bridge"},
		{"addr", "add", bridgeNet + ".1/24", "dev", bridge},
		{"link", "set", bridge, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			_ = exec.Command("ip", "link", "del", bridge).Run()
			os.RemoveAll(dir)
			Unavailable(t, "a bridge for a private dockerd", fmt.Sprintf("`ip %s` failed: %v: %s (%s)", strings.Join(args, " "), err, out, dockerdHint))
			return nil
		}
	}
	if err := allowForwarding(t, pool); err != nil {
		_ = exec.Command("ip", "link", "del", bridge).Run()
		os.RemoveAll(dir)
		Unavailable(t, "container-to-container traffic on a private dockerd", err.Error())
		return nil
	}
	cfg := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfg, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := &PrivateDockerd{t: t, dir: dir, Socket: filepath.Join(dir, "docker.sock"), logs: &SyncBuffer{}}
	d.Host = "unix://" + d.Socket
	d.args = []string{
		// Its own config file: the machine's /etc/docker/daemon.json names
		// the machine's data root and storage driver.
		"--config-file", cfg,
		"--data-root", filepath.Join(dir, "data"),
		"--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"),
		"-H", d.Host,
		"--bridge", bridge,
		"--iptables=false", "--ip-masq=false", "--ip6tables=false",
		// The project network comes from this pool, inside the ranges the
		// test PostgreSQL's pg_hba.conf admits (scripts/ci-postgres.sh).
		"--default-address-pool", "base=" + pool + ".0/24,size=24",
		// vfs works on any backing filesystem; the images are tiny.
		"--storage-driver", "vfs",
		// Should it find a system containerd, keep out of its namespaces.
		"--containerd-namespace", "radk" + id,
		"--containerd-plugins-namespace", "radk" + id + "-plugins",
		"--log-level", "warn",
	}
	t.Cleanup(func() {
		d.stop(30 * time.Second)
		_ = exec.Command("ip", "link", "del", bridge).Run()
		// Layers under vfs are plain directories; anything dockerd left
		// mounted under the exec root is unmounted first.
		_ = exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("removing the private dockerd's directory %q: %v", dir, err)
		}
		if t.Failed() {
			t.Logf("private dockerd output:\n%s", d.logs.Bytes())
		}
	})
	d.bin = dockerd
	if err := d.start(); err != nil {
		Unavailable(t, "a private dockerd", fmt.Sprintf("%v; output:\n%s", err, d.logs.Bytes()))
		return nil
	}
	return d
}

// There is deliberately no Restart: dockerd 20.10 started again on a data
// root that holds its default bridge deletes the host's docker0 (seen on
// this machine), which breaks every other test on the shared daemon. A
// daemon outage is a SocketProxy cut instead, which is the same thing to
// the agent: its socket fails, then answers again.

// Client returns a client of this daemon, closed when the test ends.
func (d *PrivateDockerd) Client() *client.Client {
	d.t.Helper()
	c, err := client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { c.Close() })
	return c
}

func (d *PrivateDockerd) start() error {
	cmd := exec.Command(d.bin, d.args...)
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	// Its own process group: a signal to the test's group does not reach it
	// and its containerd twice.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	d.cmd, d.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.exited:
			return fmt.Errorf("dockerd exited during start")
		default:
		}
		if c, err := net.DialTimeout("unix", d.Socket, time.Second); err == nil {
			c.Close()
			cli, err := client.NewClientWithOpts(client.WithHost(d.Host), client.WithAPIVersionNegotiation())
			if err == nil {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, perr := cli.Ping(ctx)
				cancel()
				cli.Close()
				if perr == nil {
					return nil
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.stop(10 * time.Second)
	return fmt.Errorf("dockerd did not answer on %s within 60s", d.Socket)
}

// stop sends SIGTERM and waits up to grace, then SIGKILLs; it reports
// whether the daemon exited within grace.
func (d *PrivateDockerd) stop(grace time.Duration) bool {
	if d.cmd == nil {
		return true
	}
	select {
	case <-d.exited:
		return true
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return true
	case <-time.After(grace):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return false
	}
}

// freeSubnets picks two /24s of 192.168.240.0/20 that no network of the
// host's interfaces overlaps: one for the bridge, one for the daemon's
// address pool.
func freeSubnets() (bridge, pool string, ok bool) {
	var nets []*net.IPNet
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
			nets = append(nets, ipn)
		}
	}
	free := func(prefix string) bool {
		_, c, _ := net.ParseCIDR(prefix + ".0/24")
		for _, n := range nets {
			if n.Contains(c.IP) || c.Contains(n.IP) {
				return false
			}
		}
		return true
	}
	start := rand.IntN(8) * 2
	for k := range 8 {
		b := 240 + (start+2*k)%16
		bn, pn := fmt.Sprintf("192.168.%d", b), fmt.Sprintf("192.168.%d", b+1)
		if free(bn) && free(pn) {
			return bn, pn, true
		}
	}
	return "", "", false
}

// allowForwarding lets containers on the private daemon's project network
// (pool.0/24) reach each other, as on any real host (nginx proxies to the
// server). The machine's dockerd keeps FORWARD's policy at DROP and bridged
// traffic passes FORWARD (br_netfilter); a daemon run with
// --iptables=false adds no rule of its own. The rule goes into DOCKER-USER,
// the chain Docker leaves to users, scoped to this pool, and is deleted
// when the test ends. Without that chain Docker filters nothing here, and
// there is nothing to do.
func allowForwarding(t testing.TB, pool string) error {
	if exec.Command("iptables", "-S", "DOCKER-USER").Run() != nil {
		return nil
	}
	rule := []string{"DOCKER-USER", "-s", pool + ".0/24", "-d", pool + ".0/24", "-j", "ACCEPT"}
	if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("`iptables -I %s` failed: %v: %s", strings.Join(rule, " "), err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("iptables", append([]string{"-D"}, rule...)...).CombinedOutput(); err != nil {
			t.Logf("removing the private dockerd's forwarding rule: %v: %s", err, out)
		}
	})
	return nil
}
