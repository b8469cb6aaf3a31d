#!/bin/bash
# Write a private config (password inside, never on the command line) and run redis-server
# in the foreground as the redis user.
set -euo pipefail

# Any other command (a redis-cli client container, a shell) runs as given: same image, no server.
if [[ $# -gt 0 && $1 != -* ]]; then exec "$@"; fi

[[ $(id -u) != 0 ]] || { echo "moorage-redis: refusing to run as root" >&2; exit 1; }
[[ -n "${REDIS_PASSWORD:-}" ]] || { echo "moorage-redis: REDIS_PASSWORD is required" >&2; exit 1; }

conf=/run/moorage-redis/redis.conf
umask 077
# RDB snapshots only (no AOF): a backup is one dump.rdb and a restore is "replace it, start".
cat >"$conf" <<CONF
bind * -::*
port 6379
protected-mode no
dir /data
dbfilename dump.rdb
save 60 1 300 10
appendonly no
daemonize no
loglevel notice
logfile ""
maxmemory ${REDIS_MAXMEMORY:-0}
maxmemory-policy ${REDIS_MAXMEMORY_POLICY:-noeviction}
CONF
pw=${REDIS_PASSWORD//\\/\\\\}   # a quoted config string: escape \ then "
printf 'requirepass "%s"\n' "${pw//\"/\\\"}" >>"$conf"
exec redis-server "$conf" "$@"
