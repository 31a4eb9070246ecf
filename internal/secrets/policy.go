package secrets

import (
	"cmp"
	"github.com/redash-agent/redash-agent/internal/backoff"
	"time"
)

// Policy is the time budget of one Fetch: how long a single GetSecretValue
// exchange may take, how long the whole fetch may keep retrying, and how the
// retries are spaced. The caller's context can only shorten it: a fetch ends
// at the earlier of its ctx deadline and Deadline.
//
// A zero field takes Boot's value, so a partial Policy is never unbounded.
type Policy struct {
	// AttemptTimeout bounds one exchange: credentials, connect, TLS, request
	// and reading the answer. Secrets Manager answers in tens of
	// milliseconds; an endpoint that accepts and never answers (a
	// half-broken NAT, a VPC endpoint without a route back) must not hold
	// the fetch, so the attempt is cut and retried.
	AttemptTimeout time.Duration
	// Deadline bounds the whole fetch, every secret and retry included.
	Deadline time.Duration
	// BackoffBase is the delay step before the first retry; it doubles per
	// retry up to BackoffMax. The upper half of each delay is jittered so
	// that an Auto Scaling Group's instances do not retry in lockstep.
	BackoffBase time.Duration
	BackoffMax  time.Duration
}

// Boot is the policy of a boot (render, up, run's first converge). Nothing
// can start without the secrets, and a restart by systemd (RestartSec=15s)
// costs a whole new boot, so a blip of the network or of Secrets Manager
// (a NAT gateway or VPC endpoint still settling, a throttled burst of a
// scaling Auto Scaling Group, a short 5xx episode) is ridden out for a
// minute. Against an endpoint that never answers that is 7 or 8 attempts
// of 5 s with the backoff between them; against one that refuses or answers
// 5xx, 10 to 16 attempts with delays growing to 10 s (TestShippedPolicies;
// measured in docs/reliability.md).
var Boot = Policy{
	AttemptTimeout: 5 * time.Second,
	Deadline:       60 * time.Second,
	BackoffBase:    500 * time.Millisecond,
	BackoffMax:     10 * time.Second,
}

// Refresh is the policy of run's periodic re-fetch (secret rotation). The
// containers keep running with the secrets they have and the next tick tries
// again, so a refresh gives up sooner than a boot: it must not hold the loop
// that also restores dead containers, nor a SIGTERM, for long.
var Refresh = Policy{
	AttemptTimeout: 5 * time.Second,
	Deadline:       20 * time.Second,
	BackoffBase:    250 * time.Millisecond,
	BackoffMax:     5 * time.Second,
}

// orBoot fills zero fields from Boot.
func (p Policy) orBoot() Policy {
	return Policy{
		AttemptTimeout: cmp.Or(p.AttemptTimeout, Boot.AttemptTimeout),
		Deadline:       cmp.Or(p.Deadline, Boot.Deadline),
		BackoffBase:    cmp.Or(p.BackoffBase, Boot.BackoffBase),
		BackoffMax:     cmp.Or(p.BackoffMax, Boot.BackoffMax),
	}
}

// backoff returns the delay before retry number n (1-based): the step
// BackoffBase*2^(n-1), capped at BackoffMax, of which the upper half is
// jittered by j in [0,1): the agent's one schedule, internal/backoff.
func (p Policy) backoff(n int, j float64) time.Duration {
	return backoff.Policy{Base: min(p.BackoffBase, p.BackoffMax), Max: p.BackoffMax}.Delay(n, j)
}
