//! SIP OPTIONS "ping" over UDP or TCP (RFC 3261): over UDP the request is
//! retransmitted on Timer E (T1 = 500 ms doubling up to T2 = 4 s, T2 once a
//! provisional answer came) until Timer F (64·T1) or the end of the window, whichever
//! is first. TCP sends once.
//!
//! How answers count: any final response proves the server alive. 2xx, 3xx, 4xx and
//! 6xx are a healthy server (a 404 or 403 to OPTIONS is policy, not an outage):
//! received = 1, no error. 5xx means the server is there but not serving: received =
//! 1 and `error` is the status code (`"503"`). No final answer in time: `"timeout"`;
//! nobody listening: `"refused"`.
//!
//! The message format is `wire::sip`'s; this module owns the sockets and the timers.

use std::net::SocketAddr;
use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::peer::Peer;
use super::tally::single_rtt;
use super::{Notes, Probe, any_local, connected_udp, io_error_word};
use crate::config::target::{Host, SipSpec};
use faultline_agent::wire::sip::{Error, MAX_MESSAGE, Request, Response, Transport};

/// RFC 3261 T1: round-trip estimate.
pub const T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2: longest retransmit interval for non-INVITE requests.
pub const T2: Duration = Duration::from_secs(4);

/// Timer E: the wait after a send that waited `prev` (T1 doubling up to T2), or T2
/// once a provisional response has come (RFC 3261 §17.1.2.2).
pub fn next_interval(prev: Duration, provisional: bool) -> Duration {
    if provisional { T2 } else { (prev * 2).min(T2) }
}

/// OPTIONS to one server, window after window.
#[derive(Debug)]
pub struct SipProbe {
    peer: Peer,
    transport: Transport,
    cseq: u32,
}

/// The outcome of one transaction.
enum Outcome {
    Final(Response, Duration),
    Failed(String),
}

/// The Request-URI's host and port, and where to send it.
struct Target {
    uri_host: String,
    uri_port: u16,
    peer: SocketAddr,
}

impl SipProbe {
    pub fn new(spec: &SipSpec) -> Self {
        Self {
            peer: Peer::new(spec.to.clone()),
            transport: spec.transport,
            cseq: 0,
        }
    }
}

impl Probe for SipProbe {
    async fn measure(&mut self, window: Duration, r: &mut ProbeResult, notes: &mut Notes) {
        let deadline = Instant::now() + window;
        let Some(peer) = self.peer.resolve_for(deadline, r).await else {
            return;
        };
        let to = self.peer.host_port();
        let target = Target {
            // The gateway has no name to put in the URI: its address then.
            uri_host: match &to.host {
                Host::Gateway => peer.ip().to_string(),
                Host::Name(n) => n.clone(),
            },
            uri_port: to.port,
            peer,
        };
        self.cseq = self.cseq.wrapping_add(1);
        // One transaction, however many retransmissions it took (noted apart).
        r.sent = 1;
        let deadline = deadline.min(Instant::now() + 64 * T1);
        let outcome = match self.transport {
            Transport::Udp => udp(target, self.cseq, deadline, notes).await,
            Transport::Tcp => tcp(target, self.cseq, deadline, notes).await,
        };
        match outcome {
            Outcome::Final(resp, rtt) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(rtt));
                r.error = resp.error();
                notes.push(("status", format!("{} {}", resp.code, resp.reason)));
            }
            Outcome::Failed(e) => r.error = Some(e),
        }
    }
}

async fn udp(target: Target, cseq: u32, deadline: Instant, notes: &mut Notes) -> Outcome {
    let mut sends = 0u32;
    let socket = match connected_udp(target.peer).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e),
    };
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| any_local(&target.peer));
    let req = Request::new(
        target.uri_host,
        target.uri_port,
        Transport::Udp,
        local,
        cseq,
    );
    let bytes = req.emit();
    let start = Instant::now();
    let mut next = start;
    let mut step = T1;
    let mut provisional = false;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut last_error = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {
                if Instant::now() >= deadline {
                    return Outcome::Failed(last_error.unwrap_or_else(|| "timeout".into()));
                }
                if let Err(e) = socket.send(bytes.as_bytes()).await {
                    last_error = Some(io_error_word(&e));
                }
                sends += 1;
                notes.retain(|(k, _)| *k != "transmissions");
                notes.push(("transmissions", sends.to_string()));
                next = (Instant::now() + step).min(deadline);
                step = next_interval(step, provisional);
            }
            got = socket.recv(&mut buf) => {
                let n = match got {
                    Ok(n) => n,
                    Err(e) => {
                        // ICMP port unreachable: nobody listens there.
                        last_error = Some(io_error_word(&e));
                        continue;
                    }
                };
                let Ok((resp, _)) = Response::parse(&buf[..n]) else { continue };
                if !req.matches(&resp) {
                    continue;
                }
                if resp.is_final() {
                    return Outcome::Final(resp, start.elapsed());
                }
                notes.push(("provisional", format!("{} {}", resp.code, resp.reason)));
                provisional = true;
            }
        }
    }
}

async fn tcp(target: Target, cseq: u32, deadline: Instant, notes: &mut Notes) -> Outcome {
    let start = Instant::now();
    let mut stream = match tokio::time::timeout_at(deadline, TcpStream::connect(target.peer)).await
    {
        Err(_) => return Outcome::Failed("timeout".into()),
        Ok(Err(e)) => return Outcome::Failed(io_error_word(&e)),
        Ok(Ok(s)) => s,
    };
    notes.push((
        "connect_ms",
        format!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
    ));
    let local = stream
        .local_addr()
        .unwrap_or_else(|_| any_local(&target.peer));
    let req = Request::new(
        target.uri_host,
        target.uri_port,
        Transport::Tcp,
        local,
        cseq,
    );
    let work = async {
        stream.write_all(req.emit().as_bytes()).await?;
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match Response::parse(&buf) {
                    Ok((resp, used)) => {
                        buf.drain(..used);
                        if req.matches(&resp) && resp.is_final() {
                            return Ok(resp);
                        }
                    }
                    Err(Error::Incomplete) => break,
                    Err(Error::Invalid(why)) => {
                        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
                    }
                }
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Err(_) => Outcome::Failed("timeout".into()),
        Ok(Err(e)) => Outcome::Failed(io_error_word(&e)),
        Ok(Ok(resp)) => Outcome::Final(resp, start.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_e_doubles_to_t2_until_timer_f() {
        // Sends at 0, 0.5, 1.5, 3.5, 7.5, 11.5 … s: 11 transmissions before Timer F (32 s).
        let (mut at, mut step, mut sends) = (Duration::ZERO, T1, vec![0u64]);
        loop {
            at += step;
            if at >= 64 * T1 {
                break;
            }
            sends.push(at.as_millis() as u64);
            step = next_interval(step, false);
        }
        assert_eq!(&sends[..6], &[0, 500, 1500, 3500, 7500, 11500]);
        assert_eq!(sends.len(), 11);
        assert_eq!(next_interval(T1, true), T2);
    }
}
