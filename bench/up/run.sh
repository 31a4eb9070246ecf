#!/usr/bin/env bash
# bench/up/run.sh: wall time and peak memory of a cold `up` (no containers,
# network, volume or rendered files; images present) and a no-op `up`
# (everything already converged) of the same stack on the same local fake
# images, for four sides:
#
#   compose    docker-compose -p bench -f FILE up -d        (Debian's 1.29)
#   floor      bench/up/floor: the same network create, container creates
#              and starts, in parallel, through the Docker API, and nothing
#              else (no start order, no readiness)
#   floordeps  bench/up/floor -depends: the same, but a start waits for the
#              starts of what the service depends_on (nginx after the
#              server, whose name the real nginx resolves when it starts)
#   agent      redash-agent up --config bench/up/agent.yaml --provider local
#
# FILE is the docker-compose.yml that `redash-agent render` writes for the
# scenario, with the project name swapped, so every side converges the same
# containers.
#
# The sides run interleaved (round i: compose, floor, floordeps, agent) so
# the noise of a shared machine falls on all of them alike. Every run is
# checked: every container running and GET /ping through nginx answers
# "PONG."; a no-op up must keep every container ID; the restarts Docker made
# after a cold up (a crash at start) are counted. Each measured command is
# bounded by `timeout`. docs/bench-up.md reports the runs.
#
# Two scenarios (the second argument):
#   external  (default) the fleet's shape: the database and Redis live outside
#             the instance (Aurora and ElastiCache in production; here the
#             host's PostgreSQL 15 and a private redis-server on the docker0
#             address) and the database is already migrated, as for every
#             instance an Auto Scaling group adds. Six containers: server,
#             scheduler, three workers, nginx.
#   bundled   a first boot of provider local: the agent also starts the
#             bundled postgres and redis, initialises the empty volume and
#             runs create_db. Eight containers.
#
# Usage: [AGENT_BIN=path] [BASELINE_BIN=path] [BENCH_LOGS=dir] bench/up/run.sh [RUNS] [SCENARIO]
#        (RUNS per side, default 5; SCENARIO external or bundled, default external)
# Needs: go, docker (CLI + Engine), docker-compose 1.29, redis-server, GNU time
#        (/usr/bin/time; apt-get install -y time), curl; host ports 10080 and
#        15000 free (agent.yaml publishes them). external also needs the host's
#        PostgreSQL set up by scripts/ci-postgres.sh (role redash_test) and
#        port 16379 free on the docker0 address.
# Side effects: builds images redash-agent-bench/{redash:25.1.0,nginx:latest,
# postgres:15,redis:7} FROM scratch (nothing is pulled), creates and removes
# containers, networks and volumes of projects bench, benchfloor, benchagent,
# and removes the images again on exit. external creates (and drops on exit)
# the database bench_up and runs a redis-server until exit.
set -euo pipefail

RUNS=${1:-5}
SCENARIO=${2:-external}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/bench/up"
IMAGES=(redash-agent-bench/redash:25.1.0 redash-agent-bench/nginx:latest
	redash-agent-bench/postgres:15 redash-agent-bench/redis:7)
case $SCENARIO in
external) WANT_CONTAINERS=6 ;;
bundled) WANT_CONTAINERS=8 ;;
*) echo "bench-up: unknown scenario $SCENARIO: external or bundled" >&2; exit 2 ;;
esac
TMP=$(mktemp -d /tmp/bench-up.XXXXXX)
STEP_TIMEOUT=120 # seconds, per measured command

die() { echo "bench-up: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need go "install Go 1.26"
need docker "install the docker CLI"
need docker-compose "apt-get install -y docker-compose"
need curl "apt-get install -y curl"
[ -x /usr/bin/time ] || die "/usr/bin/time not found: apt-get install -y time"

# remove_project P: every container, network and volume compose project P
# has. Not timed; runs before and after every measured pair.
remove_project() {
	local ids
	ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
	[ -z "$ids" ] || docker rm -f $ids >/dev/null
	docker network rm "$1_default" >/dev/null 2>&1 || true
	docker volume rm "$1_postgres-data" >/dev/null 2>&1 || true
	# The external Redis outlives the containers: forget their workers, so
	# the next side's readiness is its own.
	if [ -n "${REDIS_PID:-}" ]; then redis-cli -h "$GW" -p "$REDIS_PORT" flushall >/dev/null; fi
}

# psql_admin ARGS: psql as scripts/ci-postgres.sh's test superuser.
psql_admin() { PGPASSWORD=${PGTEST_PASSWORD:-redash_test_pw} psql -h 127.0.0.1 -U redash_test -d postgres -v ON_ERROR_STOP=1 -q "$@"; }

cleanup() {
	for p in bench benchfloor benchagent; do remove_project "$p"; done
	docker rmi "${IMAGES[@]}" >/dev/null 2>&1 || true
	if [ -n "${REDIS_PID:-}" ]; then kill "$REDIS_PID" 2>/dev/null || true; fi
	if [ "$SCENARIO" = external ]; then psql_admin -c 'DROP DATABASE IF EXISTS bench_up' >/dev/null 2>&1 || true; fi
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images: the fake Redash (test/fakeredash) FROM scratch, as the tests
# build them; postgres and redis are real (below).
mkdir -p "$TMP/ctx/tmp"
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -buildid=' -o "$TMP/ctx/fakeredash" ./test/fakeredash)
build_image() { # TAG CMD: FAKEREDASH_HEAD is the schema head create_db makes
	printf 'FROM scratch\nCOPY tmp /tmp\nCOPY fakeredash /fakeredash\nENV FAKEREDASH_HEAD=benchrev1\nENTRYPOINT ["/fakeredash"]\nCMD ["%s"]\n' "$2" >"$TMP/ctx/Dockerfile"
	# The classic builder, as testenv.BuildFakeImage uses through the API.
	DOCKER_BUILDKIT=0 docker build -q -t "$1" "$TMP/ctx" >"$TMP/build.log" 2>&1 ||
		{ cat "$TMP/build.log" >&2; die "building image $1"; }
}
build_image "${IMAGES[0]}" server
build_image "${IMAGES[1]}" nginx
# postgres and redis are the host's real servers (and their ldd libraries)
# FROM scratch, built by testenv (PostgresImage, RedisImage) through their
# own tests: up migrates the bundled database, and READY waits for the
# workers to register their queues in redis. Retagged for this bench.
(cd "$REPO" && CI=true go test -count=1 -run 'TestPostgresImage|TestRedisImageServes' ./internal/testenv >"$TMP/build.log" 2>&1) ||
	{ cat "$TMP/build.log" >&2; die "building the postgres and redis images (internal/testenv)"; }
docker tag redash-agent-test/postgres:15-host "${IMAGES[2]}"
docker tag redash-agent-test/redis:host "${IMAGES[3]}"

# --- the programs, and the one compose file.
(cd "$REPO" && go build -o "$TMP/floor" ./bench/up/floor)
# AGENT_BIN=/path/to/redash-agent measures a prebuilt binary instead.
if [ -n "${AGENT_BIN:-}" ]; then
	cp "$AGENT_BIN" "$TMP/redash-agent"
else
	(cd "$REPO" && go build -o "$TMP/redash-agent" ./cmd/redash-agent) ||
		die "building ./cmd/redash-agent failed: the agent side needs it (or set AGENT_BIN)"
fi
# BASELINE_BIN=/path/to/redash-agent adds a fourth side, "baseline" (an
# older build), interleaved with the others: before/after in one run.
SIDES="compose floor floordeps agent"
if [ -n "${BASELINE_BIN:-}" ]; then
	cp "$BASELINE_BIN" "$TMP/baseline-agent"
	SIDES="$SIDES baseline"
fi
mkdir -p "$TMP/state" "$TMP/agent" "$TMP/render"
cp "$HERE/agent.yaml" "$TMP/agent.yaml"
if [ "$SCENARIO" = external ]; then
	# The database and Redis outside the instance, reached as containers
	# reach the host: its docker0 address (scripts/ci-postgres.sh listens
	# there too).
	need psql "apt-get install -y postgresql-client"
	need redis-server "apt-get install -y redis-server"
	GW=$(ip -4 -o addr show docker0 | awk '{split($4, a, "/"); print a[1]; exit}')
	[ -n "$GW" ] || die "no docker0 address: is the Docker Engine running?"
	REDIS_PORT=16379
	redis-server --bind "$GW" --port "$REDIS_PORT" --save '' --appendonly no --protected-mode no >"$TMP/redis.log" 2>&1 &
	REDIS_PID=$!
	for _ in $(seq 50); do redis-cli -h "$GW" -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
	redis-cli -h "$GW" -p "$REDIS_PORT" ping >/dev/null 2>&1 || { cat "$TMP/redis.log" >&2; die "redis-server on $GW:$REDIS_PORT did not start"; }
	psql_admin -c 'DROP DATABASE IF EXISTS bench_up' -c 'CREATE DATABASE bench_up' ||
		die "creating database bench_up: run scripts/ci-postgres.sh first (it sets up role redash_test)"
	printf 'db-endpoint: "%s:5432"\ndb-name: bench_up\nredis-endpoint: "%s:%s"\n' "$GW" "$GW" "$REDIS_PORT" >>"$TMP/agent.yaml"
	# An operator's external database credentials, where provider local
	# keeps them; the agent generates the other secrets beside them.
	printf '{"comment": "bench", "secrets": {"db-user": {"value": "redash_test", "version_id": "bench-db-user", "created": "2026-11-30T00:00:00Z"}, "db-password": {"value": "%s", "version_id": "bench-db-password", "created": "2026-11-30T00:00:00Z"}}}\n' \
		"${PGTEST_PASSWORD:-redash_test_pw}" >"$TMP/state/local-secrets.json"
	chmod 600 "$TMP/state/local-secrets.json"
fi
AGENT_FLAGS="--config $TMP/agent.yaml --provider local --state-dir $TMP/state --log-format json"
# shellcheck disable=SC2086 # flags split on purpose
"$TMP/redash-agent" render --dir "$TMP/render" $AGENT_FLAGS 2>"$TMP/render.log" ||
	{ cat "$TMP/render.log" >&2; die "redash-agent render failed"; }
for p in bench benchfloor; do
	mkdir -p "$TMP/$p"
	cp "$TMP/render/env" "$TMP/$p/env"
	# Only the names the project fixes (network and volume) change.
	sed "s/benchagent_/${p}_/g; s/project: benchagent/project: $p/" "$TMP/render/docker-compose.yml" >"$TMP/$p/docker-compose.yml"
done
cp "$TMP/render/docker-compose.yml" "$TMP/compose-file.yml" # for the record
if [ "$SCENARIO" = external ]; then
	# The cluster's database exists and is migrated before any round, as
	# for an instance an Auto Scaling group adds (not timed).
	# shellcheck disable=SC2086
	"$TMP/redash-agent" migrate --dir "$TMP/render" $AGENT_FLAGS >"$TMP/migrate.log" 2>&1 ||
		{ cat "$TMP/migrate.log" >&2; die "redash-agent migrate (creating the bench database) failed"; }
fi

COMPOSE_UP="docker-compose -p bench -f $TMP/bench/docker-compose.yml up -d"
FLOOR_UP="$TMP/floor -p benchfloor -f $TMP/benchfloor/docker-compose.yml"
FLOORDEPS_UP="$TMP/floor -depends -p benchfloor -f $TMP/benchfloor/docker-compose.yml"
AGENT_UP="$TMP/redash-agent up --dir $TMP/agent $AGENT_FLAGS"
BASELINE_UP="$TMP/baseline-agent up --dir $TMP/agent $AGENT_FLAGS"

# check P: the stack of project P is fully up and serving through nginx.
check() {
	local n ip body
	n=$(docker ps -q --filter "label=com.docker.compose.project=$1" --filter status=running | wc -l)
	[ "$n" -eq "$WANT_CONTAINERS" ] || die "project $1: $n containers running, want $WANT_CONTAINERS"
	ip=$(docker ps -q --filter "label=com.docker.compose.project=$1" --filter "label=com.docker.compose.service=nginx" |
		xargs docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
	for _ in $(seq 100); do
		body=$(curl -fsS --max-time 2 "http://$ip/ping" 2>/dev/null) && [ "$body" = "PONG." ] && return 0
		sleep 0.1
	done
	die "project $1: GET http://$ip/ping through nginx did not answer PONG."
}

# restarts P SIDE: add the restarts Docker made of project P's containers
# (a crash at start, e.g. nginx started before the server it resolves) to
# $TMP/SIDE.restarts.
restarts() {
	docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs docker inspect -f '{{.RestartCount}}' |
		awk '{n += $1} END {print n + 0}' >>"$TMP/$2.restarts"
}

# ids P: the project's container IDs, to prove a no-op up recreated nothing.
ids() { docker ps -aq --no-trunc --filter "label=com.docker.compose.project=$1" | sort | tr '\n' ' '; }

# measure SIDE KIND CMD...: run CMD under GNU time; append "ms kb" to
# $TMP/SIDE.KIND. Wall time from date (ns), peak RSS from time -v.
measure() {
	local side=$1 kind=$2; shift 2
	local t0 t1 kb
	t0=$(date +%s%N)
	if ! /usr/bin/time -v -o "$TMP/time.out" timeout "$STEP_TIMEOUT" "$@" >"$TMP/out.log" 2>&1; then
		cat "$TMP/out.log" >&2
		die "$side $kind failed: $*"
	fi
	t1=$(date +%s%N)
	# BENCH_LOGS=DIR keeps every command's output (the agent's JSON log
	# shows where its time went).
	if [ -n "${BENCH_LOGS:-}" ]; then
		mkdir -p "$BENCH_LOGS"
		cp "$TMP/out.log" "$BENCH_LOGS/$side.$kind.$(($(wc -l <"$TMP/$side.$kind" 2>/dev/null || echo 0) + 1)).log"
	fi
	kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$TMP/time.out")
	echo "$(((t1 - t0) / 1000000)) $kb" >>"$TMP/$side.$kind"
}

# one SIDE PROJECT CMD: a cold up, a check, a no-op up, a check, cleanup.
one() {
	local side=$1 project=$2 cmd=$3 before
	remove_project "$project"
	rm -f "$TMP/agent/env" "$TMP/agent/docker-compose.yml" # cold: nothing rendered yet
	# shellcheck disable=SC2086 # the command lines are split on purpose
	measure "$side" cold $cmd
	check "$project"
	restarts "$project" "$side"
	before=$(ids "$project")
	# shellcheck disable=SC2086
	measure "$side" noop $cmd
	check "$project"
	[ "$(ids "$project")" = "$before" ] || die "$side: the no-op up replaced containers"
	remove_project "$project"
}

for i in $(seq "$RUNS"); do
	echo "round $i/$RUNS" >&2
	one compose bench "$COMPOSE_UP"
	one floor benchfloor "$FLOOR_UP"
	one floordeps benchfloor "$FLOORDEPS_UP"
	one agent benchagent "$AGENT_UP"
	if [ -n "${BASELINE_BIN:-}" ]; then one baseline benchagent "$BASELINE_UP"; fi
done

# median COLUMN FILE: the middle value (lower middle for an even count).
median() { cut -d' ' -f"$1" "$2" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
range() { cut -d' ' -f"$1" "$2" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

echo
echo "scenario $SCENARIO, $WANT_CONTAINERS containers; runs per side: $RUNS; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $(docker version -f 'Docker Engine {{.Server.Version}} (API {{.Server.APIVersion}})'); $(docker-compose version --short | sed 's/^/docker-compose /')"
echo
echo "| side | cold up, ms | no-op up, ms | peak RSS cold, MiB | peak RSS no-op, MiB | crash restarts after cold up (all runs) |"
echo "|---|---|---|---|---|---|"
for side in $SIDES; do
	printf '| %s | %s (%s) | %s (%s) | %s | %s | %s |\n' "$side" \
		"$(median 1 "$TMP/$side.cold")" "$(range 1 "$TMP/$side.cold")" \
		"$(median 1 "$TMP/$side.noop")" "$(range 1 "$TMP/$side.noop")" \
		"$(mib "$(median 2 "$TMP/$side.cold")")" "$(mib "$(median 2 "$TMP/$side.noop")")" \
		"$(awk '{n += $1} END {print n + 0}' "$TMP/$side.restarts")"
done
