package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PG is the test PostgreSQL started by scripts/ci-postgres.sh. Host is the
// docker0 gateway address, so the same values work from the test process and
// from containers on any Docker bridge network.
type PG struct {
	Host     string
	Port     int
	User     string
	Password string // a fixed test password, not a secret
}

// Defaults match scripts/ci-postgres.sh; PGTEST_HOST, PGTEST_PORT,
// PGTEST_USER and PGTEST_PASSWORD point the tests elsewhere.
const (
	pgDefaultUser     = "redash_test"
	pgDefaultPassword = "redash_test_pw"
	pgHint            = "run scripts/ci-postgres.sh (starts PostgreSQL 15, listens on the docker0 gateway, creates role redash_test)"
)

// Postgres returns the test server, or skips (fails on CI) when it does not
// accept the test role's login within a few seconds.
func Postgres(t testing.TB) PG {
	t.Helper()
	host := os.Getenv("PGTEST_HOST")
	if host == "" {
		gw, err := pgDockerGateway()
		if err != nil {
			// Falling back to 127.0.0.1 would pass here and fail later, in
			// a container, as a misleading "connection refused".
			Unavailable(t, "the docker0 bridge address where containers reach the test PostgreSQL ("+err.Error()+")",
				"start Docker so docker0 has an IPv4 address, or set PGTEST_HOST to an address containers can reach")
			return PG{}
		}
		host = gw
	}
	p := PG{
		Host:     host,
		Port:     5432,
		User:     pgEnvOr("PGTEST_USER", pgDefaultUser),
		Password: pgEnvOr("PGTEST_PASSWORD", pgDefaultPassword),
	}
	if s := os.Getenv("PGTEST_PORT"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("PGTEST_PORT=%q is not a port number", s)
		}
		p.Port = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		Unavailable(t, fmt.Sprintf("PostgreSQL at %s (%v)", net.JoinHostPort(p.Host, strconv.Itoa(p.Port)), err), pgHint)
		return p
	}
	conn.Close(context.Background())
	return p
}

// ConnConfig builds the pgx config for database db from fields, so a
// password never passes through a URL string.
func (p PG) ConnConfig(db string) *pgx.ConnConfig {
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		panic(err) // an empty DSN always parses
	}
	cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database = p.Host, uint16(p.Port), p.User, p.Password, db
	cfg.ConnectTimeout = 5 * time.Second
	cfg.RuntimeParams["application_name"] = "redash-agent-test"
	return cfg
}

// Connect opens one connection to database db.
func (p PG) Connect(ctx context.Context, db string) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, p.ConnConfig(db))
}

// URL is REDASH_DATABASE_URL for database db, credentials percent-encoded.
func (p PG) URL(db string) string {
	u := url.URL{
		Scheme: "postgresql",
		User:   url.UserPassword(p.User, p.Password),
		Host:   net.JoinHostPort(p.Host, strconv.Itoa(p.Port)),
		Path:   "/" + db,
	}
	return u.String()
}

var pgNonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// NewDatabase creates an empty database for this test and drops it (with
// FORCE, so leftover sessions of killed containers do not block) on cleanup.
func (p PG) NewDatabase(t testing.TB) string {
	t.Helper()
	var b [4]byte
	_, _ = rand.Read(b[:])
	base := pgNonIdent.ReplaceAllString(strings.ToLower(t.Name()), "_")
	if len(base) > 40 {
		base = base[len(base)-40:]
	}
	name := "t_" + strings.Trim(base, "_") + "_" + hex.EncodeToString(b[:])

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn, err := p.Connect(ctx, "postgres")
	if err != nil {
		t.Fatalf("connecting to PostgreSQL to create a test database: %v (%s)", err, pgHint)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("creating database %q: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		conn, err := p.Connect(ctx, "postgres")
		if err != nil {
			t.Errorf("connecting to PostgreSQL to drop database %q: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("dropping database %q: %v", name, err)
		}
	})
	return name
}

// pgDockerGateway is the IPv4 address of docker0, where containers reach the
// host, or why there is none.
func pgDockerGateway() (string, error) {
	ifc, err := net.InterfaceByName("docker0")
	if err != nil {
		return "", fmt.Errorf("no docker0 interface: %w", err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return "", fmt.Errorf("reading the addresses of docker0: %w", err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.String(), nil
		}
	}
	return "", errors.New("docker0 has no IPv4 address")
}

func pgEnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
