#!/usr/bin/env bash
# Source me: start a throwaway PostgreSQL cluster on 127.0.0.1 for the scale-out test and export
# AUTOQUANT_SWEEP_TEST_PG_URL. Installs Debian's postgresql when missing. Skips (with a message) when
# it cannot: the PostgreSQL test is then skipped with its reason.
_aqs_pg_start() {
  local bindir
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bindir" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  fi
  if [ -z "$bindir" ]; then echo "postgres: not available; the PostgreSQL test will be skipped"; return 0; fi
  local run=() dir port
  [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)  # postgres refuses to run as root
  dir=$(mktemp -d /tmp/aqs-pg.XXXXXX)
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  "${run[@]}" "$bindir/initdb" -D "$dir/data" -U aqs --auth=trust >/dev/null
  "${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off" start >/dev/null
  "${run[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U aqs aqs
  export AUTOQUANT_SWEEP_TEST_PG_URL="postgresql+psycopg://aqs@127.0.0.1:$port/aqs"
  AQS_PG_STOP=("${run[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast stop)
  trap '"${AQS_PG_STOP[@]}" >/dev/null 2>&1; rm -rf "'"$dir"'"' EXIT
  echo "postgres: $AUTOQUANT_SWEEP_TEST_PG_URL"
}
_aqs_pg_start
