#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# The benchmark command: runs every benchmark and writes BENCHMARKS.md (the whole
# file, regenerated): a header saying where and when, a summary table with each
# figure beside its budget from DESIGN.md, then one section per benchmark.
#
#   bash tests/bench/run.sh             # the real run (about 30 minutes on 2 cores)
#   QUICK=1 bash tests/bench/run.sh     # shorter durations while developing; the file says QUICK
#
# Each benchmark prints its own Markdown section on stdout and appends its summary
# rows to $BENCH_SUMMARY (protocol: tests/bench/lib.sh), and the figures README.md
# quotes to $BENCH_FACTS: a full run then rewrites README's generated blocks from them
# (tests/bench/readme.sh). A benchmark that fails leaves its budgets marked "failed"
# with the reason; the others are still written, and this script exits 1 at the end.
# BENCH_OUT writes elsewhere than BENCHMARKS.md (and leaves README.md alone).
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

OUT=${BENCH_OUT:-$BENCH_ROOT/BENCHMARKS.md}
cd "$BENCH_ROOT" || exit 1
started=$(date +%s)
load=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
if [[ $commit != not* && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit+=" with uncommitted changes"
fi

# name | command | the budgets it measures (lib.sh's BUDGET_* names)
BENCHES=(
    "sizes|bash cross-config/size_section.sh|SIZE"
    "agent_rss|bash tests/bench/agent_rss.sh|RSS CPU REPORT"
    "agent_wire|bash tests/bench/agent_wire.sh|MONTH"
    "agent_spool|bash tests/bench/agent_spool.sh|RSS_SPOOL"
    "agent_flash|bash tests/bench/agent_flash.sh|FLASH"
    "rtt_accuracy|bash tests/bench/rtt_accuracy.sh|RTT LOSS JITTER"
    "fping|bash tests/bench/fping.sh|LOSS_ICMP"
    "engine|bash tests/bench/engine.sh|SITES NODE EVAL"
    "ingest|bash collector/bench/ingest.sh|INGEST SITES"
    "cluster|bash collector/bench/cluster_section.sh|CLUSTER"
    "detection|bash tests/bench/detection.sh|DETECT CLEAR LOSSLESS"
    "reliability|bash collector/bench/reliability.sh|NOLOSS_KILL NOLOSS_AWAY NOLOSS_RTC"
    "hostile|bash collector/bench/hostile.sh|FORGED_MEMORY FORGED_INPUT FORGED_ACL"
)
# Summary order: DESIGN.md's budgets, top to bottom.
ORDER=(SIZE RSS CPU RSS_SPOOL RTT LOSS LOSS_ICMP JITTER REPORT MONTH METERED INGEST SITES NODE EVAL CLUSTER DETECT CLEAR LOSSLESS NOLOSS_KILL NOLOSS_AWAY NOLOSS_RTC FORGED_MEMORY FORGED_INPUT FORGED_ACL FLASH)

# A table cell from free text.
cell() { tr '\n|' ' /' <<<"$1" | sed -E 's/ +/ /g; s/^ //; s/ $//' | cut -c1-200; }

failed=()
timings=()
for b in "${BENCHES[@]}"; do
    IFS='|' read -r name cmd budgets <<<"$b"
    rows=$BENCH_WORK/$name.rows
    section=$BENCH_WORK/$name.md
    err=$BENCH_WORK/$name.err
    : >"$rows"
    script=${cmd#bash }
    if [[ $name == sizes && ! -f $script ]]; then
        log "sizes: $script missing"
        printf '## Gateway builds: binary sizes\n\nsizes: %s missing (it will print this section: both ARM targets against the 2.0 MB budget).\n' \
            "$script" >"$section"
        printf '| %s | sizes: `%s` missing | not measured | `%s` |\n' "$BUDGET_SIZE" "$script" "$cmd" >"$rows"
        continue
    fi
    log "=== $cmd"
    t0=$(date +%s)
    # The section to its file; the log to the terminal and to a file for the reason.
    set +e
    BENCH_SUMMARY=$rows BENCH_FACTS=$BENCH_WORK/facts bash "$script" 2>&1 >"$section" | tee "$err" >&2
    rc=${PIPESTATUS[0]}
    set -e
    timings+=("$name $(($(date +%s) - t0)) s")
    if ((rc != 0)); then
        status="exit $rc"
        ((rc > 128)) && status+=" (SIG$(kill -l $((rc - 128)) 2>/dev/null || echo "?"))"
        reason=$(cell "$status; last log line: $(grep -v '^[[:space:]]*$' "$err" | tail -1)")
        failed+=("$name")
        log "$name failed ($reason)"
        [[ -s $section ]] || printf '## %s: failed\n\n```sh\n%s\n```\n' "$name" "$(bench_cmd "$cmd")" >"$section"
        {
            printf '\n**Failed** (%s). Last lines of its log:\n\n```\n' "$reason"
            tail -15 "$err"
            printf '```\n'
        } >>"$section"
        # Every budget it measures and did not report on is marked failed.
        for key in $budgets; do
            label=BUDGET_$key
            grep -qF "| ${!label} |" "$rows" ||
                printf '| %s | failed: %s | failed | `%s` |\n' "${!label}" "$reason" "$(bench_cmd "$cmd")" >>"$rows"
        done
    fi
done
printf '| %s | not measured by this suite: computed from packet sizes in the header of `agent/agent.metered.toml` | not measured | — |\n' \
    "$BUDGET_METERED" >"$BENCH_WORK/metered.rows"
wall=$(($(date +%s) - started))

# The summary: the sizes script's rows first (its labels are its own), then by budget.
summary() {
    local all key label
    all=$(cat "$BENCH_WORK"/*.rows)
    cat "$BENCH_WORK/sizes.rows"
    for key in "${ORDER[@]}"; do
        [[ $key == SIZE ]] && continue
        label=BUDGET_$key
        grep -F "| ${!label} |" <<<"$all" || true
    done
    # Rows under labels no budget here knows, if any (besides the sizes script's).
    local known
    known=$(for key in "${ORDER[@]}"; do label=BUDGET_$key; echo "| ${!label} |"; done)
    grep -vFf <(echo "$known") <<<"$all" | grep -vxFf "$BENCH_WORK/sizes.rows" || true
}

mem=$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
{
    if quick; then
        echo "# Benchmarks — QUICK run (shortened durations: not the real figures)"
    else
        echo "# Benchmarks"
    fi
    echo
    echo "Generated by \`$(bench_cmd bash tests/bench/run.sh)\`, which runs every benchmark and"
    echo "writes this file; do not edit it by hand. Every figure is beside its budget in"
    echo "\`../shared/DESIGN.md\`, with the command that reproduces it."
    echo
    echo "| | |"
    echo "|---|---|"
    if quick; then echo "| run | **QUICK=1**: shortened durations, for developing; not the real figures |"; fi
    echo "| machine | $(uname -m), $(nproc) cores (\`nproc\`), $mem, $cpu |"
    echo "| load average at the start | $load (figures taken on a busy machine are noisy; ratios measured side by side hold better) |"
    echo "| rustc | $(rustc --version) |"
    echo "| commit | $commit |"
    echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
    per_bench=$(printf '%s, ' "${timings[@]}")
    echo "| wall time | $((wall / 60)) min $((wall % 60)) s (${per_bench%, }) |"
    if ((${#failed[@]})); then echo "| failed | ${failed[*]} |"; fi
    echo
    echo "## Summary"
    echo
    echo "| budget (DESIGN.md) | figure | met? | command |"
    echo "|---|---|---|---|"
    summary
    for b in "${BENCHES[@]}"; do
        echo
        cat "$BENCH_WORK/${b%%|*}.md"
    done
} >"$BENCH_WORK/BENCHMARKS.md"
mv "$BENCH_WORK/BENCHMARKS.md" "$OUT"
log "wrote $OUT in $((wall / 60)) min $((wall % 60)) s"
# README.md quotes the same run (its generated blocks), unless this run is QUICK or
# written elsewhere.
if quick || [[ -n ${BENCH_OUT:-} ]]; then
    log "README.md's generated blocks not rewritten (QUICK or BENCH_OUT)"
else
    touch "$BENCH_WORK/facts"
    bash tests/bench/readme.sh "$BENCH_WORK/facts" "$BENCH_ROOT/README.md"
    log "rewrote README.md's generated blocks"
fi
if ((${#failed[@]})); then
    log "failed: ${failed[*]}"
    exit 1
fi
