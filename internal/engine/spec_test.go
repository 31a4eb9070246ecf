package engine

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

// TestBuildSpecGolden pins the whole container the engine creates for each
// service of a small project: labels, env, ports, aliases, restart policy.
func TestBuildSpecGolden(t *testing.T) {
	d := desired()
	d.Project.WorkingDir = "/opt/redash"
	d.Project.ComposeFiles = []string{"/opt/redash/docker-compose.yml"}
	srv := d.Project.Services["server"]
	srv.Ports = []types.ServicePortConfig{{Target: 5000, Published: "5000", HostIP: "127.0.0.1", Protocol: "tcp"}}
	srv.Logging = &types.LoggingConfig{Driver: "awslogs", Options: types.Options{"awslogs-group": "redash", "mode": "non-blocking"}}
	srv.Restart = "always" // ignored: the engine's policy is on-failure
	d.Project.Services["server"] = srv
	ngx := d.Project.Services["nginx"]
	ngx.Ports = []types.ServicePortConfig{{Target: 80, Published: "80", Protocol: "tcp"}}
	ngx.Volumes = []types.ServiceVolumeConfig{{Type: "bind", Source: "/opt/redash/nginx", Target: "/etc/nginx/conf.d", ReadOnly: true}}
	d.Project.Services["nginx"] = ngx

	for _, name := range []string{"server", "nginx", "worker"} {
		t.Run(name, func(t *testing.T) {
			svc := d.Project.Services[name]
			svc.Name = name
			s := buildSpec(d, "net-id-1", svc, ConfigHash(svc, d.Env, d.HashKey), "")
			got, err := json.MarshalIndent(s, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := filepath.Join("testdata", "spec-"+name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("reading %s: %v (run `go test ./internal/engine -run TestBuildSpecGolden -update`)", golden, err)
			}
			if string(got) != string(want) {
				t.Errorf("spec of %s differs from %s:\n%s", name, golden, got)
			}
			// Env values reach Env and nothing else.
			labels, _ := json.Marshal(s.Config.Labels)
			for _, v := range d.Env {
				if strings.Contains(string(labels), v) {
					t.Errorf("a label holds the env value %q", v)
				}
			}
			if s.HostConfig.RestartPolicy.Name != "on-failure" {
				t.Errorf("restart policy %q, want on-failure", s.HostConfig.RestartPolicy.Name)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	bad := desired()
	w := bad.Project.Services["worker"]
	w.Image = ""
	w.Networks = map[string]*types.ServiceNetworkConfig{"backend": nil}
	bad.Project.Services["worker"] = w
	tests := []struct {
		name string
		d    Desired
		want []string // substrings; empty means valid
	}{
		{"valid", desired(), nil},
		{"no project", Desired{}, []string{"no compose project"}},
		{"every bad field named at once", bad, []string{`service "worker" has no image`, `uses network "backend"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := validate(tt.d)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("validate accepted a bad project")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
