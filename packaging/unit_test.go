package packaging

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

const unitFile = "redash-agent.service"

// parseUnit returns section -> key -> values in file order (a key may repeat).
func parseUnit(t *testing.T, text string) map[string]map[string][]string {
	t.Helper()
	out := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
			out[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("unit line %q is not key=value inside a section", line)
			}
			out[section][k] = append(out[section][k], v)
		}
	}
	return out
}

func TestUnitDirectives(t *testing.T) {
	u := parseUnit(t, readFile(t, unitFile))
	tests := []struct {
		name, section, key, want string
	}{
		{"notify so READY means Redash is up", "Service", "Type", "notify"},
		{"runs the daemon", "Service", "ExecStart", "/usr/bin/redash-agent run"},
		{"needs docker", "Unit", "Requires", "docker.service"},
		{"after docker", "Unit", "After", "docker.service"},
		{"after the network", "Unit", "After", "network-online.target"},
		{"pulls in the network", "Unit", "Wants", "network-online.target"},
		{"restarts on failure", "Service", "Restart", "on-failure"},
		{"no restart loop on configuration errors", "Service", "RestartPreventExitStatus", "3"},
		{"watchdog", "Service", "WatchdogSec", "2min"},
		{"stopping the agent never reaches Docker's containers", "Service", "KillMode", "mixed"},
		{"state directory", "Service", "StateDirectory", "redash-agent"},
		// "-": a missing /opt/redash must not fail the namespace (226/NAMESPACE).
		{"writes /opt/redash", "Service", "ReadWritePaths", "-/opt/redash"},
		{"recreates /opt/redash outside the sandbox", "Service", "ExecStartPre", "+/bin/systemd-tmpfiles --create redash-agent.conf"},
		{"read-only system", "Service", "ProtectSystem", "strict"},
		{"private files by default", "Service", "UMask", "0077"},
		{"no netlink", "Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
		{"started at boot", "Install", "WantedBy", "multi-user.target"},
		{"started again when Docker starts", "Install", "WantedBy", "docker.service"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := u[tc.section][tc.key]
			// A list-valued key (WantedBy=a b) may name several units.
			var words []string
			for _, v := range got {
				words = append(words, strings.Fields(v)...)
			}
			if !slices.Contains(got, tc.want) && !slices.Contains(words, tc.want) {
				t.Errorf("[%s] %s = %q, want it to include %q", tc.section, tc.key, got, tc.want)
			}
		})
	}

	// Ordering we must never have: after cloud-final would deadlock boot
	// against user data; BindsTo would leave Redash down after a dockerd crash.
	for _, k := range []string{"After", "Requires", "Wants", "BindsTo", "Before"} {
		for _, v := range u["Unit"][k] {
			if strings.Contains(v, "cloud-final") || strings.Contains(v, "cloud-init") {
				t.Errorf("[Unit] %s=%s: the agent must not order itself against cloud-init", k, v)
			}
		}
	}
	if v := u["Unit"]["BindsTo"]; v != nil {
		t.Errorf("[Unit] BindsTo=%v: use Requires= (see the unit's comment)", v)
	}
	if v := u["Unit"]["Before"]; v != nil {
		t.Errorf("[Unit] Before=%v: nothing else starts Redash", v)
	}
	if v := u["Service"]["KillMode"]; slices.Contains(v, "none") {
		t.Error("KillMode=none is deprecated and leaks processes")
	}
}

// unitCopy writes the unit into a temp dir with ExecStart pointing at an
// executable that exists, because verify checks the binary is there.
func unitCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "redash-agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	text := strings.Replace(readFile(t, unitFile), "ExecStart=/usr/bin/redash-agent", "ExecStart="+bin, 1)
	p := filepath.Join(dir, unitFile)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUnitVerifies(t *testing.T) {
	sa := testenv.RequireTool(t, "systemd-analyze", "apt-get install -y systemd")
	out := run(t, time.Minute, "", sa, "verify", unitCopy(t))
	// verify exits 0 on some warnings; any output is a finding to fix.
	if strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify printed findings:\n%s", out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for redash-agent\.service: ([0-9.]+) (\S+)`)

// TestUnitSecurityScore keeps docs/systemd-security.md honest: the score it
// states must be the one systemd-analyze computes now.
func TestUnitSecurityScore(t *testing.T) {
	sa := testenv.RequireTool(t, "systemd-analyze", "apt-get install -y systemd")
	out := run(t, time.Minute, "", sa, "security", "--offline=true", "--threshold=30", unitCopy(t))
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	t.Logf("systemd-analyze security: %s %s", m[1], m[2])
	if m[2] != "OK" {
		t.Errorf("exposure %s is rated %s, want OK (<= 4.9)", m[1], m[2])
	}
	doc := readFile(t, filepath.Join(repoRoot, "docs", "systemd-security.md"))
	if want := "exposure level: " + m[1] + " " + m[2]; !strings.Contains(doc, want) {
		t.Errorf("docs/systemd-security.md does not state %q: update it from `systemd-analyze security --offline=true packaging/redash-agent.service`", want)
	}
}
