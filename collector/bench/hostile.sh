#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# Reliability (DESIGN.md "Nothing forged"): what one hostile site can do to the
# release collector and to the other sites, against real Mosquitto. Prints its
# BENCHMARKS.md section (protocol: tests/bench/lib.sh).
#
#   bash collector/bench/hostile.sh            # QUICK=1: a smaller fleet and flood
#   SITES=1000 FLOOD=20000 SAMPLE_S=20 bash collector/bench/hostile.sh
#
# 1. Memory and the others' evaluation: SITES honest sites (the fleet simulator, 10
#    targets, live 1 s windows, the collector evaluating 1 s windows, history in
#    SQLite) on a broker with the shipped queue settings; then one hostile site
#    floods reports (faultline-hostile flood, tests/src/bin/faultline-hostile.rs: 128 never-seen targets and
#    providers each, a new boot each, 10 s windows claimed, as fast as the broker
#    takes them). The collector's RSS, /api/state's size and the evaluation time
#    (faultline_collector_evaluation_seconds{which="last"} at each evaluation)
#    before, after FLOOD/10 and after FLOOD hostile reports; every verdict the
#    collector publishes is watched for an honest site or provider that is not ok.
# 2. Bad input: every class of it a few times from a site's own topic, each
#    counter read before and after (faultline-hostile classes).
# 3. Takeover and forgery: the shipped broker config (collector/deploy/, TLS for the
#    agents, logins, ACLs, use_username_as_clientid) with the collector behind its
#    two logins and a real site-a online; site-c's login tries to take over
#    site-a's client id, to publish as site-a, to mismatch topic and payload, to read
#    site-a's verdict (faultline-hostile acl).
# Needs mosquitto, mosquitto-clients, openssl, curl, python3 (figures from /metrics,
# /api/state and SQLite).
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/../../tests/bench/lib.sh"
# shellcheck source=collector/bench/lib.sh
source "$BENCH_ROOT/collector/bench/lib.sh"

SITES=${SITES:-$(pick 1000 200)}
FLOOD=${FLOOD:-$(pick 20000 4000)}
SAMPLE_S=${SAMPLE_S:-$(pick 20 8)}
WARM_S=${WARM_S:-$(pick 15 8)}
settings=""
for v in SITES FLOOD SAMPLE_S WARM_S; do
    if [[ -n $(printenv "$v" || true) ]]; then settings+="$v=${!v} "; fi
done
CMD=$(bench_cmd "${settings}bash collector/bench/hostile.sh")

require mosquitto_sub mosquitto-clients
require mosquitto_passwd mosquitto
require openssl openssl
require curl curl
require python3 python3
build_release -p faultline-collector -p faultline-tests --bin faultline-collector --bin faultline-fleet \
    --bin faultline-hostile
BIN=$CARGO_TARGET_DIR/release/faultline-collector
FLEET=$CARGO_TARGET_DIR/release/faultline-fleet
HOSTILE=$CARGO_TARGET_DIR/release/faultline-hostile
FIRST=$((FLOOD / 10))

# `rss_kb PID FIELD`: VmRSS or VmHWM in kB.
rss_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# `eval_times HTTP_PORT SECONDS [PID]`: "median max count" of the evaluation time
# (ms) at each evaluation for SECONDS, or until PID exits when given.
eval_times() {
    python3 - "$@" <<'PY'
import os, re, statistics, sys, time, urllib.request
port, secs = int(sys.argv[1]), float(sys.argv[2])
pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
def scrape():
    body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10).read().decode()
    n = int(re.search(r"^faultline_collector_evaluations_total (\d+)", body, re.M).group(1))
    last = float(re.search(r'^faultline_collector_evaluation_seconds\{which="last"\} ([0-9.]+)', body, re.M).group(1))
    return n, last
seen, times = scrape()[0], []
end = time.time() + secs
def alive():
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
while (time.time() < end) if pid is None else alive():
    time.sleep(0.05)
    n, last = scrape()
    if n != seen:
        seen = n
        times.append(last * 1000)
if times:
    print("%.2f %.2f %d" % (statistics.median(times), max(times), len(times)))
else:
    print("- - 0")
PY
}

# `hostile_footprint HTTP_PORT`: "state_bytes hostile_targets providers" from /api/state.
hostile_footprint() {
    curl -sf "127.0.0.1:$1/api/state" | python3 -c '
import json, sys
raw = sys.stdin.read()
st = json.loads(raw)
h = [s for s in st["sites"] if s["id"] == "hostile"]
print(len(raw), len(h[0]["targets"]) if h else 0, len(st["providers"]))'
}

md "## Reliability: nothing forged" ""
md '```sh' "$CMD" '```' ""
md "DESIGN.md \"Nothing forged\": one agent's credentials speak only for its own site — not
as another site, not with another client's id, and not growing the collector's memory
without bound. Run on $(nproc) cores (\`nproc\`), shared with whatever else the machine runs;
Mosquitto $(mosquitto -h 2>/dev/null | sed -nE 's/^mosquitto version ([^ ]+).*/\1/p'), the release collector with its history in SQLite."

# ---- 1. Memory and the others' evaluation -------------------------------------------
md "" "### One hostile site beside $(thousands "$SITES") honest ones: memory and evaluation" ""
md "$(thousands "$SITES") honest sites (the fleet simulator: 10 targets each, 1 s windows sent live, postcard) report
to a broker with the queue settings of \`collector/deploy/mosquitto.conf\`; the collector
evaluates 1 s windows. After $WARM_S s, the figures \"honest only\" are taken over $SAMPLE_S s; then the
hostile site (\`faultline-hostile flood\`, \`tests/src/bin/faultline-hostile.rs\`) sends $(thousands "$FIRST") reports as fast as the broker takes
them, each naming 128 targets and 128 providers never seen before, under a new boot,
claiming 10 s windows; $SAMPLE_S s of figures; then $(thousands $((FLOOD - FIRST))) more (figures while they
arrive), $SAMPLE_S s of figures after, and $(thousands "$FIRST") more (the site now paced) with $SAMPLE_S s of figures. Evaluation time is
\`faultline_collector_evaluation_seconds{which=\"last\"}\` read at each evaluation
(\`faultline_collector_evaluations_total\` moved), median and longest. Every verdict the
collector publishes (\`faultline/v1/state/#\`) is recorded from the start."
start_shipped_broker
hp=$(free_port tcp)
db=$BENCH_WORK/hostile.db
conf=$BENCH_WORK/hostile.toml
collector_conf "$conf" "$db" "$hp" "window_seconds = 1"
spawn env FAULTLINE_LOG=error "$BIN" run --config "$conf"
cpid=$BENCH_PID
wait_port "$hp"
spawn sh -c "exec mosquitto_sub -p $MQTT_PORT -q 1 -v -t 'faultline/v1/state/#' > '$BENCH_WORK/verdicts.log'"
vsub=$BENCH_PID
fleet_s=$((WARM_S + 4 * SAMPLE_S + 600))
log "memory: $SITES honest sites live (up to $fleet_s windows of 1 s)"
spawn "$FLEET" --url "mqtt://127.0.0.1:$MQTT_PORT" --sites "$SITES" --windows "$fleet_s" --window-ms 1000 --realtime --seed 12
fleet=$BENCH_PID
sleep "$WARM_S"
rows=()
# `phase NAME EVAL`: a row of the table from the collector as it is now.
phase() {
    local fp
    fp=$(hostile_footprint "$hp")
    read -r sbytes htargets nprov <<<"$fp"
    read -r emed emax en <<<"$2"
    rows+=("$(printf '| %s | %s MiB | %s MiB | %s | %s | %s | %s ms | %s ms | %s |' "$1" \
        "$(mib "$(rss_kb "$cpid" VmRSS)")" "$(mib "$(rss_kb "$cpid" VmHWM)")" "$(thousands "$sbytes")" \
        "$htargets" "$nprov" "$emed" "$emax" "$en")")
    log "${rows[-1]}"
}
phase "honest only" "$(eval_times "$hp" "$SAMPLE_S")"
rss_before=$(rss_kb "$cpid" VmRSS)
"$HOSTILE" flood --port "$MQTT_PORT" --count "$FIRST"
phase "after $(thousands "$FIRST") hostile reports" "$(eval_times "$hp" "$SAMPLE_S")"
rss_first=$(rss_kb "$cpid" VmRSS)
spawn "$HOSTILE" flood --port "$MQTT_PORT" --first "$FIRST" --count $((FLOOD - FIRST))
flood=$BENCH_PID
during=$(eval_times "$hp" 0 "$flood")
reap "$flood"
phase "while $(thousands $((FLOOD - FIRST))) more arrive" "$during"
phase "after $(thousands "$FLOOD") hostile reports" "$(eval_times "$hp" "$SAMPLE_S")"
rss_after=$(rss_kb "$cpid" VmRSS)
# Bounded: once the site is paced, more of the same costs nothing.
"$HOSTILE" flood --port "$MQTT_PORT" --first "$FLOOD" --count "$FIRST"
phase "after $(thousands "$FIRST") more" "$(eval_times "$hp" "$SAMPLE_S")"
rss_more=$(rss_kb "$cpid" VmRSS)
counters=$(curl -sf "127.0.0.1:$hp/api/counters")
curl -sf "127.0.0.1:$hp/api/state" >"$BENCH_WORK/state.json"
stop "$vsub"
stop "$fleet"
read -r honest_ok honest_n < <(python3 -c '
import json, sys
st = json.load(open(sys.argv[1]))
honest = [s for s in st["sites"] if s["id"].startswith("site-")]
ok = sum(1 for s in honest if s["presence"] == "online" and s["verdict"]["state"] == "ok")
print(ok, len(honest))' "$BENCH_WORK/state.json")
# Every published verdict about an honest site, ISP or the honest providers that was not ok.
read -r bad_verdicts verdicts < <(python3 - "$BENCH_WORK/verdicts.log" <<'PY'
import json, sys
bad = n = 0
for line in open(sys.argv[1], errors="replace"):
    topic, _, body = line.partition(" ")
    honest = ("/sites/site-" in topic or "/isps/" in topic or topic.endswith("/providers/voipco")
              or topic.endswith("/providers/voipco2"))
    if not honest:
        continue
    n += 1
    try:
        v = json.loads(body)
    except ValueError:
        continue
    if v.get("state") != "ok":
        bad += 1
        print("not ok:", line.strip()[:200], file=sys.stderr)
print(bad, n)
PY
)
by_reason() { sed -nE "s/.*\"$1\":([0-9]+).*/\1/p" <<<"$counters" | head -1; }
accepted=$(sed -nE 's/.*"reports":([0-9]+).*/\1/p' <<<"$counters")
paced=$(by_reason paced)
md "" "| | collector VmRSS | VmHWM | \`/api/state\` bytes | hostile site's targets kept | providers tracked | evaluation, median | longest | evaluations |"
md "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${rows[@]}"; do md "$r"; done
md "" "Of the hostile site's $(thousands $((FLOOD + FIRST))) reports, $(thousands "${paced:-0}") were refused as \`paced\` (a day's
backlog of its claimed 10 s windows is 8,640 + 2); the collector accepted $(thousands "${accepted:-?}") reports in all
($(thousands "$SITES") honest sites included). At the end $honest_ok of $honest_n honest sites were online and \`ok\`; of the
$(thousands "$verdicts") verdicts published about honest sites, their ISPs and providers, **$bad_verdicts** were not \`ok\`."
# Met: no honest verdict other than ok, and the last reports (all paced) grew RSS by < 4 MiB.
growth=$(((rss_more - rss_after) / 1024))
mem_ok=no
if ((bad_verdicts == 0 && honest_ok == honest_n && growth < 4)); then mem_ok=yes; fi
summary_row "$BUDGET_FORGED_MEMORY" \
    "$SITES honest sites + $(thousands "$FLOOD") hostile reports (128 new targets and providers each): RSS $(mib "$rss_before") → $(mib "$rss_first") → $(mib "$rss_after") → $(mib "$rss_more") MiB (after $(thousands "$FIRST"), $(thousands "$FLOOD"), $(thousands $((FLOOD + FIRST))), the site paced once a day's backlog is in); $bad_verdicts honest verdicts not ok" \
    "$mem_ok" "$CMD"

# ---- 2. Bad input ----------------------------------------------------------------------
md "" "### Bad input, class by class" ""
md "On the same collector, from the site \`hostile-b\`'s own topics (\`faultline-hostile
classes\`): each class sent 3 times (the last three rows: as many as the bound needs),
\`/api/counters\`' \`rejected_by_reason\` read before and after (waiting until every
message is counted). Valid reports are \`faultline_shared::encode\`d; the broken ones
are byte edits of such reports, each checked against \`faultline_shared::decode\` first.
NaN and infinity cannot be written in postcard (times travel as integers) nor in JSON,
so they arrive as unparseable JSON."
classes_out=$("$HOSTILE" classes --port "$MQTT_PORT" --http "$hp")
classes_md=$(grep -v '^OK=' <<<"$classes_out")
classes_ok=$(sed -nE 's/^OK=//p' <<<"$classes_out")
md "" "$classes_md"
missing=$(curl -sf "127.0.0.1:$hp/api/counters" | sed -nE 's/.*"missing_windows":([0-9]+).*/\1/p')
md "" "A report over 128 probes is refused as \`malformed\` when it is decoded, and a site
with more than 64 targets keeps its 64 most recently seen (the first table). The
collector's \`missing_windows\` ended at $(thousands "${missing:-?}"), the honest fleet's and the hostile
sites' gaps together: a seq further ahead of its boot's clock than a day's backlog is
refused as \`impossible\` (the last row), so one site cannot add to it without bound."
stop "$cpid"
stop "$MOSQ_PID"
summary_row "$BUDGET_FORGED_INPUT" \
    "$(grep -c '^| ' <<<"$classes_md" | awk '{ print $1 - 1 }') classes, each under its reason in \`faultline_collector_rejected_total\`" \
    "$(if [[ $classes_ok == yes ]]; then echo yes; else echo "**no**"; fi)" "$CMD"

# ---- 3. Takeover and forgery behind the shipped config ---------------------------------
md "" "### Takeover and forgery behind the shipped broker config" ""
md "Mosquitto runs \`collector/deploy/mosquitto.conf\` with its two ACL files (paths and ports
rewritten, nothing else): agents on TLS with logins \`site-a\` and \`site-c\`, the collector
behind \`faultline-collector\` / \`faultline-collector-in\` evaluating 1 s windows, a
reader login watching site-a's status and verdict. site-a is online (its will set) and
reports every second over one connection throughout; site-c's login then tries
(\`faultline-hostile acl\`):"
acl=$BENCH_WORK/acl
mkdir -p "$acl"
(
    cd "$acl"
    ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    # shellcheck disable=SC2086 # $ec is several arguments
    openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj '/CN=Faultline Bench CA' 2>/dev/null
    # shellcheck disable=SC2086
    openssl req $ec -keyout broker.key -out broker.csr -subj '/CN=localhost' 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' >broker.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.crt -days 2 \
        -extfile broker.ext 2>/dev/null
    cp ca.pem ca.crt
    mosquitto_passwd -c -b faultline-internal.passwd faultline-collector c-secret
    mosquitto_passwd -b faultline-internal.passwd faultline-collector-in c-secret
    mosquitto_passwd -b faultline-internal.passwd faultline-reader r-secret
    mosquitto_passwd -c -b faultline-agents.passwd site-a a-secret
    mosquitto_passwd -b faultline-agents.passwd site-c c-site-secret
    cp "$BENCH_ROOT/collector/deploy/mosquitto-agents.acl" faultline-agents.acl
    cp "$BENCH_ROOT/collector/deploy/mosquitto-internal.acl" faultline-internal.acl
)
internal=$(free_port tcp)
agents=$(free_port tcp)
sed -E -e "s|^listener 8883$|listener $agents 127.0.0.1|" -e "s|^listener 1883 127.0.0.1$|listener $internal 127.0.0.1|" \
    -e "s|^persistence_location .*|persistence_location $acl/|" -e "s|/etc/mosquitto/certs/|$acl/|g" \
    -e "s|/etc/mosquitto/|$acl/|g" "$SHIPPED_BROKER_CONF" >"$acl/mosquitto.conf"
if grep -vE '^[[:space:]]*#' "$acl/mosquitto.conf" | grep -qE '/etc/|/var/'; then
    log "unrewritten path in the shipped config"
    exit 1
fi
if [[ $(id -u) == 0 ]]; then echo "user root" >>"$acl/mosquitto.conf"; fi
spawn "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$acl/mosquitto.conf" >"$acl/mosquitto.log" 2>&1
MOSQ_PID=$BENCH_PID
wait_port "$internal"
wait_port "$agents"
printf 'c-secret\n' >"$acl/mqtt.password"
hp=$(free_port tcp)
cat >"$acl/collector.toml" <<CONF
window_seconds = 1
[mqtt]
url = "mqtt://127.0.0.1:$internal"
username = "faultline-collector"
password_file = "$acl/mqtt.password"
[http]
listen = "127.0.0.1:$hp"
[storage]
path = "$acl/history.db"
CONF
spawn env FAULTLINE_LOG=error "$BIN" run --config "$acl/collector.toml"
cpid=$BENCH_PID
wait_port "$hp"
acl_out=$("$HOSTILE" acl --agents "$agents" --internal "$internal" --http "$hp" --ca "$acl/ca.pem" \
    --pass-a a-secret --pass-c c-site-secret --pass-reader r-secret)
acl_md=$(grep -v '^OK=' <<<"$acl_out")
acl_ok=$(sed -nE 's/^OK=//p' <<<"$acl_out")
forged_rows=$(python3 -c '
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
print(db.execute("SELECT count(*) FROM windows WHERE boot = 666").fetchone()[0])' "$acl/history.db")
stop "$cpid"
stop "$MOSQ_PID"
md "" "$acl_md"
md "" "History holds $forged_rows windows of the forged boot. The same rules are tested on every
\`cargo test\` by \`collector/tests/acl.rs\`."
if ((forged_rows != 0)); then acl_ok=no; fi
summary_row "$BUDGET_FORGED_ACL" \
    "shipped config: site-c's takeover (2 client ids), publishing as site-a (4 topics), topic/payload mismatch and reading site-a's verdict all refused; site-a stayed online and ok" \
    "$(if [[ $acl_ok == yes ]]; then echo yes; else echo "**no**"; fi)" "$CMD"
