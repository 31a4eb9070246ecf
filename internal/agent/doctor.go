package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/dirlock"
	"github.com/redash-agent/redash-agent/internal/doctor"
	"github.com/redash-agent/redash-agent/internal/engine"
	"github.com/redash-agent/redash-agent/internal/envfile"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/imds"
	"github.com/redash-agent/redash-agent/internal/migrate"
	"github.com/redash-agent/redash-agent/internal/queues"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// minFreeBytes is the free space below which doctor warns: an image pull or
// an env file write can fail on a full disk.
const minFreeBytes = 1 << 30

// Doctor checks, in the order a boot needs them, everything the agent
// depends on, and says how to fix what is wrong. offline skips what needs
// AWS or the databases: it is the Image Builder test phase's check that the
// image is clean and the agent can run.
func (a *Agent) Doctor(ctx context.Context, offline bool) doctor.Report {
	var (
		r    Rendered
		eng  *engine.Engine
		dErr error
	)
	eng, dErr = a.docker()
	if eng != nil {
		defer eng.Close()
	}
	checks := []doctor.Check{
		{Name: "docker", Run: func(ctx context.Context) doctor.Result {
			if dErr != nil {
				return doctor.Result{Status: doctor.Fail, Detail: dErr.Error(), Fix: "start Docker: sudo systemctl start docker"}
			}
			version, api, host, err := eng.Version(ctx)
			if err != nil {
				return doctor.Result{Status: doctor.Fail, Detail: "the Docker Engine does not answer: " + err.Error(), Fix: "sudo systemctl start docker; check DOCKER_HOST"}
			}
			return doctor.Result{Status: doctor.OK, Detail: fmt.Sprintf("Docker Engine %s (API %s) answers on %s", version, api, host)}
		}},
		{Name: "disk", Run: func(ctx context.Context) doctor.Result { return a.checkDisk() }},
	}
	if offline {
		checks = append(checks,
			doctor.Check{Name: "clean image", Needs: []string{"docker"}, Run: func(ctx context.Context) doctor.Result {
				return a.checkClean(ctx, eng)
			}},
		)
		return doctor.Run(ctx, checks, 20*time.Second)
	}
	// Provider local runs off EC2: IMDS is not contacted at all, and its
	// redis is reached at its container's address, which Docker gives.
	redisNeeds := []string{"configuration and secrets"}
	if a.localProvider() {
		redisNeeds = append(redisNeeds, "docker")
	} else {
		checks = append(checks, doctor.Check{Name: "imds", Run: func(ctx context.Context) doctor.Result {
			inst, err := a.remote.imds(imds.Options{Deadline: 10 * time.Second, Logger: a.quietLogger()}).Instance(ctx)
			if err != nil {
				fix := "check the launch template's MetadataOptions: HttpEndpoint enabled, HttpTokens required, HttpPutResponseHopLimit 1"
				if errors.Is(err, imds.ErrTagsNotEnabled) {
					fix = "set InstanceMetadataTags: enabled in the launch template's MetadataOptions"
				}
				return doctor.Result{Status: doctor.Fail, Detail: err.Error(), Fix: fix}
			}
			n := 0
			for k := range inst.Tags {
				if strings.HasPrefix(k, "redash:") {
					n++
				}
			}
			return doctor.Result{Status: doctor.OK, Detail: fmt.Sprintf("instance %s in %s, %d redash: tags", inst.InstanceID, inst.Region, n)}
		}})
	}
	checks = append(checks,
		doctor.Check{Name: "configuration and secrets", Run: func(ctx context.Context) doctor.Result {
			var err error
			r, err = a.quiet().Render(ctx)
			if err != nil {
				return doctor.Result{Status: doctor.Fail, Detail: err.Error(), Fix: renderFix(err)}
			}
			return doctor.Result{Status: doctor.OK, Detail: fmt.Sprintf("Redash %s, role %s, %d secrets fetched", r.Config.Version, r.Config.Role, len(r.Secrets))}
		}},
		doctor.Check{Name: "files", Needs: []string{"configuration and secrets"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkFiles(r)
		}},
		doctor.Check{Name: "secret key and cookie secret", Needs: []string{"configuration and secrets"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkKeys(r)
		}},
		doctor.Check{Name: "database", Needs: []string{"configuration and secrets", "docker"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkDatabase(ctx, r, eng)
		}},
		doctor.Check{Name: "redis", Needs: redisNeeds, Run: func(ctx context.Context) doctor.Result {
			return checkRedis(ctx, r, eng)
		}},
		doctor.Check{Name: "scheduler lease", Needs: []string{"configuration and secrets"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkSchedulerLease(ctx, r)
		}},
		doctor.Check{Name: "host platform", Needs: []string{"configuration and secrets", "docker"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkHostDoctor(ctx, r, eng)
		}},
		doctor.Check{Name: "containers", Needs: []string{"configuration and secrets", "docker"}, Run: func(ctx context.Context) doctor.Result {
			return a.checkContainers(ctx, r, eng)
		}},
		doctor.Check{Name: "server", Needs: []string{"configuration and secrets"}, Run: func(ctx context.Context) doctor.Result {
			return checkPing(ctx, r)
		}},
	)
	return doctor.Run(ctx, checks, 30*time.Second)
}

// renderFix is the fix line of the "configuration and secrets" check,
// chosen by the error's type, never its text.
func renderFix(err error) string {
	if errors.Is(err, secrets.ErrNotFound) || errors.Is(err, secrets.ErrAccessDenied) {
		return "create the secret or fix its redash:secret:<name> tag; the instance role needs secretsmanager:GetSecretValue on it"
	}
	var se *secrets.Error
	if errors.As(err, &se) && exitcode.Of(err) == exitcode.Failure {
		return "check that this instance reaches Secrets Manager (NAT gateway or VPC endpoint, security groups), then run doctor again"
	}
	return "see `redash-agent config` for each value and its source"
}

func (a *Agent) checkDisk() doctor.Result {
	var low []string
	var detail []string
	for _, dir := range []string{a.o.Dir, "/var/lib/docker"} {
		d := dir
		for {
			if _, err := os.Stat(d); err == nil || d == "/" {
				break
			}
			d = filepath.Dir(d)
		}
		var st syscall.Statfs_t
		if err := syscall.Statfs(d, &st); err != nil {
			continue
		}
		free := st.Bavail * uint64(st.Bsize)
		detail = append(detail, fmt.Sprintf("%s: %.1f GiB free", d, float64(free)/(1<<30)))
		if free < minFreeBytes {
			low = append(low, d)
		}
	}
	if len(low) > 0 {
		return doctor.Result{Status: doctor.Warn, Detail: strings.Join(detail, ", "), Fix: "free space on " + strings.Join(low, ", ") + ": `docker image prune -a` removes images no container uses"}
	}
	return doctor.Result{Status: doctor.OK, Detail: strings.Join(detail, ", ")}
}

// checkClean: an AMI must carry no instance state (secrets, containers, locks).
func (a *Agent) checkClean(ctx context.Context, eng *engine.Engine) doctor.Result {
	var left []string
	for _, p := range []string{filepath.Join(a.o.Dir, compose.EnvFileName), filepath.Join(a.o.Dir, dirlock.FileName), a.hashKeyPath(), a.localSecrets()} {
		if _, err := os.Stat(p); err == nil {
			left = append(left, p)
		}
	}
	cs, err := eng.Containers(ctx, a.projectName())
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: "listing containers: " + err.Error()}
	}
	for _, c := range cs {
		left = append(left, "container "+c.Name)
	}
	if len(left) > 0 {
		return doctor.Result{Status: doctor.Fail, Detail: "instance state left in the image: " + strings.Join(left, ", "), Fix: "run `redash-agent prepare-image` as the last build step"}
	}
	return doctor.Result{Status: doctor.OK, Detail: "no env file, state, lock or Redash containers"}
}

// checkFiles compares what is on disk with what the configuration renders.
func (a *Agent) checkFiles(r Rendered) doctor.Result {
	envPath := filepath.Join(a.o.Dir, compose.EnvFileName)
	st, err := os.Stat(envPath)
	if errors.Is(err, fs.ErrNotExist) {
		return doctor.Result{Status: doctor.Fail, Detail: envPath + " does not exist", Fix: "sudo redash-agent up"}
	}
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error()}
	}
	if st.Mode().Perm() != 0o600 {
		return doctor.Result{Status: doctor.Fail, Detail: fmt.Sprintf("%s has mode %v: others can read the secrets", envPath, st.Mode().Perm()), Fix: "sudo chmod 600 " + envPath + " (the next `up` fixes it too)"}
	}
	onDisk, err := os.ReadFile(envPath)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error()}
	}
	if _, err := envfile.Parse(onDisk); err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: "the env file is not in the agent's dialect: " + err.Error(), Fix: "sudo redash-agent up rewrites it"}
	}
	composeOnDisk, _ := os.ReadFile(filepath.Join(a.o.Dir, compose.FileName))
	var stale []string
	if !bytes.Equal(onDisk, r.EnvFile) {
		stale = append(stale, compose.EnvFileName)
	}
	if !bytes.Equal(composeOnDisk, r.Compose) {
		stale = append(stale, compose.FileName)
	}
	if len(stale) > 0 {
		return doctor.Result{Status: doctor.Warn, Detail: "differs from the current configuration: " + strings.Join(stale, ", ") + " (a secret rotated or a tag changed since the last converge)", Fix: "sudo redash-agent up, or wait for the next refresh"}
	}
	return doctor.Result{Status: doctor.OK, Detail: "env (0600) and docker-compose.yml match the configuration"}
}

func (a *Agent) checkDatabase(ctx context.Context, r Rendered, eng *engine.Engine) doctor.Result {
	db := r.State.DB
	addr := net.JoinHostPort(db.Host, strconv.Itoa(db.Port))
	state := a.databaseState(ctx, r, eng)
	if r.State.Spec.Local {
		return localDatabaseResult(r, state)
	}
	return remoteDatabaseResult(addr, migrate.DatabaseLabel(db), state)
}

// remoteDatabaseResult is the database check for a database the instance
// reaches over the network, from databaseState.
func remoteDatabaseResult(addr, label string, state dbState) doctor.Result {
	switch {
	case state.schema == migrate.StateCurrent:
		return doctor.Result{Status: doctor.OK, Detail: fmt.Sprintf("%s database %q: %s", addr, label, state.text)}
	case state.noHead:
		return doctor.Result{Status: doctor.Warn, Detail: state.text, Fix: "sudo redash-agent migrate"}
	case state.schema == migrate.StateUnknown:
		return doctor.Result{Status: doctor.Fail, Detail: fmt.Sprintf("%s: %s", addr, state.text), Fix: "check the security group allows this instance to reach " + addr + " and the db-user/db-password secrets"}
	case state.schema == migrate.StateAhead:
		return doctor.Result{Status: doctor.Fail, Detail: fmt.Sprintf("%s database %q: %s", addr, label, state.text),
			Fix: "set redash:version to the release that migrated the database (roll the instance forward), or restore the database from a backup taken before the upgrade"}
	case state.upgrading:
		return doctor.Result{Status: doctor.Warn, Detail: fmt.Sprintf("%s database %q: %s", addr, label, state.text),
			Fix: "wait for the upgrade to finish (the upgrading instance's journal: journalctl -u redash-agent); this instance converges by itself when it does"}
	default:
		return doctor.Result{Status: doctor.Warn, Detail: fmt.Sprintf("%s database %q: %s", addr, label, state.text), Fix: "sudo redash-agent migrate"}
	}
}

// localDatabaseResult is the database check for provider local's bundled
// postgres, from databaseState: the fixes name its container, not a
// security group.
func localDatabaseResult(r Rendered, state dbState) doctor.Result {
	name := compose.ContainerName(r.Project.Name, compose.PostgresService)
	detail := fmt.Sprintf("bundled postgres (container %s): %s", name, state.text)
	switch {
	case state.schema == migrate.StateCurrent:
		return doctor.Result{Status: doctor.OK, Detail: detail}
	case state.noHead:
		return doctor.Result{Status: doctor.Warn, Detail: detail, Fix: "sudo redash-agent migrate --provider local"}
	case state.wrongPassword:
		return doctor.Result{Status: doctor.Fail, Detail: detail, Fix: "see the detail: restore the state directory's secrets or start from an empty volume"}
	case state.schema == migrate.StateUnknown:
		return doctor.Result{Status: doctor.Fail, Detail: detail, Fix: "start it with `sudo redash-agent up --provider local`; `docker logs " + name + "` says why it stopped"}
	default:
		return doctor.Result{Status: doctor.Warn, Detail: detail, Fix: "sudo redash-agent migrate --provider local (or up)"}
	}
}

// checkRedis pings Redis the way the agent reaches it: from the
// configuration, not REDASH_REDIS_URL (8.x-10.x carry the password raw
// there, which a URL parser would misread); the bundled redis of provider
// local publishes no port, so it is pinged at its container's address on
// the project network.
func checkRedis(ctx context.Context, r Rendered, eng *engine.Engine) doctor.Result {
	rc := r.State.Redis
	addr := rc.Addr
	where := "the ElastiCache security group allows this instance on " + addr + " and the redis-auth secret"
	if r.State.Spec.Local {
		name := compose.ContainerName(r.Project.Name, compose.RedisService)
		ip, err := eng.ServiceAddress(ctx, r.Project.Name, compose.RedisService)
		if err != nil {
			return doctor.Result{Status: doctor.Fail, Detail: "bundled redis: " + err.Error(), Fix: "start it with `sudo redash-agent up --provider local`; `docker logs " + name + "` says why it stopped"}
		}
		addr = net.JoinHostPort(ip, "6379")
		where = "that container " + name + " runs redis on " + addr + " (`docker logs " + name + "`)"
	}
	c := queues.Open(queues.Conn{Addr: addr, DB: rc.DB, TLS: rc.TLS, Username: rc.Username, Password: rc.Password.Reveal()})
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: fmt.Sprintf("redis at %s does not answer PING: %v", addr, err), Fix: "check " + where}
	}
	return doctor.Result{Status: doctor.OK, Detail: "redis at " + addr + " answers PING"}
}

func (a *Agent) checkContainers(ctx context.Context, r Rendered, eng *engine.Engine) doctor.Result {
	d, err := a.desired(r)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error()}
	}
	sts, err := eng.Status(ctx, d)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: err.Error()}
	}
	// Without the 8.x scheduler lease this instance must not run one.
	leaseText, runsScheduler := a.SchedulerLease(ctx, r)
	runsScheduler = runsScheduler || strings.HasPrefix(leaseText, "unknown") // the lease check reports that
	var bad []string
	for _, s := range sts {
		switch {
		case s.Service == schedulerService && !runsScheduler:
			if s.State == "running" {
				bad = append(bad, "scheduler runs without the 8.x scheduler lease")
			}
			continue
		case s.State != "running":
			bad = append(bad, fmt.Sprintf("%s is %s", s.Service, s.State))
		case !s.HashCurrent:
			bad = append(bad, s.Service+" runs an old configuration")
		case s.RestartCount > 3:
			bad = append(bad, fmt.Sprintf("%s restarted %d times", s.Service, s.RestartCount))
		}
	}
	if len(bad) > 0 {
		return doctor.Result{Status: doctor.Fail, Detail: strings.Join(bad, "; "), Fix: "sudo redash-agent up; `docker logs <container>` shows why one fails"}
	}
	return doctor.Result{Status: doctor.OK, Detail: fmt.Sprintf("%d services running with the current configuration", len(sts))}
}

func checkPing(ctx context.Context, r Rendered) doctor.Result {
	if _, ok := r.Project.Services[compose.ServerService]; !ok {
		return doctor.Result{Status: doctor.Skip, Detail: "no server on this instance (role " + r.Config.Role + ")"}
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/ping", r.Config.ServerPort)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return doctor.Result{Status: doctor.Fail, Detail: url + ": " + err.Error(), Fix: "sudo redash-agent status; docker logs " + r.Config.Project + "-server-1"}
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return doctor.Result{Status: doctor.Fail, Detail: fmt.Sprintf("%s answered %d", url, resp.StatusCode), Fix: "docker logs " + r.Config.Project + "-server-1"}
	}
	if r.State.Spec.Local {
		return doctor.Result{Status: doctor.OK, Detail: url + " answers 200: Redash is up"}
	}
	return doctor.Result{Status: doctor.OK, Detail: url + " answers 200: a load balancer's health check on /ping will pass"}
}

// localProvider says whether the flags or the config file choose provider
// local, read without AWS: doctor then never contacts IMDS.
func (a *Agent) localProvider() bool {
	file, _, flags, err := a.localLayers()
	if err != nil {
		return false
	}
	provider := file.Values["provider"]
	if v := flags.Values["provider"]; v != "" {
		provider = v
	}
	return provider == config.ProviderLocal
}

// quiet returns an agent that logs only errors, for doctor's own output.
func (a *Agent) quiet() *Agent {
	q := *a
	q.log = a.quietLogger()
	return &q
}

// quietLogger discards: doctor reports findings itself, once.
func (a *Agent) quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// checkSchedulerLease says whether this instance holds the 8.x scheduler
// lease; it is information (one instance holds it), not a failure.
func (a *Agent) checkSchedulerLease(ctx context.Context, r Rendered) doctor.Result {
	if !needsLease(r) {
		return doctor.Result{Status: doctor.OK, Detail: "not used: " + noLeaseWhy(r)}
	}
	text, _ := a.SchedulerLease(ctx, r)
	switch {
	case strings.HasPrefix(text, "unknown"):
		return doctor.Result{Status: doctor.Fail, Detail: text, Fix: "check that this instance reaches the database (the database check)"}
	case strings.HasPrefix(text, "held by no instance"):
		return doctor.Result{Status: doctor.Warn, Detail: text, Fix: "sudo systemctl start redash-agent: `run` takes the lease and starts the scheduler"}
	}
	return doctor.Result{Status: doctor.OK, Detail: text}
}
