// Package desired turns a resolved configuration and the fetched secrets into
// what the host should hold: the env file's variables, the compose spec and
// the database to migrate. It is pure (values in, values out), so the whole
// mapping from tags to containers is tested without I/O.
package desired

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// DB is the database the server uses, for migrations and status. Its
// password is a secrets.Value, so printing a DB never shows it.
type DB struct {
	Host     string
	Port     int
	User     string
	Password secrets.Value
	Name     string
}

// Addr is host:port, the one identifier errors name.
func (d DB) Addr() string { return net.JoinHostPort(d.Host, strconv.Itoa(d.Port)) }

// State is everything the agent renders from one configuration.
type State struct {
	Env  map[string]string // the env file: plaintext secrets live only here
	Spec compose.Spec
	DB   DB
	// Redis is how the agent reaches the workers' Redis (readiness).
	Redis RedisConn
}

// Bundled service endpoints for provider local.
const (
	localDBHost    = "postgres"
	localDBUser    = "postgres"
	localRedisURL  = "redis://redis:6379/0"
	defaultPGPort  = 5432
	defaultRedisDB = "0"
)

// Build maps cfg and the fetched secrets (keyed by logical name) to State.
// A secret the configuration needs but got is an error naming it.
func Build(cfg config.Config, got map[string]secrets.Secret, dir string) (State, error) {
	var errs []error
	need := func(name string) secrets.Value {
		s, ok := got[name]
		if !ok || s.Value.IsZero() {
			errs = append(errs, fmt.Errorf("secret %q is missing or empty", name))
			return secrets.Value{}
		}
		return s.Value
	}

	db, err := database(cfg, got, need)
	if err != nil {
		errs = append(errs, err)
	}
	redisURLs, err := redisURLs(cfg, got)
	if err != nil {
		errs = append(errs, err)
	}

	env := map[string]string{
		// As in getredash/setup's env: unbuffered logs reach `docker logs` at once.
		"PYTHONUNBUFFERED":     "0",
		"REDASH_LOG_LEVEL":     "INFO",
		"REDASH_COOKIE_SECRET": need(secrets.CookieSecret).Reveal(),
		"REDASH_SECRET_KEY":    need(secrets.SecretKey).Reveal(),
		"REDASH_REDIS_URL":     redisURLs.Redis,
	}
	if redisURLs.Broker != "" {
		env["REDASH_CELERY_BROKER"] = redisURLs.Broker
	}
	if len(errs) == 0 {
		env["REDASH_DATABASE_URL"] = DatabaseURL(db)
	}
	local := cfg.Provider == config.ProviderLocal
	if local && cfg.DBEndpoint == "" {
		env["POSTGRES_PASSWORD"] = db.Password.Reveal()
	}
	family, _ := compose.FamilyFor(cfg.Version) // config validated it
	env[config.EnvProxiesCount] = strconv.Itoa(ProxiesCount(cfg, family))
	if family.EnforcesCSRF() {
		// As getredash/setup's setup.sh writes it for the releases it installs.
		env[config.EnvEnforceCSRF] = "true"
	}
	// redash:env: comes last: an operator may override anything above.
	for k, v := range cfg.Env {
		env[k] = v
	}
	// redash:secret-env: values: config refused names the agent writes or
	// redash:env: sets, so nothing above is overridden.
	for name := range cfg.Secrets {
		if v, ok := secrets.EnvVar(name); ok {
			env[v] = need(name).Reveal()
		}
	}
	if len(errs) > 0 {
		return State{}, errors.Join(errs...)
	}

	spec := compose.Spec{
		Project:       cfg.Project,
		Dir:           dir,
		Version:       cfg.Version,
		Image:         cfg.Image,
		NginxImage:    cfg.NginxImage,
		Role:          cfg.Role,
		Nginx:         cfg.Nginx,
		Local:         local && cfg.DBEndpoint == "" && cfg.RedisEndpoint == "" && cfg.RedisURL == "",
		PostgresImage: cfg.PostgresImage,
		RedisImage:    cfg.RedisImage,
		WebWorkers:    cfg.WebWorkers,
		Workers:       cfg.Workers,
		LogGroup:      cfg.LogGroup,
		Region:        cfg.Region,
		ServerPort:    cfg.ServerPort,
		NginxPort:     cfg.NginxPort,

		WorkerStopGrace: cfg.WorkerStopGrace,
	}
	return State{Env: env, Spec: spec, DB: db, Redis: redisConn(cfg, got)}, nil
}

// ProxiesCount is REDASH_PROXIES_COUNT: how many proxies in front of the
// server append to X-Forwarded-For, so that Redash's ProxyFix takes the
// client's address from the right entry (its rate limits of /login and
// password resets are per address). The ALB appends one, nginx on this
// instance another. Every family applies ProxyFix with this count; 9.x on
// read 0 as "trust no entry", but 8.x's werkzeug 0.11 reads 0 as "the first
// entry" (which the client writes) and fails requests without the header,
// so 8.x gets at least 1: with nothing in front, a client can then choose
// its own address, as it can with any count there.
func ProxiesCount(cfg config.Config, f compose.Family) int {
	n := 0
	if cfg.LoadBalancer == config.LoadBalancerALB {
		n++
	}
	serverHere := cfg.Role == compose.RoleAll || cfg.Role == compose.RoleWeb
	if cfg.Nginx && serverHere {
		n++
	}
	if n == 0 && f.Layout() == compose.Celery {
		n = 1
	}
	return n
}

func database(cfg config.Config, got map[string]secrets.Secret, need func(string) secrets.Value) (DB, error) {
	var db DB
	if cfg.Provider == config.ProviderLocal && cfg.DBEndpoint == "" {
		return DB{Host: localDBHost, Port: defaultPGPort, User: localDBUser, Password: need(secrets.DBPassword), Name: localDBUser}, nil
	}
	if cfg.UsesDBSecret() {
		s, ok := got[secrets.DBSecret]
		if !ok {
			return db, fmt.Errorf("secret %q is missing", secrets.DBSecret)
		}
		creds, err := secrets.ParseDBSecret(s)
		if err != nil {
			return db, err
		}
		db = DB{Host: creds.Host, Port: creds.Port, User: creds.Username, Password: creds.Password, Name: creds.DBName}
		// The JSON's host goes into REDASH_DATABASE_URL like db-endpoint's,
		// so it is held to the same rule, unless db-endpoint replaces it.
		if creds.Host != "" && cfg.DBEndpoint == "" {
			// The error names the key, not the value: it is part of a secret.
			if config.CheckHost(creds.Host) != nil {
				return db, fmt.Errorf("reading secret %q (id %q): its JSON key \"host\" is not a host name or IP address (letters, digits, '-', '_' and dots; an IPv6 address without brackets): store the cluster endpoint's host name there, or set redash:db-endpoint=<host>:<port>", secrets.DBSecret, s.Ref.SecretID)
			}
		}
	}
	// Explicit settings win over the JSON secret's fields.
	if cfg.DBEndpoint != "" {
		host, port, err := config.SplitHostPort(cfg.DBEndpoint)
		if err != nil {
			return db, err
		}
		db.Host, db.Port = host, port
	}
	if _, ok := cfg.Secrets[secrets.DBUser]; ok {
		db.User = need(secrets.DBUser).Reveal()
	}
	if _, ok := cfg.Secrets[secrets.DBPassword]; ok {
		db.Password = need(secrets.DBPassword)
	}
	if cfg.DBName != "" {
		db.Name = cfg.DBName
	}
	if db.Name == "" {
		db.Name = db.User // as in the seed: the database is named after its user
	}
	if db.Port == 0 {
		db.Port = defaultPGPort
	}
	if db.Host == "" {
		return db, fmt.Errorf("no database host: set redash:db-endpoint or put host in the redash:db-secret JSON")
	}
	return db, nil
}

// DatabaseURL is REDASH_DATABASE_URL: postgresql://user:password@host:port/dbname
// with user, password and database name percent-encoded.
func DatabaseURL(db DB) string {
	return "postgresql://" + Escape(db.User) + ":" + Escape(db.Password.Reveal()) + "@" +
		hostPort(db.Host, db.Port) + "/" + Escape(db.Name)
}

func hostPort(host string, port int) string {
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host + ":" + strconv.Itoa(port)
}

// Escape percent-encodes every byte outside RFC 3986's unreserved set. That is
// stricter than url.UserPassword (which keeps + ; , = & $) and so decodes the
// same in SQLAlchemy, psycopg2 and redis-py, whatever the password holds.
func Escape(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}
