package testenv

// sockproxy.go is a unix-socket proxy between the agent and a Docker
// daemon, so a test can cut the daemon away (refused connections, open
// streams ended) and bring it back without touching the daemon. Side
// effects: a socket file in a temporary directory and the goroutines that
// copy bytes, all gone when the test ends.

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// SocketProxy forwards every connection to its socket to Target.
type SocketProxy struct {
	// Host is its DOCKER_HOST value, unix://<dir>/docker.sock.
	Host   string
	Socket string
	Target string // the daemon's socket path

	t     testing.TB
	mu    sync.Mutex
	l     net.Listener
	conns map[net.Conn]bool
}

// NewSocketProxy starts a proxy in front of the daemon socket target; it is
// closed when the test ends.
func NewSocketProxy(t testing.TB, target string) *SocketProxy {
	t.Helper()
	dir, err := os.MkdirTemp("", "spx")
	if err != nil {
		t.Fatal(err)
	}
	p := &SocketProxy{t: t, Socket: filepath.Join(dir, "docker.sock"), Target: target, conns: map[net.Conn]bool{}}
	p.Host = "unix://" + p.Socket
	t.Cleanup(func() { p.Cut(); os.RemoveAll(dir) })
	p.Restore()
	return p
}

// Cut closes the listener and every open connection, as a stopped daemon
// does: new connections are refused, an events stream ends.
func (p *SocketProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		p.l.Close()
		p.l = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
	os.Remove(p.Socket)
}

// Restore listens again: the daemon is back.
func (p *SocketProxy) Restore() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.l != nil {
		return
	}
	l, err := net.Listen("unix", p.Socket)
	if err != nil {
		p.t.Fatalf("listening on the proxy socket %q: %v", p.Socket, err)
	}
	p.l = l
	go p.serve(l)
}

func (p *SocketProxy) serve(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("unix", p.Target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.l != l { // cut meanwhile
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close(); c.Close() }()
		go func() { io.Copy(c, up); up.Close(); c.Close() }()
	}
}
