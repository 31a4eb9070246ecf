package migrate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/redash-agent/redash-agent/internal/atomicfile"
)

// Head returns the image's head revision. It runs `manage db heads` in a
// one-off once per image id and remembers the answer in o.HeadsCache, so a
// database already at head costs one query and no container afterwards.
// Without an image id (or a digest reference) nothing is cached: a tag can
// move to another image with another head.
func Head(ctx context.Context, o Options) (string, error) {
	o = o.withDefaults()
	if o.Runner == nil {
		return "", errors.New("learning the image's head revision: no Runner configured")
	}
	key := cacheKey(o)
	if key != "" && o.HeadsCache != "" {
		cache, err := readHeads(o.HeadsCache)
		if err != nil {
			// A damaged cache only costs a container run; it is rewritten below.
			o.Logger.Warn("ignoring the heads cache", "path", o.HeadsCache, "err", err)
		}
		if h := cache[key]; h != "" {
			return h, nil
		}
	}

	code, logs, err := o.Runner.RunOneOff(ctx, oneOff(o, []string{"manage", "db", "heads"}))
	if err != nil {
		return "", fmt.Errorf("running \"manage db heads\" in a one-off of %q: %w", o.Image, err)
	}
	if code != 0 {
		return "", fmt.Errorf("running \"manage db heads\" in a one-off of %q: exit code %d: is it a Redash image? last log lines:\n%s", o.Image, code, tail(logs, 20))
	}
	head, err := parseHeads(logs)
	if err != nil {
		return "", fmt.Errorf("reading the output of \"manage db heads\" of %q: %w; last log lines:\n%s", o.Image, err, tail(logs, 20))
	}
	o.Logger.Info("learned the image's head revision", "image", o.Image, "head", head)

	if key != "" && o.HeadsCache != "" {
		if err := writeHead(o.HeadsCache, key, head); err != nil {
			o.Logger.Warn("not caching the head revision; the next run asks the image again", "path", o.HeadsCache, "err", err)
		}
	}
	return head, nil
}

func cacheKey(o Options) string {
	if o.ImageID != "" {
		return o.ImageID
	}
	if _, digest, ok := strings.Cut(o.Image, "@"); ok && strings.HasPrefix(digest, "sha256:") {
		return digest
	}
	return ""
}

// headLine is Alembic's `heads` output: "<rev> (head)", optionally followed
// by " (effective head)" or a branch label. Redash's startup may print
// warnings around it, so other lines are skipped.
var headLine = regexp.MustCompile(`^([0-9A-Za-z_]+) (?:\([^)]*\) )?\(head\)`)

// parseHeads finds the single head in `manage db heads` output.
func parseHeads(out string) (string, error) {
	var heads []string
	for _, line := range strings.Split(out, "\n") {
		if m := headLine.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			heads = append(heads, m[1])
		}
	}
	switch len(heads) {
	case 0:
		return "", errors.New(`no "<revision> (head)" line`)
	case 1:
		return heads[0], nil
	default:
		return "", fmt.Errorf("several heads %q: the image's migrations are branched and `manage db upgrade` would refuse them", heads)
	}
}

func readHeads(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return map[string]string{}, err
	}
	m := map[string]string{}
	if err := json.Unmarshal(data, &m); err != nil {
		return map[string]string{}, fmt.Errorf("parsing %q: %w", path, err)
	}
	return m, nil
}

func writeHead(path, key, head string) error {
	m, _ := readHeads(path)
	m[key] = head
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating the directory of %q: %w", path, err)
	}
	_, err = atomicfile.WriteFile(path, append(data, '\n'), 0o600)
	return err
}

// tail returns the last n lines of s, for error messages.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// CachedHead returns the head revision remembered for imageID, without
// running anything (for `status`).
func CachedHead(path, imageID string) (string, bool) {
	cache, err := readHeads(path)
	if err != nil || cache[imageID] == "" {
		return "", false
	}
	return cache[imageID], true
}
