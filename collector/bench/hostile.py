#!/usr/bin/env python3
"""The hostile site of collector/bench/hostile.sh (DESIGN.md "Nothing forged").

A minimal MQTT 3.1.1 client (QoS 1, TLS, logins, client ids, wills: what
mosquitto_pub cannot do from one process with binary payloads) and the reports a
hostile gateway sends, in postcard (the agents' format, encoded here by hand from
shared/src/wire.rs) or JSON. Subcommands:

  flood    N reports from one site as fast as the broker takes them, each naming
           128 targets and 128 providers never seen before, a new boot each time,
           claiming 10 s windows (so beyond a day's backlog they are paced)
  classes  each class of bad input a few times, its counter read from
           /api/counters before and after: a Markdown table on stdout
  acl      takeover and forgery attempts against the shipped Mosquitto config
           (collector/deploy/) with a real site-a online: a Markdown table
Progress on stderr. Needs only the standard library.
"""

import argparse
import json
import socket
import ssl
import sys
import threading
import time
import urllib.request

# ---- postcard (shared/src/wire.rs) ---------------------------------------------------


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pstr(s):
    b = s.encode() if isinstance(s, str) else s
    return varint(len(b)) + b


def opt(x):
    return b"\x00" if x is None else b"\x01" + x


LAYER = {"lan": 0, "isp": 1, "internet": 2, "provider": 3}
KIND = {"icmp": 0, "stamp": 1, "sip": 2, "stun": 3, "dns": 4, "tcp": 5}


def probe(target, layer="internet", kind="icmp", sent=10, received=10, provider=None,
          rtt_ms=(10.0, 11.0, 11.0, 12.0, 13.0), jitter_ms=0.5, max_burst=None, mos=None):
    """One WireProbe as a length-prefixed record; times in 10 µs units."""
    rtt = None
    if rtt_ms is not None:
        u = [round(v * 100) for v in rtt_ms]
        rtt = b"".join(varint(v) for v in [u[0]] + [max(0, x - u[0]) for x in u[1:]])
    body = (pstr(target) + bytes([LAYER[layer]]) + opt(provider and pstr(provider))
            + bytes([KIND[kind]]) + varint(sent) + varint(received) + opt(rtt)
            + opt(None if jitter_ms is None else varint(round(jitter_ms * 100)))
            + opt(None if max_burst is None else varint(max_burst))
            + opt(None if mos is None else varint(round(mos * 100))) + opt(None))
    return pstr(body)


def host(cpu_pct=10.0, mem_pct=40.0, load1=0.2):
    return pstr(varint(round(cpu_pct * 10)) + varint(round(mem_pct * 10)) + varint(round(load1 * 100)))


def postcard(site, boot, seq, start_ms, window_ms, probes, host_rec=None, version=1):
    return (bytes([version]) + pstr(site) + varint(boot) + varint(seq) + varint(start_ms)
            + varint(window_ms) + opt(host_rec) + varint(len(probes)) + b"".join(probes))


def honest_probes():
    return [probe("gw", "lan", rtt_ms=(0.4, 0.5, 0.5, 0.8, 1.0)),
            probe("anchor", "internet"),
            probe("voipco-media", "provider", "stamp", 100, 100, "voipco", (20.0, 21.0, 21.0, 23.0, 25.0), 1.0, mos=4.3)]


def json_report(site, boot, seq, start_ms, window_ms=10000, probes=None, host_obj=None, v=1):
    r = {"v": v, "site": site, "boot": boot, "seq": seq, "start_ms": start_ms, "window_ms": window_ms,
         "probes": probes if probes is not None else [
             {"target": "gw", "layer": "lan", "kind": "icmp", "sent": 10, "received": 10,
              "rtt_ms": {"min": 0.4, "p50": 0.5, "avg": 0.5, "p95": 0.8, "max": 1.0}, "jitter_ms": 0.1}]}
    if host_obj is not None:
        r["host"] = host_obj
    return json.dumps(r, separators=(",", ":"))


def now_ms():
    return int(time.time() * 1000)


# ---- MQTT 3.1.1 ------------------------------------------------------------------------


def u16(n):
    return n.to_bytes(2, "big")


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    return u16(len(b)) + b


def packet(first, body):
    n, rl = len(body), bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    return bytes([first]) + bytes(rl) + body


class Mqtt:
    """One connection; a reader thread counts PUBACKs, keeps incoming PUBLISHes
    (acknowledging QoS 1) and notes when the broker closes the connection."""

    def __init__(self, port, client_id, user=None, password=None, ca=None, will=None, keepalive=30):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ca:
            ctx = ssl.create_default_context(cafile=ca)
            raw = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock = raw
        self.lock = threading.Lock()
        self.acked = 0
        self.pid = 0
        self.sent = 0
        self.received = []
        self.suback = None
        self.closed = threading.Event()
        flags = 0x02
        payload = mstr(client_id)
        if will:
            topic, msg = will
            flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retained
            payload += mstr(topic) + mstr(msg)
        if user is not None:
            flags |= 0x80
            payload += mstr(user)
        if password is not None:
            flags |= 0x40
            payload += mstr(password)
        self.sock.sendall(packet(0x10, mstr("MQTT") + bytes([4, flags]) + u16(keepalive) + payload))
        head = self._read(4)
        self.connack = head[3] if head and head[0] == 0x20 else None
        if self.connack == 0:
            self.sock.settimeout(None)
            threading.Thread(target=self._reader, daemon=True).start()
        else:
            self.closed.set()

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def _reader(self):
        while True:
            h = self._read(1)
            if h is None:
                break
            mult, n = 1, 0
            while True:
                b = self._read(1)
                if b is None:
                    self.closed.set()
                    return
                n += (b[0] & 0x7F) * mult
                mult *= 128
                if not b[0] & 0x80:
                    break
            body = self._read(n) if n else b""
            if body is None:
                break
            kind = h[0] >> 4
            if kind == 4:
                with self.lock:
                    self.acked += 1
            elif kind == 9:
                self.suback = body[2:]
            elif kind == 3:
                tl = int.from_bytes(body[:2], "big")
                topic = body[2:2 + tl].decode(errors="replace")
                rest = body[2 + tl:]
                if (h[0] >> 1) & 3:
                    self._send(packet(0x40, rest[:2]))
                    rest = rest[2:]
                self.received.append((topic, rest))
        self.closed.set()

    def _send(self, data):
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed.set()

    def publish(self, topic, payload, retain=False):
        """QoS 1; waits while more than 200 are unacknowledged."""
        if isinstance(payload, str):
            payload = payload.encode()
        self.pid = self.pid % 65535 + 1
        self.sent += 1
        while self.sent - self.acked > 200 and not self.closed.is_set():
            time.sleep(0.0005)
        self._send(packet(0x32 | int(retain), mstr(topic) + u16(self.pid) + payload))
        return self.pid

    def wait_acked(self, n, timeout=60):
        end = time.time() + timeout
        while self.acked < n and time.time() < end and not self.closed.is_set():
            time.sleep(0.002)
        return self.acked >= n

    def subscribe(self, topics, timeout=10):
        body = u16(1) + b"".join(mstr(t) + b"\x01" for t in topics)
        self._send(packet(0x82, body))
        end = time.time() + timeout
        while self.suback is None and time.time() < end:
            time.sleep(0.01)
        return self.suback

    def close(self):
        self._send(b"\xe0\x00")
        try:
            self.sock.close()
        except OSError:
            pass


# ---- the collector's HTTP --------------------------------------------------------------


def get_json(http, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (http, path), timeout=10) as r:
        return json.load(r)


def counters(http):
    c = get_json(http, "/api/counters")
    by = dict(c.get("rejected_by_reason", {}))
    return c, by


def handled(c):
    return c["reports"] + c["rejected"]


def log(*a):
    print("[hostile.py]", *a, file=sys.stderr, flush=True)


# ---- flood -----------------------------------------------------------------------------


def cmd_flood(a):
    m = Mqtt(a.port, "hostile-flood-%d" % a.first)
    t0, start = time.time(), now_ms()
    for i in range(a.first, a.first + a.count):
        probes = [probe("t%d-%d" % (i, k), "provider", "icmp", 10, 10, "p%d-%d" % (i, k)) for k in range(128)]
        m.publish("faultline/v1/sites/%s/report" % a.site,
                  postcard(a.site, 1_000_000 + i, i, start + i * 10_000, 10_000, probes, host()))
    ok = m.wait_acked(a.count)
    m.close()
    log("flood: %d reports (seq %d..%d) in %.1f s, acknowledged: %s" % (
        a.count, a.first, a.first + a.count - 1, time.time() - t0, ok))
    return 0 if ok else 1


# ---- classes ---------------------------------------------------------------------------


def classes(site):
    """(class, expected reason or None for accepted, [(topic suffix or full topic, payload)])."""
    t = now_ms()
    rep = "faultline/v1/sites/%s/report" % site
    js = rep + "/json"
    seq = iter(range(10_000, 10**9))

    def pc(**kw):
        k = dict(site=site, boot=7, seq=next(seq), start_ms=t, window_ms=10_000, probes=honest_probes())
        k.update(kw)
        return postcard(**k)

    def jr(**kw):
        k = dict(site=site, boot=7, seq=next(seq), start_ms=t)
        k.update(kw)
        return json_report(**k)

    def jprobe(**kw):
        p = {"target": "anchor", "layer": "internet", "kind": "icmp", "sent": 10, "received": 10,
             "rtt_ms": {"min": 10.0, "p50": 11.0, "avg": 11.0, "p95": 12.0, "max": 13.0}, "jitter_ms": 0.5}
        p.update(kw)
        return [p]

    def rtt(v):
        return {"min": v, "p50": v, "avg": v, "p95": v, "max": v}

    n = 3
    good = pc()
    out = [
        ("JSON that does not parse", "malformed", [(js, '{"v":1,"site":"%s","boot":' % site)] * n),
        ("postcard that does not parse (varint overflow)", "malformed", [(rep, b"\x01\x05abcde" + b"\xff" * 12)] * n),
        ("postcard cut short (first 20 bytes of a report)", "truncated", [(rep, good[:20])] * n),
        ("empty payload on the report topic", "truncated", [(rep, b"")] * n),
        ("unknown wire version (first byte 2)", "version", [(rep, b"\x02" + good[1:])] * n),
        ("JSON report `\"v\": 2`", "version", [(js, jr(v=2)) for _ in range(n)]),
        ("payload over the cap (100 KiB JSON)", "oversized", [(js, jr()[:-1] + ',"pad":"%s"}' % ("x" * 100_000))] * n),
        ("129 probes (over the 128 cap)", "malformed",
         [(rep, pc(probes=[probe("c%d" % k) for k in range(129)])) for _ in range(n)]),
        ("invalid id in a postcard report (target `bad target!`)", "invalid_id",
         [(rep, pc(probes=[probe("bad target!")])) for _ in range(n)]),
        ("invalid id in a JSON report (target `bad target!`)", "malformed",
         [(js, jr(probes=jprobe(target="bad target!"))) for _ in range(n)]),
        ("invalid site id in the topic", "topic", [("faultline/v1/sites/bad!site/report", good)] * n),
        ("another site in the payload than in the topic", "site_mismatch",
         [(rep, pc(site="site-0001")) for _ in range(n)]),
        ("a window already counted, again", "duplicate", [(rep, pc(seq=10_000))] * n),
        ("`window_ms` 500", "window", [(rep, pc(window_ms=500)) for _ in range(n)]),
        ("`window_ms` 2 h", "window", [(rep, pc(window_ms=7_200_000)) for _ in range(n)]),
        ("received > sent", "impossible", [(rep, pc(probes=[probe("anchor", sent=10, received=11)])) for _ in range(n)]),
        ("RTT ≥ 1 h", "impossible",
         [(rep, pc(probes=[probe("anchor", rtt_ms=(3_600_000.0,) * 5)])) for _ in range(n)]),
        ("negative RTT (JSON)", "impossible", [(js, jr(probes=jprobe(rtt_ms=rtt(-5.0)))) for _ in range(n)]),
        ("jitter ≥ 1 h", "impossible", [(rep, pc(probes=[probe("anchor", jitter_ms=4_000_000.0)])) for _ in range(n)]),
        ("negative jitter (JSON)", "impossible", [(js, jr(probes=jprobe(jitter_ms=-1.0))) for _ in range(n)]),
        ("MOS 0.5", "impossible", [(rep, pc(probes=[probe("m", "provider", "stamp", provider="voipco", mos=0.5)])) for _ in range(n)]),
        ("MOS 6", "impossible", [(rep, pc(probes=[probe("m", "provider", "stamp", provider="voipco", mos=6.0)])) for _ in range(n)]),
        ("max_burst > sent", "impossible", [(rep, pc(probes=[probe("anchor", max_burst=50)])) for _ in range(n)]),
        ("CPU 150 %", "impossible", [(rep, pc(host_rec=host(cpu_pct=150.0))) for _ in range(n)]),
        ("memory −1 % (JSON)", "impossible",
         [(js, jr(host_obj={"cpu_pct": 1.0, "mem_pct": -1.0, "load1": 0.1})) for _ in range(n)]),
        ("load −1 (JSON)", "impossible",
         [(js, jr(host_obj={"cpu_pct": 1.0, "mem_pct": 1.0, "load1": -1.0})) for _ in range(n)]),
        ("NaN RTT (JSON `NaN`)", "malformed",
         [(js, jr(probes=jprobe()).replace('"min":10.0', '"min":NaN')) for _ in range(n)]),
        ("infinite RTT (JSON `1e999`)", "malformed",
         [(js, jr(probes=jprobe()).replace('"min":10.0', '"min":1e999')) for _ in range(n)]),
    ]
    return out


def cmd_classes(a):
    m = Mqtt(a.port, "hostile-classes")
    print("| class tried | sent | counted as (reason label: counter change) | expected | as expected |")
    print("|---|---:|---|---|---|")
    ok_all = True

    def run(name, expect, msgs, settle_all=True):
        nonlocal ok_all
        c0, by0 = counters(a.http)
        for topic, payload in msgs:
            m.publish(topic, payload)
        m.wait_acked(m.sent)
        end = time.time() + 20
        while True:
            c1, by1 = counters(a.http)
            if handled(c1) - handled(c0) >= len(msgs) or time.time() > end:
                break
            time.sleep(0.05)
        time.sleep(0.1)
        c1, by1 = counters(a.http)
        moved = {k: by1.get(k, 0) - by0.get(k, 0) for k in set(by0) | set(by1)}
        moved = {k: v for k, v in moved.items() if v}
        accepted = c1["reports"] - c0["reports"]
        cells = ["%s: +%d" % (k, v) for k, v in sorted(moved.items())]
        if accepted:
            cells.append("accepted: +%d" % accepted)
        if not cells:
            cells.append("nothing counted")
        return c0, c1, moved, accepted, cells

    for name, expect, msgs in classes(a.site):
        if expect == "duplicate":
            # The window first, counted once; then the copies.
            m.publish(msgs[0][0], msgs[0][1])
            m.wait_acked(m.sent)
            time.sleep(0.3)
        _, _, moved, accepted, cells = run(name, expect, msgs)
        ok = moved.get(expect, 0) == len(msgs) and accepted == 0
        ok_all &= ok
        print("| %s | %d | %s | `%s` | %s |" % (name, len(msgs), ", ".join(cells), expect, "yes" if ok else "**no**"))
        log(name, cells)

    # Windows far faster than the site's clock: a fresh site claiming 1 h windows
    # may send a day's worth (24) and 2 more at once.
    pace_site = a.site + "-pace"
    t = now_ms()
    msgs = [("faultline/v1/sites/%s/report" % pace_site,
             postcard(pace_site, 9, s, t + s * 3_600_000, 3_600_000, honest_probes())) for s in range(40)]
    _, _, moved, accepted, cells = run("40 windows of 1 h at once", "paced", msgs)
    ok = moved.get("paced", 0) == 40 - 26 and accepted == 26
    ok_all &= ok
    print("| 40 windows claiming 1 h each, sent at once (a day's backlog is 24 + 2) | 40 | %s | `paced` (14) | %s |"
          % (", ".join(cells), "yes" if ok else "**no**"))

    # Gaps in seq: each boot keeps at most 1,024 runs of seqs.
    gap_site = a.site + "-gaps"
    msgs = [("faultline/v1/sites/%s/report" % gap_site,
             postcard(gap_site, 5, 2 * s, t, 10_000, honest_probes())) for s in range(1030)]
    c0, c1, moved, accepted, cells = run("1,030 windows, every other seq", "dedup_full", msgs)
    ok = moved.get("dedup_full", 0) == 1030 - 1024 and accepted == 1024
    ok_all &= ok
    print("| 1,030 windows of one boot, every other seq (a boot keeps 1,024 runs) | 1,030 | %s | `dedup_full` (6) | %s |"
          % (", ".join(cells), "yes" if ok else "**no**"))

    # A seq far ahead: accepted, and what it does to the missing-windows count.
    jump_site = a.site + "-jump"
    msgs = [("faultline/v1/sites/%s/report" % jump_site, postcard(jump_site, 3, s, t, 10_000, honest_probes()))
            for s in (0, 10**15)]
    c0, c1, moved, accepted, cells = run("seq jump", None, msgs)
    jump = c1["missing_windows"] - c0["missing_windows"]
    print("| seq 0, then seq 10¹⁵ (accepted: a gateway's seq is its own) | 2 | %s; missing windows +%s | accepted | — |"
          % (", ".join(cells), "{:,}".format(jump)))
    m.close()
    c, by = counters(a.http)
    print()
    print("CLASSES_OK=%s" % ("yes" if ok_all else "no"), file=sys.stderr)
    print("TOO_MANY_TARGETS=%d" % by.get("too_many_targets", 0), file=sys.stderr)
    return 0


# ---- acl -------------------------------------------------------------------------------


def cmd_acl(a):
    site_a, site_c = ("site-a", a.pass_a), ("site-c", a.pass_c)
    ca = a.ca
    rows = []
    ok_all = True

    def row(attempt, seen, refused):
        nonlocal ok_all
        ok_all &= refused
        rows.append("| %s | %s | %s |" % (attempt, seen, "yes" if refused else "**no**"))
        log(attempt, "->", seen)

    # site-a: an agent online, its will set, reporting every second.
    will = ("faultline/v1/sites/site-a/status", json.dumps({"state": "offline", "reason": "lost"}))
    agent = Mqtt(a.agents, "faultline-site-a", *site_a, ca=ca, will=will)
    assert agent.connack == 0, "site-a could not connect: %s" % agent.connack
    agent.publish("faultline/v1/sites/site-a/status",
                  json.dumps({"state": "online", "boot": 11, "version": "bench", "isp": "isp-a"}), retain=True)
    stop = threading.Event()
    seqs = [0]

    def report_loop():
        start = now_ms()
        while not stop.is_set() and not agent.closed.is_set():
            s = seqs[0]
            agent.publish("faultline/v1/sites/site-a/report",
                          postcard("site-a", 11, s, start + s * 1000, 1000, honest_probes(), host()))
            seqs[0] += 1
            stop.wait(1.0)

    threading.Thread(target=report_loop, daemon=True).start()
    # A reader on the internal listener watches site-a's status and verdicts.
    watch = Mqtt(a.internal, "bench-watch", "faultline-reader", a.pass_reader)
    watch.subscribe(["faultline/v1/state/sites/site-a", "faultline/v1/sites/site-a/status"])

    def site_a_state():
        st = get_json(a.http, "/api/state")
        for s in st["sites"]:
            if s["id"] == "site-a":
                return s
        return None

    end = time.time() + 30
    while time.time() < end:
        s = site_a_state()
        if s and s["presence"] == "online" and s["verdict"]["state"] == "ok":
            break
        time.sleep(0.2)
    log("site-a online and ok")

    def offline_seen():
        return sum(1 for t, p in watch.received if b'"offline"' in p)

    # 1. Takeover: site-c's login with site-a's client ids.
    for cid in ("faultline-site-a", "site-a"):
        c = Mqtt(a.agents, cid, *site_c, ca=ca)
        time.sleep(3)
        still = not agent.closed.is_set()
        row("site-c's login connects with client id `%s`" % cid,
            "connection accepted as `site-c` (use_username_as_clientid); site-a's connection %s, "
            "its will %s" % ("stays up" if still else "**was dropped**",
                             "not fired" if not offline_seen() else "**fired**"),
            still and not offline_seen())
        c.close()

    # 2. Publishing as site-a with site-c's login.
    c_reports = get_json(a.http, "/api/counters")["reports"]
    c = Mqtt(a.agents, "site-c", *site_c, ca=ca)
    forged = [
        ("faultline/v1/sites/site-a/report", postcard("site-a", 666, 0, now_ms(), 1000, honest_probes())),
        ("faultline/v1/sites/site-a/report/json", json_report("site-a", 666, 1, now_ms(), 1000)),
        ("faultline/v1/sites/site-a/status", json.dumps({"state": "offline", "reason": "lost"})),
        ("faultline/v1/state/sites/site-a", json.dumps({"scope": "site", "id": "site-a", "state": "down"})),
    ]
    for topic, payload in forged:
        c.publish(topic, payload, retain=topic.endswith("status"))
    c.wait_acked(len(forged))
    # Its own report after the forged ones: once counted, they would have been too.
    c.publish("faultline/v1/sites/site-c/report", postcard("site-c", 5, 0, now_ms(), 1000, honest_probes()))
    c.wait_acked(len(forged) + 1)
    end = time.time() + 10
    while time.time() < end and not any(s["id"] == "site-c" for s in get_json(a.http, "/api/state")["sites"]):
        time.sleep(0.1)
    time.sleep(2)
    s = site_a_state()
    forged_boot = s["boot"] == 666 or (s.get("window") or {}).get("boot") == 666
    watched_forgery = sum(1 for t, p in watch.received if b'"down"' in p or b"666" in p)
    row("site-c publishes site-a's report (postcard and JSON, forged boot), its status "
        "(`offline`) and its verdict", "delivered to nobody: site-a still on boot %d, %s, verdict `%s`; "
        "no forged status or verdict seen by a reader" % (s["boot"], s["presence"], s["verdict"]["state"])
        if not forged_boot and not watched_forgery and not offline_seen()
        else "**got through** (site-a boot %s, %d forged messages seen)" % (s["boot"], watched_forgery),
        not forged_boot and not watched_forgery and not offline_seen())

    # 3. Its own topic, another site in the payload.
    _, by0 = counters(a.http)
    c.publish("faultline/v1/sites/site-c/report", postcard("site-a", 11, 100_000, now_ms(), 1000, honest_probes()))
    c.wait_acked(len(forged) + 2)
    end = time.time() + 10
    while time.time() < end and counters(a.http)[1].get("site_mismatch", 0) == by0.get("site_mismatch", 0):
        time.sleep(0.05)
    _, by1 = counters(a.http)
    d = by1.get("site_mismatch", 0) - by0.get("site_mismatch", 0)
    s = site_a_state()
    row("site-c's own topic, site-a in the payload", "counted `site_mismatch` (+%d); site-a's last window "
        "seq %d (not 100,000)" % (d, s["window"]["seq"]), d == 1 and s["window"]["seq"] != 100_000)
    c.close()

    # 4. Reading: site-c asks for site-a's verdict (retained) and for everything.
    c = Mqtt(a.agents, "site-c", *site_c, ca=ca)
    granted = c.subscribe(["faultline/v1/state/sites/site-a", "faultline/v1/state/#", "faultline/v1/#",
                           "faultline/v1/sites/site-a/config"])
    time.sleep(4)
    other = [t for t, _ in c.received if "site-c" not in t]
    own = [t for t, _ in c.received if "site-c" in t]
    row("site-c subscribes to site-a's verdict, `faultline/v1/state/#` and `faultline/v1/#` (4 s, site-a "
        "reporting every second)", "SUBACK %s; received %d messages about others, %d of its own (its verdict)"
        % (" ".join("0x%02x" % b for b in (granted or b"")), len(other), len(own)), not other)
    c.close()

    # site-a throughout.
    stop.set()
    time.sleep(1.5)
    s = site_a_state()
    fine = s["presence"] == "online" and s["verdict"]["state"] == "ok" and not offline_seen() \
        and not agent.closed.is_set() and s["boot"] == 11
    row("site-a, after all of the above", "%d windows sent on one connection, %s, verdict `%s`, missing "
        "windows %d, offline statuses or verdicts seen: %d" % (seqs[0], s["presence"], s["verdict"]["state"],
                                                               s["missing_windows"], offline_seen()), fine)
    agent.close()
    watch.close()
    print("| attempt | what happened | refused, site-a unaffected |")
    print("|---|---|---|")
    for r in rows:
        print(r)
    print("ACL_OK=%s" % ("yes" if ok_all else "no"), file=sys.stderr)
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flood")
    f.add_argument("--port", type=int, required=True)
    f.add_argument("--site", default="hostile")
    f.add_argument("--first", type=int, default=0)
    f.add_argument("--count", type=int, required=True)
    c = sub.add_parser("classes")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--http", type=int, required=True)
    c.add_argument("--site", default="hostile")
    x = sub.add_parser("acl")
    for k in ("agents", "internal", "http"):
        x.add_argument("--" + k, type=int, required=True)
    for k in ("ca", "pass-a", "pass-c", "pass-reader"):
        x.add_argument("--" + k, required=True)
    a = p.parse_args()
    return {"flood": cmd_flood, "classes": cmd_classes, "acl": cmd_acl}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
