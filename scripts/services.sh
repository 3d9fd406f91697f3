#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis that the tests use are up: start whichever is down,
# then wait until both answer. A no-op when they already do. PG_CLUSTER, PG_PORT and REDIS_PORT
# point it at another cluster or port.
set -euo pipefail

PG_HOST=127.0.0.1 PG_PORT=${PG_PORT:-5432} PG_CLUSTER=${PG_CLUSTER:-main}
REDIS_HOST=127.0.0.1 REDIS_PORT=${REDIS_PORT:-6379}
WAIT_S=${WAIT_S:-30}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }
redis_up() { [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

start_postgres() {
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    # Running but not yet accepting connections: only wait.
    pg_ctlcluster "$version" "$PG_CLUSTER" status >/dev/null 2>&1 && return 0
    echo "services: starting PostgreSQL $version/$PG_CLUSTER"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$PG_CLUSTER" start
}

start_redis() {
    echo "services: starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
        --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

wait_for() {
    local name=$1 check=$2
    for _ in $(seq "$WAIT_S"); do
        "$check" && return 0
        sleep 1
    done
    echo "services: $name does not answer after ${WAIT_S}s" >&2
    return 1
}

for tool in pg_isready pg_ctlcluster redis-cli redis-server; do
    command -v "$tool" >/dev/null || { echo "services: $tool not found; install PostgreSQL and Redis" >&2; exit 1; }
done

pg_up || start_postgres
redis_up || start_redis
wait_for "PostgreSQL on $PG_HOST:$PG_PORT" pg_up
wait_for "Redis on $REDIS_HOST:$REDIS_PORT" redis_up
