#!/usr/bin/env bash
# `just cluster`: three nodes on this machine, sharing a throwaway
# PostgreSQL (or, without PostgreSQL's server binaries, one SQLite file),
# with a fresh cluster secret, credentials key and admin token printed.
# Ctrl-C stops the nodes and the database and deletes everything it made.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d /tmp/trekker-cluster.XXXXXX)
pids=()
pg_ctl=""
cleanup() {
    trap - INT TERM EXIT
    echo
    echo "stopping the nodes"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "$pg_ctl" ]; then
        echo "stopping PostgreSQL"
        $pg_ctl stop -D "$work/pg" -m fast >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit 0
}
trap cleanup INT TERM EXIT

random() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

bin_dir=""
for dir in $(command -v initdb >/dev/null 2>&1 && dirname "$(command -v initdb)") /usr/lib/postgresql/*/bin; do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then bin_dir=$dir; break; fi
done

if [ -n "$bin_dir" ]; then
    port=$(free_port)
    as_pg=()
    if [ "$(id -u)" = 0 ]; then
        # PostgreSQL refuses to run as root.
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
        chown postgres "$work"
        as_pg=(runuser -u postgres --)
    fi
    "${as_pg[@]}" "$bin_dir/initdb" -D "$work/pg" -U trekker --auth=trust >/dev/null
    "${as_pg[@]}" "$bin_dir/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
        -o "-p $port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
    pg_ctl="${as_pg[*]} $bin_dir/pg_ctl"
    database_url="postgres://trekker@127.0.0.1:$port/postgres"
    echo "throwaway PostgreSQL on port $port"
else
    database_url="sqlite://$work/trekker.db"
    echo "no PostgreSQL server binaries: the three nodes share one SQLite file ($work/trekker.db)"
fi

cargo build -q -p trekker-node
export DATABASE_URL=$database_url
export CLUSTER_SECRET; CLUSTER_SECRET=$(random 48)
export CREDENTIALS_KEY; CREDENTIALS_KEY=$(random 32)
export ADMIN_TOKEN; ADMIN_TOKEN=$(random 24 | tr '/+' '_-')
export MAX_BOT_COUNT=${MAX_BOT_COUNT:-10}

for n in 1 2 3; do
    port=$(free_port)
    SERVER_NAME="SERVER$n" BIND_ADDR="127.0.0.1:$port" BASE_URL="http://127.0.0.1:$port" \
        target/debug/trekker-node >"$work/node$n.log" 2>&1 &
    pids+=("$!")
    echo "SERVER$n  http://127.0.0.1:$port/  (console: http://127.0.0.1:$port/admin, log: $work/node$n.log)"
    # The first node migrates the database; the others start after it.
    if [ "$n" = 1 ]; then
        for _ in $(seq 1 100); do
            curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
            sleep 0.1
        done
    fi
done
echo
echo "ADMIN_TOKEN=$ADMIN_TOKEN"
echo "CLUSTER_SECRET=$CLUSTER_SECRET"
echo "DATABASE_URL=$database_url"
echo "Ctrl-C stops everything."
wait -n "${pids[@]}" || true
echo "a node stopped; see its log above"
