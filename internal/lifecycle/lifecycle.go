// Package lifecycle completes this instance's Auto Scaling lifecycle
// actions: CONTINUE on the launch hook once the agent is READY (ABANDON on a
// configuration error), heartbeats and CONTINUE on the terminate hook while
// and after it drains. It is the agent's only Auto Scaling caller.
//
// Side effects: CompleteLifecycleAction and RecordLifecycleActionHeartbeat
// calls, nothing else. The client uses the SDK's standard settings
// (credentials from the instance profile; AWS_ENDPOINT_URL_AUTO_SCALING or
// AWS_ENDPOINT_URL redirect it, which the tests use). A failed call is an
// error for the caller to log: an instance whose hook is not completed is
// put in service (or terminated) by the hook's timeout and default result,
// so no call here may stop the agent.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/smithy-go"
)

// Result is a lifecycle action's outcome.
type Result string

const (
	// Continue puts a launching instance in service, or lets a terminating
	// one terminate.
	Continue Result = "CONTINUE"
	// Abandon terminates a launching instance (the group launches another).
	Abandon Result = "ABANDON"
)

// Action names one lifecycle action of this instance: the group, the hook
// and the instance (no token: the instance id identifies it).
type Action struct {
	Group, Hook, InstanceID string
}

func (a Action) String() string {
	return fmt.Sprintf("hook %q of Auto Scaling group %q for instance %s", a.Hook, a.Group, a.InstanceID)
}

// API is the part of the Auto Scaling client this package calls.
type API interface {
	CompleteLifecycleAction(ctx context.Context, in *autoscaling.CompleteLifecycleActionInput, optFns ...func(*autoscaling.Options)) (*autoscaling.CompleteLifecycleActionOutput, error)
	RecordLifecycleActionHeartbeat(ctx context.Context, in *autoscaling.RecordLifecycleActionHeartbeatInput, optFns ...func(*autoscaling.Options)) (*autoscaling.RecordLifecycleActionHeartbeatOutput, error)
}

// Client calls Auto Scaling for this instance's lifecycle actions.
type Client struct{ api API }

// callTimeout bounds one call: the agent goes on either way.
const callTimeout = 10 * time.Second

// New returns a Client for region with the SDK's standard settings.
func New(ctx context.Context, region string) (*Client, error) {
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion(region))
	if err != nil {
		return nil, fmt.Errorf("loading the AWS SDK configuration for Auto Scaling: %w", err)
	}
	return &Client{api: autoscaling.NewFromConfig(cfg)}, nil
}

// NewWith returns a Client over api (tests).
func NewWith(api API) *Client { return &Client{api: api} }

// ErrNoAction means Auto Scaling has no pending action for the hook and
// instance: the instance is already in service (the hook timed out, or this
// is a restart of the agent on a running instance), or the group has no
// hook of that name. Callers branch on it with errors.Is.
var ErrNoAction = errors.New("no pending lifecycle action")

// ErrDenied means the instance role may not make the call.
var ErrDenied = errors.New("access denied")

// Complete ends the action with result.
func (c *Client) Complete(ctx context.Context, a Action, result Result) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := c.api.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName:  aws.String(a.Group),
		LifecycleHookName:     aws.String(a.Hook),
		InstanceId:            aws.String(a.InstanceID),
		LifecycleActionResult: aws.String(string(result)),
	})
	return explain("autoscaling:CompleteLifecycleAction", a, err)
}

// Heartbeat restarts the action's heartbeat timeout, so a drain that takes
// longer than the hook's HeartbeatTimeout is not cut short.
func (c *Client) Heartbeat(ctx context.Context, a Action) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := c.api.RecordLifecycleActionHeartbeat(ctx, &autoscaling.RecordLifecycleActionHeartbeatInput{
		AutoScalingGroupName: aws.String(a.Group),
		LifecycleHookName:    aws.String(a.Hook),
		InstanceId:           aws.String(a.InstanceID),
	})
	return explain("autoscaling:RecordLifecycleActionHeartbeat", a, err)
}

// explain puts an API error in the operator's words, by its error code.
func explain(action string, a Action, err error) error {
	if err == nil {
		return nil
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "AccessDenied", "AccessDeniedException", "UnauthorizedOperation":
			return fmt.Errorf("%s on %s: %w: give the instance role %s on the group's ARN (the template's InstanceRole has it): %w",
				action, a, ErrDenied, action, err)
		case "ValidationError":
			// Auto Scaling answers ValidationError both for "no active
			// lifecycle action" and for a hook that does not exist.
			return fmt.Errorf("%s on %s: %w (already in service or terminating, or no hook of that name: "+
				"check redash:lifecycle-hook-launch / redash:lifecycle-hook-terminate against the group's hooks): %w", action, a, ErrNoAction, err)
		}
	}
	return fmt.Errorf("%s on %s: %w: the hook's timeout and default result decide if this keeps failing; "+
		"check the instance's route to the Auto Scaling endpoint", action, a, err)
}
