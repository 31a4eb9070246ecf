package config

import (
	"regexp"
	"time"
)

// hookNameRE is the API's pattern of a lifecycle hook name.
var hookNameRE = regexp.MustCompile(`^[A-Za-z0-9\-_/]+$`)

// Default names of the lifecycle hooks, as packaging/cloudformation/redash.yaml
// names them on both groups.
const (
	DefaultLaunchHook    = "redash-launch"
	DefaultTerminateHook = "redash-terminate"
)

// Lifecycle is what the agent does for its Auto Scaling group: which hooks
// it completes, and how long a scale-in drain may take.
type Lifecycle struct {
	LaunchHook, TerminateHook string
	// DrainTimeout bounds the wait for running jobs at scale-in.
	DrainTimeout time.Duration
	// DeregisterWait is how long the web role fails /ping before it stops
	// the server: the ALB's health-check interval x unhealthy threshold.
	DeregisterWait time.Duration
}

// lifecycle reads the lifecycle-* and drain-* keys. It runs after
// frontDoor, whose worker-stop-grace is drain-timeout's default.
func (b *builder) lifecycle(c *Config) {
	m := b.m
	c.Lifecycle = Lifecycle{LaunchHook: m["lifecycle-hook-launch"], TerminateHook: m["lifecycle-hook-terminate"]}
	for _, k := range []string{"lifecycle-hook-launch", "lifecycle-hook-terminate"} {
		if v := m[k]; v == "" || len(v) > 255 || !hookNameRE.MatchString(v) {
			b.bad(k, "%q is not a lifecycle hook name (1 to 255 of A-Z a-z 0-9 - _ /): use the group's hook name, e.g. %s", v, DefaultLaunchHook)
		}
	}
	c.Lifecycle.DrainTimeout = c.WorkerStopGrace
	if v, set := m["drain-timeout"]; set {
		d, err := time.ParseDuration(v)
		if err != nil || d < MinWorkerStopGrace || d > MaxWorkerStopGrace {
			b.bad("drain-timeout", "%q is not a duration from %s to %s, e.g. 5m: it is how long a scale-in waits for running jobs", v, MinWorkerStopGrace, MaxWorkerStopGrace)
		}
		c.Lifecycle.DrainTimeout = d
	}
	v := m["drain-deregister-wait"]
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 15*time.Minute {
		b.bad("drain-deregister-wait", "%q is not a duration from 0s to 15m, e.g. 60s (the ALB health check's interval x unhealthy threshold)", v)
	}
	c.Lifecycle.DeregisterWait = d
}
