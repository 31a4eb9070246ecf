#!/bin/sh
# ci-postgres.sh: make the host's PostgreSQL 15 reachable from the host and
# from containers on Docker bridge networks, with a superuser role for tests.
# Idempotent: .ci/run calls it on every run, developers may call it any time.
#
# Side effects: writes /etc/postgresql/15/main/conf.d/redash-agent-ci.conf,
# adds two lines to pg_hba.conf (once), (re)starts the cluster, creates or
# updates the role redash_test. Test-only: never run this on a real host.
#
# Env: PGTEST_PASSWORD (default redash_test_pw) must match what
# internal/testenv/postgres.go uses.
set -eu

VERSION=15
CLUSTER=main
ETC=/etc/postgresql/$VERSION/$CLUSTER
ROLE=redash_test
PASSWORD=${PGTEST_PASSWORD:-redash_test_pw}

# The default bridge's gateway is where containers (also on user-defined
# bridges, whose traffic to a host address is local delivery) reach the host.
# Docker 20.10 may leave IPAM.Config.Gateway empty, so fall back to docker0.
gw=$(docker network inspect bridge --format '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)
if [ -z "$gw" ]; then
	gw=$(ip -4 -o addr show docker0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
fi
if [ -z "$gw" ]; then
	echo "ci-postgres: cannot find the docker0 gateway address: is the Docker Engine running?" >&2
	exit 1
fi

conf=$ETC/conf.d/redash-agent-ci.conf
want="# written by scripts/ci-postgres.sh (tests only)
listen_addresses = 'localhost,$gw'
password_encryption = scram-sha-256
# five agents, their one-off containers and the test's own sessions at once
max_connections = 200"
restart=no
reload=no
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
	printf '%s\n' "$want" >"$conf"
	restart=yes
fi

hba=$ETC/pg_hba.conf
# Containers come from Docker's address pools: by default 172.17-31.0.0/16
# (172.16.0.0/12) and then 192.168.0.0/16 in /20s; daemon.json may add its
# own default-address-pools. samehost: the host itself dialling the gateway
# address, which Docker's MASQUERADE rule (-s 172.17.0.0/16 ! -o docker0)
# rewrites to the host's own eth0 address.
pools="172.16.0.0/12 192.168.0.0/16"
if [ -f /etc/docker/daemon.json ] && command -v jq >/dev/null; then
	pools="$pools $(jq -r '."default-address-pools"[]?.base' /etc/docker/daemon.json 2>/dev/null | tr '\n' ' ')"
fi
lines="host    all    all    127.0.0.1/32     scram-sha-256
host    all    all    samehost         scram-sha-256"
for p in $pools; do
	lines="$lines
host    all    all    $p    scram-sha-256"
done
while IFS= read -r line; do
	if ! grep -qxF "$line" "$hba"; then
		echo "$line" >>"$hba"
		reload=yes # pg_hba.conf is reread on reload, no restart needed
	fi
done <<EOF
$lines
EOF

if pg_lsclusters -h | awk -v v=$VERSION -v c=$CLUSTER '$1==v && $2==c {print $4}' | grep -q online; then
	# listen_addresses and max_connections need a restart; pg_hba.conf
	# only a reload, which keeps other users' sessions alive.
	if [ "$restart" = yes ]; then
		pg_ctlcluster $VERSION $CLUSTER restart
	elif [ "$reload" = yes ]; then
		pg_ctlcluster $VERSION $CLUSTER reload
	fi
else
	pg_ctlcluster $VERSION $CLUSTER start
fi

# Wait (bounded) until the server accepts connections on the gateway address.
i=0
until pg_isready -q -h "$gw" -p 5432; do
	i=$((i + 1))
	if [ $i -ge 30 ]; then
		echo "ci-postgres: PostgreSQL is not accepting connections on $gw:5432 after 30s; see /var/log/postgresql/postgresql-$VERSION-$CLUSTER.log" >&2
		exit 1
	fi
	sleep 1
done

# The password reaches psql through the environment (\getenv), not argv.
export CI_POSTGRES_PW="$PASSWORD"
runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -v role="$ROLE" <<'SQL'
\getenv pw CI_POSTGRES_PW
SELECT format('CREATE ROLE %I LOGIN SUPERUSER', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN SUPERUSER PASSWORD %L', :'role', :'pw') \gexec
SQL

echo "ci-postgres: PostgreSQL $VERSION ready on localhost and $gw:5432, role $ROLE"
