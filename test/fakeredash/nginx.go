package main

// nginx.go plays the redash/nginx image. Its nginx.conf says
//
//	upstream redash { server redash:5000; }
//	...
//	proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
//	proxy_pass http://redash;
//
// and nginx resolves a name in an `upstream` block once, when it loads the
// configuration: it fails to start when `redash` does not resolve, and
// keeps the address it found for as long as it runs, answering 502 once
// nothing listens there. The stand-in does the same in every mode, so a test
// sees what a server that comes back on another address does to a running
// nginx (issue 9, point 4).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"time"
)

const (
	nginxAddr = ":80"
	// nginxUpstreamHost and nginxUpstreamPort are what the real image's
	// upstream block hard-codes: the server's compose alias.
	nginxUpstreamHost = "redash"
	nginxUpstreamPort = "5000"
	// nginxConnectTimeout stands in for proxy_connect_timeout (60s in
	// nginx): shorter, so a test of a vanished address gets its 502 soon.
	nginxConnectTimeout = 5 * time.Second
)

// runNginx resolves the upstream once, then proxies to that address until
// ctx ends. A name that does not resolve is nginx's start-up failure.
func runNginx(ctx context.Context) error {
	upstream, err := resolveUpstream(ctx, net.DefaultResolver, nginxUpstreamHost, nginxUpstreamPort)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "fakeredash: nginx: upstream %s:%s resolved once to %s\n", nginxUpstreamHost, nginxUpstreamPort, upstream.Host)
	return listenAndServe(ctx, nginxAddr, nginxHandler(upstream))
}

// resolveUpstream looks host up once and returns the proxy target for its
// first IPv4 address (nginx would balance over all of them; the compose
// alias has one). The error is nginx's own message.
func resolveUpstream(ctx context.Context, r *net.Resolver, host, port string) (*url.URL, error) {
	ips, err := r.LookupIP(ctx, "ip4", host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf(`[emerg] host not found in upstream "%s:%s" in /etc/nginx/conf.d/default.conf:2`, host, port)
	}
	return &url.URL{Scheme: "http", Host: net.JoinHostPort(ips[0].String(), port)}, nil
}

// nginxHandler forwards every request to upstream (a fixed address), with
// the headers redash/nginx sets: Host kept, X-Real-IP the client's address,
// and the client's address appended to X-Forwarded-For (what
// $proxy_add_x_forwarded_for does; ReverseProxy appends it itself).
func nginxHandler(upstream *url.URL) http.Handler {
	p := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(upstream)
			r.Out.Host = r.In.Host
			// Rewrite starts without the inbound X-Forwarded-For: carry it
			// over so the client's address is appended, not substituted.
			r.Out.Header["X-Forwarded-For"] = r.In.Header["X-Forwarded-For"]
			r.SetXForwarded()
			// SetXForwarded also sets X-Forwarded-Host and -Proto, which
			// this nginx.conf does not: the ALB's X-Forwarded-Proto passes.
			r.Out.Header.Del("X-Forwarded-Host")
			r.Out.Header["X-Forwarded-Proto"] = r.In.Header["X-Forwarded-Proto"]
			if ip, _, err := net.SplitHostPort(r.In.RemoteAddr); err == nil {
				r.Out.Header.Set("X-Real-Ip", ip)
			}
		},
		Transport: &http.Transport{
			DialContext:       (&net.Dialer{Timeout: nginxConnectTimeout}).DialContext,
			DisableKeepAlives: true,
		},
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			// 502 like nginx, so a test can tell "proxy up, server gone"
			// apart from "proxy down".
			http.Error(w, "502 Bad Gateway: upstream "+upstream.Host+": "+err.Error(), http.StatusBadGateway)
		},
	}
	return p
}
