package secrets

// One BatchGetSecretValue call reads every secret of a fetch. Today's seed
// has five secret ids (RDS/User, RDS/Password, CookieSecret, SecretKey and
// the Redis token), so a refresh or a version look costs one API call
// instead of five: an instance polling every 10 s makes 259,200 calls a
// month (about $1.30 at $0.05 per 10,000), a fifth of what five
// GetSecretValue calls per look would cost.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"
)

// batchMax is BatchGetSecretValue's limit of ids per call (SecretIdList).
const batchMax = 20

// batchRetryAfter is how long a process keeps to single calls after the
// batch call was refused, before trying it again (an operator may have
// granted the permission since).
const batchRetryAfter = time.Hour

var (
	// batchRefused maps an endpoint ("<url>|<region>") to when it refused
	// the batch call; batchLogged to whether that was logged yet.
	batchRefused sync.Map
	batchLogged  sync.Map
)

func (f *Fetcher) endpointKey() string { return f.Endpoint + "|" + f.Region }

// batchAllowed reports whether to try the batch call: not within
// batchRetryAfter of a refusal by the same endpoint. A Fetcher without an
// Endpoint (tests) always tries.
func (f *Fetcher) batchAllowed() bool {
	if f.Endpoint == "" {
		return true
	}
	at, ok := batchRefused.Load(f.endpointKey())
	return !ok || time.Since(at.(time.Time)) > batchRetryAfter
}

// noteBatchRefused remembers the refusal and logs it, with the fix, once
// per process and endpoint.
func (f *Fetcher) noteBatchRefused(err error) {
	if f.Endpoint != "" {
		batchRefused.Store(f.endpointKey(), time.Now())
	}
	if _, logged := batchLogged.LoadOrStore(f.endpointKey(), true); logged {
		return
	}
	orDiscard(f.Logger).Warn("Secrets Manager refused BatchGetSecretValue: reading each secret with its own GetSecretValue call instead, which costs one API call per secret on every refresh and version look; "+
		"grant the instance role secretsmanager:BatchGetSecretValue on Resource \"*\" (the action takes no resource ARN) and restart the agent",
		"endpoint", f.Endpoint, "error", err)
}

// batchUnsupported reports whether err refuses the batch call as such: the
// role lacks the permission, or the endpoint does not know the action. A
// refusal of one secret comes back in the output's Errors, not here.
func batchUnsupported(err error) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode() {
		case "AccessDeniedException", "AccessDenied", "UnknownOperationException", "InvalidAction", "NotImplemented", "UnsupportedOperation":
			return true
		}
	}
	var status interface{ HTTPStatusCode() int }
	return errors.As(err, &status) && status.HTTPStatusCode() == 501
}

// getAll reads every id: with BatchGetSecretValue when allowed, and with
// one GetSecretValue per id (in parallel) for whatever the batch did not
// answer: all of them when the batch call is refused, or an id whose
// per-secret error is worth a retry.
func (f *Fetcher) getAll(ctx, parent context.Context, ids []string, p Policy, budget string, log *slog.Logger) map[string]fetched {
	results := make(map[string]fetched, len(ids))
	rest := ids
	if f.batchAllowed() {
		rest = f.batch(ctx, parent, ids, p, budget, log, results)
	}
	single := make([]fetched, len(rest))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i, id := range rest {
		wg.Go(func() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				single[i] = fetched{err: &budgetError{last: ctx.Err(), caller: parent.Err(), took: time.Since(start), budget: budget}}
				return
			}
			defer func() { <-sem }()
			single[i] = f.getOne(ctx, parent, id, p, budget, log)
		})
	}
	wg.Wait()
	for i, id := range rest {
		results[id] = single[i]
	}
	return results
}

// batch reads ids with BatchGetSecretValue, batchMax per call, following
// NextToken, and stores each answered id's outcome in results. It returns
// the ids left for single calls.
func (f *Fetcher) batch(ctx, parent context.Context, ids []string, p Policy, budget string, log *slog.Logger, results map[string]fetched) []string {
	var rest []string
	for lo := 0; lo < len(ids); lo += batchMax {
		chunk := ids[lo:min(lo+batchMax, len(ids))]
		answered := map[string]bool{}
		in := &secretsmanager.BatchGetSecretValueInput{SecretIdList: chunk}
		for page := 0; ; page++ {
			var out *secretsmanager.BatchGetSecretValueOutput
			attempts, err := f.retry(ctx, parent, p, budget, log.With("secret_ids", strings.Join(chunk, ",")), batchUnsupported, func(actx context.Context) error {
				var err error
				out, err = f.API.BatchGetSecretValue(actx, in)
				if err == nil && out == nil {
					err = errors.New("empty response")
				}
				return err
			})
			if err != nil && batchUnsupported(err) && page == 0 {
				f.noteBatchRefused(err)
				return append(rest, ids[lo:]...)
			}
			if err != nil {
				// The whole call failed for good (or ran out of time):
				// every id of the chunk not answered yet fails with it.
				for _, id := range chunk {
					if !answered[id] {
						results[id] = fetched{err: err, attempts: attempts}
						answered[id] = true
					}
				}
				break
			}
			for _, e := range out.SecretValues {
				id, ok := matchID(chunk, aws.ToString(e.Name), aws.ToString(e.ARN))
				if !ok || answered[id] {
					continue
				}
				answered[id] = true
				results[id] = fetched{attempts: attempts, out: &secretsmanager.GetSecretValueOutput{
					ARN: e.ARN, Name: e.Name, SecretString: e.SecretString, SecretBinary: e.SecretBinary,
					VersionId: e.VersionId, VersionStages: e.VersionStages, CreatedDate: e.CreatedDate,
				}}
			}
			for _, e := range out.Errors {
				id := aws.ToString(e.SecretId)
				if !slices.Contains(chunk, id) || answered[id] {
					continue
				}
				err := entryError(e)
				if retryable(err) {
					continue // left for a single call with its own retries
				}
				answered[id] = true
				results[id] = fetched{err: err, attempts: attempts}
			}
			if aws.ToString(out.NextToken) == "" {
				break
			}
			in = &secretsmanager.BatchGetSecretValueInput{SecretIdList: chunk, NextToken: out.NextToken}
		}
		for _, id := range chunk {
			if !answered[id] {
				rest = append(rest, id)
			}
		}
	}
	return rest
}

// matchID finds the requested id an answer is for: its name, its ARN, or
// its ARN without the random suffix Secrets Manager appends ("-AbCdEf").
func matchID(ids []string, name, arn string) (string, bool) {
	for _, id := range ids {
		if id == name || id == arn || len(arn) == len(id)+7 && strings.HasPrefix(arn, id+"-") {
			return id, true
		}
	}
	return "", false
}

// entryError turns one secret's error of a batch answer into the error
// GetSecretValue would have returned, so apiError and retryable classify
// both paths alike.
func entryError(e types.APIErrorType) error {
	msg := e.Message
	switch code := aws.ToString(e.ErrorCode); code {
	case "ResourceNotFoundException":
		return &types.ResourceNotFoundException{Message: msg}
	case "DecryptionFailure":
		return &types.DecryptionFailure{Message: msg}
	case "InvalidRequestException":
		return &types.InvalidRequestException{Message: msg}
	case "InvalidParameterException":
		return &types.InvalidParameterException{Message: msg}
	case "InternalServiceError":
		return &types.InternalServiceError{Message: msg}
	default:
		fault := smithy.FaultClient
		if code == "ThrottlingException" {
			fault = smithy.FaultServer
		}
		return &smithy.GenericAPIError{Code: code, Message: aws.ToString(msg), Fault: fault}
	}
}

// StagePrevious is the staging label Secrets Manager moves to the version
// before the current one when a new version becomes AWSCURRENT.
const StagePrevious = "AWSPREVIOUS"

// Versions returns the AWSCURRENT VersionId of every ref, keyed by
// Ref.Name, in one BatchGetSecretValue call (one GetSecretValue per id when
// the batch is refused). It is run's cheap look for rotations, so its
// budget is Refresh's or the Fetcher's, whichever is shorter, and it logs
// nothing but the refused batch.
func (f *Fetcher) Versions(ctx context.Context, refs []Ref) (map[string]string, error) {
	if err := validateRefs(refs); err != nil {
		return nil, err
	}
	p := f.Policy.orBoot()
	if p.Deadline > Refresh.Deadline {
		p = Refresh
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()
	ids := distinctIDs(refs)
	// Retries are not logged: a failed look waits for the next one.
	results := f.getAll(ctx, parent, ids, p, p.Deadline.String(), slog.New(slog.DiscardHandler))
	got := make(map[string]string, len(refs))
	var errs []error
	for _, r := range refs {
		res := results[r.SecretID]
		if res.err != nil {
			errs = append(errs, f.apiError(r, res.err))
			continue
		}
		got[r.Name] = aws.ToString(res.out.VersionId)
	}
	return got, errors.Join(errs...)
}

// FetchStage reads the version of ref's secret labelled stage (StagePrevious
// for the value before a rotation) with GetSecretValue, within the
// Fetcher's Policy. A secret without such a version returns an *Error that
// matches ErrNoPreviousVersion.
func (f *Fetcher) FetchStage(ctx context.Context, ref Ref, stage string) (Secret, error) {
	if err := validateRefs([]Ref{ref}); err != nil {
		return Secret{}, err
	}
	p := f.Policy.orBoot()
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()
	log := orDiscard(f.Logger)
	in := &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref.SecretID), VersionStage: aws.String(stage)}
	var out *secretsmanager.GetSecretValueOutput
	_, err := f.retry(ctx, parent, p, p.Deadline.String(), log.With("secret_id", ref.SecretID, "stage", stage), nil, func(actx context.Context) error {
		var err error
		out, err = f.API.GetSecretValue(actx, in)
		if err == nil && out == nil {
			err = errors.New("empty response")
		}
		return err
	})
	var notFound *types.ResourceNotFoundException
	if errors.As(err, &notFound) {
		e := configErr(ref, err, "has no version labelled %s (Secrets Manager keeps one only after a rotation or a put-secret-value)", stage)
		e.kind = ErrNoPreviousVersion
		return Secret{}, e
	}
	if err != nil {
		return Secret{}, f.apiError(ref, err)
	}
	v, err := extract(ref, out)
	if err != nil {
		return Secret{}, fmt.Errorf("reading the %s version: %w", stage, err)
	}
	return Secret{Ref: ref, Value: v, VersionID: aws.ToString(out.VersionId)}, nil
}
