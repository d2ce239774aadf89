#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# Ingest rate through Mosquitto: the collector against `mosquitto_sub` draining the
# same stream on the same broker at the same time; and the whole service's RSS with
# 10,000 sites. Prints its BENCHMARKS.md section (protocol: tests/bench/lib.sh).
#
#   bash collector/bench/ingest.sh            # both cases below (QUICK=1: fewer reports)
#   N=200000 SITES=100 bash collector/bench/ingest.sh           # one case
#   N=20000 SITES=10000 PAR=32 bash collector/bench/ingest.sh   # 10k sites: RSS
#
# Cases by default: N=50000 reports from SITES=50 sites (the rate), then N=20000 from
# 10,000 sites, 32 publishers at a time (the memory). PAR limits how many publishers
# run at once (default: one per site). Both subscribers receive every report (QoS 1,
# 10 probes each, ~1.7 kB of JSON) published by SITES parallel `mosquitto_pub -l`
# streams. A rate is N / (time from the first publish to the N-th message handled):
# for mosquitto_sub, when it exits after N messages; for the collector, when its
# count of handled reports (accepted + rejected, from /api/counters) reaches N. Needs
# mosquitto, mosquitto-clients, curl, awk.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/../../tests/bench/lib.sh"

if [[ -n ${N:-}${SITES:-} ]]; then
    CASES=("${N:-50000} ${SITES:-50} ${PAR:-${SITES:-50}}")
    CMD=$(bench_cmd "N=${N:-50000} SITES=${SITES:-50}${PAR:+ PAR=$PAR} bash collector/bench/ingest.sh")
else
    CASES=("$(pick 50000 20000) 50 50" "$(pick 20000 10000) 10000 32")
    CMD=$(bench_cmd bash collector/bench/ingest.sh)
fi

require mosquitto_pub mosquitto-clients
require curl curl
build_release -p faultline-collector
BIN=$CARGO_TARGET_DIR/release/faultline-collector

# `run_case N SITES PAR`: one table row; sets RATIO and HWM_SCRAPE (bytes).
run_case() {
    local per=$(($1 / $2)) sites=$2 par=$3 n mp hp dir cpid sub t0 tsub="" tcol="" rsub rcol hwm hwm2
    n=$((per * sites))
    dir=$BENCH_WORK/case-$sites
    mkdir -p "$dir"
    mp=$(free_port tcp)
    hp=$(free_port tcp)
    start_mosquitto "$mp" "max_queued_messages 0" "max_inflight_messages 100"
    local mosq=$MOSQ_PID
    cat >"$dir/collector.toml" <<CONF
[mqtt]
url = "mqtt://127.0.0.1:$mp"
[http]
listen = "127.0.0.1:$hp"
[storage]
path = "$dir/history.db"
CONF
    spawn env FAULTLINE_LOG=warn "$BIN" run --config "$dir/collector.toml" 2>"$dir/collector.log"
    cpid=$BENCH_PID
    wait_port "$hp"

    # One file of PER reports per site.
    log "$sites sites: writing $n reports"
    seq -f "site-%05g" 1 "$sites" | awk -v per="$per" -v now="$(date +%s%3N)" -v dir="$dir" '{
        site = $1; f = dir "/" site ".jsonl"
        for (i = 0; i < per; i++) {
            printf "{\"v\":1,\"site\":\"%s\",\"boot\":1,\"seq\":%d,\"start_ms\":%d,\"window_ms\":10000,\"host\":{\"cpu_pct\":10.0,\"mem_pct\":40.0,\"load1\":0.2},\"probes\":[", site, i, now > f
            for (t = 0; t < 10; t++) {
                if (t > 0) printf "," > f
                layer = (t == 0) ? "lan" : (t < 3 ? "internet" : "provider")
                prov = (t >= 3) ? sprintf(",\"provider\":\"p%d\"", t % 3) : ""
                printf "{\"target\":\"t%d\",\"layer\":\"%s\"%s,\"kind\":\"stamp\",\"sent\":50,\"received\":50,\"rtt_ms\":{\"min\":10.1,\"p50\":12.2,\"avg\":12.4,\"p95\":15.3,\"max\":20.9},\"jitter_ms\":1.2,\"max_burst\":0,\"mos\":4.31}", t, layer, prov > f
            }
            printf "]}\n" > f
        }
        close(f)
    }'

    handled() {
        curl -sf "127.0.0.1:$hp/api/counters" | sed -E 's/.*"rejected":([0-9]+).*"reports":([0-9]+).*/\1 \2/' |
            awk '{ print $1 + $2 } END { if (!NR) print 0 }'
    }
    spawn mosquitto_sub -p "$mp" -q 1 -t 'faultline/v1/sites/+/report/json' -C "$n" >/dev/null
    sub=$BENCH_PID
    sleep 1
    log "$sites sites: publishing $n reports, $par publishers at a time"
    t0=$(date +%s%N)
    export BENCH_MP=$mp BENCH_DIR=$dir
    seq -f "site-%05g" 1 "$sites" | xargs -P "$par" -I{} sh -c \
        'mosquitto_pub -p "$BENCH_MP" -q 1 -l -t "faultline/v1/sites/{}/report/json" < "$BENCH_DIR/{}.jsonl"' &
    BENCH_PIDS+=($!)
    while [[ -z $tsub || -z $tcol ]]; do
        if [[ -z $tsub ]] && ! kill -0 "$sub" 2>/dev/null; then tsub=$(date +%s%N); fi
        if [[ -z $tcol ]] && (($(handled) >= n)); then tcol=$(date +%s%N); fi
        if (($(date +%s%N) - t0 > 600 * 1000000000)); then
            log "timeout: collector handled $(handled) of $n"
            return 1
        fi
        sleep 0.05
    done
    rsub=$(awk -v n="$n" -v d=$((tsub - t0)) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
    rcol=$(awk -v n="$n" -v d=$((tcol - t0)) 'BEGIN { printf "%.0f", n / (d / 1e9) }')
    RATIO=$(awk -v a="$rcol" -v b="$rsub" 'BEGIN { printf "%.2f", a / b }')
    hwm=$(awk '/VmHWM/ { print $2 * 1024 }' "/proc/$cpid/status")
    # One Prometheus scrape on top (at 10k sites the probe series are the bulk of it).
    curl -sf -o /dev/null "127.0.0.1:$hp/metrics"
    HWM_SCRAPE=$(awk '/VmHWM/ { print $2 * 1024 }' "/proc/$cpid/status")
    mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
    hwm2=$(mib "$HWM_SCRAPE")
    hwm=$(mib "$hwm")
    mdf '| %s | %s | %s msg/s | %s msg/s | %s | %s | %s |\n' "$(thousands "$n")" "$(thousands "$sites")" \
        "$(thousands "$rsub")" "$(thousands "$rcol")" "$RATIO" "$hwm" "$hwm2"
    kill "$cpid" "$mosq" 2>/dev/null || true
    rm -f "$dir"/*.jsonl
}

md "## Collector: ingest rate against mosquitto_sub, and RSS at 10,000 sites" ""
md '```sh' "$CMD" '```' ""
md "The script starts Mosquitto, the release collector (\`run\` with history in SQLite,
HTTP, per-probe metrics publishing — everything on) and \`mosquitto_sub\` on the same
report filter, then publishes N JSON reports (10 probes, ~1.7 kB each, QoS 1) from
SITES parallel \`mosquitto_pub -l\` streams. Each rate is N over the time from the first
publish until that subscriber has handled N (mosquitto_sub exits after N; the
collector's accepted + rejected count in \`/api/counters\` reaches N). For every report
the collector also publishes 10 per-probe metrics messages and writes a history row.
Both rates come from one run side by side, so the ratio holds on a busy machine where
the absolute rates do not. Each case gets its own broker and collector."
md "" "| reports | sites | mosquitto_sub | collector | ratio | collector peak RSS | after a /metrics scrape |"
md "|---:|---:|---:|---:|---:|---:|---:|"
rate_ratio=""
sites_rss=""
for c in "${CASES[@]}"; do
    read -r n sites par <<<"$c"
    run_case "$n" "$sites" "$par"
    if ((sites >= 10000)); then sites_rss=$HWM_SCRAPE; sites_n=$n; fi
    if [[ -z $rate_ratio ]] && ((sites < 10000)); then rate_ratio=$RATIO; fi
done
md "" "With 10,000 sites the publishers (one \`mosquitto_pub\` process per site, a few at a time)
are the limit, so that row's ratio says only that the collector kept up; its point is
memory with every site and target tracked, history and metrics on, and after a
Prometheus scrape has rendered the per-probe series (allocated once per scrape at its
final size). The ratio once depended on the per-probe metrics output having its own MQTT
connection and task: ten QoS 0 publishes per report on the reading connection were the
bottleneck. RSS is in MiB (2^20 bytes); the budget is read as 150,000,000 bytes."

if [[ -n $rate_ratio ]]; then
    summary_row "$BUDGET_INGEST" "$rate_ratio × \`mosquitto_sub\`" "$(met "$rate_ratio" ">=" 0.8)" "$CMD"
fi
if [[ -n $sites_rss ]]; then
    summary_row "$BUDGET_SITES" "whole service, $(thousands "$sites_n") reports: $(awk -v b="$sites_rss" \
        'BEGIN { printf "%.1f MiB (%.1f MB)", b / 1048576, b / 1e6 }') peak, after a Prometheus scrape" \
        "$(met "$sites_rss" "<=" 150000000)" "$CMD"
fi
