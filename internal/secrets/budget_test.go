package secrets

// Budget tests: the real client and retry loop against moto_server, with a
// small HTTP proxy in between that counts requests and fails, throttles or
// holds them on cue. Budgets are shrunk through WithPolicy so the package
// test stays fast; TestMeasurePolicies (opt-in) runs Boot and Refresh as
// shipped.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"

	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// action is what the proxy does with one request.
type action int

const (
	pass     action = iota // forward to moto
	fail500                // answer 500 InternalServiceError
	throttle               // answer 400 ThrottlingException
	denied                 // answer 400 AccessDeniedException
	hold                   // accept, read the request, never answer
)

// smProxy sits between the Fetcher and moto_server; script(n) decides
// what happens to the n-th request (from 1).
type smProxy struct {
	URL      string
	requests atomic.Int32
}

func startProxy(t *testing.T, upstream string, script func(n int) action) *smProxy {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	released := make(chan struct{})
	p := &smProxy{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := int(p.requests.Add(1))
		answer := func(status int, code, msg string) {
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/x-amz-json-1.1")
			w.WriteHeader(status)
			fmt.Fprintf(w, `{"__type":%q,"message":%q}`, code, msg)
		}
		switch script(n) {
		case pass:
			rp.ServeHTTP(w, r)
		case fail500:
			answer(500, "InternalServiceError", "injected by the test proxy")
		case throttle:
			answer(400, "ThrottlingException", "Rate exceeded")
		case denied:
			answer(400, "AccessDeniedException", "User: arn:aws:sts::123456789012:assumed-role/redash/i-1 is not authorized")
		case hold:
			io.Copy(io.Discard, r.Body)
			select { // until the client gives up, or the test ends
			case <-r.Context().Done():
			case <-released:
			}
		}
	}))
	t.Cleanup(func() { close(released); srv.Close() })
	p.URL = srv.URL
	return p
}

func (p *smProxy) count() int { return int(p.requests.Load()) }

// always returns a script that does a to every request; firstThen one that
// does a to the first n and passes the rest through.
func always(a action) func(int) action { return func(int) action { return a } }
func firstThen(n int, a action) func(int) action {
	return func(i int) action {
		if i <= n {
			return a
		}
		return pass
	}
}

// budgetPolicy: short enough for a fast test, long enough that a 2-core CI
// machine's scheduling noise is small against it.
var budgetPolicy = Policy{AttemptTimeout: 400 * time.Millisecond, Deadline: 1500 * time.Millisecond, BackoffBase: 20 * time.Millisecond, BackoffMax: 150 * time.Millisecond}

// bounded is a context for a fetch under test: a broken deadline fails
// the test's timing check after at most 20s instead of hanging the package.
func bounded(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// slack is how far past its deadline a fetch may return: the attempt in
// flight is cancelled with the deadline, so this is only scheduling.
const slack = 750 * time.Millisecond

func newProxied(t *testing.T, endpoint string, p Policy) (*Fetcher, *syncWriter) {
	t.Helper()
	setAWSEnv(t, endpoint)
	logger, logs := logBuffer()
	f, err := NewAWS(context.Background(), testenv.MotoRegion, logger, WithPolicy(p))
	if err != nil {
		t.Fatal(err)
	}
	return f, logs
}

var attemptsRE = regexp.MustCompile(`giving up on Secrets Manager request".*attempts=(\d+)`)

func TestFetchBudgetThroughProxy(t *testing.T) {
	m := testenv.StartMoto(t)
	wantV := m.Put(t, "Redash/RDS/Password", "pw-Kq72Lm0Zx")

	t.Run("500 three times then moto answers", func(t *testing.T) {
		px := startProxy(t, m.Endpoint, firstThen(3, fail500))
		f, logs := newProxied(t, px.URL, budgetPolicy)
		got, err := f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if s := got[DBPassword]; s.Value.Reveal() != "pw-Kq72Lm0Zx" || s.VersionID != wantV {
			t.Errorf("got %q version %q, want moto's value and %q", s.Value.Reveal(), s.VersionID, wantV)
		}
		if c := px.count(); c != 4 {
			t.Errorf("proxy counted %d requests, want 3 failures + 1 success = 4", c)
		}
		if n := strings.Count(logs.String(), "retrying Secrets Manager request"); n != 3 {
			t.Errorf("logged %d retries, want 3:\n%s", n, logs)
		}
		if !strings.Contains(logs.String(), "attempts=4") {
			t.Errorf("the fetched line does not say it took 4 attempts:\n%s", logs)
		}
	})

	t.Run("throttled twice then moto answers", func(t *testing.T) {
		px := startProxy(t, m.Endpoint, firstThen(2, throttle))
		f, _ := newProxied(t, px.URL, budgetPolicy)
		if _, err := f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")}); err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if c := px.count(); c != 3 {
			t.Errorf("proxy counted %d requests, want 3", c)
		}
	})

	t.Run("500 forever ends at the budget", func(t *testing.T) {
		px := startProxy(t, m.Endpoint, always(fail500))
		f, logs := newProxied(t, px.URL, budgetPolicy)
		start := time.Now()
		_, err := f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
		took := time.Since(start)
		if err == nil {
			t.Fatal("Fetch succeeded through a proxy that always answers 500")
		}
		if took < budgetPolicy.Deadline || took > budgetPolicy.Deadline+slack {
			t.Errorf("took %v, want within [%v, %v]", took, budgetPolicy.Deadline, budgetPolicy.Deadline+slack)
		}
		mm := attemptsRE.FindStringSubmatch(logs.String())
		if mm == nil {
			t.Fatalf("no give-up line with the attempt count:\n%s", logs)
		}
		// The last attempt may start so close to the deadline that it is
		// cut before it reaches the proxy: one more logged than counted.
		if c, n := px.count(), atoi(mm[1]); n < c || n > c+1 || c < 5 {
			t.Errorf("logged attempts=%d, proxy counted %d, want them equal (or one more logged) and at least 5", n, c)
		}
		for _, w := range []string{`fetching secret "db-password" (id "Redash/RDS/Password") in region us-east-1 from ` + px.URL,
			mm[1] + " attempt(s) in ", "kept failing after retries until the 1.5s budget ran out", "StatusCode: 500", "check network access"} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q\nlacks %q", err, w)
			}
		}
		if s := exitcode.Of(err); s != exitcode.Failure {
			t.Errorf("exit status %d, want %d: a restart may succeed", s, exitcode.Failure)
		}
		t.Logf("%d requests in %v: %v", px.count(), took.Round(time.Millisecond), err)
	})

	// 4xx other than throttling is final: exactly one request (two when
	// the batch call is refused first and the single call falls back).
	for _, tc := range []struct {
		name     string
		script   func(int) action
		id       string
		want     string
		requests int
	}{
		{"not found (moto's own answer)", always(pass), "Redash/DoesNotExist", "not found in region us-east-1", 1},
		{"access denied", always(denied), "Redash/RDS/Password", "access denied", 2},
	} {
		t.Run(tc.name+" is not retried", func(t *testing.T) {
			px := startProxy(t, m.Endpoint, tc.script)
			f, logs := newProxied(t, px.URL, budgetPolicy)
			start := time.Now()
			_, err := f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, tc.id)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if c := px.count(); c != tc.requests {
				t.Errorf("proxy counted %d requests, want exactly %d", c, tc.requests)
			}
			if s := exitcode.Of(err); s != exitcode.Config {
				t.Errorf("exit status %d, want %d", s, exitcode.Config)
			}
			if took := time.Since(start); took > budgetPolicy.Deadline/2 {
				t.Errorf("a final error took %v", took)
			}
			if strings.Contains(logs.String(), "retrying") {
				t.Errorf("a final error was retried:\n%s", logs)
			}
		})
	}
}

// TestFetchHangingEndpoint is the reported hang: an endpoint that accepts
// and never answers. Each attempt is cut at AttemptTimeout and the fetch
// ends at its deadline, naming the secret and the endpoint.
func TestFetchHangingEndpoint(t *testing.T) {
	m := testenv.StartMoto(t)
	m.Put(t, "Redash/CookieSecret", "cookie-value-Zq81")

	// A TCP listener that accepts and never reads: not even HTTP answers.
	silentTCP := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			l.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, c := range conns {
				c.Close()
			}
		})
		return "http://" + l.Addr().String()
	}

	for _, tc := range []struct {
		name     string
		endpoint func(t *testing.T) (url string, requests func() int)
	}{
		{"proxy in front of moto holds every request", func(t *testing.T) (string, func() int) {
			px := startProxy(t, m.Endpoint, always(hold))
			return px.URL, px.count
		}},
		{"TCP accepts and never reads", func(t *testing.T) (string, func() int) { return silentTCP(t), nil }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			endpoint, requests := tc.endpoint(t)
			f, logs := newProxied(t, endpoint, budgetPolicy)
			start := time.Now()
			_, err := f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, "Redash/RDS/Password"), mustRef(t, CookieSecret, "Redash/CookieSecret")})
			took := time.Since(start)
			if err == nil {
				t.Fatal("Fetch succeeded against an endpoint that never answers")
			}
			if took < budgetPolicy.Deadline || took > budgetPolicy.Deadline+slack {
				t.Errorf("took %v, want within [%v, %v]", took, budgetPolicy.Deadline, budgetPolicy.Deadline+slack)
			}
			for _, w := range []string{
				`fetching secret "db-password" (id "Redash/RDS/Password") in region us-east-1 from ` + endpoint + ": timed out: no answer within 400ms per attempt",
				`fetching secret "cookie-secret" (id "Redash/CookieSecret") in region us-east-1 from ` + endpoint + ": timed out",
				"check network access from this instance to the Secrets Manager endpoint from " + endpoint, "VPC endpoint",
			} {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			if s := exitcode.Of(err); s != exitcode.Failure {
				t.Errorf("exit status %d, want %d", s, exitcode.Failure)
			}
			// Two secrets in one batch call, cut at 400ms per attempt within 1.5s: 3 or 4 attempts.
			if requests != nil {
				if c := requests(); c < 3 || c > 4 {
					t.Errorf("proxy counted %d requests, want 3 or 4 attempts of the one batch call", c)
				}
			}
			if n := len(attemptsRE.FindAllString(logs.String(), -1)); n != 1 {
				t.Errorf("%d give-up lines, want one for the batch call:\n%s", n, logs)
			}
			t.Logf("returned after %v: %v", took.Round(time.Millisecond), err)
		})
	}

	// SIGTERM during a boot: the caller's cancellation ends the fetch at
	// once, not at the end of Boot's minute.
	t.Run("caller cancels", func(t *testing.T) {
		px := startProxy(t, m.Endpoint, always(hold))
		f, _ := newProxied(t, px.URL, Boot)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		start := time.Now()
		_, err := f.Fetch(ctx, []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
		if took := time.Since(start); took > 300*time.Millisecond+slack {
			t.Errorf("took %v after a cancel at 300ms", took)
		}
		if err == nil || !strings.Contains(err.Error(), "stopped by the caller") || !strings.Contains(err.Error(), "context canceled") {
			t.Errorf("error %v, want one saying the caller stopped it", err)
		}
	})

	// The caller's deadline, shorter than the policy's, is the budget.
	t.Run("caller's deadline first", func(t *testing.T) {
		px := startProxy(t, m.Endpoint, always(fail500))
		f, _ := newProxied(t, px.URL, Boot)
		ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := f.Fetch(ctx, []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
		if took := time.Since(start); took < 800*time.Millisecond || took > 800*time.Millisecond+slack {
			t.Errorf("took %v, want about the caller's 800ms", took)
		}
		if err == nil || !strings.Contains(err.Error(), "stopped by the caller") {
			t.Errorf("error %v, want one saying the caller's deadline ended it", err)
		}
	})
}

// TestFetchRefusedConnection: nothing listens on the endpoint. The SDK's
// own retryer gave up after 5 attempts in about half a second; the budget
// must hold instead.
func TestFetchRefusedConnection(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := "http://" + l.Addr().String()
	l.Close()
	f, logs := newProxied(t, endpoint, budgetPolicy)
	start := time.Now()
	_, err = f.Fetch(bounded(t), []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "budget ran out") {
		t.Fatalf("error %v, want connection refused until the budget ran out", err)
	}
	if took < budgetPolicy.Deadline || took > budgetPolicy.Deadline+slack {
		t.Errorf("took %v, want within [%v, %v]", took, budgetPolicy.Deadline, budgetPolicy.Deadline+slack)
	}
	if mm := attemptsRE.FindStringSubmatch(logs.String()); mm == nil || atoi(mm[1]) < 5 {
		t.Errorf("want at least 5 attempts logged:\n%s", logs)
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// TestMeasurePolicies runs Boot and Refresh as shipped against a proxy that
// always answers 500, one that holds every request, and a refused port, and
// logs time and attempts (the numbers in docs/reliability.md). It takes
// Boot's full minute, so it runs only when asked.
func TestMeasurePolicies(t *testing.T) {
	if os.Getenv("REDASH_AGENT_MEASURE") != "1" {
		t.Skip("measures the shipped budgets (about 60 s): set REDASH_AGENT_MEASURE=1 to run it")
	}
	m := testenv.StartMoto(t)
	refused := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return "http://" + l.Addr().String()
	}
	for _, pol := range []struct {
		name string
		p    Policy
	}{{"Boot", Boot}, {"Refresh", Refresh}} {
		for _, fault := range []struct {
			name     string
			endpoint func(t *testing.T) (string, func() int)
		}{
			{"500", func(t *testing.T) (string, func() int) {
				px := startProxy(t, m.Endpoint, always(fail500))
				return px.URL, px.count
			}},
			{"hold", func(t *testing.T) (string, func() int) {
				px := startProxy(t, m.Endpoint, always(hold))
				return px.URL, px.count
			}},
			{"refused", func(t *testing.T) (string, func() int) { return refused(t), nil }},
		} {
			t.Run(pol.name+"/"+fault.name, func(t *testing.T) {
				// In parallel, so the client is built as NewAWS builds it
				// (one attempt per call) but without NewAWS's environment,
				// which t.Setenv cannot give parallel tests.
				t.Parallel()
				endpoint, count := fault.endpoint(t)
				logger, logs := logBuffer()
				f := &Fetcher{Logger: logger, Region: testenv.MotoRegion, Endpoint: endpoint, Policy: pol.p,
					API: secretsmanager.New(secretsmanager.Options{
						Region: testenv.MotoRegion, BaseEndpoint: aws.String(endpoint), Retryer: aws.NopRetryer{},
						Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
							return aws.Credentials{AccessKeyID: testenv.MotoAccessKey, SecretAccessKey: testenv.MotoSecretKey}, nil
						}),
					})}
				// Longer than Boot's minute: the policy, not this, must end the fetch.
				measureCtx, cancel := context.WithTimeout(context.Background(), 2*Boot.Deadline)
				defer cancel()
				start := time.Now()
				_, err := f.Fetch(measureCtx, []Ref{mustRef(t, DBPassword, "Redash/RDS/Password")})
				took := time.Since(start)
				if err == nil {
					t.Fatal("Fetch succeeded")
				}
				if took < pol.p.Deadline || took > pol.p.Deadline+slack {
					t.Errorf("took %v, want within [%v, %v]", took, pol.p.Deadline, pol.p.Deadline+slack)
				}
				n := "?"
				if mm := attemptsRE.FindStringSubmatch(logs.String()); mm != nil {
					n = mm[1]
				}
				proxied := "-"
				if count != nil {
					proxied = fmt.Sprint(count())
				}
				t.Logf("MEASURED %s %s: %v, attempts logged %s, proxy counted %s", pol.name, fault.name, took.Round(time.Millisecond), n, proxied)
			})
		}
	}
}
