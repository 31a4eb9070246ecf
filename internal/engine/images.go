package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// ImageUse is one image of the desired project: the setting that chooses
// it, the services that run it, and whether this host has it.
type ImageUse struct {
	Ref      string   `json:"ref"`
	Key      string   `json:"key"` // the config key (redash: tag) that sets it
	Services []string `json:"services"`
	Present  bool     `json:"present"`
}

// ImageKey is the config key (and redash: tag) that sets the image of a
// service: nginx, postgres and redis have their own, every Redash service
// (server, scheduler, workers) runs `image`.
func ImageKey(service string) string {
	switch service {
	case compose.NginxService:
		return "nginx-image"
	case compose.PostgresService:
		return "postgres-image"
	case compose.RedisService:
		return "redis-image"
	}
	return "image"
}

// Images lists every image of the desired project, sorted by reference,
// and whether each is present. It only reads.
func (e *Engine) Images(ctx context.Context, d Desired) ([]ImageUse, error) {
	if err := validate(d); err != nil {
		return nil, err
	}
	byRef := map[string]*ImageUse{}
	for _, svc := range d.Project.Services {
		if svc.Image == "" {
			continue
		}
		u := byRef[svc.Image]
		if u == nil {
			u = &ImageUse{Ref: svc.Image, Key: ImageKey(svc.Name)}
			byRef[svc.Image] = u
		}
		u.Services = append(u.Services, svc.Name)
	}
	uses := make([]ImageUse, 0, len(byRef))
	for _, u := range byRef {
		sort.Strings(u.Services)
		id, err := e.ImageID(ctx, u.Ref)
		if err != nil {
			return nil, err
		}
		u.Present = id != ""
		uses = append(uses, *u)
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].Ref < uses[j].Ref })
	return uses, nil
}

// EnsureImages makes every image of the desired project present, pulling
// only the missing ones (never building). The agent calls it before the
// migration, which runs the Redash image as a one-off, and `prepare-image`
// calls it to bake the images into the AMI. Every missing image is tried;
// those that could not be pulled are reported together (MissingImagesError),
// so an operator fixes them in one pass.
func (e *Engine) EnsureImages(ctx context.Context, d Desired) error {
	uses, err := e.Images(ctx, d)
	if err != nil {
		return err
	}
	var failed []MissingImage
	for _, u := range uses {
		if u.Present {
			continue
		}
		if err := e.ensureImage(ctx, u.Ref); err != nil {
			if ctx.Err() != nil {
				return err
			}
			failed = append(failed, MissingImage{ImageUse: u, Err: err})
		}
	}
	if len(failed) > 0 {
		return &MissingImagesError{Images: failed}
	}
	return nil
}

// missingImages reports the failed pulls of a plan's images stage (errs is
// indexed like p.Actions) as one MissingImagesError.
func missingImages(d Desired, p Plan, errs []error) error {
	uses := map[string]ImageUse{}
	for _, svc := range d.Project.Services {
		u := uses[svc.Image]
		u.Ref, u.Key = svc.Image, ImageKey(svc.Name)
		u.Services = append(u.Services, svc.Name)
		uses[svc.Image] = u
	}
	var failed []MissingImage
	for i, err := range errs {
		if err == nil {
			continue
		}
		u, ok := uses[p.Actions[i].Image]
		if p.Actions[i].Kind != ActPull || !ok {
			return errors.Join(errs...) // not a pull: report as is
		}
		sort.Strings(u.Services)
		failed = append(failed, MissingImage{ImageUse: u, Err: err})
	}
	sort.Slice(failed, func(i, j int) bool { return failed[i].Ref < failed[j].Ref })
	return &MissingImagesError{Images: failed}
}

// MissingImage is an image that is not on the host and could not be pulled.
type MissingImage struct {
	ImageUse
	Err error // why the pull failed
}

// MissingImagesError names every image that could not be made present, with
// the key that sets each, and how to fix it on an AMI or any Docker host.
type MissingImagesError struct{ Images []MissingImage }

func (e *MissingImagesError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d image(s) missing on this host and not pulled:", len(e.Images))
	for i, m := range e.Images {
		sep := " "
		if i > 0 {
			sep = "; "
		}
		svc := "service"
		if len(m.Services) > 1 {
			svc = "services"
		}
		fmt.Fprintf(&b, "%s%s (set by %s; %s %s): %v", sep, m.Ref, m.Key, svc, strings.Join(m.Services, ", "), m.Err)
	}
	b.WriteString(". Fix: make each image present, or point its key at one that is: on a Docker host, `docker pull`, " +
		"`docker load` or `docker build -t` it, or set the key to an image you have (--set KEY=IMAGE, config.yaml, " +
		"or the redash:KEY instance tag); for an AMI, bake the images in with `redash-agent prepare-image` in the image build " +
		"and check that the instance can reach the registry")
	return b.String()
}

// Unwrap gives errors.Is and errors.As each pull's error.
func (e *MissingImagesError) Unwrap() []error {
	errs := make([]error, 0, len(e.Images))
	for _, m := range e.Images {
		errs = append(errs, m.Err)
	}
	return errs
}
