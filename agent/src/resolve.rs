//! The agent's own stub resolver: IP literals, /etc/hosts, then A and AAAA queries to
//! resolv.conf's nameservers (UDP, TCP when the answer is truncated), with glibc's
//! search-list rules. It never calls the C library's resolver: in the static armv7
//! binary `getaddrinfo` with its NSS, IDNA and iconv tables costs about 100 kB.
//!
//! Not done: no cache (callers keep answers: the probes for `RESOLVE_TTL`), no
//! nsswitch.conf (always files, then DNS), no EDNS0 or DNSSEC, no `options rotate`,
//! no LOCALDOMAIN / RES_OPTIONS, no search domain taken from the host name.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::probe::dns::{self, Answer, RecordType, ResolvConf};
use crate::probe::{DNS_PORT, any_local};

/// The hosts file of the system.
pub const HOSTS: &str = "/etc/hosts";
/// Longest wait for one server's answer, whatever resolv.conf says: a probe resolves
/// inside its window (10 s by default), and glibc's 5 s × 2 attempts would let one
/// silent server eat all of it. A resolver that needs more than 2 s is itself the
/// fault worth reporting.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(2);
/// A UDP answer without EDNS0 is at most 512 bytes (RFC 1035 4.2.1).
const UDP_MAX: usize = 512;

/// Resolves `host` (a name, an IPv4 literal, or an IPv6 literal with or without brackets) for `port`.
/// IPv4 addresses come first. Never calls the C library's resolver.
pub async fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Resolver::system().lookup(host, port).await
}

/// Where the resolver reads its configuration; both files are read on every lookup
/// (they are small), so edits take effect at once.
#[derive(Debug, Clone)]
pub struct Resolver {
    hosts: PathBuf,
    resolv_conf: PathBuf,
    /// The port asked on every nameserver: 53 (tests use another on loopback).
    dns_port: u16,
}

impl Resolver {
    /// /etc/hosts and /etc/resolv.conf.
    pub fn system() -> Self {
        Self {
            hosts: HOSTS.into(),
            resolv_conf: dns::RESOLV_CONF.into(),
            dns_port: DNS_PORT,
        }
    }

    /// Like [`lookup`], with this resolver's files. Never `Ok` with no address.
    pub async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let ips = self.ips(host).await?;
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    async fn ips(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse() {
            return Ok(vec![ip]);
        }
        let hosts = std::fs::read_to_string(&self.hosts).unwrap_or_default();
        let mut ips = hosts_lookup(&hosts, host);
        if ips.is_empty() && host.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
            ips = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
        }
        if !ips.is_empty() {
            // IPv4 first, file order within a family (a partition: no sort code).
            let (mut v4, v6): (Vec<IpAddr>, Vec<IpAddr>) =
                ips.into_iter().partition(IpAddr::is_ipv4);
            v4.extend(v6);
            return Ok(v4);
        }
        dns::validate_name(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conf = ResolvConf::read(&self.resolv_conf);
        for s in &mut conf.nameservers {
            s.set_port(self.dns_port);
        }
        let mut failure = None;
        for name in search_names(&conf, host) {
            if dns::validate_name(&name).is_err() {
                continue; // too long with this suffix
            }
            // Both families at once, as glibc does; A first in the result.
            let (v4, v6) = tokio::join!(
                ask(&conf, &name, RecordType::A),
                ask(&conf, &name, RecordType::Aaaa)
            );
            let mut silence = None;
            for got in [v4, v6] {
                match got {
                    Ok(a) if a.rcode == 0 => ips.extend(a.records.iter().filter_map(ip_of)),
                    Ok(a) if a.rcode == 3 => {}
                    Ok(a) => failure = Some((name.clone(), a.error().unwrap_or_default())),
                    Err(e) => silence = Some(e),
                }
            }
            if !ips.is_empty() {
                return Ok(ips);
            }
            // No answer at all ends the search (glibc too): the next suffix would only
            // wait as long again.
            if let Some(e) = silence {
                return Err(e);
            }
        }
        Err(match failure {
            Some((name, word)) => io::Error::other(format!("DNS lookup of {name} failed: {word}")),
            None => io::Error::new(io::ErrorKind::NotFound, format!("no such host {host}")),
        })
    }
}

/// The addresses `hosts` (an /etc/hosts text) gives `name`: canonical names and
/// aliases, case-insensitive, every matching line, in file order.
pub fn hosts_lookup(hosts: &str, name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    hosts
        .lines()
        .filter_map(|line| {
            // `split` yields at least one piece.
            let mut words = line.split('#').next().unwrap().split_whitespace();
            let ip = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .collect()
}

/// The names to ask for `host`, in order (glibc's res_nsearch): a trailing dot makes
/// it absolute, asked alone; with at least `ndots` dots it is asked first as it is,
/// then with each search domain; with fewer, as it is after the search domains.
pub fn search_names(conf: &ResolvConf, host: &str) -> Vec<String> {
    if let Some(absolute) = host.strip_suffix('.') {
        return vec![absolute.to_string()];
    }
    let as_is_first = host.matches('.').count() >= conf.ndots;
    let mut names = Vec::with_capacity(conf.search.len() + 1);
    if as_is_first {
        names.push(host.to_string());
    }
    names.extend(conf.search.iter().map(|d| format!("{host}.{d}")));
    if !as_is_first {
        names.push(host.to_string());
    }
    names
}

fn ip_of(r: &dns::Record) -> Option<IpAddr> {
    match r {
        dns::Record::A(ip) => Some((*ip).into()),
        dns::Record::Aaaa(ip) => Some((*ip).into()),
        dns::Record::Srv { .. } => None,
    }
}

/// Asks the nameservers in turn for `name`/`rtype`, `attempts` rounds: the first
/// answer that is not a server failure (SERVFAIL, REFUSED...), else the last such
/// failure, else an error saying that no server answered.
async fn ask(conf: &ResolvConf, name: &str, rtype: RecordType) -> io::Result<Answer> {
    let timeout = conf.timeout.min(MAX_TIMEOUT);
    let mut failure = None;
    let mut last = None;
    for _ in 0..conf.attempts {
        for &server in &conf.nameservers {
            match exchange(server, name, rtype, timeout).await {
                Ok(a) if matches!(a.rcode, 0 | 3) => return Ok(a),
                Ok(a) => failure = Some(a),
                Err(e) => last = Some(e),
            }
        }
    }
    if let Some(a) = failure {
        return Ok(a);
    }
    let servers: Vec<String> = conf.nameservers.iter().map(|s| s.to_string()).collect();
    let mut msg = format!(
        "DNS server{} {} did not answer ({} attempt{})",
        if servers.len() > 1 { "s" } else { "" },
        servers.join(", "),
        conf.attempts,
        if conf.attempts > 1 { "s" } else { "" },
    );
    // The reason when it was more than silence (refused, unreachable...).
    let kind = match last {
        Some(e) if e.kind() != io::ErrorKind::TimedOut => {
            msg = format!("{msg}: {e}");
            e.kind()
        }
        _ => io::ErrorKind::TimedOut,
    };
    Err(io::Error::new(kind, msg))
}

/// One query to one server over UDP, repeated over TCP when the answer is truncated.
async fn exchange(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    timeout: Duration,
) -> io::Result<Answer> {
    let id = fastrand::u16(..);
    let query = dns::build_query(id, name, rtype);
    let socket = UdpSocket::bind(any_local(&server)).await?;
    socket.connect(server).await?;
    socket.send(&query).await?;
    let mut buf = [0u8; UDP_MAX];
    let answer = tokio::time::timeout(timeout, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            // Anything that is not the answer to this question is dropped.
            match dns::parse_response(&buf[..n], id, rtype) {
                Ok(a) if a.name.eq_ignore_ascii_case(name) => return io::Result::Ok(a),
                _ => continue,
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    if !answer.truncated {
        return Ok(answer);
    }
    tokio::time::timeout(timeout, exchange_tcp(server, id, &query, rtype))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// The query over TCP, each message after its 2-byte length (RFC 1035 4.2.2).
async fn exchange_tcp(
    server: SocketAddr,
    id: u16,
    query: &[u8],
    rtype: RecordType,
) -> io::Result<Answer> {
    let mut stream = TcpStream::connect(server).await?;
    let mut msg = (query.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    stream.write_all(&msg).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    dns::parse_response(&buf, id, rtype).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("DNS server {server} over TCP: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_tests::TempDir;
    use faultline_tests::dns::DnsServer;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addrs(port: u16, list: &[&str]) -> Vec<SocketAddr> {
        ips(list)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()
    }

    /// A resolver over `hosts` and `resolv_conf` texts written to `dir`, asking its
    /// nameservers on `dns_port`.
    fn resolver(dir: &TempDir, hosts: &str, resolv_conf: &str, dns_port: u16) -> Resolver {
        let r = Resolver {
            hosts: dir.path().join("hosts"),
            resolv_conf: dir.path().join("resolv.conf"),
            dns_port,
        };
        std::fs::write(&r.hosts, hosts).unwrap();
        std::fs::write(&r.resolv_conf, resolv_conf).unwrap();
        r
    }

    #[test]
    fn hosts_names_aliases_case_and_comments() {
        let hosts = "# The gateway's hosts\n\
                     127.0.0.1\tlocalhost\n\
                     fd00::5 gateway # v6 first in the file\n\
                     10.0.0.5   gw.lan  GATEWAY   broker\n\
                     # 10.0.0.9 gateway\n\
                     10.0.0.7 other#gateway\n\
                     not-an-ip gateway\n\
                     10.0.0.8\n\
                     fe80::1%eth0 gateway\n\
                     \n\
                     10.0.0.6 Broker.lan broker\n";
        assert_eq!(
            hosts_lookup(hosts, "Gateway"),
            ips(&["fd00::5", "10.0.0.5"])
        );
        assert_eq!(hosts_lookup(hosts, "gw.lan."), ips(&["10.0.0.5"]));
        assert_eq!(
            hosts_lookup(hosts, "broker"),
            ips(&["10.0.0.5", "10.0.0.6"])
        );
        assert_eq!(hosts_lookup(hosts, "broker.lan"), ips(&["10.0.0.6"]));
        assert_eq!(hosts_lookup(hosts, "other"), ips(&["10.0.0.7"]));
        assert!(hosts_lookup(hosts, "lan").is_empty());
        assert!(hosts_lookup(hosts, "10.0.0.8").is_empty());
        assert!(hosts_lookup("", "gateway").is_empty());
    }

    #[test]
    fn search_list_expansion() {
        let conf = ResolvConf::parse("search lan example.test\n");
        assert_eq!(
            search_names(&conf, "gw"),
            ["gw.lan", "gw.example.test", "gw"]
        );
        // At least ndots (1) dots: as it is first.
        assert_eq!(
            search_names(&conf, "broker.corp"),
            ["broker.corp", "broker.corp.lan", "broker.corp.example.test"]
        );
        // A trailing dot: absolute, no search.
        assert_eq!(search_names(&conf, "gw."), ["gw"]);
        let conf = ResolvConf::parse("domain lan\noptions ndots:3\n");
        assert_eq!(search_names(&conf, "a.b.c"), ["a.b.c.lan", "a.b.c"]);
        assert_eq!(search_names(&conf, "a.b.c.d"), ["a.b.c.d", "a.b.c.d.lan"]);
        assert_eq!(search_names(&ResolvConf::parse(""), "gw"), ["gw"]);
    }

    #[tokio::test]
    async fn literals_localhost_and_hosts_ask_no_dns() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-hosts");
        let r = resolver(
            &dir,
            "fd00::5 gateway\n10.0.0.5 gw.lan Gateway\n",
            "nameserver 127.0.0.1\n",
            dns.addr().port(),
        );
        let got = r.lookup("GATEWAY", 1883).await.unwrap();
        assert_eq!(got, addrs(1883, &["10.0.0.5", "fd00::5"]));
        for (host, want) in [
            ("192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
        ] {
            assert_eq!(r.lookup(host, 5060).await.unwrap(), addrs(5060, &[want]));
        }
        // Not in this hosts file: localhost all the same.
        assert_eq!(
            r.lookup("localhost", 862).await.unwrap(),
            addrs(862, &["127.0.0.1", "::1"])
        );
        assert_eq!(dns.queries(), Vec::<String>::new());
        // An edited hosts file counts at once.
        std::fs::write(&r.hosts, "10.0.0.6 gateway\n").unwrap();
        assert_eq!(
            r.lookup("gateway", 1).await.unwrap(),
            addrs(1, &["10.0.0.6"])
        );
        let e = r.lookup("a..b", 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("is not a DNS name"), "{e}");
    }

    #[tokio::test]
    async fn dns_a_aaaa_and_cname_chain() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-dns");
        let r = resolver(&dir, "", "nameserver 127.0.0.1\n", dns.addr().port());
        assert_eq!(
            r.lookup("host.example.test", 443).await.unwrap(),
            addrs(443, &["192.0.2.10", "2001:db8::10"])
        );
        // alias → mid → host; the unrelated A in the answer is not taken.
        assert_eq!(
            r.lookup("alias.example.test", 443).await.unwrap(),
            addrs(443, &["192.0.2.10", "2001:db8::10"])
        );
        assert_eq!(
            r.lookup("v6only.example.test", 443).await.unwrap(),
            addrs(443, &["2001:db8::6"])
        );
        let mut asked = dns.queries();
        asked.sort();
        assert_eq!(
            asked,
            [
                "udp A alias.example.test",
                "udp A host.example.test",
                "udp A v6only.example.test",
                "udp AAAA alias.example.test",
                "udp AAAA host.example.test",
                "udp AAAA v6only.example.test",
            ]
        );
    }

    #[tokio::test]
    async fn nxdomain_and_servfail_say_what_failed() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-nx");
        let r = resolver(&dir, "", "nameserver 127.0.0.1\n", dns.addr().port());
        let e = r.lookup("nx.example.test", 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no such host nx.example.test");
        let e = r.lookup("fail.example.test", 1).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "DNS lookup of fail.example.test failed: servfail"
        );
    }

    #[tokio::test]
    async fn search_suffix_after_nxdomain() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-search");
        let r = resolver(
            &dir,
            "",
            "nameserver 127.0.0.1\nsearch lan.test example.test\n",
            dns.addr().port(),
        );
        assert_eq!(
            r.lookup("gw", 80).await.unwrap(),
            addrs(80, &["192.0.2.10", "2001:db8::10"])
        );
        let a: Vec<String> = dns
            .queries()
            .into_iter()
            .filter(|q| q.starts_with("udp A "))
            .collect();
        assert_eq!(a, ["udp A gw.lan.test", "udp A gw.example.test"]);
        // Nowhere: the error names the host as asked.
        let e = r.lookup("nx", 80).await.unwrap_err();
        assert_eq!(e.to_string(), "no such host nx");
    }

    #[tokio::test]
    async fn truncated_udp_answer_is_asked_again_over_tcp() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-tc");
        let r = resolver(&dir, "", "nameserver 127.0.0.1\n", dns.addr().port());
        assert_eq!(
            r.lookup("big.example.test", 8883).await.unwrap(),
            addrs(8883, &["192.0.2.99"])
        );
        let mut asked = dns.queries();
        asked.sort();
        assert_eq!(
            asked,
            [
                "tcp A big.example.test",
                "tcp AAAA big.example.test",
                "udp A big.example.test",
                "udp AAAA big.example.test",
            ]
        );
    }

    #[tokio::test]
    async fn silent_server_times_out_then_the_next_one_answers() {
        let dns = DnsServer::start();
        let port = dns.addr().port();
        // Bound and never read: a server that does not answer (no port unreachable).
        let _silent = std::net::UdpSocket::bind(("127.0.0.2", port)).unwrap();
        let dir = TempDir::new("resolve-timeout");
        let opts = "options timeout:1 attempts:1\n";
        let r = resolver(&dir, "", &format!("nameserver 127.0.0.2\n{opts}"), port);
        let e = r.lookup("host.example.test", 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(
            e.to_string(),
            format!("DNS server 127.0.0.2:{port} did not answer (1 attempt)")
        );
        let r = resolver(
            &dir,
            "",
            &format!("nameserver 127.0.0.2\nnameserver 127.0.0.1\n{opts}"),
            port,
        );
        assert_eq!(
            r.lookup("host.example.test", 1).await.unwrap(),
            addrs(1, &["192.0.2.10", "2001:db8::10"])
        );
        // Nothing listening (port unreachable) is told apart from silence.
        let r = resolver(&dir, "", &format!("nameserver 127.0.0.3\n{opts}"), port);
        let e = r.lookup("host.example.test", 1).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            e.to_string().starts_with(&format!(
                "DNS server 127.0.0.3:{port} did not answer (1 attempt): "
            )),
            "{e}"
        );
    }

    #[tokio::test]
    async fn no_nameserver_line_means_localhost() {
        let dns = DnsServer::start();
        let dir = TempDir::new("resolve-default");
        let r = resolver(&dir, "", "# empty\n", dns.addr().port());
        assert_eq!(
            r.lookup("host.example.test", 1).await.unwrap()[0],
            "192.0.2.10:1".parse().unwrap()
        );
    }
}
