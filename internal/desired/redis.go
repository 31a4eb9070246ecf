package desired

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redash-agent/redash-agent/internal/compose"
	"github.com/redash-agent/redash-agent/internal/config"
	"github.com/redash-agent/redash-agent/internal/secrets"
)

// RedisURLs are the Redis URLs the env file carries: REDASH_REDIS_URL, and
// for Celery families (8.x) REDASH_CELERY_BROKER, which kombu reads.
type RedisURLs struct {
	Redis  string
	Broker string // "" when the family has no Celery broker setting
}

// unsafeRaw are the bytes a password written raw (not percent-encoded) into
// a URL cannot hold: Python's urlsplit (2.7, 3.7) ends the netloc at the
// first '/', '?' or '#', so the client never sees the rest; it refuses an
// unbalanced '[' or ']' ("Invalid IPv6 URL"), and 3.11.4 on refuses even a
// balanced pair outside the host, so any bracket is refused; 3.7.11 and
// later strip tab, CR and LF from the whole URL. '@' and ':' are fine: the
// userinfo is split with rpartition('@') and partition(':').
const unsafeRaw = "/?#[]\t\r\n"

// redisURLs writes the Redis URLs for cfg's Redash family. The password
// comes from the redis-auth secret, else from redash:redis-url's userinfo
// (read as RFC 3986, percent-encoded); it is written the way the image's
// client reads it: percent-encoded for redis-py 4 (25.x on) and kombu,
// raw for redis-py 3 (8.x to 10.x), whose from_url does not unquote. A
// password that cannot be carried raw is a configuration error that names
// the characters, never the rest of the token.
func redisURLs(cfg config.Config, got map[string]secrets.Secret) (RedisURLs, error) {
	if cfg.RedisEndpoint == "" && cfg.RedisURL == "" { // the bundled redis (config requires one otherwise)
		return RedisURLs{Redis: localRedisURL, Broker: brokerFor(cfg, localRedisURL)}, nil
	}
	scheme, hostPath := "redis", cfg.RedisEndpoint+"/"+defaultRedisDB
	var user, password string
	hasUserinfo, hasPassword := false, false
	if cfg.RedisURL != "" {
		u, err := url.Parse(cfg.RedisURL)
		if err != nil {
			// config.CheckRedisURL has accepted it already; the error would quote the password.
			return RedisURLs{}, fmt.Errorf("redash:redis-url is not a URL: write it like rediss://master.redash.abc123.use1.cache.amazonaws.com:6379/0")
		}
		scheme = u.Scheme
		_, rest, _ := strings.Cut(cfg.RedisURL, "://")
		if i := strings.LastIndex(strings.SplitN(rest, "/", 2)[0], "@"); i >= 0 {
			rest = rest[i+1:]
		}
		hostPath = rest
		if u.User != nil {
			hasUserinfo = true
			user = u.User.Username()
			password, hasPassword = u.User.Password()
		}
	}
	if s, ok := got[secrets.RedisAuth]; ok && !s.Value.IsZero() {
		// The secret replaces credentials written in the URL.
		hasUserinfo, hasPassword, user, password = true, true, "", s.Value.Reveal()
	}
	if !hasUserinfo {
		u := scheme + "://" + hostPath
		return RedisURLs{Redis: u, Broker: brokerFor(cfg, u)}, nil
	}
	family, err := compose.FamilyFor(cfg.Version)
	if err != nil {
		return RedisURLs{}, err
	}
	userinfo := func(escape func(string) string) string {
		if !hasPassword {
			return escape(user) + "@"
		}
		return escape(user) + ":" + escape(password) + "@"
	}
	encoded := scheme + "://" + userinfo(Escape) + hostPath
	out := RedisURLs{Redis: encoded}
	if family.HasCeleryBroker() {
		out.Broker = encoded // kombu's url_to_parts unquotes (kombu 4.6.3)
	}
	if family.RedisDecodesPassword() {
		return out, nil
	}
	if bad := rawUnsafe(user + password); bad != "" {
		return RedisURLs{}, fmt.Errorf("secret %q (or the password in redash:redis-url) holds %s, which Redash %s cannot read from REDASH_REDIS_URL: its redis-py 3 takes the password raw from the URL, and Python's URL parser splits the URL at these characters before the client sees it: rotate the Redis AUTH token to one without them, or run Redash 25.x or later (redis-py 4 decodes a percent-encoded password)",
			secrets.RedisAuth, bad, cfg.Version)
	}
	out.Redis = scheme + "://" + userinfo(func(s string) string { return s }) + hostPath
	return out, nil
}

// brokerFor is REDASH_CELERY_BROKER for a URL without credentials: the
// same URL for Celery families, none otherwise.
func brokerFor(cfg config.Config, u string) string {
	family, err := compose.FamilyFor(cfg.Version)
	if err != nil || !family.HasCeleryBroker() {
		return ""
	}
	return u
}

// rawUnsafe names the bytes of s that a raw URL password cannot carry
// (unsafeRaw, and anything outside printable ASCII, which Python's
// netloc check may reject after NFKC normalisation), each once, quoted;
// "" when there are none.
func rawUnsafe(s string) string {
	var names []string
	seen := map[byte]bool{}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if seen[c] || !(strings.IndexByte(unsafeRaw, c) >= 0 || c < 0x20 || c >= 0x7f) {
			continue
		}
		seen[c] = true
		switch {
		case c >= 0x80:
			if !seen[0x80] {
				seen[0x80] = true
				names = append(names, "non-ASCII characters")
			}
		default:
			names = append(names, fmt.Sprintf("%q", string(c)))
		}
	}
	if len(names) == 0 {
		return ""
	}
	return "the characters " + strings.Join(names, ", ")
}

// RedisConn is how the agent itself reaches the Redis the workers use (to
// read the queue system's registry), taken from the configuration, not by
// parsing the URL written for Redash. Addr is "" for the bundled redis: its
// address is the container's, known only once it runs.
type RedisConn struct {
	Addr     string // host:port
	DB       int
	TLS      bool
	Username string
	Password secrets.Value
}

func redisConn(cfg config.Config, got map[string]secrets.Secret) RedisConn {
	var c RedisConn
	switch {
	case cfg.RedisEndpoint != "":
		c.Addr = cfg.RedisEndpoint
	case cfg.RedisURL != "":
		u, err := url.Parse(cfg.RedisURL)
		if err != nil {
			return c // redisURLs reports it
		}
		c.TLS = u.Scheme == "rediss"
		c.Addr = u.Host
		if u.Port() == "" {
			c.Addr = net.JoinHostPort(u.Hostname(), "6379")
		}
		c.DB, _ = strconv.Atoi(strings.TrimPrefix(u.Path, "/"))
		if u.User != nil {
			p, _ := u.User.Password()
			c.Username, c.Password = u.User.Username(), secrets.NewValue(p)
		}
	}
	if s, ok := got[secrets.RedisAuth]; ok && !s.Value.IsZero() {
		c.Username, c.Password = "", s.Value
	}
	return c
}
