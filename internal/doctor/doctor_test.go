package doctor

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRunOrderSkipAndTimeout(t *testing.T) {
	checks := []Check{
		{Name: "docker", Run: func(context.Context) Result { return Result{Status: Fail, Detail: "no socket", Fix: "start docker"} }},
		{Name: "containers", Needs: []string{"docker"}, Run: func(context.Context) Result {
			t.Error("a check whose dependency failed must not run")
			return Result{Status: OK}
		}},
		{Name: "imds", Run: func(context.Context) Result { return Result{Status: OK, Detail: "i-123"} }},
		{Name: "hang", Run: func(ctx context.Context) Result {
			<-ctx.Done()
			time.Sleep(10 * time.Millisecond)
			return Result{Status: OK}
		}},
		{Name: "panics", Run: func(context.Context) Result { panic("boom") }},
	}
	rep := Run(context.Background(), checks, 100*time.Millisecond)
	want := []Status{Fail, Skip, OK, Fail, Fail}
	for i, f := range rep.Findings {
		if f.Status != want[i] {
			t.Errorf("%s: status %s, want %s (%s)", f.Name, f.Status, want[i], f.Detail)
		}
	}
	if !rep.Failed() {
		t.Error("Failed() = false")
	}
	var b bytes.Buffer
	rep.WriteText(&b)
	out := b.String()
	for _, w := range []string{"[fail]  docker: no socket", "fix: start docker", "[skip]  containers: skipped: needs \"docker\"", "5 checks: 3 failed, 0 warnings"} {
		if !strings.Contains(out, w) {
			t.Errorf("text report lacks %q:\n%s", w, out)
		}
	}
	b.Reset()
	if err := rep.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || len(got) != 5 || got[0]["check"] != "docker" {
		t.Errorf("json report: %v %s", err, b.String())
	}
}

func TestAllOK(t *testing.T) {
	rep := Run(context.Background(), []Check{{Name: "a", Run: func(context.Context) Result { return Result{Status: Warn, Detail: "slow"} }}}, time.Second)
	if rep.Failed() {
		t.Error("a warning is not a failure")
	}
}
