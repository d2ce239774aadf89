//! `faultline-hostile`: the hostile site of `collector/bench/hostile.sh` (DESIGN.md
//! "Nothing forged"). Valid reports are `faultline_shared::encode`d (or serde_json'd)
//! `Report`s; only the deliberately broken payloads are byte edits of those.
//!
//! ```text
//! faultline-hostile flood --port P --count N [--first F] [--site S]
//! faultline-hostile classes --port P --http H [--site S]
//! faultline-hostile acl --agents P --internal P --http H --ca CA.pem \
//!     --pass-a A --pass-c C --pass-reader R
//! ```
//! `flood`: N reports from one site as fast as the broker takes them, each naming 128
//! targets and 128 providers never seen before, a new boot each, claiming 10 s windows.
//! `classes`: each class of bad input a few times, its counter read from
//! `/api/counters` before and after. `acl`: takeover and forgery attempts against the
//! shipped Mosquitto config (`collector/deploy/`) with a real site-a online.
//! `classes` and `acl` print a Markdown table on stdout, then `OK=yes` or `OK=no`;
//! progress goes to stderr.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use faultline_shared::{
    HostHealth, Id, Kind, Layer, ProbeResult, Report, RttStats, decode, encode,
};
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Packet, QoS, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use serde_json::Value;
use tokio::time::sleep;

#[derive(Parser)]
#[command(about = "The hostile site of collector/bench/hostile.sh")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Reports naming 128 new targets and providers each, as fast as the broker takes them.
    Flood {
        /// The broker's plain MQTT port (anonymous).
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "hostile")]
        site: String,
        /// The first report's number (seq, boot offset, window).
        #[arg(long, default_value_t = 0)]
        first: u64,
        #[arg(long)]
        count: u64,
    },
    /// Every class of bad input, each with the counter it moved: a Markdown table.
    Classes {
        #[arg(long)]
        port: u16,
        /// The collector's HTTP port.
        #[arg(long)]
        http: u16,
        #[arg(long, default_value = "hostile-b")]
        site: String,
    },
    /// Takeover and forgery attempts behind the shipped broker config: a Markdown table.
    Acl {
        /// The agents' TLS listener.
        #[arg(long)]
        agents: u16,
        /// The internal listener (logins, no TLS).
        #[arg(long)]
        internal: u16,
        #[arg(long)]
        http: u16,
        /// The CA that signed the broker's certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        pass_a: String,
        #[arg(long)]
        pass_c: String,
        #[arg(long)]
        pass_reader: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faultline-hostile: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let run = async {
        match cli.mode {
            Mode::Flood {
                port,
                site,
                first,
                count,
            } => flood(port, &site, first, count).await,
            Mode::Classes { port, http, site } => classes(port, http, &site).await,
            Mode::Acl {
                agents,
                internal,
                http,
                ca,
                pass_a,
                pass_c,
                pass_reader,
            } => {
                let logins = AclLogins {
                    a: pass_a,
                    c: pass_c,
                    reader: pass_reader,
                };
                acl(agents, internal, http, &ca, &logins).await
            }
        }
    };
    match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faultline-hostile: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("[faultline-hostile] {msg}");
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- reports ----------------------------------------------------------------------------

/// A valid id (every id here is a literal or built from digits and dashes).
fn id(s: &str) -> Id {
    Id::new(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn rtt([min, p50, avg, p95, max]: [f64; 5]) -> RttStats {
    RttStats {
        min,
        p50,
        avg,
        p95,
        max,
    }
}

/// A probe that worked: 10 of 10 answered, RTT 10–13 ms, jitter 0.5 ms.
fn probe(target: &str, layer: Layer, kind: Kind) -> ProbeResult {
    ProbeResult {
        sent: 10,
        received: 10,
        rtt_ms: Some(rtt([10.0, 11.0, 11.0, 12.0, 13.0])),
        jitter_ms: Some(0.5),
        ..ProbeResult::new(id(target), layer, None, kind)
    }
}

/// What an honest site measures: its LAN gateway, an internet anchor, a voice provider.
fn honest_probes() -> Vec<ProbeResult> {
    vec![
        ProbeResult {
            rtt_ms: Some(rtt([0.4, 0.5, 0.5, 0.8, 1.0])),
            ..probe("gw", Layer::Lan, Kind::Icmp)
        },
        probe("anchor", Layer::Internet, Kind::Icmp),
        ProbeResult {
            provider: Some(id("voipco")),
            sent: 100,
            received: 100,
            rtt_ms: Some(rtt([20.0, 21.0, 21.0, 23.0, 25.0])),
            jitter_ms: Some(1.0),
            mos: Some(4.3),
            ..probe("voipco-media", Layer::Provider, Kind::Stamp)
        },
    ]
}

fn host() -> HostHealth {
    HostHealth {
        cpu_pct: 10.0,
        mem_pct: 40.0,
        load1: 0.2,
    }
}

fn report(site: &str, boot: u32, seq: u64, start_ms: u64, window_ms: u32) -> Report {
    Report {
        v: faultline_shared::report::REPORT_VERSION,
        site: id(site),
        boot,
        seq,
        start_ms,
        window_ms,
        host: None,
        probes: honest_probes(),
    }
}

fn postcard(r: &Report) -> Vec<u8> {
    // Every report built here stays under the probe and size caps.
    encode(r).unwrap_or_else(|e| panic!("encode: {e}"))
}

fn json(r: &Report) -> Vec<u8> {
    // A Report is plain data: serializing it to JSON cannot fail.
    serde_json::to_vec(r).expect("serialize a report")
}

/// `bytes` with the first `from` replaced by `to` (the same length).
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{:?} not in the payload", String::from_utf8_lossy(from)));
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// `r` encoded with `n` copies of `p`, past the 128 the encoder allows: the envelope
/// of `r` without probes ends in the count (0); one probe adds the count 1 and its
/// record.
fn with_probes(r: &Report, p: &ProbeResult, n: usize) -> Vec<u8> {
    let mut r = r.clone();
    r.probes.clear();
    let empty = postcard(&r);
    r.probes.push(p.clone());
    let one = postcard(&r);
    let record = &one[empty.len()..];
    let mut out = empty[..empty.len() - 1].to_vec();
    // The count as postcard's varint: 7 bits a byte, low first.
    let mut k = n;
    while k >= 0x80 {
        out.push((k as u8 & 0x7f) | 0x80);
        k >>= 7;
    }
    out.push(k as u8);
    for _ in 0..n {
        out.extend_from_slice(record);
    }
    out
}

// ---- MQTT -------------------------------------------------------------------------------

/// What one connection's event loop has seen.
#[derive(Default)]
struct Seen {
    connack: Option<Result<(), String>>,
    acked: u64,
    received: Vec<(String, Vec<u8>)>,
    suback: Option<Vec<u8>>,
    closed: bool,
}

/// One MQTT 3.1.1 connection; a task drives its event loop until the first error
/// (no reconnect: a dropped connection is something to report).
struct Conn {
    client: AsyncClient,
    seen: Arc<Mutex<Seen>>,
    sent: u64,
    task: tokio::task::JoinHandle<()>,
}

fn options(port: u16, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_inflight(200)
        .set_max_packet_size(256 * 1024, 256 * 1024);
    o
}

fn tls(ca: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| ca.display().to_string())? {
        roots.add(c.with_context(|| ca.display().to_string())?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A login on the agents' TLS listener.
fn agent_options(
    port: u16,
    client_id: &str,
    (user, pass): (&str, &str),
    tls: &Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let mut o = options(port, client_id);
    o.set_credentials(user, pass)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
    o
}

impl Conn {
    /// Connects; an error when the broker refuses or does not answer.
    async fn open(opts: MqttOptions) -> anyhow::Result<Self> {
        let name = opts.client_id();
        let (client, mut el) = AsyncClient::new(opts, 1024);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let ev = el.poll().await;
                // Held for no await: poisoned only if this task panicked.
                let mut s = s.lock().expect("seen lock");
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => s.connack = Some(Ok(())),
                    Ok(Event::Incoming(Packet::PubAck(_))) => s.acked += 1,
                    Ok(Event::Incoming(Packet::SubAck(a))) => {
                        let codes = a.return_codes.iter().map(|c| match c {
                            SubscribeReasonCode::Success(q) => *q as u8,
                            SubscribeReasonCode::Failure => 0x80,
                        });
                        s.suback = Some(codes.collect());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        s.received.push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        s.closed = true;
                        if s.connack.is_none() {
                            s.connack = Some(Err(e.to_string()));
                        }
                        break;
                    }
                }
            }
        });
        let conn = Self {
            client,
            seen,
            sent: 0,
            task,
        };
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = conn.with(|s| s.connack.clone()) {
                r.map_err(anyhow::Error::msg)
                    .with_context(|| format!("connect as {name}"))?;
                return Ok(conn);
            }
            if Instant::now() > end {
                bail!("connect as {name}: no CONNACK in 15 s");
            }
            sleep(Duration::from_millis(10)).await;
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        // Poisoned only if the event loop task panicked.
        f(&self.seen.lock().expect("seen lock"))
    }

    fn closed(&self) -> bool {
        self.with(|s| s.closed)
    }

    /// QoS 1; the event loop keeps at most 200 unacknowledged.
    async fn publish(&mut self, topic: &str, payload: Vec<u8>, retain: bool) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .with_context(|| format!("publish on {topic}"))?;
        self.sent += 1;
        Ok(())
    }

    /// Waits until every publish so far is acknowledged (false: timed out or closed).
    async fn wait_acked(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            let (acked, closed) = self.with(|s| (s.acked, s.closed));
            if acked >= self.sent {
                return true;
            }
            if closed {
                return false;
            }
            sleep(Duration::from_millis(2)).await;
        }
        false
    }

    /// Subscribes at QoS 1; the SUBACK's return codes.
    async fn subscribe(&self, topics: &[&str]) -> anyhow::Result<Vec<u8>> {
        let filters = topics
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new((*t).to_owned(), QoS::AtLeastOnce));
        self.client.subscribe_many(filters).await?;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(codes) = self.with(|s| s.suback.clone()) {
                return Ok(codes);
            }
            sleep(Duration::from_millis(10)).await;
        }
        bail!("no SUBACK in 10 s")
    }

    async fn close(self) {
        let _ = self.client.disconnect().await;
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

// ---- the collector's HTTP ---------------------------------------------------------------

/// A GET on the collector's HTTP server (loopback, `Connection: close`): the body.
fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).context("connect to the collector")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let r = faultline_tests::HttpResponse::parse(&out);
    if r.status != 200 {
        bail!("GET {path}: {}", out.lines().next().unwrap_or_default());
    }
    Ok(r.body)
}

async fn get_json(port: u16, path: &str) -> anyhow::Result<Value> {
    let p = path.to_owned();
    let body = tokio::task::spawn_blocking(move || http_get(port, &p)).await??;
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON"))
}

/// `/api/counters`: accepted reports, rejected messages, missing windows and the
/// rejections by reason.
#[derive(Clone, Default)]
struct Counters {
    reports: u64,
    rejected: u64,
    missing_windows: u64,
    by_reason: BTreeMap<String, u64>,
}

impl Counters {
    async fn get(http: u16) -> anyhow::Result<Self> {
        let c = get_json(http, "/api/counters").await?;
        let n = |k: &str| {
            c[k].as_u64()
                .with_context(|| format!("/api/counters: no {k}"))
        };
        let by_reason = c["rejected_by_reason"]
            .as_object()
            .context("/api/counters: no rejected_by_reason")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect();
        Ok(Self {
            reports: n("reports")?,
            rejected: n("rejected")?,
            missing_windows: n("missing_windows")?,
            by_reason,
        })
    }

    fn handled(&self) -> u64 {
        self.reports + self.rejected
    }

    fn reason(&self, r: &str) -> u64 {
        self.by_reason.get(r).copied().unwrap_or(0)
    }
}

/// One site of `/api/state` (Null when absent).
async fn site_state(http: u16, site: &str) -> anyhow::Result<Value> {
    let st = get_json(http, "/api/state").await?;
    Ok(st["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == site))
        .cloned()
        .unwrap_or(Value::Null))
}

// ---- flood ------------------------------------------------------------------------------

async fn flood(port: u16, site: &str, first: u64, count: u64) -> anyhow::Result<()> {
    let mut m = Conn::open(options(port, &format!("hostile-flood-{first}"))).await?;
    let (t0, start) = (Instant::now(), now_ms());
    let topic = format!("faultline/v1/sites/{site}/report");
    for i in first..first + count {
        let mut r = report(site, 1_000_000 + i as u32, i, start + i * 10_000, 10_000);
        r.host = Some(host());
        r.probes = (0..128)
            .map(|k| ProbeResult {
                provider: Some(id(&format!("p{i}-{k}"))),
                ..probe(&format!("t{i}-{k}"), Layer::Provider, Kind::Icmp)
            })
            .collect();
        m.publish(&topic, postcard(&r), false).await?;
    }
    let ok = m.wait_acked(Duration::from_secs(120)).await;
    m.close().await;
    log(format!(
        "flood: {count} reports (seq {first}..{}) in {:.1} s, acknowledged: {ok}",
        first + count - 1,
        t0.elapsed().as_secs_f64()
    ));
    if !ok {
        bail!("flood: not every report was acknowledged");
    }
    Ok(())
}

// ---- classes ----------------------------------------------------------------------------

/// One class of bad input: its name, the reason it should be counted under, and the
/// messages (topic, payload) that try it.
struct Class {
    name: &'static str,
    expect: &'static str,
    msgs: Vec<(String, Vec<u8>)>,
}

fn bad_input(site: &str) -> Vec<Class> {
    const N: usize = 3;
    let t = now_ms();
    let rep = format!("faultline/v1/sites/{site}/report");
    let js = format!("{rep}/json");
    // Each report its own seq, so none is a duplicate of another.
    let seq = Cell::new(10_000u64);
    let next = |f: &dyn Fn(&mut Report)| {
        let mut r = report(site, 7, seq.get(), t, 10_000);
        seq.set(seq.get() + 1);
        f(&mut r);
        r
    };
    let anchor = |f: &dyn Fn(&mut ProbeResult)| {
        let mut p = probe("anchor", Layer::Internet, Kind::Icmp);
        f(&mut p);
        vec![p]
    };
    let voice = |mos: f64| ProbeResult {
        provider: Some(id("voipco")),
        mos: Some(mos),
        ..probe("m", Layer::Provider, Kind::Stamp)
    };
    let bad_target =
        |r: &mut Report| r.probes = vec![probe("badxtargetx", Layer::Internet, Kind::Icmp)];
    // A JSON report whose anchor RTT min is `v` (text no serializer writes).
    let rtt_min = |v: &str| {
        let j = String::from_utf8(json(&next(&|r| r.probes = anchor(&|_| {}))))
            .expect("serde_json writes UTF-8");
        assert!(j.contains(r#""min":10.0"#), "{j}");
        j.replacen(r#""min":10.0"#, &format!(r#""min":{v}"#), 1)
            .into_bytes()
    };
    let good = postcard(&next(&|_| {}));

    // Broken postcard: byte edits of valid envelopes, each checked against the decoder.
    let varint_overflow = [&b"\x01\x05abcde"[..], &[0xff; 12]].concat();
    let cut = good[..20].to_vec();
    let v2 = [&[2u8][..], &good[1..]].concat();
    let over_cap = with_probes(
        &next(&|_| {}),
        &probe("c", Layer::Internet, Kind::Icmp),
        129,
    );
    let bad_id = replace_bytes(
        &postcard(&next(&bad_target)),
        b"badxtargetx",
        b"bad target!",
    );
    for (bytes, reason) in [
        (&varint_overflow, "malformed"),
        (&cut, "truncated"),
        (&v2, "version"),
        (&over_cap, "malformed"),
        (&bad_id, "invalid_id"),
    ] {
        let got = decode(bytes).map(|_| ()).map_err(|e| e.reason().as_str());
        assert_eq!(got, Err(reason), "a broken payload decodes otherwise");
    }
    // Broken JSON: text edits of valid reports.
    let unparseable = format!(r#"{{"v":1,"site":"{site}","boot":"#).into_bytes();
    let bad_id_json = replace_bytes(
        &json(&next(&bad_target)),
        b"\"badxtargetx\"",
        b"\"bad target!\"",
    );
    let oversized = {
        let mut j = json(&next(&|_| {}));
        j.pop();
        j.extend_from_slice(format!(r#","pad":"{}"}}"#, "x".repeat(100_000)).as_bytes());
        j
    };
    let same = |t: &str, p: &[u8]| vec![(t.to_owned(), p.to_vec()); N];
    let pc = |f: &dyn Fn(&mut Report)| -> Vec<(String, Vec<u8>)> {
        (0..N).map(|_| (rep.clone(), postcard(&next(f)))).collect()
    };
    let js_each = |f: &dyn Fn(&mut Report)| -> Vec<(String, Vec<u8>)> {
        (0..N).map(|_| (js.clone(), json(&next(f)))).collect()
    };
    let host_json = |cpu_pct, mem_pct, load1| {
        js_each(&move |r| {
            r.host = Some(HostHealth {
                cpu_pct,
                mem_pct,
                load1,
            })
        })
    };
    let class = |name, expect, msgs| Class { name, expect, msgs };
    vec![
        class(
            "JSON that does not parse",
            "malformed",
            same(&js, &unparseable),
        ),
        class(
            "postcard that does not parse (varint overflow)",
            "malformed",
            same(&rep, &varint_overflow),
        ),
        class(
            "postcard cut short (first 20 bytes of a report)",
            "truncated",
            same(&rep, &cut),
        ),
        class(
            "empty payload on the report topic",
            "truncated",
            same(&rep, &[]),
        ),
        class(
            "unknown wire version (first byte 2)",
            "version",
            same(&rep, &v2),
        ),
        class("JSON report `\"v\": 2`", "version", js_each(&|r| r.v = 2)),
        class(
            "payload over the cap (100 KiB JSON)",
            "oversized",
            same(&js, &oversized),
        ),
        class(
            "129 probes (over the 128 cap)",
            "malformed",
            same(&rep, &over_cap),
        ),
        class(
            "invalid id in a postcard report (target `bad target!`)",
            "invalid_id",
            same(&rep, &bad_id),
        ),
        class(
            "invalid id in a JSON report (target `bad target!`)",
            "malformed",
            same(&js, &bad_id_json),
        ),
        class(
            "invalid site id in the topic",
            "topic",
            same("faultline/v1/sites/bad!site/report", &good),
        ),
        class(
            "another site in the payload than in the topic",
            "site_mismatch",
            pc(&|r| r.site = id("site-0001")),
        ),
        class(
            "a window already counted, again",
            "duplicate",
            same(&rep, &postcard(&next(&|_| {}))),
        ),
        class("`window_ms` 500", "window", pc(&|r| r.window_ms = 500)),
        class(
            "`window_ms` 2 h",
            "window",
            pc(&|r| r.window_ms = 7_200_000),
        ),
        class(
            "received > sent",
            "impossible",
            pc(&|r| r.probes = anchor(&|p| p.received = 11)),
        ),
        class(
            "RTT ≥ 1 h",
            "impossible",
            pc(&|r| r.probes = anchor(&|p| p.rtt_ms = Some(rtt([3_600_000.0; 5])))),
        ),
        class(
            "negative RTT (JSON)",
            "impossible",
            js_each(&|r| r.probes = anchor(&|p| p.rtt_ms = Some(rtt([-5.0; 5])))),
        ),
        class(
            "jitter ≥ 1 h",
            "impossible",
            pc(&|r| r.probes = anchor(&|p| p.jitter_ms = Some(4_000_000.0))),
        ),
        class(
            "negative jitter (JSON)",
            "impossible",
            js_each(&|r| r.probes = anchor(&|p| p.jitter_ms = Some(-1.0))),
        ),
        class(
            "MOS 0.5",
            "impossible",
            pc(&|r| r.probes = vec![voice(0.5)]),
        ),
        class("MOS 6", "impossible", pc(&|r| r.probes = vec![voice(6.0)])),
        class(
            "max_burst > sent",
            "impossible",
            pc(&|r| r.probes = anchor(&|p| p.max_burst = Some(50))),
        ),
        class(
            "CPU 150 %",
            "impossible",
            pc(&|r| {
                r.host = Some(HostHealth {
                    cpu_pct: 150.0,
                    ..host()
                })
            }),
        ),
        class(
            "memory −1 % (JSON)",
            "impossible",
            host_json(1.0, -1.0, 0.1),
        ),
        class("load −1 (JSON)", "impossible", host_json(1.0, 1.0, -1.0)),
        class(
            "NaN RTT (JSON `NaN`)",
            "malformed",
            same(&js, &rtt_min("NaN")),
        ),
        class(
            "infinite RTT (JSON `1e999`)",
            "malformed",
            same(&js, &rtt_min("1e999")),
        ),
    ]
}

/// What one batch of messages did to the counters.
struct Moved {
    moved: BTreeMap<String, u64>,
    accepted: u64,
    missing: u64,
}

impl Moved {
    fn reason(&self, r: &str) -> u64 {
        self.moved.get(r).copied().unwrap_or(0)
    }

    /// `reason: +n` cells, then accepted.
    fn cells(&self) -> String {
        let mut cells: Vec<String> = self
            .moved
            .iter()
            .map(|(k, v)| format!("{k}: +{v}"))
            .collect();
        if self.accepted > 0 {
            cells.push(format!("accepted: +{}", self.accepted));
        }
        if cells.is_empty() {
            cells.push("nothing counted".into());
        }
        cells.join(", ")
    }
}

/// Publishes `msgs`, waits until the collector has handled as many (20 s at most),
/// and returns what moved.
async fn send_counted(
    m: &mut Conn,
    http: u16,
    msgs: &[(String, Vec<u8>)],
) -> anyhow::Result<Moved> {
    let c0 = Counters::get(http).await?;
    for (topic, payload) in msgs {
        m.publish(topic, payload.clone(), false).await?;
    }
    if !m.wait_acked(Duration::from_secs(60)).await {
        bail!("the broker did not acknowledge every message");
    }
    let end = Instant::now() + Duration::from_secs(20);
    while Counters::get(http).await?.handled() - c0.handled() < msgs.len() as u64
        && Instant::now() < end
    {
        sleep(Duration::from_millis(50)).await;
    }
    sleep(Duration::from_millis(100)).await;
    let c1 = Counters::get(http).await?;
    let moved = c1
        .by_reason
        .iter()
        .map(|(k, &v)| (k.clone(), v - c0.reason(k)))
        .filter(|&(_, v)| v > 0)
        .collect();
    Ok(Moved {
        moved,
        accepted: c1.reports - c0.reports,
        missing: c1.missing_windows - c0.missing_windows,
    })
}

fn yes(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

async fn classes(port: u16, http: u16, site: &str) -> anyhow::Result<()> {
    let mut m = Conn::open(options(port, "hostile-classes")).await?;
    println!(
        "| class tried | sent | counted as (reason label: counter change) | expected | as expected |"
    );
    println!("|---|---:|---|---|---|");
    let mut ok_all = true;
    for c in bad_input(site) {
        if c.expect == "duplicate" {
            // The window first, counted once; then the copies.
            send_counted(&mut m, http, &c.msgs[..1]).await?;
            sleep(Duration::from_millis(300)).await;
        }
        let mv = send_counted(&mut m, http, &c.msgs).await?;
        let ok = mv.reason(c.expect) == c.msgs.len() as u64 && mv.accepted == 0;
        ok_all &= ok;
        println!(
            "| {} | {} | {} | `{}` | {} |",
            c.name,
            c.msgs.len(),
            mv.cells(),
            c.expect,
            yes(ok)
        );
        log(format!("{}: {}", c.name, mv.cells()));
    }

    // Windows far faster than the site's clock: a fresh site claiming 1 h windows
    // may send a day's worth (24) and 2 more at once.
    let t = now_ms();
    let batch = |s: &str, boot: u32, seqs: &mut dyn Iterator<Item = (u64, u64)>, window_ms: u32| {
        let topic = format!("faultline/v1/sites/{s}/report");
        seqs.map(|(seq, start)| {
            (
                topic.clone(),
                postcard(&report(s, boot, seq, start, window_ms)),
            )
        })
        .collect::<Vec<_>>()
    };
    let pace = batch(
        &format!("{site}-pace"),
        9,
        &mut (0..40).map(|s| (s, t + s * 3_600_000)),
        3_600_000,
    );
    let mv = send_counted(&mut m, http, &pace).await?;
    let ok = mv.reason("paced") == 40 - 26 && mv.accepted == 26;
    ok_all &= ok;
    println!(
        "| 40 windows claiming 1 h each, sent at once (a day's backlog is 24 + 2) | 40 | {} | `paced` (14) | {} |",
        mv.cells(),
        yes(ok)
    );

    // Gaps in seq: each boot keeps at most 1,024 runs of seqs.
    let gaps = batch(
        &format!("{site}-gaps"),
        5,
        &mut (0..1030).map(|s| (2 * s, t)),
        10_000,
    );
    let mv = send_counted(&mut m, http, &gaps).await?;
    let ok = mv.reason("dedup_full") == 1030 - 1024 && mv.accepted == 1024;
    ok_all &= ok;
    println!(
        "| 1,030 windows of one boot, every other seq (a boot keeps 1,024 runs) | 1,030 | {} | `dedup_full` (6) | {} |",
        mv.cells(),
        yes(ok)
    );

    // A seq far ahead of its boot's clock: it cannot have been measured yet, and
    // would count a quadrillion missing windows.
    let jump = batch(
        &format!("{site}-jump"),
        3,
        &mut [0, 10u64.pow(15)].into_iter().map(|s| (s, t)),
        10_000,
    );
    let mv = send_counted(&mut m, http, &jump).await?;
    let ok = mv.reason("impossible") == 1 && mv.accepted == 1 && mv.missing == 0;
    ok_all &= ok;
    println!(
        "| seq 0, then seq 10¹⁵ (a boot's seq runs ahead of its clock by at most a day's backlog) | 2 | {}; missing windows +{} | accepted, then `impossible`; no missing windows | {} |",
        mv.cells(),
        mv.missing,
        yes(ok)
    );
    m.close().await;
    println!();
    println!("OK={}", if ok_all { "yes" } else { "no" });
    Ok(())
}

// ---- acl --------------------------------------------------------------------------------

struct AclLogins {
    a: String,
    c: String,
    reader: String,
}

const SITE_A_STATUS: &str = "faultline/v1/sites/site-a/status";
const SITE_A_VERDICT: &str = "faultline/v1/state/sites/site-a";
const OFFLINE: &str = r#"{"state":"offline","reason":"lost"}"#;

async fn acl(
    agents: u16,
    internal: u16,
    http: u16,
    ca: &Path,
    logins: &AclLogins,
) -> anyhow::Result<()> {
    let tls = tls(ca)?;
    let site_a = ("site-a", logins.a.as_str());
    let site_c = ("site-c", logins.c.as_str());
    let mut rows = Vec::new();
    let mut ok_all = true;
    let mut row = |attempt: String, seen: String, refused: bool| {
        ok_all &= refused;
        log(format!("{attempt} -> {seen}"));
        rows.push(format!("| {attempt} | {seen} | {} |", yes(refused)));
    };

    // site-a: an agent online, its will set, reporting every second.
    let mut o = agent_options(agents, "faultline-site-a", site_a, &tls);
    o.set_last_will(LastWill::new(
        SITE_A_STATUS,
        OFFLINE,
        QoS::AtLeastOnce,
        true,
    ));
    let mut agent = Conn::open(o).await.context("site-a")?;
    let online = r#"{"state":"online","boot":11,"version":"bench","isp":"isp-a"}"#;
    agent
        .publish(SITE_A_STATUS, online.as_bytes().to_vec(), true)
        .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let seqs = Arc::new(AtomicU64::new(0));
    let reporter = {
        let (client, stop, seqs) = (agent.client.clone(), stop.clone(), seqs.clone());
        let start = now_ms();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = seqs.load(Ordering::Relaxed);
                let mut r = report("site-a", 11, s, start + s * 1000, 1000);
                r.host = Some(host());
                let topic = "faultline/v1/sites/site-a/report";
                if client
                    .publish(topic, QoS::AtLeastOnce, false, postcard(&r))
                    .await
                    .is_err()
                {
                    break;
                }
                seqs.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_secs(1)).await;
            }
        })
    };
    // A reader on the internal listener watches site-a's status and verdicts.
    let mut o = options(internal, "bench-watch");
    o.set_credentials("faultline-reader", logins.reader.as_str());
    let watch = Conn::open(o).await.context("the reader")?;
    watch.subscribe(&[SITE_A_VERDICT, SITE_A_STATUS]).await?;
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        let s = site_state(http, "site-a").await?;
        if s["presence"] == "online" && s["verdict"]["state"] == "ok" {
            break;
        }
        sleep(Duration::from_millis(200)).await;
    }
    log("site-a online and ok");
    let offline_seen = |w: &Conn| {
        w.with(|s| {
            s.received
                .iter()
                .filter(|(_, p)| p.windows(9).any(|x| x == b"\"offline\""))
                .count()
        })
    };

    // 1. Takeover: site-c's login with site-a's client ids.
    for cid in ["faultline-site-a", "site-a"] {
        let c = Conn::open(agent_options(agents, cid, site_c, &tls)).await?;
        sleep(Duration::from_secs(3)).await;
        let still = !agent.closed();
        let fired = offline_seen(&watch) > 0;
        row(
            format!("site-c's login connects with client id `{cid}`"),
            format!(
                "connection accepted as `site-c` (use_username_as_clientid); site-a's connection {}, its will {}",
                if still { "stays up" } else { "**was dropped**" },
                if fired { "**fired**" } else { "not fired" }
            ),
            still && !fired,
        );
        c.close().await;
    }

    // 2. Publishing as site-a with site-c's login.
    let mut c = Conn::open(agent_options(agents, "site-c", site_c, &tls)).await?;
    let forged_report = report("site-a", 666, 0, now_ms(), 1000);
    let forged = [
        ("faultline/v1/sites/site-a/report", postcard(&forged_report)),
        (
            "faultline/v1/sites/site-a/report/json",
            json(&report("site-a", 666, 1, now_ms(), 1000)),
        ),
        (SITE_A_STATUS, OFFLINE.as_bytes().to_vec()),
        (
            SITE_A_VERDICT,
            br#"{"scope":"site","id":"site-a","state":"down"}"#.to_vec(),
        ),
    ];
    for (topic, payload) in forged {
        c.publish(topic, payload, topic == SITE_A_STATUS).await?;
    }
    // Its own report after the forged ones: once counted, they would have been too.
    c.publish(
        "faultline/v1/sites/site-c/report",
        postcard(&report("site-c", 5, 0, now_ms(), 1000)),
        false,
    )
    .await?;
    if !c.wait_acked(Duration::from_secs(20)).await {
        bail!("site-c's publishes were not acknowledged");
    }
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && site_state(http, "site-c").await?.is_null() {
        sleep(Duration::from_millis(100)).await;
    }
    sleep(Duration::from_secs(2)).await;
    let s = site_state(http, "site-a").await?;
    let forged_boot = s["boot"] == 666 || s["window"]["boot"] == 666;
    let watched_forgery = watch.with(|w| {
        w.received
            .iter()
            .filter(|(_, p)| {
                let p = String::from_utf8_lossy(p);
                p.contains("\"down\"") || p.contains("666")
            })
            .count()
    });
    let clean = !forged_boot && watched_forgery == 0 && offline_seen(&watch) == 0;
    row(
        "site-c publishes site-a's report (postcard and JSON, forged boot), its status (`offline`) and its verdict".into(),
        if clean {
            format!(
                "delivered to nobody: site-a still on boot {}, {}, verdict `{}`; no forged status or verdict seen by a reader",
                s["boot"],
                s["presence"].as_str().unwrap_or("?"),
                s["verdict"]["state"].as_str().unwrap_or("?")
            )
        } else {
            format!(
                "**got through** (site-a boot {}, {watched_forgery} forged messages seen)",
                s["boot"]
            )
        },
        clean,
    );

    // 3. Its own topic, another site in the payload.
    let before = Counters::get(http).await?.reason("site_mismatch");
    c.publish(
        "faultline/v1/sites/site-c/report",
        postcard(&report("site-a", 11, 100_000, now_ms(), 1000)),
        false,
    )
    .await?;
    c.wait_acked(Duration::from_secs(20)).await;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && Counters::get(http).await?.reason("site_mismatch") == before {
        sleep(Duration::from_millis(50)).await;
    }
    let d = Counters::get(http).await?.reason("site_mismatch") - before;
    let seq = site_state(http, "site-a").await?["window"]["seq"].as_u64();
    row(
        "site-c's own topic, site-a in the payload".into(),
        format!(
            "counted `site_mismatch` (+{d}); site-a's last window seq {} (not 100,000)",
            seq.map_or("?".into(), |s| s.to_string())
        ),
        d == 1 && seq.is_some_and(|s| s != 100_000),
    );
    c.close().await;

    // 4. Reading: site-c asks for site-a's verdict (retained) and for everything.
    let c = Conn::open(agent_options(agents, "site-c", site_c, &tls)).await?;
    let granted = c
        .subscribe(&[
            SITE_A_VERDICT,
            "faultline/v1/state/#",
            "faultline/v1/#",
            "faultline/v1/sites/site-a/config",
        ])
        .await?;
    sleep(Duration::from_secs(4)).await;
    let (other, own) = c.with(|s| {
        let own = s
            .received
            .iter()
            .filter(|(t, _)| t.contains("site-c"))
            .count();
        (s.received.len() - own, own)
    });
    let codes: Vec<String> = granted.iter().map(|b| format!("0x{b:02x}")).collect();
    row(
        "site-c subscribes to site-a's verdict, `faultline/v1/state/#` and `faultline/v1/#` (4 s, site-a reporting every second)".into(),
        format!(
            "SUBACK {}; received {other} messages about others, {own} of its own (its verdict)",
            codes.join(" ")
        ),
        other == 0,
    );
    c.close().await;

    // site-a throughout.
    stop.store(true, Ordering::Relaxed);
    sleep(Duration::from_millis(1500)).await;
    let _ = reporter.await;
    let s = site_state(http, "site-a").await?;
    let offline = offline_seen(&watch);
    let fine = s["presence"] == "online"
        && s["verdict"]["state"] == "ok"
        && offline == 0
        && !agent.closed()
        && s["boot"] == 11;
    row(
        "site-a, after all of the above".into(),
        format!(
            "{} windows sent on one connection, {}, verdict `{}`, missing windows {}, offline statuses or verdicts seen: {offline}",
            seqs.load(Ordering::Relaxed),
            s["presence"].as_str().unwrap_or("?"),
            s["verdict"]["state"].as_str().unwrap_or("?"),
            s["missing_windows"]
        ),
        fine,
    );
    agent.wait_acked(Duration::from_secs(5)).await;
    agent.close().await;
    watch.close().await;
    println!("| attempt | what happened | refused, site-a unaffected |");
    println!("|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!("OK={}", if ok_all { "yes" } else { "no" });
    Ok(())
}
