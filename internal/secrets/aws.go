package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
	"github.com/redash-agent/redash-agent/internal/backoff"
)

// API is the Secrets Manager calls we use; tests fake it to inject faults
// no real peer produces on demand (access denied, KMS failures).
// BatchGetSecretValue reads every secret of a fetch in one call;
// GetSecretValue is the fallback when the role may not batch, and reads
// the AWSPREVIOUS stage.
type API interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
	BatchGetSecretValue(ctx context.Context, in *secretsmanager.BatchGetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error)
}

var _ API = (*secretsmanager.Client)(nil)

// maxParallel bounds concurrent GetSecretValue calls of the fallback;
// there are about six secrets, so this only matters for odd configurations.
const maxParallel = 8

// Fetcher reads secrets from AWS Secrets Manager.
type Fetcher struct {
	API    API
	Logger *slog.Logger // nil: no logging
	// Region and Endpoint only appear in error messages ("not found in
	// region ...", "no answer from ..."); NewAWS sets them.
	Region   string
	Endpoint string
	// Policy is the time budget of each Fetch; zero fields take Boot's.
	// The retries are ours, not the SDK's: API must make one attempt per
	// call (NewAWS's client does), or the attempts multiply.
	Policy Policy
}

// Option changes what NewAWS builds.
type Option func(*Fetcher)

// WithPolicy sets the Fetcher's time budget: Boot (the default) for a boot,
// Refresh for run's periodic re-fetch, something short in tests.
func WithPolicy(p Policy) Option { return func(f *Fetcher) { f.Policy = p } }

// NewAWS builds a Fetcher from the default AWS configuration: the standard
// credential chain (instance role on EC2), endpoint overrides such as
// AWS_ENDPOINT_URL_SECRETS_MANAGER, and region, falling back to AWS_REGION
// when region is empty. Its time budget is Boot unless an option says
// otherwise. The SDK's own retryer is switched off: Fetch retries
// throttling, 5xx and connection errors within the Policy (each attempt
// logged) and stops at once on any other 4xx.
func NewAWS(ctx context.Context, region string, logger *slog.Logger, opts ...Option) (*Fetcher, error) {
	logger = orDiscard(logger)
	load := []func(*config.LoadOptions) error{
		// One attempt per call: the SDK's standard retryer gives up after a
		// count of attempts whatever the time (five in about half a second
		// on a refused connection), which no boot budget can be built on.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if region != "" {
		load = append(load, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration for Secrets Manager: %w: check the AWS_* environment variables and shared config files", err)
	}
	if cfg.Region == "" {
		return nil, &Error{Config: true, msg: "choosing the AWS region for Secrets Manager: none given: run on EC2 (the region comes from IMDS) or set AWS_REGION"}
	}
	client := secretsmanager.NewFromConfig(cfg)
	f := &Fetcher{API: client, Logger: logger, Region: cfg.Region, Endpoint: endpointOf(ctx, client.Options())}
	for _, o := range opts {
		o(f)
	}
	return f, nil
}

// endpointOf resolves the URL the client sends to, the way the SDK does
// (AWS_ENDPOINT_URL_SECRETS_MANAGER, FIPS and dual-stack settings, region),
// so that a timeout names the host an operator must make reachable.
func endpointOf(ctx context.Context, o secretsmanager.Options) string {
	ep, err := secretsmanager.NewDefaultEndpointResolverV2().ResolveEndpoint(ctx, secretsmanager.EndpointParameters{
		Region:       aws.String(o.Region),
		Endpoint:     o.BaseEndpoint,
		UseFIPS:      aws.Bool(o.EndpointOptions.UseFIPSEndpoint == aws.FIPSEndpointStateEnabled),
		UseDualStack: aws.Bool(o.EndpointOptions.UseDualStackEndpoint == aws.DualStackEndpointStateEnabled),
	})
	if err != nil {
		return ""
	}
	return ep.URI.String()
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// fetched is the outcome of getting one secret id.
type fetched struct {
	out      *secretsmanager.GetSecretValueOutput
	err      error
	attempts int
}

// Fetch gets every ref in parallel, each distinct SecretID once even when
// several refs point into one JSON secret, and returns them keyed by
// Ref.Name with the VersionId they were read at. It returns by the earlier
// of ctx's deadline and the Policy's, whatever the network does. On failure
// it returns one error naming every secret that failed (exitcode.Of
// classifies it) and no secrets.
func (f *Fetcher) Fetch(ctx context.Context, refs []Ref) (map[string]Secret, error) {
	log := orDiscard(f.Logger)
	if err := validateRefs(refs); err != nil {
		return nil, err
	}
	p := f.Policy.orBoot()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()
	// Name the budget that will end the retries, for the error message.
	budget := p.Deadline.String()
	if dl, ok := parent.Deadline(); ok && time.Until(dl) < p.Deadline {
		budget = "caller's " + time.Until(dl).Round(time.Millisecond).String()
	}

	ids := distinctIDs(refs)
	results := f.getAll(ctx, parent, ids, p, budget, log)

	got := make(map[string]Secret, len(refs))
	var errs []error
	for _, r := range refs {
		res := results[r.SecretID]
		if res.err != nil {
			errs = append(errs, f.apiError(r, res.err))
			continue
		}
		v, err := extract(r, res.out)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s := Secret{Ref: r, Value: v, VersionID: aws.ToString(res.out.VersionId)}
		got[r.Name] = s
		log.Info("fetched secret", "name", r.Name, "secret_id", r.SecretID, "json_key", r.JSONKey, "version_id", s.VersionID, "attempts", res.attempts)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return got, nil
}

// getOne reads one secret id with GetSecretValue, retried within p.
func (f *Fetcher) getOne(ctx, parent context.Context, id string, p Policy, budget string, log *slog.Logger) fetched {
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)}
	var out *secretsmanager.GetSecretValueOutput
	attempts, err := f.retry(ctx, parent, p, budget, log.With("secret_id", id), nil, func(actx context.Context) error {
		var err error
		out, err = f.API.GetSecretValue(actx, in)
		if err == nil && out == nil {
			err = errors.New("empty response")
		}
		return err
	})
	if err != nil {
		return fetched{err: err, attempts: attempts}
	}
	return fetched{out: out, attempts: attempts}
}

// retry makes attempts of call, of at most p.AttemptTimeout each, spaced
// by p's backoff, until one succeeds, one fails for good (not retryable,
// or final says so), or ctx (the fetch's deadline) ends. parent is the
// caller's context, to tell its cancellation from our deadline. log
// carries what the call is about (the secret id or ids).
func (f *Fetcher) retry(ctx, parent context.Context, p Policy, budget string, log *slog.Logger, final func(error) bool, call func(context.Context) error) (int, error) {
	start := time.Now()
	var prev error // the previous attempt's failure
	for attempt := 1; ; attempt++ {
		began := time.Now()
		actx, cancel := context.WithTimeout(ctx, p.AttemptTimeout)
		err := call(actx)
		// The attempt's own clock, not the fetch's, cut it short: retry.
		timedOut := err != nil && actx.Err() != nil && ctx.Err() == nil
		// Either clock cut it short while waiting for an answer: the
		// message says "timed out", not the SDK's "canceled".
		if err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) {
			err = &attemptTimeout{after: time.Since(began).Round(time.Millisecond), err: err}
		}
		cancel()
		if err == nil {
			return attempt, nil
		}
		giveUp := func(last error) (int, error) {
			be := &budgetError{attempts: attempt, took: time.Since(start), last: last, caller: parent.Err(), budget: budget, attemptTimeout: p.AttemptTimeout}
			log.Warn("giving up on Secrets Manager request", "endpoint", f.Endpoint,
				"attempts", attempt, "took", be.took.Round(time.Millisecond), "error", last)
			return attempt, be
		}
		if ctx.Err() != nil {
			// The deadline cut this attempt in flight: the previous
			// attempt's answer (a 500, a refusal) says more than "no
			// answer within the few ms that were left".
			if prev != nil {
				return giveUp(prev)
			}
			return giveUp(err)
		}
		prev = err
		if !timedOut && (!retryable(err) || final != nil && final(err)) {
			return attempt, err
		}
		delay := p.backoff(attempt, rand.Float64())
		if left := time.Until(deadlineOf(ctx)); delay < left {
			log.Warn("retrying Secrets Manager request", "endpoint", f.Endpoint,
				"failed_attempt", attempt, "delay", delay.Round(time.Millisecond),
				"budget_left", left.Round(time.Millisecond), "error", err)
		}
		// When the next attempt would start after the deadline, wait for
		// the deadline anyway: a fetch that keeps failing ends when its
		// budget says, not up to BackoffMax earlier, so that "boot rides
		// out a blip of one minute" holds to the second.
		if backoff.Sleep(ctx, delay) != nil {
			return giveUp(err)
		}
	}
}

func deadlineOf(ctx context.Context) time.Time {
	dl, _ := ctx.Deadline()
	return dl
}

// retryable reports whether a failed attempt may succeed if repeated:
// throttling, any 5xx or 429, and connection errors, as the SDK's standard
// retryer classifies them. Any other answer (not found, access denied, KMS,
// a bad request) is final: no retry can change it.
func retryable(err error) bool {
	var status interface{ HTTPStatusCode() int }
	if errors.As(err, &status) && (status.HTTPStatusCode() >= 500 || status.HTTPStatusCode() == http.StatusTooManyRequests) {
		return true
	}
	if retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err) == aws.TrueTernary {
		return true
	}
	return retry.IsErrorRetryables(retry.DefaultRetryables).IsErrorRetryable(err) == aws.TrueTernary
}

// attemptTimeout is an attempt cut short by Policy.AttemptTimeout.
type attemptTimeout struct {
	after time.Duration
	err   error
}

func (e *attemptTimeout) Error() string {
	return fmt.Sprintf("no answer within %s", e.after)
}
func (e *attemptTimeout) Unwrap() error { return e.err }

// budgetError is a fetch of one id that ran out of time (its Policy's
// deadline or the caller's) while retrying; last is the last attempt's
// failure, caller the caller's context error if the caller ended it.
type budgetError struct {
	attempts int
	took     time.Duration
	last     error
	caller   error
	budget   string // "60s", or "caller's 12s" when the caller's deadline came first

	attemptTimeout time.Duration // Policy.AttemptTimeout, for the message
}

func (e *budgetError) Error() string {
	return fmt.Sprintf("%d attempt(s) in %s, last: %v", e.attempts, e.took.Round(time.Millisecond), e.last)
}
func (e *budgetError) Unwrap() error { return e.last }

// validateRefs rejects refs no fetch could satisfy: a caller bug or a bad
// configuration, reported before any network call.
func validateRefs(refs []Ref) error {
	seen := map[string]bool{}
	var errs []error
	for _, r := range refs {
		switch {
		case r.Name == "":
			errs = append(errs, &Error{SecretID: r.SecretID, Config: true, msg: fmt.Sprintf("secret with id %q has no logical name: give every secret reference a name", r.SecretID)})
		case seen[r.Name]:
			errs = append(errs, &Error{Name: r.Name, Config: true, msg: fmt.Sprintf("secret %q is referenced twice: configure each logical secret once", r.Name)})
		case r.SecretID == "":
			errs = append(errs, &Error{Name: r.Name, Config: true, msg: fmt.Sprintf("secret %q has an empty secret id: set tag %s to a secret name or ARN", r.Name, tagFor(r.Name))})
		}
		seen[r.Name] = true
	}
	return errors.Join(errs...)
}

// apiError turns an SDK error into a per-secret error that says what to do.
// AWS error messages name ARNs and principals, never secret values, so they
// are kept as hints.
func (f *Fetcher) apiError(r Ref, err error) *Error {
	in := ""
	if f.Region != "" {
		in = " in region " + f.Region
	}
	var (
		notFound   *types.ResourceNotFoundException
		decrypt    *types.DecryptionFailure
		invalidReq *types.InvalidRequestException
		invalidPar *types.InvalidParameterException
		apiErr     smithy.APIError
	)
	switch {
	case errors.As(err, &notFound):
		e := configErr(r, err, "not found%s: create it, or point tag %s at the right id", in, tagFor(r.Name))
		e.kind = ErrNotFound
		return e
	case errors.As(err, &decrypt):
		return configErr(r, err, "cannot be decrypted%s (AWS: %s): grant the instance role kms:Decrypt on the secret's KMS key, allowed via Secrets Manager (condition kms:ViaService = secretsmanager.<region>.amazonaws.com)", in, decrypt.ErrorMessage())
	case errors.As(err, &apiErr) && (apiErr.ErrorCode() == "AccessDeniedException" || apiErr.ErrorCode() == "AccessDenied"):
		if strings.Contains(strings.ToLower(apiErr.ErrorMessage()), "kms") {
			return configErr(r, err, "cannot be decrypted%s: access to its KMS key denied (AWS: %s): grant the instance role kms:Decrypt on that key, allowed via Secrets Manager", in, apiErr.ErrorMessage())
		}
		e := configErr(r, err, "cannot be read%s: access denied (AWS: %s): grant the instance role secretsmanager:GetSecretValue on %q", in, apiErr.ErrorMessage(), r.SecretID)
		e.kind = ErrAccessDenied
		return e
	case errors.As(err, &invalidReq):
		// For GetSecretValue this means the secret is scheduled for deletion.
		return configErr(r, err, "cannot be read%s (AWS: %s): restore it with `aws secretsmanager restore-secret`, or point tag %s at a live secret", in, invalidReq.ErrorMessage(), tagFor(r.Name))
	case errors.As(err, &invalidPar):
		return configErr(r, err, "was rejected%s (AWS: %s): fix tag %s to hold a secret name or ARN", in, invalidPar.ErrorMessage(), tagFor(r.Name))
	}
	return f.transientError(r, err, in)
}

// transientError is the message for a secret Secrets Manager did not refuse
// but did not deliver either: the network, throttling or 5xx until the
// budget ran out, or an error retries are not known to fix. Exit status 1:
// systemd restarts the agent, which tries again.
func (f *Fetcher) transientError(r Ref, err error, in string) *Error {
	from := ""
	if f.Endpoint != "" {
		from = " from " + f.Endpoint
	}
	network := "check network access from this instance to the Secrets Manager endpoint" + from +
		" (security group egress, a route to a NAT gateway, or an interface VPC endpoint for secretsmanager with private DNS)"
	var be *budgetError
	var at *attemptTimeout
	var msg string
	switch {
	case errors.As(err, &be) && be.caller != nil:
		msg = fmt.Sprintf("fetching %s%s%s: stopped by the caller after %v: %v", describe(r), in, from, be, be.caller)
	case errors.As(err, &be) && errors.As(err, &at):
		msg = fmt.Sprintf("fetching %s%s%s: timed out: no answer within %s per attempt (%v): %s; the agent tries again when it restarts",
			describe(r), in, from, be.attemptTimeout, be, network)
	case errors.As(err, &be):
		msg = fmt.Sprintf("fetching %s%s%s: %v: Secrets Manager or the network kept failing after retries until the %s budget ran out: %s; the agent tries again when it restarts",
			describe(r), in, from, be, be.budget, network)
	default:
		msg = fmt.Sprintf("fetching %s%s%s: %v: not retried, as retrying is not known to help with this error; the agent tries again when it restarts",
			describe(r), in, from, err)
	}
	return &Error{Name: r.Name, SecretID: r.SecretID, err: err, msg: msg}
}

// extract picks the value out of a fetched secret. JSON decoding errors are
// never wrapped: their text quotes characters of the secret.
func extract(r Ref, out *secretsmanager.GetSecretValueOutput) (Value, error) {
	if out.SecretString == nil {
		if out.SecretBinary != nil {
			return Value{}, configErr(r, nil, "holds SecretBinary; only SecretString is supported: store the value with --secret-string")
		}
		return Value{}, configErr(r, nil, "has no value: store one with `aws secretsmanager put-secret-value --secret-id %s --secret-string ...`", r.SecretID)
	}
	s := *out.SecretString
	if r.JSONKey == "" {
		if s == "" {
			return Value{}, configErr(r, nil, "is empty: store a value in it")
		}
		if IsBlank(s) {
			return Value{}, configErr(r, nil, "holds only whitespace: store the real value in it (without a trailing newline from a file or echo)")
		}
		return NewValue(s), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &obj); err != nil || obj == nil {
		return Value{}, configErr(r, nil, "is not a JSON object, so key %q cannot be read: store a JSON object in the secret, or drop %q from tag %s", r.JSONKey, "#"+r.JSONKey, tagFor(r.Name))
	}
	raw, ok := obj[r.JSONKey]
	if !ok {
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return Value{}, configErr(r, nil, "has no such JSON key (keys present: %s): fix the key after '#' in tag %s, or add the key to the secret", quoteList(keys), tagFor(r.Name))
	}
	v, ok := jsonScalar(raw)
	if !ok {
		return Value{}, configErr(r, nil, "is not a string or number: store the value under that key as a JSON string")
	}
	if v == "" {
		return Value{}, configErr(r, nil, "is empty: store a value under that key")
	}
	if IsBlank(v) {
		return Value{}, configErr(r, nil, "holds only whitespace: store the real value under that key")
	}
	return NewValue(v), nil
}

// jsonScalar returns a JSON string's text or a JSON number's literal (RDS
// secrets hold the port as a number).
func jsonScalar(raw json.RawMessage) (string, bool) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, true
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), true
	}
	return "", false
}

// distinctIDs lists each secret id of refs once, in order: several refs may
// point into one JSON secret, which is read once.
func distinctIDs(refs []Ref) []string {
	var ids []string
	for _, r := range refs {
		if !slices.Contains(ids, r.SecretID) {
			ids = append(ids, r.SecretID)
		}
	}
	return ids
}
