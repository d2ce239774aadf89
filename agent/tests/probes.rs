//! The probes against real counterparts, through the real binary: Kamailio for `sip`,
//! coturn for `stun`, our own reflector (stateless and stateful) and an independent
//! in-test RFC 8762 reflector for `stamp`, loopback for `icmp`, an in-test DNS server
//! for `dns`. Assertions are about behaviour (what was counted and reported), never
//! about how fast this machine is.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use faultline_shared::{Kind, ProbeResult};
use faultline_tests::coturn::Coturn;
use faultline_tests::dns::DnsServer;
use faultline_tests::kamailio::Kamailio;
use faultline_tests::{Child, free_udp_port, require_root, wait_until, workspace_bin};

fn agent() -> Command {
    Command::new(workspace_bin("faultline-agent"))
}

/// Runs `faultline-agent probe ARGS` and returns its output.
fn probe(args: &[&str]) -> Output {
    agent()
        .arg("probe")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run faultline-agent probe")
}

/// Runs `probe ARGS --json` and parses the one ProbeResult it prints.
fn probe_json(args: &[&str]) -> (ProbeResult, Output) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = probe(&a);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: ProbeResult = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "probe {args:?} --json printed no ProbeResult ({e}): stdout {stdout:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(stdout.trim().lines().count(), 1, "exactly one JSON line");
    (r, out)
}

fn stamp_request(seq: u32) -> [u8; 44] {
    let mut b = [0u8; 44];
    b[..4].copy_from_slice(&seq.to_be_bytes());
    b
}

/// Whether a STAMP reflector answers at `addr`.
fn reflector_answers(addr: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _ = s.send_to(&stamp_request(77), addr);
    let mut buf = [0u8; 128];
    let ok = matches!(s.recv_from(&mut buf), Ok((44, _)) if buf[24..28] == 77u32.to_be_bytes());
    if ok {
        // RFC 8762: Session-Sender TTL is the request's IP TTL (loopback: the default).
        let ttl: u8 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
            .map_or(64, |s| s.trim().parse().unwrap_or(64));
        assert_eq!(buf[40], ttl, "Session-Sender TTL");
    }
    ok
}

fn start_reflector(stateful: bool) -> (Child, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let mut cmd = agent();
    cmd.args(["reflect", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if stateful {
        cmd.arg("--stateful");
    }
    let child = Child::spawn("reflector", &mut cmd).expect("spawn reflector");
    assert!(
        wait_until(Duration::from_secs(10), || reflector_answers(addr)),
        "reflector did not answer on {addr}"
    );
    (child, addr)
}

fn assert_clean_stream(r: &ProbeResult, sent: u32) {
    assert_eq!(r.kind, Kind::Stamp);
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(
        (r.sent, r.received),
        (sent, sent),
        "no loss on loopback: {r:?}"
    );
    assert_eq!(r.max_burst, Some(0));
    let rtt = r.rtt_ms.expect("rtt");
    assert!(rtt.min > 0.0 && rtt.min <= rtt.p50 && rtt.p50 <= rtt.p95 && rtt.p95 <= rtt.max);
    assert!(r.jitter_ms.is_some_and(|j| j >= 0.0));
    let mos = r.mos.expect("mos");
    // Loopback with no loss: the E-model's best band, below its 4.41 ceiling at R 93.2.
    assert!((4.0..=4.41).contains(&mos), "mos {mos}");
}

/// The reflector's own Sequence Number for two packets (sender numbers 500, 501)
/// from a fresh socket: a copy when stateless, a new session's 0, 1 when stateful.
fn reflector_sequence(addr: SocketAddr) -> Vec<u32> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    for seq in [500, 501] {
        s.send_to(&stamp_request(seq), addr).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = s.recv_from(&mut buf).expect("reflected packet");
        assert_eq!(n, 44);
        assert_eq!(
            buf[24..28],
            seq.to_be_bytes(),
            "Session-Sender Sequence Number"
        );
        got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
    }
    got
}

#[test]
fn stamp_through_our_reflector_stateless_and_stateful() {
    for stateful in [false, true] {
        let (mut child, addr) = start_reflector(stateful);
        let want = if stateful { [0, 1] } else { [500, 501] };
        assert_eq!(reflector_sequence(addr), want, "stateful {stateful}");
        let (r, out) = probe_json(&[
            "stamp",
            &addr.to_string(),
            "--pps",
            "50",
            "--seconds",
            "2",
            "--codec",
            "g711",
        ]);
        assert!(out.status.success());
        assert_clean_stream(&r, 100);
        // Padded to G.711's 160-byte frame, with G.729A's impairment: still clean.
        let (r, _) = probe_json(&[
            "stamp",
            &addr.to_string(),
            "--seconds",
            "1",
            "--codec",
            "g729a",
            "--pad",
        ]);
        assert_eq!((r.sent, r.received), (50, 50));
        assert!(r.mos.unwrap() < 4.1, "G.729A's Ie 11 caps MOS: {r:?}");
        // SIGTERM: a clean stop with its one-line summary.
        child.signal("TERM");
        let st = child
            .wait_timeout(Duration::from_secs(10))
            .expect("reflector exits on SIGTERM");
        assert!(st.success());
    }
}

/// An RFC 8762 reflector written from the RFC's layout, independent of ours: its own
/// sequence numbers (stateful), a fixed holding time it reports honestly in T2/T3,
/// every 10th packet (by the sender's sequence number) dropped, and every 7th
/// answered twice.
fn odd_reflector(stop: Arc<AtomicBool>) -> (JoinHandle<()>, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = s.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut own_seq = 1000u32;
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = s.recv_from(&mut buf) else {
                continue;
            };
            if n < 44 {
                continue;
            }
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if seq % 10 == 3 {
                continue;
            }
            let t2: u64 = 0x0000_0001_0000_0000; // 1 s in NTP format
            let t3: u64 = t2 + (1u64 << 32) / 20; // held 50 ms, says the reflector
            let mut out = vec![0u8; n];
            out[..4].copy_from_slice(&own_seq.to_be_bytes());
            out[4..12].copy_from_slice(&t3.to_be_bytes());
            out[12..14].copy_from_slice(&[0x80, 0x01]);
            out[16..24].copy_from_slice(&t2.to_be_bytes());
            out[24..28].copy_from_slice(&buf[..4]);
            out[28..36].copy_from_slice(&buf[4..12]);
            out[36..38].copy_from_slice(&buf[12..14]);
            out[40] = 64;
            own_seq += 1;
            std::thread::sleep(Duration::from_millis(50));
            let _ = s.send_to(&out, peer);
            if seq % 7 == 0 {
                let _ = s.send_to(&out, peer);
            }
        }
    });
    (h, addr)
}

#[test]
fn stamp_counts_loss_exactly_ignores_duplicates_and_removes_reflector_holding_time() {
    let stop = Arc::new(AtomicBool::new(false));
    let (h, addr) = odd_reflector(stop.clone());
    // 10 packets/s for 3 s: sequence numbers 0..30, of which 3, 13 and 23 are dropped.
    let (r, out) = probe_json(&["stamp", &addr.to_string(), "--pps", "10", "--seconds", "3"]);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(out.status.success(), "{r:?}");
    assert_eq!((r.sent, r.received), (30, 27), "{r:?}");
    assert_eq!(r.max_burst, Some(1));
    // The reflector slept 50 ms per packet and reported it: the RTT excludes it.
    let rtt = r.rtt_ms.unwrap();
    assert!(rtt.p50 < 50.0, "holding time not taken out: {rtt:?}");
    assert!(r.mos.unwrap() < 4.3, "10 % loss must cost MOS: {r:?}");
}

#[test]
fn stamp_to_nobody_is_an_error_not_a_hang() {
    let port = free_udp_port().to_string();
    let (r, out) = probe_json(&["stamp", &format!("127.0.0.1:{port}"), "--seconds", "1"]);
    assert!(!out.status.success());
    assert_eq!(r.received, 0);
    assert_eq!(r.sent, 50);
    assert!(
        matches!(r.error.as_deref(), Some("refused" | "timeout")),
        "{r:?}"
    );
}

#[test]
fn sip_options_against_kamailio_over_udp_and_tcp() {
    let Some(k) = Kamailio::start() else { return };
    let host = k.addr().to_string();
    for transport in ["udp", "tcp"] {
        let (r, out) = probe_json(&["sip", &host, "--transport", transport]);
        assert!(out.status.success(), "{transport}: {r:?}");
        assert_eq!(r.kind, Kind::Sip);
        assert_eq!(r.received, 1, "{transport}: {r:?}");
        assert_eq!(r.error, None);
        assert!(r.rtt_ms.is_some());
        let table = probe(&["sip", &host, "--transport", transport]);
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(text.contains("200 OK"), "{text}");
    }
}

#[test]
fn sip_5xx_counts_as_bad_with_the_code() {
    let Some(k) = Kamailio::start_answering(503, "Service Unavailable") else {
        return;
    };
    let (r, out) = probe_json(&["sip", &k.addr().to_string()]);
    assert!(!out.status.success());
    assert_eq!(r.received, 1, "the server answered: {r:?}");
    assert_eq!(r.error.as_deref(), Some("503"));
}

#[test]
fn sip_to_a_closed_port_is_refused_or_times_out() {
    // Nothing listens on a just-freed port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    let (r, _) = probe_json(&["sip", &host, "--transport", "tcp", "--seconds", "2"]);
    assert_eq!(
        (r.received, r.error.as_deref()),
        (0, Some("refused")),
        "{r:?}"
    );
    let (r, _) = probe_json(&["sip", &host, "--seconds", "2"]);
    assert_eq!(r.received, 0);
    assert!(
        matches!(r.error.as_deref(), Some("refused" | "timeout")),
        "{r:?}"
    );
}

#[test]
fn stun_binding_against_coturn() {
    let Some(c) = Coturn::start() else { return };
    let out = probe(&["stun", &c.addr().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let mapped = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("mapped"))
        .expect("a mapped line")
        .trim();
    let mapped: SocketAddr = mapped.parse().unwrap();
    assert_eq!(mapped.ip().to_string(), "127.0.0.1");
    let (r, _) = probe_json(&["stun", &c.addr().to_string()]);
    assert_eq!(
        (r.sent, r.received, r.error.as_deref()),
        (1, 1, None),
        "{r:?}"
    );
    assert!(r.rtt_ms.is_some());
}

#[test]
fn icmp_echo_to_loopback() {
    if !require_root("icmp to loopback through a raw socket") {
        return;
    }
    let (r, out) = probe_json(&["icmp", "127.0.0.1", "--count", "3", "--interval-ms", "100"]);
    assert!(out.status.success(), "{r:?}");
    assert_eq!((r.sent, r.received, r.max_burst), (3, 3, Some(0)), "{r:?}");
    assert!(r.rtt_ms.is_some() && r.jitter_ms.is_some());
}

#[test]
fn dns_a_srv_and_nxdomain_against_a_local_server() {
    let dns = DnsServer::start();
    let server = dns.addr().to_string();
    let (r, _) = probe_json(&[
        "dns",
        "host.example.test",
        "--record",
        "a",
        "--server",
        &server,
    ]);
    assert_eq!(
        (r.sent, r.received, r.error.as_deref()),
        (1, 1, None),
        "{r:?}"
    );
    assert_eq!(r.kind, Kind::Dns);
    let out = probe(&["dns", "_sip._udp.example.test", "--server", &server]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("10 5 5060 sip.example.test"), "{text}");
    let out = probe(&["dns", "host.example.test", "--server", &server]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("192.0.2.10"));
    let (r, _) = probe_json(&["dns", "nx.example.test", "--server", &server]);
    assert_eq!((r.received, r.error.as_deref()), (1, Some("nxdomain")));
}

#[test]
fn tcp_connect_time_and_refusal() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (r, out) = probe_json(&["tcp", &addr]);
    assert!(out.status.success());
    assert_eq!((r.sent, r.received, r.error.as_deref()), (1, 1, None));
    drop(l);
    let (r, _) = probe_json(&["tcp", &addr]);
    assert_eq!((r.received, r.error.as_deref()), (0, Some("refused")));
}

#[test]
fn bad_arguments_exit_2_with_the_flag_named() {
    for (args, flag) in [
        (&["stamp", "127.0.0.1", "--codec", "opus"][..], "--codec"),
        (&["warp", "127.0.0.1"][..], "KIND"),
        (&["tcp", "127.0.0.1"][..], "HOST"),
        (&["sip", "h", "--transport", "sctp"][..], "--transport"),
        (&["icmp", "h", "--pps", "9"][..], "--pps"),
    ] {
        let out = probe(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

/// Runs `sh -c script` in a fresh network namespace (its own loopback and sysctls, so
/// the host's `ping_group_range` is never touched).
fn in_netns(script: &str) -> Option<Output> {
    if !require_root("icmp socket selection in a network namespace") {
        return None;
    }
    faultline_tests::require("unshare", "util-linux")?;
    faultline_tests::require("setpriv", "util-linux")?;
    faultline_tests::require("ip", "iproute2")?;
    let bin = workspace_bin("faultline-agent");
    let script = format!(
        "ip link set lo up && {}",
        script.replace("AGENT", &bin.to_string_lossy())
    );
    Some(
        Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .output()
            .expect("run unshare"),
    )
}

#[test]
fn icmp_uses_the_unprivileged_ping_socket_when_the_sysctl_allows() {
    let Some(out) = in_netns(
        "sysctl -qw net.ipv4.ping_group_range='0 2147483647' && \
         AGENT probe icmp 127.0.0.1 --count 2 --interval-ms 100",
    ) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ping (unprivileged)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["received", "2"]),
        "{text}"
    );
}

#[test]
fn icmp_without_permission_says_what_to_grant() {
    // No ping sockets for anyone, and CAP_NET_RAW dropped: neither socket may be opened.
    let Some(out) = in_netns(
        "sysctl -qw net.ipv4.ping_group_range='1 0' && \
         setpriv --bounding-set -net_raw --inh-caps -net_raw AGENT probe icmp 127.0.0.1 --count 1 --json",
    ) else {
        return;
    };
    assert!(!out.status.success());
    let r: ProbeResult = serde_json::from_slice(&out.stdout).expect("one ProbeResult");
    let e = r.error.expect("an error");
    assert!(
        e.contains("CAP_NET_RAW") && e.contains("net.ipv4.ping_group_range"),
        "{e}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("setcap cap_net_raw+ep"),
        "the log carries the full hint: {log}"
    );
}

#[test]
fn stamp_through_an_impairment_relay_counts_exactly_what_it_dropped() {
    use faultline_tests::relay::{Direction, Impairment, Relay};
    let (_reflector, addr) = start_reflector(false);
    let relay = Relay::loopback(addr, 7).expect("start relay");
    let imp: Impairment = "delay=10ms,loss=5%".parse().unwrap();
    relay.set_both(imp).unwrap();
    let (r, _) = probe_json(&[
        "stamp",
        &relay.addr().to_string(),
        "--pps",
        "50",
        "--seconds",
        "4",
    ]);
    let (up, down) = (relay.stats(Direction::Up), relay.stats(Direction::Down));
    assert_eq!(u64::from(r.sent), 200);
    assert_eq!(up.received, 200, "every packet reached the relay");
    assert_eq!(
        u64::from(r.sent - r.received),
        up.dropped + down.dropped,
        "loss counted exactly: {r:?} up {up:?} down {down:?}"
    );
    let rtt = r.rtt_ms.unwrap();
    // 10 ms each way was injected: no round trip can be shorter than 20 ms.
    assert!(rtt.min >= 20.0, "{rtt:?}");
    eprintln!(
        "injected 20 ms RTT and 5 %/direction loss: measured p50 {:.3} ms (error {:+.3} ms), \
         loss {}/{} = relay drops {}+{}, jitter {:?} ms, MOS {:?}",
        rtt.p50,
        rtt.p50 - 20.0,
        r.sent - r.received,
        r.sent,
        up.dropped,
        down.dropped,
        r.jitter_ms,
        r.mos
    );
}
