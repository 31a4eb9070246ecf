package config

import (
	"errors"
	"fmt"
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

// ParseFile flattens config.yaml content into tag-style keys.
func ParseFile(data []byte) (map[string]string, error) {
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for k, v := range raw {
		k = strings.TrimPrefix(k, TagPrefix)
		switch vv := v.(type) {
		case nil:
			continue // a key with no value, e.g. all commented out below it
		case map[string]any:
			if k != "env" && k != "secret" && k != "workers" {
				return nil, fmt.Errorf("key %q: a nested map is only allowed under env, secret and workers", k)
			}
			for sk, sv := range vv {
				s, err := scalar(k+":"+sk, sv)
				if err != nil {
					return nil, err
				}
				out[k+":"+sk] = s
			}
		default:
			s, err := scalar(k, vv)
			if err != nil {
				return nil, err
			}
			out[k] = s
		}
	}
	return out, nil
}

func scalar(key string, v any) (string, error) {
	switch vv := v.(type) {
	case string:
		return vv, nil
	case bool, int, int64, uint64, float64:
		return fmt.Sprint(vv), nil
	default:
		return "", fmt.Errorf("key %q: want a single value, got %T", key, v)
	}
}
