package engine

import (
	"strings"
	"testing"
	"time"

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
	// As the compose package writes it: nginx starts after the server.
	nginx.DependsOn = types.DependsOnConfig{"server": {Condition: types.ServiceConditionStarted, Required: true}}
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
		Hash: hashes(d)[service], Image: d.Project.Services[service].Image, ImageID: images[d.Project.Services[service].Image], State: state,
	}
}

// images is what Observe finds present: the test image, under its ID.
var images = map[string]string{"redash/redash:10": "sha256:10"}

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

	// A converge killed between the server's new start and nginx's
	// restart (or Docker restarting a crashed server) leaves nginx with
	// the server's old address.
	t0 := time.Date(2026, 11, 30, 4, 0, 0, 0, time.UTC)
	staleNginx := allCurrent(d)
	staleNginx[0].StartedAt, staleNginx[2].StartedAt = t0, t0.Add(time.Second)
	freshNginx := allCurrent(d)
	freshNginx[0].StartedAt, freshNginx[2].StartedAt = t0.Add(time.Second), t0

	newImage := desired()
	retagged := allCurrent(newImage)
	retagged[3].ImageID = "sha256:old" // worker: made from what the tag held before

	tests := []struct {
		name    string
		d       Desired
		o       Observed
		want    string
		changes int // services, containers, networks and images changed
	}{
		{
			name: "nothing exists: network, then each service; nginx starts after the server",
			d:    d,
			o:    Observed{Project: "p"},
			want: ` 1 create network p_default
 2 create server (image redash/redash:10, hash $server) after 1
 3 start server after 2
 4 create nginx (image redash/redash:10, hash $nginx) after 1
 5 start nginx after 4,3
 6 create scheduler (image redash/redash:10, hash $scheduler) after 1
 7 start scheduler after 6
 8 create worker (image redash/redash:10, hash $worker) after 1
 9 start worker after 8
10 wait ready: server /ping after 3
11 wait ready: nginx /ping after 5
12 wait ready: scheduler after 7
13 wait ready: worker after 9
`,
			changes: 5,
		},
		{
			name: "up to date and running: nothing to do",
			d:    d,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: ` 1 keep server (hash $server)
 2 keep nginx (hash $nginx)
 3 keep scheduler (hash $scheduler)
 4 keep worker (hash $worker)
 5 wait ready: server /ping
 6 wait ready: nginx /ping
 7 wait ready: scheduler
 8 wait ready: worker
`,
		},
		{
			name: "nginx started before the running server: restart it",
			d:    d,
			o:    Observed{Project: "p", Network: net, Containers: staleNginx},
			want: ` 1 keep server (hash $server)
 2 restart nginx (server started after it: nginx resolves redash once, at its start, and would keep the old address)
 3 keep scheduler (hash $scheduler)
 4 keep worker (hash $worker)
 5 wait ready: server /ping
 6 wait ready: nginx /ping after 2
 7 wait ready: scheduler
 8 wait ready: worker
`,
			changes: 1,
		},
		{
			name: "nginx started after the server: keep it",
			d:    d,
			o:    Observed{Project: "p", Network: net, Containers: freshNginx},
			want: ` 1 keep server (hash $server)
 2 keep nginx (hash $nginx)
 3 keep scheduler (hash $scheduler)
 4 keep worker (hash $worker)
 5 wait ready: server /ping
 6 wait ready: nginx /ping
 7 wait ready: scheduler
 8 wait ready: worker
`,
		},
		{
			name: "current but stopped, exited or only created: start",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				current(d, "nginx", "exited"), current(d, "scheduler", "created"), current(d, "server", "running"), current(d, "worker", "restarting"),
			}},
			want: ` 1 keep server (hash $server)
 2 start nginx (hash $nginx, was exited)
 3 start scheduler (hash $scheduler, was created)
 4 keep worker (hash $worker)
 5 wait ready: server /ping
 6 wait ready: nginx /ping after 2
 7 wait ready: scheduler after 3
 8 wait ready: worker
`,
			changes: 2,
		},
		{
			name: "changed secret recreates exactly the env-file services, and restarts nginx after the server",
			d:    changed,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: ` 1 stop p-server-1 (recreate server)
 2 remove p-server-1 (recreate server) after 1
 3 recreate server (image redash/redash:10, hash $old.server -> $server, config changed) after 2
 4 start server after 3
 5 restart nginx (server started anew: nginx resolves redash once, at its start, and would keep the old address) after 4
 6 stop p-scheduler-1 (recreate scheduler)
 7 remove p-scheduler-1 (recreate scheduler) after 6
 8 recreate scheduler (image redash/redash:10, hash $old.scheduler -> $scheduler, config changed) after 7
 9 start scheduler after 8
10 stop p-worker-1 (recreate worker)
11 remove p-worker-1 (recreate worker) after 10
12 recreate worker (image redash/redash:10, hash $old.worker -> $worker, config changed) after 11
13 start worker after 12
14 wait ready: server /ping after 4
15 wait ready: nginx /ping after 5
16 wait ready: scheduler after 9
17 wait ready: worker after 13
`,
			changes: 4,
		},
		{
			name: "orphan removed when its service left the project",
			d:    fewer,
			o:    Observed{Project: "p", Network: net, Containers: allCurrent(d)},
			want: ` 1 stop p-scheduler-1 (orphan: service scheduler is no longer in the project)
 2 remove p-scheduler-1 (orphan: service scheduler is no longer in the project) after 1
 3 keep server (hash $server)
 4 keep nginx (hash $nginx)
 5 keep worker (hash $worker)
 6 wait ready: server /ping
 7 wait ready: nginx /ping
 8 wait ready: worker
`,
			changes: 1,
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
			want: ` 1 stop p-mystery (no service label)
 2 remove p-mystery (no service label) after 1
 3 stop p-worker-2 (service worker: duplicate number "2")
 4 remove p-worker-2 (service worker: duplicate number "2") after 3
 5 stop p_server_1 (service server: stale name, not p-server-1)
 6 remove p_server_1 (service server: stale name, not p-server-1) after 5
 7 stop p_server_run_8f2a (service server: one-off container)
 8 remove p_server_run_8f2a (service server: one-off container) after 7
 9 keep server (hash $server)
10 keep nginx (hash $nginx)
11 keep scheduler (hash $scheduler)
12 keep worker (hash $worker)
13 wait ready: server /ping
14 wait ready: nginx /ping
15 wait ready: scheduler
16 wait ready: worker
`,
			changes: 4,
		},
		{
			name: "AMI-built container under the canonical name with a stale hash is recreated",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				{ID: "old", Name: "p-server-1", Service: "server", Number: "1", Hash: "0123456789abcdef", State: "running"},
			}},
			want: ` 1 stop p-server-1 (recreate server)
 2 remove p-server-1 (recreate server) after 1
 3 recreate server (image redash/redash:10, hash 0123456789ab -> $server, config changed) after 2
 4 start server after 3
 5 create nginx (image redash/redash:10, hash $nginx)
 6 start nginx after 5,4
 7 create scheduler (image redash/redash:10, hash $scheduler)
 8 start scheduler after 7
 9 create worker (image redash/redash:10, hash $worker)
10 start worker after 9
11 wait ready: server /ping after 4
12 wait ready: nginx /ping after 6
13 wait ready: scheduler after 8
14 wait ready: worker after 10
`,
			changes: 4,
		},
		{
			name: "pruned network: stopped current containers are recreated",
			d:    d,
			o:    Observed{Project: "p", Containers: []Container{current(d, "server", "exited")}},
			want: ` 1 create network p_default
 2 stop p-server-1 (recreate server)
 3 remove p-server-1 (recreate server) after 2
 4 recreate server (image redash/redash:10, hash $server -> $server, network missing) after 1,3
 5 start server after 4
 6 create nginx (image redash/redash:10, hash $nginx) after 1
 7 start nginx after 6,5
 8 create scheduler (image redash/redash:10, hash $scheduler) after 1
 9 start scheduler after 8
10 create worker (image redash/redash:10, hash $worker) after 1
11 start worker after 10
12 wait ready: server /ping after 5
13 wait ready: nginx /ping after 7
14 wait ready: scheduler after 9
15 wait ready: worker after 11
`,
			changes: 5,
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
			want: ` 1 keep server (hash $server)
 2 keep nginx (hash $nginx)
 3 keep scheduler (hash $scheduler)
 4 stop p-worker-1 (recreate worker)
 5 remove p-worker-1 (recreate worker) after 4
 6 recreate worker (image redash/redash:10, hash $worker -> $worker, network changed) after 5
 7 start worker after 6
 8 wait ready: server /ping
 9 wait ready: nginx /ping
10 wait ready: scheduler
11 wait ready: worker after 7
`,
			changes: 1,
		},
		{
			name: "dead container is recreated, not started; nginx restarts after it",
			d:    d,
			o: Observed{Project: "p", Network: net, Containers: []Container{
				current(d, "nginx", "running"), current(d, "scheduler", "running"), current(d, "server", "dead"), current(d, "worker", "running"),
			}},
			want: ` 1 stop p-server-1 (recreate server)
 2 remove p-server-1 (recreate server) after 1
 3 recreate server (image redash/redash:10, hash $server -> $server, state dead) after 2
 4 start server after 3
 5 restart nginx (server started anew: nginx resolves redash once, at its start, and would keep the old address) after 4
 6 keep scheduler (hash $scheduler)
 7 keep worker (hash $worker)
 8 wait ready: server /ping after 4
 9 wait ready: nginx /ping after 5
10 wait ready: scheduler
11 wait ready: worker
`,
			changes: 2,
		},
		{
			name: "a re-pulled tag (another image ID) recreates the containers made from the old one",
			d:    newImage,
			o:    Observed{Project: "p", Network: net, Containers: retagged},
			want: ` 1 keep server (hash $server)
 2 keep nginx (hash $nginx)
 3 keep scheduler (hash $scheduler)
 4 stop p-worker-1 (recreate worker)
 5 remove p-worker-1 (recreate worker) after 4
 6 recreate worker (image redash/redash:10, hash $worker -> $worker, image changed) after 5
 7 start worker after 6
 8 wait ready: server /ping
 9 wait ready: nginx /ping
10 wait ready: scheduler
11 wait ready: worker after 7
`,
			changes: 1,
		},
		{
			name: "a missing image is pulled before anything else, in its own stage",
			d:    d,
			o:    Observed{Project: "p", Images: map[string]string{}},
			want: ` 1 pull redash/redash:10
 2 create network p_default
 3 create server (image redash/redash:10, hash $server) after 2
 4 start server after 3
 5 create nginx (image redash/redash:10, hash $nginx) after 2
 6 start nginx after 5,4
 7 create scheduler (image redash/redash:10, hash $scheduler) after 2
 8 start scheduler after 7
 9 create worker (image redash/redash:10, hash $worker) after 2
10 start worker after 9
11 wait ready: server /ping after 4
12 wait ready: nginx /ping after 6
13 wait ready: scheduler after 8
14 wait ready: worker after 10
`,
			changes: 6,
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
			if tt.o.Images == nil {
				tt.o.Images = images
			}
			p := ComputePlan(tt.d, tt.o)
			if got := p.String(); got != want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, want)
			}
			if again := ComputePlan(tt.d, tt.o).String(); again != p.String() {
				t.Errorf("ComputePlan is not deterministic:\n%s\nthen:\n%s", p, again)
			}
			if got := p.Mutations(); got != tt.changes {
				t.Errorf("Mutations() = %d, want %d", got, tt.changes)
			}
			// Every action comes after earlier ones only, and stages never
			// go back: the printed order is an order Apply may run.
			for i, a := range p.Actions {
				for _, j := range a.After {
					if j >= i || p.Actions[j].Stage > a.Stage {
						t.Errorf("action %d (%s) comes after %d", i+1, a.Text(), j+1)
					}
				}
				if i > 0 && a.Stage < p.Actions[i-1].Stage {
					t.Errorf("action %d (%s) is in stage %s, after stage %s", i+1, a.Text(), a.Stage, p.Actions[i-1].Stage)
				}
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
