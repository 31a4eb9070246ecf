package compose

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
	"gopkg.in/yaml.v3"
)

// extensionKey is a top-level key carrying what the file cannot say in
// standard fields. Debian's docker-compose 1.29 rejects the top-level `name:`
// that compose-go writes, but accepts any `x-` key, so the project name
// travels here, and the tests' Load (load_test.go) puts it back.
const extensionKey = "x-redash-agent"

type extension struct {
	Project string `yaml:"project"`
}

const header = `Written by redash-agent from the instance's configuration; edits are
overwritten at the next boot. Secrets and connection URLs live only in ./env.
A literal $ is written as $$ (compose interpolation).`

// Marshal writes p as YAML that compose-go, `docker compose` and Debian's
// docker-compose 1.29 all load back to p. Every `$` in a value is written as
// `$$`, so no value is ever interpolated.
//
// compose-go's own output is adapted where 1.29 rejects it: no top-level
// `name:` (see extensionKey), env_file entries as plain paths instead of
// {path, required} (required is the default), and depends_on entries without
// `required: true` (also the default). Anything that cannot be written that
// way is an error rather than a file one of the readers refuses.
func Marshal(p *types.Project) ([]byte, error) {
	raw, err := p.MarshalYAML()
	if err != nil {
		return nil, fmt.Errorf("writing compose project %q as YAML: %w", p.Name, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("re-reading compose project %q: %w", p.Name, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("writing compose project %q: compose-go wrote no mapping", p.Name)
	}
	root := doc.Content[0]
	deleteKey(root, "name")
	if p.Name != "" {
		var ext yaml.Node
		if err := ext.Encode(extension{Project: p.Name}); err != nil {
			return nil, err
		}
		root.Content = append([]*yaml.Node{scalar(extensionKey), &ext}, root.Content...)
	}
	if services := get(root, "services"); services != nil {
		for i := 0; i+1 < len(services.Content); i += 2 {
			name, svc := services.Content[i].Value, services.Content[i+1]
			if err := compat129(name, svc); err != nil {
				return nil, fmt.Errorf("writing compose project %q: %w", p.Name, err)
			}
		}
	}
	escape(root)
	root.HeadComment = header

	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("writing compose project %q as YAML: %w", p.Name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// compat129 rewrites one service's long forms that docker-compose 1.29's
// schema rejects into the short forms meaning the same to compose-go.
func compat129(name string, svc *yaml.Node) error {
	if ef := get(svc, "env_file"); ef != nil && ef.Kind == yaml.SequenceNode {
		for i, e := range ef.Content {
			if e.Kind != yaml.MappingNode {
				continue
			}
			path := get(e, "path")
			if path == nil || len(e.Content) != 2 {
				return fmt.Errorf("service %q: env_file entry with options other than path cannot be written for docker-compose 1.29: use a required env file without format", name)
			}
			ef.Content[i] = path
		}
	}
	if deps := get(svc, "depends_on"); deps != nil && deps.Kind == yaml.MappingNode {
		for i := 1; i < len(deps.Content); i += 2 {
			d := deps.Content[i]
			if r := get(d, "required"); r != nil {
				if r.Value != "true" {
					return fmt.Errorf("service %q: optional dependency %q cannot be written for docker-compose 1.29: make it required", name, deps.Content[i-1].Value)
				}
				deleteKey(d, "required")
			}
		}
	}
	return nil
}

// escape doubles every `$` in scalar values (not keys), the compose escape
// for a literal dollar.
func escape(n *yaml.Node) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 1; i < len(n.Content); i += 2 {
			escape(n.Content[i])
		}
	case yaml.SequenceNode, yaml.DocumentNode:
		for _, c := range n.Content {
			escape(c)
		}
	case yaml.ScalarNode:
		n.Value = strings.ReplaceAll(n.Value, "$", "$$")
	}
}

func scalar(v string) *yaml.Node { return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: v} }

func get(m *yaml.Node, key string) *yaml.Node {
	if m == nil || m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

func deleteKey(m *yaml.Node, key string) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content = append(m.Content[:i], m.Content[i+2:]...)
			return
		}
	}
}
