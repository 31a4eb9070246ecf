package secrets

import (
	"fmt"
	"strings"
)

// Logical secret names, as used in `redash:secret:<name>` tags.
const (
	DBUser       = "db-user"
	DBPassword   = "db-password"
	CookieSecret = "cookie-secret"
	SecretKey    = "secret-key"
	RedisAuth    = "redis-auth"
	// DBSecret is the RDS-managed JSON secret named by `redash:db-secret`.
	DBSecret = "db-secret"
)

// Ref says where one logical secret lives in Secrets Manager.
type Ref struct {
	Name     string // logical name, e.g. "db-password"
	SecretID string // secret name or ARN
	JSONKey  string // when set, the secret string is a JSON object and this key holds the value
}

// ParseRef parses "<id or ARN>" or "<id>#<json-key>" for the logical secret name.
func ParseRef(name, s string) (Ref, error) {
	id, key, hasKey := strings.Cut(strings.TrimSpace(s), "#")
	if id == "" {
		return Ref{}, fmt.Errorf("secret %q: empty secret id: give a secret name or ARN, optionally followed by #<json-key>", name)
	}
	if hasKey && key == "" {
		return Ref{}, fmt.Errorf("secret %q: %q ends in '#' with no JSON key after it: write <id>#<json-key> or drop the '#'", name, s)
	}
	return Ref{Name: name, SecretID: id, JSONKey: key}, nil
}

// String returns the reference in the "<id>#<json-key>" form; it never holds a value.
func (r Ref) String() string {
	if r.JSONKey == "" {
		return r.SecretID
	}
	return r.SecretID + "#" + r.JSONKey
}

// Secret is one fetched secret: where it came from, its value and the
// Secrets Manager VersionId it was read at (empty for the local provider).
type Secret struct {
	Ref       Ref
	Value     Value
	VersionID string
}

// envPrefix starts the logical name of a `redash:secret-env:<VAR>` secret:
// "env:<VAR>". No seed secret name contains a colon, so the two never meet.
const envPrefix = "env:"

// EnvName is the logical name of the secret that fills environment
// variable v (tag redash:secret-env:<v>).
func EnvName(v string) string { return envPrefix + v }

// EnvVar returns the environment variable a secret-env logical name fills,
// and whether name is one.
func EnvVar(name string) (string, bool) { return strings.CutPrefix(name, envPrefix) }
