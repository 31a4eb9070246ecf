package imds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	sdkimds "github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// GroupNameTag is the tag Amazon EC2 Auto Scaling puts on every instance it
// launches (or that is attached to a group): the group's name. It is in the
// instance's metadata tags with the others when InstanceMetadataTags is on.
const GroupNameTag = "aws:autoscaling:groupName"

// TargetLifecycleState reads autoscaling/target-lifecycle-state: the state
// the Auto Scaling group moves this instance to ("InService", "Terminated",
// "Standby", "Detached", "Warmed:*"). It is "" when the instance is in no
// group (IMDS answers 404). One attempt, bounded by the client's per-attempt
// timeout: the caller polls, so a failed look is simply the next one's job.
// It never falls back to IMDSv1.
func (c *Client) TargetLifecycleState(ctx context.Context) (string, error) {
	if c.cfgErr != nil {
		return "", fmt.Errorf("loading the AWS SDK configuration for IMDS: %w", c.cfgErr)
	}
	if c.off {
		return "", fmt.Errorf("reading the target lifecycle state: IMDS is turned off by %s=true", disabledEnv)
	}
	c.lifecycleOnce.Do(func() {
		// One SDK client for every look: it keeps the session token (and
		// renews it) instead of fetching one every 5 s.
		c.lifecycleSDK = sdkimds.NewFromConfig(c.cfg, func(o *sdkimds.Options) {
			o.Endpoint = c.endpoint
			o.EnableFallback = aws.FalseTernary
			o.HTTPClient = c.hc
			o.Retryer = aws.NopRetryer{}
		})
	})
	const path = "autoscaling/target-lifecycle-state"
	out, err := c.lifecycleSDK.GetMetadata(ctx, &sdkimds.GetMetadataInput{Path: path})
	if err != nil {
		var re *smithyhttp.ResponseError
		if errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound {
			return "", nil
		}
		return "", fmt.Errorf("reading /latest/meta-data/%s from %s: %w", path, c.endpoint, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	if err != nil {
		return "", fmt.Errorf("reading the answer to GET /latest/meta-data/%s: %w", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}
