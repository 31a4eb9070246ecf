package main

// redis.go: how the stand-in reads a Redis URL, exactly as the real image's
// client would. redis-py's from_url and kombu's url_to_parts both start with
// Python's urllib.parse.urlsplit; the password is then netloc.rpartition('@')
// and userinfo.partition(':'). redis-py 3 (Redash 8 to 10) keeps it raw;
// redis-py 4 (25.x on) and kombu (8.x's Celery broker) unquote it. So a URL
// the agent writes the wrong way for a family fails AUTH here as it would in
// production.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// pyURL is what urlsplit gives, plus the userinfo fields.
type pyURL struct {
	scheme, netloc, path, query, fragment string
	username, password                    string
	hasPassword                           bool
	hostname                              string
	port                                  int // 0 when absent
}

const schemeChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."

// pyURLSplit ports urllib.parse.urlsplit (3.7 to 3.10 rules; 2.7 splits
// the netloc the same way) and the username/password/hostname/port
// properties, errors included.
func pyURLSplit(url string) (pyURL, error) {
	var u pyURL
	// bpo-43882: tab, CR and LF are removed from anywhere in the URL.
	url = strings.NewReplacer("\t", "", "\r", "", "\n", "").Replace(url)
	if i := strings.IndexByte(url, ':'); i > 0 && isAlpha(url[0]) && strings.Trim(url[:i], schemeChars) == "" {
		u.scheme, url = strings.ToLower(url[:i]), url[i+1:]
	}
	if strings.HasPrefix(url, "//") {
		end := len(url)
		for _, c := range "/?#" {
			if i := strings.IndexRune(url[2:], c); i >= 0 && i+2 < end {
				end = i + 2
			}
		}
		u.netloc, url = url[2:end], url[end:]
		if strings.Contains(u.netloc, "[") != strings.Contains(u.netloc, "]") {
			return u, errors.New("invalid IPv6 URL")
		}
	}
	url, u.fragment, _ = strings.Cut(url, "#")
	u.path, u.query, _ = strings.Cut(url, "?")

	userinfo, hostinfo := "", u.netloc
	if i := strings.LastIndexByte(u.netloc, '@'); i >= 0 {
		userinfo, hostinfo = u.netloc[:i], u.netloc[i+1:]
		u.username, u.password, u.hasPassword = strings.Cut(userinfo, ":")
	}
	host, port := hostinfo, ""
	if strings.HasPrefix(hostinfo, "[") {
		if i := strings.IndexByte(hostinfo, ']'); i >= 0 {
			host = hostinfo[1:i]
			_, port, _ = strings.Cut(hostinfo[i+1:], ":")
		}
	} else {
		host, port, _ = strings.Cut(hostinfo, ":")
	}
	u.hostname = strings.ToLower(host)
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 0 || strings.TrimLeft(port, "0123456789") != "" {
			return u, fmt.Errorf("port could not be cast to integer value as %q", port)
		}
		if n > 65535 {
			return u, errors.New("port out of range 0-65535")
		}
		u.port = n
	}
	return u, nil
}

func isAlpha(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// pyUnquote ports urllib.parse.unquote: valid %XX become bytes, anything
// else stays as written. (Python then decodes UTF-8 with "replace"; the
// tokens here are ASCII or valid UTF-8.)
func pyUnquote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			n, _ := strconv.ParseUint(s[i+1:i+3], 16, 8)
			b.WriteByte(byte(n))
			i += 2
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// redisClientKind is the Python client that reads a URL.
type redisClientKind int

const (
	redisPy3 redisClientKind = iota // from_url, no unquoting (redis-py 3)
	redisPy4                        // from_url, unquoting (redis-py 4)
	kombu                           // url_to_parts, unquoting
)

func (k redisClientKind) String() string {
	return [...]string{"redis-py 3", "redis-py 4", "kombu"}[k]
}

// redisOptions reads url as client kind would and gives go-redis options.
// Errors name the client and never the password.
func redisOptions(url string, kind redisClientKind) (*redis.Options, error) {
	u, err := pyURLSplit(url)
	if err != nil {
		return nil, fmt.Errorf("%s cannot parse the Redis URL: ValueError: %v", kind, err)
	}
	user, pass := u.username, u.password
	if kind != redisPy3 {
		user, pass = pyUnquote(user), pyUnquote(pass)
	}
	if kind == redisPy3 && !u.hasPassword {
		pass = ""
	}
	port := u.port
	if port == 0 {
		port = 6379
	}
	db := 0
	if p := strings.Trim(u.path, "/"); p != "" {
		if db, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("%s: the Redis URL's path %q is not a database number", kind, u.path)
		}
	}
	opt := &redis.Options{
		Addr: net.JoinHostPort(u.hostname, strconv.Itoa(port)), DB: db,
		Username: user, Password: pass,
		DialTimeout: 3 * time.Second, ReadTimeout: 3 * time.Second, WriteTimeout: 3 * time.Second,
		MaxRetries: -1, PoolSize: 4,
	}
	if u.scheme == "rediss" {
		return nil, fmt.Errorf("%s: rediss:// is not played by the stand-in", kind)
	}
	return opt, nil
}

// connectRedis dials and authenticates, once. The error says which client
// failed and how, never the password.
func connectRedis(ctx context.Context, url string, kind redisClientKind) (*redis.Client, error) {
	opt, err := redisOptions(url, kind)
	if err != nil {
		return nil, err
	}
	c := redis.NewClient(opt)
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s: connecting to redis at %s: %v", kind, opt.Addr, err)
	}
	return c, nil
}
