package testenv

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
)

// ASGProxy stands in front of moto_server for Auto Scaling. moto 5.2 does
// not implement CompleteLifecycleAction or RecordLifecycleActionHeartbeat
// (it answers them with an error), so the proxy answers those two itself,
// the way the API reference documents them: the query protocol (a form
// POST with Action=...), an empty <...Result/> in XML on success, and a 400
// ErrorResponse with code ValidationError for a group, hook, instance or
// token it does not know. The group and its hooks are looked up in moto;
// the pending actions (an instance in Pending:Wait or Terminating:Wait) are
// the test's to declare with Pending, as moto has no lifecycle states. Every
// other request is forwarded to moto unchanged. Calls are recorded.
type ASGProxy struct {
	Endpoint string // point AWS_ENDPOINT_URL_AUTO_SCALING here
	Client   *autoscaling.Client

	moto *autoscaling.Client
	mu   sync.Mutex
	// pending maps group/hook/instance to the action's token.
	pending map[actionKey]string
	calls   []ASGCall
	changed chan struct{} // closed and replaced on every recorded call
}

type actionKey struct{ group, hook, instance string }

// ASGCall is one answered lifecycle call.
type ASGCall struct {
	Action   string // CompleteLifecycleAction or RecordLifecycleActionHeartbeat
	Group    string
	Hook     string
	Instance string
	Result   string // CONTINUE or ABANDON for a completion
	Error    string // the ValidationError's message, "" when it succeeded
	At       time.Time
}

// StartASGProxy starts the proxy in front of m, stopped at cleanup.
func StartASGProxy(t testing.TB, m *Moto) *ASGProxy {
	t.Helper()
	target, err := url.Parse(m.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	p := &ASGProxy{pending: map[actionKey]string{}, changed: make(chan struct{}), moto: asgClient(m.Endpoint)}
	forward := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		switch a := form.Get("Action"); a {
		case "CompleteLifecycleAction", "RecordLifecycleActionHeartbeat":
			p.answer(w, r.Context(), a, form)
		default:
			forward.ServeHTTP(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	p.Endpoint = srv.URL
	p.Client = asgClient(srv.URL)
	return p
}

func asgClient(endpoint string) *autoscaling.Client {
	return autoscaling.New(autoscaling.Options{
		Region:       MotoRegion,
		BaseEndpoint: aws.String(endpoint),
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: MotoAccessKey, SecretAccessKey: MotoSecretKey, Source: "testenv"}, nil
		}),
	})
}

// Pending declares that instance waits in a lifecycle action of group's
// hook (Pending:Wait for a launch hook, Terminating:Wait for a terminate
// hook) and returns the action's token.
func (p *ASGProxy) Pending(group, hook, instance string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	token := fmt.Sprintf("%08x-0000-4000-8000-%012x", len(p.pending)+1, time.Now().UnixNano()&0xffffffffffff)
	p.pending[actionKey{group, hook, instance}] = token
	return token
}

// Calls returns the answered calls so far.
func (p *ASGProxy) Calls() []ASGCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ASGCall(nil), p.calls...)
}

// WaitFor waits until a recorded call matches, at most timeout.
func (p *ASGProxy) WaitFor(timeout time.Duration, match func(ASGCall) bool) (ASGCall, bool) {
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, c := range p.calls {
			if match(c) {
				p.mu.Unlock()
				return c, true
			}
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return ASGCall{}, false
		}
	}
}

// answer plays Auto Scaling for one of the two actions moto lacks.
func (p *ASGProxy) answer(w http.ResponseWriter, ctx context.Context, action string, form url.Values) {
	c := ASGCall{Action: action, Group: form.Get("AutoScalingGroupName"), Hook: form.Get("LifecycleHookName"),
		Instance: form.Get("InstanceId"), Result: form.Get("LifecycleActionResult"), At: time.Now()}
	token := form.Get("LifecycleActionToken")
	msg := p.validate(ctx, c, token)
	p.mu.Lock()
	if msg == "" && action == "CompleteLifecycleAction" {
		delete(p.pending, p.keyOf(c, token))
	}
	c.Error = msg
	p.calls = append(p.calls, c)
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()

	w.Header().Set("Content-Type", "text/xml")
	if msg != "" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>%s</Message></Error><RequestId>asgproxy</RequestId></ErrorResponse>`, xmlEscape(msg))
		return
	}
	fmt.Fprintf(w, `<%[1]sResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><%[1]sResult/><ResponseMetadata><RequestId>asgproxy</RequestId></ResponseMetadata></%[1]sResponse>`, action)
}

// keyOf finds the pending action a call names: by instance, or by token.
func (p *ASGProxy) keyOf(c ASGCall, token string) actionKey {
	if c.Instance != "" {
		return actionKey{c.Group, c.Hook, c.Instance}
	}
	for k, tok := range p.pending {
		if k.group == c.Group && k.hook == c.Hook && tok == token {
			return k
		}
	}
	return actionKey{}
}

// validate returns the ValidationError message Auto Scaling would answer,
// or "" when the call names a pending action.
func (p *ASGProxy) validate(ctx context.Context, c ASGCall, token string) string {
	switch {
	case c.Group == "" || c.Hook == "":
		return "1 validation error detected: AutoScalingGroupName and LifecycleHookName are required"
	case c.Instance == "" && token == "":
		return "Either InstanceId or LifecycleActionToken must be specified"
	case c.Action == "CompleteLifecycleAction" && c.Result != "CONTINUE" && c.Result != "ABANDON":
		return fmt.Sprintf("Value '%s' at 'lifecycleActionResult' failed to satisfy constraint: Member must be CONTINUE or ABANDON", c.Result)
	}
	hooks, err := p.moto.DescribeLifecycleHooks(ctx, &autoscaling.DescribeLifecycleHooksInput{AutoScalingGroupName: aws.String(c.Group)})
	if err != nil {
		return "AutoScalingGroup name not found - no such group: " + c.Group
	}
	found := false
	for _, h := range hooks.LifecycleHooks {
		found = found || aws.ToString(h.LifecycleHookName) == c.Hook
	}
	if !found {
		return fmt.Sprintf("No Lifecycle Hook found with name %s for group %s", c.Hook, c.Group)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k := p.keyOf(c, token)
	if tok, ok := p.pending[k]; !ok || token != "" && tok != token {
		if c.Instance != "" {
			return "No active Lifecycle Action found with instance ID " + c.Instance
		}
		return "No active Lifecycle Action found with token " + token
	}
	return ""
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// CreateGroup makes an Auto Scaling group in moto with the named lifecycle
// hooks (transition by prefix: "launch" hooks are EC2_INSTANCE_LAUNCHING,
// others EC2_INSTANCE_TERMINATING), capacity 0: the test's instance is the
// agent's, declared with Pending.
func (p *ASGProxy) CreateGroup(t testing.TB, group, launchHook, terminateHook string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lc := group + "-lc"
	if _, err := p.moto.CreateLaunchConfiguration(ctx, &autoscaling.CreateLaunchConfigurationInput{
		LaunchConfigurationName: aws.String(lc), ImageId: aws.String("ami-12c6146b"), InstanceType: aws.String("t3.micro"),
	}); err != nil {
		t.Fatalf("creating a launch configuration in moto: %v", err)
	}
	if _, err := p.moto.CreateAutoScalingGroup(ctx, &autoscaling.CreateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(group), LaunchConfigurationName: aws.String(lc),
		MinSize: aws.Int32(0), MaxSize: aws.Int32(2), DesiredCapacity: aws.Int32(0),
		AvailabilityZones: []string{MotoRegion + "a"},
	}); err != nil {
		t.Fatalf("creating Auto Scaling group %q in moto: %v", group, err)
	}
	for hook, transition := range map[string]string{launchHook: "autoscaling:EC2_INSTANCE_LAUNCHING", terminateHook: "autoscaling:EC2_INSTANCE_TERMINATING"} {
		if _, err := p.moto.PutLifecycleHook(ctx, &autoscaling.PutLifecycleHookInput{
			AutoScalingGroupName: aws.String(group), LifecycleHookName: aws.String(hook),
			LifecycleTransition: aws.String(transition), HeartbeatTimeout: aws.Int32(300), DefaultResult: aws.String("ABANDON"),
		}); err != nil {
			t.Fatalf("creating lifecycle hook %q in moto: %v", hook, err)
		}
	}
}
