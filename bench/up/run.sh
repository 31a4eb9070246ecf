#!/usr/bin/env bash
# bench/up/run.sh: wall time and peak memory of a cold `up` (no containers, no
# network, images present) and a no-op `up` (everything already converged) of
# the same stack (server, scheduler, three workers, nginx; bench/up/
# docker-compose.yml) on the same local fake images, for:
#
#   compose  docker-compose -p bench -f FILE up -d        (Debian's 1.29)
#   floor    bench/up/floor: the same network create, container creates and
#            starts, in parallel, through the Docker API, and nothing else
#   agent    redash-agent up (AGENT_UP below)
#
# The sides run interleaved (round i: compose, floor, agent) so the noise of
# a shared machine falls on all of them alike. Every run is checked: six
# containers running and GET /ping through nginx answers "PONG.". Each
# measured command is bounded by `timeout`. docs/bench-up.md reports a run.
#
# Usage: bench/up/run.sh [RUNS]        (RUNS per side, default 5)
# Needs: go, docker (CLI + Engine), docker-compose 1.29, GNU time
#        (/usr/bin/time; apt-get install -y time), curl.
# Side effects: builds images redash-agent-bench/redash:25.1.0 and
# redash-agent-bench/nginx:latest FROM scratch (nothing is pulled), creates and
# removes containers of projects bench, benchfloor and the agent's, and
# removes the images again on exit.
set -euo pipefail

RUNS=${1:-5}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$REPO/bench/up"
FILE="$HERE/docker-compose.yml"
REDASH_IMAGE=redash-agent-bench/redash:25.1.0
NGINX_IMAGE=redash-agent-bench/nginx:latest
TMP=$(mktemp -d /tmp/bench-up.XXXXXX)
STEP_TIMEOUT=120 # seconds, per measured command

die() { echo "bench-up: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need go "install Go 1.26"
need docker "install the docker CLI"
need docker-compose "apt-get install -y docker-compose"
need curl "apt-get install -y curl"
[ -x /usr/bin/time ] || die "/usr/bin/time not found: apt-get install -y time"

# remove_project P: every container labelled with compose project P, and its
# network. Not timed; runs before and after every measured pair.
remove_project() {
	local ids
	ids=$(docker ps -aq --filter "label=com.docker.compose.project=$1")
	[ -z "$ids" ] || docker rm -f $ids >/dev/null
	docker network rm "$1_default" >/dev/null 2>&1 || true
}

cleanup() {
	for p in bench benchfloor "${AGENT_PROJECT:-}"; do [ -z "$p" ] || remove_project "$p"; done
	docker rmi "$REDASH_IMAGE" "$NGINX_IMAGE" >/dev/null 2>&1 || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images: the fake Redash (test/fakeredash) FROM scratch, as the tests do.
mkdir -p "$TMP/ctx/tmp"
(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w -buildid=' -o "$TMP/ctx/fakeredash" ./test/fakeredash)
build_image() { # TAG CMD
	printf 'FROM scratch\nCOPY tmp /tmp\nCOPY fakeredash /fakeredash\nENTRYPOINT ["/fakeredash"]\nCMD ["%s"]\n' "$2" >"$TMP/ctx/Dockerfile"
	# The classic builder, as testenv.BuildFakeImage uses through the API.
	DOCKER_BUILDKIT=0 docker build -q -t "$1" "$TMP/ctx" >"$TMP/build.log" 2>&1 ||
		{ cat "$TMP/build.log" >&2; die "building image $1"; }
}
build_image "$REDASH_IMAGE" server
build_image "$NGINX_IMAGE" nginx

# --- the three sides. Each is one command line run in $HERE.
(cd "$REPO" && go build -o "$TMP/floor" ./bench/up/floor)
COMPOSE_UP="docker-compose -p bench -f $FILE up -d"
FLOOR_UP="$TMP/floor -p benchfloor -f $FILE"

# TODO(agent): fill in once `redash-agent up` exists (cmd/redash-agent did not
# build an `up` command when this was written). Its contract: converge the
# same services from a config file, e.g.
#   AGENT_UP="$TMP/redash-agent up --dir $TMP/agent-dir --config $TMP/agent.yaml --provider local"
# with agent.yaml naming image $REDASH_IMAGE, the nginx image $NGINX_IMAGE,
# external db/redis endpoints (the fake images never connect; the migration
# step needs a real PostgreSQL or a way to skip it) and the same workers.
# AGENT_PROJECT is the compose project it uses (DESIGN.md: redash); a run
# removes that project's containers, so do not run this beside tests that
# use it.
AGENT_UP=""
AGENT_PROJECT=""
if [ -n "$AGENT_UP" ]; then
	(cd "$REPO" && go build -o "$TMP/redash-agent" ./cmd/redash-agent) || die "building redash-agent"
fi

# check P: the stack of project P is fully up and serving through nginx.
check() {
	local n ip body
	n=$(docker ps -q --filter "label=com.docker.compose.project=$1" --filter status=running | wc -l)
	[ "$n" -eq 6 ] || die "project $1: $n containers running, want 6"
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
	local t0 t1
	t0=$(date +%s%N)
	if ! (cd "$HERE" && /usr/bin/time -v -o "$TMP/time.out" timeout "$STEP_TIMEOUT" "$@" >"$TMP/out.log" 2>&1); then
		cat "$TMP/out.log" >&2
		die "$side $kind failed: $*"
	fi
	t1=$(date +%s%N)
	local kb
	kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$TMP/time.out")
	echo "$(((t1 - t0) / 1000000)) $kb" >>"$TMP/$side.$kind"
}

# one SIDE PROJECT CMD: a cold up, a check, a no-op up, a check, cleanup.
one() {
	local side=$1 project=$2 cmd=$3 before
	remove_project "$project"
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
	if [ -n "$AGENT_UP" ]; then one agent "$AGENT_PROJECT" "$AGENT_UP"; fi
done

# median COLUMN FILE: the middle value (lower middle for an even count).
median() { cut -d' ' -f"$1" "$2" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
range() { cut -d' ' -f"$1" "$2" | sort -n | awk 'NR==1{lo=$1} {hi=$1} END {print lo "-" hi}'; }

echo
echo "runs per side: $RUNS; $(nproc) CPUs, load average $(cut -d" " -f1-3 /proc/loadavg); $(docker version -f 'Docker Engine {{.Server.Version}} (API {{.Server.APIVersion}})'); $(docker-compose version --short | sed 's/^/docker-compose /')"
echo
echo "| side | cold up median ms (range) | no-op up median ms (range) | peak RSS cold, median MiB | peak RSS no-op, median MiB |"
echo "|---|---|---|---|---|"
for side in compose floor agent; do
	[ -f "$TMP/$side.cold" ] || { echo "| $side | TODO | TODO | TODO | TODO |"; continue; }
	printf '| %s | %s (%s) | %s (%s) | %.1f | %.1f |\n' "$side" \
		"$(median 1 "$TMP/$side.cold")" "$(range 1 "$TMP/$side.cold")" \
		"$(median 1 "$TMP/$side.noop")" "$(range 1 "$TMP/$side.noop")" \
		"$(awk -v k="$(median 2 "$TMP/$side.cold")" 'BEGIN {print k / 1024}')" \
		"$(awk -v k="$(median 2 "$TMP/$side.noop")" 'BEGIN {print k / 1024}')"
done
