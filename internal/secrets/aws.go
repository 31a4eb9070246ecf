package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
)

// API is the one Secrets Manager call we use; tests fake it to inject faults
// no real peer produces on demand (access denied, KMS failures).
type API interface {
	GetSecretValue(ctx context.Context, in *secretsmanager.GetSecretValueInput, optFns ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error)
}

var _ API = (*secretsmanager.Client)(nil)

// Retry policy for boot: patient enough to ride out throttling and a brief
// Secrets Manager or network hiccup (worst case about half a minute), short
// enough that systemd's own restart takes over from there.
const (
	maxAttempts = 5
	maxBackoff  = 10 * time.Second
	// maxParallel bounds concurrent GetSecretValue calls; there are about six
	// secrets, so this only matters for odd configurations.
	maxParallel = 8
)

// Fetcher reads secrets from AWS Secrets Manager.
type Fetcher struct {
	API    API
	Logger *slog.Logger // nil: no logging
	// Region only appears in error messages ("not found in region ...");
	// NewAWS sets it.
	Region string
}

// NewAWS builds a Fetcher from the default AWS configuration: the standard
// credential chain (instance role on EC2), endpoint overrides such as
// AWS_ENDPOINT_URL_SECRETS_MANAGER, and region, falling back to AWS_REGION
// when region is empty. Its retryer is the SDK's standard mode (throttling,
// 5xx and network errors retried with exponential backoff and jitter, 4xx
// final), bounded to a few attempts, and logs every retry.
func NewAWS(ctx context.Context, region string, logger *slog.Logger) (*Fetcher, error) {
	return newAWS(ctx, region, logger)
}

// newAWS lets tests shrink the backoff; production uses the defaults above.
func newAWS(ctx context.Context, region string, logger *slog.Logger, tune ...func(*retry.StandardOptions)) (*Fetcher, error) {
	logger = orDiscard(logger)
	opts := []func(*config.LoadOptions) error{
		config.WithRetryer(func() aws.Retryer { return newRetryer(logger, tune...) }),
	}
	if region != "" {
		opts = append(opts, config.WithRegion(region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration for Secrets Manager: %w: check the AWS_* environment variables and shared config files", err)
	}
	if cfg.Region == "" {
		return nil, &Error{Config: true, msg: "choosing the AWS region for Secrets Manager: none given: run on EC2 (the region comes from IMDS) or set AWS_REGION"}
	}
	return &Fetcher{API: secretsmanager.NewFromConfig(cfg), Logger: logger, Region: cfg.Region}, nil
}

func newRetryer(logger *slog.Logger, tune ...func(*retry.StandardOptions)) aws.RetryerV2 {
	std := retry.NewStandard(append([]func(*retry.StandardOptions){func(o *retry.StandardOptions) {
		o.MaxAttempts = maxAttempts
		o.MaxBackoff = maxBackoff
	}}, tune...)...)
	return loggingRetryer{RetryerV2: std, logger: logger}
}

// loggingRetryer is the SDK's standard retryer plus one log line per retry,
// so a slow boot shows in the journal why it is slow. The SDK asks for the
// delay only once it has decided to retry, which makes RetryDelay the hook.
type loggingRetryer struct {
	aws.RetryerV2
	logger   *slog.Logger
	secretID string // set per call by withSecretID
}

func (r loggingRetryer) RetryDelay(attempt int, err error) (time.Duration, error) {
	d, derr := r.RetryerV2.RetryDelay(attempt, err)
	if derr == nil {
		r.logger.Warn("retrying Secrets Manager request",
			"secret_id", r.secretID, "failed_attempt", attempt, "max_attempts", r.MaxAttempts(),
			"delay", d.Round(time.Millisecond), "error", err)
	}
	return d, derr
}

// withSecretID makes the retry log name the secret being fetched. The
// retryer value is copied per call; its token bucket is shared through the
// embedded pointer, as the SDK intends.
func withSecretID(id string) func(*secretsmanager.Options) {
	return func(o *secretsmanager.Options) {
		if lr, ok := o.Retryer.(loggingRetryer); ok {
			lr.secretID = id
			o.Retryer = lr
		}
	}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return l
}

// Fetch gets every ref in parallel, each distinct SecretID once even when
// several refs point into one JSON secret, and returns them keyed by
// Ref.Name with the VersionId they were read at. On failure it returns one
// error naming every secret that failed (exitcode.Of classifies it) and no
// secrets.
func (f *Fetcher) Fetch(ctx context.Context, refs []Ref) (map[string]Secret, error) {
	log := orDiscard(f.Logger)
	if err := validateRefs(refs); err != nil {
		return nil, err
	}

	type result struct {
		out *secretsmanager.GetSecretValueOutput
		err error
	}
	var ids []string
	for _, r := range refs {
		if !slices.Contains(ids, r.SecretID) {
			ids = append(ids, r.SecretID)
		}
	}
	results := make([]result, len(ids))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				results[i].err = ctx.Err()
				return
			}
			defer func() { <-sem }()
			out, err := f.API.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(id)}, withSecretID(id))
			if err == nil && out == nil {
				err = errors.New("empty response")
			}
			results[i] = result{out: out, err: err}
		})
	}
	wg.Wait()

	got := make(map[string]Secret, len(refs))
	var errs []error
	for _, r := range refs {
		res := results[slices.Index(ids, r.SecretID)]
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
		log.Info("fetched secret", "name", r.Name, "secret_id", r.SecretID, "json_key", r.JSONKey, "version_id", s.VersionID)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return got, nil
}

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
	return &Error{Name: r.Name, SecretID: r.SecretID, err: err,
		msg: fmt.Sprintf("fetching %s%s: %v: Secrets Manager or the network kept failing after retries; the agent tries again when it restarts", describe(r), in, err)}
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
