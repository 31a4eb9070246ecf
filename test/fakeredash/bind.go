package main

// bind.go: where the stand-in's server listens, per family. Up to 25.x the
// entrypoint runs `gunicorn -b 0.0.0.0:5000`; from 26.02
// (getredash/redash#7596) `gunicorn -b [::]:5000`, a dual-stack socket that
// also takes IPv4 connections, and that cannot be made at all on a kernel
// without IPv6 (booted with ipv6.disable=1): socket(AF_INET6) fails with
// EAFNOSUPPORT, gunicorn logs it, retries, and exits 1.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"syscall"
)

// serveServer listens where the family's gunicorn binds and serves h.
func serveServer(ctx context.Context, f family, h http.Handler) error {
	ln, err := listenServer(f, serverPort, inet6Socket)
	if err != nil {
		return err
	}
	return serveListener(ctx, ln, h)
}

// serverPort is where every family's server listens.
const serverPort = "5000"

// listenServer binds the server's socket on port. newSocket opens an
// AF_INET6 socket and is swapped by tests for one that fails as on a kernel
// without IPv6.
func listenServer(f family, port string, newSocket func() error) (net.Listener, error) {
	if f.plain() || !f.atLeast(26, 2) {
		// "tcp4": Go's "tcp" would make even 0.0.0.0 a dual-stack socket.
		return net.Listen("tcp4", "0.0.0.0:"+port)
	}
	// Go's "tcp" on [::] quietly falls back to IPv4 when the kernel has no
	// IPv6; gunicorn does not, so ask for an AF_INET6 socket first.
	if err := newSocket(); err != nil {
		return nil, fmt.Errorf("[ERROR] connection to ('::', %s) failed: %w\n[ERROR] Can't connect to ('::', %s)", port, err, port)
	}
	// "tcp" (not "tcp6", which sets IPV6_V6ONLY): dual stack, as gunicorn
	// with the kernel's default bindv6only=0.
	return net.Listen("tcp", "[::]:"+port)
}

// inet6Socket opens and closes an AF_INET6 TCP socket.
func inet6Socket() error {
	fd, err := syscall.Socket(syscall.AF_INET6, syscall.SOCK_STREAM, 0)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return fmt.Errorf("[Errno %d] %w", int(errno), err)
		}
		return err
	}
	return syscall.Close(fd)
}
