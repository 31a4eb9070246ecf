package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
)

// faultServer speaks the Secrets Manager JSON protocol on loopback and
// answers the n-th GetSecretValue call (from 1) with reply(n): the faults
// moto cannot produce on demand (throttling, 5xx, access denied, KMS
// failures, binary and empty secrets). The real SDK client and retryer run
// against it.
type faultServer struct {
	*httptest.Server
	mu    sync.Mutex
	calls int
}

type reply struct {
	status int
	body   string
}

func ok(value string) reply {
	b, _ := json.Marshal(map[string]any{"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:s-AbCdEf", "Name": "s", "VersionId": "v-1", "SecretString": value})
	return reply{200, string(b)}
}

func awsErr(status int, code, msg string) reply {
	return reply{status, fmt.Sprintf(`{"__type":%q,"message":%q}`, code, msg)}
}

func newFaultServer(t *testing.T, script func(n int) reply) *faultServer {
	fs := &faultServer{}
	fs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Amz-Target") == "secretsmanager.BatchGetSecretValue" {
			// As for a role without secretsmanager:BatchGetSecretValue: the
			// Fetcher falls back to the GetSecretValue calls scripted here.
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(400)
			io.WriteString(w, `{"__type":"AccessDeniedException","message":"not authorized to perform: secretsmanager:BatchGetSecretValue"}`)
			return
		}
		if got := r.Header.Get("X-Amz-Target"); got != "secretsmanager.GetSecretValue" {
			http.Error(w, "unexpected target "+got, http.StatusBadRequest)
			return
		}
		io.Copy(io.Discard, r.Body)
		fs.mu.Lock()
		fs.calls++
		n := fs.calls
		fs.mu.Unlock()
		rep := script(n)
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		w.WriteHeader(rep.status)
		io.WriteString(w, rep.body)
	}))
	t.Cleanup(fs.Close)
	return fs
}

func (fs *faultServer) Calls() int {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.calls
}

func TestFetchFaults(t *testing.T) {
	tests := []struct {
		name      string
		script    func(n int) reply
		wantValue string   // on success
		wantErr   []string // substrings, on failure
		config    bool     // exit status 3 (exitcode.Config)
		calls     int      // exactly, or at least when budget is set
		budget    bool     // ends by running out of the policy's deadline
		refID     string   // the db-password reference; "Redash/RDS/Password" if empty
	}{
		{name: "throttling then success", script: func(n int) reply {
			if n <= 2 {
				return awsErr(400, "ThrottlingException", "Rate exceeded")
			}
			return ok("after-throttle")
		}, wantValue: "after-throttle", calls: 3},
		{name: "500 then success", script: func(n int) reply {
			if n == 1 {
				return awsErr(500, "InternalServiceError", "oops")
			}
			return ok("after-500")
		}, wantValue: "after-500", calls: 2},
		{name: "429 then success", script: func(n int) reply {
			if n == 1 {
				return awsErr(429, "TooManyRequestsException", "slow down")
			}
			return ok("after-429")
		}, wantValue: "after-429", calls: 2},
		{name: "503 until the budget runs out is transient",
			script: func(int) reply { return awsErr(503, "ServiceUnavailable", "try later") },
			wantErr: []string{`fetching secret "db-password" (id "Redash/RDS/Password") in region us-east-1 from http://127.0.0.1:`,
				"attempt(s) in ", "kept failing after retries until the 600ms budget ran out", "check network access", "tries again when it restarts"},
			calls: 4, budget: true},
		{name: "unknown 4xx is final and transient",
			script: func(int) reply {
				return awsErr(400, "UnrecognizedClientException", "The security token included in the request is invalid.")
			},
			wantErr: []string{"UnrecognizedClientException", "not retried", "tries again when it restarts"}, calls: 1},
		{name: "access denied is final",
			script: func(int) reply {
				return awsErr(400, "AccessDeniedException", "User: arn:aws:sts::1:assumed-role/redash/i-1 is not authorized")
			},
			wantErr: []string{`secret "db-password" (id "Redash/RDS/Password") cannot be read in region us-east-1: access denied`, `grant the instance role secretsmanager:GetSecretValue on "Redash/RDS/Password"`, "assumed-role/redash"},
			config:  true, calls: 1},
		{name: "KMS access denied names kms:Decrypt",
			script:  func(int) reply { return awsErr(400, "AccessDeniedException", "Access to KMS is not allowed") },
			wantErr: []string{"access to its KMS key denied", "kms:Decrypt"}, config: true, calls: 1},
		{name: "decryption failure names kms:Decrypt",
			script:  func(int) reply { return awsErr(400, "DecryptionFailure", "can't decrypt") },
			wantErr: []string{"cannot be decrypted", "kms:Decrypt", "kms:ViaService"}, config: true, calls: 1},
		{name: "not found is final",
			script: func(int) reply {
				return awsErr(400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			},
			wantErr: []string{`not found in region us-east-1: create it, or point tag redash:secret:db-password at the right id`}, config: true, calls: 1},
		{name: "scheduled for deletion",
			script:  func(int) reply { return awsErr(400, "InvalidRequestException", "marked for deletion") },
			wantErr: []string{"marked for deletion", "restore-secret"}, config: true, calls: 1},
		{name: "binary secret",
			script:  func(int) reply { return reply{200, `{"Name":"s","VersionId":"v","SecretBinary":"aGVsbG8="}`} },
			wantErr: []string{"holds SecretBinary; only SecretString is supported"}, config: true, calls: 1},
		{name: "empty secret",
			script:  func(int) reply { return ok("") },
			wantErr: []string{`secret "db-password" (id "Redash/RDS/Password") is empty`}, config: true, calls: 1},
		{name: "whitespace-only secret",
			script:  func(int) reply { return ok(" \t\r\n") },
			wantErr: []string{`secret "db-password" (id "Redash/RDS/Password") holds only whitespace`}, config: true, calls: 1},
		{name: "whitespace-only JSON key", refID: "Redash/RDS/Password#password",
			script:  func(int) reply { return ok(`{"password":"  \n"}`) },
			wantErr: []string{`secret "db-password" (id "Redash/RDS/Password", JSON key "password") holds only whitespace`}, config: true, calls: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFaultServer(t, tc.script)
			setAWSEnv(t, srv.URL)
			logger, logs := logBuffer()
			// Real backoff shape, shrunk so the test takes milliseconds.
			f, err := NewAWS(testCtx(t), "us-east-1", logger, WithPolicy(fastPolicy))
			if err != nil {
				t.Fatal(err)
			}
			refID := tc.refID
			if refID == "" {
				refID = "Redash/RDS/Password"
			}
			got, err := f.Fetch(testCtx(t), []Ref{mustRef(t, DBPassword, refID)})
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Fetch: %v", err)
				}
				if v := got[DBPassword].Value.Reveal(); v != tc.wantValue {
					t.Errorf("value = %q, want %q", v, tc.wantValue)
				}
			} else {
				if err == nil {
					t.Fatalf("Fetch succeeded, want an error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q\ndoes not contain %q", err, w)
					}
				}
				if isConfigError(err) != tc.config {
					t.Errorf("isConfigError = %v, want %v for %q", !tc.config, tc.config, err)
				}
			}
			c := srv.Calls()
			if c != tc.calls && !(tc.budget && c >= tc.calls) {
				t.Errorf("server saw %d calls, want %d (at least, for a budget: %v)", c, tc.calls, tc.budget)
			}
			// Every failed attempt but the last is logged as a retry.
			retries := strings.Count(logs.String(), "retrying Secrets Manager request")
			if want := c - 1; tc.wantErr == nil && retries != want || tc.budget && retries != want {
				t.Errorf("logged %d retries for %d calls, want %d:\n%s", retries, c, want, logs)
			}
			if !tc.budget && tc.wantErr != nil && retries != 0 {
				t.Errorf("logged %d retries of a final error:\n%s", retries, logs)
			}
			if retries > 0 && !strings.Contains(logs.String(), "secret_id=Redash/RDS/Password") {
				t.Errorf("retry log does not name the secret id:\n%s", logs)
			}
		})
	}
}

// fastPolicy is the real retry loop with delays shrunk so that a test
// takes milliseconds.
var fastPolicy = Policy{AttemptTimeout: time.Second, Deadline: 600 * time.Millisecond, BackoffBase: 5 * time.Millisecond, BackoffMax: 40 * time.Millisecond}

func TestIsConfigError(t *testing.T) {
	cfg := &Error{Config: true, msg: "c"}
	tr := &Error{msg: "t"}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"config", cfg, true},
		{"transient", tr, false},
		{"wrapped config", fmt.Errorf("step: %w", cfg), true},
		{"joined with a transient one", errors.Join(tr, cfg), true},
		{"only transient joined", errors.Join(tr, tr), false},
		{"plain error", io.EOF, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := isConfigError(tc.err); got != tc.want {
				t.Errorf("isConfigError(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

type noCallAPI struct{ t *testing.T }

func (a noCallAPI) BatchGetSecretValue(context.Context, *secretsmanager.BatchGetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error) {
	a.t.Error("BatchGetSecretValue called for refs that should have been rejected")
	return nil, nil
}

func (a noCallAPI) GetSecretValue(context.Context, *secretsmanager.GetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	a.t.Error("GetSecretValue called for refs that should have been rejected")
	return nil, errors.New("unreachable")
}

func TestFetchRejectsBadRefs(t *testing.T) {
	_, err := (&Fetcher{API: noCallAPI{t}}).Fetch(context.Background(), []Ref{
		{Name: DBUser, SecretID: "a"}, {Name: DBUser, SecretID: "b"}, {Name: SecretKey}, {SecretID: "c"},
	})
	for _, w := range []string{`secret "db-user" is referenced twice`, `secret "secret-key" has an empty secret id: set tag redash:secret:secret-key`, `secret with id "c" has no logical name`} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error %v does not contain %q", err, w)
		}
	}
	if !isConfigError(err) {
		t.Errorf("isConfigError = false")
	}
}
