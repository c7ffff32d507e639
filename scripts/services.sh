#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) accept
# connections. A server that does not respond is started with the command of
# its Debian package set-up, then polled for up to WAIT_S seconds.
# Prints nothing and exits 0 when both respond. Exits 1, naming the server
# and the start command, when one still does not respond after the wait.
set -euo pipefail

HOST=127.0.0.1
POSTGRES_PORT=5432
REDIS_PORT=6379
WAIT_S=30

postgres_responds() {
    if command -v pg_isready >/dev/null; then
        pg_isready --quiet --host "$HOST" --port "$POSTGRES_PORT" --timeout 2
    elif command -v psql >/dev/null; then
        psql --host "$HOST" --port "$POSTGRES_PORT" --username postgres \
            --dbname postgres --no-psqlrc --quiet --tuples-only \
            --command 'SELECT 1' >/dev/null 2>&1
    else
        echo "services.sh: neither pg_isready nor psql is installed;" \
            "install the PostgreSQL client (Debian package postgresql-client)" >&2
        exit 1
    fi
}

redis_responds() {
    if ! command -v redis-cli >/dev/null; then
        echo "services.sh: redis-cli is not installed;" \
            "install it (Debian package redis-tools)" >&2
        exit 1
    fi
    [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
}

start_postgres() {
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
}

start_redis() {
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir /var/lib/redis \
        --logfile /var/log/redis/ci.log
}

# ensure NAME ADDRESS CHECK START START_TEXT
ensure() {
    local name=$1 address=$2 check=$3 start=$4 start_text=$5
    if "$check"; then
        return 0
    fi
    echo "services.sh: $name does not respond at $address; starting it with: $start_text"
    # The start command may fail because the server is starting already, so
    # only the poll below decides whether the server is up.
    "$start" || echo "services.sh: the start command exited with code $?" >&2
    local deadline=$((SECONDS + WAIT_S))
    while ((SECONDS < deadline)); do
        if "$check"; then
            echo "services.sh: $name responds at $address"
            return 0
        fi
        sleep 1
    done
    echo "services.sh: $name still does not respond at $address after ${WAIT_S}s." >&2
    echo "services.sh: start command tried: $start_text" >&2
    exit 1
}

ensure PostgreSQL "$HOST:$POSTGRES_PORT" postgres_responds start_postgres \
    'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start'
ensure Redis "$HOST:$REDIS_PORT" redis_responds start_redis \
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
