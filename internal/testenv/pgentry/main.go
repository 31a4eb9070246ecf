// Command pgentry is the entrypoint of testenv.PostgresImage: what the
// official postgres image's docker-entrypoint.sh does for the variables the
// agent sets, without a shell. On first start (no PG_VERSION in PGDATA) it
// runs initdb with POSTGRES_PASSWORD as the superuser's password and
// password (scram-sha-256) auth for every TCP client; then it execs postgres
// listening on 5432 on every address. It runs as the image's non-root user.
// Like the official image, a data directory that already holds a cluster is
// used as it is: POSTGRES_PASSWORD then changes nothing.
package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

const (
	binDir  = "/usr/lib/postgresql/15/bin"
	dataDir = "/var/lib/postgresql/data"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pgentry:", err)
		os.Exit(1)
	}
}

func run() error {
	pgdata := os.Getenv("PGDATA")
	if pgdata == "" {
		pgdata = dataDir
	}
	user := os.Getenv("POSTGRES_USER")
	if user == "" {
		user = "postgres"
	}
	password := os.Getenv("POSTGRES_PASSWORD")
	// The server must not inherit the password.
	os.Unsetenv("POSTGRES_PASSWORD")

	_, err := os.Stat(filepath.Join(pgdata, "PG_VERSION"))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if password == "" {
			return fmt.Errorf("database is uninitialized and POSTGRES_PASSWORD is not set: set it (the official image refuses too)")
		}
		if err := initdb(pgdata, user, password); err != nil {
			return err
		}
	case err != nil:
		return fmt.Errorf("checking %s for a database: %w", pgdata, err)
	default:
		fmt.Println("PostgreSQL Database directory appears to contain a database; Skipping initialization")
	}
	// A full argv[0]: postgres finds its share and lib directories from it.
	argv := []string{filepath.Join(binDir, "postgres"), "-D", pgdata, "-c", "listen_addresses=*", "-c", "unix_socket_directories=/var/run/postgresql"}
	return syscall.Exec(filepath.Join(binDir, "postgres"), argv, os.Environ())
}

func initdb(pgdata, user, password string) error {
	pw, err := os.CreateTemp("", "pwfile-")
	if err != nil {
		return err
	}
	defer os.Remove(pw.Name())
	if _, err := pw.WriteString(password + "\n"); err != nil {
		return err
	}
	if err := pw.Close(); err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(binDir, "initdb"), "-D", pgdata, "-U", user, "--pwfile="+pw.Name(),
		"--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb: %w", err)
	}
	// As the official image: every address, password auth.
	f, err := os.OpenFile(filepath.Join(pgdata, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("\nhost all all all scram-sha-256\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
