package engine

import (
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

func strp(s string) *string { return &s }

// testProject is a small Redash-like layout: the env-file services and an
// nginx without one.
func testProject(name, image string, serverPort string) *types.Project {
	envFile := []types.EnvFile{{Path: "/opt/redash/env"}}
	svc := func(cmd ...string) types.ServiceConfig {
		return types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: image, Command: cmd, EnvFiles: envFile}}
	}
	server := svc("server")
	server.Environment = types.MappingWithEquals{"REDASH_WEB_WORKERS": strp("2")}
	if serverPort != "" {
		server.Ports = []types.ServicePortConfig{{Target: 5000, Published: serverPort, HostIP: "127.0.0.1", Protocol: "tcp"}}
	}
	nginx := types.ServiceConfig{ContainerSpec: types.ContainerSpec{Image: image, Command: []string{"nginx"}}}
	return &types.Project{Name: name, Services: types.Services{
		"server":    server,
		"scheduler": svc("scheduler"),
		"worker":    svc("worker"),
		"nginx":     nginx,
	}}
}

var testEnv = map[string]string{"REDASH_COOKIE_SECRET": "c00kie", "REDASH_DATABASE_URL": "postgresql://u:p@db/redash"}

func desired() Desired {
	return Desired{Project: testProject("p", "redash/redash:10", ""), Env: testEnv, HashKey: []byte("k")}
}

// hashes returns each service's short desired hash, for expected texts.
func hashes(d Desired) map[string]string {
	out := map[string]string{}
	for name, svc := range d.Project.Services {
		svc.Name = name
		out[name] = ConfigHash(svc, d.Env, d.HashKey)
	}
	return out
}

// current is the container Up would have made for a service.
func current(d Desired, service, state string) Container {
	return Container{
		ID: "id-" + service, Name: "p-" + service + "-1", Service: service, Number: "1",
		Hash: hashes(d)[service], Image: d.Project.Services[service].Image, State: state,
	}
}

func allCurrent(d Desired) []Container {
	return []Container{current(d, "nginx", "running"), current(d, "scheduler", "running"), current(d, "server", "running"), current(d, "worker", "running")}
}

var net = &Network{ID: "n1", Name: "p_default"}

func TestComputePlan(t *testing.T) {
	d := desired()
	changed := desired()
	changed.Env = map[string]string{"REDASH_COOKIE_SECRET": "rotated", "REDASH_DATABASE_URL": "postgresql://u:p@db/redash"}
	fewer := desired()
	delete(fewer.Project.Services, "scheduler")

	tests := []struct {
		name string
		d    Desired
		o    Observed
		want string
	}{
		{
			name: "nothing exists: network then server first",
			d:    d,
			o:    Observed{Project: "p"},
			want: `create network p_default
create server (image redash/redash:10, hash $server)
create nginx (image redash/redash:10, hash $nginx)
create scheduler (image redash/redash:10, hash $scheduler)
create worker (image redash/redash:10, hash $worker)
`,
		},
		{
			name: "up to date and running: nothing to do",
			d:    d,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: `keep server (hash $server)
keep nginx (hash $nginx)
keep scheduler (hash $scheduler)
keep worker (hash $worker)
`,
		},
		{
			name: "current but stopped, exited or only created: start",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				current(d, "nginx", "exited"), current(d, "scheduler", "created"), current(d, "server", "running"), current(d, "worker", "restarting"),
			}},
			want: `keep server (hash $server)
start nginx (hash $nginx, was exited)
start scheduler (hash $scheduler, was created)
keep worker (hash $worker)
`,
		},
		{
			name: "changed secret recreates exactly the env-file services",
			d:    changed,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: `recreate server (image redash/redash:10, hash $old.server -> $server, config changed)
keep nginx (hash $nginx)
recreate scheduler (image redash/redash:10, hash $old.scheduler -> $scheduler, config changed)
recreate worker (image redash/redash:10, hash $old.worker -> $worker, config changed)
`,
		},
		{
			name: "orphan removed when its service left the project",
			d:    fewer,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: `remove p-scheduler-1 (orphan: service scheduler is no longer in the project)
keep server (hash $server)
keep nginx (hash $nginx)
keep worker (hash $worker)
`,
		},
		{
			name: "stale names, one-offs, duplicates and an AMI build's container go",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: append(allCurrent(d),
				Container{ID: "v1", Name: "p_server_1", Service: "server", Number: "1", Hash: "", State: "running"},
				Container{ID: "run", Name: "p_server_run_8f2a", Service: "server", Number: "1", OneOff: true, State: "exited"},
				Container{ID: "dup", Name: "p-worker-2", Service: "worker", Number: "2", Hash: hashes(d)["worker"], State: "running"},
				Container{ID: "nolabel", Name: "p-mystery", State: "running"},
			)},
			want: `remove p-mystery (no service label)
remove p-worker-2 (service worker: duplicate number "2")
remove p_server_1 (service server: stale name, not p-server-1)
remove p_server_run_8f2a (service server: one-off container)
keep server (hash $server)
keep nginx (hash $nginx)
keep scheduler (hash $scheduler)
keep worker (hash $worker)
`,
		},
		{
			name: "AMI-built container under the canonical name with a stale hash is recreated",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				{ID: "old", Name: "p-server-1", Service: "server", Number: "1", Hash: "0123456789abcdef", State: "running"},
			}},
			want: `recreate server (image redash/redash:10, hash 0123456789ab -> $server, config changed)
create nginx (image redash/redash:10, hash $nginx)
create scheduler (image redash/redash:10, hash $scheduler)
create worker (image redash/redash:10, hash $worker)
`,
		},
		{
			name: "pruned network: stopped current containers are recreated",
			d:    d,
			o:    Observed{Project: "p", Containers: []Container{current(d, "server", "exited")}},
			want: `create network p_default
recreate server (image redash/redash:10, hash $server -> $server, network missing)
create nginx (image redash/redash:10, hash $nginx)
create scheduler (image redash/redash:10, hash $scheduler)
create worker (image redash/redash:10, hash $worker)
`,
		},
		{
			name: "container on another network of the same name is recreated",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: func() []Container {
				cs := allCurrent(d)
				for i := range cs {
					cs[i].NetworkID = "n1"
				}
				cs[3].NetworkID = "n-gone"
				return cs
			}()},
			want: `keep server (hash $server)
keep nginx (hash $nginx)
keep scheduler (hash $scheduler)
recreate worker (image redash/redash:10, hash $worker -> $worker, network changed)
`,
		},
		{
			name: "dead container is recreated, not started",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				current(d, "nginx", "running"), current(d, "scheduler", "running"), current(d, "server", "dead"), current(d, "worker", "running"),
			}},
			want: `recreate server (image redash/redash:10, hash $server -> $server, state dead)
keep nginx (hash $nginx)
keep scheduler (hash $scheduler)
keep worker (hash $worker)
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pairs []string
			for s, h := range hashes(d) {
				pairs = append(pairs, "$old."+s, shortHash(h))
			}
			for s, h := range hashes(tt.d) {
				pairs = append(pairs, "$"+s, shortHash(h))
			}
			want := strings.NewReplacer(pairs...).Replace(tt.want)
			p := ComputePlan(tt.d, tt.o)
			if got := p.String(); got != want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, want)
			}
			if again := ComputePlan(tt.d, tt.o).String(); again != p.String() {
				t.Errorf("ComputePlan is not deterministic:\n%s\nthen:\n%s", p, again)
			}
			keeps := strings.Count(want, "keep ")
			if got, wantN := p.Mutations(), len(p.Actions)-keeps; got != wantN {
				t.Errorf("Mutations() = %d, want %d", got, wantN)
			}
		})
	}
}

func TestPlanNeverPrintsSecrets(t *testing.T) {
	d := desired()
	for _, o := range []Observed{{Project: "p"}, {Project: "p", Network: net, Containers: allCurrent(desired())}} {
		text := ComputePlan(d, o).String()
		for _, v := range d.Env {
			if strings.Contains(text, v) {
				t.Errorf("plan contains the env value %q:\n%s", v, text)
			}
		}
	}
}
