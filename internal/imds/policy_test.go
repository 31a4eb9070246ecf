package imds

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	tests := []struct {
		name     string
		attempt  int
		jitter   float64
		min, max time.Duration
	}{
		{"first retry, no jitter", 1, 0, 50 * time.Millisecond, 50 * time.Millisecond},
		{"first retry, full jitter", 1, 0.999999, 99 * time.Millisecond, 100 * time.Millisecond},
		{"third retry doubles twice", 3, 0, 200 * time.Millisecond, 200 * time.Millisecond},
		{"seventh retry reaches the cap", 7, 0, 2500 * time.Millisecond, 2500 * time.Millisecond},
		{"capped with jitter", 12, 0.5, 3750 * time.Millisecond, 3750 * time.Millisecond},
		{"huge attempt does not overflow", 1000, 0.999999, 4999 * time.Millisecond, 5 * time.Second},
		{"attempt 0 is treated as 1", 0, 0, 50 * time.Millisecond, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := retryPolicy.Delay(tt.attempt, tt.jitter)
			if got < tt.min || got > tt.max {
				t.Errorf("backoff(%d, %v) = %v, want within [%v, %v]", tt.attempt, tt.jitter, got, tt.min, tt.max)
			}
		})
	}
	// Without jitter the delay never shrinks from one attempt to the next.
	prev := time.Duration(0)
	for n := 1; n <= 40; n++ {
		d := retryPolicy.Delay(n, 0)
		if d < prev {
			t.Fatalf("backoff(%d, 0) = %v < backoff(%d, 0) = %v", n, d, n-1, prev)
		}
		prev = d
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		kind   reqKind
		status int
		want   verdict
	}{
		{"token ok", kindToken, 200, ok},
		{"token 401 (IMDS disabled) is final, never v1", kindToken, 401, fail},
		{"token 403 is final", kindToken, 403, fail},
		{"token 404 (v1-only endpoint) is final", kindToken, 404, fail},
		{"token 405 is final", kindToken, 405, fail},
		{"token 400 bad ttl is final", kindToken, 400, fail},
		{"token 503 while IMDS starts is retried", kindToken, 503, retry},
		{"token 429 throttled is retried", kindToken, 429, retry},
		{"meta ok", kindMeta, 200, ok},
		{"meta 401 means the token expired", kindMeta, 401, retoken},
		{"meta 404 is final", kindMeta, 404, fail},
		{"meta 403 is final", kindMeta, 403, fail},
		{"meta 500 is retried", kindMeta, 500, retry},
		{"tag listing 404 is retried (tags appear late)", kindTags, 404, retry},
		{"tag listing 401 re-tokens", kindTags, 401, retoken},
		{"tag value 404 is retried", kindTag, 404, retry},
		{"tag value 400 is final", kindTag, 400, fail},
		{"tag value 502 is retried", kindTag, 502, retry},
		{"redirect is final", kindMeta, http.StatusMovedPermanently, fail},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.kind, tt.status); got != tt.want {
				t.Errorf("classify(%d, %d) = %v, want %v", tt.kind, tt.status, got, tt.want)
			}
		})
	}
}

func TestParseKeys(t *testing.T) {
	tests := []struct {
		name, listing string
		want          []string
	}{
		{"empty", "", nil},
		{"one key no newline", "redash:version", []string{"redash:version"}},
		{"sorted, blank lines and CRLF dropped", "b\r\n\na,c\nredash:env:X=1\n", []string{"a,c", "b", "redash:env:X=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := parseKeys(tt.listing); !slices.Equal(got, tt.want) {
				t.Errorf("parseKeys(%q) = %q, want %q", tt.listing, got, tt.want)
			}
		})
	}
}

func TestResolveEndpoint(t *testing.T) {
	tests := []struct {
		name, option, env, config, want string
	}{
		{"default", "", "", "", DefaultEndpoint},
		{"environment", "", "http://127.0.0.1:1338", "", "http://127.0.0.1:1338"},
		{"option wins over environment", "http://10.0.0.1", "http://127.0.0.1:1338", "", "http://10.0.0.1"},
		{"shared config", "", "", "[default]\nec2_metadata_service_endpoint = http://127.0.0.1:1339\n", "http://127.0.0.1:1339"},
		{"environment wins over shared config", "", "http://127.0.0.1:1338",
			"[default]\nec2_metadata_service_endpoint = http://127.0.0.1:1339\n", "http://127.0.0.1:1338"},
		{"shared config IPv6 mode", "", "", "[default]\nec2_metadata_service_endpoint_mode = IPv6\n", "http://[fd00:ec2::254]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := filepath.Join(t.TempDir(), "config")
			if err := os.WriteFile(cfg, []byte(tt.config), 0o600); err != nil {
				t.Fatal(err)
			}
			t.Setenv("AWS_CONFIG_FILE", cfg)
			t.Setenv("AWS_PROFILE", "")
			t.Setenv(EndpointEnv+"_MODE", "")
			t.Setenv(EndpointEnv, tt.env)
			if got := ResolveEndpoint(tt.option); got != tt.want {
				t.Errorf("ResolveEndpoint(%q) with %s=%q = %q, want %q", tt.option, EndpointEnv, tt.env, got, tt.want)
			}
		})
	}
}
