//! Faultline's test kit: real processes for end-to-end tests.
//!
//! - [`require`]: find an external tool or skip the test with a clear reason
//!   (in CI, `FAULTLINE_REQUIRE_ALL=1` turns a missing tool into a failure).
//! - [`workspace_bin`]: the path of one of our binaries, built on demand.
//! - [`Mosquitto`]: a real broker on an ephemeral loopback port, stoppable and
//!   restartable with or without its persistent state.
//! - [`Postgres`]: a real PostgreSQL server on an ephemeral loopback port, a fresh
//!   database per test.
//! - [`Child`]: a spawned process killed when dropped.
//! - [`wait_until`]: poll a condition instead of sleeping a fixed time.
//! - [`nats::NatsCluster`]: a three-node NATS cluster (JetStream, MQTT) for cluster mode.
//! - [`dns::DnsServer`]: a small authoritative DNS server (UDP and TCP) on loopback.
//! - [`certs::TestPki`]: a throwaway CA, server and client certificates.
//! - [`outbox`]: writes and counts an agent's durable outbox in its on-disk format.
//! - [`relay`]: the UDP impairment relay, and [`fleet`]: the fleet simulator (its
//!   pure core plus the MQTT `publish` shell). Both cores live in `faultline-lab`
//!   (`tests/lab/`), which the collector's `demo` links without this test kit;
//!   they are re-exported here under their old paths.

pub mod certs;
pub mod collector;
pub mod coturn;
pub mod dns;
pub mod fleet;
pub mod kamailio;
pub mod lab;
pub mod nats;
pub mod outbox;
pub mod postgres;

pub use collector::{Collector, Watcher, log_of, metric, mqtt_client, spawn_logged, tcp_sink};
pub use faultline_lab::relay;
pub use postgres::Postgres;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Locates `tool` on PATH (and /usr/sbin, where Debian puts daemons). `None` means
/// the caller should return early: the skip reason has been printed. Under
/// `FAULTLINE_REQUIRE_ALL=1` (CI) a missing tool panics instead.
pub fn require(tool: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = which(tool) {
        return Some(p);
    }
    let msg = format!(
        "{tool} not found: install Debian's `{package}` (bash .ci/install-deps does) to run this test"
    );
    if std::env::var_os("FAULTLINE_REQUIRE_ALL").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// True when running as root (needed for raw sockets, namespaces, nftables). Prints
/// the skip reason when not; panics under `FAULTLINE_REQUIRE_ALL=1`.
pub fn require_root(what: &str) -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        let msg = format!("{what} needs root (CI runs as root)");
        if std::env::var_os("FAULTLINE_REQUIRE_ALL").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    root
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The path of a workspace binary (`faultline-agent`, `faultline-collector`), brought
/// up to date with `cargo build` once per test process: `cargo test -p
/// faultline-collector` does not rebuild the agent, and a stale one would test old
/// code (a no-op build takes a moment).
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let bin = dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bin", name]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        // target/<triple>/<profile>: a cross build (its binaries are built by ci.sh).
        if let Some(triple) = dir
            .parent()
            .and_then(Path::file_name)
            .and_then(|t| t.to_str())
            .filter(|t| t.contains("-linux-"))
        {
            cmd.args(["--target", triple]);
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
        built.push(name.to_owned());
    }
    assert!(bin.is_file(), "{} missing after build", bin.display());
    bin
}

/// A free TCP port on loopback (bound then released; good enough for tests).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral TCP port")
        .port()
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until something accepts TCP connections at `addr`.
pub fn wait_for_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// A GET over plain HTTP/1.1 (e.g. on the collector's server); the body, empty when
/// the server cannot be reached.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    HttpResponse::parse(&out).body
}

/// One HTTP/1.1 request with `headers` (whole lines) and a JSON `body` (none when
/// empty); the response, status 0 when nothing answered.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[String],
    json: &str,
) -> HttpResponse {
    use std::io::Read;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return HttpResponse::default();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req += &format!("{h}\r\n");
    }
    if !json.is_empty() {
        req += &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            json.len()
        );
    }
    req += "\r\n";
    req += json;
    let _ = s.write_all(req.as_bytes());
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    HttpResponse::parse(&out)
}

/// An HTTP/1.1 response as read off the socket up to the close.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names and values, trimmed, in order.
    pub headers: Vec<(String, String)>,
    /// The body, decoded when it came in chunks (`/metrics` is streamed).
    pub body: String,
}

impl HttpResponse {
    pub fn parse(raw: &str) -> Self {
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Self {
            status,
            headers,
            body,
        }
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A chunked body's data (RFC 9112 section 7.1); what follows a malformed size is dropped.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = size.split(';').next().unwrap_or("").trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Child {
    inner: Option<std::process::Child>,
    name: String,
}

impl Child {
    /// Spawns `cmd`, tagging it `name` for messages.
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<Self> {
        let inner = cmd.spawn()?;
        Ok(Self {
            inner: Some(inner),
            name: name.to_owned(),
        })
    }

    pub fn id(&self) -> u32 {
        self.inner.as_ref().map_or(0, std::process::Child::id)
    }

    /// Sends `signal` (e.g. `"TERM"`, `"KILL"`) via kill(1).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.id().to_string())
            .status();
    }

    /// Waits for the process to exit, up to `timeout`; returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.inner.as_mut()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.inner = None;
                return Some(st);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process now and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.inner.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.inner.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Access to the underlying process (e.g. to take its stdout).
    pub fn inner_mut(&mut self) -> Option<&mut std::process::Child> {
        self.inner.as_mut()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p =
            std::env::temp_dir().join(format!("faultline-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real Mosquitto broker on 127.0.0.1 at an ephemeral port.
#[derive(Debug)]
pub struct Mosquitto {
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    child: Option<Child>,
    extra_conf: String,
    /// A complete config of the caller's instead of the default one.
    full_conf: Option<String>,
}

impl Mosquitto {
    /// Starts a broker with persistence on (state kept across [`Mosquitto::restart`]).
    /// `None` when mosquitto is not installed (the test should return; reason printed).
    pub fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// Starts a broker with extra lines appended to its config (ACLs, auth...).
    pub fn start_with(extra_conf: &str) -> Option<Self> {
        let bin = require("mosquitto", "mosquitto")?;
        let mut m = Self {
            port: free_tcp_port(),
            bin,
            dir: TempDir::new("mosquitto"),
            child: None,
            extra_conf: extra_conf.to_owned(),
            full_conf: None,
        };
        m.launch();
        Some(m)
    }

    /// Starts a broker from a complete config `conf` (e.g. a shipped one with its
    /// paths and ports rewritten). It must listen on 127.0.0.1:`port`, which is
    /// awaited; other listeners are the caller's to await.
    pub fn start_conf(port: u16, conf: &str) -> Option<Self> {
        let bin = require("mosquitto", "mosquitto")?;
        let mut m = Self {
            port,
            bin,
            dir: TempDir::new("mosquitto"),
            child: None,
            extra_conf: String::new(),
            full_conf: Some(conf.to_owned()),
        };
        m.launch();
        Some(m)
    }

    /// The broker's `mqtt://` URL.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf).expect("write mosquitto.conf");
        if let Some(full) = &self.full_conf {
            f.write_all(full.as_bytes()).expect("write mosquitto.conf");
        } else {
            // Started as root, mosquitto drops to the `mosquitto` user, which cannot
            // write our temporary directory: persistence would fail every autosave.
            let user = if lab::is_root() && !self.extra_conf.contains("user ") {
                "user root\n"
            } else {
                ""
            };
            write!(
                f,
                "{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {dir}/\nautosave_interval 1\nmax_queued_messages 100000\n\
             log_dest stderr\nlog_type error\nlog_type warning\n{extra}\n",
                port = self.port,
                dir = self.dir.path().display(),
                extra = self.extra_conf,
            )
            .expect("write mosquitto.conf");
        }
        let child = Child::spawn(
            "mosquitto",
            Command::new(&self.bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .expect("spawn mosquitto");
        self.child = Some(child);
        assert!(
            wait_for_tcp(self.addr(), Duration::from_secs(10)),
            "mosquitto did not start listening on {}",
            self.addr()
        );
    }

    /// Stops the broker (SIGTERM, so it saves its state) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal("TERM");
            if c.wait_timeout(Duration::from_secs(10)).is_none() {
                c.kill();
            }
        }
    }

    /// Starts the broker again on the same port; with `keep_state` false its
    /// persistence file is deleted first (sessions and queued messages forgotten).
    pub fn restart(&mut self, keep_state: bool) {
        self.stop();
        if !keep_state {
            let _ = std::fs::remove_file(self.dir.path().join("mosquitto.db"));
        }
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}
