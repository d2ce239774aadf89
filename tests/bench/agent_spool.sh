#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# RSS of `faultline-agent run` with a full 24 h outbox queued, and how it drains: the
# agent's state_dir is pre-filled with 8,640 records (the default outbox_capacity: 24 h
# of 10 s windows) in the on-disk format of agent/src/net/spool.rs, made from real
# 10-target reports captured first; the agent starts with the broker unreachable
# (nftables rejects its connection) while measuring the same 10 answering targets as
# agent_rss.sh; then the broker becomes reachable, and a subscriber counts every report
# that arrives, per boot, against what was queued. Prints its BENCHMARKS.md section
# (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/agent_spool.sh [OFFLINE_SECONDS]
#
# OFFLINE_SECONDS (default 60, QUICK=1: 20): how long the agent runs with the broker
# unreachable before it is let through. Runs in a network namespace of its own
# (`unshare --net`, so the firewall rule touches nothing else). Needs root, nftables,
# unshare, mosquitto, mosquitto_sub, kamailio and coturn.

if [[ $(id -u) == 0 && -z ${FL_BENCH_NETNS:-} ]] && command -v unshare >/dev/null; then
    exec unshare --net env FL_BENCH_NETNS=1 bash "$0" "$@"
fi
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

OFFLINE=${1:-$(pick 60 20)}
CAPACITY=8640 # the agent's default outbox_capacity
DRAIN_TIMEOUT=600
BOOT=11534080 # 0x00B00000: the pre-filled records' boot
CMD=$(bench_cmd bash tests/bench/agent_spool.sh "$@")
TITLE="## Agent: RSS with a full 24 h outbox queued, and its drain"

if [[ -z ${FL_BENCH_NETNS:-} ]]; then
    log "skipped: needs root and unshare (a network namespace for the firewall rule)"
    md "$TITLE" "" '```sh' "$CMD" '```' "" "Skipped: needs root and \`unshare\` (util-linux); run as root."
    summary_row "$BUDGET_RSS_SPOOL" "skipped: not root" "not measured" "$CMD"
    exit 0
fi
ip link set lo up
require nft nftables
require mosquitto_sub mosquitto-clients
build_agent
build_kit
start_peers

SUB_PORT=$(free_port tcp)
AGENT_PORT=$(free_port tcp)
start_mosquitto "$SUB_PORT" "listener $AGENT_PORT 127.0.0.1" "max_queued_messages 100000"
wait_port "$AGENT_PORT"
TOPIC=faultline/v1/sites/bench/report

config() { # $1: state_dir
    cat <<EOF
site = "bench"
isp = "LoopNet"
state_dir = "$1"
[mqtt]
url = "mqtt://127.0.0.1:$AGENT_PORT"
reconnect_max_seconds = 5
EOF
    agent_targets default
}

# 1. Real reports to fill the outbox with: a short run with the broker reachable.
log "capturing reports from a short run"
config "$BENCH_WORK/state-capture" >"$BENCH_WORK/capture.toml"
spawn mosquitto_sub -p "$SUB_PORT" -t "$TOPIC" -F '%x' >"$BENCH_WORK/captured.hex"
sub=$BENCH_PID
spawn env RUST_LOG=warn "$AGENT" run --config "$BENCH_WORK/capture.toml" 2>>"$BENCH_WORK/agent.log"
capture=$BENCH_PID
for _ in $(seq 450); do
    (($(wc -l <"$BENCH_WORK/captured.hex") >= 3)) && break
    sleep 0.1
done
kill -TERM "$capture" "$sub"
wait "$capture" "$sub" || true
(($(wc -l <"$BENCH_WORK/captured.hex") > 0)) || { log "no report captured"; exit 1; }

# 2. The full outbox, as 24 h without a broker leave it.
STATE=$BENCH_WORK/state
read -r filled < <("$OUTBOX" fill --state-dir "$STATE" --count "$CAPACITY" --reports "$BENCH_WORK/captured.hex" --boot "$BOOT")
log "filled: $filled"
field() { sed -E "s/.*(^| )$1=([^ ]*).*/\\2/" <<<"$2"; }
spool_bytes=$(field bytes "$filled")
payload_median=$(field payload_median "$filled")
segments=$(field segments "$filled")

# 3. The agent on the full outbox, its broker unreachable (connections rejected).
nft -f - <<EOF
table inet flspool {
    chain out {
        type filter hook output priority 0; policy accept;
        tcp dport $AGENT_PORT reject with tcp reset
    }
}
EOF
config "$STATE" >"$BENCH_WORK/agent.toml"
"$AGENT" check --config "$BENCH_WORK/agent.toml" >/dev/null
spawn mosquitto_sub -p "$SUB_PORT" -t "$TOPIC" -q 1 -F '%U %x' >"$BENCH_WORK/received.hex"
sleep 0.5
log "agent on a full outbox, broker unreachable for ${OFFLINE} s"
spawn env RUST_LOG=info "$AGENT" run --config "$BENCH_WORK/agent.toml" 2>>"$BENCH_WORK/spool-agent.log"
pid=$BENCH_PID
vm() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
offline_max=0
for _ in $(seq "$OFFLINE"); do
    rss=$(vm VmRSS)
    ((rss > offline_max)) && offline_max=$rss
    sleep 1
done
offline_hwm=$(vm VmHWM)

# 4. The broker reachable: RSS while the outbox drains, until nothing more arrives.
log "broker reachable: draining"
nft delete table inet flspool
drain_max=0
last_n=-1
still=0
start=$(date +%s)
while (($(date +%s) - start < DRAIN_TIMEOUT)); do
    rss=$(vm VmRSS)
    ((rss > drain_max)) && drain_max=$rss
    n=$(wc -l <"$BENCH_WORK/received.hex")
    if ((n == last_n && n >= CAPACITY - OFFLINE / 10 - 2)); then
        still=$((still + 1))
        ((still >= 15)) && break # 3 s without a new report
    else
        still=0
    fi
    last_n=$n
    sleep 0.2
done
drain_hwm=$(vm VmHWM)
kill -TERM "$pid"
wait "$pid" || true
sleep 0.5

# 5. What arrived, per boot: the pre-filled one and the agent's own.
"$OUTBOX" tally --reports "$BENCH_WORK/received.hex" >"$BENCH_WORK/tally"
log "tally: $(tr '\n' ';' <"$BENCH_WORK/tally")"
read -r totals <"$BENCH_WORK/tally"
prefill=$(grep "^boot=$BOOT " "$BENCH_WORK/tally" || echo "boot=$BOOT count=0 first= last= missing=")
own=$(grep -v "^boot=$BOOT " "$BENCH_WORK/tally" | grep '^boot=' | head -1 || true)
pre_count=$(field count "$prefill")
pre_first=$(field first "$prefill")
pre_last=$(field last "$prefill")
pre_missing=$(field missing "$prefill")
own_count=$(field count "$own")
own_missing=$(field missing "$own")
duplicates=$(field duplicates "$totals")
# Drain: from the first report's arrival to the last pre-filled one's.
read -r drain_s rate < <(python3 - "$BENCH_WORK/received.hex" "$pre_count" <<'EOF'
import sys
times = [float(l.split()[0]) for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[2] or 0)
span = times[n - 1] - times[0] if 0 < n <= len(times) else 0
print("%.1f %.0f" % (span, n / span if span > 0 else 0))
EOF
)
connected=$(grep -m1 -oE 'connected to .*reports to send' "$BENCH_WORK/spool-agent.log" || echo "no connection logged")
recovered=$(grep -m1 -oE '[0-9]+ undelivered reports from earlier runs' "$BENCH_WORK/spool-agent.log" || echo "none logged")
expected_dropped=$((pre_first))
all_arrived=no
if ((pre_count > 0 && pre_last == CAPACITY - 1 && pre_missing == 0 && ${own_missing:-1} == 0)); then
    all_arrived=yes
fi

md "$TITLE" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The outbox folder is pre-filled with $(thousands "$CAPACITY") records — the default
\`outbox_capacity\`, 24 h of 10 s windows — in the on-disk format of \`agent/src/net/spool.rs\`
(\`faultline-outbox fill\`: $segments segment files, $(thousands "$spool_bytes") bytes), made from real 10-target
postcard reports captured from a short run first (payload median $payload_median bytes), one boot,
seq 0–$((CAPACITY - 1)). The agent then runs on it with the broker unreachable (nftables rejects
its connection, in a network namespace of the script's own) for ${OFFLINE} s while it measures
the same 10 answering targets as above (one 50 packet/s stream); then the broker becomes
reachable and a subscriber (QoS 1, subscribed throughout) counts what arrives, per boot.
\`reconnect_max_seconds = 5\` so the drain starts soon; everything else is at defaults."
md ""
agent_targets_md
md "" "| phase | VmRSS max | VmHWM |" "|---|---:|---:|"
mdf '| broker unreachable, %s reports queued (%s MB on disk), %s s | %s kB | %s kB |\n' \
    "$(thousands "$CAPACITY")" "$(awk -v b="$spool_bytes" 'BEGIN {printf "%.1f", b / 1e6}')" "$OFFLINE" \
    "$(thousands "$offline_max")" "$(thousands "$offline_hwm")"
mdf '| draining (sampled every 0.2 s) | %s kB | %s kB |\n' "$(thousands "$drain_max")" "$(thousands "$drain_hwm")"
md "" "| delivery | |" "|---|---|"
mdf '| agent log at start | %s |\n' "$recovered"
mdf '| agent log on connecting | %s |\n' "$connected"
mdf '| pre-filled boot | %s of %s arrived: seq %s–%s, %s missing in between |\n' \
    "$(thousands "$pre_count")" "$(thousands "$CAPACITY")" "$pre_first" "$pre_last" "$pre_missing"
mdf '| oldest dropped for room | %s (one per window measured while the outbox was full) |\n' \
    "$expected_dropped"
mdf '| the agent'"'"'s own boot | %s reports, %s missing |\n' "${own_count:-0}" "${own_missing:-?}"
mdf '| duplicates | %s |\n' "$duplicates"
mdf '| drain | %s pre-filled reports in %s s: **%s reports/s** (first arrival to the last pre-filled one) |\n' \
    "$(thousands "$pre_count")" "$drain_s" "$(thousands "$rate")"
md "" "Every pre-filled window from the oldest kept to the newest arrived, and every window of
the agent's own boot: **$all_arrived**. Budget: RSS ≤ 6 MB (6,000,000 bytes) with a full 24 h
outbox queued — the records stay on disk (the spool keeps a 12-byte index entry per record in
memory and reads a payload back when it is sent). The drain rate is loopback's: the agent keeps
16 reports unacknowledged at most (\`MAX_IN_FLIGHT\`), so over a WAN it is bounded by 16 per
round trip (at 50 ms, 320 reports/s: the 24 h backlog in about half a minute) and by the
uplink (the backlog's payloads are $(awk -v b="$spool_bytes" -v n="$CAPACITY" -v s="$segments" 'BEGIN {printf "%.1f", (b - 8 * s - 21 * n) / 1e6}') MB, plus MQTT, TLS and TCP/IP framing: see agent_wire.sh)."

peak=$((offline_hwm > drain_hwm ? offline_hwm : drain_hwm))
summary_row "$BUDGET_RSS_SPOOL" "$(thousands "$offline_hwm") kB VmHWM with $(thousands "$CAPACITY") reports queued, $(thousands "$drain_hwm") kB after draining them at $(thousands "$rate") reports/s; all arrived: $all_arrived" \
    "$(met "$((peak * 1024))" "<=" 6000000)" "$CMD"
fact SPOOL_RSS_KB "$(thousands "$peak")"
fact SPOOL_DRAIN_RATE "$(thousands "$rate")"
[[ $all_arrived == yes ]] || { log "not every queued report arrived"; exit 1; }
