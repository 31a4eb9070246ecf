package engine

import (
	"context"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
)

// WatchContainers reports the name of a service container of the project
// that died or was destroyed (one-offs excluded). The subscription lives
// until ctx ends, one event arrives or the returned stop is called; when
// the events stream fails it only logs, and the caller's timer takes over.
func (e *Engine) WatchContainers(ctx context.Context, project string) (<-chan string, func()) {
	out := make(chan string, 1)
	wctx, cancel := context.WithCancel(ctx)
	msgs, errs := e.Docker.Events(wctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("type", string(events.ContainerEventType)),
		filters.Arg("label", LabelProject+"="+project),
		filters.Arg("label", LabelOneOff+"="+oneOffFalse),
		filters.Arg("event", string(events.ActionDie)),
		filters.Arg("event", string(events.ActionDestroy)),
	)})
	go func() {
		defer cancel()
		select {
		case m := <-msgs:
			out <- m.Actor.Attributes["name"]
		case err := <-errs:
			if wctx.Err() == nil {
				e.log().Warn("docker events stream ended; relying on the refresh timer", "err", err)
			}
		case <-wctx.Done():
		}
	}()
	return out, cancel
}
