package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// hostLabelRE is one DNS label. '_' is allowed besides RFC 1123's letters,
// digits and '-' because Docker network aliases and compose service names
// (the hosts of provider local) may hold it; it has no meaning in a URL's
// authority, so it cannot change what a URL built from the host says.
var hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$`)

// CheckHost reports whether host (as it comes out of net.SplitHostPort or
// a URL, so an IPv6 literal without its brackets) is a host name or an IP
// literal. The agent pastes the host into REDASH_DATABASE_URL and
// REDASH_REDIS_URL, so anything else ('@', '/', '?', '#', a space ...) would
// change the user, database or options Redash connects with.
func CheckHost(host string) error {
	if host == "" {
		return fmt.Errorf("the host is empty")
	}
	if strings.Contains(host, ":") {
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() {
			return fmt.Errorf("%q is not a host name or IP address", host)
		}
		if a.Zone() != "" {
			// A zone is link-local only and its '%' would need escaping in every URL.
			return fmt.Errorf("%q has an IPv6 zone (%%%s): use a global IPv6 address or a host name", host, a.Zone())
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil // IPv4
	}
	if len(host) > 253 {
		return fmt.Errorf("host name of %d characters is longer than 253", len(host))
	}
	for _, label := range strings.Split(host, ".") {
		if !hostLabelRE.MatchString(label) {
			return fmt.Errorf("%q is not a host name or IP address (a host name is letters, digits, '-' and '_' in dot-separated labels)", host)
		}
	}
	return nil
}

// SplitHostPort parses "host:port" with a numeric port and a host that
// CheckHost accepts; an IPv6 address is written in brackets, "[2001:db8::1]:5432".
func SplitHostPort(s string) (string, int, error) {
	host, ps, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		if fixed, ok := unbracketedIPv6(s); ok {
			return "", 0, fmt.Errorf("%q: an IPv6 address needs brackets around it before the port: write %s", s, fixed)
		}
		return "", 0, fmt.Errorf("%q is not host:port, e.g. mydb.cluster-abc.us-east-1.rds.amazonaws.com:5432", s)
	}
	port, err := parsePortString(ps)
	if err != nil {
		return "", 0, fmt.Errorf("%q has no valid port (1-65535)", s)
	}
	if err := CheckHost(host); err != nil {
		return "", 0, fmt.Errorf("%q: %v: write host:port, e.g. mydb.cluster-abc.us-east-1.rds.amazonaws.com:5432", s, err)
	}
	return host, port, nil
}

// unbracketedIPv6 recognizes "2001:db8::1:5432" and "2001:db8::1", which
// net.SplitHostPort rejects with a message about colons that does not say
// what to write instead, and returns what to write: "[2001:db8::1]:5432".
func unbracketedIPv6(s string) (string, bool) {
	if strings.ContainsAny(s, "[]") || strings.Count(s, ":") < 2 {
		return "", false
	}
	// "2001:db8::1:5432" is also a valid address; reading the last group as
	// the port is what the operator meant when the rest is an address too.
	if i := strings.LastIndex(s, ":"); i > 0 {
		if a, err := netip.ParseAddr(s[:i]); err == nil && a.Is6() {
			return "[" + s[:i] + "]" + s[i:], true
		}
	}
	if a, err := netip.ParseAddr(s); err == nil && a.Is6() {
		return "[" + s + "]:<port>", true
	}
	return "", false
}

// parsePortString accepts a port written in decimal, 1-65535, as the
// operator would read it back: "08080" or "+80" are refused rather than
// silently meaning something that is not what was written.
func parsePortString(s string) (int, error) {
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 || strconv.Itoa(p) != s {
		return 0, fmt.Errorf("%q is not a TCP port (1-65535)", s)
	}
	return p, nil
}

// CheckRedisURL checks a redis-url: redis:// or rediss://, a host that
// CheckHost accepts, an optional decimal port and database number. It
// returns the fix as part of the error.
func CheckRedisURL(s string) error {
	const example = "write it like rediss://master.redash.abc123.use1.cache.amazonaws.com:6379/0"
	if !strings.HasPrefix(s, "redis://") && !strings.HasPrefix(s, "rediss://") {
		return fmt.Errorf("%q must start with redis:// or rediss://: %s", redactURL(s), example)
	}
	u, err := url.Parse(s)
	if err != nil {
		// url.Error quotes the whole URL, which may hold a password.
		return fmt.Errorf("%q is not a URL: %s", redactURL(s), example)
	}
	host := u.Hostname()
	if host == "" {
		return fmt.Errorf("%q names no host: %s", redactURL(s), example)
	}
	if err := CheckHost(host); err != nil {
		return fmt.Errorf("%q: %v: %s", redactURL(s), err, example)
	}
	if p := u.Port(); p != "" {
		if _, err := parsePortString(p); err != nil {
			return fmt.Errorf("%q: %v: %s", redactURL(s), err, example)
		}
	} else if strings.HasSuffix(u.Host, ":") {
		return fmt.Errorf("%q has an empty port: %s", redactURL(s), example)
	}
	if db := strings.TrimPrefix(u.Path, "/"); db != "" {
		if n, err := strconv.Atoi(db); err != nil || n < 0 || strconv.Itoa(n) != db {
			return fmt.Errorf("%q: the path %q is not a database number: %s", redactURL(s), u.Path, example)
		}
	}
	if u.Fragment != "" || strings.Contains(s, "#") {
		return fmt.Errorf("%q has a '#' fragment, which Redis URLs do not take: %s", redactURL(s), example)
	}
	return nil
}

// redactURL hides the password part of a redis URL's userinfo for error
// messages: a tag or config file that carries one should not spread it to
// the journal too.
func redactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	auth := rest
	if i := strings.IndexAny(auth, "/?#"); i >= 0 {
		auth = auth[:i]
	}
	at := strings.LastIndex(auth, "@")
	if at < 0 {
		return s
	}
	user, _, hasPass := strings.Cut(auth[:at], ":")
	if !hasPass {
		return s
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}
