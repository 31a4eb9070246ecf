#!/usr/bin/env bash
# The one command that tests redash-agent, on a laptop and in CI alike.
#
# It installs and starts the real peers the tests use (all on this machine:
# nothing is pulled from a container registry), then runs every Go test.
#   - ec2-metadata-mock v1.13.0, nfpm v2.45.2 and staticcheck v0.8.2 (Go module proxy)
#   - redis-server, lintian, debootstrap, time (Debian packages)
#   - PostgreSQL 15, reachable from Docker bridge networks (scripts/ci-postgres.sh)
#   - moto_server, the aws cli, jq, docker-compose 1.29, cfn-lint: expected preinstalled
#   - a running Docker Engine (DOCKER_HOST or /var/run/docker.sock)
# Set CI=true to make a missing peer fail its tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

gobin="$(go env GOPATH)/bin"
export PATH="$PATH:$gobin"

missing_debs=()
for pair in redis-server:redis-server lintian:lintian debootstrap:debootstrap time:/usr/bin/time; do
  pkg="${pair%%:*}" cmd="${pair#*:}"
  command -v "$cmd" >/dev/null 2>&1 || missing_debs+=("$pkg")
done
if ((${#missing_debs[@]})); then
  if [[ $(id -u) == 0 ]]; then
    log "installing Debian packages: ${missing_debs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_debs[@]}" >/dev/null
  else
    log "missing Debian packages (install as root): ${missing_debs[*]}"
  fi
fi

if ! command -v ec2-metadata-mock >/dev/null; then
  log "installing ec2-metadata-mock v1.13.0"
  go install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@v1.13.0
fi
if ! command -v nfpm >/dev/null; then
  log "installing nfpm v2.45.2"
  go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
fi

if ! command -v staticcheck >/dev/null; then
  log "installing staticcheck v0.8.2"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi

log "starting PostgreSQL for the migration tests"
bash scripts/ci-postgres.sh

log "go vet"
go vet ./...

log "gofmt"
unformatted="$(gofmt -l .)"
if [[ -n $unformatted ]]; then
  printf 'not gofmt-formatted (run gofmt -w on them):\n%s\n' "$unformatted" >&2
  exit 1
fi

log "staticcheck"
staticcheck ./...

log "go test"
# Packages that use Docker name their projects uniquely, so they may run in parallel.
go test -count=1 -timeout 80m "$@" ./...
