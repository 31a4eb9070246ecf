package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUpOffEC2HintsLocalProviderEarly: on a host without EC2 nothing answers
// at the metadata address. `up` keeps its full IMDS deadline (a slow IMDS at
// boot is normal) but says within seconds that no metadata service answers
// and how to run off EC2.
func TestUpOffEC2HintsLocalProviderEarly(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close() // nothing listens there any more: connection refused

	root := t.TempDir()
	cfg := filepath.Join(root, "config.yaml")
	if err := os.WriteFile(cfg, []byte("version: 25.8.0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(agentBinary(t), "--dir", filepath.Join(root, "redash"), "--state-dir", filepath.Join(root, "state"),
		"--config", cfg, "--imds-deadline", "2m", "up")
	cmd.Env = cleanEnv("AWS_EC2_METADATA_SERVICE_ENDPOINT=" + endpoint)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()

	const within = 5 * time.Second
	deadline := time.After(within)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !strings.Contains(out.String(), "--provider local") {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("up exited (%v) before the deadline of 2m instead of retrying IMDS:\n%s", err, out.String())
		case <-deadline:
			t.Fatalf("no `--provider local` hint within %v of up's start:\n%s", within, out.String())
		case <-tick.C:
		}
	}
	got := out.String()
	for _, want := range []string{"no EC2 instance metadata service answers at " + endpoint, "provider: local", "retrying until the deadline"} {
		if !strings.Contains(got, want) {
			t.Errorf("up's early output lacks %q:\n%s", want, got)
		}
	}
}
