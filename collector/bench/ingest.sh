#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# Ingest rate: the collector against `mosquitto_sub` draining the same pre-queued
# backlog from the same broker (the broker's delivery rate, not the publishers'),
# the collector acknowledging each report only once its history row is committed;
# and the whole service's RSS with 10,000 sites. Prints its BENCHMARKS.md section
# (protocol: tests/bench/lib.sh).
#
#   bash collector/bench/ingest.sh                  # everything below (QUICK=1: smaller)
#   N=200000 SITES=100 ROUNDS=3 bash collector/bench/ingest.sh     # the rate only
#
# Broker: Mosquitto with the queue settings of collector/deploy/mosquitto.conf (its
# listeners, TLS and passwords aside). Both the collector's reading session and a
# `mosquitto_sub -c` session (MQTT 5, the collector's Receive Maximum) are registered
# first, so the broker queues every report for both. Each round then publishes N reports (the fleet simulator: real postcard
# reports as agents send them, 10 targets, SITES sites; a new seed, so new windows,
# each round) and lets each subscriber drain its queue alone, one after the other
# (the order alternates between rounds):
#   - mosquitto_sub: time from its start until it exits after N messages;
#   - the collector (`run`, history in a new SQLite file each round, per-probe
#     metrics, HTTP, everything on): time from its start until history has committed
#     N rows (`stored` in /api/counters, polled every 20 ms).
# The ratio is the collector's rate over mosquitto_sub's; the figure is the median
# over ROUNDS. One round with JSON reports (`format = "json"` sites, ~1.7 kB each)
# follows, for comparison. Needs mosquitto, mosquitto-clients, curl, python3.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/../../tests/bench/lib.sh"

N=${N:-$(pick 200000 50000)}
SITES=${SITES:-100}
ROUNDS=${ROUNDS:-$(pick 5 3)}
JSON_N=${JSON_N:-$(pick 50000 20000)}
RSS_SITES=${RSS_SITES:-10000}
RSS_N=${RSS_N:-$(pick 20000 10000)}
settings=""
for v in N SITES ROUNDS; do
    if [[ -n $(printenv "$v" || true) ]]; then settings+="$v=${!v} "; fi
done
CMD=$(bench_cmd "${settings}bash collector/bench/ingest.sh")

require mosquitto_sub mosquitto-clients
require curl curl
require python3 python3
build_release -p faultline-collector -p faultline-tests --bin faultline-collector --bin faultline-fleet
BIN=$CARGO_TARGET_DIR/release/faultline-collector
FLEET=$CARGO_TARGET_DIR/release/faultline-fleet
# shellcheck source=collector/bench/lib.sh
source "$BENCH_ROOT/collector/bench/lib.sh"

start_shipped_broker
mp=$MQTT_PORT
MOSQ=$MOSQ_PID
hp=$(free_port tcp)
SUB_ID=bench-sub
# MQTT 5 with the collector's Receive Maximum: both subscribers get the same window of
# unacknowledged messages from the broker (mosquitto_sub acknowledges at once).
SUB=(mosquitto_sub -p "$mp" -q 1 -c -i "$SUB_ID" -V 5 -D connect receive-maximum 4096
    -t 'faultline/v1/sites/+/report' -t 'faultline/v1/sites/+/report/json')
CONF=$BENCH_WORK/collector.toml
counter() { api_counter "$hp" "$1"; }
now_ns() { date +%s%N; }

# Registers both sessions (each subscribes once, then goes away).
collector_conf "$CONF" "$BENCH_WORK/register.db" "$hp"
register_collector "$BIN" "$CONF" "$hp"
"${SUB[@]}" -W 1 >/dev/null 2>&1 || true

# `drain_sub N`: seconds mosquitto_sub takes to drain N messages (into SUB_S).
drain_sub() {
    local t0
    t0=$(now_ns)
    "${SUB[@]}" -C "$1" >/dev/null
    SUB_S=$(awk -v d=$(($(now_ns) - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')
}

# `drain_collector N DB`: seconds the collector takes until N rows are committed
# (into COL_S); leaves it running with its pid in COL_PID.
drain_collector() {
    local n=$1 t0 got=0
    collector_conf "$CONF" "$2" "$hp"
    t0=$(now_ns)
    spawn env FAULTLINE_LOG=warn "$BIN" run --config "$CONF"
    COL_PID=$BENCH_PID
    while ((got < n)); do
        if (($(now_ns) - t0 > 900 * 1000000000)); then
            log "timeout: the collector committed $got of $n"
            return 1
        fi
        sleep 0.02
        got=$(counter stored)
        got=${got:-0}
    done
    COL_S=$(awk -v d=$(($(now_ns) - t0)) 'BEGIN { printf "%.3f", d / 1e9 }')
}

stop_collector() {
    stop "$COL_PID"
}

rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

md "## Collector: ingest rate against mosquitto_sub, and RSS at 10,000 sites" ""
md '```sh' "$CMD" '```' ""
md "The broker is Mosquitto with the queue settings of \`collector/deploy/mosquitto.conf\`.
The collector's reading session and a \`mosquitto_sub -c\` session (MQTT 5, given the
collector's Receive Maximum of 4,096 so both may have as many reports unacknowledged)
are registered,
then each round publishes N reports into both queues (the fleet simulator's postcard
reports, as agents send them: 10 targets, ~360 bytes, QoS 1) and each subscriber
drains its own queue alone, one after the other (the order alternates): the broker's
delivery rate, not the publishers'. mosquitto_sub's time runs from its start until it
exits after N messages; the collector's (\`run\` with everything on: history in a new
SQLite file, per-probe metrics, HTTP) from its start until history has **committed**
N rows — it acknowledges each report to the broker only after that commit. The
figure is the median ratio over the rounds."
md "" "| round | reports | sites | first | mosquitto_sub | collector (committed) | ratio |"
md "|---:|---:|---:|---|---:|---:|---:|"
ratios=()
for r in $(seq "$ROUNDS"); do
    log "round $r: queueing $N postcard reports from $SITES sites"
    "$FLEET" --url "mqtt://127.0.0.1:$mp" --sites "$SITES" --windows $((N / SITES)) \
        --no-status --seed "$r" >/dev/null
    n=$(((N / SITES) * SITES))
    if ((r % 2)); then
        first=mosquitto_sub
        drain_sub "$n"
        drain_collector "$n" "$BENCH_WORK/round-$r.db"
    else
        first=collector
        drain_collector "$n" "$BENCH_WORK/round-$r.db"
        drain_sub "$n"
    fi
    stop_collector
    rsub=$(rate "$n" "$SUB_S")
    rcol=$(rate "$n" "$COL_S")
    ratio=$(awk -v a="$rcol" -v b="$rsub" 'BEGIN { printf "%.2f", a / b }')
    ratios+=("$ratio")
    log "round $r: mosquitto_sub $rsub/s, collector $rcol/s, ratio $ratio"
    mdf '| %s | %s | %s | %s | %s msg/s | %s msg/s | %s |\n' "$r" "$(thousands "$n")" "$SITES" "$first" \
        "$(thousands "$rsub")" "$(thousands "$rcol")" "$ratio"
    rm -f "$BENCH_WORK/round-$r.db"*
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')

# One round of JSON reports (what `format = "json"` sites send).
log "JSON round: queueing $JSON_N reports from $SITES sites"
per=$((JSON_N / SITES))
jn=$((per * SITES))
python3 - "$BENCH_WORK" "$SITES" "$per" <<'PY'
import json, sys, time
work, sites, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
now = int(time.time() * 1000)
for s in range(sites):
    site = "json-%04d" % s
    with open("%s/%s.jsonl" % (work, site), "w") as f:
        for i in range(per):
            probes = []
            for t in range(10):
                p = {"target": "t%d" % t, "layer": "lan" if t == 0 else ("internet" if t < 3 else "provider"),
                     "kind": "stamp", "sent": 50, "received": 50,
                     "rtt_ms": {"min": 10.1, "p50": 12.2, "avg": 12.4, "p95": 15.3, "max": 20.9},
                     "jitter_ms": 1.2, "max_burst": 0, "mos": 4.31}
                if t >= 3:
                    p["provider"] = "p%d" % (t % 3)
                probes.append(p)
            f.write(json.dumps({"v": 1, "site": site, "boot": 1, "seq": i, "start_ms": now + i * 10000,
                                "window_ms": 10000, "host": {"cpu_pct": 10.0, "mem_pct": 40.0, "load1": 0.2},
                                "probes": probes}, separators=(",", ":")) + "\n")
PY
export BENCH_MP=$mp BENCH_DIR=$BENCH_WORK
seq -f "json-%04g" 0 $((SITES - 1)) | xargs -P 8 -I{} sh -c \
    'mosquitto_pub -p "$BENCH_MP" -q 1 -l -t "faultline/v1/sites/{}/report/json" < "$BENCH_DIR/{}.jsonl"'
drain_sub "$jn"
drain_collector "$jn" "$BENCH_WORK/json.db"
stop_collector
rm -f "$BENCH_WORK"/json-*.jsonl "$BENCH_WORK/json.db"*
jsub=$(rate "$jn" "$SUB_S")
jcol=$(rate "$jn" "$COL_S")
jratio=$(awk -v a="$jcol" -v b="$jsub" 'BEGIN { printf "%.2f", a / b }')
mdf '| JSON | %s | %s | mosquitto_sub | %s msg/s | %s msg/s | %s |\n' "$(thousands "$jn")" "$SITES" \
    "$(thousands "$jsub")" "$(thousands "$jcol")" "$jratio"
md "" "Median ratio over the postcard rounds: **$median**. JSON reports (~1.7 kB, the last
row) cost the collector more to decode than postcard: a fleet of \`format = \"json\"\`
sites drains at that row's rate. Per-probe metrics are published at
most about twice per window per site (a burst of 3, refilled at two a window), so a backlog
being drained is committed to history but not re-broadcast ten QoS 0 messages a report
(\`faultline_collector_published_total{kind=\"metrics_skipped\"}\`)."

# RSS with 10,000 sites: their statuses and RSS_N reports queued, then drained.
log "RSS: $RSS_SITES sites, $RSS_N reports"
"$FLEET" --url "mqtt://127.0.0.1:$mp" --sites "$RSS_SITES" --windows $((RSS_N / RSS_SITES)) \
    --seed 99 >/dev/null
rn=$(((RSS_N / RSS_SITES) * RSS_SITES))
drain_collector "$rn" "$BENCH_WORK/rss.db"
hwm=$(awk '/VmHWM/ { printf "%.0f", $2 * 1024 }' "/proc/$COL_PID/status")
curl -sf -o /dev/null "127.0.0.1:$hp/metrics"
hwm_scrape=$(awk '/VmHWM/ { printf "%.0f", $2 * 1024 }' "/proc/$COL_PID/status")
stop_collector
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
md "" "| sites | reports | collector peak RSS | after a /metrics scrape |" "|---:|---:|---:|---:|"
mdf '| %s | %s | %s | %s |\n' "$(thousands "$RSS_SITES")" "$(thousands "$rn")" "$(mib "$hwm")" "$(mib "$hwm_scrape")"
md "" "Memory with every site and target tracked (statuses and $(thousands "$rn") reports from
$(thousands "$RSS_SITES") sites), history and metrics on, and after a Prometheus scrape
has rendered the per-probe series. RSS is in MiB (2^20 bytes); the budget is read as
150,000,000 bytes."
stop "$MOSQ"

summary_row "$BUDGET_INGEST" "median $median × \`mosquitto_sub\` over $ROUNDS rounds of $(thousands "$N") postcard reports (JSON reports: $jratio ×)" \
    "$(met "$median" ">=" 0.9)" "$CMD"
summary_row "$BUDGET_SITES" "whole service, $(thousands "$rn") reports: $(awk -v b="$hwm_scrape" \
    'BEGIN { printf "%.1f MiB (%.1f MB)", b / 1048576, b / 1e6 }') peak, after a Prometheus scrape" \
    "$(met "$hwm_scrape" "<=" 150000000)" "$CMD"
