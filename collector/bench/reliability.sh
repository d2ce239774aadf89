#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# Reliability (DESIGN.md "Nothing lost"), against real Mosquitto with the queue
# settings of collector/deploy/mosquitto.conf and the release collector. Prints its
# BENCHMARKS.md section (protocol: tests/bench/lib.sh).
#
#   bash collector/bench/reliability.sh        # all three parts (QUICK=1: smaller)
#   RUNS=5 KILLS=8 SITES=50 WINDOWS=2000 bash collector/bench/reliability.sh
#   DOWN_SITES=1000 DOWN_WINDOWS=8640 bash collector/bench/reliability.sh
#
# 1. SIGKILL: SITES sites flush WINDOWS-window backlogs (the fleet simulator's
#    postcard reports, as fast as the broker takes them) while the collector is
#    SIGKILLed KILLS times at random points as history fills; then every site sends
#    all its windows again plus one new one. RUNS runs. History must hold every
#    window exactly once.
# 2. Away: the collector is down while DOWN_SITES sites report DOWN_WINDOWS windows
#    each (default: the shipped config's stated fleet, 10,000 sites x 1 hour of 10 s
#    windows); then it returns. Every window stored once; the broker's memory while
#    it holds them.
# 3. RTC-less reboot: 20 sites report live (1 s windows); 5 of them reboot without an
#    RTC (a new boot whose clock reads 1970) and send their previous boot's last
#    window, spooled, after the new boot's first report, and an earlier one again.
#    No site may go offline, the new boot must be live, every window stored once.
# Needs mosquitto, mosquitto-clients, curl, python3.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/../../tests/bench/lib.sh"
# shellcheck source=collector/bench/lib.sh
source "$BENCH_ROOT/collector/bench/lib.sh"

RUNS=${RUNS:-$(pick 3 1)}
KILLS=${KILLS:-$(pick 6 3)}
SITES=${SITES:-$(pick 50 20)}
WINDOWS=${WINDOWS:-1000}
DOWN_SITES=${DOWN_SITES:-$(pick 10000 1000)}
DOWN_WINDOWS=${DOWN_WINDOWS:-$(pick 360 36)}
settings=""
for v in RUNS KILLS SITES WINDOWS DOWN_SITES DOWN_WINDOWS; do
    if [[ -n $(printenv "$v" || true) ]]; then settings+="$v=${!v} "; fi
done
CMD=$(bench_cmd "${settings}bash collector/bench/reliability.sh")

require mosquitto_sub mosquitto-clients
require curl curl
require python3 python3
build_release -p faultline-collector -p faultline-tests --bin faultline-collector --bin faultline-fleet
BIN=$CARGO_TARGET_DIR/release/faultline-collector
FLEET=$CARGO_TARGET_DIR/release/faultline-fleet
now_ns() { date +%s%N; }
secs() { awk -v d="$1" 'BEGIN { printf "%.1f", d / 1e9 }'; }

# `wait_rows DB N TIMEOUT_S`: until history holds N rows; ROWS/DISTINCT as last read.
wait_rows() {
    local t0
    t0=$(now_ns)
    while :; do
        read -r ROWS DISTINCT < <(history_rows "$1")
        ((ROWS >= $2)) && return 0
        if (($(now_ns) - t0 > $3 * 1000000000)); then
            log "timeout: history holds $ROWS of $2"
            return 1
        fi
        sleep 0.02
    done
}

# `boots_complete DB WINDOWS`: how many sites' boots record every seq 0..WINDOWS-1.
boots_complete() {
    python3 - "$1" "$2" <<'PY'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
want = "0-%d" % (int(sys.argv[2]) - 1)
print(db.execute("SELECT count(*) FROM boots WHERE seqs = ?", (want,)).fetchone()[0])
PY
}

md "## Reliability: nothing lost" ""
md '```sh' "$CMD" '```' ""
md "DESIGN.md \"Nothing lost\": every window an agent measured reaches history exactly once.
The broker is Mosquitto with the queue settings of \`collector/deploy/mosquitto.conf\`;
the collector acknowledges a report only after its history row is committed, and
restores its de-dup from history when it starts."

# ---- 1. SIGKILL while backlogs flush ---------------------------------------------
md "" "### The collector SIGKILLed while $SITES sites flush $(thousands "$WINDOWS")-window backlogs" ""
md "Each run: a new broker and history; the collector's session registered; then the
fleet simulator publishes every site's status and $(thousands "$WINDOWS") windows as fast as the broker
acknowledges them while the collector is started and SIGKILLed $KILLS times, each time
once history has reached a random point (\"rows at each kill\"). A last start drains
the rest; then every site sends all its windows again plus one new one (an agent
resending what it never saw acknowledged): only the new ones may be added. \"boots
complete\" counts the sites whose record of stored seqs (\`boots\`) is exactly
0–$((WINDOWS - 1)) before the resend."
md "" "| run | windows sent | kills | rows at each kill | stored | distinct | boots complete | after the resend (+$SITES expected) | missing | time |"
md "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
kill_ok=0
kill_fail=0
for run in $(seq "$RUNS"); do
    start_shipped_broker
    hp=$(free_port tcp)
    db=$BENCH_WORK/kill-$run.db
    conf=$BENCH_WORK/kill-$run.toml
    collector_conf "$conf" "$db" "$hp"
    register_collector "$BIN" "$conf" "$hp"
    total=$((SITES * WINDOWS))
    mapfile -t points < <(python3 - "$run" "$total" "$KILLS" <<'PY'
import random, sys
run, n, kills = (int(a) for a in sys.argv[1:])
r = random.Random(run)
for p in sorted(r.randint(n // 50, n * 3 // 4) for _ in range(kills)):
    print(p)
PY
)
    log "run $run: $SITES sites flush $WINDOWS windows; SIGKILL at rows ${points[*]}"
    t0=$(now_ns)
    spawn "$FLEET" --url "mqtt://127.0.0.1:$MQTT_PORT" --sites "$SITES" --windows "$WINDOWS" --seed $((100 + run))
    fleet=$BENCH_PID
    # Started, then SIGKILLed as soon as history holds each point's rows (polled
    # every 2 ms by one process, so the kill lands while history fills).
    mapfile -t at_kill < <(python3 - "$BIN" "$conf" "$db" "${points[@]}" <<'PY'
import os, signal, sqlite3, subprocess, sys, time
bin_, conf, db, points = sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]]
env = dict(os.environ, FAULTLINE_LOG="error")
def rows():
    try:
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
        try:
            return c.execute("SELECT count(*) FROM windows").fetchone()[0]
        finally:
            c.close()
    except sqlite3.Error:
        return 0
for p in points:
    child = subprocess.Popen([bin_, "run", "--config", conf], env=env)
    deadline = time.time() + 600
    while rows() < p and time.time() < deadline:
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()
    print(rows(), flush=True)
PY
)
    reap "$fleet"
    spawn env FAULTLINE_LOG=error "$BIN" run --config "$conf"
    cpid=$BENCH_PID
    wait_port "$hp"
    wait_rows "$db" "$total" 900
    stored=$ROWS
    distinct=$DISTINCT
    complete=$(boots_complete "$db" "$WINDOWS")
    # Everything again, and one window more.
    "$FLEET" --url "mqtt://127.0.0.1:$MQTT_PORT" --sites "$SITES" --windows $((WINDOWS + 1)) --seed $((100 + run)) >/dev/null
    wait_rows "$db" $((total + SITES)) 900
    missing=$(api_counter "$hp" missing_windows)
    elapsed=$(secs $(($(now_ns) - t0)))
    stop "$cpid"
    stop "$MOSQ_PID"
    # Settle: anything arriving late would show now.
    read -r ROWS DISTINCT < <(history_rows "$db")
    if ((stored == total && distinct == total && complete == SITES && ROWS == total + SITES &&
        DISTINCT == ROWS && ${missing:-1} == 0)); then
        kill_ok=$((kill_ok + 1))
    else
        kill_fail=$((kill_fail + 1))
    fi
    mdf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s s |\n' "$run" "$(thousands "$total")" "${#at_kill[@]}" \
        "$(for k in "${at_kill[@]}"; do printf '%s, ' "$(thousands "$k")"; done | sed 's/, $//')" "$(thousands "$stored")" "$(thousands "$distinct")" \
        "$complete of $SITES" "+$((ROWS - total)) ($(thousands "$ROWS") rows, $(thousands "$DISTINCT") distinct)" \
        "${missing:-?}" "$elapsed"
    rm -f "$db"*
done
summary_row "$BUDGET_NOLOSS_KILL" "$kill_ok of $RUNS runs exact ($SITES sites × $(thousands "$WINDOWS") windows, $KILLS SIGKILLs each)" \
    "$(if ((kill_fail == 0)); then echo yes; else echo "**no**"; fi)" "$CMD"

# ---- 2. Away while the fleet reports ----------------------------------------------
down_total=$((DOWN_SITES * DOWN_WINDOWS))
md "" "### The collector away while $(thousands "$DOWN_SITES") sites report $(thousands "$DOWN_WINDOWS") windows each" ""
md "The shipped config is sized for 10,000 sites and a collector away for an hour of 10 s
windows (360 windows a site; its \`max_queued_messages\` adds a quarter on top). The
collector's session is registered and the collector stopped; the fleet simulator then
publishes every site's status and its windows (QoS 1, each acknowledged by the broker);
the collector starts again and drains the queue. Broker memory is Mosquitto's RSS with
the queue full, less its RSS before."
start_shipped_broker
hp=$(free_port tcp)
db=$BENCH_WORK/away.db
conf=$BENCH_WORK/away.toml
collector_conf "$conf" "$db" "$hp"
register_collector "$BIN" "$conf" "$hp"
rss0=$(awk '/VmRSS/ { printf "%.0f", $2 * 1024 }' "/proc/$MOSQ_PID/status")
log "away: $DOWN_SITES sites x $DOWN_WINDOWS windows while the collector is down"
t0=$(now_ns)
"$FLEET" --url "mqtt://127.0.0.1:$MQTT_PORT" --sites "$DOWN_SITES" --windows "$DOWN_WINDOWS" --seed 7 >/dev/null
pub_s=$(secs $(($(now_ns) - t0)))
rss1=$(awk '/VmRSS/ { printf "%.0f", $2 * 1024 }' "/proc/$MOSQ_PID/status")
per_msg=$(awk -v a="$rss0" -v b="$rss1" -v n="$down_total" 'BEGIN { printf "%.0f", (b - a) / n }')
log "away: queued in $pub_s s; broker +$(((rss1 - rss0) / 1048576)) MiB; collector returns"
t0=$(now_ns)
spawn env FAULTLINE_LOG=error "$BIN" run --config "$conf"
cpid=$BENCH_PID
wait_port "$hp"
away_ok=no
if wait_rows "$db" "$down_total" 3600; then
    drain_s=$(secs $(($(now_ns) - t0)))
    missing=$(api_counter "$hp" missing_windows)
    if ((ROWS == down_total && DISTINCT == down_total && ${missing:-1} == 0)); then away_ok=yes; fi
else
    drain_s="timeout"
fi
stop "$cpid"
stop "$MOSQ_PID"
md "" "| sites | windows each | reports queued | queued in | broker memory while full | per report | drained in | stored | distinct | missing |"
md "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
mdf '| %s | %s | %s | %s s | %s MiB | %s B | %s s | %s | %s | %s |\n' "$(thousands "$DOWN_SITES")" \
    "$(thousands "$DOWN_WINDOWS")" "$(thousands "$down_total")" "$pub_s" "$(((rss1 - rss0) / 1048576))" \
    "$per_msg" "$drain_s" "$(thousands "$ROWS")" "$(thousands "$DISTINCT")" "${missing:-?}"
rm -f "$db"*
summary_row "$BUDGET_NOLOSS_AWAY" "$(thousands "$ROWS") of $(thousands "$down_total") stored once ($(thousands "$DOWN_SITES") sites × $(thousands "$DOWN_WINDOWS") windows while away; broker ${per_msg} B a queued report)" \
    "$away_ok" "$CMD"

# ---- 3. RTC-less reboots with a spooled backlog -------------------------------------
md "" "### Gateways rebooting without an RTC, their spool sent after the new boot's reports" ""
md "20 sites (3 ISPs) report every 1 s window for 24 windows through \`mosquitto_pub\` (JSON
reports), the collector evaluating 1 s windows. At window 10, 5 of them reboot without
an RTC: window 9 of the old boot was not sent (uplink down, then the power cut); the
new boot announces itself (retained online status), sends its first report with a
clock near 1970, then the spool sends the old boot's window 9 and window 8 again.
\"Offline verdicts\" counts every \`offline\` site verdict published during the run
(a subscriber on \`faultline/v1/state/sites/#\`); the rest is read from \`/api/state\`
and history at the end."
start_shipped_broker
hp=$(free_port tcp)
db=$BENCH_WORK/rtc.db
conf=$BENCH_WORK/rtc.toml
collector_conf "$conf" "$db" "$hp" "window_seconds = 1"
spawn env FAULTLINE_LOG=warn "$BIN" run --config "$conf"
cpid=$BENCH_PID
wait_port "$hp"
register_collector_live() {
    local n _
    mosquitto_pub -p "$MQTT_PORT" -q 1 -r -t faultline/v1/sites/bench-probe/status -m '{"state":"online","boot":1}'
    for _ in $(seq 500); do
        n=$(api_counter "$hp" statuses)
        ((${n:-0} >= 1)) && break
        sleep 0.02
    done
}
register_collector_live
spawn sh -c "exec mosquitto_sub -p $MQTT_PORT -q 1 -v -t 'faultline/v1/state/sites/#' > '$BENCH_WORK/states.log'"
sub=$BENCH_PID
log "rtc: 20 sites, 24 windows of 1 s, 5 reboots at window 10"
python3 - "$MQTT_PORT" "$BENCH_WORK/rtc.expected" <<'PY'
import json, random, subprocess, sys, time
port, expected_file = sys.argv[1], sys.argv[2]
rnd = random.Random(3)
sites = ["rtc-%02d" % i for i in range(20)]
isps = ["isp-a", "isp-b", "isp-c"]
rebooting = set(sites[:5])
boot1 = {s: rnd.randrange(1, 2**32) for s in sites}
boot2 = {s: rnd.randrange(1, 2**32) for s in rebooting}
W, R = 24, 10
def status(site, boot):
    body = json.dumps({"state": "online", "boot": boot, "version": "bench", "isp": isps[sites.index(site) % 3]})
    subprocess.run(["mosquitto_pub", "-p", port, "-q", "1", "-r", "-t", "faultline/v1/sites/%s/status" % site, "-m", body], check=True)
def report(site, boot, seq, start_ms):
    probes = [{"target": "gw", "layer": "lan", "kind": "icmp", "sent": 10, "received": 10,
               "rtt_ms": {"min": 0.4, "p50": 0.5, "avg": 0.5, "p95": 0.8, "max": 1.0}},
              {"target": "anchor", "layer": "internet", "kind": "icmp", "sent": 10, "received": 10,
               "rtt_ms": {"min": 9.0, "p50": 10.0, "avg": 10.0, "p95": 12.0, "max": 14.0}},
              {"target": "voipco-media", "layer": "provider", "provider": "voipco", "kind": "stamp", "sent": 100,
               "received": 100, "rtt_ms": {"min": 20.0, "p50": 21.0, "avg": 21.0, "p95": 23.0, "max": 25.0},
               "jitter_ms": 1.0, "mos": 4.3}]
    return json.dumps({"v": 1, "site": site, "boot": boot, "seq": seq, "start_ms": start_ms,
                       "window_ms": 1000, "probes": probes}, separators=(",", ":")) + "\n"
for s in sites:
    status(s, boot1[s])
pubs = {s: subprocess.Popen(["mosquitto_pub", "-p", port, "-q", "1", "-l", "-t", "faultline/v1/sites/%s/report/json" % s],
                            stdin=subprocess.PIPE, text=True) for s in sites}
t0 = (int(time.time() * 1000) // 1000 + 1) * 1000
expected = {}
for w in range(W):
    # Agents publish a window just before it ends.
    due = t0 + w * 1000 + 900
    time.sleep(max(0, due / 1000 - time.time()))
    for s in sites:
        p = pubs[s].stdin
        if s in rebooting and w >= R:
            if w == R:
                status(s, boot2[s])
            p.write(report(s, boot2[s], w - R, (w - R) * 1000 + 3000))
            if w == R:
                p.write(report(s, boot1[s], R - 1, t0 + (R - 1) * 1000))
                p.write(report(s, boot1[s], R - 2, t0 + (R - 2) * 1000))
        elif s in rebooting and w == R - 1:
            continue
        else:
            p.write(report(s, boot1[s], w, t0 + w * 1000))
        p.flush()
for s in sites:
    pubs[s].stdin.close()
for s in sites:
    pubs[s].wait()
with open(expected_file, "w") as f:
    for s in sites:
        if s in rebooting:
            f.write("%s %d %d %d %d\n" % (s, boot1[s], R, boot2[s], W - R))
        else:
            f.write("%s %d %d 0 0\n" % (s, boot1[s], W))
PY
# Two more windows for the collector to evaluate the last reports.
sleep 2
state=$(curl -sf "127.0.0.1:$hp/api/state")
stop "$sub"
stop "$cpid"
stop "$MOSQ_PID"
read -r rtc_rows rtc_distinct < <(history_rows "$db")
offline=$(grep -c '"state":"offline"' "$BENCH_WORK/states.log" || true)
expected_rows=$(awk '{ s += $3 + $5 } END { print s }' "$BENCH_WORK/rtc.expected")
live_new=$(python3 - "$BENCH_WORK/rtc.expected" "$state" <<'PY'
import json, sys
want = {}
for line in open(sys.argv[1]):
    site, b1, n1, b2, n2 = line.split()
    if int(b2):
        want[site] = int(b2)
state = json.loads(sys.argv[2])
ok = 0
for s in state["sites"]:
    b = want.get(s["id"])
    if b and s["presence"] == "online" and s["boot"] == b and (s.get("window") or {}).get("boot") == b \
            and s["missing_windows"] == 0:
        ok += 1
print(ok)
PY
)
missing=$(printf '%s' "$state" | python3 -c 'import json,sys; print(sum(s["missing_windows"] for s in json.load(sys.stdin)["sites"]))')
rtc_ok=no
if ((offline == 0 && live_new == 5 && rtc_rows == expected_rows && rtc_distinct == expected_rows && missing == 0)); then
    rtc_ok=yes
fi
md "" "| sites | rebooted without an RTC | offline verdicts | rebooted sites live on the new boot, nothing missing | windows sent (distinct) | stored | distinct | missing |"
md "|---:|---:|---:|---:|---:|---:|---:|---:|"
mdf '| 20 | 5 | %s | %s of 5 | %s | %s | %s | %s |\n' "$offline" "$live_new" "$expected_rows" "$rtc_rows" "$rtc_distinct" "$missing"
md "" "The same cases replay deterministically in \`collector/tests/scenarios/rtc_less_*.jsonl\`
(\`cargo test -p faultline-collector --test scenarios\`); before this collector picked
the live boot by arrival, such a site went offline for good (the old boot's late
window, with its correct clock, looked newer than every report of the new boot)."
summary_row "$BUDGET_NOLOSS_RTC" "5 of 20 sites rebooted RTC-less with a spool: $offline offline verdicts, $live_new of 5 live on the new boot, $rtc_rows of $expected_rows windows stored once" \
    "$rtc_ok" "$CMD"
