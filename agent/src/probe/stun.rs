//! STUN Binding probe (RFC 8489): retransmits a Binding request over UDP (RTO 500 ms
//! doubling, up to 7 sends, then waits 16·RTO, all bounded by the window), measures
//! the RTT of the answer and logs when the mapped (public) address changes.
//!
//! The message format is `wire::stun`'s; this module owns the socket and the timers.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::peer::Peer;
use super::tally::single_rtt;
use super::{Notes, Probe, connected_udp, io_error_word};
use crate::config::target::HostPort;
use faultline_agent::wire::stun::{BindingRequest, Packet, Response, TransactionId};

/// RFC 8489 initial retransmission timeout.
pub const RTO: Duration = Duration::from_millis(500);
/// RFC 8489 Rc: most transmissions.
pub const RC: u32 = 7;
/// RFC 8489 Rm: the last wait is Rm·RTO.
pub const RM: u32 = 16;

/// What answered our request.
enum Answer {
    Mapped(Option<SocketAddr>),
    Error(u16),
}

/// Binding requests to one server, window after window.
#[derive(Debug)]
pub struct StunProbe {
    peer: Peer,
    /// Kept across windows, so the NAT mapping seen is that of one long-lived flow
    /// and a change means the public address or the NAT binding really changed.
    socket: Option<(SocketAddr, UdpSocket)>,
    mapped: Option<SocketAddr>,
}

impl StunProbe {
    pub fn new(to: &HostPort) -> Self {
        Self {
            peer: Peer::new(to.clone()),
            socket: None,
            mapped: None,
        }
    }
}

impl Probe for StunProbe {
    async fn measure(&mut self, window: Duration, r: &mut ProbeResult, notes: &mut Notes) {
        let deadline = Instant::now() + window;
        let Some(peer) = self.peer.resolve_for(deadline, r).await else {
            return;
        };
        if self.socket.as_ref().is_none_or(|(p, _)| *p != peer) {
            match connected_udp(peer).await {
                Ok(s) => self.socket = Some((peer, s)),
                Err(e) => {
                    r.error = Some(e);
                    return;
                }
            }
        }
        // Just set above when absent.
        let socket = &self.socket.as_ref().unwrap().1;
        let mut sends = 0;
        r.sent = 1;
        let got = transact(socket, deadline, &mut sends).await;
        notes.push(("transmissions", sends.to_string()));
        let to = self.peer.host_port();
        match got {
            Ok((Answer::Mapped(addr), rtt)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                match addr {
                    Some(a) => {
                        notes.push(("mapped", a.to_string()));
                        match self.mapped {
                            None => tracing::info!("{to}: mapped address {a}"),
                            Some(old) if old != a => {
                                tracing::info!("{to}: mapped address changed from {old} to {a}")
                            }
                            _ => {}
                        }
                        self.mapped = Some(a);
                    }
                    None => notes.push(("mapped", "none in the answer".into())),
                }
            }
            Ok((Answer::Error(code), rtt)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                r.error = Some(format!("stun {code}"));
            }
            Err(e) => r.error = Some(e),
        }
    }
}

/// What `b` says about transaction `txid`, or `None` when it is not its answer
/// (another protocol, a late answer to an earlier window's request...).
fn answer_of(b: &[u8], txid: &TransactionId) -> Option<Answer> {
    let resp = Response::parse(&Packet::new_checked(b).ok()?).ok()?;
    if resp.txid() != txid {
        return None;
    }
    match resp {
        Response::BindingSuccess { mapped, .. } => Some(Answer::Mapped(mapped)),
        Response::BindingError { code, .. } => Some(Answer::Error(code)),
        Response::Other { .. } => None,
    }
}

async fn transact(
    socket: &UdpSocket,
    deadline: Instant,
    sends: &mut u32,
) -> Result<(Answer, Duration), String> {
    let mut txid = [0u8; 12];
    txid.iter_mut().for_each(|b| *b = fastrand::u8(..));
    let req = BindingRequest { txid }.emit();
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    let mut rto = RTO;
    let mut next = start;
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if Instant::now() >= deadline || *sends >= RC {
                    return Err(last_error.unwrap_or_else(|| "timeout".into()));
                }
                if let Err(e) = socket.send(&req).await {
                    last_error = Some(io_error_word(&e));
                }
                *sends += 1;
                // After the last send wait Rm·RTO (initial RTO), per RFC 8489 §6.2.1.
                let wait = if *sends == RC { RTO * RM } else { rto };
                next = (Instant::now() + wait).min(deadline);
                rto *= 2;
            }
            got = socket.recv(&mut buf) => match got {
                Ok(n) => {
                    if let Some(a) = answer_of(&buf[..n], &txid) {
                        return Ok((a, start.elapsed()));
                    }
                }
                Err(e) => last_error = Some(io_error_word(&e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_transactions_binding_answers_count() {
        let ours = [1u8; 12];
        let mut ok = vec![0x01, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        ok.extend_from_slice(&ours);
        ok.extend_from_slice(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x0d, 0x96, 127, 0, 0, 1]);
        assert!(matches!(
            answer_of(&ok, &ours),
            Some(Answer::Mapped(Some(a))) if a == "127.0.0.1:3478".parse().unwrap()
        ));
        assert!(answer_of(&ok, &[2u8; 12]).is_none(), "another transaction");
        let req = BindingRequest { txid: ours }.emit();
        assert!(answer_of(&req, &ours).is_none(), "a request is no answer");
        assert!(answer_of(b"garbage", &ours).is_none());
    }
}
