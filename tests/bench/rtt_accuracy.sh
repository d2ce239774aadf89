#!/usr/bin/env bash
# RTT, jitter and loss accuracy of the agent's STAMP probe against impairment injected
# by the test kit's relay, on loopback. Prints its BENCHMARKS.md section (protocol:
# tests/bench/lib.sh).
#
#   bash tests/bench/rtt_accuracy.sh [SECONDS]
#
# For each case: `faultline-agent reflect` on loopback, `faultline-relay` in front of
# it with the injected delay/jitter/loss, then `faultline-agent probe stamp` (50
# packets/s for SECONDS, default 10, QUICK=1: 5) through the relay. The relay's own
# counters give the packets it dropped, so the probe's loss count can be checked
# exactly.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

SECS=${1:-$(pick 10 5)}
PPS=50
CMD=$(bench_cmd bash tests/bench/rtt_accuracy.sh "$@")
# injected impairment (each way) : expected RTT in ms (twice the delay, plus twice
# the jitter's mean: uniform in [0, jitter]) : the jitter each way in ms
CASES=("none:0:0" "delay=10ms:20:0" "delay=25ms:50:0" "delay=10ms,loss=2%:20:0" "delay=10ms,jitter=4ms:24:4")

build_release -p faultline-agent -p faultline-tests --bin faultline-agent --bin faultline-relay
AGENT=$CARGO_TARGET_DIR/release/faultline-agent
RELAY=$CARGO_TARGET_DIR/release/faultline-relay

REFL=$(free_port udp)
spawn "$AGENT" reflect --listen "127.0.0.1:$REFL" >/dev/null 2>&1
sleep 0.5

probe() { # SPEC → one line: the ProbeResult JSON, then the relay's drop count
    local spec=$1 rp stats relay_pid json
    rp=$(free_port udp)
    stats=$BENCH_WORK/relay.stats
    # The relay reads commands on stdin: its counters once the stream is over, then quit.
    (sleep "$(awk -v s="$SECS" 'BEGIN {print s + 2}')"; echo stats; sleep 0.3; echo quit) |
        "$RELAY" --listen "127.0.0.1:$rp" --upstream "127.0.0.1:$REFL" --seed 7 --both "$spec" >"$stats" 2>&1 &
    relay_pid=$!
    BENCH_PIDS+=("$relay_pid")
    sleep 0.3
    json=$("$AGENT" probe stamp "127.0.0.1:$rp" --pps "$PPS" --seconds "$SECS" --json || true)
    wait "$relay_pid" || true
    # The last stats block (up and down lines) is the relay's final count.
    printf '%s\t%s\n' "$json" "$(grep -E '^ *(up|down):' "$stats" | tail -2 |
        grep -oE 'dropped [0-9]+' | awk '{s += $2} END {print s + 0}')"
}

: >"$BENCH_WORK/results"
for case in "${CASES[@]}"; do
    IFS=: read -r spec rtt jit <<<"$case"
    log "case $spec: $PPS packets/s for $SECS s"
    printf '%s\t%s\t%s\t%s\n' "$spec" "$rtt" "$jit" "$(probe "$spec")" >>"$BENCH_WORK/results"
done

md "## RTT, jitter and loss accuracy through the impairment relay" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "\`faultline-agent reflect\` on loopback, \`faultline-relay\` (the test kit's user-space
UDP relay, seeded) in front of it with the injected impairment both ways, and
\`faultline-agent probe stamp … --pps $PPS --seconds $SECS\` through it. The first row is the
relay path with no impairment: what a user-space relay on a busy 2-core box adds; the
next column takes it out, so it is the probe's error against the path's true RTT (a
constant error of the agent's own would cancel there too: the ICMP side-by-side with
fping below checks the absolute figure). Delayed packets also pass the relay's timer
thread (queued, then released by a spinning thread), a hop the unimpaired row does not
take, so that column still holds some relay time. p50 values are the latency summary's
bucket midpoints (error bound 0.4 %). The budget is judged on the fixed-delay rows; the
jitter row's expected RTT is a mean over random delays (its median, 24 ms, only in the
limit)." ""

# Table and summary figures from the results (JSON per case).
python3 - "$BENCH_WORK/results" "$BENCH_WORK/figures" <<'PY' >&3
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| injected (each way) | expected RTT | RTT p50 | p50 − expected | p50 − (expected + unimpaired relay path) | jitter (model) | jitter | sent | received | loss counted | relay dropped |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
base = None
errs, raws, exact, jit_lines = [], [], True, []
for spec, rtt, jit, js, dropped in rows:
    rtt, jit, dropped = float(rtt), float(jit), int(dropped)
    try:
        p = json.loads(js)
    except ValueError:
        print(f"| {spec} | probe failed: {js[:80]!r} | | | | | | | | | |")
        exact = False
        continue
    p50 = (p.get("rtt_ms") or {}).get("p50")
    lost = p["sent"] - p["received"]
    exact &= lost == dropped
    jitter = p.get("jitter_ms")
    if base is None and spec == "none":
        base, base_jitter = p50, jitter
    # RFC 3550 jitter over RTTs whose two one-way delays are uniform in [0, J]:
    # E|X - X'| with X = J (U1 + U2), i.e. 7/15 J (Irwin-Hall, n = 4).
    model = f"{7 / 15 * jit:.3f} ms" if jit else "—"
    if p50 is None:
        print(f"| {spec} | {rtt:.3f} ms | — | — | — | {model} | — | {p['sent']} | {p['received']} | {lost} | {dropped} |")
        exact = False
        continue
    raw = p50 - rtt
    net = p50 - rtt - base if spec != "none" and base is not None else 0.0
    if spec != "none" and not jit:
        errs.append(net)
        raws.append(raw)
    if jit:
        jit_lines.append(f"{jitter:.3f} ms against {7 / 15 * jit:.3f} ms modelled for jitter={jit:g}ms each way "
                         f"(unimpaired path {base_jitter:.3f} ms)")
    jt = f"{jitter:.3f} ms" if jitter is not None else "—"
    print(f"| {spec} | {rtt:.3f} ms | {p50:.3f} ms | {raw:+.3f} ms | {net:+.3f} ms | {model} | {jt} | {p['sent']} | {p['received']} | {lost} | {dropped} |")
with open(sys.argv[2], "w") as f:
    worst = max(errs, key=abs) if errs else float("nan")
    f.write(f"worst={abs(worst):.3f}\n")
    f.write(f"errs={min(errs):+.3f} … {max(errs):+.3f}\n" if errs else "errs=\n")
    f.write(f"raws={min(raws):+.3f} … {max(raws):+.3f}\n" if raws else "raws=\n")
    f.write(f"base={base:.3f}\n" if base is not None else "base=\n")
    f.write(f"exact={'yes' if exact and rows else '**no**'}\n")
    f.write("jitter=" + "; ".join(jit_lines) + "\n")
    f.write("loss=" + ", ".join(f"{int(json.loads(js)['sent']) - int(json.loads(js)['received'])} of {json.loads(js)['sent']} vs {d} dropped ({s})"
                                for s, _, _, js, d in rows if "loss" in s and js.startswith("{")) + "\n")
PY
md "" "Jitter is RFC 3550's running estimator over consecutive RTTs (gain 1/16), so one
window's value scatters around the model's mean by a few tenths of a millisecond."

fig() { sed -n "s/^$1=//p" "$BENCH_WORK/figures"; }
summary_row "$BUDGET_RTT" "$(fig errs) ms over (injected + the unimpaired relay path, $(fig base) ms); $(fig raws) ms over the injected RTT alone" \
    "$(met "$(fig worst)" "<=" 0.3)" "$CMD"
summary_row "$BUDGET_LOSS" "$(fig loss); every case counted = dropped: $(fig exact)" "$(fig exact)" "$CMD"
summary_row "$BUDGET_JITTER" "$(fig jitter)" "—" "$CMD"
