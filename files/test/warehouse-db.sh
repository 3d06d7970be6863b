#!/usr/bin/env bash
# A throwaway PostgreSQL for the code locations' own tests: a cluster in a temporary
# folder, on 127.0.0.1 only, owned by the postgres user.
#   warehouse-db.sh run CMD...   start it, run CMD with DAGSTER_TEST_WAREHOUSE_URL set, stop it
#   warehouse-db.sh install      only install PostgreSQL's binaries (if missing)
# It stops on every exit of CMD (success, failure, interrupt); a cluster left by a killed
# run is stopped and removed at the next start.
set -euo pipefail
PORT=${DAGSTER_TEST_WAREHOUSE_PORT:-55432}
DIR=/var/tmp/dagster-test-warehouse

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # Only the binaries: policy-rc.d keeps the package from starting a cluster of its own.
  guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    guard=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > $guard && chmod +x $guard
    trap 'rm -f $guard' EXIT
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  [ -z "$guard" ] || rm -f "$guard"
  trap - EXIT
fi
[ "${1:-}" != install ] || exit 0
BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
as_pg() { runuser -u postgres -- "$@"; }

stop() {
  if [ -f "$DIR/data/postmaster.pid" ]; then as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null || true; fi
  rm -rf "$DIR"
}

[ "${1:-}" = run ] || { echo "usage: $0 run CMD..." >&2; exit 2; }
shift
stop
mkdir -p "$DIR" && echo postgres > "$DIR/pwfile" && chown -R postgres: "$DIR" && chmod 600 "$DIR/pwfile"
as_pg "$BIN/initdb" -D "$DIR/data" -A scram-sha-256 --pwfile="$DIR/pwfile" -U postgres >/dev/null
trap stop EXIT
as_pg "$BIN/pg_ctl" -D "$DIR/data" -w -l "$DIR/server.log" \
  -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$DIR" start >/dev/null
PGPASSWORD=postgres "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -q -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE warehouse LOGIN PASSWORD 'warehouse'" -c "CREATE DATABASE warehouse OWNER warehouse"
export DAGSTER_TEST_WAREHOUSE_URL="postgresql://warehouse:warehouse@127.0.0.1:$PORT/warehouse"
"$@"
