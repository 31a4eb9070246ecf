package agent

import (
	"context"

	"github.com/redash-agent/redash-agent/internal/engine"
)

// Images lists the images r's project runs and whether this host has each:
// `render --plan` shows what `up` would pull. It only reads.
func (a *Agent) Images(ctx context.Context, r Rendered) ([]engine.ImageUse, error) {
	eng, d, err := a.dockerFor(r)
	if err != nil {
		return nil, err
	}
	defer eng.Close()
	return eng.Images(ctx, d)
}
