package secrets

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// DBCredentials is the RDS-managed secret shape. Secrets that RDS manages for
// a master user hold only username and password; the rotation-template shape
// adds host, port and dbname. So only username and password are required and
// the rest are zero when absent, for the caller to fill from
// redash:db-endpoint and redash:db-name.
type DBCredentials struct {
	Username string
	Password Value
	Host     string
	Port     int // 0 when absent
	DBName   string
}

// ParseDBSecret reads DBCredentials from a fetched JSON secret. The port may
// be a JSON number or a string holding one. Errors name the keys at fault,
// never their values.
func ParseDBSecret(s Secret) (DBCredentials, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s.Value.Reveal()), &obj); err != nil || obj == nil {
		return DBCredentials{}, configErr(s.Ref, nil, "is not a JSON object: a database secret holds {\"username\", \"password\", \"host\", \"port\", \"dbname\"} like an RDS-managed secret; point tag %s at such a secret", tagFor(s.Ref.Name))
	}
	var problems []string
	str := func(key string, required bool) string {
		raw, ok := obj[key]
		if !ok {
			if required {
				problems = append(problems, fmt.Sprintf("key %q is missing", key))
			}
			return ""
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			problems = append(problems, fmt.Sprintf("key %q is not a string", key))
			return ""
		}
		if v == "" && required {
			problems = append(problems, fmt.Sprintf("key %q is empty", key))
		} else if required && IsBlank(v) {
			problems = append(problems, fmt.Sprintf("key %q holds only whitespace", key))
		}
		return v
	}
	c := DBCredentials{
		Username: str("username", true),
		Password: NewValue(str("password", true)),
		Host:     str("host", false),
		DBName:   str("dbname", false),
	}
	if raw, ok := obj["port"]; ok {
		p, ok := jsonScalar(raw)
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if !ok || err != nil || n < 1 || n > 65535 {
			problems = append(problems, `key "port" is not a number from 1 to 65535`)
		} else {
			c.Port = n
		}
	}
	if len(problems) > 0 {
		return DBCredentials{}, configErr(s.Ref, nil, "is not a usable database secret: %s: fix the secret, or point tag %s at another", strings.Join(problems, "; "), tagFor(s.Ref.Name))
	}
	return c, nil
}
