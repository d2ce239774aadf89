# shellcheck shell=bash
# Sourced by the collector's benchmarks after tests/bench/lib.sh: a broker with the
# shipped queue settings, a collector on it, and what its history holds.

SHIPPED_BROKER_CONF=$BENCH_ROOT/collector/deploy/mosquitto.conf

# `reap PID`: waits for a process `spawn` started and drops it from the exit
# cleanup, so a long run never signals a recycled pid. Returns its status.
reap() {
    local i rc=0
    wait "$1" 2>/dev/null || rc=$?
    for i in "${!BENCH_PIDS[@]}"; do
        if [[ ${BENCH_PIDS[$i]} == "$1" ]]; then unset 'BENCH_PIDS[i]'; fi
    done
    return "$rc"
}

# `stop PID [SIGNAL]`: signals a process `spawn` started (TERM by default) and reaps it.
stop() {
    kill "-${2:-TERM}" "$1" 2>/dev/null || true
    reap "$1" || true
}

# The shipped broker config's lines without what binds it to a production host
# (listeners, TLS, passwords, ACL, client ids tied to logins) or writes state into the working directory
# (persistence: these runs measure delivery, not broker restarts).
shipped_broker_lines() {
    grep -vE '^[[:space:]]*(#|$)' "$SHIPPED_BROKER_CONF" |
        grep -vE '^[[:space:]]*(per_listener_settings|use_username_as_clientid|allow_anonymous|password_file|acl_file|listener|protocol|certfile|keyfile|cafile|tls_version|persistence_location|persistence|autosave_interval)[[:space:]]'
}

# `start_shipped_broker`: Mosquitto with those lines on a free port: MQTT_PORT, MOSQ_PID.
start_shipped_broker() {
    local lines
    mapfile -t lines < <(shipped_broker_lines)
    MQTT_PORT=$(free_port tcp)
    start_mosquitto "$MQTT_PORT" "${lines[@]}"
}

# `collector_conf FILE DB HTTP_PORT [EXTRA]`: a collector.toml for the broker on
# MQTT_PORT, history in DB, HTTP on HTTP_PORT, EXTRA top-level lines first.
# With BENCH_PG_URL set, history goes to that PostgreSQL database instead of the
# SQLite file DB (every run appends to the same database).
collector_conf() {
    local storage="path = \"$2\""
    if [[ -n ${BENCH_PG_URL:-} ]]; then storage="url = \"$BENCH_PG_URL\""; fi
    cat >"$1" <<CONF
${4:-}
[mqtt]
url = "mqtt://127.0.0.1:$MQTT_PORT"
[http]
listen = "127.0.0.1:$3"
[storage]
$storage
CONF
}

# `api_counter HTTP_PORT NAME`: one number from /api/counters (empty when down).
api_counter() { { curl -sf "127.0.0.1:$1/api/counters" || true; } | sed -nE "s/.*\"$2\":([0-9]+).*/\1/p"; }

# `history_rows DB`: "rows distinct" of (site, boot, seq) in the windows table.
history_rows() {
    python3 - "$1" <<'PY'
import sqlite3, sys
try:
    db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
    print(*db.execute("SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT site, boot, seq FROM windows)) FROM windows").fetchone())
except sqlite3.Error:
    print(0, 0)
PY
}

# `register_collector BIN CONF HTTP_PORT`: starts the collector, waits until its
# reading session has subscribed (it saw a probe status), stops it: the broker now
# queues reports for it.
register_collector() {
    local pid n _
    spawn env FAULTLINE_LOG=warn "$1" run --config "$2"
    pid=$BENCH_PID
    wait_port "$3"
    mosquitto_pub -p "$MQTT_PORT" -q 1 -r -t faultline/v1/sites/bench-probe/status -m '{"state":"online","boot":1}'
    for _ in $(seq 500); do
        n=$(api_counter "$3" statuses)
        ((${n:-0} >= 1)) && break
        sleep 0.02
    done
    stop "$pid"
}
