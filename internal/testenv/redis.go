package testenv

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RedisServer is a private redis-server with requirepass, listening on
// 127.0.0.1 and on the docker0 gateway (Host), so containers on project
// networks reach it as Host:Port like the test PostgreSQL.
type RedisServer struct {
	Host     string // the docker0 gateway, or 127.0.0.1 without docker0
	Port     int
	Password string // a test password, not a secret
}

// DefaultRedisPassword holds characters that redis-py 3 and 4 read
// differently, so a test using it proves the per-version URL encoding.
const DefaultRedisPassword = "t!e%s:t@pw"

const redisHint = "install redis-server (apt-get install redis-server); the tests start their own instance"

// Redis starts a redis-server for this test with DefaultRedisPassword.
func Redis(t testing.TB) RedisServer { return RedisWithPassword(t, DefaultRedisPassword) }

// RedisWithPassword starts a redis-server for this test requiring password,
// stopped at cleanup; it skips (fails on CI) when redis-server is missing.
func RedisWithPassword(t testing.TB, password string) RedisServer {
	t.Helper()
	bin := RequireTool(t, "redis-server", redisHint)
	if bin == "" {
		return RedisServer{}
	}
	gw, err := pgDockerGateway()
	if err != nil {
		// Containers reach the test Redis at docker0's address; without it
		// they would fail later with a misleading "connection refused".
		Unavailable(t, "the docker0 bridge address where containers reach the test Redis ("+err.Error()+")",
			"start Docker so docker0 has an IPv4 address")
		return RedisServer{}
	}
	s := RedisServer{Host: gw, Port: FreePort(t), Password: password}
	binds := "127.0.0.1 " + s.Host
	dir := t.TempDir()
	// The config goes through stdin ("-"), so the password is in no argv.
	conf := fmt.Sprintf("port %d\nbind %s\nprotected-mode no\nsave \"\"\nappendonly no\ndir %s\nrequirepass %s\n",
		s.Port, binds, dir, redisQuote(password))
	cmd := exec.Command(bin, "-")
	cmd.Stdin = strings.NewReader(conf)
	logf, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		logf.Close()
	})
	c := s.Client()
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return s
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server exited at start: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on port %d does not answer PING within 10s: %v", s.Port, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addr is Host:Port.
func (s RedisServer) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Client is a go-redis client authenticated to the server.
func (s RedisServer) Client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.Password, MaxRetries: -1})
}

// redisQuote writes s as a redis.conf double-quoted string, every byte
// outside letters and digits as \xHH.
func redisQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, `\x%02x`, c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// RedisImageTag is the tag RedisImage builds.
const RedisImageTag = "redash-agent-test/redis:host"

// RedisImage builds RedisImageTag, the host's redis-server FROM scratch
// (BuildHostImage), serving without a password on 6379 like the official
// image's default, for provider local's bundled redis. Built once per
// process; skips (fails on CI) without redis-server on the host.
func RedisImage(t testing.TB) string {
	t.Helper()
	bin := RequireTool(t, "redis-server", redisHint)
	if bin == "" {
		return ""
	}
	BuildHostImage(t, HostImage{
		Tag:      RedisImageTag,
		Binaries: []string{bin},
		Dirs:     []HostDir{{Path: "/data", UID: 999, GID: 999}},
		Command:  []string{bin, "--bind", "0.0.0.0", "--port", "6379", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/data"},
		User:     "999:999",
		Ports:    []string{"6379/tcp"},
	})
	return RedisImageTag
}
