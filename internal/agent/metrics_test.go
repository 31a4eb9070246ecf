package agent

import (
	"slices"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/desired"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

func metricsRendered(version, role string, local bool) Rendered {
	queues := "queries adhoc_extra"
	return Rendered{
		Config: config.Config{Version: version, Role: role, Project: "prod", MetricsInterval: time.Minute, MetricsResolution: 60, Region: "eu-west-1"},
		State: desired.State{
			DB:    desired.DB{Host: "db", Port: 5432, Name: "redash"},
			Redis: desired.RedisConn{Addr: "redis:6379", TLS: true, Password: secrets.NewValue("tok")},
			Spec:  compose.Spec{Local: local},
		},
		Project: &types.Project{Name: "prod", Services: types.Services{
			"adhoc_worker": {Name: "adhoc_worker", ContainerSpec: types.ContainerSpec{Environment: types.MappingWithEquals{compose.EnvQueues: &queues}}},
		}},
	}
}

// TestMetricsSettings: only instances that run workers publish, with
// provider local's bundled services and metrics-interval off left out; the
// queues are the release's defaults and the workers' QUEUES; Cluster is
// the project.
func TestMetricsSettings(t *testing.T) {
	for _, tc := range []struct {
		name    string
		r       Rendered
		publish bool
	}{
		{"role all", metricsRendered("10.1.0.b50633", compose.RoleAll, false), true},
		{"role worker", metricsRendered("10.1.0.b50633", compose.RoleWorker, false), true},
		{"role web", metricsRendered("10.1.0.b50633", compose.RoleWeb, false), false},
		{"bundled redis", metricsRendered("10.1.0.b50633", compose.RoleAll, true), false},
		{"off", func() Rendered {
			r := metricsRendered("10.1.0.b50633", compose.RoleAll, false)
			r.Config.MetricsInterval = 0
			return r
		}(), false},
	} {
		s := metricsSettings(tc.r)
		if s.Publish != tc.publish || (!s.Publish && s.Why == "") {
			t.Errorf("%s: publish %v (%q), want %v", tc.name, s.Publish, s.Why, tc.publish)
		}
	}
	s := metricsSettings(metricsRendered("10.1.0.b50633", compose.RoleWorker, false))
	want := []string{"adhoc_extra", "default", "emails", "periodic", "queries", "scheduled_queries", "schemas"}
	if !slices.Equal(s.Source.Queues, want) || s.Source.Celery || s.Source.Cluster != "prod" || !s.Source.Redis.TLS || s.Source.Redis.Password != "tok" {
		t.Errorf("RQ source %+v, want queues %v, cluster prod, TLS and the AUTH token", s.Source, want)
	}
	if s.Region != "eu-west-1" || s.Interval != time.Minute || s.DB.Host != "db" {
		t.Errorf("settings %+v", s)
	}
	s8 := metricsSettings(metricsRendered("8.0.0.b32245", compose.RoleWorker, false))
	if want := []string{"adhoc_extra", "celery", "queries", "scheduled_queries", "schemas"}; !s8.Source.Celery || !slices.Equal(s8.Source.Queues, want) {
		t.Errorf("8.x source %+v, want Celery queues %v", s8.Source, want)
	}
}
