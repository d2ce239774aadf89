//! A tiny authoritative DNS server on loopback, UDP and TCP on one port, for the
//! agent's `dns` probe and its resolver. Its own minimal codec (not the agent's), and
//! a fixed zone (names case-insensitive):
//!
//! | name | answer |
//! |---|---|
//! | first label `nx…`, or outside `example.test` | NXDOMAIN |
//! | `fail.example.test` | SERVFAIL |
//! | `alias.example.test` | CNAME `mid.example.test`, CNAME `host.example.test`, its A/AAAA, and an unrelated A 192.0.2.66 of `other.example.test` |
//! | `big.example.test` | over UDP: truncated (TC), no records; over TCP: A 192.0.2.99 |
//! | `v6only.example.test` | AAAA 2001:db8::6, no A |
//! | `_sip._udp.example.test` | SRV 10 5 5060 `sip.example.test` |
//! | any other `*.example.test` | A 192.0.2.10, AAAA 2001:db8::10 |

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The server; stopped when dropped.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts on 127.0.0.1 at an ephemeral port, the same for UDP and TCP.
    pub fn start() -> Self {
        let (udp, tcp) = (0..50)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let tcp = TcpListener::bind(udp.local_addr().ok()?).ok()?;
                Some((udp, tcp))
            })
            .expect("a loopback port free for both UDP and TCP");
        let addr = udp.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        tcp.set_nonblocking(true).unwrap();
        let (l, s) = (log.clone(), stop.clone());
        let serve_udp = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = respond(&buf[..n], false, &l) {
                    let _ = udp.send_to(&r, peer);
                }
            }
        });
        let (l, s) = (log.clone(), stop.clone());
        let serve_tcp = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut len = [0u8; 2];
                while conn.read_exact(&mut len).is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if conn.read_exact(&mut q).is_err() {
                        break;
                    }
                    let Some(r) = respond(&q, true, &l) else {
                        break;
                    };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if conn.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        });
        Self {
            addr,
            log,
            stop,
            threads: vec![serve_udp, serve_tcp],
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The questions received so far, in order: `"udp A host.example.test"`.
    pub fn queries(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The response to query `q`, or `None` for bytes that are not a query.
fn respond(q: &[u8], tcp: bool, log: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    // The question: labels from offset 12 to the root, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    while *q.get(at)? != 0 {
        let l = usize::from(q[at]);
        labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + l)?).to_ascii_lowercase());
        at += 1 + l;
    }
    let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
    let qend = at + 5;
    let name = labels.join(".");
    let type_name = match qtype {
        1 => "A".to_string(),
        28 => "AAAA".to_string(),
        33 => "SRV".to_string(),
        t => t.to_string(),
    };
    let transport = if tcp { "tcp" } else { "udp" };
    log.lock()
        .unwrap()
        .push(format!("{transport} {type_name} {name}"));

    let mut r = q.get(..qend)?.to_vec();
    r[2] = 0x84 | (q[2] & 0x01); // QR, AA, RD copied
    r[3] = 0;
    r[6..12].fill(0);
    // (owner, type, data); the owner of most is a pointer to the question's name.
    let mut records: Vec<(Vec<u8>, u16, Vec<u8>)> = Vec::new();
    let question = || vec![0xc0, 12];
    let v6 = |last: u8| {
        [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last,
        ]
        .to_vec()
    };
    if labels[0].starts_with("nx") || !name.ends_with("example.test") {
        r[3] = 3;
    } else if name == "fail.example.test" {
        r[3] = 2;
    } else if name == "alias.example.test" {
        let (mid, host) = (encode("mid.example.test"), encode("host.example.test"));
        records.push((question(), 5, mid.clone()));
        records.push((mid, 5, host.clone()));
        match qtype {
            1 => records.push((host, 1, vec![192, 0, 2, 10])),
            28 => records.push((host, 28, v6(0x10))),
            _ => {}
        }
        records.push((encode("other.example.test"), 1, vec![192, 0, 2, 66]));
    } else if name == "big.example.test" {
        if !tcp {
            r[2] |= 0x02; // TC
        } else if qtype == 1 {
            records.push((question(), 1, vec![192, 0, 2, 99]));
        }
    } else if name == "v6only.example.test" {
        if qtype == 28 {
            records.push((question(), 28, v6(0x06)));
        }
    } else if name == "_sip._udp.example.test" {
        if qtype == 33 {
            let mut rdata = vec![0, 10, 0, 5, 0x13, 0xc4];
            rdata.extend_from_slice(&encode("sip.example.test"));
            records.push((question(), 33, rdata));
        }
    } else if qtype == 1 {
        records.push((question(), 1, vec![192, 0, 2, 10]));
    } else if qtype == 28 {
        records.push((question(), 28, v6(0x10)));
    }
    r[7] = records.len() as u8;
    for (owner, rtype, data) in records {
        r.extend_from_slice(&owner);
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 30]); // IN, TTL 30 s
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

/// `name` in wire form, uncompressed.
fn encode(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}
