#!/usr/bin/env bash
# The collector's diagnosis engine alone at 10,000 sites × 10 targets: RSS and time
# per evaluation, from `collector/examples/engine_bench.rs`. Prints its BENCHMARKS.md
# section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/engine.sh [SITES [TARGETS [WINDOWS]]]   # 10000 10 20 (a few seconds: QUICK=1 changes nothing)
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

SITES=${1:-10000}
TARGETS=${2:-10}
WINDOWS=${3:-20}
CMD=$(bench_cmd bash tests/bench/engine.sh "$@")

build_release -p faultline-collector --example engine_bench
log "engine_bench $SITES sites × $TARGETS targets, $WINDOWS windows"
"$CARGO_TARGET_DIR/release/examples/engine_bench" "$SITES" "$TARGETS" "$WINDOWS" >"$BENCH_WORK/out" 2>"$BENCH_WORK/err"
cat "$BENCH_WORK/err" >&2
# The example prints a Markdown table: header, rule, one row.
row=$(grep -E '^\| [0-9]' "$BENCH_WORK/out" | tail -1)
[[ -n $row ]] || { log "no result row from engine_bench"; cat "$BENCH_WORK/out" >&2; exit 1; }
IFS='|' read -r _ _ _ _ eval_med eval_max _ _ peak _ <<<"$row"
eval_med=${eval_med// ms/}
eval_max=${eval_max// ms/}
peak=$(tr -d ' MB' <<<"$peak")
peak_bytes=$(awk -v m="$peak" 'BEGIN {printf "%.0f", m * 1048576}')

md "## Collector: 10,000 sites × 10 targets through the engine" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The example (\`collector/examples/engine_bench.rs\`, run by the script in release) feeds
$(thousands "$SITES") sites from the fleet simulator (\`faultline_lab::fleet\`: 20 ISPs, $TARGETS targets
each; ten are the gateway, two ISP and two internet targets, and media, SIP and STUN of
\`voipco\` plus media and SIP of its alternate \`voipco2\`) through the engine for $WINDOWS
windows as encoded postcard reports on their topics, with provider \`voipco\` down
everywhere in the middle third, and times \`Engine::tick\` (one evaluation: presence, the
cross-site step, hysteresis, incidents, verdict diffing) and the per-report ingest
(decoding included). Its MB are MiB (2^20 bytes); the budget is read as 150,000,000 bytes."
md ""
grep -E '^\|' "$BENCH_WORK/out" >&3
md "" "The RSS includes the simulated fleet's site list and one chunk of 1,000 encoded
reports (reports are made a chunk at a time, untimed); the max evaluation is the
window in which every site's verdict changes at once. Evaluation is O(sites × targets):
one pass over the sites for ISP and provider tallies, one for site causes and
hysteresis, one to diff verdicts. The whole service's RSS at 10,000 sites (history,
HTTP, metrics on) is in the ingest section below."

summary_row "$BUDGET_SITES" "engine alone: peak ${peak} MiB ($(awk -v b="$peak_bytes" 'BEGIN {printf "%.1f", b / 1e6}') MB)" \
    "$(met "$peak_bytes" "<=" 150000000)" "$CMD"
summary_row "$BUDGET_EVAL" "${eval_med// /} ms median, ${eval_max// /} ms max" "—" "$CMD"
