#!/bin/bash
# Initialise PGDATA on first start, then run postgres in the foreground (PID 1, as postgres).
# Never echoes POSTGRES_PASSWORD: it goes to initdb through a 0600 file that is removed.
set -euo pipefail

# Any other command (a psql client container, a shell) runs as given: same image, no server.
if [[ $# -gt 0 && $1 != -* ]]; then exec "$@"; fi

: "${PGDATA:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
[[ $(id -u) != 0 ]] || { echo "moorage-postgres: refusing to run as root" >&2; exit 1; }

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  [[ -n "${POSTGRES_PASSWORD:-}" ]] || { echo "moorage-postgres: POSTGRES_PASSWORD is required" >&2; exit 1; }
  pwfile="$(mktemp)"
  trap 'rm -f "$pwfile"' EXIT
  printf '%s' "$POSTGRES_PASSWORD" >"$pwfile"
  echo "moorage-postgres: initialising $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
  # local (unix socket, inside the container only) = trust: health checks, pg_dump/pg_restore
  # by the runtime. Anything over TCP needs the password (SCRAM).
  initdb --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  {
    echo "host all all 0.0.0.0/0 scram-sha-256"
    echo "host all all ::/0 scram-sha-256"
  } >>"$PGDATA/pg_hba.conf"
  if [[ "$POSTGRES_DB" != postgres ]]; then
    # Single-user mode: no server listening while the database is created.
    printf 'CREATE DATABASE "%s" OWNER "%s";\n' "${POSTGRES_DB//\"/}" "${POSTGRES_USER//\"/}" \
      | postgres --single -j -D "$PGDATA" postgres >/dev/null
  fi
fi

# gVisor (runsc) implements POSIX shm in its own /dev/shm tmpfs, but Docker's 64 MiB default
# is small for parallel queries; mmap keeps dynamic shared memory in PGDATA files instead.
exec postgres -D "$PGDATA" \
  -c listen_addresses='*' \
  -c unix_socket_directories=/var/run/postgresql \
  -c dynamic_shared_memory_type="${PG_DYNAMIC_SHARED_MEMORY:-mmap}" \
  -c shared_buffers="${PG_SHARED_BUFFERS:-32MB}" \
  -c max_connections="${PG_MAX_CONNECTIONS:-50}" \
  -c password_encryption=scram-sha-256 \
  -c logging_collector=off \
  "$@"
