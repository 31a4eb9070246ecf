// Package compose builds the compose-go project for a Redash version and role
// and writes it as YAML (/opt/redash/docker-compose.yml). The project is the
// one the engine converges; the file is for people and for `docker compose`.
//
// It is pure: no I/O. (The tests read the file back with compose-go's loader,
// as `docker compose` would; see load_test.go.) The
// project never holds a secret: every Redash service reads the secrets and
// connection URLs from the env file (env_file: ./env), and `environment`
// carries only the layout's non-secret knobs (QUEUES, WORKERS_COUNT,
// REDASH_WEB_WORKERS).
package compose

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
)

// Environment keys the compose file may hold. Everything else, secrets
// above all, lives only in the env file.
const (
	EnvQueues       = "QUEUES"
	EnvWorkersCount = "WORKERS_COUNT"
	EnvWebWorkers   = "REDASH_WEB_WORKERS"
)

// NonSecretEnv is every key Project ever puts in a service's `environment`.
var NonSecretEnv = []string{EnvQueues, EnvWebWorkers, EnvWorkersCount}

// Spec is everything the compose file depends on. The caller maps its
// configuration onto it; nothing in it is secret.
type Spec struct {
	Project    string // compose project name; "" = DefaultProject
	Dir        string // absolute working directory, e.g. /opt/redash; env_file is ./env in it
	Version    string // Redash version tag; picks the layout
	Image      string // Redash image; "" = redash/redash:<Version>
	NginxImage string // "" = DefaultNginxImage
	Role       string // RoleAll ("" too), RoleWeb or RoleWorker
	Nginx      bool   // run nginx in front of the server (roles all and web)
	Local      bool   // bundle postgres and redis services

	PostgresImage, RedisImage string // for Local; "" = the defaults

	WebWorkers int            // REDASH_WEB_WORKERS; 0 = layout default
	Workers    map[string]int // service -> WORKERS_COUNT override
	LogGroup   string         // CloudWatch Logs group; "" = Docker's default driver
	Region     string         // region of LogGroup
	ServerPort int            // host port of server:5000; 0 = 5000
	NginxPort  int            // host port of nginx:80; 0 = 80

	// WorkerStopGrace is the stop grace of the services that run jobs;
	// 0 = DefaultWorkerStopGrace (see stopGraceFor for the exceptions).
	WorkerStopGrace time.Duration
}

// Project builds the compose project for s. It fails with one error naming
// every bad field.
func Project(s Spec) (*types.Project, error) {
	s, layout, err := normalize(s)
	if err != nil {
		return nil, err
	}
	family, _ := FamilyFor(s.Version) // normalize checked it

	p := &types.Project{
		Name:         s.Project,
		WorkingDir:   s.Dir,
		ComposeFiles: []string{filepath.Join(s.Dir, FileName)},
		Services:     types.Services{},
		Networks:     types.Networks{DefaultNetwork: {Name: NetworkName(s.Project)}},
	}

	web := s.Role == RoleAll || s.Role == RoleWeb
	work := s.Role == RoleAll || s.Role == RoleWorker
	var redashDeps []string
	if s.Local {
		redashDeps = []string{PostgresService, RedisService}
	}

	for _, l := range layouts[layout] {
		isServer := l.name == ServerService
		if (isServer && !web) || (!isServer && !work) {
			continue
		}
		svc := base(s, l.name, s.Image)
		svc.Command = types.ShellCommand{l.command}
		svc.StopGracePeriod = duration(stopGraceFor(family, l, s.WorkerStopGrace))
		svc.EnvFiles = []types.EnvFile{{Path: "./" + EnvFileName, Required: true}}
		svc.DependsOn = dependsOn(redashDeps...)
		env := types.MappingWithEquals{}
		if isServer {
			n := s.WebWorkers
			if n == 0 {
				n = defaultWebWorkers
			}
			env[EnvWebWorkers] = ptr(strconv.Itoa(n))
			svc.Ports = []types.ServicePortConfig{port(s.ServerPort, ServerPort)}
			// redash/nginx proxies to redash:5000. An alias rather than
			// `links`: links are legacy and the engine only knows networks.
			svc.Networks = map[string]*types.ServiceNetworkConfig{DefaultNetwork: {Aliases: []string{ServerAlias}}}
		}
		if l.queues != "" {
			n := l.workers
			if o, ok := s.Workers[l.name]; ok {
				n = o
			}
			env[EnvQueues] = ptr(l.queues)
			env[EnvWorkersCount] = ptr(strconv.Itoa(n))
		}
		if len(env) > 0 {
			svc.Environment = env
		}
		p.Services[l.name] = svc
	}

	if web && s.Nginx {
		svc := base(s, NginxService, s.NginxImage)
		svc.Ports = []types.ServicePortConfig{port(s.NginxPort, NginxPort)}
		svc.DependsOn = dependsOn(ServerService)
		svc.StopGracePeriod = duration(webStopGrace)
		p.Services[NginxService] = svc
	}

	if s.Local {
		pg := base(s, PostgresService, s.PostgresImage)
		// POSTGRES_PASSWORD and friends come from the same env file.
		pg.EnvFiles = []types.EnvFile{{Path: "./" + EnvFileName, Required: true}}
		pg.Volumes = []types.ServiceVolumeConfig{{
			Type:   types.VolumeTypeVolume,
			Source: PostgresVolume,
			Target: "/var/lib/postgresql/data",
			Volume: &types.ServiceVolumeVolume{},
		}}
		p.Services[PostgresService] = pg
		p.Volumes = types.Volumes{PostgresVolume: {Name: BundledDBVolume(s.Project)}}
		// Redis gets no env file: it needs nothing from it, so it should not
		// hold the secrets either.
		p.Services[RedisService] = base(s, RedisService, s.RedisImage)
	}
	return p, nil
}

// base is the part every service shares.
func base(s Spec, name, image string) types.ServiceConfig {
	svc := types.ServiceConfig{
		Name: name,
		// on-failure, never always or unless-stopped: Docker may restart a
		// crashed container but must never start Redash at daemon start,
		// before the agent has rendered fresh configuration.
		Restart: types.RestartPolicyOnFailure,
	}
	svc.Image = image
	svc.Networks = map[string]*types.ServiceNetworkConfig{DefaultNetwork: nil}
	if s.LogGroup != "" {
		svc.Logging = &types.LoggingConfig{Driver: "awslogs", Options: types.Options{
			"awslogs-group":  s.LogGroup,
			"awslogs-region": s.Region,
			// non-blocking: a CloudWatch hiccup must not stall Redash on
			// a full log buffer; lines are dropped instead.
			"mode": "non-blocking",
		}}
	}
	return svc
}

func dependsOn(names ...string) types.DependsOnConfig {
	if len(names) == 0 {
		return nil
	}
	d := types.DependsOnConfig{}
	for _, n := range names {
		d[n] = types.ServiceDependency{Condition: types.ServiceConditionStarted, Required: true}
	}
	return d
}

func port(published, def int) types.ServicePortConfig {
	if published == 0 {
		published = def
	}
	return types.ServicePortConfig{Mode: "ingress", Target: uint32(def), Published: strconv.Itoa(published), Protocol: "tcp"}
}

func ptr(s string) *string { return &s }

func duration(d time.Duration) *types.Duration { v := types.Duration(d); return &v }

// normalize fills defaults and checks s, naming every bad field at once.
func normalize(s Spec) (Spec, Layout, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if s.Project == "" {
		s.Project = DefaultProject
	}
	if s.Image == "" && s.Version != "" {
		s.Image = RedashImage(s.Version)
	}
	if s.NginxImage == "" {
		s.NginxImage = DefaultNginxImage
	}
	if s.PostgresImage == "" {
		s.PostgresImage = DefaultPostgresImage
	}
	if s.RedisImage == "" {
		s.RedisImage = DefaultRedisImage
	}
	if s.Role == "" {
		s.Role = RoleAll
	}

	layout, err := LayoutFor(s.Version)
	if err != nil {
		errs = append(errs, err)
	}
	if !filepath.IsAbs(s.Dir) {
		bad("working directory %q is not an absolute path: use the agent's --dir, e.g. /opt/redash", s.Dir)
	}
	// Role, worker counts, web workers and ports are validated once, in
	// config, which names the key to fix; a Spec comes from a Config.
	if s.LogGroup != "" && s.Region == "" {
		bad("log group %q has no region: the awslogs driver needs the instance's region", s.LogGroup)
	}
	if len(errs) > 0 {
		return s, 0, fmt.Errorf("building the compose project %q: %w", s.Project, errors.Join(errs...))
	}
	return s, layout, nil
}
