package imds

import (
	"context"
	"testing"
	"time"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestTargetLifecycleState against ec2-metadata-mock's asglifecycle mode
// (InService, then Terminated), and against fakeIMDS, which answers 404 for
// the path as IMDS does on an instance in no Auto Scaling group: "". (The
// mock's default mode serves the path too, Terminated from its start.)
func TestTargetLifecycleState(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	asg := New(Options{Endpoint: testenv.StartIMDSMockASG(t, nil, 24*time.Hour, true).Endpoint})
	if got, err := asg.TargetLifecycleState(ctx); err != nil || got != "InService" {
		t.Errorf("in a group: %q, %v; want InService", got, err)
	}
	gone := New(Options{Endpoint: testenv.StartIMDSMockASG(t, nil, 0, true).Endpoint})
	if got, err := gone.TargetLifecycleState(ctx); err != nil || got != "Terminated" {
		t.Errorf("scaled in: %q, %v; want Terminated", got, err)
	}
	plain := New(Options{Endpoint: (&fakeIMDS{}).start(t).URL})
	if got, err := plain.TargetLifecycleState(ctx); err != nil || got != "" {
		t.Errorf("in no group: %q, %v; want \"\" and no error", got, err)
	}
}
