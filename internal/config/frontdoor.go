package config

import (
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// Values of redash:load-balancer: what sits in front of this instance.
const (
	// LoadBalancerALB: an AWS Application Load Balancer forwards to the
	// instance and appends the client's address to X-Forwarded-For.
	LoadBalancerALB = "alb"
	// LoadBalancerNone: clients (or a proxy that adds no X-Forwarded-For)
	// reach the instance directly.
	LoadBalancerNone = "none"
)

// Bounds and default of redash:worker-stop-grace.
const (
	DefaultWorkerStopGrace = compose.DefaultWorkerStopGrace
	MinWorkerStopGrace     = 10 * time.Second
	// MaxWorkerStopGrace also sizes the agent's converge deadline (see
	// agent.ConvergeDeadline): a recreate may wait this long for a worker.
	MaxWorkerStopGrace = time.Hour
)

// Variables of redash:env: the agent sets itself but lets an operator
// override, checked here because Redash parses them at import time: a value
// its settings module cannot parse fails every command of the image.
const (
	EnvProxiesCount = "REDASH_PROXIES_COUNT"
	EnvEnforceCSRF  = "REDASH_ENFORCE_CSRF"
)

var decimalRE = regexp.MustCompile(`^[0-9]{1,3}$`)

// frontDoor reads load-balancer and worker-stop-grace, and checks the
// overrides of the variables the agent derives from them.
func (b *builder) frontDoor(c *Config) {
	m := b.m
	c.LoadBalancer = m["load-balancer"]
	if _, set := m["load-balancer"]; !set {
		// An AWS instance of this agent sits behind the ALB of the
		// template; a local one is reached directly.
		c.LoadBalancer = LoadBalancerNone
		if c.Provider == ProviderAWS {
			c.LoadBalancer = LoadBalancerALB
		}
	}
	switch c.LoadBalancer {
	case LoadBalancerALB, LoadBalancerNone:
	default:
		b.bad("load-balancer", "%q is not a load balancer: use alb (an Application Load Balancer forwards to this instance) or none (clients connect directly)", c.LoadBalancer)
	}

	v := m["worker-stop-grace"]
	d, err := time.ParseDuration(v)
	if err != nil || d < MinWorkerStopGrace || d > MaxWorkerStopGrace {
		b.bad("worker-stop-grace", "%q is not a duration from %s to %s, e.g. 5m: it is how long a worker may finish its running job when it is stopped", v, MinWorkerStopGrace, MaxWorkerStopGrace)
	}
	c.WorkerStopGrace = d

	if pc, set := c.Env[EnvProxiesCount]; set {
		key := "env:" + EnvProxiesCount
		n, err := strconv.Atoi(pc)
		switch {
		case err != nil || !decimalRE.MatchString(pc):
			b.bad(key, "%q is not a number of proxies: Redash reads it with int() and every command would fail; write 0, 1 or 2", pc)
		case n == 0 && b.family(c).Major > 0 && b.family(c).Layout() == compose.Celery:
			// werkzeug 0.11's ProxyFix (Redash 8) reads 0 as "the first
			// X-Forwarded-For entry", which the client writes, and fails
			// every request without the header (an IndexError).
			b.bad(key, "0 is unsafe on Redash %s: its werkzeug 0.11 ProxyFix then takes the client-written first X-Forwarded-For entry and answers 500 to requests without the header; remove this key (the agent counts the proxies) or write 1 or more", c.Version)
		}
	}
	if v, set := c.Env[EnvEnforceCSRF]; set {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "yes", "true", "on", "1", "no", "false", "off", "0", "none":
		default:
			b.bad("env:"+EnvEnforceCSRF, "%q is not a boolean Redash reads (its parse_boolean raises, and every command would fail): write true or false", v)
		}
	}
}

// family is the release family of c.Version, the zero Family when the
// version names none (versionAndImages reports that).
func (b *builder) family(c *Config) compose.Family {
	f, err := compose.FamilyFor(c.Version)
	if err != nil || !versionRE.MatchString(c.Version) {
		return compose.Family{}
	}
	return f
}
