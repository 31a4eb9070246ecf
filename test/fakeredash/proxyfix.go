package main

// proxyfix.go: the server's client address as Redash computes it, per
// family, and its boot delay. Redash wraps its app in werkzeug's ProxyFix
// with REDASH_PROXIES_COUNT (default 1) in every family:
//
//	8.x         werkzeug 0.11.11, contrib.fixers.ProxyFix(app, num_proxies)
//	9.x, 10.x   werkzeug 0.16.1, middleware.proxy_fix.ProxyFix(x_for=n, x_host=1)
//	25.x on     werkzeug 2.3.8, the same call
//
// and rate-limits /login and password resets by the address it yields.

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// defaultBootDelay is how long the server takes to load the app before it
// answers: gunicorn binds at once, and requests wait in its backlog.
const defaultBootDelay = 500 * time.Millisecond

// errIndex is Python's IndexError: werkzeug 0.11 with num_proxies 0 and no
// X-Forwarded-For indexes an empty list, and the request fails with 500.
var errIndex = errors.New("IndexError: list index out of range")

// remoteAddr is REMOTE_ADDR after family f's ProxyFix, given the
// X-Forwarded-For header as gunicorn hands it to WSGI (repeated headers
// joined with ",") and the peer's address.
func remoteAddr(f family, count int, xff string, hasXFF bool, peer string) (string, error) {
	if f.celery() {
		// 0.11: split, strip, drop empty entries, then
		// forwarded_for[-num_proxies] when len >= num_proxies. -0 is 0:
		// the first entry, which the client writes.
		var list []string
		for _, x := range strings.Split(xff, ",") {
			if x = strings.TrimSpace(x); x != "" {
				list = append(list, x)
			}
		}
		if len(list) < count {
			return peer, nil
		}
		v, ok := pyIndex(list, -count)
		if !ok {
			return "", errIndex
		}
		return v, nil
	}
	// 0.16 and 2.x: nothing to do unless both the count and the header are
	// non-empty; values[-x_for] when len >= x_for; an empty result keeps
	// the peer.
	if count == 0 || !hasXFF || xff == "" {
		return peer, nil
	}
	var values []string
	if f.major >= 25 {
		values = parseHTTPList(xff)
	} else {
		for _, x := range strings.Split(xff, ",") {
			values = append(values, strings.TrimSpace(x))
		}
	}
	if len(values) < count {
		return peer, nil
	}
	v, ok := pyIndex(values, -count)
	if !ok {
		return "", errIndex
	}
	if v == "" {
		return peer, nil
	}
	return v, nil
}

// pyIndex is Python's list[i], negative i counting from the end.
func pyIndex(list []string, i int) (string, bool) {
	if i < 0 {
		i += len(list)
	}
	if i < 0 || i >= len(list) {
		return "", false
	}
	return list[i], true
}

// parseHTTPList is werkzeug 2.3's parse_list_header: urllib's
// parse_http_list (commas outside double quotes split; a trailing empty
// part is dropped; parts stripped), then surrounding quotes removed.
func parseHTTPList(s string) []string {
	var res []string
	var part strings.Builder
	escape, quote := false, false
	for _, c := range s {
		switch {
		case escape:
			part.WriteRune(c)
			escape = false
			continue
		case quote:
			if c == '\\' {
				escape = true
				continue
			}
			if c == '"' {
				quote = false
			}
			part.WriteRune(c)
			continue
		case c == ',':
			res = append(res, part.String())
			part.Reset()
			continue
		case c == '"':
			quote = true
		}
		part.WriteRune(c)
	}
	if part.Len() > 0 {
		res = append(res, part.String())
	}
	for i, p := range res {
		p = strings.TrimSpace(p)
		if len(p) >= 2 && p[0] == '"' && p[len(p)-1] == '"' {
			p = p[1 : len(p)-1]
		}
		res[i] = p
	}
	return res
}

// familyServer wraps the shared server handler for family f: requests wait
// for the boot delay, and GET /login reports the client address Redash
// would rate-limit, as JSON {"remote_addr": ...}. Plain mode is unchanged.
func familyServer(f family, h http.Handler) http.Handler {
	if f.plain() {
		return h
	}
	count, _ := proxiesCount(os.LookupEnv("REDASH_PROXIES_COUNT")) // runFamily refused a bad one
	delay := defaultBootDelay
	if v := os.Getenv("FAKEREDASH_BOOT_DELAY"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			delay = d
		}
	}
	booted := make(chan struct{})
	time.AfterFunc(delay, func() { close(booted) })

	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc("GET /login", func(w http.ResponseWriter, r *http.Request) {
		peer, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			peer = r.RemoteAddr
		}
		values, has := r.Header["X-Forwarded-For"]
		addr, err := remoteAddr(f, count, strings.Join(values, ","), has, peer)
		if err != nil {
			http.Error(w, "Internal Server Error: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"remote_addr": addr, "proxies_count": count, "family": f.String()})
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-booted:
		case <-r.Context().Done():
			return
		}
		mux.ServeHTTP(w, r)
	})
}
