#!/bin/sh
# dmlt-postgres entrypoint: make the cluster on first start, then exec the server (PID 1, so
# the runtime's signals reach it). Extra arguments go to postgres: `postgres -c work_mem=8MB`.
set -eu

PGDATA="${PGDATA:-/var/lib/postgresql/data/pgdata}"
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
export PGDATA

log() { echo "dmlt-postgres: $*" >&2; }

# Started as root (e.g. a hostPath volume owned by root): hand PGDATA to postgres, drop to it.
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA"
  chown -R postgres:postgres "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-postgres}" != postgres ]; then
  exec "$@"  # a shell, psql, pg_isready ...
fi
[ $# -gt 0 ] && shift

mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || true

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    log "PGDATA ($PGDATA) holds no database and POSTGRES_PASSWORD is unset: set it to make one"
    exit 1
  fi
  log "initialising $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-locale --no-instructions >&2
  rm -f "$pwfile"
  # initdb allows host logins from loopback only; the Service's clients come from the Pod network.
  {
    echo "# dmlt-postgres: password (scram-sha-256) logins from anywhere"
    echo "host all all 0.0.0.0/0 scram-sha-256"
    echo "host all all ::/0 scram-sha-256"
  } >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    # A server on a private socket only, long enough to create the database.
    sockets="$(mktemp -d)"
    pg_ctl --pgdata="$PGDATA" --wait --silent \
      -o "-c listen_addresses='' -c unix_socket_directories='$sockets'" start
    psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --host="$sockets" --username="$POSTGRES_USER" \
      --dbname=postgres --set=db="$POSTGRES_DB" <<'SQL'
CREATE DATABASE :"db";
SQL
    pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
    rmdir "$sockets"
  fi
  log "initialised"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -c port=5432 "$@"
