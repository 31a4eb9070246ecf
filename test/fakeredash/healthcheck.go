package main

// healthcheck.go: the entrypoint's health commands, run by `docker exec`.
//
//	celery_healthcheck   8.x (and plain): `celery inspect ping -d celery@$HOSTNAME`,
//	                     answered from the node's key (worker.go); 9.x and 10.x
//	                     only print that it is deprecated; 25.x has no such command
//	workers_healthcheck  25.1 on (and plain): `rq info --url $REDASH_REDIS_URL -R`
//	                     counts the live RQ workers (of every host, like the real
//	                     one) against WORKERS_COUNT

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"
)

// healthcheck runs one health command; ok is false for other commands.
func healthcheck(cmd string) (code int, ok bool) {
	f := familyFromEnv()
	switch {
	case cmd == "celery_healthcheck" && (f.plain() || f.major < 9):
		return celeryHealthcheck(), true
	case cmd == "celery_healthcheck" && f.major < 25:
		fmt.Println("DEPRECATED: Celery has been replaced with RQ and now performs healthchecks autonomously as part of the 'worker' entrypoint.")
		return 0, true
	case cmd == "workers_healthcheck" && (f.plain() || f.atLeast(25, 1)):
		return workersHealthcheck(), true
	case cmd == "celery_healthcheck" || cmd == "workers_healthcheck":
		// The entrypoint's `exec "$@"` finds no such program.
		fmt.Fprintf(os.Stderr, "/app/bin/docker-entrypoint: line 1: exec: %s: not found\n", cmd)
		return 127, true
	}
	return 0, false
}

func celeryHealthcheck() int {
	hostname := os.Getenv("HOSTNAME")
	url := os.Getenv("REDASH_CELERY_BROKER")
	if url == "" {
		url = os.Getenv("REDASH_REDIS_URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := connectRedis(ctx, url, kombu)
	if err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		return 1
	}
	defer c.Close()
	if c.Exists(ctx, celeryNodeKey(hostname)).Val() == 0 {
		fmt.Println("Error: No nodes replied within time constraint.")
		return 69 // EX_UNAVAILABLE, as celery inspect
	}
	fmt.Printf("-> celery@%s: OK\n        pong\n\n1 node online.\n", hostname)
	return 0
}

func workersHealthcheck() int {
	want := os.Getenv("WORKERS_COUNT")
	fmt.Printf("Checking active workers count against %s...\n", want)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := connectRedis(ctx, os.Getenv("REDASH_REDIS_URL"), redisPy4)
	if err != nil {
		// `rq info` fails, so ACTIVE_WORKERS_COUNT is empty, and
		// `[ "" -lt N ]` is a test error: the script takes its else branch
		// and passes. Redash's own check cannot see an unreachable Redis;
		// the agent's registry check (internal/queues) does.
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		fmt.Fprintln(os.Stderr, "/app/bin/docker-entrypoint: line 29: [: : integer expression expected")
		fmt.Println(" workers are active")
		return 0
	}
	defer c.Close()
	active := 0
	for _, key := range c.SMembers(ctx, rqWorkersKey).Val() {
		if c.Exists(ctx, key).Val() == 1 && !c.HExists(ctx, key, "death").Val() {
			active++
		}
	}
	n, err := strconv.Atoi(want)
	if err != nil {
		// `[ "$ACTIVE" -lt "" ]` is a test error, so the script takes the else branch.
		fmt.Printf("%d workers are active\n", active)
		return 0
	}
	if active < n {
		fmt.Printf("%d workers are active, Exiting\n", active)
		return 1
	}
	fmt.Printf("%d workers are active\n", active)
	return 0
}
