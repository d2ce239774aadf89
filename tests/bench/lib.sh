# shellcheck shell=bash disable=SC2034,SC2016
# Sourced by every benchmark script: the workspace root, the build, free ports,
# Mosquitto, cleanup, QUICK durations and the output protocol of tests/bench/run.sh.
#
# Protocol: a benchmark prints its own Markdown section (a `## ` heading, what it
# does, the command that reproduces it, its table) on stdout and progress on stderr;
# when BENCH_SUMMARY names a file it appends its summary row(s) there with
# `summary_row`, and when BENCH_FACTS does, the figures README.md quotes with `fact`. Sourcing this file sends stdout to stderr: the section goes to fd 3
# (`md`, `mdf`), so nothing a child process prints can end up in BENCHMARKS.md.

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$BENCH_ROOT/target}
BENCH_NAME=${BENCH_NAME:-$(basename "$0" .sh)}
BENCH_WORK=$(mktemp -d "${TMPDIR:-/tmp}/faultline-bench.XXXXXX")
BENCH_PIDS=()
BENCH_ON_EXIT=()

exec 3>&1 1>&2

# DESIGN.md's budgets, worded once for the summary table (run.sh names the ones a
# failed benchmark leaves unmeasured with the same words).
BUDGET_SIZE="agent for armv7, stripped, with TLS ≤ 2.0 MB"
BUDGET_RSS="agent RSS ≤ 6 MB, 10 targets incl. one 50 packet/s voice stream"
BUDGET_CPU="agent CPU ≤ 1 % of one core at defaults"
BUDGET_RSS_SPOOL="agent RSS ≤ 6 MB also with a full 24 h outbox queued (8,640 reports)"
BUDGET_FLASH="outbox writes to flash per day at defaults (no budget; README states them)"
BUDGET_RTT="RTT error against a known injected delay ≤ 0.3 ms median"
BUDGET_LOSS="loss counted exactly (STAMP, the relay's drops)"
BUDGET_LOSS_ICMP="loss counted exactly (ICMP, nftables drops; beside fping)"
BUDGET_JITTER="jitter against injected jitter (no budget)"
BUDGET_REPORT="10-target report ≤ 400 bytes postcard (JSON several times larger)"
BUDGET_MONTH="a site sends ≤ 150 MB a month, TLS and MQTT included"
BUDGET_METERED="metered-link profile ≤ 500 MB a month, probes and reports"
BUDGET_INGEST="collector keeps up: ≥ 0.9 × a bare subscriber on the same broker, acknowledging after storage"
BUDGET_SITES="collector: 10,000 sites × 10 targets ≤ 150 MB RSS"
BUDGET_NODE="one node: 100,000 sites × 10 targets ≤ 1 GB RSS (engine)"
BUDGET_CLUSTER="a cluster's throughput grows with its site workers (measured at 1, 2 and 4)"
BUDGET_EVAL="an evaluation ≤ 10 % of a window (1 s at 10 s windows), 100,000 sites × 10 targets"
BUDGET_DETECT="a verdict within 3 windows of onset"
BUDGET_CLEAR="cleared within 4 windows of the end"
BUDGET_LOSSLESS="nothing lost across a broker restart and an agent SIGKILL"
BUDGET_NOLOSS_KILL="nothing lost: collector SIGKILLed while ≥ 20 sites flush ≥ 1,000-window backlogs, every window in history once"
BUDGET_NOLOSS_AWAY="nothing lost: collector away for the shipped broker config's stated backlog"
BUDGET_NOLOSS_RTC="nothing lost: RTC-less reboots with a spooled backlog stay live, every window once"
BUDGET_FORGED_MEMORY="nothing forged: one hostile site grows neither the collector's memory without bound nor other sites' verdicts"
BUDGET_FORGED_INPUT="nothing forged: every class of bad input refused and counted"
BUDGET_FORGED_ACL="nothing forged: no login takes over another's client id, publishes as or reads another site"

# BENCH_KEEP=1 keeps the work directory (logs, configs) for a look afterwards.

# True when QUICK is set (and not 0): shorter durations while developing.
quick() { [[ -n ${QUICK:-} && ${QUICK:-} != 0 ]]; }

# `pick FULL QUICK`: the value for this run.
pick() { if quick; then echo "$2"; else echo "$1"; fi; }

# The command line that reproduces a figure, as written in BENCHMARKS.md.
bench_cmd() { if quick; then echo "QUICK=1 $*"; else echo "$*"; fi; }

log() { echo "[$BENCH_NAME] $*" >&2; }

# Markdown for the section: `md LINE...` prints lines, `mdf FORMAT ARGS...` printf.
md() { printf '%s\n' "$@" >&3; }
mdf() { # shellcheck disable=SC2059
    printf "$@" >&3
}

# `summary_row BUDGET FIGURE MET COMMAND`: one row of BENCHMARKS.md's summary.
summary_row() {
    [[ -n ${BENCH_SUMMARY:-} ]] || return 0
    printf '| %s | %s | %s | `%s` |\n' "$1" "$2" "$3" "$4" >>"$BENCH_SUMMARY"
}

# `fact KEY VALUE`: a measured figure README.md's generated blocks are written from
# (tests/bench/readme.sh), appended as KEY=VALUE to $BENCH_FACTS when run.sh sets it.
fact() {
    [[ -n ${BENCH_FACTS:-} ]] || return 0
    printf '%s=%s\n' "$1" "$2" >>"$BENCH_FACTS"
}

# `met A OP B` → yes/no, comparing numbers (OP: <= or >=).
met() {
    awk -v a="$1" -v b="$3" -v op="$2" 'BEGIN {
        if (a == "" || a != a + 0) { print "**no** (not measured)"; exit }
        ok = (op == "<=") ? (a + 0 <= b + 0) : (a + 0 >= b + 0)
        print ok ? "yes" : "**no**"
    }'
}

# 1234567 → 1,234,567
thousands() { printf '%s' "$1" | sed -E ':a; s/^([0-9]+)([0-9]{3})/\1,\2/; ta'; }

# Runs `cmd args...` in the background, killed on exit; its pid is in BENCH_PID.
spawn() {
    "$@" &
    BENCH_PID=$!
    BENCH_PIDS+=("$BENCH_PID")
}

# `on_exit 'command'`: run at exit, before the work directory goes.
on_exit() { BENCH_ON_EXIT+=("$1"); }

bench_cleanup() {
    local p c
    for p in "${BENCH_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BENCH_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for c in "${BENCH_ON_EXIT[@]}"; do eval "$c" || true; done
    if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $BENCH_WORK (BENCH_KEEP)"; else rm -rf "$BENCH_WORK"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# `free_port tcp|udp`: a port on 127.0.0.1 free at the time of asking.
free_port() {
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if sys.argv[1] == "tcp" else socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}

# `wait_port PORT`: until something accepts TCP connections on 127.0.0.1:PORT (10 s).
wait_port() {
    local _
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$1"
    return 1
}

# `require TOOL PACKAGE`: fails naming the Debian package (`bash .ci/install-deps`).
require() {
    command -v "$1" >/dev/null || [[ -x /usr/sbin/$1 ]] || {
        log "$1 not found: install $2 (bash .ci/install-deps)"
        return 1
    }
}

# The agent with the size-optimised `agent` profile (what gateways run): $AGENT.
build_agent() {
    log "building faultline-agent (profile agent)"
    cargo build --quiet --profile agent -p faultline-agent --manifest-path "$BENCH_ROOT/Cargo.toml"
    AGENT=$CARGO_TARGET_DIR/agent/faultline-agent
}

# `build_release ARGS...`: cargo build --release with ARGS (packages, bins).
build_release() {
    log "building (release) $*"
    cargo build --quiet --release --manifest-path "$BENCH_ROOT/Cargo.toml" "$@"
}

# `start_mosquitto PORT [CONFIG LINE...]`: a broker on 127.0.0.1:PORT (anonymous),
# the extra lines appended to its config; waits until it listens. Pid in MOSQ_PID.
start_mosquitto() {
    require mosquitto mosquitto
    local port=$1 conf
    shift
    conf=$(mktemp "$BENCH_WORK/mosquitto.XXXX.conf")
    {
        echo "listener $port 127.0.0.1"
        echo "allow_anonymous true"
        [[ $(id -u) == 0 ]] && echo "user root"
        printf '%s\n' "$@"
    } >"$conf"
    spawn "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$conf" >"$conf.log" 2>&1
    MOSQ_PID=$BENCH_PID
    wait_port "$port"
}

# The test kit's programs the agent benchmarks use (release): $PEERS, $OUTBOX.
build_kit() {
    build_release -p faultline-tests --bin faultline-peers --bin faultline-outbox
    PEERS=$CARGO_TARGET_DIR/release/faultline-peers
    OUTBOX=$CARGO_TARGET_DIR/release/faultline-outbox
}

# `start_peers`: the servers a gateway's targets answer from
# (Kamailio, coturn, the test kit's DNS server, `$AGENT reflect`), each behind a relay
# with a WAN-like delay, and a TCP listener; sets SIP STUN DNS DNS_NAME STAMP TCP and
# SIP_PATH STUN_PATH DNS_PATH STAMP_PATH (each relay's impairment, both directions).
# Needs build_agent and build_kit.
start_peers() {
    local env=$BENCH_WORK/peers.env _
    spawn "$PEERS" --agent "$AGENT" >"$env" 2>>"$BENCH_WORK/peers.log"
    for _ in $(seq 300); do
        grep -qx 'READY=1' "$env" && break
        kill -0 "$BENCH_PID" 2>/dev/null || break
        sleep 0.1
    done
    grep -qx 'READY=1' "$env" || {
        log "faultline-peers did not start:"
        cat "$BENCH_WORK/peers.log" >&2
        return 1
    }
    # shellcheck source=/dev/null
    source "$env"
}

# `agent_targets STAMP_SECONDS|default`: the agent benchmarks' 10 targets as agent.toml
# tables, every one answering (start_peers first): 4 icmp to loopback addresses, 2 tcp
# to a listener, and dns, stamp (50 packets/s), sip and stun through the relays.
agent_targets() {
    local t name layer kind host
    for t in "gw lan icmp 127.0.0.1" "isp-hop isp icmp 127.0.0.2" "isp-dns isp dns $DNS_NAME" \
        "anchor-1 internet icmp 127.0.0.3" "anchor-2 internet tcp $TCP" \
        "voipco-media provider stamp $STAMP" "voipco-sip provider sip $SIP" \
        "voipco-stun provider stun $STUN" "voipco2-edge provider tcp $TCP" \
        "voipco2-media provider icmp 127.0.0.4"; do
        read -r name layer kind host <<<"$t"
        printf '[[target]]\nname = "%s"\nlayer = "%s"\nkind = "%s"\nhost = "%s"\n' "$name" "$layer" "$kind" "$host"
        [[ $layer == provider ]] && printf 'provider = "%s"\n' "${name%%-*}"
        [[ $kind == dns ]] && printf 'server = "%s"\n' "$DNS"
        [[ $kind == stamp && $1 != default ]] && printf 'stamp_seconds = %s\n' "$1"
    done
    return 0
}

# The paragraph saying what agent_targets measures, for a section.
agent_targets_md() {
    mdf '%s\n' "Every target answers for real, as at a site (\`faultline-peers\`, the test kit's servers):
\`gw\`, \`isp-hop\`, \`anchor-1\` and \`voipco2-media\` are ICMP echoes to 127.0.0.1–4;
\`anchor-2\` and \`voipco2-edge\` TCP connects to a listener on loopback; through the
test kit's UDP impairment relay (each way): \`isp-dns\` asks the test kit's DNS server for
the A record of \`$DNS_NAME\` ($DNS_PATH), \`voipco-media\` is a 50 packet/s G.711
STAMP stream to \`faultline-agent reflect\` ($STAMP_PATH), \`voipco-sip\` a SIP OPTIONS over
UDP to Kamailio ($SIP_PATH), \`voipco-stun\` a STUN Binding to coturn ($STUN_PATH).
ICMP and TCP keep loopback RTTs: the relay carries UDP only."
}
