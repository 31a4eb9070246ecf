package desired

import (
	"testing"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/envfile"
)

// BenchmarkRenderPath measures the pure part of `render`: config + secrets
// to env file bytes and compose YAML bytes (no IMDS, no Secrets Manager).
// go test -bench RenderPath -benchmem ./internal/desired/
func BenchmarkRenderPath(b *testing.B) {
	cfg := resolve(&testing.T{}, map[string]string{
		"db-endpoint": "aurora.cluster-abc.us-east-1.rds.amazonaws.com:5432", "redis-endpoint": "cache:6379",
		"version": "10.1.0.b50633", "log-group": "/redash/prod", "env:REDASH_FEATURE_EXTENDED_ALERT_OPTIONS": "true",
	})
	cfg.Region = "us-east-1"
	got := seed("redash", "p@ss:w/rd")
	b.ReportAllocs()
	for b.Loop() {
		st, err := Build(cfg, got, "/opt/redash")
		if err != nil {
			b.Fatal(err)
		}
		p, err := compose.Project(st.Spec)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := compose.Marshal(p); err != nil {
			b.Fatal(err)
		}
		if _, err := envfile.Render(st.Env); err != nil {
			b.Fatal(err)
		}
	}
}
