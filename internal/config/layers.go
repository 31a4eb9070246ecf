package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/redash-agent/redash-agent/internal/exitcode"
)

// DefaultFile is where the packaged config.yaml lives.
const DefaultFile = "/etc/redash-agent/config.yaml"

// FromTags keeps the instance tags that start with "redash:" and strips the prefix.
func FromTags(tags map[string]string) Layer {
	vals := map[string]string{}
	for k, v := range tags {
		if rest, ok := strings.CutPrefix(k, TagPrefix); ok {
			vals[rest] = v
		}
	}
	return Layer{Source: SourceTag, Origin: "instance tag", Values: vals}
}

// HasRedashTags reports whether any instance tag is meant for the agent.
func HasRedashTags(tags map[string]string) bool {
	for k := range tags {
		if strings.HasPrefix(k, TagPrefix) {
			return true
		}
	}
	return false
}

// LoadFile reads config.yaml. Keys are tag names without "redash:"; the
// families env, secret and workers may also be written as nested maps:
//
//	version: 10.1.0.b50633
//	env:
//	  REDASH_FEATURE_EXTENDED_ALERT_OPTIONS: "true"
//
// A missing file is an empty layer (tags then carry everything); present
// reports whether it existed. An unreadable or malformed file is a
// configuration error (exitcode.Config).
func LoadFile(path string) (l Layer, present bool, err error) {
	l = Layer{Source: SourceFile, Origin: path, Values: map[string]string{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, false, nil
	}
	// Both failures are configuration errors (exit 3): a restart reads the
	// same unreadable or malformed file again.
	if err != nil {
		return l, false, exitcode.ConfigError(fmt.Errorf("reading config file %q: %w: check its permissions (the agent runs as root)", path, err))
	}
	l.Values, err = ParseFile(data)
	if err != nil {
		return l, true, exitcode.ConfigError(fmt.Errorf("parsing config file %q: %w: it is YAML (key: value, keys as in the redash: tags without the prefix)", path, err))
	}
	return l, true, nil
}

// RequireFile is for a config file named explicitly (--config): unlike the
// default path, which a host configured by tags alone may lack, a path the
// operator typed must exist, or a typo would silently drop every setting in
// the file. Other failures to read it are LoadFile's to report.
func RequireFile(path string) error {
	if path == "" {
		return exitcode.ConfigError(fmt.Errorf("reading the config file: --config is empty: give the path of a config.yaml, or leave --config out to use %s", DefaultFile))
	}
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return exitcode.ConfigError(fmt.Errorf("reading config file %q given with --config: it does not exist: fix the path, or leave --config out to use %s (which may be absent)", path, DefaultFile))
	}
	return nil
}

// ParseFile flattens config.yaml content into tag-style keys. Every value
// is the text that was written: the file is decoded into yaml.Node and each
// scalar's literal Value is taken, so YAML's typing never rewrites it
// (`version: 10.10` stays "10.10", not the float 10.1; `project: 0123`
// stays "0123", not the octal 83; `server-port: 0x1F90` stays "0x1F90" and
// is refused as a port, not read as 8080). A key with no value (or ~/null)
// is unset. A second YAML document is an error: it used to be ignored
// silently, with every setting in it.
func ParseFile(data []byte) (map[string]string, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return map[string]string{}, nil // empty, or comments only
		}
		return nil, err
	}
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		// A trailing "---" with nothing after it hides no setting.
		if len(extra.Content) == 1 && isNull(extra.Content[0]) || len(extra.Content) == 0 {
			continue
		}
		return nil, fmt.Errorf("line %d: a second YAML document starts here (after a '---' line): keep every setting in one document, the agent reads no other", extra.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if isNull(root) {
		return map[string]string{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: the file is not a map: write one `key: value` per line", root.Line)
	}
	out := map[string]string{}
	seen := map[string]int{} // key -> line, to refuse a key set twice
	set := func(key string, line int, v *yaml.Node) error {
		if prev, dup := seen[key]; dup {
			return fmt.Errorf("line %d: key %q is already set on line %d: keep one", line, key, prev)
		}
		seen[key] = line
		s, ok, err := scalar(key, v)
		if err != nil || !ok {
			return err
		}
		out[key] = s
		return nil
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		kn, vn := root.Content[i], deref(root.Content[i+1])
		if kn.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("line %d: a key must be a plain name like version or db-endpoint", kn.Line)
		}
		k := strings.TrimPrefix(kn.Value, TagPrefix)
		if vn.Kind != yaml.MappingNode {
			if err := set(k, kn.Line, vn); err != nil {
				return nil, err
			}
			continue
		}
		if k != "env" && k != "secret" && k != "workers" {
			return nil, fmt.Errorf("line %d: key %q: a nested map is only allowed under env, secret and workers", kn.Line, k)
		}
		for j := 0; j+1 < len(vn.Content); j += 2 {
			skn, svn := vn.Content[j], deref(vn.Content[j+1])
			if skn.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("line %d: a key under %q must be a plain name", skn.Line, k)
			}
			if err := set(k+":"+skn.Value, skn.Line, svn); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// deref follows a YAML alias (`version: *v`) to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// isNull is a value left empty, ~ or null: the key is unset, e.g. when
// everything below it is commented out.
func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// scalar is the literal text of a one-value node; ok is false for null.
// Values are never echoed: an env value may be sensitive.
func scalar(key string, n *yaml.Node) (string, bool, error) {
	if isNull(n) {
		return "", false, nil
	}
	if n.Kind != yaml.ScalarNode {
		return "", false, fmt.Errorf("line %d: key %q: want a single value, got a list or map", n.Line, key)
	}
	return n.Value, true, nil
}
