//! Where a probe's packets go: a target's host turned into a socket address, within
//! the window's deadline. Host names go through the C library's resolver
//! (`tokio::net::lookup_host`: /etc/hosts, DNS, whatever nsswitch.conf says) and the
//! answer is reused for [`RESOLVE_TTL`]; IP addresses are used as they are; the
//! default gateway is read from the routing table every window, so a switch to
//! another uplink (LTE backup) is followed at once.
//!
//! Does not send anything to the peer; the probes do.

use std::net::{IpAddr, SocketAddr};

use faultline_shared::ProbeResult;
use tokio::time::Instant;

use crate::config::target::{Host, HostPort};
use crate::net::gateway;

/// How long a host name's address is reused before asking again.
pub const RESOLVE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The error word when `host = "gateway"` and the routing table has no default route.
pub const NO_DEFAULT_ROUTE: &str = "no default route";

/// One target's peer, kept from window to window.
#[derive(Debug, Clone)]
pub struct Peer {
    to: HostPort,
    cached: Option<(SocketAddr, Instant)>,
}

impl Peer {
    pub fn new(to: HostPort) -> Self {
        Self { to, cached: None }
    }

    pub fn host_port(&self) -> &HostPort {
        &self.to
    }

    /// The address to probe, or the error word: [`NO_DEFAULT_ROUTE`], or
    /// `resolve NAME: ...` (the resolver's reason, or `timeout` at `deadline`).
    pub async fn resolve(&mut self, deadline: Instant) -> Result<SocketAddr, String> {
        let port = self.to.port;
        let name = match &self.to.host {
            Host::Gateway => return gateway_addr(gateway::default_gateway(), port),
            Host::Name(n) => n,
        };
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        if let Some((addr, at)) = self.cached
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(addr);
        }
        let found: Vec<SocketAddr> =
            tokio::time::timeout_at(deadline, tokio::net::lookup_host((name.as_str(), port)))
                .await
                .map_err(|_| format!("resolve {name}: timeout"))?
                .map_err(|e| format!("resolve {name}: {e}"))?
                .collect();
        let addr = first_choice(&found).ok_or_else(|| format!("resolve {name}: no address"))?;
        self.cached = Some((addr, Instant::now()));
        Ok(addr)
    }

    /// Like [`Peer::resolve`], for a probe's window: on failure the error word goes
    /// into `r`, the cached answer is dropped and `None` says to end the window.
    pub async fn resolve_for(
        &mut self,
        deadline: Instant,
        r: &mut ProbeResult,
    ) -> Option<SocketAddr> {
        match self.resolve(deadline).await {
            Ok(a) => Some(a),
            Err(e) => {
                self.forget();
                r.error = Some(e);
                None
            }
        }
    }

    /// Forgets the cached answer (after a failure, resolve again next time).
    pub fn forget(&mut self) {
        self.cached = None;
    }
}

/// The address to probe among a name's addresses: the first IPv4 one (the path most
/// calls take), else the first.
fn first_choice(found: &[SocketAddr]) -> Option<SocketAddr> {
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
}

/// The gateway's address for `port`, from what the routing table said.
fn gateway_addr(
    table: std::io::Result<Option<std::net::Ipv4Addr>>,
    port: u16,
) -> Result<SocketAddr, String> {
    match table {
        Ok(Some(ip)) => Ok(SocketAddr::new(ip.into(), port)),
        Ok(None) => Err(NO_DEFAULT_ROUTE.into()),
        Err(e) => Err(format!(
            "gateway: cannot read {}: {e}",
            gateway::PROC_NET_ROUTE
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> Peer {
        Peer::new(HostPort {
            host: Host::Name(host.into()),
            port,
        })
    }

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    #[tokio::test]
    async fn ip_literals_and_localhost() {
        assert_eq!(
            name("192.0.2.1", 5060).resolve(soon()).await,
            Ok("192.0.2.1:5060".parse().unwrap())
        );
        assert_eq!(
            name("2001:db8::1", 862).resolve(soon()).await,
            Ok("[2001:db8::1]:862".parse().unwrap())
        );
        // Through the C library: /etc/hosts has localhost on every machine.
        let mut p = name("localhost", 9);
        let a = p.resolve(soon()).await.unwrap();
        assert!(a.ip().is_loopback() && a.port() == 9, "{a}");
        assert!(p.cached.is_some(), "a name's answer is kept");
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_says_so() {
        let mut p = name("nosuch.invalid", 1);
        let mut r = ProbeResult::new(
            faultline_shared::Id::new("t").unwrap(),
            faultline_shared::Layer::Internet,
            None,
            faultline_shared::Kind::Tcp,
        );
        assert_eq!(p.resolve_for(soon(), &mut r).await, None);
        let e = r.error.unwrap();
        assert!(e.starts_with("resolve nosuch.invalid: "), "{e}");
        assert!(p.cached.is_none());
    }

    #[test]
    fn ipv4_is_preferred() {
        let v6: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let v4: SocketAddr = "192.0.2.1:1".parse().unwrap();
        assert_eq!(first_choice(&[v6, v4]), Some(v4));
        assert_eq!(first_choice(&[v6]), Some(v6));
        assert_eq!(first_choice(&[]), None);
    }

    #[test]
    fn the_gateway_or_why_not() {
        assert_eq!(
            gateway_addr(Ok(Some([192, 168, 1, 1].into())), 5060),
            Ok("192.168.1.1:5060".parse().unwrap())
        );
        assert_eq!(gateway_addr(Ok(None), 0), Err("no default route".into()));
        let e = gateway_addr(Err(std::io::ErrorKind::NotFound.into()), 0).unwrap_err();
        assert!(
            e.starts_with("gateway: cannot read /proc/net/route: "),
            "{e}"
        );
    }
}
