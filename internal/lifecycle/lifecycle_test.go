package lifecycle_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/redash-agent/redash-agent/internal/lifecycle"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// TestLifecycleCallsThroughMoto runs the calls against moto_server behind
// testenv's recording proxy: moto 5.2 does not implement
// CompleteLifecycleAction or RecordLifecycleActionHeartbeat, so the proxy
// answers those two as the API documents (and looks the group and hooks up
// in moto); everything else reaches moto.
func TestLifecycleCallsThroughMoto(t *testing.T) {
	moto := testenv.StartMoto(t)
	proxy := testenv.StartASGProxy(t, moto)
	proxy.CreateGroup(t, "redash-workers", "redash-launch", "redash-terminate")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The reason for the proxy: moto itself refuses the call.
	direct := autoscaling.New(autoscaling.Options{Region: testenv.MotoRegion, BaseEndpoint: aws.String(moto.Endpoint),
		Credentials: proxy.Client.Options().Credentials})
	if _, err := direct.CompleteLifecycleAction(ctx, &autoscaling.CompleteLifecycleActionInput{
		AutoScalingGroupName: aws.String("redash-workers"), LifecycleHookName: aws.String("redash-launch"),
		InstanceId: aws.String("i-1"), LifecycleActionResult: aws.String("CONTINUE")}); err == nil {
		t.Log("moto answered CompleteLifecycleAction itself: the proxy may no longer be needed")
	}

	c := lifecycle.NewWith(proxy.Client)
	launch := lifecycle.Action{Group: "redash-workers", Hook: "redash-launch", InstanceID: "i-0aaa"}
	proxy.Pending(launch.Group, launch.Hook, launch.InstanceID)
	if err := c.Heartbeat(ctx, launch); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if err := c.Complete(ctx, launch, lifecycle.Continue); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	// Completed once: nothing pending any more.
	err := c.Complete(ctx, launch, lifecycle.Continue)
	if !errors.Is(err, lifecycle.ErrNoAction) {
		t.Errorf("second Complete = %v, want ErrNoAction", err)
	}
	t.Logf("second completion: %v", err)

	for name, a := range map[string]lifecycle.Action{
		"unknown hook":     {Group: "redash-workers", Hook: "nope", InstanceID: "i-0aaa"},
		"unknown group":    {Group: "nope", Hook: "redash-launch", InstanceID: "i-0aaa"},
		"unknown instance": {Group: "redash-workers", Hook: "redash-terminate", InstanceID: "i-0bbb"},
	} {
		if err := c.Complete(ctx, a, lifecycle.Abandon); !errors.Is(err, lifecycle.ErrNoAction) {
			t.Errorf("%s: Complete = %v, want ErrNoAction", name, err)
		}
	}
	term := lifecycle.Action{Group: "redash-workers", Hook: "redash-terminate", InstanceID: "i-0bbb"}
	proxy.Pending(term.Group, term.Hook, term.InstanceID)
	if err := c.Complete(ctx, term, lifecycle.Abandon); err != nil {
		t.Fatalf("Complete ABANDON: %v", err)
	}
	var got []string
	for _, call := range proxy.Calls() {
		if call.Error == "" {
			got = append(got, call.Action+" "+call.Hook+" "+call.Result)
		}
	}
	want := []string{"RecordLifecycleActionHeartbeat redash-launch ", "CompleteLifecycleAction redash-launch CONTINUE", "CompleteLifecycleAction redash-terminate ABANDON"}
	if len(got) != len(want) {
		t.Fatalf("successful calls = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("call %d = %q, want %q", i, got[i], want[i])
		}
	}
}
