#!/usr/bin/env bash
# shellcheck disable=SC2016 # backticks are Markdown here, not command substitution
# What the durable outbox writes to the gateway's flash: `faultline-agent run` with
# state_dir on a fresh ext4 filesystem of its own (a loop device, so its block-level
# counters see nothing else), with the same 10 answering targets as agent_rss.sh, for
# WINDOWS windows with the broker up (the normal case) and with it down (reports pile
# up). strace counts every write, sync, rename and unlink under state_dir;
# /proc/PID/io and the loop device's /sys/block/*/stat what reached the page cache and
# the device. Per window, and per day at the default 10 s windows (8,640 windows):
# what is stored and synced is per report, not per second. Prints its BENCHMARKS.md
# section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/agent_flash.sh [WINDOWS]
#
# WINDOWS (default 64, QUICK=1: 32) of 1 s each per case: a segment file holds 64
# records, so 64 consecutive reports cross exactly one segment rotation. Needs root
# (ICMP, mount), strace (without it the section says it was skipped), losetup and
# mkfs.ext4 (util-linux, e2fsprogs), mosquitto, kamailio and coturn; .ci/install-deps
# installs them.
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

WINDOWS=${1:-$(pick 64 32)}
WINDOW_S=1
PER_DAY=8640 # windows a day at the default window_seconds = 10
CMD=$(bench_cmd bash tests/bench/agent_flash.sh "$@")
TITLE="## Agent: what the outbox writes to flash"

if [[ $(id -u) != 0 ]]; then
    log "skipped: needs root"
    md "$TITLE" "" '```sh' "$CMD" '```' "" "Skipped: needs root (ICMP, a loop device); run as root."
    summary_row "$BUDGET_FLASH" "skipped: not root" "—" "$CMD"
    exit 0
fi
if ! command -v strace >/dev/null; then
    log "skipped: strace not found (Debian's strace: bash .ci/install-deps)"
    md "$TITLE" "" '```sh' "$CMD" '```' "" "Skipped: needs \`strace\` (\`bash .ci/install-deps\`) to count the outbox's calls."
    summary_row "$BUDGET_FLASH" "skipped: strace not installed" "not measured" "$CMD"
    exit 0
fi
require losetup util-linux
require mkfs.ext4 e2fsprogs
require mosquitto_sub mosquitto-clients
build_agent
build_kit
start_peers
MQTT_PORT=$(free_port tcp)
DOWN_PORT=$(free_port tcp) # nothing listens there: the broker is down
start_mosquitto "$MQTT_PORT"

# A filesystem of its own: 64 MB ext4 (mkfs defaults: 4 KiB blocks, a journal).
MNT=$BENCH_WORK/flash
mkdir -p "$MNT"
truncate -s 64M "$BENCH_WORK/flash.img"
mkfs.ext4 -q -F "$BENCH_WORK/flash.img"
LOOP=$(losetup -f --show "$BENCH_WORK/flash.img")
on_exit "umount $MNT 2>/dev/null; losetup -d $LOOP"
mount "$LOOP" "$MNT"
DEV=/sys/block/$(basename "$LOOP")/stat

# "write_requests sectors_written flushes" of the loop device.
dev_stat() { awk '{print $5, $7, $16}' "$DEV"; }

config() { # $1: broker port, $2: state_dir
    cat <<EOF
site = "bench"
isp = "LoopNet"
window_seconds = $WINDOW_S
state_dir = "$2"
[mqtt]
url = "mqtt://127.0.0.1:$1"
EOF
    agent_targets 0.5
}

declare -A R
# `measure CASE PORT`: runs the agent under strace, measures WINDOWS windows after a
# warm-up, sets R[CASE.*].
measure() {
    local case=$1 port=$2 state=$MNT/$1 trace=$BENCH_WORK/$1.strace
    config "$port" "$state" >"$BENCH_WORK/$case.toml"
    "$AGENT" check --config "$BENCH_WORK/$case.toml" >/dev/null
    log "$case: ${WINDOWS} windows of ${WINDOW_S} s under strace"
    spawn strace -f --seccomp-bpf -ttt -y -s 0 -o "$trace" \
        -e trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,sync_file_range,openat,rename,renameat,renameat2,unlink,unlinkat,ftruncate,mkdir,mkdirat \
        env RUST_LOG=warn "$AGENT" run --config "$BENCH_WORK/$case.toml" 2>>"$BENCH_WORK/agent.log"
    local tracer=$BENCH_PID pid="" _
    for _ in $(seq 100); do
        pid=$(awk '{print $1}' "/proc/$tracer/task/$tracer/children" 2>/dev/null)
        [[ -n $pid ]] && [[ $(readlink "/proc/$pid/exe") == "$AGENT" ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || { log "$case: the agent did not start"; return 1; }
    # Warm-up: past start-up, the first record stored and two more windows.
    for _ in $(seq 100); do
        compgen -G "$state/outbox/*.seg" >/dev/null && break
        sleep 0.1
    done
    sleep $((2 * WINDOW_S))
    local io0 dev0 t0 io1 dev1 t1
    io0=$(awk '/^(syscw|write_bytes):/ {printf "%s ", $2}' "/proc/$pid/io")
    dev0=$(dev_stat)
    t0=$(date +%s.%N)
    sleep $((WINDOWS * WINDOW_S))
    t1=$(date +%s.%N)
    io1=$(awk '/^(syscw|write_bytes):/ {printf "%s ", $2}' "/proc/$pid/io")
    dev1=$(dev_stat)
    kill -TERM "$pid"
    wait "$tracer" || true
    local syscw0 wb0 syscw1 wb1 req0 sec0 fl0 req1 sec1 fl1
    read -r syscw0 wb0 <<<"$io0"
    read -r syscw1 wb1 <<<"$io1"
    read -r req0 sec0 fl0 <<<"$dev0"
    read -r req1 sec1 fl1 <<<"$dev1"
    R[$case.write_bytes]=$((wb1 - wb0))
    R[$case.syscw]=$((syscw1 - syscw0))
    R[$case.dev_requests]=$((req1 - req0))
    R[$case.dev_bytes]=$(((sec1 - sec0) * 512))
    R[$case.dev_flushes]=$((fl1 - fl0))
    # The trace between t0 and t1, calls on paths under state_dir, by kind.
    local k v
    while read -r k v; do R[$case.$k]=$v; done < <(python3 - "$trace" "$state" "$t0" "$t1" <<'EOF'
import re, sys
trace, state, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
n = {k: 0 for k in ("records", "record_bytes", "writes", "bytes", "fdatasync", "fsync",
                    "creates", "renames", "unlinks", "other")}
call = re.compile(r"^\d+\s+([\d.]+)\s+(\w+)\((.*)$")
for line in open(trace):
    m = call.match(line)
    if not m or "resumed>" in line:
        continue
    ts, name, rest = float(m.group(1)), m.group(2), m.group(3)
    if not (t0 <= ts < t1) or state not in rest:
        continue
    if name.startswith(("write", "pwrite")):
        size = int(re.search(r", (\d+)(?:\)| <unfinished)", rest).group(1))
        n["writes"] += 1
        n["bytes"] += size
        if ".seg>" in rest and size > 8:  # a record, not a segment's magic
            n["records"] += 1
            n["record_bytes"] += size
    elif name == "fdatasync":
        n["fdatasync"] += 1
    elif name == "fsync":
        n["fsync"] += 1
    elif name.startswith("openat"):
        n["creates"] += "O_CREAT" in rest
    elif name.startswith("rename"):
        n["renames"] += 1
    elif name.startswith("unlink"):
        n["unlinks"] += 1
    else:
        n["other"] += 1
for k, v in n.items():
    print(k, v)
EOF
)
    R[$case.seconds]=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
    log "$case: $(for k in records writes bytes fdatasync fsync renames unlinks write_bytes dev_bytes; do printf '%s=%s ' "$k" "${R[$case.$k]}"; done)"
}

measure up "$MQTT_PORT"
measure down "$DOWN_PORT"

# Per window (per stored report), and per day at 8,640 windows.
per() { awk -v a="$1" -v n="$2" -v f="${3:-%.2f}" 'BEGIN {printf f, n ? a / n : 0}'; }
day() { awk -v a="$1" -v n="$2" -v d="$PER_DAY" 'BEGIN {printf "%.0f", n ? a / n * d : 0}'; }
row() { # label, key, [format]
    local up down
    up=$(per "${R[up.$2]}" "${R[up.records]}" "${3:-%.2f}")
    down=$(per "${R[down.$2]}" "${R[down.records]}" "${3:-%.2f}")
    mdf '| %s | %s | %s | %s | %s |\n' "$1" "$up" "$down" \
        "$(thousands "$(day "${R[up.$2]}" "${R[up.records]}")")" "$(thousands "$(day "${R[down.$2]}" "${R[down.records]}")")"
}
syncs_up=$((${R[up.fdatasync]} + ${R[up.fsync]}))
syncs_down=$((${R[down.fdatasync]} + ${R[down.fsync]}))
R[up.syncs]=$syncs_up
R[down.syncs]=$syncs_down
mb_day() { awk -v a="$1" -v n="$2" -v d="$PER_DAY" 'BEGIN {printf "%.1f", n ? a / n * d / 1e6 : 0}'; }

md "$TITLE" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "Every report is appended to a segment file under \`state_dir/outbox/\` and synced
(\`fdatasync\`) before it is sent; a new segment every 64 records (created, synced, the folder
synced, the \`acked\` watermark rewritten: write, fsync, rename); a segment whose records were
all acknowledged is deleted. The script puts \`state_dir\` on a fresh 64 MB ext4 filesystem
(mkfs defaults: 4 KiB blocks, journal) on a loop device of its own, runs the agent with the
same 10 answering targets as above and ${WINDOW_S} s windows (what is written is per report,
not per second), and measures ${WINDOWS} windows after a warm-up, with the broker up and with it
down (nothing listens on its port: every report stays queued). Three views: the agent's calls
on paths under \`state_dir\` (\`strace -f\`), the bytes it dirtied in the page cache
(\`write_bytes\` of \`/proc/PID/io\`), and what the block device received, journal included
(\`/sys/block/loopN/stat\`). Per day: × $(thousands "$PER_DAY") windows (10 s, the default)."
md "" "| per report stored | broker up | broker down | a day, up | a day, down |" "|---|---:|---:|---:|---:|"
mdf '| reports stored (measured) | %s in %s s | %s in %s s | %s | %s |\n' \
    "${R[up.records]}" "${R[up.seconds]}" "${R[down.records]}" "${R[down.seconds]}" "$(thousands "$PER_DAY")" "$(thousands "$PER_DAY")"
row "write calls" writes
row "bytes written (records $(per "${R[up.record_bytes]}" "${R[up.records]}" %.0f) bytes each)" bytes %.0f
row "syncs (fdatasync + fsync)" syncs
row "&nbsp;&nbsp;of which fsync (folder, watermark)" fsync
row "files created" creates
row "renames (watermark)" renames
row "files deleted (delivered segments)" unlinks
row "page cache bytes dirtied (\`write_bytes\`)" write_bytes %.0f
row "device write requests" dev_requests
row "device bytes written (ext4, journal included)" dev_bytes %.0f
row "device cache flushes" dev_flushes
md "" "**At defaults: $(thousands "$(day "$syncs_up" "${R[up.records]}")") syncs a day and $(mb_day "${R[up.dev_bytes]}" "${R[up.records]}") MB a day
written to the device by ext4** with the broker up ($(mb_day "${R[down.dev_bytes]}" "${R[down.records]}") MB down), for
$(mb_day "${R[up.bytes]}" "${R[up.records]}") MB of records: each sync commits at least a whole block and the journal's
own. Other filesystems differ: on OpenWrt, state_dir lives on the overlay (UBIFS on NAND,
JFFS2 on NOR; \`/var\` is RAM there), where every sync programs at least one page (2–4 KiB on
NAND), so expect the same order: some tens of MB a day, spread by the filesystem's wear
levelling. \`window_seconds\` divides it (30 s windows: a third)."

summary_row "$BUDGET_FLASH" "$(thousands "$(day "$syncs_up" "${R[up.records]}")") syncs a day; ext4 device writes $(mb_day "${R[up.dev_bytes]}" "${R[up.records]}") MB a day (broker up), $(mb_day "${R[down.dev_bytes]}" "${R[down.records]}") MB (down), for $(mb_day "${R[up.bytes]}" "${R[up.records]}") MB of records" \
    "—" "$CMD"
fact FLASH_SYNCS_DAY "$(thousands "$(day "$syncs_up" "${R[up.records]}")")"
fact FLASH_DEV_MB_DAY "$(mb_day "${R[up.dev_bytes]}" "${R[up.records]}")"
fact FLASH_DEV_MB_DAY_DOWN "$(mb_day "${R[down.dev_bytes]}" "${R[down.records]}")"
fact FLASH_RECORD_MB_DAY "$(mb_day "${R[up.bytes]}" "${R[up.records]}")"
fact FLASH_PAGECACHE_MB_DAY "$(mb_day "${R[up.write_bytes]}" "${R[up.records]}")"
