package config

import (
	"strconv"
	"time"
)

// Bounds of metrics-interval: a shorter one would pay for a PutMetricData
// call every few seconds; a longer one leaves target tracking, which
// evaluates one-minute data points, blind.
const (
	MinMetricsInterval = 10 * time.Second
	MaxMetricsInterval = time.Hour
)

// metrics reads metrics-interval ("0" or "off" turns the publisher off)
// and metrics-resolution (CloudWatch accepts 60 and 1 only).
func (b *builder) metrics(c *Config) {
	switch v := b.m["metrics-interval"]; v {
	case "0", "off":
		c.MetricsInterval = 0
	default:
		d, err := time.ParseDuration(v)
		if err != nil || d < MinMetricsInterval || d > MaxMetricsInterval {
			b.bad("metrics-interval", "%q is not a duration from %s to %s, or 0/off to publish no backlog metrics, e.g. 1m", v, MinMetricsInterval, MaxMetricsInterval)
		}
		c.MetricsInterval = d
	}
	switch v := b.m["metrics-resolution"]; v {
	case "60", "1":
		c.MetricsResolution, _ = strconv.Atoi(v)
	default:
		b.bad("metrics-resolution", "%q is not a CloudWatch storage resolution: use 60 (standard, one data point a minute) or 1 (high resolution, billed as such)", v)
	}
}
