#!/usr/bin/env bash
# RTT and loss accuracy of the agent's STAMP probe against impairment injected by the
# test kit's relay, on loopback. Prints a Markdown table for BENCHMARKS.md.
#
#   bash tests/bench/rtt_accuracy.sh
#
# For each case: `faultline-agent reflect` on loopback, `faultline-relay` in front of
# it with the injected delay/loss, then `faultline-agent probe stamp` (50 packets/s,
# 5 s) through the relay. The relay's own counters give the packets it dropped, so
# the probe's loss count can be checked exactly.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
cargo build -q --release -p faultline-agent -p faultline-tests --bin faultline-agent --bin faultline-relay \
    --manifest-path "$ROOT/Cargo.toml"
AGENT=$CARGO_TARGET_DIR/release/faultline-agent
RELAY=$CARGO_TARGET_DIR/release/faultline-relay
port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

REFL=$(port)
"$AGENT" reflect --listen 127.0.0.1:"$REFL" >/dev/null 2>&1 &
refl_pid=$!
trap 'kill $refl_pid 2>/dev/null || true' EXIT
sleep 0.5

probe() { # SPEC → one ProbeResult JSON through a fresh relay, plus the relay's drop count
    local spec=$1 rp stats
    rp=$(port)
    stats=$(mktemp)
    (sleep 7; echo stats; sleep 0.3; echo quit) | "$RELAY" --listen 127.0.0.1:"$rp" --upstream 127.0.0.1:"$REFL" \
        --seed 7 --both "$spec" >"$stats" 2>&1 &
    local relay_pid=$!
    sleep 0.3
    "$AGENT" probe stamp 127.0.0.1:"$rp" --pps 50 --seconds 5 --json || true
    wait $relay_pid || true
    # The last stats block (up and down lines) is the relay's final count.
    grep -E '^ *(up|down):' "$stats" | tail -2 | grep -oE 'dropped [0-9]+' | awk '{s+=$2} END {print s+0}'
    rm -f "$stats"
}

# Expected RTT: twice the delay, plus the jitter's mean twice (uniform in [0, jitter]).
echo "| injected (each way) | expected RTT | RTT p50 | p50 − expected | p50 − (expected + unimpaired relay path) | sent | received | loss counted | relay dropped |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
base=""
for case in "none:0" "delay=10ms:20" "delay=25ms:50" "delay=10ms,loss=2%:20" "delay=10ms,jitter=4ms:24"; do
    spec=${case%:*}
    rtt=${case##*:}
    out=$(probe "$spec")
    json=$(echo "$out" | head -1)
    dropped=$(echo "$out" | tail -1)
    line=$(python3 - "$spec" "$rtt" "$json" "$dropped" "${base:-}" <<'PY'
import json, sys
spec, rtt, js, dropped, base = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
p = json.loads(js)
p50 = (p.get("rtt_ms") or {}).get("p50", float("nan"))
base = float(base) if base else p50
lost = p["sent"] - p["received"]
print(f"{p50}|| {spec} | {rtt:.3f} ms | {p50:.3f} ms | {p50 - rtt:+.3f} ms | {p50 - rtt - (base if spec != 'none' else p50):+.3f} ms | {p['sent']} | {p['received']} | {lost} | {dropped} |")
PY
)
    [[ -z $base ]] && base=${line%%||*}
    echo "|${line#*||}"
done
