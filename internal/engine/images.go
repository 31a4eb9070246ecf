package engine

import (
	"context"
	"sort"
)

// EnsureImages makes every image of the desired project present, pulling
// only the missing ones (never building). The agent calls it before the
// migration, which runs the Redash image as a one-off, and `prepare-image`
// calls it to bake the images into the AMI.
func (e *Engine) EnsureImages(ctx context.Context, d Desired) error {
	if err := validate(d); err != nil {
		return err
	}
	seen := map[string]bool{}
	var refs []string
	for _, svc := range d.Project.Services {
		if svc.Image != "" && !seen[svc.Image] {
			seen[svc.Image] = true
			refs = append(refs, svc.Image)
		}
	}
	sort.Strings(refs)
	for _, ref := range refs {
		if err := e.ensureImage(ctx, ref); err != nil {
			return err
		}
	}
	return nil
}
