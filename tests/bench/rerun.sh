#!/usr/bin/env bash
# Re-runs one benchmark of tests/bench/run.sh and puts its fresh section and summary
# rows in place of the ones BENCHMARKS.md has, saying so in the file's header (which
# benchmark, at which commit, when). For a benchmark that failed in a full run for a
# reason since fixed, without another 40-minute run; the other figures stay those of
# the full run, whose commit the header keeps. A benchmark new since the full run is
# added: its rows and its section where run.sh's orders (ORDER, BENCHES) put them.
#
#   bash tests/bench/rerun.sh ingest        # a name from run.sh's BENCHES
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

name=${1:?usage: rerun.sh NAME (a benchmark of tests/bench/run.sh)}
OUT=${BENCH_OUT:-$BENCH_ROOT/BENCHMARKS.md}
cd "$BENCH_ROOT" || exit 1
entry=$(grep -oE "\"$name\|[^\"]+\"" tests/bench/run.sh | head -1 | tr -d '"')
[[ -n $entry ]] || { log "no benchmark named $name in tests/bench/run.sh"; exit 2; }
IFS='|' read -r _ cmd keys <<<"$entry"
[[ -f $OUT ]] || { log "$OUT missing: run tests/bench/run.sh first"; exit 2; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")

log "=== $cmd"
rows=$BENCH_WORK/rows
section=$BENCH_WORK/section.md
: >"$rows"
BENCH_SUMMARY=$rows BENCH_FACTS=$BENCH_WORK/facts bash "${cmd#bash }" >"$section"

# The commands of the benchmarks after this one, in run.sh's order.
later=$(grep -oE '^    "[a-z_]+\|bash [^|]+' tests/bench/run.sh | cut -d'|' -f2 | sed -n "\|^$cmd\$|,\$p" | tail -n +2)
# The budgets of the summary rows after this benchmark's, in run.sh's ORDER.
read -ra order <<<"$(sed -nE 's/^ORDER=\((.*)\)$/\1/p' tests/bench/run.sh)"
last_key=${keys##* }
later_budgets=""
past=no
for k in "${order[@]}"; do
    if [[ $past == yes ]]; then
        v=BUDGET_$k
        later_budgets+="${!v:-}"$'\n'
    fi
    if [[ $k == "$last_key" ]]; then past=yes; fi
done
python3 - "$OUT" "$name" "$cmd" "$section" "$rows" "$commit" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$later" "$later_budgets" <<'PY'
import sys
out, name, cmd, section_file, rows_file, commit, when, later, later_budgets = sys.argv[1:]
later = [c for c in later.split("\n") if c]
later_budgets = {b for b in later_budgets.split("\n") if b}
text = open(out).read()
section = open(section_file).read().rstrip("\n") + "\n"
rows = [r for r in open(rows_file).read().splitlines() if r.strip()]
lines = text.split("\n")

# Summary rows: those whose command cell is this benchmark's, replaced in place.
tag = "`%s`" % cmd
idx = [i for i, l in enumerate(lines) if l.startswith("| ") and l.rstrip().endswith(tag + " |")]
if idx:
    first = idx[0]
    lines = [l for i, l in enumerate(lines) if i not in idx]
    lines[first:first] = rows
else:
    # New: before the first row of a budget later in run.sh's ORDER, else after the last row.
    end = next(i for i in range(lines.index("## Summary"), len(lines)) if lines[i].startswith("| "))
    while end < len(lines) and lines[end].startswith("| "):
        if lines[end][2:].split(" | ")[0] in later_budgets:
            break
        end += 1
    lines[end:end] = rows

# Header: say what was re-run; this benchmark no longer failed.
hdr_end = next(i for i, l in enumerate(lines) if l.startswith("## "))
for i in range(hdr_end):
    if lines[i].startswith("| failed | "):
        rest = [n for n in lines[i][len("| failed | "):-2].split() if n != name]
        lines[i] = "| failed | %s |" % " ".join(rest) if rest else None
    # An earlier re-run of the same benchmark is superseded by this one.
    elif lines[i].startswith("| re-run | ") and lines[i].endswith("(`bash tests/bench/rerun.sh %s`): its section and summary rows; every other figure is the full run's |" % name):
        lines[i] = None
lines = [l for l in lines if l is not None]
hdr_end = next(i for i, l in enumerate(lines) if l.startswith("## "))
last_row = max(i for i in range(hdr_end) if lines[i].startswith("| "))
lines.insert(last_row + 1, "| re-run | `%s` alone at %s, %s (`bash tests/bench/rerun.sh %s`): its section and summary rows; every other figure is the full run's |" % (cmd, commit, when, name))

# The section: the one whose text names this benchmark's command.
text = "\n".join(lines)
parts = text.split("\n## ")
new = section[3:] if section.startswith("## ") else section
for k in range(1, len(parts)):
    if cmd in parts[k] and not parts[k].startswith("Summary"):
        parts[k] = new
        break
else:
    # New: before the first later benchmark's section, or at the end.
    at = next((k for k in range(1, len(parts)) for c in later
               if c in parts[k] and not parts[k].startswith("Summary")), len(parts))
    parts[at:at] = [new.rstrip("\n") + "\n"]
open(out, "w").write("\n## ".join(parts).rstrip("\n") + "\n")
PY
log "rewrote $name's section and summary rows in $OUT"
