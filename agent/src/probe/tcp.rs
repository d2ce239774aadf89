//! TCP connect time: one handshake per window, closed at once.

use faultline_shared::ProbeResult;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{HostPort, Resolver, io_error_word, single_rtt};

/// Connects to one host:port, window after window.
#[derive(Debug)]
pub struct TcpProber {
    resolver: Resolver,
}

impl TcpProber {
    pub fn new(to: HostPort) -> Self {
        Self {
            resolver: Resolver::new(to),
        }
    }

    /// One connect, bounded by `deadline`: `refused`, `timeout` or the connect time.
    pub async fn measure(
        &mut self,
        deadline: Instant,
        r: &mut ProbeResult,
        notes: &mut Vec<(&'static str, String)>,
    ) {
        let Some(peer) = self.resolver.resolve_for(r).await else {
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
