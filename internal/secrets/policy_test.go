package secrets

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	p := Policy{BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second}
	tests := []struct {
		n        int
		j        float64
		want     time.Duration
		describe string
	}{
		{1, 0, 50 * time.Millisecond, "first retry, least jitter: half the base"},
		{1, 0.999999, 100 * time.Millisecond, "first retry, most jitter: the base"},
		{2, 0, 100 * time.Millisecond, "doubles"},
		{4, 0, 400 * time.Millisecond, "800ms step"},
		{5, 0, 500 * time.Millisecond, "capped at max: half of it"},
		{500, 0.999999, time.Second, "no overflow far out"},
		{0, 0, 50 * time.Millisecond, "n below 1 is the first retry"},
	}
	for _, tc := range tests {
		if got := p.backoff(tc.n, tc.j).Round(time.Millisecond); got != tc.want {
			t.Errorf("%s: backoff(%d, %v) = %v, want %v", tc.describe, tc.n, tc.j, got, tc.want)
		}
	}
}

// attemptsWithin simulates a fetch against an endpoint that fails at once
// (5xx, refused) with jitter j: how many attempts fit in the deadline.
func attemptsWithin(p Policy, j float64) int {
	var spent time.Duration
	n := 1
	for {
		d := p.backoff(n, j)
		if spent+d >= p.Deadline {
			return n
		}
		spent += d
		n++
	}
}

// TestShippedPolicies pins the promises the README and docs/reliability.md
// make about the shipped budgets.
func TestShippedPolicies(t *testing.T) {
	for _, tc := range []struct {
		name               string
		p                  Policy
		minDL, maxDL       time.Duration
		minTries, maxTries int // against an endpoint that fails at once
	}{
		// Boot rides out tens of seconds, not the SDK's half second.
		{"Boot", Boot, 30 * time.Second, 90 * time.Second, 8, 18},
		// Refresh gives up sooner: the next tick tries again.
		{"Refresh", Refresh, 10 * time.Second, 30 * time.Second, 6, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			if p.Deadline < tc.minDL || p.Deadline > tc.maxDL {
				t.Errorf("deadline %v, want within [%v, %v]", p.Deadline, tc.minDL, tc.maxDL)
			}
			// An endpoint that never answers still gets several tries.
			if p.AttemptTimeout*3 > p.Deadline {
				t.Errorf("attempt timeout %v leaves fewer than 3 attempts in %v", p.AttemptTimeout, p.Deadline)
			}
			if p.BackoffMax > p.Deadline/4 {
				t.Errorf("backoff max %v is too long for a %v budget", p.BackoffMax, p.Deadline)
			}
			most, fewest := attemptsWithin(p, 0), attemptsWithin(p, 0.999999)
			if fewest < tc.minTries || most > tc.maxTries {
				t.Errorf("%d to %d attempts against a failing endpoint, want within [%d, %d]", fewest, most, tc.minTries, tc.maxTries)
			}
			t.Logf("%s: deadline %v, %v per attempt, %d to %d attempts against an endpoint that fails at once",
				tc.name, p.Deadline, p.AttemptTimeout, fewest, most)
		})
	}
	if Refresh.Deadline >= Boot.Deadline {
		t.Errorf("Refresh's deadline %v is not shorter than Boot's %v", Refresh.Deadline, Boot.Deadline)
	}
}

func TestPolicyZeroFieldsAreBoot(t *testing.T) {
	if got := (Policy{}).orBoot(); got != Boot {
		t.Errorf("zero policy = %+v, want Boot %+v", got, Boot)
	}
	if got := (Policy{Deadline: time.Second}).orBoot(); got.Deadline != time.Second || got.AttemptTimeout != Boot.AttemptTimeout {
		t.Errorf("partial policy = %+v, want its deadline and Boot's other fields", got)
	}
}
