#!/usr/bin/env bash
# bench/render/run.sh: whole-process time of `redash-agent render` against
# the seed's way of producing the same env file (four `aws secretsmanager
# get-secret-value | jq -r .SecretString` calls, then a heredoc), both
# against the same local moto_server. docs/bench-render.md reports a run.
#
# Usage: bench/render/run.sh [RUNS]     (RUNS per side, default 10)
# Needs: go, moto_server, aws (cli v1), jq, curl, python3,
#        ec2-metadata-mock (go install
#        github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0).
# Everything listens on 127.0.0.1 only and is killed on exit.
set -euo pipefail

RUNS=${1:-10}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
REGION=us-east-1
TMP=$(mktemp -d /tmp/bench-render.XXXXXX)
PIDS=()

cleanup() {
	# Only the servers this script started, by PID.
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo "bench-render: $*" >&2; exit 1; }

need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
AEMM=$(command -v ec2-metadata-mock || echo "$HOME/go/bin/ec2-metadata-mock")
[ -x "$AEMM" ] || die "ec2-metadata-mock not found: go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0"
need moto_server "pip install 'moto[server]'"
need aws "apt-get install awscli (v1 is what the seed used)"
need jq "apt-get install jq"
need curl "apt-get install curl"
need python3 "apt-get install python3"
need go "install Go 1.26"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_for NAME PID CMD...: poll CMD every 0.1s for at most 30s while PID lives.
wait_for() {
	local name=$1 pid=$2; shift 2
	for _ in $(seq 300); do
		kill -0 "$pid" 2>/dev/null || die "$name exited early; log: $(tail -c 2000 "$TMP/$name.log")"
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	die "$name did not answer within 30s; log: $(tail -c 2000 "$TMP/$name.log")"
}

now_ns() { date +%s%N; }

median_ms() { # reads ns values, one per line
	sort -n | awk '{a[NR]=$1} END {m = (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1e6}'
}

minmax_ms() {
	sort -n | awk 'NR==1{min=$1} {max=$1} END {printf "%.1f-%.1f", min/1e6, max/1e6}'
}

# --- build first: fail fast before starting servers --------------------------
echo "building redash-agent..." >&2
(cd "$REPO" && timeout 600 go build -o "$TMP/redash-agent" ./cmd/redash-agent) || die "go build ./cmd/redash-agent failed"

# --- moto_server (Secrets Manager) -------------------------------------------
MOTO_PORT=$(free_port)
moto_server -H 127.0.0.1 -p "$MOTO_PORT" >"$TMP/moto.log" 2>&1 &
PIDS+=($!)
MOTO=http://127.0.0.1:$MOTO_PORT
wait_for moto "${PIDS[-1]}" curl -fsS "$MOTO/moto-api/"

# --- ec2-metadata-mock (IMDSv2 only) -----------------------------------------
# The mock has two tag slots ("Name" and "Test"); the third tag reuses the
# kernel-id slot, re-pointed under tags/instance/, which the mock then also
# lists in the tags/instance/ directory listing. Credentials need a future
# Expiration: the mock's default expired in 2020 and the SDK refuses it.
IMDS_PORT=$(free_port)
EXP=$(date -u -d '+6 hours' +%Y-%m-%dT%H:%M:%SZ)
NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T=/latest/meta-data/tags/instance
cat >"$TMP/aemm.json" <<EOF
{"metadata": {
  "paths": {
    "tags-instance-name": "$T/redash:version",
    "tags-instance-test": "$T/redash:db-endpoint",
    "kernel-id": "$T/redash:redis-endpoint",
    "iam-security-credentials": "/latest/meta-data/iam/security-credentials/redash-bench"
  },
  "values": {
    "tags-instance-name": "10.1.0.b50633",
    "tags-instance-test": "db.example.internal:5432",
    "kernel-id": "cache.example.internal:6379",
    "placement-region": "$REGION",
    "placement-availability-zone": "${REGION}a",
    "iam-security-credentials-role": "redash-bench",
    "iam-info": {"Code": "Success", "LastUpdated": "$NOW",
      "InstanceProfileArn": "arn:aws:iam::123456789012:instance-profile/redash-bench",
      "InstanceProfileId": "AIPABENCH0000000001"},
    "iam-security-credentials": {"Code": "Success", "LastUpdated": "$NOW", "Type": "AWS-HMAC",
      "AccessKeyId": "AKIABENCH0000000001", "SecretAccessKey": "bench-secret-access-key",
      "Token": "bench-session-token", "Expiration": "$EXP"}
  }
}}
EOF
# A private HOME keeps ~/aemm-config.json (and ~/.aws) out of the run.
(cd "$TMP" && HOME=$TMP exec "$AEMM" -c "$TMP/aemm.json" -I -n 127.0.0.1 -p "$IMDS_PORT") >"$TMP/imds.log" 2>&1 &
PIDS+=($!)
IMDS=http://127.0.0.1:$IMDS_PORT
wait_for imds "${PIDS[-1]}" curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token"
TOKEN=$(curl -fsS -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$IMDS/latest/api/token")
TAGS=$(curl -fsS -H "X-aws-ec2-metadata-token: $TOKEN" "$IMDS$T" | sort | tr '\n' ' ')
[ "$TAGS" = "redash:db-endpoint redash:redis-endpoint redash:version " ] || die "mock serves tags [$TAGS], want the three redash:* tags"

# --- the four seed secrets ---------------------------------------------------
# Static credentials for the aws cli; moto accepts any. A password with the
# characters a naive env writer breaks on, so both outputs are checked for it.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=$REGION
export HOME=$TMP AWS_CONFIG_FILE=$TMP/none AWS_SHARED_CREDENTIALS_FILE=$TMP/none
AWS=(aws --endpoint-url "$MOTO" --region "$REGION")
declare -A SECRET=(
	[Redash/RDS/User]=redash
	[Redash/RDS/Password]='bench-p@ss w0rd'
	[Redash/CookieSecret]=bench-cookie-secret-0123456789abcdef
	[Redash/SecretKey]=bench-secret-key-fedcba9876543210
)
for id in "${!SECRET[@]}"; do
	"${AWS[@]}" secretsmanager create-secret --name "$id" --secret-string "${SECRET[$id]}" >/dev/null
done

# --- the two contenders ------------------------------------------------------
# seed: what the CloudFormation UserData did, minus pip install and compose.
seed_render() {
	local out=$1 user password cookie key
	user=$("${AWS[@]}" secretsmanager get-secret-value --secret-id Redash/RDS/User | jq -r .SecretString)
	password=$("${AWS[@]}" secretsmanager get-secret-value --secret-id Redash/RDS/Password | jq -r .SecretString)
	cookie=$("${AWS[@]}" secretsmanager get-secret-value --secret-id Redash/CookieSecret | jq -r .SecretString)
	key=$("${AWS[@]}" secretsmanager get-secret-value --secret-id Redash/SecretKey | jq -r .SecretString)
	mkdir -p "$out"
	cat >"$out/env" <<EOF
PYTHONUNBUFFERED=0
REDASH_LOG_LEVEL=INFO
REDASH_REDIS_URL=redis://cache.example.internal:6379/0
REDASH_DATABASE_URL=postgresql://$user:$password@db.example.internal:5432/$user
REDASH_COOKIE_SECRET=$cookie
REDASH_SECRET_KEY=$key
EOF
	chmod 600 "$out/env"
}

# agent: nothing but the three endpoint variables; credentials come from the
# mock's instance profile, the tags from the mock's tags/instance.
agent_render() {
	env -i PATH="$PATH" HOME="$TMP" \
		AWS_EC2_METADATA_SERVICE_ENDPOINT="$IMDS" \
		AWS_ENDPOINT_URL_SECRETS_MANAGER="$MOTO" \
		AWS_REGION="$REGION" \
		AWS_CONFIG_FILE="$TMP/none" AWS_SHARED_CREDENTIALS_FILE="$TMP/none" \
		timeout 60 "$TMP/redash-agent" render --dir "$1" --state-dir "$TMP/state" >"$TMP/agent.out" 2>"$TMP/agent.err" ||
		die "redash-agent render failed: $(cat "$TMP/agent.err")"
}

# check DIR NAME: the env file holds every secret (the password as written
# or percent-encoded, the two are different dialects) and is 0600.
check() {
	local f=$1/env
	[ "$(stat -c %a "$f")" = 600 ] || die "$2: $f is not 0600"
	grep -q bench-cookie-secret-0123456789abcdef "$f" || die "$2: cookie secret missing from $f"
	grep -q bench-secret-key-fedcba9876543210 "$f" || die "$2: secret key missing from $f"
	grep -Eq 'bench-p(@|%40)ss( |%20)w0rd' "$f" || die "$2: DB password missing from $f"
}

time_runs() { # FN NAME: one untimed warm-up, then RUNS timed runs into $TMP/NAME.ns
	local fn=$1 name=$2 i t0 t1
	rm -rf "$TMP/out-$name"
	"$fn" "$TMP/out-$name"
	[ "${CHECK:-1}" = 0 ] || check "$TMP/out-$name" "$name"
	: >"$TMP/$name.ns"
	for i in $(seq "$RUNS"); do
		rm -rf "$TMP/out-$name"
		t0=$(now_ns)
		"$fn" "$TMP/out-$name"
		t1=$(now_ns)
		echo $((t1 - t0)) >>"$TMP/$name.ns"
	done
	[ "${CHECK:-1}" = 0 ] || check "$TMP/out-$name" "$name"
}

# The floor: starting the binary at all, no network.
agent_version() { "$TMP/redash-agent" version >/dev/null; mkdir -p "$1"; }

echo "timing $RUNS runs each (after one warm-up)..." >&2
time_runs seed_render seed
time_runs agent_render agent
CHECK=0 time_runs agent_version version

SEED_MS=$(median_ms <"$TMP/seed.ns")
AGENT_MS=$(median_ms <"$TMP/agent.ns")
printf '%-34s %10s %14s\n' "contender" "median ms" "range ms"
printf '%-34s %10s %14s\n' "seed (4x aws cli + jq, sequential)" "$SEED_MS" "$(minmax_ms <"$TMP/seed.ns")"
printf '%-34s %10s %14s\n' "redash-agent render" "$AGENT_MS" "$(minmax_ms <"$TMP/agent.ns")"
printf '%-34s %10s %14s\n' "redash-agent version (start only)" "$(median_ms <"$TMP/version.ns")" "$(minmax_ms <"$TMP/version.ns")"
awk -v s="$SEED_MS" -v a="$AGENT_MS" 'BEGIN {printf "speedup: %.1fx\n", s/a}'
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(aws --version 2>&1 | cut -d' ' -f1), $(go version | cut -d' ' -f3)"
