// Package doctor runs named health checks and prints, for each, whether it
// passed and how to fix it. It owns the report's format; the checks
// themselves are closures the caller builds over the real clients, so this
// package has no side effects of its own beyond calling them.
package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"
)

// Status of one check.
type Status string

const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
	Skip Status = "skip"
)

// Result is what a check found. Detail and Fix must never hold a secret.
type Result struct {
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Check is one named probe.
type Check struct {
	Name string
	// Needs names checks that must pass first; when one did not, this check
	// is skipped with a pointer to it instead of piling on a second error.
	Needs []string
	Run   func(ctx context.Context) Result
}

// Finding is a check's name with its result.
type Finding struct {
	Name string `json:"check"`
	Result
	Took time.Duration `json:"took_ns"`
}

// Report is the outcome of all checks in order.
type Report struct{ Findings []Finding }

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	for _, f := range r.Findings {
		if f.Status == Fail {
			return true
		}
	}
	return false
}

// Run executes the checks in order; each gets at most perCheck.
func Run(ctx context.Context, checks []Check, perCheck time.Duration) Report {
	var rep Report
	status := map[string]Status{}
	for _, c := range checks {
		var blocked string
		for _, n := range c.Needs {
			if status[n] != OK && status[n] != Warn {
				blocked = n
				break
			}
		}
		start := time.Now()
		var res Result
		if blocked != "" {
			res = Result{Status: Skip, Detail: fmt.Sprintf("skipped: needs %q to pass first", blocked)}
		} else {
			res = runOne(ctx, c, perCheck)
		}
		status[c.Name] = res.Status
		rep.Findings = append(rep.Findings, Finding{Name: c.Name, Result: res, Took: time.Since(start)})
	}
	return rep
}

// runOne bounds a check in time and turns a panic into a failure, so one
// broken probe never hides the others.
func runOne(ctx context.Context, c Check, limit time.Duration) (res Result) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	done := make(chan Result, 1)
	var once sync.Once
	go func() {
		defer func() {
			if p := recover(); p != nil {
				once.Do(func() { done <- Result{Status: Fail, Detail: fmt.Sprintf("check crashed: %v", p)} })
			}
		}()
		r := c.Run(ctx)
		once.Do(func() { done <- r })
	}()
	select {
	case r := <-done:
		return r
	case <-ctx.Done():
		return Result{Status: Fail, Detail: fmt.Sprintf("no answer within %v", limit), Fix: "the component is hanging or unreachable; see the checks above"}
	}
}

// WriteText prints one block per check:
//
//	[ok]   docker: Docker Engine 20.10.24 answers on unix:///var/run/docker.sock
//	[fail] secrets: secret "db-password" (id "Redash/RDS/Password") not found
//	       fix: create it, or point tag redash:secret:db-password at the right id
func (r Report) WriteText(w io.Writer) {
	for _, f := range r.Findings {
		fmt.Fprintf(w, "%-7s %s: %s\n", "["+string(f.Status)+"]", f.Name, f.Detail)
		if f.Fix != "" && f.Status != OK {
			fmt.Fprintf(w, "        fix: %s\n", f.Fix)
		}
	}
	fails, warns := 0, 0
	for _, f := range r.Findings {
		switch f.Status {
		case Fail:
			fails++
		case Warn:
			warns++
		}
	}
	fmt.Fprintf(w, "%d checks: %d failed, %d warnings\n", len(r.Findings), fails, warns)
}

// WriteJSON prints the findings as a JSON array.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.Findings)
}
