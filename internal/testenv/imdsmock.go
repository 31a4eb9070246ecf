package testenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// What the IMDS mock serves besides the tags, so tests can assert on it.
const (
	IMDSMockInstanceID = "i-0123456789abcdef0"
	IMDSMockRegion     = "us-east-1"
	IMDSMockRole       = "redash-agent-test"
	// IMDSMockAccessKeyID is the access key the SDK's credential chain gets
	// from the mock's instance profile; moto accepts any key.
	IMDSMockAccessKeyID = "AKIAIMDSMOCK00000001"
)

// IMDSMock is a running ec2-metadata-mock in IMDSv2-only mode.
type IMDSMock struct {
	Endpoint string // http://127.0.0.1:PORT; set AWS_EC2_METADATA_SERVICE_ENDPOINT to it
	Log      string // path of the mock's own log, for failure messages
}

// StartIMDSMock starts ec2-metadata-mock with -I (IMDSv2 only) on a free
// loopback port, serving the given instance tags, IMDSMockInstanceID,
// IMDSMockRegion and instance-profile credentials (role IMDSMockRole) that
// expire in 6 hours. It is stopped on t.Cleanup.
//
// The mock has exactly two configurable tag slots (its "Name" and "Test"
// paths, re-pointed at our keys), so at most two tags are possible; with
// none, the tag listing answers 404 like an instance without metadata tags.
// The mock's token table is not safe for concurrent use: don't share one
// mock between parallel tests. Its listings are requested once here, so
// several agents of one test may list them at once.
func StartIMDSMock(t testing.TB, tags map[string]string) *IMDSMock {
	t.Helper()
	return startIMDSMock(t, tags, "-I")
}

// StartIMDSMockASG is StartIMDSMock in the mock's asglifecycle mode: it also
// serves autoscaling/target-lifecycle-state, "InService" until
// terminateAfter has passed since its start and "Terminated" after. (Its
// --asg-termination-trigger-time flag does not parse in v1.13.0, and a
// watched config file does not move the time, so the delay is all there
// is.) imdsV2Only false also answers token-less GETs, for a test's proxy.
func StartIMDSMockASG(t testing.TB, tags map[string]string, terminateAfter time.Duration, imdsV2Only bool) *IMDSMock {
	t.Helper()
	args := []string{"asglifecycle", "--asg-termination-delay-sec", strconv.Itoa(int(terminateAfter.Seconds()))}
	if imdsV2Only {
		args = append(args, "-I")
	}
	return startIMDSMock(t, tags, args...)
}

func startIMDSMock(t testing.TB, tags map[string]string, args ...string) *IMDSMock {
	t.Helper()
	bin := RequireTool(t, "ec2-metadata-mock",
		"go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0")
	cfg, err := imdsMockConfig(tags, time.Now().Add(6*time.Hour))
	if err != nil {
		t.Fatalf("configuring ec2-metadata-mock: %v", err)
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "aemm-config.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatalf("writing the ec2-metadata-mock config: %v", err)
	}
	// FreePort can race with another process grabbing the port; the mock
	// then exits at once, and a new port is tried.
	var lastErr error
	for try := 1; try <= 3; try++ {
		m, err := startIMDSMockOnce(t, bin, cfgPath, dir, FreePort(t), try, args)
		if err == nil {
			return m
		}
		lastErr = err
	}
	t.Fatalf("starting ec2-metadata-mock: %v", lastErr)
	return nil
}

func startIMDSMockOnce(t testing.TB, bin, cfgPath, dir string, port, try int, args []string) (*IMDSMock, error) {
	logPath := filepath.Join(dir, fmt.Sprintf("ec2-metadata-mock.%d.log", try))
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child keeps its own descriptor
	cmd := exec.Command(bin, append(args, "-c", cfgPath, "-n", "127.0.0.1", "-p", strconv.Itoa(port))...)
	cmd.Dir = dir
	// A private HOME keeps a developer's ~/aemm-config.json out of the test.
	cmd.Env = append(os.Environ(), "HOME="+dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Kill()
		<-exited
	}

	m := &IMDSMock{Endpoint: "http://127.0.0.1:" + strconv.Itoa(port), Log: logPath}
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("ec2-metadata-mock exited before answering on port %d: %s", port, imdsMockLogTail(logPath))
		default:
		}
		if imdsMockAnswers(hc, m.Endpoint) {
			t.Cleanup(stop)
			primeIMDSMockListings(hc, m.Endpoint)
			return m, nil
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("ec2-metadata-mock did not answer on %s within 15s: %s", m.Endpoint, imdsMockLogTail(logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// imdsMockAnswers reports whether the mock issues an IMDSv2 token, the first
// thing every client does.
func imdsMockAnswers(hc *http.Client, endpoint string) bool {
	req, err := http.NewRequest(http.MethodPut, endpoint+"/latest/api/token", nil)
	if err != nil {
		return false
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// imdsMockListings are the listing paths the agent reads: its tags, and the
// role the SDK's credential chain looks up.
var imdsMockListings = []string{"tags/instance", "iam/security-credentials", "iam/security-credentials/"}

// primeIMDSMockListings asks for each listing once, before any test does.
// ec2-metadata-mock v1.13.0 builds a listing on its first request and stores
// it in a map without a lock (handlers.CatchAllHandler): several agents
// listing at once could crash the mock in a data race of its own. After one
// request per path the listings are only read. A failure here is left for
// the test's own requests to report.
func primeIMDSMockListings(hc *http.Client, endpoint string) {
	req, err := http.NewRequest(http.MethodPut, endpoint+"/latest/api/token", nil)
	if err != nil {
		return
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := hc.Do(req)
	if err != nil {
		return
	}
	token, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, path := range imdsMockListings {
		req, err := http.NewRequest(http.MethodGet, endpoint+"/latest/meta-data/"+path, nil)
		if err != nil {
			continue
		}
		req.Header.Set("X-aws-ec2-metadata-token", string(token))
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}

// imdsMockConfig renders the mock's -c JSON. The mock merges it over its
// built-in defaults; an empty path disables a tag slot.
func imdsMockConfig(tags map[string]string, expiration time.Time) ([]byte, error) {
	if len(tags) > 2 {
		return nil, fmt.Errorf("ec2-metadata-mock serves at most 2 instance tags, got %d", len(tags))
	}
	keys := make([]string, 0, len(tags))
	for k := range tags {
		// The key becomes a literal route path in the mock.
		if k == "" || strings.ContainsAny(k, "/{}? \t\n") {
			return nil, fmt.Errorf("tag key %q cannot be served by ec2-metadata-mock", k)
		}
		keys = append(keys, k)
	}
	sort.Strings(keys)
	paths := map[string]any{
		"tags-instance-name":       "",
		"tags-instance-test":       "",
		"iam-security-credentials": "/latest/meta-data/iam/security-credentials/" + IMDSMockRole,
	}
	values := map[string]any{
		"instance-id":                   IMDSMockInstanceID,
		"placement-region":              IMDSMockRegion,
		"placement-availability-zone":   IMDSMockRegion + "a",
		"iam-security-credentials-role": IMDSMockRole,
		"iam-info": map[string]any{
			"Code":               "Success",
			"LastUpdated":        expiration.Add(-6 * time.Hour).UTC().Format(time.RFC3339),
			"InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/" + IMDSMockRole,
			"InstanceProfileId":  "AIPAIMDSMOCK00000001",
		},
		"iam-security-credentials": map[string]any{
			"Code":            "Success",
			"LastUpdated":     expiration.Add(-6 * time.Hour).UTC().Format(time.RFC3339),
			"Type":            "AWS-HMAC",
			"AccessKeyId":     IMDSMockAccessKeyID,
			"SecretAccessKey": "imds-mock-secret-access-key",
			"Token":           "imds-mock-session-token",
			// The mock's default expired in 2020; the SDK refuses expired
			// credentials, so the e2e test needs a future one.
			"Expiration": expiration.UTC().Format(time.RFC3339),
		},
	}
	for i, k := range keys {
		slot := [...]string{"tags-instance-name", "tags-instance-test"}[i]
		paths[slot] = "/latest/meta-data/tags/instance/" + k
		values[slot] = tags[k]
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	err := enc.Encode(map[string]any{"metadata": map[string]any{"paths": paths, "values": values}})
	return b.Bytes(), err
}

// imdsMockLogTail returns the end of a log file for a failure message.
func imdsMockLogTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
