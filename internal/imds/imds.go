// Package imds reads the instance id, region and instance tags from the EC2
// instance metadata service, IMDSv2 only, through the AWS SDK's IMDS client.
//
// Side effects: HTTP requests to the metadata endpoint (never through a
// proxy) and reading the AWS shared config file, nothing else. The endpoint
// is Options.Endpoint, else the SDK's standard settings
// (AWS_EC2_METADATA_SERVICE_ENDPOINT, then ec2_metadata_service_endpoint of
// the shared config profile), else http://169.254.169.254;
// AWS_EC2_METADATA_DISABLED=true turns the client off.
//
// The SDK client keeps the session token; this package owns the policy. It
// never falls back to IMDSv1: a refused token request is an error, and one
// the instance's metadata options cause (401, 403, 404, 405) carries exit
// status 3 (exitcode), as no restart can fix it. At boot
// the metadata service and the instance tags can appear late, so connection
// errors, 5xx, 429 and a 404 on the tags are retried with jittered
// exponential backoff until Options.Deadline, and every retry is logged.
package imds

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	pathpkg "path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	sdkimds "github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"github.com/redash-agent/redash-agent/internal/backoff"
	"golang.org/x/sync/errgroup"

	"github.com/redash-agent/redash-agent/internal/exitcode"
)

const (
	// DefaultEndpoint is the link-local address of IMDS on every EC2 instance.
	DefaultEndpoint = "http://169.254.169.254"
	// EndpointEnv is the AWS SDK's standard setting for the IMDS endpoint;
	// tests and users point the agent elsewhere with it.
	EndpointEnv = "AWS_EC2_METADATA_SERVICE_ENDPOINT"
	// disabledEnv is the SDK's standard switch that turns IMDS clients off.
	disabledEnv = "AWS_EC2_METADATA_DISABLED"

	// DefaultDeadline bounds how long Instance keeps retrying at boot.
	DefaultDeadline = 2 * time.Minute

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
)

// ErrTagsNotEnabled means the tag listing answered 404 until the deadline:
// instance metadata tags are not enabled on the instance (or it has no tags).
// A caller may branch on it with errors.Is.
var ErrTagsNotEnabled = errors.New("instance metadata tags are not enabled")

// Options configures a Client. The zero value is ready for an EC2 instance.
type Options struct {
	Endpoint string        // "" = the SDK's standard settings or http://169.254.169.254
	Deadline time.Duration // total time to keep retrying; 0 = 2 minutes
	// TagsDeadline, when shorter than Deadline, bounds how long a 404 on the
	// tag listing is retried once IMDS itself has answered. A host that has
	// nothing else to go by uses it to tell "not configured" quickly.
	TagsDeadline time.Duration
	HTTPClient   *http.Client // nil = a client that never uses a proxy and ends one exchange after 3s
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
	cfg      aws.Config // the SDK's settings
	cfgErr   error      // reported by Instance, which can return an error
	endpoint string
	off      bool // AWS_EC2_METADATA_DISABLED=true
	deadline time.Duration
	tagsDL   time.Duration // 0: the tag listing gets the whole deadline
	hc       *http.Client
	log      *slog.Logger

	// The SDK client of TargetLifecycleState, made at its first call.
	lifecycleOnce sync.Once
	lifecycleSDK  *sdkimds.Client
}

// New returns a Client for o. It reads the SDK's settings once, here.
func New(o Options) *Client {
	c := &Client{deadline: o.Deadline, tagsDL: o.TagsDeadline, hc: o.HTTPClient, log: o.Logger}
	// This reads the environment and the shared config files; the
	// credentials it sets up are never retrieved.
	c.cfg, c.cfgErr = config.LoadDefaultConfig(context.Background())
	endpoint, off := fromSDK(c.cfg.ConfigSources)
	c.endpoint, c.off = strings.TrimRight(cmp.Or(o.Endpoint, endpoint), "/"), off
	if c.deadline <= 0 {
		c.deadline = DefaultDeadline
	}
	if c.hc == nil {
		// IMDS is link-local: it is never reachable through a proxy, and an
		// HTTP_PROXY meant for image pulls must not swallow our requests.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		tr.DialContext = (&net.Dialer{Timeout: time.Second}).DialContext
		c.hc = &http.Client{Transport: tr, Timeout: attemptTimeout}
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	return c
}

// ResolveEndpoint returns the endpoint New uses for the given option value.
func ResolveEndpoint(option string) string {
	cfg, _ := config.LoadDefaultConfig(context.Background()) // a broken file is Instance's to report
	endpoint, _ := fromSDK(cfg.ConfigSources)
	return cmp.Or(option, endpoint)
}

// fromSDK reads the IMDS settings in the SDK's order: the environment, then
// the shared config profile. We hand the endpoint to the SDK explicitly, so
// the one our messages name is the one it talks to; and we check "off"
// first because the SDK's own refusal does not say what to do.
func fromSDK(sources []any) (endpoint string, off bool) {
	var mode sdkimds.EndpointModeState
	for _, s := range sources {
		switch s := s.(type) {
		case config.EnvConfig:
			endpoint, mode = cmp.Or(endpoint, s.EC2IMDSEndpoint), cmp.Or(mode, s.EC2IMDSEndpointMode)
			off = s.EC2IMDSClientEnableState == sdkimds.ClientDisabled
		case config.SharedConfig:
			endpoint, mode = cmp.Or(endpoint, s.EC2IMDSEndpoint), cmp.Or(mode, s.EC2IMDSEndpointMode)
		}
	}
	if endpoint == "" && mode == sdkimds.EndpointModeStateIPv6 {
		endpoint = "http://[fd00:ec2::254]"
	}
	return cmp.Or(endpoint, DefaultEndpoint), off
}

// Endpoint returns the metadata endpoint the client talks to.
func (c *Client) Endpoint() string { return c.endpoint }

// Instance reads the instance id, the region and every instance tag. It keeps
// retrying transient failures until the client's deadline or ctx ends.
func (c *Client) Instance(ctx context.Context) (Instance, error) {
	if c.cfgErr != nil {
		return Instance{}, fmt.Errorf("loading the AWS SDK configuration for IMDS: %w: fix the file AWS_CONFIG_FILE or AWS_PROFILE names", c.cfgErr)
	}
	if c.off {
		return Instance{}, fmt.Errorf("reading instance metadata: turned off by %s=true in the environment: unset it "+
			"(the agent reads its instance tags and region from IMDS), or use `provider: local` on a host without EC2", disabledEnv)
	}
	if u, err := url.Parse(c.endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return Instance{}, fmt.Errorf("using the metadata endpoint %q: not an http:// URL: fix %s or the endpoint option", c.endpoint, EndpointEnv)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	r := &run{c: c, parent: parent, start: time.Now(), until: time.Now().Add(c.deadline)}
	// One SDK client per call: its token, and the retryer that fetches it,
	// belong to this call's deadline.
	r.sdk = sdkimds.NewFromConfig(c.cfg, func(o *sdkimds.Options) {
		o.Endpoint = c.endpoint
		o.EnableFallback = aws.FalseTernary // never IMDSv1
		o.HTTPClient = c.hc
		o.Retryer = &retryer{r: r, kind: kindToken, path: "/latest/api/token", ctx: ctx}
		o.DisableDefaultMaxBackoff = true // our backoff has its own cap
	})

	id, err := r.get(ctx, kindMeta, "instance-id")
	if err != nil {
		return Instance{}, fmt.Errorf("reading the instance id: %w", err)
	}
	id = strings.TrimSpace(id)
	region, err := r.get(ctx, kindMeta, "placement/region")
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
	listing, err := r.get(tagsCtx, kindTags, "tags/instance")
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
	var mu sync.Mutex
	tags := make(map[string]string, len(keys))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(tagWorkers)
	for _, k := range keys {
		g.Go(func() error {
			v, err := r.get(gctx, kindTag, "tags/instance/"+k)
			if err != nil {
				return fmt.Errorf("reading tag %q: %w", k, err)
			}
			mu.Lock()
			defer mu.Unlock()
			tags[k] = v
			return nil
		})
	}
	return tags, g.Wait()
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

// verdict is what the retryer does with one failed attempt.
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

// retryPolicy: the first retry is fast because IMDS usually answers within
// milliseconds once up; the cap keeps a boot from idling long after tags
// appear.
var retryPolicy = backoff.Policy{Base: 100 * time.Millisecond, Max: 5 * time.Second}

// statusError is a non-200 answer from IMDS.
type statusError struct {
	method, path string
	status       int
}

func (e *statusError) Error() string {
	return fmt.Sprintf("%s %s answered %d %s", e.method, e.path, e.status, http.StatusText(e.status))
}

// run is one Instance call: its SDK client (and so its session token), its
// deadline, and why the token could not be had, for the GETs that needed it.
type run struct {
	c      *Client
	sdk    *sdkimds.Client
	parent context.Context // the caller's ctx, to tell its cancellation from our deadline
	start  time.Time
	until  time.Time // our own deadline, to tell it from a shorter one of the caller

	mu       sync.Mutex
	tokenErr error // why the last token fetch failed, see retryer.judge
	hinted   bool  // the off-EC2 hint is logged once per call
}

// OffEC2Hint is how to run the agent where no metadata service answers.
const OffEC2Hint = "not on EC2? run `redash-agent up --provider local` (or put `provider: local` in /etc/redash-agent/config.yaml) " +
	"to run Redash on any Docker host without AWS"

// hintNoAnswer logs, at the first attempt nothing answered, that no
// metadata service answers and how to run off EC2. The retries go on: at
// boot IMDS can answer late, and the full deadline is kept for that.
func (r *run) hintNoAnswer(cause error) {
	r.mu.Lock()
	first := !r.hinted
	r.hinted = true
	r.mu.Unlock()
	if first {
		r.c.log.Warn("no EC2 instance metadata service answers at "+r.c.endpoint+"; retrying until the deadline, as a metadata service "+
			"can be slow at boot; "+OffEC2Hint, "endpoint", r.c.endpoint, "cause", cause.Error(), "deadline", r.c.deadline)
	}
}

func (r *run) since() time.Duration { return time.Since(r.start).Round(time.Millisecond) }

// get reads one path below /latest/meta-data/. The SDK adds the token and
// runs the attempts; a retryer of this call's own holds the policy and, when
// it ends the call, the error to report.
func (r *run) get(ctx context.Context, k reqKind, path string) (string, error) {
	t := &retryer{r: r, kind: k, path: "/latest/meta-data/" + path, ctx: ctx}
	out, err := r.sdk.GetMetadata(ctx, &sdkimds.GetMetadataInput{Path: path}, func(o *sdkimds.Options) {
		o.Retryer = t
		if k == kindTag {
			// A key must stay one path segment: the SDK would send a ',' as is.
			dir, key := pathpkg.Split(t.path)
			o.APIOptions = append(o.APIOptions, rawPath(dir+url.PathEscape(key)))
		}
	})
	if err != nil {
		// No t.err: the SDK stopped without asking t, as ctx ended before an
		// attempt or during a backoff.
		return "", cmp.Or(t.err, r.giveUp(t.tries, t.path, err))
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	if err != nil {
		return "", fmt.Errorf("reading the answer to GET %s: %w", t.path, err)
	}
	return string(b), nil
}

// rawPath sets the escaped form of the request path, which the SDK leaves
// empty.
func rawPath(raw string) func(*middleware.Stack) error {
	return func(s *middleware.Stack) error {
		return s.Serialize.Insert(middleware.SerializeMiddlewareFunc("RawPath",
			func(ctx context.Context, in middleware.SerializeInput, next middleware.SerializeHandler) (middleware.SerializeOutput, middleware.Metadata, error) {
				if req, ok := in.Request.(*smithyhttp.Request); ok {
					req.URL.RawPath = raw
				}
				return next.HandleSerialize(ctx, in)
			}), "OperationSerializer", middleware.After)
	}
}

// retryer is one request's SDK retry policy (aws.RetryerV2): classify
// decides, backoff spaces the attempts and the deadline of ctx ends them
// (MaxAttempts 0: time bounds them, not a count); err is why they ended, in
// our words. The token's retryer serves one fetch at a time (the SDK holds a
// lock while fetching), a GET's retryer one call.
type retryer struct {
	r               *run
	kind            reqKind
	path            string // "/latest/...", for messages
	ctx             context.Context
	tries, retokens int
	err             error
}

var _ aws.RetryerV2 = (*retryer)(nil)

func nop(error) error { return nil }

func (t *retryer) MaxAttempts() int                                                { return 0 }
func (t *retryer) GetInitialToken() func(error) error                              { return nop }
func (t *retryer) GetRetryToken(context.Context, error) (func(error) error, error) { return nop, nil }
func (t *retryer) GetAttemptToken(context.Context) (func(error) error, error)      { return nop, nil }

// judge classifies one failed attempt and puts its cause in our words.
func (t *retryer) judge(err error) (verdict, error) {
	method := http.MethodGet
	if t.kind == kindToken {
		method = http.MethodPut
	}
	// The SDK's token provider wraps its errors in a type without Unwrap
	// whose RetryableError is true for a GET answered 401 (the SDK has
	// dropped the token) and false for a failed token fetch (the token's
	// retryer has retried it and kept why in run.tokenErr).
	var mark interface{ RetryableError() bool }
	var re *smithyhttp.ResponseError
	switch {
	case errors.As(err, &mark) && mark.RetryableError():
		return retoken, &statusError{method, t.path, http.StatusUnauthorized}
	case mark != nil:
		t.r.mu.Lock()
		defer t.r.mu.Unlock()
		return fail, cmp.Or(t.r.tokenErr, err)
	case t.kind != kindToken && errors.As(err, &re) && re.Response != nil && re.Response.Request != nil &&
		re.Response.Request.Method == http.MethodPut:
		// The SDK hands a 400 on the token PUT to the GET unmarked; it is
		// the token's failure, already judged and explained by its retryer.
		t.r.mu.Lock()
		defer t.r.mu.Unlock()
		return fail, cmp.Or(t.r.tokenErr, err)
	case errors.As(err, &re):
		return classify(t.kind, re.HTTPStatusCode()), &statusError{method, t.path, re.HTTPStatusCode()}
	case t.kind == kindToken && errors.As(err, new(*strconv.NumError)):
		// The SDK needs the TTL header IMDS sends with every token; an
		// answer without it will not grow one.
		return fail, fmt.Errorf("the token answer from %s lacks a valid X-Aws-Ec2-Metadata-Token-Ttl-Seconds header: "+
			"is this endpoint IMDS? check %s: %w", t.r.c.endpoint, EndpointEnv, err)
	}
	return retry, err // no answer: refused, reset or timed out
}

func (t *retryer) IsErrorRetryable(err error) bool {
	t.tries++
	v, cause := t.judge(err)
	switch {
	case v == retry:
		return true
	case v == retoken && t.retokens < maxRetokens:
		t.retokens++
		return true
	case v == retoken:
		cause = fmt.Errorf("the metadata endpoint rejected %d fresh IMDSv2 tokens: %w", maxRetokens, cause)
	case t.kind == kindToken && errors.As(cause, new(*statusError)):
		cause = tokenRefused(t.r.c.endpoint, cause.(*statusError))
	}
	t.end(cause)
	return false
}

// tokenRefused explains a token PUT that IMDS answered with a final status.
// A 401, 403, 404 or 405 means the instance's metadata options (or the
// endpoint setting) refuse IMDSv2 tokens: that stays so until a person
// changes them, so the error carries exit status 3 and systemd does not
// restart the agent every RestartSec for nothing. A 400 means we sent a bad
// TTL: a bug, exit 1.
func tokenRefused(endpoint string, se *statusError) error {
	if se.status == http.StatusBadRequest {
		return fmt.Errorf("IMDSv2 token refused with %d %s by %s: %w: the token request was malformed (a redash-agent bug: report it) "+
			"or %s names something other than IMDS", se.status, http.StatusText(se.status), endpoint, se, EndpointEnv)
	}
	return exitcode.ConfigError(fmt.Errorf("IMDSv2 token refused with %d %s by %s: %w: check the instance's metadata options "+
		"(`aws ec2 describe-instances --query 'Reservations[].Instances[].MetadataOptions'`): "+
		"HttpEndpoint must be enabled, HttpTokens required or optional, and HttpPutResponseHopLimit 2 or more "+
		"when the agent runs in a container; set them in the launch template's MetadataOptions or with "+
		"`aws ec2 modify-instance-metadata-options`; a proxy that adds X-Forwarded-For is refused too, and %s "+
		"must name IMDS if set. redash-agent never falls back to IMDSv1",
		se.status, http.StatusText(se.status), endpoint, se, EndpointEnv))
}

// RetryDelay returns the backoff before the next attempt, or ends the
// request when that attempt could not start before the deadline (ctx always
// has one: Instance sets it).
func (t *retryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	v, cause := t.judge(err)
	var delay time.Duration // a 401 is retried at once: the SDK fetches a new token
	if v == retry {
		delay = retryPolicy.Next(attempt)
	}
	if dl, _ := t.ctx.Deadline(); t.ctx.Err() != nil || time.Until(dl) <= delay {
		return 0, t.end(t.r.giveUp(attempt, t.path, cause))
	}
	if v == retry && !errors.As(cause, new(*statusError)) {
		t.r.hintNoAnswer(cause)
	}
	t.r.c.log.Warn("IMDS request failed; retrying",
		"attempt", attempt, "path", t.path, "cause", cause.Error(), "next_delay", delay)
	return delay, nil
}

// end records why the attempts ended; the token's reason is also kept for
// the GETs that waited on it.
func (t *retryer) end(err error) error {
	t.err = err
	if t.kind == kindToken {
		t.r.mu.Lock()
		t.r.tokenErr = err
		t.r.mu.Unlock()
	}
	return err
}

// giveUp builds the final error after the last failed attempt: the caller's
// cancellation if that is what ended it, otherwise the deadline with the
// endpoint, the time spent and the last cause (kept with %w so callers can
// inspect the status).
func (r *run) giveUp(attempts int, path string, last error) error {
	if err := r.callerEnded(); err != nil {
		// last only as text: a 404 seen before the caller's deadline is no
		// proof that tags are disabled.
		return fmt.Errorf("reading %s from %s: %w (last cause: %v)", path, r.c.endpoint, err, last)
	}
	return fmt.Errorf("reading %s from the metadata endpoint %s: gave up after %d attempt(s) in %s "+
		"(is this an EC2 instance with its metadata service enabled? set %s to use another endpoint; %s): %w",
		path, r.c.endpoint, attempts, r.since(), EndpointEnv, OffEC2Hint, last)
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
