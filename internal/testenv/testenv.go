// Package testenv starts the real peers the tests run against (ec2-metadata-mock,
// moto_server, PostgreSQL, the Docker Engine and locally built images) and
// skips or fails cleanly when one is missing.
//
// On CI (CI=true) a missing peer fails the test: .ci/run installs and starts
// every peer, so a skip there would hide a broken setup. On a laptop the test
// is skipped with a message naming what to install or start.
package testenv

import (
	"net"
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run under .ci/run, where every peer must exist.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips the test on a laptop and fails it on CI. how says what
// to install or start to enable the test.
func Unavailable(t testing.TB, what, how string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s is not available on CI: %s (.ci/run should have done this)", what, how)
	}
	t.Skipf("%s is not available; to run this test: %s", what, how)
}

// RequireTool returns the path of an executable on PATH (or in $HOME/go/bin),
// or skips/fails the test with the install hint.
func RequireTool(t testing.TB, name, installHint string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if home, err := os.UserHomeDir(); err == nil {
		p := home + "/go/bin/" + name
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	Unavailable(t, name, installHint)
	return ""
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free loopback port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
