//! Probes: one per configured target, each measuring for one window and summarising
//! into a `ProbeResult`.
//!
//! Interface the run loop relies on: [`Prober::new`] / [`Prober::measure`], long-lived
//! per target; `measure(window)` probes for at most `window` and returns that window's
//! `ProbeResult`, never failing (a failure is a result with `error` set).
//!
//! Each kind is a [`Probe`] in its own module, built from the validated
//! `config::target::Spec`; it owns sockets and timers and speaks its protocol through
//! `wire`. Where packets go is [`peer`]'s job; the clock-free window summary of echo
//! kinds (ICMP, STAMP) is [`tally`]'s. Targets are parsed and validated in
//! `config::target`, not here.
//!
//! Errors are short words: `timeout`, `refused`, `host unreachable`, a SIP status
//! (`503`), `nxdomain`, `servfail`, `no records`, `stun 420`, `no default route`,
//! `resolve NAME: ...`, or the ICMP permission hint.

pub mod dns;
pub mod icmp;
pub mod peer;
pub mod sip;
pub mod stamp;
pub mod stun;
pub mod tally;
pub mod tcp;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use faultline_shared::ProbeResult;

use crate::config::target::{Spec, Target};

/// Facts from one window for a technician (`probe` prints them): the SIP status line,
/// the STUN mapped address, DNS answers, duplicates...
pub type Notes = Vec<(&'static str, String)>;

/// Longest wait for replies after the last packet of an echo-style window (STAMP, ICMP).
pub const MAX_GRACE: Duration = Duration::from_secs(1);

/// One kind of probe, kept from window to window for one target.
pub trait Probe {
    /// Probes for at most `window`: counts, RTT and the error word go into `r` (which
    /// starts blank), facts for a technician into `notes`. Never fails otherwise.
    fn measure(
        &mut self,
        window: Duration,
        r: &mut ProbeResult,
        notes: &mut Notes,
    ) -> impl Future<Output = ()>;
}

/// The probe of each kind.
#[derive(Debug)]
enum AnyProbe {
    Icmp(icmp::IcmpProbe),
    Stamp(stamp::StampProbe),
    Sip(sip::SipProbe),
    Stun(stun::StunProbe),
    Dns(dns::DnsProbe),
    Tcp(tcp::TcpProbe),
}

/// Measures one target, window after window.
#[derive(Debug)]
pub struct Prober {
    target: Target,
    probe: AnyProbe,
    notes: Notes,
}

impl Prober {
    /// Sets up the target's probe. Nothing is opened or resolved here: sockets that
    /// need privileges, names and the gateway are taken care of in each window, so a
    /// missing permission or route shows as the target's `error`, not as a failure to
    /// start (`Err` is never returned).
    pub async fn new(target: Target) -> anyhow::Result<Self> {
        let probe = match &target.spec {
            Spec::Icmp(s) => AnyProbe::Icmp(icmp::IcmpProbe::new(s)),
            Spec::Stamp(s) => AnyProbe::Stamp(stamp::StampProbe::new(s)),
            Spec::Sip(s) => AnyProbe::Sip(sip::SipProbe::new(s)),
            Spec::Stun(to) => AnyProbe::Stun(stun::StunProbe::new(to)),
            Spec::Dns(s) => AnyProbe::Dns(dns::DnsProbe::new(s)),
            Spec::Tcp(to) => AnyProbe::Tcp(tcp::TcpProbe::new(to)),
        };
        Ok(Self {
            target,
            probe,
            notes: Vec::new(),
        })
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Facts from the last window for a technician (see [`Notes`]).
    pub fn notes(&self) -> &[(&'static str, String)] {
        &self.notes
    }

    /// Probes for at most `window` and returns the summary.
    pub async fn measure(&mut self, window: Duration) -> ProbeResult {
        let mut r = self.target.result();
        self.notes.clear();
        let notes = &mut self.notes;
        match &mut self.probe {
            AnyProbe::Icmp(p) => p.measure(window, &mut r, notes).await,
            AnyProbe::Stamp(p) => p.measure(window, &mut r, notes).await,
            AnyProbe::Sip(p) => p.measure(window, &mut r, notes).await,
            AnyProbe::Stun(p) => p.measure(window, &mut r, notes).await,
            AnyProbe::Dns(p) => p.measure(window, &mut r, notes).await,
            AnyProbe::Tcp(p) => p.measure(window, &mut r, notes).await,
        }
        r
    }
}

/// A short, stable error word for an I/O failure (`refused`, `timeout`...).
pub fn io_error_word(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "refused".into(),
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::ConnectionReset => "reset".into(),
        K::PermissionDenied => "permission denied".into(),
        K::AddrNotAvailable => "address not available".into(),
        _ => format!("io: {e}"),
    }
}

/// An unspecified local address of `peer`'s family, port 0.
pub fn any_local(peer: &SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// A UDP socket connected to `peer`, or the error word.
pub async fn connected_udp(peer: SocketAddr) -> Result<tokio::net::UdpSocket, String> {
    let socket = tokio::net::UdpSocket::bind(any_local(&peer))
        .await
        .map_err(|e| io_error_word(&e))?;
    socket.connect(peer).await.map_err(|e| io_error_word(&e))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::target::{Fields, Value, build};

    fn stamp_target(host: &str, extra: &[(&str, Value)]) -> Target {
        let mut f = Fields::new();
        for (k, v) in [
            ("name", "m"),
            ("layer", "isp"),
            ("kind", "stamp"),
            ("host", host),
        ] {
            f.insert(k, Value::String(v.into()));
        }
        for (k, v) in extra {
            f.insert(k, v.clone());
        }
        build(&f).unwrap()
    }

    /// A stateless STAMP reflector on loopback (the wire's reflection rule) counting
    /// what it answered until `stop` fires.
    async fn reflector(
        stop: tokio::sync::oneshot::Receiver<()>,
    ) -> (SocketAddr, tokio::task::JoinHandle<u32>) {
        use faultline_agent::wire::stamp::{NtpTime, reflect};
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut buf, mut answered) = ([0u8; 2048], 0);
            tokio::pin!(stop);
            loop {
                let (n, peer) = tokio::select! {
                    _ = &mut stop => return answered,
                    got = sock.recv_from(&mut buf) => got.unwrap(),
                };
                let now = NtpTime::from_system(std::time::SystemTime::now());
                if let Some(answer) = reflect(&buf[..n], None, now, now, 64) {
                    sock.send_to(&answer, peer).await.unwrap();
                    answered += 1;
                }
            }
        });
        (addr, task)
    }

    #[test]
    fn stamp_prober_bursts_every_nth_window_and_trains_between() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let (addr, reflector) = reflector(stop_rx).await;
            let target = stamp_target(
                &addr.to_string(),
                &[
                    ("stamp_seconds", Value::Float(0.4)),
                    ("stamp_every", Value::Integer(2)),
                    ("stamp_idle_packets", Value::Integer(3)),
                ],
            );
            let mut p = Prober::new(target).await.unwrap();
            let window = Duration::from_secs(1);
            let mut sent = Vec::new();
            for _ in 0..3 {
                let r = p.measure(window).await;
                assert!(r.error.is_none() && r.mos.is_some(), "{r:?}");
                sent.push((r.sent, r.received));
            }
            assert_eq!(sent, [(20, 20), (3, 3), (20, 20)]);
            let _ = stop_tx.send(());
            assert_eq!(reflector.await.unwrap(), 43);
        });
    }

    #[test]
    fn a_gateway_target_without_a_route_reports_it_every_window() {
        // This test cannot choose the machine's routes; it checks that whatever the
        // table says, a gateway target measures or names why it cannot.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut p = Prober::new(stamp_target("gateway:9", &[])).await.unwrap();
            let r = p.measure(Duration::from_millis(400)).await;
            match crate::net::gateway::default_gateway().unwrap() {
                None => assert_eq!(r.error.as_deref(), Some(peer::NO_DEFAULT_ROUTE)),
                Some(_) => assert_ne!(r.error.as_deref(), Some(peer::NO_DEFAULT_ROUTE)),
            }
        });
    }

    #[test]
    fn io_errors_become_short_words() {
        use std::io::{Error, ErrorKind};
        assert_eq!(
            io_error_word(&Error::from(ErrorKind::ConnectionRefused)),
            "refused"
        );
        assert_eq!(
            io_error_word(&Error::from(ErrorKind::WouldBlock)),
            "timeout"
        );
        assert!(io_error_word(&Error::other("x")).starts_with("io: "));
        assert_eq!(
            any_local(&"[::1]:5".parse().unwrap()),
            "[::]:0".parse::<SocketAddr>().unwrap()
        );
    }
}
