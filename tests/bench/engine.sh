#!/usr/bin/env bash
# The collector's diagnosis engine alone at 10,000 and 100,000 sites × 10 targets: RSS and time
# per evaluation, from `collector/examples/engine_bench.rs`. Prints its BENCHMARKS.md
# section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/engine.sh [SITES [TARGETS [WINDOWS]]]   # both 10000 and 100000 sites, 10 targets, 20 windows (about a minute)
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

# Default: 10,000 and 100,000 sites (DESIGN's one-node budgets), each 10 targets, 20
# windows (about a minute); arguments run one size only.
SIZES=("${1:-10000}")
[[ $# -eq 0 ]] && SIZES=(10000 100000)
TARGETS=${2:-10}
WINDOWS=${3:-20}
CMD=$(bench_cmd bash tests/bench/engine.sh "$@")

build_release -p faultline-collector --example engine_bench
rows=()
for SITES in "${SIZES[@]}"; do
    log "engine_bench $SITES sites × $TARGETS targets, $WINDOWS windows"
    "$CARGO_TARGET_DIR/release/examples/engine_bench" "$SITES" "$TARGETS" "$WINDOWS" >"$BENCH_WORK/out" 2>"$BENCH_WORK/err"
    cat "$BENCH_WORK/err" >&2
    # The example prints a Markdown table: header, rule, one row.
    row=$(grep -E '^\| [0-9]' "$BENCH_WORK/out" | tail -1)
    [[ -n $row ]] || { log "no result row from engine_bench"; cat "$BENCH_WORK/out" >&2; exit 1; }
    header=$(grep -E '^\|' "$BENCH_WORK/out" | head -2)
    rows+=("$row")
done

md "## Collector: 10,000 and 100,000 sites × 10 targets through the engine" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The example (\`collector/examples/engine_bench.rs\`, run by the script in release) feeds
the fleet simulator's sites (\`faultline_lab::fleet\`: 20 ISPs, $TARGETS targets each; ten
are the gateway, two ISP and two internet targets, and media, SIP and STUN of
\`voipco\` plus media and SIP of its alternate \`voipco2\`) through the engine for
$WINDOWS windows as encoded postcard reports on their topics, with provider
\`voipco\` down everywhere in the middle third. It times \`Engine::handle_timeout\` at
each window (one evaluation: silence, the fleet stage's ISP/provider/route tallies
from every site's latches, site causes, incidents, verdict diffing, and the snapshot
for pages) and \`Engine::handle_message\` per report (decoding, de-dup, the site
stage's judgement and its summary to the fleet stage). Its MB are MiB (2^20 bytes);
the budgets are read as 150,000,000 and 1,000,000,000 bytes."
md ""
md "$header"
for r in "${rows[@]}"; do md "$r"; done
md "" "The RSS includes the simulated fleet's site list and one chunk of 1,000 encoded
reports (reports are made a chunk at a time, untimed); the max evaluation is the
window in which every site's verdict changes at once. Evaluation is O(sites ×
providers): one pass over the sites for ISP, provider and route tallies, one for
site causes, one to diff verdicts. Per site the engine keeps its boots and de-dup
runs, its targets (at most 64: id, baseline, latest values), its health by layer and
latches, and its verdict; ids are shared, and a site's targets are shared with the
pages' view until they change. The whole service's RSS at 10,000 sites (history,
HTTP, metrics on) is in the ingest section below."

for r in "${rows[@]}"; do
    IFS='|' read -r _ sites _ _ eval_med eval_max _ _ peak _ <<<"$r"
    sites=${sites// /}
    eval_med=${eval_med// ms/}
    eval_max=${eval_max// ms/}
    peak=$(tr -d ' MB' <<<"$peak")
    peak_bytes=$(awk -v m="$peak" 'BEGIN {printf "%.0f", m * 1048576}')
    if [[ $sites == 10000 ]]; then
        summary_row "$BUDGET_SITES" "engine alone: peak ${peak} MiB ($(awk -v b="$peak_bytes" 'BEGIN {printf "%.1f", b / 1e6}') MB)" \
            "$(met "$peak_bytes" "<=" 150000000)" "$CMD"
    elif [[ $sites == 100000 ]]; then
        summary_row "$BUDGET_NODE" "engine alone: peak ${peak} MiB ($(awk -v b="$peak_bytes" 'BEGIN {printf "%.1f", b / 1e6}') MB)" \
            "$(met "$peak_bytes" "<=" 1000000000)" "$CMD"
        max_us=$(awk -v m="$eval_max" 'BEGIN {printf "%.0f", m * 1000}')
        summary_row "$BUDGET_EVAL" "${eval_med// /} ms median, ${eval_max// /} ms max (budget 1,000 ms)" \
            "$(met "$max_us" "<=" 1000000)" "$CMD"
    fi
done
