#!/usr/bin/env bash
# The agent's ICMP probe beside fping on the same path: a network namespace behind a
# veth pair, with an nftables rule in the namespace dropping a random share of echo
# requests (and counting them). For each loss rate, `faultline-agent probe icmp` and
# `fping -C` send the same number of echoes at the same interval; the table compares
# sent/received/loss, RTT and jitter, and both tools' losses with nftables' exact
# drop count. Prints its BENCHMARKS.md section (protocol: tests/bench/lib.sh).
#
#   bash tests/bench/fping.sh [COUNT]
#
# COUNT echoes per tool and case (default 1000, QUICK=1: 200), 20 ms apart; cases
# 0 %, 5 % and 20 % loss. Needs root, fping, nftables and iproute2 (bash
# .ci/install-deps); without root it prints a section saying it was skipped. Traffic
# goes only to the namespace it creates (198.19.0.0/16, part of the 198.18.0.0/15
# benchmarking range; the lab's namespaces use 198.18.0.0/16).
# shellcheck source=tests/bench/lib.sh
source "$(dirname "$0")/lib.sh"

COUNT=${1:-$(pick 1000 200)}
INTERVAL_MS=20
LOSSES=(0 5 20)
CMD=$(bench_cmd bash tests/bench/fping.sh "$@")
TITLE="## ICMP beside fping on the same path (network namespace, nftables drops)"

if [[ $(id -u) != 0 ]]; then
    log "skipped: needs root"
    md "$TITLE" "" '```sh' "$CMD" '```' "" \
        "Skipped: needs root (a network namespace, nftables, raw ICMP sockets); run as root."
    summary_row "$BUDGET_LOSS_ICMP" "skipped: not root" "not measured" "$CMD"
    exit 0
fi
require ip iproute2
require nft nftables
require fping fping
require tc iproute2
build_agent

# One /30 per run, from the pid: 198.19.<pid % 256>.<4 × (pid / 256 % 64)>.
NS=fl-bench-$$
VH=flbh$$
VN=flbn$$
third=$(($$ % 256))
base=$(($$ / 256 % 64 * 4))
HOST_IP=198.19.$third.$((base + 1))
NS_IP=198.19.$third.$((base + 2))
if [[ -n $(ip -o addr show to "$HOST_IP/30") ]]; then
    log "$HOST_IP/30 is already in use on this host"
    exit 1
fi
on_exit "ip netns del $NS 2>/dev/null"
log "namespace $NS at $NS_IP (host side $HOST_IP)"
ip netns add "$NS"
ip link add "$VH" type veth peer name "$VN" netns "$NS"
ip addr add "$HOST_IP/30" dev "$VH"
ip link set "$VH" up
ip -n "$NS" addr add "$NS_IP/30" dev "$VN"
ip -n "$NS" link set "$VN" up
ip -n "$NS" link set lo up
printf '%s\n' "add table inet bench" \
    "add chain inet bench input { type filter hook input priority 0; policy accept; }" |
    ip netns exec "$NS" nft -f -

# Whether this kernel can delay packets (netem): tried on the namespace's loopback.
if netem_err=$(tc -n "$NS" qdisc add dev lo root netem delay 1ms 2>&1); then
    NETEM="This kernel has netem, but the script injects no delay on ICMP: the relay cases above cover delay."
else
    NETEM="This kernel has no netem (\`tc qdisc add … netem\`: \"${netem_err//$'\n'/ }\"), so no delay can be injected on ICMP: RTT is compared on the bare veth path, loss against nftables' drops."
fi

# `rules LOSS`: fresh counters; every echo request that reaches the namespace is
# counted, LOSS % of them (random) are counted again and dropped.
rules() {
    printf '%s\n' "flush chain inet bench input" \
        "add rule inet bench input icmp type echo-request counter" \
        "add rule inet bench input icmp type echo-request numgen random mod 100 < $1 counter drop" |
        ip netns exec "$NS" nft -f -
}
# "arrived dropped" from the two counters.
counters() {
    ip netns exec "$NS" nft list chain inet bench input |
        awk '/counter packets/ { for (i = 1; i < NF; i++) if ($i == "packets") n = $(i + 1)
                                 if (/drop/) d = n; else a = n }
             END { print a + 0, d + 0 }'
}

seconds=$(awk -v c="$COUNT" -v i="$INTERVAL_MS" 'BEGIN {print c * i / 1000}')
: >"$BENCH_WORK/results"
for loss in "${LOSSES[@]}"; do
    log "loss $loss %: agent, $COUNT echoes every $INTERVAL_MS ms (${seconds} s)"
    rules "$loss"
    agent_json=$("$AGENT" probe icmp "$NS_IP" --count "$COUNT" --interval-ms "$INTERVAL_MS" --json || true)
    read -r a_arrived a_dropped < <(counters)
    log "loss $loss %: fping, $COUNT echoes every $INTERVAL_MS ms"
    rules "$loss"
    fping_out=$(fping -C "$COUNT" -p "$INTERVAL_MS" -q "$NS_IP" 2>&1 || true)
    read -r f_arrived f_dropped < <(counters)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$loss" "$agent_json" "$a_arrived" "$a_dropped" \
        "$(grep -F "$NS_IP :" <<<"$fping_out" | tail -1)" "$f_arrived" "$f_dropped" >>"$BENCH_WORK/results"
done

md "$TITLE" ""
md '```sh' "$CMD" '```' ""
mdf '%s\n' "The relay above is user-space UDP and fping speaks ICMP, so this path is a network
namespace behind a veth pair (like the lab's \`Netns\`), its address $NS_IP. An nftables
table in the namespace counts every echo request that arrives and drops a random share
(\`icmp type echo-request numgen random mod 100 < N counter drop\`), so the exact number
dropped is known. For each rate, \`faultline-agent probe icmp $NS_IP --count $COUNT
--interval-ms $INTERVAL_MS --json\` (the gateway build) and then \`fping -C $COUNT -p $INTERVAL_MS -q $NS_IP\`
each send $COUNT echoes (56-byte payloads, both) with fresh counters. fping's RTT figures
are computed from its per-echo times (p50 exact); the agent's p50 is its latency
summary's bucket midpoint, its jitter RFC 3550's estimator over consecutive RTTs, the
same estimator applied to fping's times for the fping row. $NETEM"
md ""

python3 - "$BENCH_WORK/results" "$BENCH_WORK/figures" <<'PY' >&3
import json, statistics, sys

def jitter(rtts):
    j = 0.0
    for a, b in zip(rtts, rtts[1:]):
        j += (abs(b - a) - j) / 16
    return j

exact_agent, exact_fping, diffs = True, True, []
rules, a_lost, a_drop, f_lost, f_drop, counts = [], [], [], [], [], set()
print("| nft drops | tool | sent | received | loss | nft: arrived / dropped | lost = dropped | RTT min | avg | p50 | max | jitter |")
print("|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
for line in open(sys.argv[1]):
    loss, aj, aa, ad, fl, fa, fd = line.rstrip("\n").split("\t")
    aa, ad, fa, fd = int(aa), int(ad), int(fa), int(fd)
    try:
        a = json.loads(aj)
    except ValueError:
        print(f"| {loss} % | agent | probe failed: {aj[:60]!r} | | | | | | | | | |")
        exact_agent = False
        a = None
    if a:
        sent, rec = a["sent"], a["received"]
        r = a.get("rtt_ms") or {}
        ok = sent - rec == ad and aa == sent
        exact_agent &= ok
        agent = (r.get("min"), r.get("avg"), r.get("p50"), r.get("max"), a.get("jitter_ms"))
        print(f"| {loss} % | agent | {sent} | {rec} | {100 * (sent - rec) / sent:.1f} % | {aa} / {ad} | {'yes' if ok else 'no'} | "
              + " | ".join(f"{v:.3f} ms" if v is not None else "—" for v in agent) + " |")
        rules.append(loss); a_lost.append(sent - rec); a_drop.append(ad); counts.add(sent)
    times = fl.split(":", 1)[1].split() if ":" in fl else []
    if times:
        rtts = [float(t) for t in times if t != "-"]
        sent, rec = len(times), len(rtts)
        ok = sent - rec == fd and fa == sent
        exact_fping &= ok
        fp = (min(rtts), statistics.fmean(rtts), statistics.median(rtts), max(rtts), jitter(rtts)) if rtts else (None,) * 5
        print(f"| {loss} % | fping | {sent} | {rec} | {100 * (sent - rec) / sent:.1f} % | {fa} / {fd} | {'yes' if ok else 'no'} | "
              + " | ".join(f"{v:.3f} ms" if v is not None else "—" for v in fp) + " |")
        f_lost.append(sent - rec); f_drop.append(fd); counts.add(sent)
        if a and None not in agent and None not in fp:
            d = [x - y for x, y in zip(agent, fp)]
            diffs.append(d)
            print(f"| {loss} % | agent − fping | | | | | | " + " | ".join(f"{v:+.3f} ms" for v in d) + " |")
    else:
        print(f"| {loss} % | fping | no output: {fl[:60]!r} | | | | | | | | | |")
        exact_fping = False
with open(sys.argv[2], "w") as f:
    f.write(f"exact_agent={'yes' if exact_agent else '**no**'}\nexact_fping={'yes' if exact_fping else 'no'}\n")
    j = lambda v: ", ".join(map(str, v))
    f.write(f"losses=agent lost {j(a_lost)} of {'/'.join(map(str, sorted(counts)))} = nftables' {j(a_drop)} drops "
            f"(rules {'/'.join(rules)} %); fping lost {j(f_lost)} = {j(f_drop)}\n")
    if diffs:
        f.write("p50=" + f"{min(d[2] for d in diffs):+.3f} … {max(d[2] for d in diffs):+.3f}\n")
        f.write("avg=" + f"{min(d[1] for d in diffs):+.3f} … {max(d[1] for d in diffs):+.3f}\n")
PY
md "" "\"lost = dropped\": the tool's sent − received equals nftables' drop count and every
echo it sent arrived in the namespace (arrived = sent). Differences in RTT are the two
tools' own overheads (both time in user space, the agent on a tokio runtime) on a path
of a few tens of microseconds."

fig() { sed -n "s/^$1=//p" "$BENCH_WORK/figures"; }
summary_row "$BUDGET_LOSS_ICMP" "$(fig losses); RTT agent − fping: p50 $(fig p50) ms, avg $(fig avg) ms" \
    "$(fig exact_agent) (fping: $(fig exact_fping))" "$CMD"
