package testenv

// foreign.go makes an image of another CPU architecture without a registry
// or an emulator: a `docker save` tarball (manifest.json, an image config
// naming the architecture, one small layer) generated here and sent to
// `docker load`. Its containers cannot run on this host; it exists for the
// checks that must refuse it before anything starts. Side effect: creates
// or retags the image in the local Docker Engine.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// ForeignImage loads an image tagged tag whose config says linux/arch
// (e.g. "arm64") and returns its ID. It is labelled FakeImageLabel.
func ForeignImage(t testing.TB, tag, arch string) string {
	t.Helper()
	cli := DockerClient(t)
	data, err := foreignTarball(tag, arch)
	if err != nil {
		t.Fatalf("writing the %s image tarball: %v", arch, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), imageBuildTimeout)
	defer cancel()
	resp, err := cli.ImageLoad(ctx, bytes.NewReader(data))
	if err != nil {
		t.Fatalf("docker load of a %s image %q: %v", arch, tag, err)
	}
	defer resp.Body.Close()
	if _, err := readJSONMessages(resp.Body); err != nil {
		t.Fatalf("docker load of %q: %v", tag, err)
	}
	in, err := cli.ImageInspect(ctx, tag)
	if err != nil {
		t.Fatalf("inspecting the loaded image %q: %v", tag, err)
	}
	if in.Architecture != arch {
		t.Fatalf("loaded image %q says architecture %q, want %q", tag, in.Architecture, arch)
	}
	return in.ID
}

// foreignTarball is the docker-save format of a one-layer image.
func foreignTarball(tag, arch string) ([]byte, error) {
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	body := []byte("an image built for " + arch + "\n")
	if err := lw.WriteHeader(&tar.Header{Name: "README", Mode: 0o644, Size: int64(len(body)), ModTime: time.Unix(0, 0)}); err != nil {
		return nil, err
	}
	lw.Write(body)
	if err := lw.Close(); err != nil {
		return nil, err
	}
	diffID := sha256.Sum256(layer.Bytes())
	config, err := json.Marshal(map[string]any{
		"architecture": arch,
		"os":           "linux",
		"created":      "2025-01-01T00:00:00Z",
		"config": map[string]any{
			"Entrypoint": []string{"/fakeredash"},
			"Cmd":        []string{"server"},
			"Labels":     map[string]string{FakeImageLabel: "foreign-" + arch},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + hex.EncodeToString(diffID[:])}},
	})
	if err != nil {
		return nil, err
	}
	configSum := sha256.Sum256(config)
	configName := hex.EncodeToString(configSum[:]) + ".json"
	layerName := hex.EncodeToString(diffID[:]) + "/layer.tar"
	manifest, err := json.Marshal([]map[string]any{{"Config": configName, "RepoTags": []string{tag}, "Layers": []string{layerName}}})
	if err != nil {
		return nil, err
	}

	var out bytes.Buffer
	tw := tar.NewWriter(&out)
	for _, f := range []struct {
		name string
		data []byte
	}{{configName, config}, {layerName, layer.Bytes()}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(0, 0)}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("writing %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}
