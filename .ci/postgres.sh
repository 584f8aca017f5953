#!/usr/bin/env bash
# Start a throwaway PostgreSQL on loopback for the shared-study test and print its URL.
# Usage: export NFPSIM_TEST_POSTGRES_URL=$(.ci/postgres.sh)   (prints nothing if PostgreSQL is unavailable)
set -u
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
fi
[ -n "$bindir" ] || exit 0
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d /tmp/nfpsim-pg.XXXXXX)
run() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$data"
run "$bindir/initdb" -D "$data" -A trust -U postgres >/dev/null 2>&1 || exit 0
run "$bindir/pg_ctl" -D "$data" -l "$data/log" -w -o "-p $port -k $data -c listen_addresses=127.0.0.1" start \
  >/dev/null 2>&1 || exit 0
echo "postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
