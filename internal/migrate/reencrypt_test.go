package migrate

import (
	"context"
	"strings"
	"testing"

	"github.com/redash-agent/redash-agent/internal/secrets"
)

type recordingRunner struct {
	got  OneOff
	logs string
}

func (r *recordingRunner) RunOneOff(_ context.Context, o OneOff) (int, string, error) {
	r.got = o
	return 1, r.logs, nil
}

// The keys reach the one-off's environment only: never its command, and
// never the returned log tail.
func TestReencryptKeepsKeysOutOfArgvAndLogs(t *testing.T) {
	old, nw := secrets.NewValue("old-key-Qx81"), secrets.NewValue("new-key-Zr27")
	r := &recordingRunner{logs: "line\nInvalid Decryption Key old-key-Qx81 new-key-Zr27\n"}
	code, tailText, err := Reencrypt(context.Background(), ReencryptOptions{
		Project: "p", Image: "img", Env: map[string]string{"REDASH_DATABASE_URL": "postgresql://x"}, Old: old, New: nw, Runner: r,
	})
	if err != nil || code != 1 {
		t.Fatalf("code %d err %v", code, err)
	}
	if strings.Contains(tailText, old.Reveal()) || strings.Contains(tailText, nw.Reveal()) || !strings.Contains(tailText, "[redacted]") {
		t.Errorf("log tail not redacted: %q", tailText)
	}
	for _, a := range r.got.Cmd {
		if strings.Contains(a, old.Reveal()) || strings.Contains(a, nw.Reveal()) {
			t.Errorf("a key is in the one-off's command: %q", r.got.Cmd)
		}
	}
	if r.got.Cmd[0] != "python" || r.got.Cmd[1] != "-c" || r.got.Cmd[2] != ReencryptScript {
		t.Errorf("command %q", r.got.Cmd)
	}
	if r.got.Env[ReencryptOldEnv] != old.Reveal() || r.got.Env[ReencryptNewEnv] != nw.Reveal() || r.got.Env["REDASH_DATABASE_URL"] == "" {
		t.Errorf("the one-off's environment lacks the keys or the database URL")
	}
}
