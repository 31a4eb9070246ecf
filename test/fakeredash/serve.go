package main

// serve.go plays the long-running entrypoint roles of the redash/redash and
// redash/nginx images, plus the two one-shot helpers tests need (env, crash).
// Side effects: it listens on :5000 (server) or :80 (nginx) and writes its
// environment to /tmp/env for every long-running role, so a test can read
// what the container saw with the Docker API's CopyFromContainer.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

const (
	// envDumpPath is where long-running roles leave their environment.
	envDumpPath = "/tmp/env"
	// shutdownGrace bounds how long a server waits for in-flight requests
	// after SIGTERM; Docker's default stop timeout is 10s, stay well inside.
	shutdownGrace = 2 * time.Second
)

const usage = "usage: fakeredash server|worker|scheduler|nginx|env|crash|create_db|manage"

// serve runs one entrypoint role and returns the process exit code.
func serve(cmd string, args []string) int {
	switch cmd {
	case "env":
		if err := writeEnvJSON(os.Stdout, os.Environ()); err != nil {
			fmt.Fprintf(os.Stderr, "fakeredash: printing the environment: %v\n", err)
			return 1
		}
		return 0
	case "crash":
		// Exits at once so tests can see Docker's on-failure restarts and the
		// agent's crash-loop detection.
		fmt.Fprintln(os.Stderr, "fakeredash: crash requested, exiting 1")
		return 1
	case "server", "worker", "scheduler", "nginx":
	default:
		if code, ok := healthcheck(cmd); ok {
			return code
		}
		fmt.Fprintf(os.Stderr, "fakeredash: unknown command %q\n%s\n", cmd, usage)
		return 2
	}

	// PID 1 in a container gets no default SIGTERM handler from the kernel,
	// so without this `docker stop` would wait 10s and then SIGKILL (exit 137).
	ctx, stop := stopContext()
	defer stop()

	if err := dumpEnv(envDumpPath, os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: writing the environment to %q: %v\n", envDumpPath, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fakeredash: %s started\n", cmd)

	var err error
	switch cmd {
	case "server":
		if _, ok := os.LookupEnv("REDASH_DATABASE_URL"); ok {
			go recordServerStart() // datasources.go
		}
		err = serveServer(ctx, familyFromEnv(), familyServer(familyFromEnv(), serverHandler(os.Environ)))
	case "nginx": // nginx.go
		err = runNginx(ctx)
	default: // worker, scheduler: against Redis (worker.go), else idle like an empty queue
		if !runBackground(ctx, cmd) {
			<-ctx.Done()
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakeredash: %s: %v\n", cmd, err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "fakeredash: %s stopped on signal\n", cmd)
	return 0
}

// serverHandler answers like Redash's web server where the agent looks:
// GET /ping (its health check) and GET /env (for tests to compare secrets).
// environ is a function so tests can hand in a fixed environment.
func serverHandler(environ func() []string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "PONG.")
	})
	mux.HandleFunc("GET /env", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		writeEnvJSON(w, environ())
	})
	addDataSourceRoutes(mux) // datasources.go
	return mux
}

// listenAndServe serves h on addr until ctx ends, then shuts down gracefully.
// A signal is a clean stop (nil); failing to listen is an error.
func listenAndServe(ctx context.Context, addr string, h http.Handler) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %q: %w", addr, err)
	}
	return serveListener(ctx, ln, h)
}

// serveListener serves h on ln until ctx ends, then shuts down gracefully.
func serveListener(ctx context.Context, ln net.Listener, h http.Handler) error {
	addr := ln.Addr().String()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving on %q: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("shutting down %q: %w", addr, err)
	}
	return nil
}

// envMap turns os.Environ() lines into a map. Values are kept byte for byte;
// only the first '=' separates name from value.
func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// writeEnvJSON writes the environment as one JSON object with sorted keys.
// HTML escaping is off so values read the same as in the container; the JSON
// decodes back to the exact strings (for valid UTF-8, which secrets are).
func writeEnvJSON(w io.Writer, environ []string) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(envMap(environ))
}

// dumpEnv writes the environment to path, 0600 because it holds the
// container's secrets. The directory is created if missing (an image FROM
// scratch has no /tmp unless the image adds one).
func dumpEnv(path string, environ []string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o1777); err != nil {
		return err
	}
	// Write then rename, so a test polling the file never reads half of it.
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := writeEnvJSON(f, environ); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
