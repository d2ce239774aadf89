//! TCP connect time: one handshake per window, closed at once.

use std::time::Duration;

use faultline_shared::ProbeResult;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::peer::Peer;
use super::tally::single_rtt;
use super::{Notes, Probe, io_error_word};
use crate::config::target::HostPort;

/// Connects to one host:port, window after window.
#[derive(Debug)]
pub struct TcpProbe {
    peer: Peer,
}

impl TcpProbe {
    pub fn new(to: &HostPort) -> Self {
        Self {
            peer: Peer::new(to.clone()),
        }
    }
}

impl Probe for TcpProbe {
    /// One connect within the window: `refused`, `timeout` or the connect time.
    async fn measure(&mut self, window: Duration, r: &mut ProbeResult, notes: &mut Notes) {
        let deadline = Instant::now() + window;
        let Some(peer) = self.peer.resolve_for(deadline, r).await else {
            return;
        };
        notes.push(("address", peer.to_string()));
        r.sent = 1;
        let start = Instant::now();
        match tokio::time::timeout_at(deadline, TcpStream::connect(peer)).await {
            Err(_) => r.error = Some("timeout".into()),
            Ok(Err(e)) => r.error = Some(io_error_word(&e)),
            Ok(Ok(_stream)) => {
                r.received = 1;
                r.rtt_ms = Some(single_rtt(start.elapsed()));
            }
        }
    }
}
