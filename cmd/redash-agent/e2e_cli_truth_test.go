package main

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/volume"

	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/testenv"
)

// localRun runs the binary with provider local under root (config, --dir
// and --state-dir all inside it), with no AWS endpoint at all.
func localRun(t *testing.T, root string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	full := append([]string{"--dir", filepath.Join(root, "redash"), "--state-dir", filepath.Join(root, "state"),
		"--config", filepath.Join(root, "config.yaml")}, args...)
	cmd := exec.Command(agentBinary(t), full...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	code = exitCodeOf(runAgent(t, cmd))
	if code < 0 {
		t.Fatalf("redash-agent %s did not run to an exit\n%s", strings.Join(args, " "), errb.String())
	}
	return out.String(), errb.String(), code
}

// tree lists every path under root with its mode and size: what a command
// that must write nothing may not change.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		got = append(got, fmt.Sprintf("%s %v %d", rel, info.Mode(), info.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(got)
	return got
}

// TestRenderDryRunAndPlanWriteNothing: with provider local and an empty
// state directory, `render --dry-run` prints the files and leaves the state
// directory and --dir exactly as they were: no generated secrets, no hash
// key, no lock. `render --plan` (with the images up would pull) writes only
// the hash key and the local secrets, so that its hashes are the ones up
// will use.
func TestRenderDryRunAndPlanWriteNothing(t *testing.T) {
	root := t.TempDir()
	project := fmt.Sprintf("rae2edry%d", time.Now().UnixNano()%1_000_000_000)
	cfg := fmt.Sprintf("provider: local\nproject: %s\nimage: redash-agent-test/absent:%d\n", project, time.Now().UnixNano())
	if err := os.WriteFile(filepath.Join(root, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	before := tree(t, root)

	stdout, stderr, code := localRun(t, root, "render", "--dry-run")
	if code != 0 || !strings.Contains(stdout, "(dry run, secret values redacted)") {
		t.Fatalf("render --dry-run exited %d\n%s\n%s", code, stdout, stderr)
	}
	if after := tree(t, root); !equalLines(before, after) {
		t.Errorf("render --dry-run changed the disk:\nbefore %q\nafter  %q", before, after)
	}

	testenv.DockerClient(t) // --plan observes Docker: skip (fail on CI) without it
	stdout, stderr, code = localRun(t, root, "render", "--plan")
	if code != 0 {
		t.Fatalf("render --plan exited %d\n%s\n%s", code, stdout, stderr)
	}
	// The hash key and the local secrets alone: the hashes the plan prints
	// are then up's.
	for _, kept := range []string{"hash-key", "local-secrets.json", "local-secrets.json.lock"} {
		if _, err := os.Stat(filepath.Join(root, "state", kept)); err != nil {
			t.Errorf("render --plan did not keep %s (up would hash with another one): %v", kept, err)
		}
		os.Remove(filepath.Join(root, "state", kept))
	}
	if after := tree(t, root); !equalLines(before, after) {
		t.Errorf("render --plan changed the disk beyond the hash key and the local secrets:\nbefore %q\nafter  %q", before, after)
	}
	for _, want := range []string{"# images: ", "#   pull    redash-agent-test/absent:", "(image; ", "(postgres-image; postgres)",
		"(redis-image; redis)", "# plan: "} {
		if !strings.Contains(stdout, want) {
			t.Errorf("render --plan output lacks %q:\n%s", want, stdout)
		}
	}
}

func equalLines(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// TestRenderPlanHelp: the --plan usage reads as written; pflag would turn a
// backquoted word into the flag's placeholder ("--plan up").
func TestRenderPlanHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main([]string{"render", "--help"}, &out, &errb); code != 0 {
		t.Fatalf("render --help exited %d: %s", code, errb.String())
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "--plan") && !strings.Contains(line, "--plan      also print the images up would pull") {
			t.Errorf("render --help shows --plan as %q", line)
		}
	}
	if strings.Contains(out.String(), "`") {
		t.Errorf("render --help prints a backquote:\n%s", out.String())
	}
}

// TestUpReportsEveryMissingImage: when several images are missing and
// cannot be pulled, `up` fails once naming all of them, each with the key
// that sets it, and advice for an AMI and for a plain Docker host. The
// references point at a loopback port where no registry listens, so every
// pull fails at once without leaving the machine.
func TestUpReportsEveryMissingImage(t *testing.T) {
	dc := testenv.DockerClient(t)
	root := t.TempDir()
	project := fmt.Sprintf("rae2eimg%d", time.Now().UnixNano()%1_000_000_000)
	removeProjectNetworksAtCleanup(t, dc, project)
	registry := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	cfg := fmt.Sprintf(`provider: local
project: %[1]s
image: %[2]s/absent/redash:v1
nginx-image: %[2]s/absent/nginx:v1
postgres-image: %[2]s/absent/postgres:v1
redis-image: %[2]s/absent/redis:v1
server-port: %[3]d
nginx-port: %[4]d
`, project, registry, testenv.FreePort(t), testenv.FreePort(t))
	if err := os.WriteFile(filepath.Join(root, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { localRun(t, root, "down", "--remove") })

	_, stderr, code := localRun(t, root, "up")
	if code == 0 {
		t.Fatalf("up succeeded with four unpullable images:\n%s", stderr)
	}
	last := stderr[strings.LastIndex(strings.TrimSpace(stderr), "\nredash-agent:")+1:]
	for _, want := range []string{
		"4 image(s) missing on this host and not pulled",
		registry + "/absent/redash:v1 (set by image; services ",
		registry + "/absent/nginx:v1 (set by nginx-image; service nginx)",
		registry + "/absent/postgres:v1 (set by postgres-image; service postgres)",
		registry + "/absent/redis:v1 (set by redis-image; service redis)",
		"docker load", "prepare-image",
	} {
		if !strings.Contains(last, want) {
			t.Errorf("up's error lacks %q:\n%s", want, last)
		}
	}
}

// TestDownKeepsTheDatabaseVolumeUnlessAsked: `down --remove` keeps the
// bundled database volume and says how to remove it; `down --volumes`
// removes it and says so. The volume is made directly, as Docker makes it
// when the postgres container is created.
func TestDownKeepsTheDatabaseVolumeUnlessAsked(t *testing.T) {
	dc := testenv.DockerClient(t)
	root := t.TempDir()
	project := fmt.Sprintf("rae2evol%d", time.Now().UnixNano()%1_000_000_000)
	name := project + "_postgres-data"
	if err := os.WriteFile(filepath.Join(root, "config.yaml"), []byte("provider: local\nproject: "+project+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := dc.VolumeCreate(ctx, volume.CreateOptions{Name: name}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = dc.VolumeRemove(context.Background(), name, true) })

	stdout, stderr, code := localRun(t, root, "down", "--remove")
	if code != 0 || !strings.Contains(stdout, "kept the database volume "+name) || !strings.Contains(stdout, "--volumes") {
		t.Fatalf("down --remove: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if _, err := dc.VolumeInspect(ctx, name); err != nil {
		t.Fatalf("down --remove removed the database volume: %v", err)
	}
	stdout, stderr, code = localRun(t, root, "down", "--volumes")
	if code != 0 || !strings.Contains(stdout, "removed the database volume "+name) {
		t.Fatalf("down --volumes: exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if _, err := dc.VolumeInspect(ctx, name); err == nil {
		t.Fatal("down --volumes left the database volume")
	}
	// Nothing left to remove: no word about volumes.
	stdout, _, code = localRun(t, root, "down", "--remove")
	if code != 0 || strings.Contains(stdout, "volume") {
		t.Errorf("down --remove without a volume: exit %d\n%s", code, stdout)
	}
}

// TestPrepareImageSaysWhatItRemoves: prepare-image prints each image once
// (the Redash services share one) and no line twice, and names every file
// it removed with why, the generated local secrets included: an AMI must
// not carry one host's secrets, and deleting them must not be silent.
func TestPrepareImageSaysWhatItRemoves(t *testing.T) {
	testenv.DockerClient(t)
	redash := redashImage(t, "redash-agent-test/redash:v1", "rev1")
	other := "redash-agent-test/nginx:latest"
	testenv.BuildFakeImage(t, testenv.FakeImage{Tag: other, Cmd: []string{"nginx"}})
	root := t.TempDir()
	project := fmt.Sprintf("rae2eprep%d", time.Now().UnixNano()%1_000_000_000)
	cfg := fmt.Sprintf("provider: local\nproject: %s\nimage: %s\nnginx-image: %s\npostgres-image: %s\nredis-image: %s\n",
		project, redash, other, other, other)
	if err := os.WriteFile(filepath.Join(root, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if stdout, stderr, code := localRun(t, root, "render"); code != 0 {
		t.Fatalf("render: exit %d\n%s\n%s", code, stdout, stderr)
	}
	secretsFile := filepath.Join(root, "state", "local-secrets.json")
	if _, err := os.Stat(secretsFile); err != nil {
		t.Fatalf("render made no local secrets: %v", err)
	}

	stdout, stderr, code := localRun(t, root, "prepare-image")
	if code != 0 {
		t.Fatalf("prepare-image: exit %d\n%s\n%s", code, stdout, stderr)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if seen[line] {
			t.Errorf("prepare-image printed %q twice:\n%s", line, stdout)
		}
		seen[line] = true
	}
	for _, want := range []string{"present: " + redash + "\n", "present: " + other + "\n",
		"removed: " + secretsFile + " (secrets generated for this host",
		"removed: " + filepath.Join(root, "redash", "env") + " ("} {
		if !strings.Contains(stdout, want) {
			t.Errorf("prepare-image output lacks %q:\n%s", want, stdout)
		}
	}
	if _, err := os.Stat(secretsFile); err == nil {
		t.Errorf("prepare-image left %s in the image", secretsFile)
	}
	// The image's schema head, learned for every instance, stays.
	heads := filepath.Join(root, "state", "heads.json")
	if !strings.Contains(stdout, "kept: "+heads+" (") {
		t.Errorf("prepare-image output lacks \"kept: %s\":\n%s", heads, stdout)
	}
	in, err := testenv.DockerClient(t).ImageInspect(context.Background(), redash)
	if err != nil {
		t.Fatal(err)
	}
	if head, ok := migrate.CachedHead(heads, in.ID); !ok || head != "rev1" {
		t.Errorf("heads cache after prepare-image: head of %s = %q, %v; want rev1", redash, head, ok)
	}
	if revs, ok := migrate.CachedHistory(heads, in.ID); !ok || !slices.Contains(revs, "rev1") {
		t.Errorf("heads cache after prepare-image: history of %s = %v, %v; want it to hold rev1", redash, revs, ok)
	}

	// An image whose `manage db heads` fails (not Redash): the bake goes
	// on, says instances will learn the head at boot, and keeps no cache.
	cfg = strings.Replace(cfg, "image: "+redash, "image: "+other, 1)
	if err := os.WriteFile(filepath.Join(root, "config.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = localRun(t, root, "prepare-image")
	if code != 0 || strings.Contains(stdout, "kept: ") || !strings.Contains(stderr, "will not carry its schema revisions") {
		t.Errorf("prepare-image of an image without a schema head: exit %d, want 0 with a warning and nothing kept\n%s\n%s", code, stdout, stderr)
	}
	if _, err := os.Stat(heads); err == nil {
		t.Errorf("prepare-image kept %s though it learned no head", heads)
	}
}
