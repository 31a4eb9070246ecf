package config

import (
	"slices"
	"sort"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// reservedEnv is the one list of variables redash:env:<VAR> may not set,
// each with the key to set instead. Two kinds:
//
//   - the variables the agent builds itself (the connection URLs, the two
//     secrets, the per-service worker settings, the bundled database's
//     password): a tag would put a secret in plain sight, or be silently
//     overridden by the compose file's per-service environment;
//   - every variable through which Redash would open its database or Redis
//     connections somewhere else than the agent-built URLs. The names come
//     from redash/settings/__init__.py at v8.0.0, v10.1.0 and v25.8.0:
//     SQLALCHEMY_DATABASE_URI falls back from REDASH_DATABASE_URL to
//     DATABASE_URL, the Redis URL from REDASH_REDIS_URL to REDIS_URL, RQ
//     (10 and later) reads RQ_REDIS_URL, Celery (8.x) REDASH_CELERY_BROKER,
//     REDASH_CELERY_BACKEND and REDASH_CELERY_RESULT_BACKEND, and the rate
//     limiter REDASH_LIMITER_STORAGE (default: the Redis URL).
//
// REDASH_CELERY_BROKER_SSL_* stay allowed: they are TLS options of the
// agent-built broker connection, not another route. SQLALCHEMY_DATABASE_URI
// is Flask-SQLAlchemy's setting name, not a variable Redash reads; it is
// refused so that whoever tries it learns which key does move the database.
var reservedEnv = map[string]string{
	"REDASH_DATABASE_URL":          dbKeys,
	"DATABASE_URL":                 dbKeys,
	"SQLALCHEMY_DATABASE_URI":      dbKeys,
	"REDASH_REDIS_URL":             redisKeys,
	"REDIS_URL":                    redisKeys,
	"RQ_REDIS_URL":                 redisKeys,
	"REDASH_CELERY_BROKER":         redisKeys,
	"REDASH_CELERY_BACKEND":        redisKeys,
	"REDASH_CELERY_RESULT_BACKEND": redisKeys,
	"REDASH_LIMITER_STORAGE":       redisKeys,
	"REDASH_COOKIE_SECRET":         "the cookie-secret secret (redash:secret:cookie-secret, default <prefix>CookieSecret)",
	"REDASH_SECRET_KEY":            "the secret-key secret (redash:secret:secret-key, default <prefix>SecretKey)",
	compose.EnvWebWorkers:          "redash:web-workers",
	compose.EnvWorkersCount:        "redash:workers:<service>",
	compose.EnvQueues:              "nothing: the agent gives each worker service its layout's queues",
	"POSTGRES_PASSWORD":            "nothing: provider local generates the bundled database's password (db-password under the state directory)",
}

const (
	dbKeys    = "redash:db-endpoint and redash:db-name with the db-user/db-password secrets, or redash:db-secret"
	redisKeys = "redash:redis-endpoint or redash:redis-url, with redash:secret:redis-auth for a password"
)

// agentSetEnv are the variables internal/desired writes besides the
// reserved ones; redash:env: may override them (they are settings, not
// secrets), redash:secret-env: may not.
var agentSetEnv = []string{"PYTHONUNBUFFERED", "REDASH_LOG_LEVEL", EnvProxiesCount, EnvEnforceCSRF}

// agentWritesEnv reports whether the agent writes variable name itself, so
// that redash:secret-env:<name> would fight it.
func agentWritesEnv(name string) bool {
	_, reserved := reservedEnv[name]
	return reserved || slices.Contains(agentSetEnv, name)
}

// insteadOf is the ": use ..." hint for a variable the agent writes.
func insteadOf(name string) string {
	if instead, ok := reservedEnv[name]; ok {
		return "; use " + instead
	}
	return "; it is not a secret: set redash:env:" + name + " to change it"
}

// ReservedEnv lists the variable names redash:env:<VAR> refuses, sorted,
// for documentation and tests.
func ReservedEnv() []string {
	names := make([]string, 0, len(reservedEnv))
	for n := range reservedEnv {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
