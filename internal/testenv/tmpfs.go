package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// SmallTmpfs mounts a tmpfs of opts (e.g. "size=16k") on a temp dir and
// unmounts it when the test ends: a real file system that fills up, for
// full-disk tests. It needs root, as CI runs.
func SmallTmpfs(t testing.TB, opts string) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() != 0 {
		Unavailable(t, "a tmpfs mount (needs root)", "run the test as root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts+",mode=0755", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount -t tmpfs -o %s: %v: %s", opts, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}
