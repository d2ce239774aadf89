//! A real coturn (`turnserver`) as a STUN-only server on an ephemeral loopback UDP
//! port: the `stun` probe's counterpart. Its pid file and database live in a
//! [`TempDir`]; no CLI, no TLS, no relay.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Child, TempDir, free_udp_port, require, wait_until};

/// A running coturn.
#[derive(Debug)]
pub struct Coturn {
    pub port: u16,
    _child: Child,
    _dir: TempDir,
}

/// Whether a STUN server answers a Binding request at `addr` within 200 ms.
pub fn stun_answers(addr: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut req = [0u8; 20];
    req[1] = 0x01; // Binding request
    req[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
    req[8..20].copy_from_slice(b"faultline-ok");
    if s.send_to(&req, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 20 && buf[8..20] == req[8..20])
}

impl Coturn {
    /// Starts coturn STUN-only on 127.0.0.1. `None` when it is not installed (the test
    /// should return; the reason has been printed).
    pub fn start() -> Option<Self> {
        let bin = require("turnserver", "coturn")?;
        // The port is free when asked, but another process of a busy test may take it
        // (or coturn's RFC 5780 alternate, port + 1) before coturn binds: try afresh.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let dir = TempDir::new("coturn");
            let port = free_udp_port();
            let child = Child::spawn(
                "turnserver",
                Command::new(&bin)
                    .args(["-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls"])
                    .args(["--listening-ip", "127.0.0.1"])
                    .args(["--listening-port", &port.to_string()])
                    .args(["--log-file", "stdout", "--simple-log"])
                    .arg("--pidfile")
                    .arg(dir.path().join("turnserver.pid"))
                    .arg("--db")
                    .arg(dir.path().join("turndb"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
            .expect("spawn turnserver");
            let c = Self {
                port,
                _child: child,
                _dir: dir,
            };
            if wait_until(Duration::from_secs(10), || stun_answers(c.addr())) {
                return Some(c);
            }
            eprintln!(
                "coturn did not answer STUN on {} (attempt {attempt} of {ATTEMPTS})",
                c.addr()
            );
        }
        panic!("coturn did not answer STUN in {ATTEMPTS} attempts");
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}
