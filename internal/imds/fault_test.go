package imds

// These tests use an httptest server for what ec2-metadata-mock cannot do:
// faults at an exact moment (a refused token, tags that appear late, an
// expiring token, an endpoint that never answers).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// fakeIMDS is an IMDSv2 server whose faults the test sets up front.
type fakeIMDS struct {
	tokenStatus   int               // status of every token PUT; 0 = 200
	tokenNoTTL    bool              // token answers lack IMDS's TTL header
	listing404s   int               // 404s on the tag listing before it answers; -1 = forever
	metaFailures  int               // 503s on instance-id before it answers
	expireToken1  bool              // every GET with the first token answers 401
	tags          map[string]string // served tags
	tagHandlerDly time.Duration     // delay of each tag value answer

	mu        sync.Mutex
	tokens    []string
	requests  []string // "METHOD escaped-path"
	listed    int
	metaCalls int
	inFlight  int
	maxFlight int
}

func (f *fakeIMDS) start(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return srv
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Method+" "+r.URL.EscapedPath())
	f.mu.Unlock()

	if r.URL.Path == "/latest/api/token" {
		if r.Method != http.MethodPut || r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "bad token request", http.StatusBadRequest)
			return
		}
		if f.tokenStatus != 0 {
			http.Error(w, "refused", f.tokenStatus)
			return
		}
		f.mu.Lock()
		tok := fmt.Sprintf("fake-token-%d", len(f.tokens)+1)
		f.tokens = append(f.tokens, tok)
		f.mu.Unlock()
		// Like IMDS: the answer says how long the token lives.
		if !f.tokenNoTTL {
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds"))
		}
		fmt.Fprint(w, tok)
		return
	}

	// Like IMDS with HttpTokens: required.
	tok := r.Header.Get("X-aws-ec2-metadata-token")
	f.mu.Lock()
	known := false
	for _, k := range f.tokens {
		known = known || k == tok
	}
	first := len(f.tokens) > 0 && tok == f.tokens[0]
	f.mu.Unlock()
	if r.Method != http.MethodGet || !known || (f.expireToken1 && first) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}

	const tagPrefix = "/latest/meta-data/tags/instance/"
	switch p := r.URL.EscapedPath(); {
	case p == "/latest/meta-data/instance-id":
		f.mu.Lock()
		f.metaCalls++
		n := f.metaCalls
		f.mu.Unlock()
		if n <= f.metaFailures {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "i-0fake0000000000001")
	case p == "/latest/meta-data/placement/region":
		fmt.Fprint(w, "eu-central-1")
	case p == "/latest/meta-data/tags/instance":
		f.mu.Lock()
		f.listed++
		n := f.listed
		f.mu.Unlock()
		if f.listing404s < 0 || n <= f.listing404s {
			http.NotFound(w, r)
			return
		}
		var keys []string
		for k := range f.tags {
			keys = append(keys, k)
		}
		fmt.Fprint(w, strings.Join(keys, "\n"))
	case strings.HasPrefix(p, tagPrefix):
		f.mu.Lock()
		f.inFlight++
		f.maxFlight = max(f.maxFlight, f.inFlight)
		f.mu.Unlock()
		defer func() { f.mu.Lock(); f.inFlight--; f.mu.Unlock() }()
		time.Sleep(f.tagHandlerDly)
		// Keys must arrive as one escaped path segment.
		key := strings.TrimPrefix(p, tagPrefix)
		unescaped, err := url.PathUnescape(key)
		if strings.Contains(key, "/") || err != nil {
			http.NotFound(w, r)
			return
		}
		v, ok := f.tags[unescaped]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, v)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeIMDS) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// syncBuffer collects log output written from parallel requests.
type syncBuffer = testenv.SyncBuffer

func newTestClient(endpoint string, deadline time.Duration, logs *syncBuffer) *Client {
	return New(Options{
		Endpoint: endpoint,
		Deadline: deadline,
		Logger:   slog.New(slog.NewTextHandler(logs, nil)),
	})
}

func countLines(s, substr string) int {
	n := 0
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

func TestInstanceSuccessCases(t *testing.T) {
	tags := map[string]string{
		"redash:version":       "10.1.0",
		"redash:env:FOO=bar":   "value with spaces and a trailing space ",
		"a,b":                  "comma key",
		"x@y+z.w_v-u":          "",
		"redash:workers:adhoc": "3",
	}
	tests := []struct {
		name       string
		fake       *fakeIMDS
		wantTokens int
		wantRetry  int // log lines "retrying" at least
	}{
		{"all at once", &fakeIMDS{tags: tags}, 1, 0},
		{"tags appear after three 404s", &fakeIMDS{tags: tags, listing404s: 3}, 1, 3},
		{"instance-id 503 while IMDS starts", &fakeIMDS{tags: tags, metaFailures: 2}, 1, 2},
		{"expired token is replaced", &fakeIMDS{tags: tags, expireToken1: true}, 2, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := tt.fake.start(t)
			var logs syncBuffer
			got, err := newTestClient(srv.URL, 10*time.Second, &logs).Instance(context.Background())
			if err != nil {
				t.Fatalf("Instance: %v\nlogs:\n%s", err, logs.String())
			}
			want := Instance{InstanceID: "i-0fake0000000000001", Region: "eu-central-1", Tags: tags}
			if got.InstanceID != want.InstanceID || got.Region != want.Region || !maps.Equal(got.Tags, want.Tags) {
				t.Errorf("Instance = %+v, want %+v", got, want)
			}
			if n := len(tt.fake.tokens); n != tt.wantTokens {
				t.Errorf("token requests = %d, want %d", n, tt.wantTokens)
			}
			if n := countLines(logs.String(), "retrying"); n < tt.wantRetry {
				t.Errorf("logged %d retries, want at least %d:\n%s", n, tt.wantRetry, logs.String())
			}
			for _, tok := range tt.fake.tokens {
				if strings.Contains(logs.String(), tok) {
					t.Errorf("log contains the session token %q", tok)
				}
			}
			// The comma must travel escaped, as part of one path segment.
			if !contains(tt.fake.log(), "GET /latest/meta-data/tags/instance/a%2Cb") {
				t.Errorf("no escaped request for key \"a,b\" in %q", tt.fake.log())
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func TestInstanceFailures(t *testing.T) {
	hanging := func(t *testing.T) string {
		// Accepts connections and never answers: a blackholed endpoint.
		release := make(chan struct{})
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}))
		t.Cleanup(func() { close(release); srv.Close() })
		return srv.URL
	}
	refused := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close() // nothing listens there any more: connection refused
		return "http://" + addr
	}
	fakeURL := func(f *fakeIMDS) func(*testing.T) string {
		return func(t *testing.T) string { return f.start(t).URL }
	}

	tokenRefused := &fakeIMDS{tokenStatus: http.StatusForbidden}
	tokenUnauthorized := &fakeIMDS{tokenStatus: http.StatusUnauthorized}
	tokenBadRequest := &fakeIMDS{tokenStatus: http.StatusBadRequest}
	notIMDS := &fakeIMDS{tokenNoTTL: true}
	tagsOff := &fakeIMDS{listing404s: -1}
	tests := []struct {
		name      string
		endpoint  func(*testing.T) string
		deadline  time.Duration
		wantIs    error
		wantText  []string
		maxTime   time.Duration
		minRetry  int
		status    int // exitcode.Of(err); 0 means exitcode.Failure
		checkFake func(t *testing.T)
	}{
		{
			name: "token 403 is final and never falls back to v1", endpoint: fakeURL(tokenRefused), deadline: 2 * time.Second,
			wantText: []string{"reading the instance id: ", "IMDSv2 token refused with 403 Forbidden", "never falls back to IMDSv1",
				"HttpTokens", "HttpPutResponseHopLimit", "modify-instance-metadata-options"},
			maxTime: 500 * time.Millisecond,
			// No restart can fix the instance's metadata options: exit 3,
			// which the unit's RestartPreventExitStatus honours.
			status: exitcode.Config,
			checkFake: func(t *testing.T) {
				if got := tokenRefused.log(); len(got) != 1 || got[0] != "PUT /latest/api/token" {
					t.Errorf("requests = %q, want exactly one token PUT and no GET", got)
				}
			},
		},
		{
			name: "token 401 is a configuration error too", endpoint: fakeURL(tokenUnauthorized), deadline: 2 * time.Second,
			wantText: []string{"IMDSv2 token refused with 401 Unauthorized", "metadata options"},
			maxTime:  500 * time.Millisecond, status: exitcode.Config,
		},
		{
			name: "token 400 is our bad request, not configuration", endpoint: fakeURL(tokenBadRequest), deadline: 2 * time.Second,
			wantText: []string{"IMDSv2 token refused with 400 Bad Request", "malformed", EndpointEnv},
			maxTime:  500 * time.Millisecond, status: exitcode.Failure,
			checkFake: func(t *testing.T) {
				if got := tokenBadRequest.log(); len(got) != 1 {
					t.Errorf("requests = %q, want exactly one token PUT", got)
				}
			},
		},
		{
			name: "token answer without a TTL is final", endpoint: fakeURL(notIMDS), deadline: 2 * time.Second,
			wantText: []string{"reading the instance id: the token answer from http://127.0.0.1:",
				"lacks a valid X-Aws-Ec2-Metadata-Token-Ttl-Seconds header: is this endpoint IMDS?"},
			maxTime: 500 * time.Millisecond,
			checkFake: func(t *testing.T) {
				if got := notIMDS.log(); len(got) != 1 {
					t.Errorf("requests = %q, want exactly one token PUT", got)
				}
			},
		},
		{
			name: "tags 404 until the deadline", endpoint: fakeURL(tagsOff), deadline: 800 * time.Millisecond,
			wantIs: ErrTagsNotEnabled,
			wantText: []string{`reading the tags of instance "i-0fake0000000000001" (404 for `,
				"instance metadata tags are not enabled; enable them with `InstanceMetadataTags: enabled` in the launch " +
					"template's MetadataOptions (or `aws ec2 modify-instance-metadata-options --instance-id " +
					"i-0fake0000000000001 --instance-metadata-tags enabled`)"},
			maxTime: 1500 * time.Millisecond, minRetry: 2,
			checkFake: func(t *testing.T) {
				if tagsOff.listed < 3 {
					t.Errorf("tag listing requested %d times, want retries", tagsOff.listed)
				}
			},
		},
		{
			name: "endpoint accepts but never answers", endpoint: hanging, deadline: 600 * time.Millisecond,
			wantIs:   context.DeadlineExceeded,
			wantText: []string{"reading the instance id: reading /latest/api/token from the metadata endpoint http://127.0.0.1:", "gave up after 1 attempt(s) in "},
			maxTime:  1500 * time.Millisecond,
		},
		{
			name: "connection refused until the deadline", endpoint: refused, deadline: 700 * time.Millisecond,
			wantText: []string{"from the metadata endpoint http://127.0.0.1:", "connection refused", "is this an EC2 instance", EndpointEnv},
			maxTime:  1500 * time.Millisecond, minRetry: 3,
		},
		{
			name: "not an http endpoint", endpoint: func(*testing.T) string { return "169.254.169.254" }, deadline: time.Second,
			wantText: []string{`using the metadata endpoint "169.254.169.254": not an http:// URL`},
			maxTime:  100 * time.Millisecond,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var logs syncBuffer
			c := newTestClient(tt.endpoint(t), tt.deadline, &logs)
			start := time.Now()
			_, err := c.Instance(context.Background())
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("Instance succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("error %q is not %v", err, tt.wantIs)
			}
			for _, w := range tt.wantText {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			if want := cmp.Or(tt.status, exitcode.Failure); exitcode.Of(err) != want {
				t.Errorf("exit status %d, want %d: %v", exitcode.Of(err), want, err)
			}
			// As the agent wraps it: the status survives the wrapping.
			if want := cmp.Or(tt.status, exitcode.Failure); exitcode.Of(fmt.Errorf("reading instance tags from IMDS: %w", err)) != want {
				t.Errorf("wrapped, exit status %d, want %d", exitcode.Of(fmt.Errorf("x: %w", err)), want)
			}
			if elapsed > tt.maxTime {
				t.Errorf("took %v, want at most %v (deadline %v)", elapsed, tt.maxTime, tt.deadline)
			}
			if n := countLines(logs.String(), "retrying"); n < tt.minRetry {
				t.Errorf("logged %d retries, want at least %d:\n%s", n, tt.minRetry, logs.String())
			}
			if tt.minRetry > 0 && !strings.Contains(logs.String(), "attempt=1 ") {
				t.Errorf("retry log lacks the attempt number:\n%s", logs.String())
			}
			if tt.checkFake != nil {
				tt.checkFake(t)
			}
			t.Logf("error after %v: %v", elapsed.Round(time.Millisecond), err)
		})
	}
}

func TestInstanceCallerCancel(t *testing.T) {
	f := &fakeIMDS{listing404s: -1}
	srv := f.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := New(Options{Endpoint: srv.URL, Deadline: time.Minute}).Instance(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error = %v, want the caller's context.DeadlineExceeded", err)
	}
	if errors.Is(err, ErrTagsNotEnabled) {
		t.Errorf("the caller's deadline is not proof that tags are off: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v after the caller's 300ms deadline", d)
	}
}

func TestInstanceTagParallelismIsBounded(t *testing.T) {
	tags := map[string]string{}
	for i := range 30 {
		tags[fmt.Sprintf("k%02d", i)] = fmt.Sprint(i)
	}
	f := &fakeIMDS{tags: tags, tagHandlerDly: 20 * time.Millisecond}
	srv := f.start(t)
	start := time.Now()
	got, err := New(Options{Endpoint: srv.URL, Deadline: 10 * time.Second}).Instance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Tags, tags) {
		t.Errorf("tags = %v, want %v", got.Tags, tags)
	}
	if f.maxFlight > tagWorkers || f.maxFlight < 2 {
		t.Errorf("max parallel tag requests = %d, want 2..%d", f.maxFlight, tagWorkers)
	}
	// 30 sequential requests would take >= 600ms.
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("took %v: tag values are not fetched in parallel", d)
	}
}

func TestInstanceUsesEndpointEnvironment(t *testing.T) {
	var hits atomic.Int32
	f := &fakeIMDS{tags: map[string]string{"k": "v"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		f.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Setenv(EndpointEnv, srv.URL+"/") // a trailing slash is common in the wild
	got, err := New(Options{Deadline: 5 * time.Second}).Instance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got.Tags["k"] != "v" || hits.Load() == 0 {
		t.Errorf("Instance = %+v with %d hits, want tag k=v from %s", got, hits.Load(), srv.URL)
	}
	if got := f.log(); !contains(got, "GET /latest/meta-data/instance-id") {
		t.Errorf("requests = %q, want clean paths without a double slash", got)
	}
}

// TestTagsDeadlineEndsA404Early: with TagsDeadline the tag listing's 404 is
// given up on after that long, however long the overall deadline is, and
// still reported as ErrTagsNotEnabled.
func TestTagsDeadlineEndsA404Early(t *testing.T) {
	f := &fakeIMDS{listing404s: -1}
	srv := f.start(t)
	start := time.Now()
	_, err := New(Options{Endpoint: srv.URL, Deadline: time.Minute, TagsDeadline: 500 * time.Millisecond}).Instance(context.Background())
	if !errors.Is(err, ErrTagsNotEnabled) {
		t.Fatalf("err = %v, want ErrTagsNotEnabled", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("took %v with a 500ms tags deadline and a 1m deadline", took)
	}
	if f.listed < 2 {
		t.Errorf("tag listing requested %d times, want retries within the tags deadline", f.listed)
	}
}
