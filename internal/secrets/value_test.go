package secrets

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestValueRedactsEverywhere(t *testing.T) {
	v := NewValue("Hunter2-Plain")
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "v", v, "s", struct{ V Value }{v})
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "v", v)
	js, _ := json.Marshal(map[string]any{"v": v, "p": &v})
	outs := map[string]string{
		"%v": fmt.Sprintf("%v", v), "%s": fmt.Sprintf("%s", v), "%q": fmt.Sprintf("%q", v),
		"%+v struct": fmt.Sprintf("%+v", struct{ V Value }{v}), "%#v": fmt.Sprintf("%#v", v),
		"%x": fmt.Sprintf("%x", v), "Sprint": fmt.Sprint(v), "error": fmt.Errorf("e: %v", v).Error(),
		"json": string(js), "slog": logs.String(),
	}
	for name, out := range outs {
		if strings.Contains(out, "Hunter2") || !strings.Contains(out, "[redacted]") {
			t.Errorf("%s printed %q", name, out)
		}
	}
	if v.Reveal() != "Hunter2-Plain" || v.IsZero() || !NewValue("").IsZero() {
		t.Errorf("Reveal/IsZero broken")
	}
}
