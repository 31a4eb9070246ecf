#!/usr/bin/env bash
# bench/up/run.sh: wall time and peak memory of a cold `up` (no containers,
# network, volume or rendered files; images present) and a no-op `up`
# (everything already converged) of the same stack on the same local fake
# images, for three sides:
#
#   compose  docker-compose -p bench -f FILE up -d        (Debian's 1.29)
#   floor    bench/up/floor: the same network create, container creates and
#            starts, in parallel, through the Docker API, and nothing else
#   agent    redash-agent up --config bench/up/agent.yaml --provider local
#
# FILE is the docker-compose.yml that `redash-agent render` writes for
# bench/up/agent.yaml, with the project name swapped, so all three converge
# the same eight containers (server, scheduler, three workers, nginx, and the
# bundled postgres and redis of provider local).
#
# The sides run interleaved (round i: compose, floor, agent) so the noise of
# a shared machine falls on all of them alike. Every run is checked: eight
# containers running and GET /ping through nginx answers "PONG."; a no-op up
# must keep every container ID. Each measured command is bounded by `timeout`.
# docs/bench-up.md reports a run.
#
# Usage: [AGENT_BIN=path] bench/up/run.sh [RUNS]    (RUNS per side, default 5)
# Needs: go, docker (CLI + Engine), docker-compose 1.29, redis-server, GNU time
#        (/usr/bin/time; apt-get install -y time), curl; host ports 10080 and
#        15000 free (agent.yaml publishes them).
# Side effects: builds images redash-agent-bench/{redash:25.1.0,nginx:latest,
# postgres:15,redis:7} FROM scratch (nothing is pulled), creates and removes
# containers, networks and volumes of projects bench, benchfloor, benchagent,
# and removes the images again on exit.
set -euo pipefail

RUNS=${1:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/bench/up"
IMAGES=(redash-agent-bench/redash:25.1.0 redash-agent-bench/nginx:latest
	redash-agent-bench/postgres:15 redash-agent-bench/redis:7)
WANT_CONTAINERS=8
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
}

cleanup() {
	for p in bench benchfloor benchagent; do remove_project "$p"; done
	docker rmi "${IMAGES[@]}" >/dev/null 2>&1 || true
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
mkdir -p "$TMP/state" "$TMP/agent" "$TMP/render"
AGENT_FLAGS="--config $HERE/agent.yaml --provider local --state-dir $TMP/state --log-format json"
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

COMPOSE_UP="docker-compose -p bench -f $TMP/bench/docker-compose.yml up -d"
FLOOR_UP="$TMP/floor -p benchfloor -f $TMP/benchfloor/docker-compose.yml"
AGENT_UP="$TMP/redash-agent up --dir $TMP/agent $AGENT_FLAGS"

# check P: the stack of project P is fully up and serving through nginx.
check() {
	local n ip body
	n=$(docker ps -q --filter "label=com.docker.compose.project=$1" --filter status=running | wc -l)
	[ "$n" -eq "$WANT_CONTAINERS" ] || die "project $1: $n containers running, want $WANT_CONTAINERS"
	ip=$(docker ps -q --filter "label=com.docker.compose.project=$1" --filter "label=com.docker.compose.service=nginx" |
		xargs docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')
	for _ in $(seq 50); do
		body=$(curl -fsS --max-time 2 "http://$ip/ping" 2>/dev/null) && [ "$body" = "PONG." ] && return 0
		sleep 0.1
	done
	die "project $1: GET http://$ip/ping through nginx did not answer PONG."
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
	one agent benchagent "$AGENT_UP"
done

# median COLUMN FILE: the middle value (lower middle for an even count).
median() { cut -d' ' -f"$1" "$2" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
range() { cut -d' ' -f"$1" "$2" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

echo
echo "runs per side: $RUNS; $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg); $(docker version -f 'Docker Engine {{.Server.Version}} (API {{.Server.APIVersion}})'); $(docker-compose version --short | sed 's/^/docker-compose /')"
echo
echo "| side | cold up, ms | no-op up, ms | peak RSS cold, MiB | peak RSS no-op, MiB |"
echo "|---|---|---|---|---|"
for side in compose floor agent; do
	printf '| %s | %s (%s) | %s (%s) | %s | %s |\n' "$side" \
		"$(median 1 "$TMP/$side.cold")" "$(range 1 "$TMP/$side.cold")" \
		"$(median 1 "$TMP/$side.noop")" "$(range 1 "$TMP/$side.noop")" \
		"$(mib "$(median 2 "$TMP/$side.cold")")" "$(mib "$(median 2 "$TMP/$side.noop")")"
done
