package main

import (
	"context"

	"github.com/redash-agent/redash-agent/internal/agent"
)

// locked runs fn holding the host lock on --dir (Agent.Lock), so a command
// that changes the host (files, containers, the database, images) never
// interleaves with `run` or another command: it waits for the holder and
// then fails naming it. `up` is not wrapped: Agent.Up takes the same lock
// itself, after rendering, and flock(2) would make a second hold from this
// process wait on the first.
func locked(ctx context.Context, a *agent.Agent, fn func() error) error {
	lock, err := a.Lock(ctx)
	if err != nil {
		return err
	}
	defer lock.Release()
	return fn()
}
