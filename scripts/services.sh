#!/usr/bin/env bash
# Start (or stop) the Redis and PostgreSQL this project needs, on 127.0.0.1, with
# their data under .data/<profile>/ (ignored by git). Installs redis-server and, when
# /usr/lib/postgresql/15/bin is missing, postgresql-15 from Debian's packages (and, for the
# test profile, promtool, chromium and chromium-driver).
#
# A Redis already answering on the port is used only if it is this checkout's own (its pidfile
# under .data/<profile>/redis/) or keeps batches safe (appendonly yes, noeviction); `down` stops
# only this checkout's servers, never whatever else answers on the port.
#
#   scripts/services.sh up dev     # ports 5432 and 6379 (make run)
#   scripts/services.sh up test    # ports 55432 and 56379 (make test)
#   scripts/services.sh down dev|test
set -euo pipefail

action=${1:?usage: services.sh up|down dev|test}
profile=${2:-dev}
root=$(cd "$(dirname "$0")/.." && pwd)
data="${DATA_DIR:-$root/.data/$profile}"
if [ "$profile" = test ]; then pg_port=${TEST_PG_PORT:-55432}; redis_port=${TEST_REDIS_PORT:-56379}
else pg_port=${PG_PORT:-5432}; redis_port=${REDIS_PORT:-6379}; fi
pgbin=${PGBIN:-/usr/lib/postgresql/15/bin}
db=selftune

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

redis_up() {
  if ! command -v redis-server >/dev/null; then
    echo "services: installing redis-server from Debian's packages"
    apt-get update -q && apt-get install -y -q redis-server >/dev/null
  fi
  if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then redis_check_foreign; return; fi
  mkdir -p "$data/redis"
  # Append-only persistence and noeviction: an evicted or unsaved RQ key is a lost batch.
  # rdbcompression no: queued batches are lz4 already, and LZF over them only made every
  # AOF rewrite slower (1.5 s -> 0.3 s for 150 MB of queued batches, bench/README.md).
  # auto-aof-rewrite-min-size 1gb: no rewrite (a fork, and a copy of the whole backlog
  # competing for the CPU) while a burst's backlog builds up; at 64mb those rewrites
  # doubled the api's p99 latency (bench/README.md, "The api's tail at half rate").
  # maxmemory: the api reads it to know its headroom (REDIS_MEMORY_HIGH_PCT): past 80 % of it,
  # pushes go to the api's spool instead of Redis, so a backlog never makes Redis refuse writes.
  redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$data/redis" --daemonize yes \
    --pidfile "$data/redis/redis.pid" --logfile "$data/redis/redis.log" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction --save "" --rdbcompression no \
    --auto-aof-rewrite-min-size 1gb --maxmemory "${REDIS_MAXMEMORY:-2gb}"
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "services: redis did not start; see $data/redis/redis.log" >&2; exit 1
}

# The pid of this checkout's Redis (from its pidfile) if that process still runs, else nothing.
redis_own_pid() {
  local pid
  pid=$(cat "$data/redis/redis.pid" 2>/dev/null) || return 0
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && [ "$(readlink "/proc/$pid/cwd")" = "$(cd "$data/redis" && pwd -P)" ] \
    && echo "$pid"
  return 0
}

# Is the Redis answering on the port this checkout's own (the process its pidfile names)?
redis_on_port_is_ours() {
  local pid info
  pid=$(redis_own_pid)
  [ -n "$pid" ] || return 1
  info=$(redis-cli -p "$redis_port" info server 2>/dev/null | tr -d '\r') || return 1
  [[ $'\n'$info$'\n' == *$'\n'"process_id:$pid"$'\n'* ]]
}

# Something else answers on the port: use it only if it cannot lose or evict a queued batch.
redis_check_foreign() {
  redis_on_port_is_ours && return
  local appendonly policy
  appendonly=$(redis-cli -p "$redis_port" config get appendonly 2>/dev/null | sed -n 2p) || true
  policy=$(redis-cli -p "$redis_port" config get maxmemory-policy 2>/dev/null | sed -n 2p) || true
  if [ "$appendonly" != yes ] || [ "$policy" != noeviction ]; then
    echo "services: a Redis that is not this checkout's answers on 127.0.0.1:$redis_port with" \
      "appendonly=${appendonly:-unknown} and maxmemory-policy=${policy:-unknown}; queued batches need" \
      "appendonly=yes and noeviction. Stop it, or pick another port (REDIS_PORT, TEST_REDIS_PORT)." >&2
    exit 1
  fi
  echo "services: using the Redis already on 127.0.0.1:$redis_port (append-only, noeviction; not this" \
    "checkout's, so 'down' leaves it running)"
}

redis_down() {
  local pid
  pid=$(redis_own_pid)
  if [ -z "$pid" ]; then
    if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
      echo "services: the Redis on 127.0.0.1:$redis_port is not this checkout's (no live pidfile in $data/redis); left running"
    fi
    return
  fi
  if redis_on_port_is_ours; then redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  else kill -TERM "$pid" 2>/dev/null || true; fi
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "services: redis (pid $pid) did not stop within 10 s" >&2
}

# The test tier's tools: promtool (alert rule tests), haproxy (the load balancer example) and a headless chromium with its driver (the ops page).
test_tools_up() {
  local missing=()
  command -v promtool >/dev/null || missing+=(prometheus)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)  # tests/faults/test_haproxy.py
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  [ ${#missing[@]} -eq 0 ] && return
  echo "services: installing ${missing[*]} from Debian's packages (test tools)"
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# Debian's postgresql-15, as redis-server above, without the "main" cluster its package would
# create and start on port 5432 (make run's own cluster listens there).
postgres_install() {
  echo "services: installing postgresql-15 from Debian's packages"
  mkdir -p /etc/postgresql-common/createcluster.d
  [ -e /etc/postgresql-common/createcluster.d/selftune-ingest.conf ] \
    || echo "create_main_cluster = false  # selftune ingest runs its own clusters under .data/" \
      > /etc/postgresql-common/createcluster.d/selftune-ingest.conf
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >/dev/null
}

postgres_up() {
  if [ ! -x "$pgbin/initdb" ] && [ -z "${PGBIN:-}" ]; then postgres_install; fi
  [ -x "$pgbin/initdb" ] || { echo "services: PostgreSQL not found in $pgbin (set PGBIN)" >&2; exit 1; }
  mkdir -p "$data"
  if [ ! -f "$data/postgres/PG_VERSION" ]; then
    mkdir -p "$data/postgres"
    [ "$(id -u)" = 0 ] && chown postgres: "$data/postgres"
    chmod 700 "$data/postgres"
    as_postgres "$pgbin/initdb" -D "$data/postgres" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  fi
  if ! as_postgres "$pgbin/pg_ctl" -D "$data/postgres" status >/dev/null 2>&1; then
    as_postgres "$pgbin/pg_ctl" -D "$data/postgres" -w -t 60 -l "$data/postgres/server.log" \
      -o "-c listen_addresses=127.0.0.1 -p $pg_port -k /tmp -c max_connections=200" start >/dev/null
  fi
  psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname='$db'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE ROLE $db LOGIN CREATEDB"
  psql -h 127.0.0.1 -p "$pg_port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$pg_port" -U postgres -qc "CREATE DATABASE $db OWNER $db"
}

case "$action" in
  up)
    redis_up
    postgres_up
    if [ "$profile" = test ]; then test_tools_up; fi
    echo "services ($profile): redis on 127.0.0.1:$redis_port, postgres on 127.0.0.1:$pg_port (data in $data)"
    ;;
  down)
    redis_down
    if [ -f "$data/postgres/PG_VERSION" ]; then
      as_postgres "$pgbin/pg_ctl" -D "$data/postgres" -m fast stop >/dev/null 2>&1 || true
    fi
    ;;
  *) echo "usage: services.sh up|down dev|test" >&2; exit 2 ;;
esac
