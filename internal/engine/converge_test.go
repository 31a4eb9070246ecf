package engine

import "context"

// converge is what the agent's Up does with the engine, in one call for
// tests: observe, plan, then apply every stage in order.
func converge(ctx context.Context, e *Engine, d Desired) (Plan, error) {
	o, err := e.Observe(ctx, d)
	if err != nil {
		return Plan{}, err
	}
	p := ComputePlan(d, o)
	return p, applyAll(ctx, e, d, p)
}

// applyAll applies every stage of p as Agent.Up does: images, backing
// services, then the containers with their readiness waits.
func applyAll(ctx context.Context, e *Engine, d Desired, p Plan) error {
	for _, stages := range [][]Stage{{StageImages}, {StageBacking}, {StageContainers, StageReady}} {
		if err := e.Apply(ctx, d, p, stages...); err != nil {
			return err
		}
	}
	return nil
}
