#!/usr/bin/env bash
# Bytes on the wire per report, MQTT and TLS included: the agent publishes through
# Mosquitto's TLS listener on loopback, and `ss -ti` reports what its connection sent
# and received (TCP payload bytes and segments; each segment is counted with 52 bytes
# of IPv4 + TCP headers with timestamps, as on a real link). Prints its BENCHMARKS.md
# section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/agent_wire.sh [SECONDS] [WINDOW_SECONDS]
#
# Defaults: 120 s (QUICK=1: 30 s) of the default 10 s windows, so keepalive pings
# (every 60 s) weigh on each report as they do at defaults. The same 10 targets as
# agent_rss.sh. Needs mosquitto, mosquitto_sub, openssl, ss (iproute2) and root (ICMP).
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

RUN=${1:-$(pick 120 30)}
WINDOW=${2:-10}
KEEPALIVE=60 # the agent's default keepalive_seconds
CMD=$(bench_cmd bash tests/bench/agent_wire.sh "$@")

require openssl openssl
require ss iproute2
require mosquitto_sub mosquitto-clients
build_agent
cd "$BENCH_WORK"

ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj '/CN=bench CA' 2>/dev/null
openssl req "${ec[@]}" -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
    -extfile server.ext 2>/dev/null

PORT=$(free_port tcp)
PLAIN_PORT=$(free_port tcp)
STAMP_PORT=$(free_port udp)
start_mosquitto "$PLAIN_PORT" "listener $PORT 127.0.0.1" "allow_anonymous true" \
    "cafile $BENCH_WORK/ca.pem" "certfile $BENCH_WORK/server.pem" "keyfile $BENCH_WORK/server.key"
wait_port "$PORT"
spawn "$AGENT" reflect --listen "127.0.0.1:$STAMP_PORT" 2>/dev/null

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
    for t in "gw lan icmp 127.0.0.1" "isp-hop isp icmp 127.0.0.2" "anchor-1 internet icmp 127.0.0.3" \
        "anchor-2 internet tcp 127.0.0.1:$PLAIN_PORT" "voipco-media provider stamp 127.0.0.1:$STAMP_PORT" \
        "voipco-sip provider sip 127.0.0.1:5" "voipco-stun provider stun 127.0.0.1:7" \
        "voipco2-edge provider tcp 127.0.0.1:$PLAIN_PORT" "voipco2-media provider icmp 127.0.0.4"; do
        read -r name layer kind host <<<"$t"
        printf '[[target]]\nname = "%s"\nlayer = "%s"\nkind = "%s"\nhost = "%s"\n' "$name" "$layer" "$kind" "$host"
        [[ $layer == provider ]] && printf 'provider = "%s"\n' "${name%%-*}"
    done
    printf '[[target]]\nname = "isp-dns"\nlayer = "isp"\nkind = "dns"\nhost = "localhost"\nserver = "127.0.0.1:9"\n'
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
# Skip the connection set-up (TLS handshake, CONNECT, online status): measure from
# the first report on.
log "waiting for the first report, then measuring ${RUN} s"
for _ in $(seq 150); do [[ -s sizes ]] && break; sleep 0.2; done
[[ -s sizes ]] || { log "no report within 30 s"; cat agent.log >&2; exit 1; }
read -r bs0 br0 so0 si0 < <(conn_stats)
n0=$(wc -l <sizes)
sleep "$RUN"
read -r bs1 br1 so1 si1 < <(conn_stats)
n1=$(wc -l <sizes)
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" || true
reports=$((n1 - n0))
((reports > 0)) || { log "no report during the measured period"; exit 1; }
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

summary_row "$BUDGET_MONTH" "$up_per bytes up per report → **$month_up MB a month sent**; $month MB counting the broker's PUBACKs and pings too" \
    "$(met "$month_up" "<=" 150)" "$CMD"
