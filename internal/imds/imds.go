// Package imds reads the instance id, region and instance tags from the EC2
// instance metadata service, IMDSv2 only.
//
// Side effects: HTTP requests to the metadata endpoint and nothing else (no
// proxy, no files, no environment changes). The endpoint is
// Options.Endpoint, else the AWS SDK's standard setting
// AWS_EC2_METADATA_SERVICE_ENDPOINT, else http://169.254.169.254.
//
// The client never falls back to IMDSv1: a refused token request is an
// error. At boot the metadata service and the instance tags can appear late,
// so connection errors, 5xx, 429 and a 404 on the tag listing are retried
// with jittered exponential backoff until Options.Deadline, and every retry
// is logged.
package imds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	// DefaultEndpoint is the link-local address of IMDS on every EC2 instance.
	DefaultEndpoint = "http://169.254.169.254"
	// EndpointEnv is the AWS SDK's standard setting for the IMDS endpoint;
	// tests and users point the agent elsewhere with it.
	EndpointEnv = "AWS_EC2_METADATA_SERVICE_ENDPOINT"

	// DefaultDeadline bounds how long Instance keeps retrying at boot.
	DefaultDeadline = 2 * time.Minute

	tokenPath = "api/token"
	// tokenTTL is the IMDS maximum (6 hours), the same the AWS SDK asks for:
	// one token covers a whole boot, and a 401 still triggers a new one.
	tokenTTL = 21600

	// attemptTimeout bounds one HTTP exchange so that a blackholed endpoint
	// (packets dropped, e.g. a hop limit of 1 behind a NAT) is retried and
	// logged instead of hanging silently until the overall deadline.
	attemptTimeout = 3 * time.Second
	// maxRetokens bounds how often one GET may answer 401 to a freshly
	// issued token before we conclude the endpoint rejects our tokens.
	maxRetokens = 3
	// tagWorkers bounds the parallel tag-value requests; IMDS throttles
	// bursts (429), and instances carry at most 50 tags.
	tagWorkers = 8
	// maxBody caps what we read from one answer; tag values are at most 256
	// characters, so anything near this is not IMDS.
	maxBody = 1 << 20
)

// ErrTagsNotEnabled means the tag listing answered 404 until the deadline:
// instance metadata tags are not enabled on the instance (or it has no tags).
// A caller may branch on it with errors.Is.
var ErrTagsNotEnabled = errors.New("instance metadata tags are not enabled")

// Options configures a Client. The zero value is ready for an EC2 instance.
type Options struct {
	Endpoint string        // "" = AWS_EC2_METADATA_SERVICE_ENDPOINT or http://169.254.169.254
	Deadline time.Duration // total time to keep retrying; 0 = 2 minutes
	// TagsDeadline, when shorter than Deadline, bounds how long a 404 on the
	// tag listing is retried once IMDS itself has answered. A host that has
	// nothing else to go by uses it to tell "not configured" quickly.
	TagsDeadline time.Duration
	HTTPClient   *http.Client // nil = a client that never uses a proxy
	Logger       *slog.Logger // each retry attempt is logged (attempt number, path, cause, next delay); nil = discard
}

// Instance is what the agent needs to know about the machine it runs on.
type Instance struct {
	InstanceID string
	Region     string
	Tags       map[string]string // never nil
}

// Client reads instance metadata over IMDSv2. It is safe for concurrent use.
type Client struct {
	endpoint string
	deadline time.Duration
	tagsDL   time.Duration // 0: the tag listing gets the whole deadline
	hc       *http.Client
	log      *slog.Logger
	jitter   func() float64 // in [0,1); replaced by tests that need determinism
}

// New returns a Client for o.
func New(o Options) *Client {
	c := &Client{
		endpoint: strings.TrimRight(ResolveEndpoint(o.Endpoint), "/"),
		deadline: o.Deadline,
		tagsDL:   o.TagsDeadline,
		hc:       o.HTTPClient,
		log:      o.Logger,
		jitter:   rand.Float64,
	}
	if c.deadline <= 0 {
		c.deadline = DefaultDeadline
	}
	if c.hc == nil {
		// IMDS is link-local: it is never reachable through a proxy, and an
		// HTTP_PROXY meant for image pulls must not swallow our requests.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		tr.DialContext = (&net.Dialer{Timeout: time.Second}).DialContext
		c.hc = &http.Client{Transport: tr}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// ResolveEndpoint returns the endpoint New uses for the given option value.
func ResolveEndpoint(option string) string {
	if option != "" {
		return option
	}
	if e := os.Getenv(EndpointEnv); e != "" {
		return e
	}
	return DefaultEndpoint
}

// Endpoint returns the metadata endpoint the client talks to.
func (c *Client) Endpoint() string { return c.endpoint }

// Instance reads the instance id, the region and every instance tag. It keeps
// retrying transient failures until the client's deadline or ctx ends.
func (c *Client) Instance(ctx context.Context) (Instance, error) {
	if u, err := url.Parse(c.endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Instance{}, fmt.Errorf("using the metadata endpoint %q: not an http:// URL: fix %s or the endpoint option", c.endpoint, EndpointEnv)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	r := &run{c: c, parent: parent, start: time.Now(), until: time.Now().Add(c.deadline)}

	id, err := r.get(ctx, kindMeta, "meta-data/instance-id")
	if err != nil {
		return Instance{}, fmt.Errorf("reading the instance id: %w", err)
	}
	id = strings.TrimSpace(id)
	region, err := r.get(ctx, kindMeta, "meta-data/placement/region")
	if err != nil {
		return Instance{}, fmt.Errorf("reading the region of instance %q: %w", id, err)
	}
	region = strings.TrimSpace(region)

	tagsCtx := ctx
	if c.tagsDL > 0 {
		var cancelTags context.CancelFunc
		tagsCtx, cancelTags = context.WithTimeout(ctx, c.tagsDL)
		defer cancelTags()
	}
	listing, err := r.get(tagsCtx, kindTags, "meta-data/tags/instance")
	if err != nil {
		var se *statusError
		if errors.As(err, &se) && se.status == http.StatusNotFound && parent.Err() == nil {
			return Instance{}, fmt.Errorf("reading the tags of instance %q (404 for %s): %w; "+
				"enable them with `InstanceMetadataTags: enabled` in the launch template's MetadataOptions "+
				"(or `aws ec2 modify-instance-metadata-options --instance-id %s --instance-metadata-tags enabled`)",
				id, r.since(), ErrTagsNotEnabled, id)
		}
		return Instance{}, fmt.Errorf("listing the tags of instance %q: %w", id, err)
	}
	tags, err := r.tagValues(ctx, parseKeys(listing))
	if err != nil {
		return Instance{}, fmt.Errorf("reading the tags of instance %q: %w", id, err)
	}
	return Instance{InstanceID: id, Region: region, Tags: tags}, nil
}

// parseKeys splits the newline-separated tag listing. Metadata tag keys
// cannot contain whitespace, so trimming only removes line-ending noise.
func parseKeys(listing string) []string {
	var keys []string
	for _, k := range strings.Split(listing, "\n") {
		if k = strings.TrimSpace(k); k != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

// tagValues fetches every key in parallel, at most tagWorkers at a time. The
// first failure cancels the rest and is the one reported: the requests it
// cancelled would only add noise.
func (r *run) tagValues(ctx context.Context, keys []string) (map[string]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	values := make([]string, len(keys))
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, tagWorkers)
	for i, k := range keys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				return
			}
			// PathEscape, not raw concatenation: keys may hold ',' and
			// other reserved characters, and must stay one path segment.
			v, err := r.get(ctx, kindTag, "meta-data/tags/instance/"+url.PathEscape(k))
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("reading tag %q: %w", k, err)
					cancel()
				}
				mu.Unlock()
				return
			}
			values[i] = v
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		// The deadline or the caller ended the wait for a worker slot.
		return nil, fmt.Errorf("reading tags from %s: %w", r.c.endpoint, err)
	}
	tags := make(map[string]string, len(keys))
	for i, k := range keys {
		tags[k] = values[i]
	}
	return tags, nil
}

// reqKind says which request is being classified: the token PUT, a plain
// metadata GET, the tag listing, or one tag value.
type reqKind int

const (
	kindToken reqKind = iota
	kindMeta
	kindTags
	kindTag
)

// verdict is what the retry loop does with one answer.
type verdict int

const (
	ok      verdict = iota
	retry           // transient: back off and try again until the deadline
	retoken         // the session token expired: get a new one and try again
	fail            // final: retrying cannot help
)

func (v verdict) String() string {
	return [...]string{"ok", "retry", "retoken", "fail"}[v]
}

// classify decides what an HTTP status means for a request of kind k. It is
// pure so the whole retry policy is one table test.
func classify(k reqKind, status int) verdict {
	switch {
	case status == http.StatusOK:
		return ok
	case status >= 500, status == http.StatusTooManyRequests:
		// IMDS answers 5xx while it starts and 429 when throttling.
		return retry
	case k == kindToken:
		// 401/403/404/405 on the PUT mean IMDS is disabled or only speaks
		// v1; 400 means a bad TTL. None improves with time, and falling
		// back to v1 is exactly what we must never do.
		return fail
	case status == http.StatusUnauthorized:
		return retoken
	case status == http.StatusNotFound && (k == kindTags || k == kindTag):
		// Tags show up in IMDS a moment after launch, and a key listed a
		// moment ago may be replaced right now.
		return retry
	default:
		return fail
	}
}

// Backoff bounds: the first retry is fast because IMDS usually answers
// within milliseconds once up; the cap keeps a boot from idling long after
// tags appear.
const (
	backoffBase = 100 * time.Millisecond
	backoffCap  = 5 * time.Second
)

// backoff returns the delay before retry number attempt (1-based): the
// exponential step base*2^(attempt-1), capped, of which the upper half is
// jittered by j in [0,1) ("equal jitter": never zero, never in lockstep with
// other instances of the same Auto Scaling Group).
func backoff(attempt int, j float64) time.Duration {
	d := backoffCap
	if attempt < 1 {
		attempt = 1
	}
	if attempt <= 16 {
		if e := backoffBase << (attempt - 1); e < backoffCap {
			d = e
		}
	}
	half := d / 2
	return half + time.Duration(j*float64(half))
}

// statusError is a non-200 answer from IMDS.
type statusError struct {
	method, path string
	status       int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s /latest/%s answered %d %s", e.method, e.path, e.status, http.StatusText(e.status))
}

// run is one Instance call: it shares the IMDSv2 session token between the
// parallel tag requests and remembers when the call started for messages.
type run struct {
	c      *Client
	parent context.Context // the caller's ctx, to tell its cancellation from our deadline
	start  time.Time
	until  time.Time // our own deadline, to tell it from a shorter one of the caller

	mu    sync.Mutex
	token string
	gen   int // bumped on every new token so parallel 401s refresh it once
}

func (r *run) since() time.Duration { return time.Since(r.start).Round(time.Millisecond) }

// sessionToken returns a valid token, fetching one if there is none. The
// mutex is held during the fetch so parallel requests wait for one token.
func (r *run) sessionToken(ctx context.Context) (string, int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.token != "" {
		return r.token, r.gen, nil
	}
	tok, err := r.retryLoop(ctx, kindToken, tokenPath, func(ctx context.Context) (string, verdict, error) {
		body, status, err := r.c.exchange(ctx, http.MethodPut, tokenPath, http.Header{
			"X-Aws-Ec2-Metadata-Token-Ttl-Seconds": {strconv.Itoa(tokenTTL)},
		})
		if err != nil {
			return "", retry, err
		}
		v := classify(kindToken, status)
		if v == fail {
			return "", fail, fmt.Errorf("IMDSv2 token refused with %d %s by %s: is the metadata endpoint IMDSv2-enabled "+
				"(launch template MetadataOptions HttpEndpoint: enabled; HttpPutResponseHopLimit 2 or more when "+
				"called from a container)? redash-agent never falls back to IMDSv1: %w",
				status, http.StatusText(status), r.c.endpoint, &statusError{http.MethodPut, tokenPath, status})
		}
		if v != ok {
			return "", v, &statusError{http.MethodPut, tokenPath, status}
		}
		if strings.TrimSpace(body) == "" {
			return "", retry, errors.New("IMDSv2 token answer was empty")
		}
		return strings.TrimSpace(body), ok, nil
	})
	if err != nil {
		return "", 0, err
	}
	r.token = tok
	r.gen++
	return r.token, r.gen, nil
}

// dropToken forgets the token of generation gen after a 401, unless a
// parallel request already replaced it.
func (r *run) dropToken(gen int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen == gen {
		r.token = ""
	}
}

// get reads one metadata path with the session token, retrying per classify.
func (r *run) get(ctx context.Context, k reqKind, path string) (string, error) {
	retokens := 0
	return r.retryLoop(ctx, k, path, func(actx context.Context) (string, verdict, error) {
		// The token fetch has its own retries bounded by the overall
		// deadline, so it uses ctx, not this attempt's short timeout.
		tok, gen, err := r.sessionToken(ctx)
		if err != nil {
			return "", fail, err
		}
		body, status, err := r.c.exchange(actx, http.MethodGet, path, http.Header{
			"X-Aws-Ec2-Metadata-Token": {tok},
		})
		if err != nil {
			return "", retry, err
		}
		v := classify(k, status)
		se := &statusError{http.MethodGet, path, status}
		switch v {
		case ok:
			retokens = 0
			return body, ok, nil
		case retoken:
			r.dropToken(gen)
			if retokens++; retokens > maxRetokens {
				return "", fail, fmt.Errorf("the metadata endpoint rejected %d fresh IMDSv2 tokens: %w", maxRetokens, se)
			}
		}
		return "", v, se
	})
}

// retryLoop runs attempt until it succeeds, fails finally, or the deadline in
// ctx passes; every retry is logged with its cause and the next delay.
func (r *run) retryLoop(ctx context.Context, k reqKind, path string, attempt func(context.Context) (string, verdict, error)) (string, error) {
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		body, v, err := attempt(actx)
		cancel()
		switch v {
		case ok:
			return body, nil
		case fail:
			return "", err
		}
		delay := time.Duration(0)
		if v == retry {
			delay = backoff(n, r.c.jitter())
		}
		if ctx.Err() != nil || !r.fits(ctx, delay) {
			return "", r.giveUp(n, path, err)
		}
		r.c.log.Warn("IMDS request failed; retrying",
			"attempt", n, "path", "/latest/"+path, "cause", err.Error(), "next_delay", delay)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", r.giveUp(n, path, err)
		case <-t.C:
		}
	}
}

// fits reports whether waiting delay still leaves time for another attempt.
func (r *run) fits(ctx context.Context, delay time.Duration) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > delay
}

// giveUp builds the final error after the last failed attempt: the caller's
// cancellation if that is what ended it, otherwise the deadline with the
// endpoint, the time spent and the last cause (kept with %w so callers can
// inspect the status).
func (r *run) giveUp(attempts int, path string, last error) error {
	if err := r.callerEnded(); err != nil {
		// last only as text: a 404 seen before the caller's deadline is no
		// proof that tags are disabled.
		return fmt.Errorf("reading /latest/%s from %s: %w (last cause: %v)", path, r.c.endpoint, err, last)
	}
	return fmt.Errorf("reading /latest/%s from the metadata endpoint %s: gave up after %d attempt(s) in %s "+
		"(is this an EC2 instance with its metadata service enabled? set %s to use another endpoint): %w",
		path, r.c.endpoint, attempts, r.since(), EndpointEnv, last)
}

// callerEnded returns the caller's context error when the caller, not our
// deadline, ends the retries: its ctx is done, or its deadline comes first
// (then we stop as soon as the next delay would not fit).
func (r *run) callerEnded() error {
	if err := r.parent.Err(); err != nil {
		return err
	}
	if dl, ok := r.parent.Deadline(); ok && !dl.After(r.until) {
		return context.DeadlineExceeded
	}
	return nil
}

// exchange performs one HTTP request and returns the body and status.
// Transport failures come back as err; any HTTP status is not an error here.
func (c *Client) exchange(ctx context.Context, method, path string, h http.Header) (string, int, error) {
	// Parsing the joined string keeps the escaped form of tag keys: url.Parse
	// records RawPath, so "a%2Cb" goes on the wire as sent.
	u, err := url.Parse(c.endpoint + "/latest/" + path)
	if err != nil {
		return "", 0, fmt.Errorf("building the IMDS URL from endpoint %q: %w: fix %s", c.endpoint, err, EndpointEnv)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return "", 0, fmt.Errorf("building the IMDS request for %q: %w", path, err)
	}
	req.Header = h
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return "", 0, fmt.Errorf("reading the answer to %s /latest/%s: %w", method, path, err)
	}
	return string(b), resp.StatusCode, nil
}
