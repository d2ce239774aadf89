#!/usr/bin/env bash
# Cluster mode throughput: how fast 1, 2 and 4 site workers drain a backlog of
# reports from a three-node NATS cluster (JetStream, MQTT listeners, the shipped
# partition mapping) into history, each report acknowledged only after its window
# is committed and its summary is in the summary stream. Prints a table.
#
#   bash collector/bench/cluster.sh              # N=60000 reports, 500 sites
#   N=5000 WORKERS="1 2" bash collector/bench/cluster.sh
#   KEEP=1 ...  keeps the work directory (configs, logs, history) for a look
#   PG=1 ...    history in PostgreSQL (a server of its own, fsync on, a new
#               database per row) instead of one SQLite file shared by the workers
#
# Each row: a fresh cluster and a fresh history; one worker starts and stops so
# the 16 durable partition consumers exist (the listener's QoS 1 stream keeps a
# message only while a consumer wants it); the fleet simulator publishes N reports
# over MQTT (QoS 1, as fast as the listener acknowledges: "publish/s" is what the
# cluster takes in); then K workers start, and from the moment they hold all 16
# partitions between them until the Nth window row the rate is measured
# ("reports/s"). No correlator runs (it reads summaries
# only, a small fraction of this work).
#
# This machine: 2 cores shared by the three nats-server nodes, the workers and
# SQLite. Four workers cannot be faster than two cores allow, and the workers share
# one SQLite file (one writer at a time): these figures show the shape, not what
# separate hosts with PostgreSQL would do. Needs nats-server, python3.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
N=${N:-60000}
SITES=${SITES:-500}
WORKERS=${WORKERS:-"1 2 4"}
PROFILE=${PROFILE:-release}
PARTITIONS=16
WORK=$(mktemp -d "${TMPDIR:-/tmp}/faultline-cluster-bench.XXXXXX")
PIDS=()
cleanup() {
    if [[ -n ${PG_PID:-} ]]; then kill -INT "$PG_PID" 2>/dev/null || true; wait "$PG_PID" 2>/dev/null || true; fi
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n ${KEEP:-} ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { echo "[cluster-bench] $*" >&2; }
command -v nats-server >/dev/null || [[ -x /usr/sbin/nats-server ]] || {
    log "nats-server not found: install nats-server (bash .ci/install-deps)"
    exit 1
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (exec 9<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
now_ns() { date +%s%N; }
rows() { python3 -c 'import sqlite3,sys
try: print(sqlite3.connect(sys.argv[1], timeout=30).execute("SELECT count(*) FROM windows").fetchone()[0])
except Exception: print(0)' "$1"; }

# PG=1: a PostgreSQL server of the bench's own (as the `postgres` user when root).
STORAGE=sqlite
if [[ -n ${PG:-} && ${PG:-} != 0 ]]; then
    STORAGE=postgresql
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    [[ -x $PGBIN/initdb ]] || { log "PostgreSQL not found: install postgresql"; exit 1; }
    as_pg() { if ((EUID == 0)); then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
    mkdir -p "$WORK/pg/sock"
    chmod 755 "$WORK"
    if ((EUID == 0)); then chown -R postgres:postgres "$WORK/pg"; fi
    as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U faultline --auth-local=trust --auth-host=trust --no-instructions >/dev/null
    PGPORT=$(port)
    as_pg "$PGBIN/postgres" -D "$WORK/pg/data" -p "$PGPORT" -k "$WORK/pg/sock" -c listen_addresses=127.0.0.1 \
        -c max_connections=100 2>"$WORK/pg/log" &
    for _ in $(seq 100); do as_pg "$PGBIN/pg_isready" -q -h "$WORK/pg/sock" -p "$PGPORT" && break; sleep 0.2; done
    # The server's own pid (`$!` is the subshell that started it).
    PG_PID=$(head -1 "$WORK/pg/data/postmaster.pid")
    pg_rows() { as_pg "$PGBIN/psql" -qtA -h "$WORK/pg/sock" -p "$PGPORT" -U faultline -d "$1" \
        -c "SELECT count(*) FROM windows" 2>/dev/null || echo 0; }
fi
# `storage_line DIR`: the [storage] line of a row's collectors.
storage_line() {
    if [[ $STORAGE == postgresql ]]; then
        echo "url = \"postgres://faultline@127.0.0.1:$PGPORT/$(basename "$1")\""
    else
        echo "path = \"$1/history.db\""
    fi
}
count_rows() {
    if [[ $STORAGE == postgresql ]]; then pg_rows "$(basename "$1")"; else rows "$1/history.db"; fi
}

flag=()
[[ $PROFILE == release ]] && flag=(--release)
log "building ($PROFILE) faultline-collector, faultline-fleet"
cargo build --quiet "${flag[@]}" --manifest-path "$ROOT/Cargo.toml" -p faultline-collector -p faultline-tests \
    --bin faultline-collector --bin faultline-fleet
BIN=$CARGO_TARGET_DIR/$PROFILE/faultline-collector
FLEET=$CARGO_TARGET_DIR/$PROFILE/faultline-fleet

# `cluster DIR`: three nodes (the shipped configs' settings, loopback ports);
# sets CLIENT_PORTS and MQTT_PORTS.
cluster() {
    local dir=$1 i j routes
    local -a cp kp
    CLIENT_PORTS=() MQTT_PORTS=()
    for i in 0 1 2; do cp[i]=$(port); kp[i]=$(port); MQTT_PORTS[i]=$(port); done
    CLIENT_PORTS=("${cp[@]}")
    for i in 0 1 2; do
        routes=""
        for j in 0 1 2; do [[ $j != "$i" ]] && routes+="    nats-route://127.0.0.1:${kp[j]}"$'\n'; done
        cat >"$dir/nats-$i.conf" <<EOF
server_name: fl-nats-$i
listen: 127.0.0.1:${cp[i]}
jetstream { store_dir: "$dir/js-$i" }
cluster { name: faultline, listen: 127.0.0.1:${kp[i]}, routes: [
$routes  ] }
mqtt { listen: 127.0.0.1:${MQTT_PORTS[i]}, stream_replicas: 3, max_ack_pending: 4096 }
accounts { FAULTLINE {
  jetstream: enabled
  users [ { user: faultline, password: faultline } ]
  mappings {
    "faultline.v1.sites.*.report": "fl.in.{{partition($PARTITIONS,1)}}.faultline.v1.sites.{{wildcard(1)}}.report"
  }
} }
no_auth_user: faultline
EOF
        nats-server -c "$dir/nats-$i.conf" 2>"$dir/nats-$i.log" &
        PIDS+=($!)
    done
    for i in 0 1 2; do wait_port "${cp[i]}"; wait_port "${MQTT_PORTS[i]}"; done
}

# `worker DIR NAME`: starts a site worker; its pid in WPID.
worker() {
    local dir=$1 name=$2
    cat >"$dir/$name.toml" <<EOF
window_seconds = 10
[storage]
$(storage_line "$dir")
[cluster]
role = "site"
name = "$name"
nats = ["nats://127.0.0.1:${CLIENT_PORTS[0]}", "nats://127.0.0.1:${CLIENT_PORTS[1]}", "nats://127.0.0.1:${CLIENT_PORTS[2]}"]
mqtt = ["mqtt://127.0.0.1:${MQTT_PORTS[0]}"]
partitions = $PARTITIONS
lease_ms = 6000
EOF
    FAULTLINE_LOG=info,async_nats=warn "$BIN" run --config "$dir/$name.toml" 2>"$dir/$name.log" &
    WPID=$!
    PIDS+=("$WPID")
}

taken() { cat "$@" 2>/dev/null | grep -c "partition taken" || true; }
# Partitions held now across the given workers' logs.
held() { echo $(($(taken "$@") - $(cat "$@" 2>/dev/null | grep -c "partition dropped" || true))); }

printf '| site workers | reports | publish/s (MQTT, QoS 1) | reports/s into history | per worker |\n'
printf '|---:|---:|---:|---:|---:|\n'
for k in $WORKERS; do
    dir=$WORK/k$k
    mkdir -p "$dir"
    log "$k worker(s): cluster"
    cluster "$dir"
    if [[ $STORAGE == postgresql ]]; then
        as_pg "$PGBIN/createdb" -h "$WORK/pg/sock" -p "$PGPORT" -U faultline "k$k"
    fi
    # The durable partition consumers, made once, before the reports.
    worker "$dir" setup
    for _ in $(seq 600); do [[ $(taken "$dir/setup.log") -ge $PARTITIONS ]] && break; sleep 0.1; done
    kill -TERM "$WPID"; wait "$WPID" 2>/dev/null || true
    rm -f "$dir/history.db"*
    if [[ $STORAGE == postgresql ]]; then
        as_pg "$PGBIN/dropdb" -h "$WORK/pg/sock" -p "$PGPORT" -U faultline --if-exists "k$k" 2>/dev/null || true
        as_pg "$PGBIN/createdb" -h "$WORK/pg/sock" -p "$PGPORT" -U faultline "k$k"
    fi
    log "$k worker(s): publishing $N reports"
    windows=$(( (N + SITES - 1) / SITES ))
    t0=$(now_ns)
    "$FLEET" --url "mqtt://127.0.0.1:${MQTT_PORTS[0]}" --sites "$SITES" --windows "$windows" --seed "$k" \
        >"$dir/fleet.out" 2>&1
    pub_s=$(awk -v d=$(($(now_ns) - t0)) -v n=$((windows * SITES)) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
    total=$((windows * SITES))
    log "$k worker(s): draining"
    for i in $(seq "$k"); do worker "$dir" "w$i"; done
    # Measured once the workers hold every partition between them (taking them,
    # and sharing them out as workers announce themselves, takes a lease or two).
    first="" last=""
    for _ in $(seq 6000); do
        n=$(count_rows "$dir")
        if [[ -z $first ]] && (($(held "$dir"/w*.log) == PARTITIONS)); then first=$(now_ns); n0=$n; fi
        if [[ $n -ge $total ]]; then last=$(now_ns); break; fi
        sleep 0.2
    done
    if [[ -z $first || $n0 -ge $total ]]; then
        log "$k worker(s): the backlog was gone before they held every partition: raise N"
        rate="—"; per="—"
    elif [[ -z $last ]]; then
        log "$k worker(s): history holds $n of $total after 20 min"
        rate="—"; per="—"
    else
        rate=$(awk -v d=$((last - first)) -v n=$((total - n0)) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
        per=$(awk -v r="$rate" -v k="$k" 'BEGIN { printf "%.0f", r / k }')
    fi
    printf '| %s | %s | %s | %s | %s |\n' "$k" "$total" "$pub_s" "$rate" "$per"
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
done
printf '\n%s cores, %s; N=%s, %s sites, %s partitions, history in %s, profile %s.\n' "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$N" "$SITES" "$PARTITIONS" "$STORAGE" "$PROFILE"
if [[ -n ${PG_PID:-} ]]; then kill -INT "$PG_PID" 2>/dev/null || true; wait "$PG_PID" 2>/dev/null || true; fi
