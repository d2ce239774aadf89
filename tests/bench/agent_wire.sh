#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# Bytes on the wire per report, MQTT and TLS included, and the probes' own traffic by
# kind: the agent publishes through Mosquitto's TLS listener on loopback, and `ss -ti`
# reports what its connection sent and received (TCP payload bytes and segments; each
# segment is counted with 52 bytes of IPv4 + TCP headers with timestamps, as on a real
# link). The script runs in a network namespace of its own (`unshare --net`), where
# nftables counters on the output hook count every IP packet of the run by kind (each
# target's address or port). Prints its BENCHMARKS.md section (protocol:
# tests/bench/lib.sh).
#
#   bash tests/bench/agent_wire.sh [SECONDS] [WINDOW_SECONDS]
#
# Defaults: 120 s (QUICK=1: 30 s) of the default 10 s windows, so keepalive pings
# (every 60 s) weigh on each report as they do at defaults. The same 10 targets as
# agent_rss.sh, all answering (`faultline-peers`). Needs mosquitto, mosquitto_sub,
# openssl, ss (iproute2), nftables, kamailio, coturn, unshare (util-linux) and root.

# Alone in a network namespace: nothing else's packets on its loopback.
if [[ $(id -u) == 0 && -z ${FL_BENCH_NETNS:-} ]] && command -v unshare >/dev/null; then
    exec unshare --net env FL_BENCH_NETNS=1 bash "$0" "$@"
fi
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"
[[ -n ${FL_BENCH_NETNS:-} ]] && ip link set lo up

RUN=${1:-$(pick 120 30)}
WINDOW=${2:-10}
KEEPALIVE=60 # the agent's default keepalive_seconds
CMD=$(bench_cmd bash tests/bench/agent_wire.sh "$@")

require openssl openssl
require ss iproute2
require mosquitto_sub mosquitto-clients
build_agent
build_kit
cd "$BENCH_WORK"

ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj '/CN=bench CA' 2>/dev/null
openssl req "${ec[@]}" -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
    -extfile server.ext 2>/dev/null

PORT=$(free_port tcp)
PLAIN_PORT=$(free_port tcp)
start_mosquitto "$PLAIN_PORT" "listener $PORT 127.0.0.1" "allow_anonymous true" \
    "cafile $BENCH_WORK/ca.pem" "certfile $BENCH_WORK/server.pem" "keyfile $BENCH_WORK/server.key"
wait_port "$PORT"
start_peers

# Packets by kind: nftables counters on the namespace's output hook (every packet on
# loopback passes it once), keyed by each target's address or port.
KINDS=(stamp icmp sip tcp dns stun mqtt)
if [[ -n ${FL_BENCH_NETNS:-} ]] && command -v nft >/dev/null; then
    COUNT_KINDS=1
    {
        echo "table inet flwire {"
        for k in "${KINDS[@]}"; do echo "    counter ${k}_up {}"; echo "    counter ${k}_down {}"; done
        echo "    chain out {"
        echo "        type filter hook output priority 0; policy accept;"
        echo "        icmp type echo-request counter name \"icmp_up\""
        echo "        icmp type echo-reply counter name \"icmp_down\""
        for kp in "tcp tcp ${TCP##*:}" "mqtt tcp $PORT" "stamp udp ${STAMP##*:}" "sip udp ${SIP##*:}" \
            "dns udp ${DNS##*:}" "stun udp ${STUN##*:}"; do
            read -r k proto port <<<"$kp"
            echo "        $proto dport $port counter name \"${k}_up\""
            echo "        $proto sport $port counter name \"${k}_down\""
        done
        echo "    }"
        echo "}"
    } | nft -f -
else
    COUNT_KINDS=
    log "not in a network namespace of its own (needs root and unshare): no traffic by kind"
fi
# "kind packets bytes_sent bytes_received" per line (sent: from the agent).
kind_counters() {
    local k
    for k in "${KINDS[@]}"; do
        { nft list counter inet flwire "${k}_up"; nft list counter inet flwire "${k}_down"; } |
            awk -v k="$k" '/packets/ {
                for (i = 1; i < NF; i++) { if ($i == "packets") p += $(i + 1); if ($i == "bytes") b[++n] = $(i + 1) }
            } END { print k, p, b[1], b[2] }'
    done
}

SITE=acme-hq
{
    cat <<EOF
site = "$SITE"
isp = "LoopNet"
window_seconds = $WINDOW
state_dir = "$BENCH_WORK/state"
[mqtt]
url = "mqtts://localhost:$PORT"
ca_file = "$BENCH_WORK/ca.pem"
EOF
    agent_targets default
} >agent.toml
"$AGENT" check --config agent.toml >/dev/null

TOPIC="faultline/v1/sites/$SITE/report"
spawn mosquitto_sub -p "$PLAIN_PORT" -t "$TOPIC" -F '%l' >sizes
spawn env RUST_LOG=warn "$AGENT" run --config agent.toml 2>agent.log
AGENT_PID=$BENCH_PID

# The agent's connection to the broker (source port != $PORT, destination $PORT).
conn_stats() {
    ss -tinH state established "( dport = :$PORT )" 2>/dev/null | tr ' ' '\n' |
        awk -F: '/^bytes_sent:/ {bs=$2} /^bytes_received:/ {br=$2} /^segs_out:/ {so=$2} /^segs_in:/ {si=$2}
                 END {printf "%d %d %d %d\n", bs, br, so, si}'
}
# The agent's end of that connection (address:port): the same at both ends of the period.
conn_id() { ss -tnH state established "( dport = :$PORT )" 2>/dev/null | awk '{print $3}' | paste -sd,; }
# Skip the connection set-up (TLS handshake, CONNECT, online status): measure from
# the first report on.
log "waiting for the first report, then measuring ${RUN} s"
for _ in $(seq 150); do [[ -s sizes ]] && break; sleep 0.2; done
[[ -s sizes ]] || { log "no report within 30 s"; cat agent.log >&2; exit 1; }
read -r bs0 br0 so0 si0 < <(conn_stats)
c0=$(conn_id)
n0=$(wc -l <sizes)
[[ -z $COUNT_KINDS ]] || nft reset counters table inet flwire >/dev/null
sleep "$RUN"
read -r bs1 br1 so1 si1 < <(conn_stats)
c1=$(conn_id)
n1=$(wc -l <sizes)
[[ -z $COUNT_KINDS ]] || kind_counters >kinds
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true
reports=$((n1 - n0))
((reports > 0)) || { log "no report during the measured period"; exit 1; }
# One connection throughout and a report every window, or the figures mean nothing.
if [[ $c0 != "$c1" ]] || ((reports < RUN / WINDOW - 1)); then
    log "the agent's connection changed ($c0 -> $c1) or reports went missing ($reports in ${RUN} s); its log:"
    grep -vE ' (DEBUG|TRACE) ' agent.log | tail -20 >&2
    exit 1
fi
payload=$(sort -n sizes | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
pings=$((RUN / KEEPALIVE))

# Measured figures, and a model of one report from the protocols' framing for the
# breakdown: MQTT 3.1.1 PUBLISH QoS 1 (fixed header, remaining length, topic length,
# topic, packet id), TLS 1.3 record (5 header + 1 content type + 16 tag), TCP/IP 52;
# PUBACK 4 bytes; PINGREQ/PINGRESP 2 bytes each.
read -r up down per up_per month month_up model_mqtt model_up model_down <<<"$(awk \
    -v bs=$((bs1 - bs0)) -v br=$((br1 - br0)) -v so=$((so1 - so0)) -v si=$((si1 - si0)) \
    -v n="$reports" -v p="$payload" -v topic=${#TOPIC} -v w="$WINDOW" -v k="$KEEPALIVE" '
BEGIN {
    up = bs + 52 * so; down = br + 52 * si
    month = 30 * 86400 / 10
    rem = 2 + topic + 2 + p
    mqtt = 1 + (rem < 128 ? 1 : (rem < 16384 ? 2 : 3)) + 2 + topic + 2
    ping = w / k
    model_up = p + mqtt + 22 + 52 + 52 + ping * (2 + 22 + 52 + 52)
    model_down = 4 + 22 + 52 + ping * (2 + 22 + 52)
    printf "%d %d %.0f %.0f %.0f %.0f %d %.0f %.0f\n", up, down, (up + down) / n, up / n,
        (up + down) / n * month / 1e6, up / n * month / 1e6, mqtt, model_up, model_down
}')"

md "## Agent: bytes on the wire per report, TLS and MQTT included" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The agent publishes over \`mqtts://\` (rustls with ring, TLS 1.3) to Mosquitto's TLS
listener on loopback, with the same 10 targets as above and ${WINDOW} s windows; \`ss -ti\` gives
the agent connection's TCP payload bytes and segments in each direction over ${RUN} s from the
first report on (handshake and CONNECT excluded); every segment is counted with 52 bytes
of IPv4 + TCP headers (with timestamps), as on a real link."
md "" "| | TLS bytes | segments | on the wire |" "|---|---:|---:|---:|"
mdf '| agent → broker (%d reports, ~%d pings) | %s | %d | %s |\n' "$reports" "$pings" \
    "$(thousands $((bs1 - bs0)))" $((so1 - so0)) "$(thousands "$up")"
mdf '| broker → agent (%d PUBACKs, ~%d PINGRESPs) | %s | %d | %s |\n' "$reports" "$pings" \
    "$(thousands $((br1 - br0)))" $((si1 - si0)) "$(thousands "$down")"
mdf '| **per report** (payload median %d bytes) | | | **%d up + down (%d up)** |\n' "$payload" "$per" "$up_per"
mdf '| month at 10 s windows (259,200 reports) | | | **%d MB up + down (%d MB up)** |\n' "$month" "$month_up"
md "" "Where a report's bytes go, from the protocols' framing around the measured payload:
payload $payload, MQTT PUBLISH $model_mqtt (topic ${#TOPIC} + lengths + packet id), TLS record 22,
TCP/IP 52, then the PUBACK (4 + 22 + 52), the agent's TCP ACK of it (52), and
${WINDOW}/${KEEPALIVE} of a keepalive ping exchange (PINGREQ 2 + 22 + 52 and its ACK 52 up, PINGRESP
2 + 22 + 52 down): $model_up up + $model_down down = $((model_up + model_down)) bytes, against
$up_per + $((per - up_per)) = $per measured."
md "" "DESIGN's budget, \"≤ 150 MB a month, TLS and MQTT included\", is for what a site
sends (up); the summary gives both. Levers, in order of size: the report payload (shared
wire format), a longer \`window_seconds\`, batching several windows per publish on metered
links (not built), \`keepalive_seconds\`."
if ((RUN < 2 * KEEPALIVE)); then
    md "" "(A run shorter than two keepalive periods weighs the pings unevenly.)"
fi

# Probe traffic by kind, from the counters: per window and a month of windows.
if [[ -n $COUNT_KINDS ]]; then
    # "kind targets what" for the table; targets divide the monthly figure.
    declare -A TARGETS=([stamp]=1 [icmp]=4 [sip]=1 [tcp]=2 [dns]=1 [stun]=1 [mqtt]=1)
    declare -A WHAT=([stamp]="voice stream: a 5 s burst of 50 packets/s a window (default), G.711 framing, 44-byte test packets"
        [icmp]="echo" [sip]="OPTIONS over UDP, one a window" [tcp]="connect and close, one a window"
        [dns]="A query over UDP, one a window" [stun]="Binding request, one a window"
        [mqtt]="the reports: MQTT over TLS, PUBACKs and pings (beside \`ss\` above)")
    windows=$(awk -v r="$RUN" -v w="$WINDOW" 'BEGIN {print r / w}')
    month_windows=$((30 * 86400 / WINDOW))
    human() { awk -v b="$1" 'BEGIN { if (b >= 1e9) printf "%.1f GB", b / 1e9; else printf "%.0f MB", b / 1e6 }'; }
    md "" "### Probe traffic by kind" ""
    mdf '%s
' "The run has a network namespace of its own; nftables counters on its output hook count
every IP packet (IP and transport headers included, no link layer) to and from each target
over the same ${RUN} s ($windows windows), by the target's address or port. Per target and a
month of ${WINDOW} s windows ($(thousands "$month_windows")), both directions:"
    md "" "| kind | targets | what | packets a window | bytes a window (sent + received) | a month per target (sent) |" \
        "|---|---:|---|---:|---:|---:|"
    total=0
    total_up=0
    while read -r k packets up down; do
        per_window=$(awk -v b=$((up + down)) -v w="$windows" 'BEGIN {printf "%.0f", b / w}')
        up_window=$(awk -v b="$up" -v w="$windows" 'BEGIN {printf "%.0f", b / w}')
        per_month=$(awk -v b="$per_window" -v m="$month_windows" -v t="${TARGETS[$k]}" 'BEGIN {printf "%.0f", b * m / t}')
        up_month=$(awk -v b="$up_window" -v m="$month_windows" -v t="${TARGETS[$k]}" 'BEGIN {printf "%.0f", b * m / t}')
        total=$((total + per_window * month_windows))
        total_up=$((total_up + up_window * month_windows))
        label=$k
        [[ $k == mqtt ]] && label=reports
        [[ $k == icmp ]] && WHAT[icmp]="echo: $(awk -v p="$packets" -v w="$windows" 'BEGIN {printf "%.0f", p / w / 8}') a window each"
        mdf '| %s | %s | %s | %s | %s + %s | %s (%s) |\n' "$label" "${TARGETS[$k]}" "${WHAT[$k]}" \
            "$(awk -v p="$packets" -v w="$windows" 'BEGIN {printf "%.1f", p / w}')" \
            "$(thousands "$up_window")" "$(thousands $((per_window - up_window)))" \
            "$(human "$per_month")" "$(human "$up_month")"
        fact "MONTH_$(tr '[:lower:]' '[:upper:]' <<<"$k")" "$(human "$per_month")"
        fact "MONTH_$(tr '[:lower:]' '[:upper:]' <<<"$k")_SENT" "$(human "$up_month")"
    done <kinds
    mdf '| **site total** | 10 | probes and reports | | | **%s a month (%s sent)** |\n' "$(human "$total")" "$(human "$total_up")"
    md "" "The voice stream is the bulk; \`stamp_seconds\`, \`stamp_every\` and \`pps\` set it (the
metered-link profile \`agent/agent.metered.toml\` keeps the site under 500 MB a month)."
    fact MONTH_SITE "$(human "$total")"
    fact MONTH_SITE_SENT "$(human "$total_up")"
fi

if grep -qE ' (WARN|ERROR) ' agent.log; then
    md "" "Agent log (warnings and errors, first lines):" "" '```'
    grep -E ' (WARN|ERROR) ' agent.log | head -10 >&3
    md '```'
fi

fact WIRE_UP "$up_per"
fact WIRE_BOTH "$per"
fact MONTH_UP "$month_up"
fact MONTH_BOTH "$month"

summary_row "$BUDGET_MONTH" "$up_per bytes up per report → **$month_up MB a month sent**; $month MB counting the broker's PUBACKs and pings too" \
    "$(met "$month_up" "<=" 150)" "$CMD"
