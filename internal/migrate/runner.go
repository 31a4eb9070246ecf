package migrate

import (
	"context"

	"github.com/redash-agent/redash-agent/internal/engine"
)

// Runner runs one command of the target image to completion. The engine
// is the real one (it owns every Docker side effect: the project network,
// labels, the log tail, removal); tests fake it to answer without Docker.
type Runner interface {
	RunOneOff(ctx context.Context, spec OneOff) (exitCode int, logs string, err error)
}

// OneOff is one command of the Redash image, the way `docker compose run`
// would start it. Env is handed to Docker only.
type OneOff = engine.OneOff

var _ Runner = (*engine.Engine)(nil)

// oneOffName is the middle of the one-offs' container names
// (<project>-migrate-<random>).
const oneOffName = "migrate"
