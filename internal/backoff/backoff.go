// Package backoff is the agent's one schedule for retries and polls, so that
// IMDS, the database and Docker waits all space their attempts the same way:
// an exponential step with "equal jitter" for retries, a ±25% spread for
// fixed polls (never zero, never in lockstep with the other instances of an
// Auto Scaling Group booting at the same moment), and a sleep that ends with
// the context. No side effects beyond waiting.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Policy is an exponential retry schedule.
type Policy struct {
	Base time.Duration // the first step
	Max  time.Duration // the cap of a step; 0 means Base (no growth)
}

// Step is the un-jittered delay before retry attempt (1-based):
// Base*2^(attempt-1), capped at Max.
func (p Policy) Step(attempt int) time.Duration {
	limit := max(p.Max, p.Base)
	attempt = max(attempt, 1)
	if attempt > 32 {
		return limit
	}
	if d := p.Base << (attempt - 1); d > 0 && d < limit {
		return d
	}
	return limit
}

// Delay is Step with equal jitter j in [0,1): the lower half of the step is
// fixed, the upper half scaled by j. Tests pass j; Next draws it.
func (p Policy) Delay(attempt int, j float64) time.Duration {
	half := p.Step(attempt) / 2
	return half + time.Duration(j*float64(half))
}

// Next is the delay before retry attempt with a random jitter.
func (p Policy) Next(attempt int) time.Duration { return p.Delay(attempt, rand.Float64()) }

// Spread returns a poll interval of d spread over ±25%.
func Spread(d time.Duration) time.Duration { return d*3/4 + rand.N(d/2+1) }

// Sleep waits d, or until ctx ends; then it returns ctx's error.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
