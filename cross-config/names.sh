#!/usr/bin/env bash
# Names on a gateway with no glibc shared libraries: the static armv7 agent resolves
# every name (targets and the broker) through getaddrinfo (tokio::net::lookup_host).
# This proves, on the real binary, that it resolves a name only /etc/hosts knows and a
# name only DNS knows, with nothing but the binary itself to run on:
#
# - a fresh network namespace (loopback only) and mount namespace whose root is the
#   host's with every library directory empty (/lib, /lib64, /usr/lib, /usr/lib64,
#   their 32-bit and x32 siblings, /usr/local/lib, qemu's /usr/gnemul and the ARM
#   cross sysroots /usr/arm-linux-gnueabihf and /usr/aarch64-linux-gnu; a directory
#   that is a link into one of those is left as it is) and an /etc that
#   holds only hosts, resolv.conf ("nameserver 127.0.0.1") and, in two of the three
#   cases, nsswitch.conf; checked: a dynamically linked program cannot start there;
# - a stand-in DNS server (python3) on 127.0.0.1:53 and a TCP listener;
# - `faultline-agent probe tcp NAME:PORT --json` under qemu-arm-static (static, run
#   with an empty environment: no QEMU_LD_PREFIX).
#
#   bash cross-config/names.sh [BINARY]   # default: the armv7 `agent` profile build
#   TRACE=1 bash cross-config/names.sh    # also: which files and sockets a lookup touches
#
# - `faultline-agent run` there, its broker a DNS name (Mosquitto on loopback) and
#   its target an /etc/hosts name: a report arrives.
#
# Needs root (or unprivileged user namespaces), python3, qemu-arm-static, iproute2,
# mosquitto and mosquitto_sub.
# Prints one "ok:" line per case; exits 1 naming the case that failed.
set -euo pipefail
cd "$(dirname "$0")/.."

HOSTS_NAME=pbx.gw.test      # only /etc/hosts knows it: 127.0.0.2
DNS_NAME=broker.example.test # only DNS knows it: 127.0.0.3
PORT=18661

if [[ ${1:-} != --inside ]]; then
    bin=$(readlink -f "${1:-${CARGO_TARGET_DIR:-$PWD/target}/armv7-unknown-linux-gnueabihf/${PROFILE:-agent}/faultline-agent}")
    [[ -x $bin ]] || { echo "names.sh: no binary at $bin (build it with cross-config/build.sh)" >&2; exit 1; }
    for tool in qemu-arm-static python3 ip unshare chroot mosquitto mosquitto_sub; do
        command -v "$tool" >/dev/null || { echo "names.sh: $tool missing" >&2; exit 1; }
    done
    if [[ $(id -u) == 0 ]]; then ns=(unshare --mount --net); else ns=(unshare --map-root-user --mount --net); fi
    exec "${ns[@]}" env TRACE="${TRACE:-}" bash "$0" --inside "$bin"
fi

# ---- inside the namespaces (still the host's root until chroot) ----
bin=$2
fail() { echo "names.sh: FAILED: $*" >&2; exit 1; }
work=$(mktemp -d /tmp/faultline-names.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount -R "$work/root" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip link set lo up

# A DNS server for one name: A 127.0.0.3, NOERROR without records for its other
# types, NXDOMAIN for every other name; each question logged.
cat >"$work/dns.py" <<'EOF'
import socket, struct, sys
name, ip, log = sys.argv[1].lower(), sys.argv[2], open(sys.argv[3], "a", buffering=1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while i < len(q) and q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
        i += 1 + q[i]
    if len(q) < i + 5:
        continue
    qtype = struct.unpack("!H", q[i + 1:i + 3])[0]
    asked = ".".join(labels).lower()
    log.write(f"{asked} {qtype}\n")
    found = asked == name
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip) if found and qtype == 1 else b""
    flags = 0x8180 | (0 if found else 3)
    s.sendto(q[:2] + struct.pack("!HHHHH", flags, 1, 1 if answer else 0, 0, 0) + q[12:i + 5] + answer, peer)
EOF
python3 "$work/dns.py" "$DNS_NAME" 127.0.0.3 "$work/dns.log" >"$work/dns.ready" 2>"$work/dns.err" &
pids+=($!)
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64); print("ready", flush=True)
while True: s.accept()[0].close()' "$PORT" >"$work/tcp.ready" &
pids+=($!)
for _ in $(seq 100); do
    [[ -s $work/dns.ready && -s $work/tcp.ready ]] && break
    sleep 0.1
done
[[ -s $work/dns.ready && -s $work/tcp.ready ]] || fail "stand-in servers did not start: $(cat "$work/dns.err")"

# The gateway's root: the host's, with no libraries and a minimal /etc.
root=$work/root
mkdir "$root"
mount --rbind / "$root"
emptied=()
for d in lib lib64 lib32 libx32 usr/lib usr/lib64 usr/lib32 usr/libx32 usr/local/lib \
    usr/arm-linux-gnueabihf usr/aarch64-linux-gnu usr/gnemul etc; do
    if [[ -d $root/$d && ! -L $root/$d ]]; then
        mount -t tmpfs -o size=1m empty "$root/$d"
        emptied+=("/$d")
    fi
done
printf '127.0.0.1 localhost\n127.0.0.2 %s\n' "$HOSTS_NAME" >"$root/etc/hosts"
printf 'nameserver 127.0.0.1\n' >"$root/etc/resolv.conf"
echo "gateway root: empty ${emptied[*]}; /etc: $(ls "$root/etc" | paste -sd' ')"
libs=$(find "$root/usr/lib" "$root/usr/lib64" "$root/lib" "$root/lib64" -mindepth 1 2>/dev/null | head -3 || true)
[[ -z $libs ]] || fail "library directories are not empty: $libs"
# A dynamically linked program cannot start there: no loader, no libc.so.6.
if out=$(chroot "$root" /bin/sh -c true 2>&1); then
    fail "a dynamic /bin/sh ran in the gateway root"
fi
echo "a dynamic program there: ${out:-fails}"

probe() { # NAME -> the probe's JSON (exit status ignored: failures are in the JSON)
    env -i "$(command -v chroot)" "$root" "$(command -v qemu-arm-static)" "$bin" probe tcp "$1:$PORT" --json 2>&1 || true
}

# No nsswitch.conf (OpenWrt, minimal images), Debian's, and Raspberry Pi OS's, whose
# mDNS module a static binary cannot have built in (it looks for
# libnss_mdns4_minimal.so.2, finds none here, and goes on to dns).
for nss in none "hosts: files dns" "hosts: files mdns4_minimal [NOTFOUND=return] dns"; do
    if [[ $nss == none ]]; then
        rm -f "$root/etc/nsswitch.conf"
    else
        printf '%s\n' "$nss" >"$root/etc/nsswitch.conf"
    fi
    for name in "$HOSTS_NAME" "$DNS_NAME"; do
        : >"$work/dns.log"
        out=$(probe "$name")
        [[ $out == *'"received":1'* && $out != *'"error"'* ]] \
            || fail "nsswitch.conf $nss: $name did not resolve and connect: $out"
        asked=$(sort -u "$work/dns.log" | paste -sd, || true)
        if [[ $name == "$HOSTS_NAME" ]]; then
            [[ -z $asked ]] || fail "nsswitch.conf $nss: $name asked DNS ($asked) though /etc/hosts has it"
            echo "ok: nsswitch.conf $nss: $name from /etc/hosts, no DNS query: $out"
        else
            grep -q "^$DNS_NAME 1$" "$work/dns.log" || fail "nsswitch.conf $nss: no A query for $name reached the DNS server"
            echo "ok: nsswitch.conf $nss: $name from DNS on 127.0.0.1 (asked: $asked): $out"
        fi
    done
done
# And a name nobody knows fails as a resolve error, not a hang or a crash.
rm -f "$root/etc/nsswitch.conf"
out=$(probe nosuch.example.test)
[[ $out == *'"error":"resolve nosuch.example.test: '* ]] || fail "an unknown name: $out"
echo "ok: an unknown name is a resolve error: $out"

# The broker's name goes the same way (rumqttc's lookup_host): `run` with its broker
# as a DNS name and a target as an /etc/hosts name publishes a report.
mport=18883
# All of loopback: the broker's name resolves to 127.0.0.3.
printf 'listener %s\nallow_anonymous true\n' "$mport" >"$work/mosquitto.conf"
[[ $(id -u) == 0 ]] && echo "user root" >>"$work/mosquitto.conf"
mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null && break; sleep 0.1; done
mkdir -p "$root/etc/faultline" "$work/state"
printf '%s\n' 'site = "names"' 'isp = "LoopNet"' 'window_seconds = 1' "state_dir = \"$work/state\"" \
    '[mqtt]' "url = \"mqtt://$DNS_NAME:$mport\"" \
    '[[target]]' 'name = "pbx"' 'layer = "lan"' 'kind = "tcp"' "host = \"$HOSTS_NAME:$PORT\"" \
    >"$root/etc/faultline/agent.toml"
: >"$work/dns.log"
timeout 60 mosquitto_sub -p "$mport" -t 'faultline/v1/sites/names/report' -C 1 -W 45 -F '%l' \
    >"$work/sub.out" 2>&1 &
sub=$!
pids+=($sub)
sleep 0.3
env -i "$(command -v chroot)" "$root" "$(command -v qemu-arm-static)" "$bin" \
    run --config /etc/faultline/agent.toml >"$work/run.log" 2>&1 &
agent=$!
pids+=($agent)
wait "$sub" || fail "run: no report through $DNS_NAME:$mport: $(cat "$work/sub.out") / agent: $(tail -5 "$work/run.log")"
kill -TERM "$agent" 2>/dev/null || true
wait "$agent" 2>/dev/null || true
grep -q "^$DNS_NAME 1$" "$work/dns.log" || fail "run: the broker's name was not asked of DNS"
grep -q "connected to mqtt://$DNS_NAME:$mport" "$work/run.log" || fail "run: no connect line: $(cat "$work/run.log")"
echo "ok: run: broker $DNS_NAME from DNS, target $HOSTS_NAME from /etc/hosts: a $(cat "$work/sub.out")-byte report arrived"

if [[ -n ${TRACE:-} ]]; then
    # The guest's system calls (qemu -strace): files opened, sockets connected.
    echo "trace: probe tcp $DNS_NAME:$PORT, no nsswitch.conf"
    env -i "$(command -v chroot)" "$root" "$(command -v qemu-arm-static)" -strace "$bin" \
        probe tcp "$DNS_NAME:$PORT" --json 2>&1 |
        grep -E '^[0-9]+ (openat|connect|socket|statx\(AT_FDCWD)' | sed 's/^[0-9]* /  /' || true
fi
