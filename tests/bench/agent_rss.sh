#!/usr/bin/env bash
# RSS and CPU of `faultline-agent run` with 10 targets, one of them a 50 packet/s STAMP
# stream to the agent's own reflector on loopback, over a measured period; and the bytes
# per report in postcard and JSON from the same run.
#
#   bash tests/bench/agent_rss.sh [SECONDS] [STAMP_SECONDS]
#
# SECONDS (default 60) is the measured period, after a 12 s warm-up. STAMP_SECONDS
# (default: absent, the agent's default burst per window) sets the stream's length per
# 10 s window; 9.5 makes it almost continuous. Needs mosquitto and mosquitto_sub, and
# root (ICMP). Builds the agent with the size-optimised `agent` profile.
set -euo pipefail

SECONDS_MEASURED=${1:-60}
STAMP_SECONDS=${2:-}
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

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
MQTT_PORT=$(free_port SOCK_STREAM)
STAMP_PORT=$(free_port SOCK_DGRAM)

cat > "$WORK/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
user root
EOF
mosquitto -c "$WORK/mosquitto.conf" >/dev/null 2>&1 & PIDS+=($!)
"$AGENT" reflect --listen "127.0.0.1:$STAMP_PORT" 2>/dev/null & PIDS+=($!)
sleep 1

stamp_extra=""
[ -n "$STAMP_SECONDS" ] && stamp_extra="stamp_seconds = $STAMP_SECONDS"

config() { # $1: format
cat <<EOF
site = "bench"
isp = "LoopNet"
window_seconds = 10
format = "$1"
[mqtt]
url = "mqtt://127.0.0.1:$MQTT_PORT"
[[target]]
name = "gw"
layer = "lan"
kind = "icmp"
host = "127.0.0.1"
[[target]]
name = "isp-hop"
layer = "isp"
kind = "icmp"
host = "127.0.0.2"
[[target]]
name = "isp-dns"
layer = "isp"
kind = "dns"
host = "localhost"
server = "127.0.0.1:9"
[[target]]
name = "anchor-1"
layer = "internet"
kind = "icmp"
host = "127.0.0.3"
[[target]]
name = "anchor-2"
layer = "internet"
kind = "tcp"
host = "127.0.0.1:$MQTT_PORT"
[[target]]
name = "voipco-media"
layer = "provider"
provider = "voipco"
kind = "stamp"
host = "127.0.0.1:$STAMP_PORT"
$stamp_extra
[[target]]
name = "voipco-sip"
layer = "provider"
provider = "voipco"
kind = "sip"
host = "127.0.0.1:5"
[[target]]
name = "voipco-stun"
layer = "provider"
provider = "voipco"
kind = "stun"
host = "127.0.0.1:7"
[[target]]
name = "voipco2-edge"
layer = "provider"
provider = "voipco2"
kind = "tcp"
host = "127.0.0.1:$MQTT_PORT"
[[target]]
name = "voipco2-media"
layer = "provider"
provider = "voipco2"
kind = "icmp"
host = "127.0.0.4"
EOF
}

config postcard > "$WORK/postcard.toml"
config json > "$WORK/json.toml"
"$AGENT" check --config "$WORK/postcard.toml" >/dev/null

# Payload sizes as the broker delivers them (mosquitto_sub %l: payload length).
mosquitto_sub -p "$MQTT_PORT" -t 'faultline/v1/sites/bench/report' -F '%l' > "$WORK/postcard.sizes" & PIDS+=($!)
mosquitto_sub -p "$MQTT_PORT" -t 'faultline/v1/sites/bench/report/json' -F '%l' > "$WORK/json.sizes" & PIDS+=($!)

RUST_LOG=warn "$AGENT" run --config "$WORK/postcard.toml" 2> "$WORK/agent.log" & AGENT_PID=$!
PIDS+=($AGENT_PID)
sleep 12

ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
HZ=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
max_rss=0
for _ in $(seq "$SECONDS_MEASURED"); do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$AGENT_PID/status")
    [ "$rss" -gt "$max_rss" ] && max_rss=$rss
    sleep 1
done
t1=$(ticks); s1=$(date +%s.%N)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$AGENT_PID/status")
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true

# A short JSON run with the same targets, for the JSON size of the same reports.
RUST_LOG=warn "$AGENT" run --config "$WORK/json.toml" 2>> "$WORK/agent.log" & JSON_PID=$!
PIDS+=($JSON_PID)
sleep 35
kill -TERM "$JSON_PID"; wait "$JSON_PID" || true
sleep 0.5

cpu=$(awk -v t0="$t0" -v t1="$t1" -v hz="$HZ" -v s0="$s0" -v s1="$s1" 'BEGIN {print (t1 - t0) / hz / (s1 - s0) * 100}')
stats() { sort -n "$1" | awk '{a[NR]=$1; s+=$1} END {if (NR) printf "%d reports, min %d, median %d, max %d, mean %.0f bytes", NR, a[1], a[int((NR+1)/2)], a[NR], s/NR; else print "no reports"}'; }
echo "agent:          $(stat -c %s "$AGENT") bytes ($AGENT, x86_64, agent profile)"
echo "stamp stream:   50 packets/s, ${STAMP_SECONDS:-default} s per 10 s window"
printf 'CPU:            %.2f %% of one core over %s s\n' "$cpu" "$SECONDS_MEASURED"
echo "RSS:            max $max_rss kB sampled each second, VmHWM $hwm kB"
echo "postcard:       $(stats "$WORK/postcard.sizes")"
echo "json:           $(stats "$WORK/json.sizes")"
if grep -qiE 'error|panick' "$WORK/agent.log"; then
    echo "agent log (warnings and errors):"; sed 's/^/  /' "$WORK/agent.log" | head -20
fi
