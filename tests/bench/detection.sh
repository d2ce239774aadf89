#!/usr/bin/env bash
# Detection and clear latency, in windows, per fault scenario: runs the lab's
# end-to-end scenarios (tests/tests/lab.rs: real agents, Mosquitto, Kamailio,
# coturn, reflectors, the collector; 1 s windows) once per fault phase and prints
# a Markdown section for BENCHMARKS.md.
#
#   bash tests/bench/detection.sh                 # faults start/end 25 % into a window
#   PHASES="0.05 0.5 0.95" bash tests/bench/detection.sh
#
# A latency is counted from the moment the fault starts (or ends) to the `at_ms`
# of the collector evaluation that shows (or clears) the verdict. DESIGN.md's
# budget: shown within 3 windows of onset, cleared within 4 of the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
PHASES=${PHASES:-0.25}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo build -q -p faultline-agent -p faultline-collector
cargo test -q -p faultline-tests --test lab --no-run
start=$(date +%s)
for phase in $PHASES; do
    FAULTLINE_LAB_PHASE=$phase cargo test -q -p faultline-tests --test lab -- \
        --nocapture --test-threads 1 >>"$log" 2>&1 || {
        echo "lab scenarios failed at phase $phase:" >&2
        grep -E "panicked|FAILED|failed" "$log" >&2 || true
        exit 1
    }
done
wall=$(($(date +%s) - start))

echo "## Detection and clear latency (fault-injection lab)"
echo
echo "Real processes on one machine: 4 agents (2 ISPs), Mosquitto, 2 providers (STAMP"
echo "reflector, Kamailio, coturn), the collector; 1 s windows; faults injected on UDP"
echo "impairment relays (and, as root, nftables in network namespaces). Budget"
echo "(DESIGN.md): shown ≤ 3 windows after onset, cleared ≤ 4 windows after the end."
echo
echo "| scenario | fault phase | shown after (windows) | cleared after (windows) | within budget |"
echo "|---|---|---|---|---|"
grep '^LAB-LATENCY' "$log" | while read -r _ fields; do
    declare -A f=()
    for kv in $fields; do f[${kv%%=*}]=${kv#*=}; done
    ok=$(awk -v d="${f[detect_windows]}" -v c="${f[clear_windows]}" \
        'BEGIN { print (d <= 3 && c <= 4) ? "yes" : "no" }')
    echo "| ${f[scenario]} | ${f[phase]} | ${f[detect_windows]} | ${f[clear_windows]} | $ok |"
done
echo
restart=$(grep '^LAB-BROKER-RESTART windows=' "$log" | tail -1 | cut -d' ' -f2-)
echo "Broker restart (5 windows down): ${restart:-not run}."
echo
echo "Suite wall time: ${wall} s for phase(s) ${PHASES}."
