package compose

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// Load parses a compose file written by Marshal, as if it were
// dir/docker-compose.yml, with compose-go's loader: validation,
// interpolation (so `$$` becomes `$`) and normalization. It reads nothing
// from disk or the process environment: env_file is not resolved (the
// secrets stay in the env file, out of the project) and nothing is
// interpolated from the shell. For Marshal's output the result equals the
// project that was marshalled.
//
// The project name comes from the x-redash-agent extension; a file without it
// is named after dir, as `docker compose` would name it.
func Load(ctx context.Context, dir string, data []byte) (*types.Project, error) {
	var head map[string]yaml.Node
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("loading compose file in %q: %w: rewrite it with `redash-agent render`", dir, err)
	}
	name := loader.NormalizeProjectName(filepath.Base(dir))
	if n, ok := head[extensionKey]; ok {
		var ext extension
		if err := n.Decode(&ext); err != nil {
			return nil, fmt.Errorf("loading compose file in %q: reading %s: %w", dir, extensionKey, err)
		}
		if ext.Project != "" {
			name = ext.Project
		}
	}
	if name == "" {
		return nil, fmt.Errorf("loading compose file in %q: no project name: add %s.project", dir, extensionKey)
	}

	file := filepath.Join(dir, FileName)
	details := types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: file, Content: data}},
		Environment: types.Mapping{},
	}
	p, err := loader.LoadWithContext(ctx, details, func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.SkipResolveEnvironment = true
		// Keep ./env as written: Project says ./env, and resolving it would
		// make the loaded project differ from the one the agent built.
		o.ResolvePaths = false
	})
	if err != nil {
		return nil, fmt.Errorf("loading compose file %q: %w", file, err)
	}
	if p == nil {
		return nil, errors.New("loading compose file: compose-go returned no project")
	}
	delete(p.Extensions, extensionKey)
	if len(p.Extensions) == 0 {
		p.Extensions = nil
	}
	if len(p.DisabledServices) == 0 {
		p.DisabledServices = nil
	}
	p.ComposeFiles = []string{file}
	p.Environment = nil
	return p, nil
}
