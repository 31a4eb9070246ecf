package imds

// These tests run against the real peer, ec2-metadata-mock in IMDSv2-only
// mode, started by testenv.StartIMDSMock.

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

func TestInstanceAgainstMock(t *testing.T) {
	tests := []struct {
		name string
		tags map[string]string
	}{
		{"two redash tags", map[string]string{"redash:version": "10.1.0", "redash:role": "worker"}},
		{"reserved characters in the key", map[string]string{"redash:env:REDASH_FEATURE_X": "true", "Name": "redash web"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := testenv.StartIMDSMock(t, tt.tags)
			var logs syncBuffer
			c := New(Options{Endpoint: m.Endpoint, Deadline: 10 * time.Second,
				Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			got, err := c.Instance(context.Background())
			if err != nil {
				t.Fatalf("Instance: %v\nmock log: %s", err, m.Log)
			}
			if got.InstanceID != testenv.IMDSMockInstanceID || got.Region != testenv.IMDSMockRegion || !maps.Equal(got.Tags, tt.tags) {
				t.Errorf("Instance = %+v, want id %s, region %s, tags %v",
					got, testenv.IMDSMockInstanceID, testenv.IMDSMockRegion, tt.tags)
			}
			if logs.String() != "" {
				t.Errorf("a healthy endpoint should need no retries, logged:\n%s", logs.String())
			}
		})
	}
}

// The mock must really be v2-only, or the test above would not prove that
// the client sends tokens.
func TestMockRefusesRequestsWithoutToken(t *testing.T) {
	m := testenv.StartIMDSMock(t, map[string]string{"redash:version": "10.1.0"})
	for _, path := range []string{"/latest/meta-data/instance-id", "/latest/meta-data/tags/instance/redash:version"} {
		resp, err := http.Get(m.Endpoint + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("IMDSv1 GET %s = %d, want 401", path, resp.StatusCode)
		}
	}
}

func TestMockWithoutTagsIsTagsNotEnabled(t *testing.T) {
	m := testenv.StartIMDSMock(t, nil)
	_, err := New(Options{Endpoint: m.Endpoint, Deadline: 700 * time.Millisecond}).Instance(context.Background())
	if err == nil || !errors.Is(err, ErrTagsNotEnabled) {
		t.Fatalf("error = %v, want ErrTagsNotEnabled", err)
	}
}

// The e2e test and the agent get AWS credentials through the SDK's default
// chain, which on EC2 ends at the instance profile served by IMDS. This
// proves the mock's credentials reach the SDK (and are not the mock's
// default ones, which expired in 2020).
func TestSDKCredentialChainReadsMock(t *testing.T) {
	m := testenv.StartIMDSMock(t, map[string]string{"redash:version": "10.1.0"})
	empty := filepath.Join(t.TempDir(), "none")
	for k, v := range map[string]string{
		"AWS_EC2_METADATA_SERVICE_ENDPOINT": m.Endpoint,
		"AWS_EC2_METADATA_DISABLED":         "",
		// Everything earlier in the chain must be empty, or it would win.
		"AWS_ACCESS_KEY_ID":                      "",
		"AWS_SECRET_ACCESS_KEY":                  "",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_PROFILE":                            "",
		"AWS_CONFIG_FILE":                        empty,
		"AWS_SHARED_CREDENTIALS_FILE":            empty,
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_REGION":                             testenv.IMDSMockRegion,
	} {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatalf("loading the SDK config: %v", err)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatalf("retrieving credentials through IMDS: %v\nmock log: %s", err, m.Log)
	}
	if creds.AccessKeyID != testenv.IMDSMockAccessKeyID || creds.SessionToken == "" {
		t.Errorf("credentials from %q with key %q, want key %q from the mock's instance profile",
			creds.Source, creds.AccessKeyID, testenv.IMDSMockAccessKeyID)
	}
	// The SDK caps instance-profile expiry at one hour from now; an expired
	// Expiration in the mock would come back in the past or fail Retrieve.
	if !creds.CanExpire || time.Until(creds.Expires) < 30*time.Minute {
		t.Errorf("credentials expire at %v, want a future expiry", creds.Expires)
	}
	t.Logf("SDK credentials from source %q, key %s, expiring %v", creds.Source, creds.AccessKeyID, creds.Expires.Format(time.RFC3339))
}

// TestInstanceHonoursSDKSettings: the SDK's standard IMDS settings reach the
// client, not only AWS_EC2_METADATA_SERVICE_ENDPOINT: the shared config
// file's endpoint (by profile, below the environment) and
// AWS_EC2_METADATA_DISABLED.
func TestInstanceHonoursSDKSettings(t *testing.T) {
	tags := map[string]string{"redash:version": "10.1.0"}
	m := testenv.StartIMDSMock(t, tags)
	dead := "http://127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)) // nothing listens: refused
	tests := []struct {
		name    string
		env     map[string]string
		config  string // the shared config file; MOCK and DEAD are replaced
		wantErr string // "" = reads the mock
	}{
		{name: "shared config, default profile", config: "[default]\nec2_metadata_service_endpoint = MOCK\n"},
		{name: "shared config, profile from AWS_PROFILE", env: map[string]string{"AWS_PROFILE": "redash"},
			config: "[default]\nec2_metadata_service_endpoint = DEAD\n\n[profile redash]\nec2_metadata_service_endpoint = MOCK\n"},
		{name: "environment wins over shared config", env: map[string]string{EndpointEnv: "MOCK"},
			config: "[default]\nec2_metadata_service_endpoint = DEAD\n"},
		{name: "AWS_EC2_METADATA_DISABLED=false leaves it on", env: map[string]string{EndpointEnv: "MOCK", disabledEnv: "false"}},
		{name: "AWS_EC2_METADATA_DISABLED=true turns it off", env: map[string]string{EndpointEnv: "MOCK", disabledEnv: "TRUE"},
			wantErr: "reading instance metadata: turned off by AWS_EC2_METADATA_DISABLED=true in the environment: unset it"},
	}
	expand := strings.NewReplacer("MOCK", m.Endpoint, "DEAD", dead).Replace
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfgPath := filepath.Join(t.TempDir(), "config")
			if err := os.WriteFile(cfgPath, []byte(expand(tt.config)), 0o600); err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]string{
				"AWS_CONFIG_FILE": cfgPath, "AWS_SHARED_CREDENTIALS_FILE": cfgPath + ".none", "AWS_PROFILE": "",
				EndpointEnv: "", EndpointEnv + "_MODE": "", disabledEnv: "",
			} {
				t.Setenv(k, v)
			}
			for k, v := range tt.env {
				t.Setenv(k, expand(v))
			}
			before := mockRequests(t, m, "/latest/meta-data/instance-id")
			c := New(Options{Deadline: 5 * time.Second})
			got, err := c.Instance(context.Background())
			after := mockRequests(t, m, "/latest/meta-data/instance-id")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				if after != before {
					t.Errorf("the mock got %d instance-id requests while IMDS was turned off", after-before)
				}
				return
			}
			if err != nil {
				t.Fatalf("Instance: %v\nmock log: %s", err, m.Log)
			}
			if got.InstanceID != testenv.IMDSMockInstanceID || !maps.Equal(got.Tags, tags) || after == before {
				t.Errorf("Instance = %+v after %d mock requests, want id %s and tags %v from the mock",
					got, after-before, testenv.IMDSMockInstanceID, tags)
			}
			if c.Endpoint() != m.Endpoint {
				t.Errorf("Endpoint() = %q, want the mock's %q (error messages name it)", c.Endpoint(), m.Endpoint)
			}
		})
	}
}

// mockRequests counts the mock's log lines for requests to path.
func mockRequests(t *testing.T, m *testenv.IMDSMock, path string) int {
	t.Helper()
	b, err := os.ReadFile(m.Log)
	if err != nil {
		t.Fatalf("reading the mock's log: %v", err)
	}
	return strings.Count(string(b), "Received request to mock static metadata: "+path+"\n")
}
