package migrate

// The image's revision graph, to tell a database that is behind the image
// (its revision is one of the image's) from one that is ahead of it (migrated
// by a newer image: a rollback of the AMI) or foreign.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redash-agent/redash-agent/internal/desired"
)

// historyKeySuffix marks an image's revision list in the heads cache, beside
// its head (key: image id).
const historyKeySuffix = " history"

// History returns every revision the image's migrations know, from
// `manage db history` run once per image id and cached beside the head.
func History(ctx context.Context, o Options) ([]string, error) {
	o = o.withDefaults()
	if o.Runner == nil {
		return nil, errors.New("learning the image's revisions: no Runner configured")
	}
	key := cacheKey(o)
	if key != "" && o.HeadsCache != "" {
		cache, _ := readHeads(o.HeadsCache) // a damaged cache is reported by Head
		if h := cache[key+historyKeySuffix]; h != "" {
			return strings.Split(h, ","), nil
		}
	}
	code, logs, err := o.Runner.RunOneOff(ctx, oneOff(o, []string{"manage", "db", "history"}))
	if err != nil {
		return nil, fmt.Errorf("running \"manage db history\" in a one-off of %q: %w", o.Image, err)
	}
	if code != 0 {
		return nil, fmt.Errorf("running \"manage db history\" in a one-off of %q: exit code %d; last log lines:\n%s", o.Image, code, tail(logs, 20))
	}
	revs := parseHistory(logs)
	if len(revs) == 0 {
		return nil, fmt.Errorf("reading the output of \"manage db history\" of %q: no \"<down> -> <revision>, message\" line; last log lines:\n%s", o.Image, tail(logs, 20))
	}
	if key != "" && o.HeadsCache != "" {
		if err := writeHead(o.HeadsCache, key+historyKeySuffix, strings.Join(revs, ",")); err != nil {
			o.Logger.Warn("not caching the image's revisions; the next run asks the image again", "path", o.HeadsCache, "err", err)
		}
	}
	return revs, nil
}

// parseHistory reads Alembic's `history` output, one revision a line, newest
// first: "<down> -> <rev> (head), message", "<base> -> <rev>, message", and
// for a merge "<a>, <b> -> <rev> (mergepoint), message". Both sides count;
// lines without " -> " (Redash's startup warnings) are skipped.
func parseHistory(out string) []string {
	var revs []string
	add := func(r string) {
		r = strings.Trim(strings.TrimSpace(r), "()")
		if r != "" && r != "<base>" && !slices.Contains(revs, r) && headLine.MatchString(r+" (head)") {
			revs = append(revs, r)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		down, rest, ok := strings.Cut(strings.TrimSpace(line), " -> ")
		if !ok {
			continue
		}
		rev, _, _ := strings.Cut(rest, ",")
		rev, _, _ = strings.Cut(strings.TrimSpace(rev), " ")
		add(rev)
		for _, d := range strings.Split(down, ",") {
			add(d)
		}
	}
	return revs
}

// CachedHistory returns the revisions remembered for imageID, without
// running anything (for `status` and doctor).
func CachedHistory(path, imageID string) ([]string, bool) {
	cache, err := readHeads(path)
	if err != nil || cache[imageID+historyKeySuffix] == "" {
		return nil, false
	}
	return strings.Split(cache[imageID+historyKeySuffix], ","), true
}

// InspectKnown is Inspect that also tells StateAhead from StateBehind when
// the image's revisions are known (nil: it cannot, and says behind).
func InspectKnown(ctx context.Context, t desired.DB, head string, revisions []string) (State, error) {
	st, version, err := inspectVersion(ctx, t, head)
	if err != nil || st != StateBehind || revisions == nil {
		return st, redactUser(err, t.User)
	}
	for _, v := range version {
		if !slices.Contains(revisions, v) {
			return StateAhead, nil
		}
	}
	return st, nil
}
