package systemd

import "time"

// WatchdogInterval is the unit's WatchdogSec (0 when none); StartWatchdog
// pings at half of it.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}
