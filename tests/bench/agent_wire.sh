#!/usr/bin/env bash
# Bytes on the wire per report, MQTT and TLS included: the agent publishes through
# Mosquitto's TLS listener on loopback, and `ss -ti` reports what its connection sent
# and received (TCP payload bytes and segments; each segment is counted with 52 bytes
# of IPv4 + TCP headers with timestamps, as on a real link).
#
#   bash tests/bench/agent_wire.sh [SECONDS] [WINDOW_SECONDS]
#
# Defaults: 120 s of the default 10 s windows, so keepalive pings (every 60 s) weigh
# on each report as they do at defaults. The same 10 targets as agent_rss.sh. Needs mosquitto, openssl,
# ss (iproute2) and root (ICMP).
set -euo pipefail

RUN=${1:-120}
WINDOW=${2:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --quiet --profile agent -p faultline-agent --manifest-path "$ROOT/Cargo.toml"
AGENT=$TARGET_DIR/agent/faultline-agent
cd "$WORK"

ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj '/CN=bench CA' 2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj '/CN=localhost' 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
PORT=$(free_port SOCK_STREAM)
PLAIN_PORT=$(free_port SOCK_STREAM)
STAMP_PORT=$(free_port SOCK_DGRAM)
cat > mosquitto.conf <<EOF
user root
listener $PLAIN_PORT 127.0.0.1
allow_anonymous true
listener $PORT 127.0.0.1
allow_anonymous true
cafile $WORK/ca.pem
certfile $WORK/server.pem
keyfile $WORK/server.key
EOF
mosquitto -c mosquitto.conf >/dev/null 2>&1 & PIDS+=($!)
"$AGENT" reflect --listen "127.0.0.1:$STAMP_PORT" 2>/dev/null & PIDS+=($!)
sleep 1

{
cat <<EOF
site = "acme-hq"
isp = "LoopNet"
window_seconds = $WINDOW
[mqtt]
url = "mqtts://localhost:$PORT"
ca_file = "$WORK/ca.pem"
EOF
for t in "gw lan icmp 127.0.0.1" "isp-hop isp icmp 127.0.0.2" "anchor-1 internet icmp 127.0.0.3" \
         "anchor-2 internet tcp 127.0.0.1:$PLAIN_PORT" "voipco-media provider stamp 127.0.0.1:$STAMP_PORT" \
         "voipco-sip provider sip 127.0.0.1:5" "voipco-stun provider stun 127.0.0.1:7" \
         "voipco2-edge provider tcp 127.0.0.1:$PLAIN_PORT" "voipco2-media provider icmp 127.0.0.4"; do
    set -- $t
    printf '[[target]]\nname = "%s"\nlayer = "%s"\nkind = "%s"\nhost = "%s"\n' "$1" "$2" "$3" "$4"
    [ "$2" = provider ] && printf 'provider = "%s"\n' "${1%%-*}"
done
printf '[[target]]\nname = "isp-dns"\nlayer = "isp"\nkind = "dns"\nhost = "localhost"\nserver = "127.0.0.1:9"\n'
} > agent.toml
"$AGENT" check --config agent.toml > /dev/null

mosquitto_sub -p "$PLAIN_PORT" -t 'faultline/v1/sites/acme-hq/report' -F '%l' > sizes & PIDS+=($!)
RUST_LOG=warn "$AGENT" run --config agent.toml 2> agent.log & AGENT_PID=$!
PIDS+=($AGENT_PID)

# The agent's connection to the broker (source port != $PORT, destination $PORT).
conn_stats() {
    ss -tinH state established "( dport = :$PORT )" 2>/dev/null | tr ' ' '\n' |
        awk -F: '/^bytes_sent:/ {bs=$2} /^bytes_received:/ {br=$2} /^segs_out:/ {so=$2} /^segs_in:/ {si=$2}
                 END {printf "%d %d %d %d\n", bs, br, so, si}'
}
# Skip the connection set-up (TLS handshake, CONNECT, online status): measure from
# the first report on.
for _ in $(seq 100); do [ -s sizes ] && break; sleep 0.2; done
read -r bs0 br0 so0 si0 < <(conn_stats)
n0=$(wc -l < sizes)
sleep "$RUN"
read -r bs1 br1 so1 si1 < <(conn_stats)
n1=$(wc -l < sizes)
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true

reports=$((n1 - n0))
awk -v bs=$((bs1 - bs0)) -v br=$((br1 - br0)) -v so=$((so1 - so0)) -v si=$((si1 - si0)) \
    -v n="$reports" -v run="$RUN" -v payload="$(sort -n sizes | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" '
BEGIN {
    up = bs + 52 * so; down = br + 52 * si
    printf "reports:            %d in %d s (payload median %d bytes, postcard)\n", n, run, payload
    printf "agent -> broker:    %d TLS bytes in %d segments = %d bytes on the wire\n", bs, so, up
    printf "broker -> agent:    %d TLS bytes in %d segments = %d bytes on the wire\n", br, si, down
    per = (up + down) / n
    printf "per report:         %.0f bytes up + down (%.0f up), keepalive pings included\n", per, up / n
    month = 30 * 86400 / 10
    printf "month at 10 s:      %.0f MB up + down (%d reports)\n", per * month / 1e6, month
}'
