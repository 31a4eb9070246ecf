package secrets

// FetchStage: one secret at a named staging label (minimal version for the
// secret-key rotation; brief A owns the full one).

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
)

// StagePrevious is the staging label Secrets Manager moves to the version
// AWSCURRENT had before the last put-secret-value or rotation.
const StagePrevious = "AWSPREVIOUS"

// ErrNoPreviousVersion: the secret has no version at the stage asked for
// (it was never changed).
var ErrNoPreviousVersion = errors.New("the secret has no previous version")

// FetchStage reads ref at staging label stage (GetSecretValue with
// VersionStage: the same IAM permission as Fetch), with the Fetcher's
// policy. A secret without that stage is ErrNoPreviousVersion.
func (f *Fetcher) FetchStage(ctx context.Context, ref Ref, stage string) (Secret, error) {
	p := f.Policy.orBoot()
	ctx, cancel := context.WithTimeout(ctx, p.Deadline)
	defer cancel()
	actx, acancel := context.WithTimeout(ctx, p.AttemptTimeout)
	defer acancel()
	out, err := f.API.GetSecretValue(actx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(ref.SecretID), VersionStage: aws.String(stage)})
	if err != nil {
		var notFound *types.ResourceNotFoundException
		if errors.As(err, &notFound) {
			return Secret{}, &Error{Name: ref.Name, SecretID: ref.SecretID, Config: true, err: err, kind: ErrNoPreviousVersion,
				msg: fmt.Sprintf("%s has no version at stage %s: it was never changed", describe(ref), stage)}
		}
		return Secret{}, f.apiError(ref, err)
	}
	v, err := extract(ref, out)
	if err != nil {
		return Secret{}, err
	}
	return Secret{Ref: ref, Value: v, VersionID: aws.ToString(out.VersionId)}, nil
}
