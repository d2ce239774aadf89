#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# RSS and CPU of `faultline-agent run` with 10 targets, all answering for real (the test
# kit's `faultline-peers`: Kamailio, coturn, a DNS server and a STAMP reflector behind
# relays with WAN-like delays; ICMP and TCP on loopback), one of them a 50 packet/s STAMP
# stream, over a measured period; and the bytes per report in postcard and JSON from the
# same run. Prints its BENCHMARKS.md section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/agent_rss.sh [SECONDS] [STAMP_SECONDS]
#
# SECONDS (default 60, QUICK=1: 10) is the measured period, after a 12 s warm-up.
# STAMP_SECONDS sets the stream's length per 10 s window; without it the script
# measures the agent's default burst (the budget's "at defaults") and then 9.5 s, an
# almost continuous stream. Needs mosquitto, mosquitto_sub, kamailio, coturn and root
# (ICMP). Builds the agent with the size-optimised `agent` profile.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

MEASURED=${1:-$(pick 60 10)}
JSON_SECONDS=$(pick 35 25)
if [[ -n ${2:-} ]]; then STREAMS=("$2"); else STREAMS=(default 9.5); fi
WARMUP=12
CMD=$(bench_cmd bash tests/bench/agent_rss.sh "$@")

require mosquitto_sub mosquitto-clients
build_agent
build_kit
MQTT_PORT=$(free_port tcp)
start_mosquitto "$MQTT_PORT"
start_peers

config() { # $1: format, $2: stream seconds per window or "default"
    cat <<EOF
site = "bench"
isp = "LoopNet"
window_seconds = 10
format = "$1"
state_dir = "$BENCH_WORK/state-$1-$2"
[mqtt]
url = "mqtt://127.0.0.1:$MQTT_PORT"
EOF
    agent_targets "$2"
}

# Payloads as the broker delivers them (postcard in hex; JSON sizes and JSON itself).
spawn mosquitto_sub -p "$MQTT_PORT" -t 'faultline/v1/sites/bench/report' -F '%x' >"$BENCH_WORK/postcard.hex"
spawn mosquitto_sub -p "$MQTT_PORT" -t 'faultline/v1/sites/bench/report/json' -F '%l' >"$BENCH_WORK/json.sizes"
spawn mosquitto_sub -p "$MQTT_PORT" -t 'faultline/v1/sites/bench/report/json' -F '%p' >"$BENCH_WORK/json.reports"
sleep 0.5

HZ=$(getconf CLK_TCK)
declare -A CPU RSS HWM
for stream in "${STREAMS[@]}"; do
    config postcard "$stream" >"$BENCH_WORK/agent.toml"
    "$AGENT" check --config "$BENCH_WORK/agent.toml" >/dev/null
    log "run, stream $stream: ${WARMUP} s warm-up, ${MEASURED} s measured"
    spawn env RUST_LOG=warn "$AGENT" run --config "$BENCH_WORK/agent.toml" 2>>"$BENCH_WORK/agent.log"
    pid=$BENCH_PID
    sleep "$WARMUP"
    ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
    t0=$(ticks)
    s0=$(date +%s.%N)
    max_rss=0
    for _ in $(seq "$MEASURED"); do
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
        ((rss > max_rss)) && max_rss=$rss
        sleep 1
    done
    t1=$(ticks)
    s1=$(date +%s.%N)
    HWM[$stream]=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
    RSS[$stream]=$max_rss
    CPU[$stream]=$(awk -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v s0="$s0" -v s1="$s1" \
        'BEGIN {printf "%.2f", (t1 - t0) / hz / (s1 - s0) * 100}')
    kill -TERM "$pid"
    wait "$pid" || true
done

# A short JSON run with the same targets, for the JSON size of the same reports.
config json "${STREAMS[0]}" >"$BENCH_WORK/json.toml"
log "JSON run, ${JSON_SECONDS} s"
spawn env RUST_LOG=warn "$AGENT" run --config "$BENCH_WORK/json.toml" 2>>"$BENCH_WORK/agent.log"
sleep "$JSON_SECONDS"
kill -TERM "$BENCH_PID"
wait "$BENCH_PID" || true
sleep 0.5

# "count min median max" of a file of numbers.
stats() { sort -n "$1" | awk '{a[NR] = $1} END {if (NR) print NR, a[1], a[int((NR + 1) / 2)], a[NR]; else print 0, "", "", ""}'; }
awk '{print length($1) / 2}' "$BENCH_WORK/postcard.hex" >"$BENCH_WORK/postcard.sizes"
read -r pc_n pc_min pc_med pc_max < <(stats "$BENCH_WORK/postcard.sizes")
# The same reports with the loopback ICMP and TCP targets at a WAN's distance (their
# RTT figures shifted; gw stays on the LAN): the postcard size a gateway would send.
WAN_SHIFTS=(isp-hop=8 anchor-1=15 anchor-2=15 voipco2-edge=30 voipco2-media=30)
shift_args=()
for s in "${WAN_SHIFTS[@]}"; do shift_args+=(--shift "$s"); done
wan_med=$("$OUTBOX" sizes --reports "$BENCH_WORK/postcard.hex" "${shift_args[@]}" |
    sed -E 's/.*median=([0-9]+).*/\1/')
read -r js_n js_min js_med js_max < <(stats "$BENCH_WORK/json.sizes")
((pc_n > 0)) || { log "no postcard report arrived"; exit 1; }
((js_n > 0)) || { log "no JSON report arrived"; exit 1; }
span() { if [[ $1 == "$2" ]]; then thousands "$1"; else echo "$(thousands "$1")–$(thousands "$2")"; fi; }
ratio=$(awk -v a="$js_med" -v b="$pc_med" 'BEGIN {printf "%.1f", a / b}')
agent_bytes=$(stat -c %s "$AGENT")
first=${STREAMS[0]}
# What each target measured, from the JSON run's reports: "errors records" then one
# table row per target (from the last report).
read -r probe_errors probe_records < <(python3 -c 'import json, sys
reports = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
probes = [p for r in reports for p in r["probes"]]
print(sum(1 for p in probes if p.get("error")), len(probes))' "$BENCH_WORK/json.reports")
target_rows=$(python3 -c 'import json, sys
last = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][-1]
for p in last["probes"]:
    rtt = p.get("rtt_ms") or {}
    print("| %s | %s | %d / %d | %s | %s |" % (p["target"], p["kind"], p["received"], p["sent"],
          "%.2f" % rtt["p50"] if rtt else "—", p.get("error") or "—"))' "$BENCH_WORK/json.reports")

md "## Agent (x86_64): RSS, CPU, report bytes" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The script starts Mosquitto and the targets' servers on loopback, then \`run\` with
10 targets (4 icmp, 2 tcp, 1 dns, 1 sip, 1 stun, 1 stamp at 50 packets/s, G.711 framing)
and 10 s windows, waits ${WARMUP} s, and samples \`/proc/PID\` for ${MEASURED} s:
RSS every second, CPU as utime + stime over the period. The agent is the size-optimised
\`agent\` profile (\`opt-level = \"z\"\`, fat LTO, \`panic = \"abort\"\`, stripped):
$(thousands "$agent_bytes") bytes on x86_64."
md ""
agent_targets_md
md "" "What the targets measured (the JSON run's last report; $probe_errors errors in $probe_records probe
records over its $js_n reports):" "" "| target | kind | received / sent | RTT p50 (ms) | error |" "|---|---|---:|---:|---|"
md "$target_rows"
md "" "### RSS and CPU of \`run\`: 10 targets, one 50 packet/s STAMP stream" ""
md "| stream | CPU (one core) | RSS max | VmHWM |" "|---|---:|---:|---:|"
for stream in "${STREAMS[@]}"; do
    case $stream in
        default) label="default (5 s burst per 10 s window)" ;;
        9.5) label="9.5 s per 10 s window (near continuous)" ;;
        *) label="$stream s per 10 s window" ;;
    esac
    mdf '| %s | %s %% | %s kB | %s kB |\n' "$label" "${CPU[$stream]}" "$(thousands "${RSS[$stream]}")" "$(thousands "${HWM[$stream]}")"
done
md "" "Budgets: RSS ≤ 6 MB (read as 6,000,000 bytes), CPU ≤ 1 % at defaults. Measured on
x86_64 only: not on an ARM gateway (nor under qemu, where CPU figures mean little)."
md "" "### Bytes per report, postcard and JSON" ""
mdf '%s\n' "\`mosquitto_sub\` records each payload as the broker delivered it, from
the runs above ($pc_n postcard reports) and a ${JSON_SECONDS} s run with \`format = \"json\"\` and the same
targets ($js_n)."
md "" "| format | 10-target report | topic |" "|---|---:|---|"
mdf '| postcard | %s bytes (median %s) | `.../report` |\n' "$(span "$pc_min" "$pc_max")" "$pc_med"
mdf '| JSON | %s bytes (median %s) | `.../report/json` |\n' "$(span "$js_min" "$js_max")" "$(thousands "$js_med")"
md "" "Budget: a 10-target report ≤ 400 bytes in postcard. JSON is ${ratio}× larger."
md "" "ICMP and TCP RTTs here are loopback's (a few 10 µs); each RTT figure is a varint of
10 µs units, so a WAN path's are a byte or two longer. The same postcard reports re-encoded
with those targets' RTT figures shifted by a WAN distance (\`faultline-outbox sizes\`:
$(sed -E 's/([^ ]+)=([0-9]+)/`\1` +\2 ms,/g; s/,$//' <<<"${WAN_SHIFTS[*]}"); \`gw\` stays on the LAN) weigh
**$wan_med bytes** (median), against $pc_med measured."
if grep -qiE 'error|panick' "$BENCH_WORK/agent.log"; then
    md "" "Agent log (warnings and errors, first lines):" "" '```'
    head -10 "$BENCH_WORK/agent.log" >&3
    md '```'
fi

rss_bytes=$((HWM[$first] * 1024))
[[ $first == default ]] && at="at defaults" || at="stream $first s per window"
summary_row "$BUDGET_RSS" "$(thousands "${HWM[$first]}") kB VmHWM ($at)" "$(met "$rss_bytes" "<=" 6000000)" "$CMD"
summary_row "$BUDGET_CPU" "${CPU[$first]} % over ${MEASURED} s ($at)" "$(met "${CPU[$first]}" "<=" 1)" "$CMD"
summary_row "$BUDGET_REPORT" "postcard $(span "$pc_min" "$pc_max") bytes (median $pc_med; $wan_med with ICMP/TCP at WAN RTTs); JSON median $(thousands "$js_med") (${ratio}×)" \
    "$(met "$(( pc_max > wan_med ? pc_max : wan_med ))" "<=" 400)" "$CMD"
fact REPORT_POSTCARD "$pc_med"
fact REPORT_JSON "$(thousands "$js_med")"
