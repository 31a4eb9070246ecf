// Package config resolves the agent's configuration from its layers —
// defaults < /etc/redash-agent/config.yaml < instance tags < flags — and
// remembers where every value came from. It is pure: callers read the
// layers (file, IMDS, flags) and hand them in as string maps keyed by the tag
// name without its "redash:" prefix, so config.yaml can stand in for tags.
package config

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/exitcode"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// TagPrefix marks the instance tags the agent reads; other tags are ignored.
const TagPrefix = "redash:"

// DefaultVersion is the Redash release used when redash:version is not set.
const DefaultVersion = "25.8.0"

// minMajor is the oldest Redash major version the agent has a service
// layout for (compose.Celery is 8.x's); 7 and older ran other commands.
const minMajor = 8

// Provider names.
const (
	ProviderAWS   = "aws"
	ProviderLocal = "local"
)

// Source says which layer a value came from, for `redash-agent config`.
type Source string

const (
	SourceDefault Source = "default"
	SourceFile    Source = "config.yaml"
	SourceTag     Source = "tag"
	SourceFlag    Source = "flag"
	SourceEnv     Source = "env"
	SourceIMDS    Source = "imds"
	SourceDerived Source = "derived"
)

// Layer is one source of settings: keys are tag names without "redash:".
type Layer struct {
	Source Source
	// Origin names the concrete place for error messages, e.g.
	// "/etc/redash-agent/config.yaml" or "instance tag"; Source if empty.
	Origin string
	Values map[string]string
}

// Config is the resolved configuration. Secrets appear only as references
// (where to fetch them), never as values.
type Config struct {
	Provider      string
	Project       string
	Version       string
	Image         string
	NginxImage    string
	PostgresImage string
	RedisImage    string
	Role          string
	Nginx         bool
	SecretsPrefix string
	// Secrets lists what to fetch, keyed by logical name (secrets.DBUser ...).
	Secrets       map[string]secrets.Ref
	DBEndpoint    string // host:port; may be empty when DBSecret supplies it
	DBName        string // empty: the DB user name (or the DB secret's dbname)
	RedisEndpoint string
	RedisURL      string
	Env           map[string]string // extra REDASH_* and other variables from redash:env:<VAR>
	Workers       map[string]int
	WebWorkers    int
	LogGroup      string
	Region        string
	ServerPort    int
	NginxPort     int
	Refresh       time.Duration
	// SecretPoll spaces run's look for new secret versions (one
	// BatchGetSecretValue for all of them); 0 turns the look off.
	SecretPoll time.Duration
	// LoadBalancer is LoadBalancerALB or LoadBalancerNone: with Nginx it
	// gives REDASH_PROXIES_COUNT.
	LoadBalancer string
	// WorkerStopGrace is the stop grace of the services that run jobs.
	WorkerStopGrace time.Duration
	// MetricsInterval spaces the backlog metrics `run` publishes (0: off);
	// MetricsResolution is their CloudWatch StorageResolution, 60 or 1 (metrics.go).
	MetricsInterval   time.Duration
	MetricsResolution int
	// Lifecycle is what the agent does for its Auto Scaling group (lifecycle.go).
	Lifecycle Lifecycle

	// Origins maps every set key to the layer it came from.
	Origins map[string]Source
}

// UsesDBSecret reports whether the database credentials come from one RDS-shaped JSON secret.
func (c Config) UsesDBSecret() bool { _, ok := c.Secrets[secrets.DBSecret]; return ok }

// defaults is the bottom layer. Keys absent here have no default.
func defaults() map[string]string {
	return map[string]string{
		"provider":       ProviderAWS,
		"project":        compose.DefaultProject,
		"version":        DefaultVersion,
		"nginx-image":    compose.DefaultNginxImage,
		"postgres-image": compose.DefaultPostgresImage,
		"redis-image":    compose.DefaultRedisImage,
		"role":           compose.RoleAll,
		"nginx":          "true",
		"secrets-prefix": "Redash/",
		"server-port":    strconv.Itoa(compose.ServerPort),
		"nginx-port":     strconv.Itoa(compose.NginxPort),
		"refresh":        "5m",
		"secret-poll":    "10s",

		// load-balancer has no entry: its default depends on the provider.
		"worker-stop-grace": "5m", // DefaultWorkerStopGrace

		"metrics-interval":   "1m",
		"metrics-resolution": "60",
		// drain-timeout has no entry: it defaults to worker-stop-grace.
		"lifecycle-hook-launch":    DefaultLaunchHook,
		"lifecycle-hook-terminate": DefaultTerminateHook,
		"drain-deregister-wait":    "60s",
	}
}

// Defaults returns the default layer.
func Defaults() Layer { return Layer{Source: SourceDefault, Values: defaults()} }

// secretNames are the names allowed in redash:secret:<name>.
var secretNames = []string{secrets.DBUser, secrets.DBPassword, secrets.CookieSecret, secrets.SecretKey, secrets.RedisAuth}

// seedSecretPaths are the seed's secret names below the prefix.
var seedSecretPaths = map[string]string{
	secrets.DBUser:       "RDS/User",
	secrets.DBPassword:   "RDS/Password",
	secrets.CookieSecret: "CookieSecret",
	secrets.SecretKey:    "SecretKey",
}

// plainKeys are the keys without a ":<name>" suffix, with a one-line meaning for errors and docs.
var plainKeys = map[string]string{
	"provider":       "aws or local",
	"project":        "compose project name (containers <project>-<service>-1)",
	"version":        "Redash image tag, e.g. 10.1.0.b50633",
	"image":          "full Redash image reference",
	"nginx-image":    "nginx image reference",
	"postgres-image": "bundled postgres image (provider local)",
	"redis-image":    "bundled redis image (provider local)",
	"role":           "all, web or worker",
	"nginx":          "true or false",
	"secrets-prefix": "prefix of the seed-style secret names",
	"db-secret":      "RDS-managed JSON secret id or ARN",
	"db-endpoint":    "database host:port",
	"db-name":        "database name",
	"redis-endpoint": "Redis host:port",
	"redis-url":      "redis:// or rediss:// URL",
	"web-workers":    "REDASH_WEB_WORKERS",
	"log-group":      "CloudWatch Logs group for container logs",
	"server-port":    "host port published for the server's :5000",
	"nginx-port":     "host port published for nginx's :80",
	"refresh":        "how often `run` re-reads tags and secrets, e.g. 5m",
	"secret-poll":    "how often `run` looks for new secret versions, e.g. 10s; 0 turns it off",

	// The proxies in front of the server and the workers' stop (frontdoor.go).
	"load-balancer":     "alb or none: what forwards client requests to this instance (sets REDASH_PROXIES_COUNT)",
	"worker-stop-grace": "how long a worker may finish its running job when stopped, e.g. 5m (10s to 1h)",

	// The backlog metrics run publishes to CloudWatch (metrics.go).
	"metrics-interval":   "how often run publishes the queue backlog to CloudWatch, e.g. 1m (10s to 1h); 0 or off: never",
	"metrics-resolution": "StorageResolution of the backlog metrics: 60 (standard) or 1 (high resolution)",
	// Auto Scaling lifecycle hooks and the scale-in drain (lifecycle.go).
	"lifecycle-hook-launch":    "the group's launch lifecycle hook the agent completes when READY",
	"lifecycle-hook-terminate": "the group's terminate lifecycle hook the agent completes after draining",
	"drain-timeout":            "how long a scale-in drain waits for running jobs, e.g. 5m (10s to 1h; default worker-stop-grace)",
	"drain-deregister-wait":    "how long the web role fails /ping before stopping: the ALB health check's interval x unhealthy threshold",
}

// prefixKeys take a name after the colon.
var prefixKeys = []string{"secret:", "env:", "secret-env:", "workers:"}

// KnownKey reports whether key (without "redash:") is one the agent understands.
func KnownKey(key string) bool {
	if _, ok := plainKeys[key]; ok {
		return true
	}
	for _, p := range prefixKeys {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
}

var (
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	tagKeyRE   = regexp.MustCompile(`^[a-zA-Z0-9+\-=.,_:@ ]+$`)
	logGroupRE = regexp.MustCompile(`^[.\-_/#A-Za-z0-9]{1,512}$`)
	// versionRE is a Redash release as its image is tagged:
	// MAJOR.MINOR.PATCH, an optional pre-release (9.0.0-beta, 8.0.0-beta.2)
	// and an optional build suffix (10.1.0.b50633, 9.0.0-beta.b42121).
	// Anything shorter ("10", or YAML's 10.10) names no release.
	versionRE = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z]+(\.[0-9A-Za-z]+)*)?(\.b[0-9]+)?$`)
	projectRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

// Problem is one bad setting.
type Problem struct {
	Key    string // without "redash:"
	Origin string
	Msg    string
}

// Error lists every bad setting at once, so an operator fixes them in one go.
// Retrying cannot fix it, so the CLI exits 3 on it (see ExitStatus).
type Error struct{ Problems []Problem }

// ExitStatus is exit 3: systemd does not restart the agent on a bad setting.
func (e *Error) ExitStatus() int { return exitcode.Config }

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "configuration has %d problem(s):", len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  - %s%s (from %s): %s", TagPrefix, p.Key, p.Origin, p.Msg)
	}
	return b.String()
}

// Resolve merges the layers in order (later wins) and validates the result.
// Every problem is reported in one *Error.
func Resolve(layers ...Layer) (Config, error) {
	merged := map[string]string{}
	origin := map[string]Source{}
	where := map[string]string{}
	var probs []Problem
	for _, l := range layers {
		o := l.Origin
		if o == "" {
			o = string(l.Source)
		}
		for k, v := range l.Values {
			if !KnownKey(k) {
				probs = append(probs, Problem{k, o, "unknown key; known keys: " + strings.Join(knownKeyList(), ", ")})
				continue
			}
			if l.Source == SourceTag {
				if !tagKeyRE.MatchString(TagPrefix + k) {
					probs = append(probs, Problem{k, o, "tag keys may only use a-z A-Z 0-9 + - = . , _ : @"})
				}
				if len(v) > 256 {
					probs = append(probs, Problem{k, o, fmt.Sprintf("tag value is %d characters; the limit is 256", len(v))})
				}
			}
			merged[k] = strings.TrimSpace(v)
			origin[k] = l.Source
			where[k] = o
		}
	}
	c, more := build(merged, where)
	probs = append(probs, more...)
	c.Origins = origin
	if len(probs) > 0 {
		sort.SliceStable(probs, func(i, j int) bool { return probs[i].Key < probs[j].Key })
		return c, &Error{Problems: probs}
	}
	return c, nil
}

func knownKeyList() []string {
	var ks []string
	for k := range plainKeys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, p := range prefixKeys {
		ks = append(ks, p+"<name>")
	}
	return ks
}

// build turns the merged map into a Config, collecting problems. Each
// concern reads its own keys; the order of the calls is the order problems
// of one key are reported in (Resolve sorts by key, stably).
func build(m map[string]string, where map[string]string) (Config, []Problem) {
	b := &builder{m: m, where: where}
	c := Config{
		Provider:      m["provider"],
		Project:       m["project"],
		Version:       m["version"],
		Image:         m["image"],
		NginxImage:    m["nginx-image"],
		PostgresImage: m["postgres-image"],
		RedisImage:    m["redis-image"],
		Role:          m["role"],
		SecretsPrefix: m["secrets-prefix"],
		DBEndpoint:    m["db-endpoint"],
		DBName:        m["db-name"],
		RedisEndpoint: m["redis-endpoint"],
		RedisURL:      m["redis-url"],
		LogGroup:      m["log-group"],
		Secrets:       map[string]secrets.Ref{},
		Env:           map[string]string{},
		Workers:       map[string]int{},
	}
	b.names(c)
	layout, layoutOK := b.versionAndImages(&c)
	b.tuning(&c)
	b.prefixed(&c, layout, layoutOK)
	b.frontDoor(&c)
	b.metrics(&c)
	b.lifecycle(&c)
	b.dbSecret(&c)
	b.endpoints(c)
	switch c.Provider {
	case ProviderAWS:
		b.awsSecrets(&c)
	case ProviderLocal:
		b.localSecrets(&c)
	}
	return c, b.probs
}

// builder carries the merged settings and the problems found so far.
type builder struct {
	m     map[string]string
	where map[string]string
	probs []Problem
}

// bad records a problem with key, naming the layer that set it.
func (b *builder) bad(key, format string, args ...any) {
	origin := b.where[key]
	if origin == "" {
		origin = "no tag, config file or flag sets it"
	}
	b.probs = append(b.probs, Problem{Key: key, Origin: origin, Msg: fmt.Sprintf(format, args...)})
}

// names checks the enumerations and the project name.
func (b *builder) names(c Config) {
	switch c.Provider {
	case ProviderAWS, ProviderLocal:
	default:
		b.bad("provider", "%q is not a provider: use aws (tags and Secrets Manager) or local (config.yaml and generated secrets)", c.Provider)
	}
	if !projectRE.MatchString(c.Project) {
		b.bad("project", "%q is not a valid compose project name: use lowercase letters, digits, '-' and '_'", c.Project)
	}
	switch c.Role {
	case compose.RoleAll, compose.RoleWeb, compose.RoleWorker:
	default:
		b.bad("role", "%q is not a role: use all, web (server and nginx) or worker (scheduler and workers)", c.Role)
	}
}

// versionAndImages picks the service layout for the version and defaults
// the Redash image to it. ok is false when the version names no layout, so
// that worker keys are not also reported against a layout that is unknown.
func (b *builder) versionAndImages(c *Config) (layout compose.Layout, ok bool) {
	if !versionRE.MatchString(c.Version) {
		b.bad("version", "%q is not a Redash version tag (MAJOR.MINOR.PATCH with an optional build suffix): use a release such as 8.0.0.b32245, 10.1.0.b50633 or 25.8.0", c.Version)
	} else if major(c.Version) < minMajor {
		b.bad("version", "%q is older than Redash 8, the oldest release the agent runs: use 8.0.0.b32245 or later, e.g. %s", c.Version, DefaultVersion)
	} else if l, err := compose.LayoutFor(c.Version); err != nil {
		b.bad("version", "%v", err)
	} else {
		layout, ok = l, true
	}
	if c.Image == "" {
		c.Image = compose.RedashImage(c.Version)
	}
	for _, k := range []string{"image", "nginx-image", "postgres-image", "redis-image"} {
		if v, set := b.m[k]; set && (v == "" || strings.ContainsAny(v, " \t\n")) {
			b.bad(k, "%q is not an image reference: use e.g. 123456789012.dkr.ecr.us-east-1.amazonaws.com/redash:10.1.0", v)
		}
	}
	return layout, ok
}

// major is the major version of a tag versionRE accepted.
func major(version string) int {
	m, _, _ := strings.Cut(version, ".")
	n, err := strconv.Atoi(m)
	if err != nil {
		return 0 // versionRE allows only digits here; a 30-digit major is no release either
	}
	return n
}

// tuning parses the booleans, ports, durations and counts.
func (b *builder) tuning(c *Config) {
	m := b.m
	var err error
	if c.Nginx, err = strconv.ParseBool(m["nginx"]); err != nil {
		b.bad("nginx", "%q is not true or false", m["nginx"])
	}
	c.ServerPort = parsePort(m, "server-port", b.bad)
	c.NginxPort = parsePort(m, "nginx-port", b.bad)
	if c.Refresh, err = time.ParseDuration(m["refresh"]); err != nil || c.Refresh < 10*time.Second {
		b.bad("refresh", "%q is not a duration of at least 10s, e.g. 5m", m["refresh"])
	}
	if c.SecretPoll, err = time.ParseDuration(m["secret-poll"]); err != nil || c.SecretPoll != 0 && (c.SecretPoll < time.Second || c.SecretPoll > time.Hour) {
		b.bad("secret-poll", "%q is not 0 (off) or a duration from 1s to 1h, e.g. 10s", m["secret-poll"])
	}
	if v, ok := m["web-workers"]; ok {
		c.WebWorkers = parseCount(v, "web-workers", b.bad)
	}
	if c.LogGroup != "" && !logGroupRE.MatchString(c.LogGroup) {
		b.bad("log-group", "%q is not a CloudWatch Logs group name (letters, digits, . - _ / #)", c.LogGroup)
	}
}

// prefixed reads the families with a name after the colon: env:<VAR>,
// secret-env:<VAR>, workers:<service> and secret:<name>.
func (b *builder) prefixed(c *Config, layout compose.Layout, layoutOK bool) {
	workerServices := map[string]bool{}
	if layoutOK {
		for _, s := range compose.WorkerServices(layout) {
			workerServices[s] = true
		}
	}
	for k, v := range b.m {
		switch {
		case strings.HasPrefix(k, "env:"):
			name := strings.TrimPrefix(k, "env:")
			if !envNameRE.MatchString(name) {
				b.bad(k, "%q is not an environment variable name", name)
			} else if instead, owned := reservedEnv[name]; owned {
				b.bad(k, "%s is built by the agent, or would bypass the database and Redis URLs it builds: remove this key; use %s", name, instead)
			} else {
				c.Env[name] = v
			}
		case strings.HasPrefix(k, "secret-env:"):
			b.secretEnv(c, k, v)
		case strings.HasPrefix(k, "workers:"):
			svc := strings.TrimPrefix(k, "workers:")
			if layoutOK && !workerServices[svc] {
				b.bad(k, "%q is not a worker service of Redash %s: use one of %s", svc, c.Version, strings.Join(compose.WorkerServices(layout), ", "))
				continue
			}
			c.Workers[svc] = parseCount(v, k, b.bad)
		case strings.HasPrefix(k, "secret:"):
			name := strings.TrimPrefix(k, "secret:")
			if !slices.Contains(secretNames, name) {
				b.bad(k, "%q is not a secret name: use one of %s", name, strings.Join(secretNames, ", "))
				continue
			}
			ref, err := secrets.ParseRef(name, v)
			if err != nil {
				b.bad(k, "%v", err)
				continue
			}
			c.Secrets[name] = ref
		}
	}
}

// secretEnv reads one redash:secret-env:<VAR>: a secret whose value
// becomes environment variable VAR of every Redash container, written only
// to the 0600 env file. Its logical name is secrets.EnvName(VAR).
func (b *builder) secretEnv(c *Config, k, v string) {
	name := strings.TrimPrefix(k, "secret-env:")
	switch {
	case !envNameRE.MatchString(name):
		b.bad(k, "%q is not an environment variable name: use letters, digits and '_', not starting with a digit", name)
		return
	case agentWritesEnv(name):
		b.bad(k, "%s is written by the agent itself: remove this key%s", name, insteadOf(name))
		return
	}
	if _, both := b.m["env:"+name]; both {
		b.bad(k, "%s is also set by redash:env:%s: keep one; remove redash:env:%s to take the value from Secrets Manager", name, name, name)
		return
	}
	ref, err := secrets.ParseRef(secrets.EnvName(name), v)
	if err != nil {
		b.bad(k, "%v", err)
		return
	}
	c.Secrets[ref.Name] = ref
}

// dbSecret reads the one RDS-shaped JSON secret, if set.
func (b *builder) dbSecret(c *Config) {
	v, ok := b.m["db-secret"]
	if !ok {
		return
	}
	ref, err := secrets.ParseRef(secrets.DBSecret, v)
	if err != nil {
		b.bad("db-secret", "%v", err)
		return
	}
	c.Secrets[secrets.DBSecret] = ref
}

// endpoints checks the database and Redis addresses that are set; which
// ones are required depends on the provider (awsSecrets). Hosts are checked
// as host names or IP literals, since they are pasted into URLs.
func (b *builder) endpoints(c Config) {
	if c.DBEndpoint != "" {
		if _, _, err := SplitHostPort(c.DBEndpoint); err != nil {
			b.bad("db-endpoint", "%v", err)
		}
	}
	if c.RedisEndpoint != "" {
		if _, _, err := SplitHostPort(c.RedisEndpoint); err != nil {
			b.bad("redis-endpoint", "%v", err)
		}
	}
	if c.RedisEndpoint != "" && c.RedisURL != "" {
		b.bad("redis-url", "both redash:redis-endpoint and redash:redis-url are set: keep one")
	}
	if c.RedisURL != "" {
		if err := CheckRedisURL(c.RedisURL); err != nil {
			b.bad("redis-url", "%v", err)
		}
	}
}

// awsSecrets fills in the seed's secrets below the prefix, unless
// overridden one by one, and requires the endpoints AWS has no default for.
func (b *builder) awsSecrets(c *Config) {
	if !strings.HasSuffix(c.SecretsPrefix, "/") && c.SecretsPrefix != "" {
		// "Redash" and "Redash/" both mean the seed layout; a prefix is a path.
		c.SecretsPrefix += "/"
	}
	for name, path := range seedSecretPaths {
		if _, set := c.Secrets[name]; set {
			continue
		}
		if c.UsesDBSecret() && (name == secrets.DBUser || name == secrets.DBPassword) {
			continue // taken from the RDS-shaped JSON secret
		}
		c.Secrets[name] = secrets.Ref{Name: name, SecretID: c.SecretsPrefix + path}
	}
	if c.DBEndpoint == "" && !c.UsesDBSecret() {
		b.bad("db-endpoint", "no database endpoint: tag the instance with redash:db-endpoint=<aurora-writer-endpoint>:5432, or redash:db-secret=<RDS-managed secret>")
	}
	if c.RedisEndpoint == "" && c.RedisURL == "" {
		b.bad("redis-endpoint", "no Redis endpoint: tag the instance with redash:redis-endpoint=<elasticache-primary-endpoint>:6379 or redash:redis-url=rediss://...")
	}
}

// localSecrets replaces every reference with one to a secret generated once
// and kept under the state directory; an operator may write
// db-user/db-password there for an external database.
func (b *builder) localSecrets(c *Config) {
	for k := range b.m {
		if strings.HasPrefix(k, "secret-env:") {
			b.bad(k, "provider local has no Secrets Manager to read it from: use provider aws, or set redash:env:%s in config.yaml (keep the file mode 0600)", strings.TrimPrefix(k, "secret-env:"))
		}
	}
	c.Secrets = map[string]secrets.Ref{}
	names := []string{secrets.DBPassword, secrets.CookieSecret, secrets.SecretKey}
	if c.DBEndpoint != "" {
		names = append(names, secrets.DBUser)
	}
	for _, n := range names {
		c.Secrets[n] = secrets.Ref{Name: n, SecretID: "local:" + n}
	}
	if _, set := b.m["db-secret"]; set {
		b.bad("db-secret", "provider local keeps its secrets under the state directory; remove redash:db-secret or use provider aws")
	}
}

func parsePort(m map[string]string, key string, bad func(string, string, ...any)) int {
	p, err := parsePortString(m[key])
	if err != nil {
		bad(key, "%q is not a TCP port: write a decimal number from 1 to 65535, e.g. 8080", m[key])
		return 0
	}
	return p
}

func parseCount(v, key string, bad func(string, string, ...any)) int {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 64 || strconv.Itoa(n) != v {
		bad(key, "%q is not a worker count between 1 and 64", v)
		return 0
	}
	return n
}
