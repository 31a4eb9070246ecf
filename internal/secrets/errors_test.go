package secrets

import (
	"context"
	"errors"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/smithy-go"

	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// isConfigError is how the CLI sees a secrets error: exit status 3.
func isConfigError(err error) bool { return exitcode.Of(err) == exitcode.Config }

// errAPI answers every call with one error.
type errAPI struct{ err error }

func (a errAPI) BatchGetSecretValue(context.Context, *secretsmanager.BatchGetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.BatchGetSecretValueOutput, error) {
	return nil, a.err
}

func (a errAPI) GetSecretValue(context.Context, *secretsmanager.GetSecretValueInput, ...func(*secretsmanager.Options)) (*secretsmanager.GetSecretValueOutput, error) {
	return nil, a.err
}

// TestErrorReasons: doctor branches on why Secrets Manager refused through
// errors.Is, also when the failure is one of several joined.
func TestErrorReasons(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		reason error // nil: neither sentinel
		status int
	}{
		{"not found", &types.ResourceNotFoundException{Message: strp("no such secret")}, ErrNotFound, exitcode.Config},
		{"access denied", &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not authorized"}, ErrAccessDenied, exitcode.Config},
		{"kms denied is not the GetSecretValue permission", &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "Access to KMS is not allowed"}, nil, exitcode.Config},
		{"transient", errors.New("connection reset"), nil, exitcode.Failure},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A short budget: "connection reset" is retried until it ends.
			f := &Fetcher{API: errAPI{tc.err}, Region: "us-east-1", Policy: fastPolicy}
			_, err := f.Fetch(context.Background(), []Ref{{Name: DBPassword, SecretID: "Redash/RDS/Password"}, {Name: SecretKey, SecretID: "Redash/SecretKey"}})
			if err == nil {
				t.Fatal("Fetch succeeded")
			}
			for _, s := range []error{ErrNotFound, ErrAccessDenied} {
				if got, want := errors.Is(err, s), s == tc.reason; got != want {
					t.Errorf("errors.Is(err, %v) = %v, want %v: %v", s, got, want, err)
				}
			}
			if got := exitcode.Of(err); got != tc.status {
				t.Errorf("exit status %d, want %d: %v", got, tc.status, err)
			}
		})
	}
}

func strp(s string) *string { return &s }
