//! A UDP impairment relay: stands between a client (an agent's probe) and a server
//! (a STAMP reflector, a SIP or STUN server) and delays, drops, duplicates or
//! reorders what passes, per direction, seeded so a run can be repeated.
//!
//! Two layers. [`LinkModel`] is the pure core: given the impairment, a seeded RNG
//! and `now`, it decides each packet's [`Fate`]; it reads no clock and owns no
//! socket. [`Relay`] is the shell: std threads and std UDP sockets (no tokio, so
//! any test or the collector's `demo` can embed it), a timer thread with a priority
//! queue for delayed packets, and a [`RelayHandle`] to change impairments, cut the
//! link and read counters while it runs.
//!
//! Each client address gets its own upstream socket (like a NAT), so replies go back
//! to the client that asked, whichever source the server answers from.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a reordered packet is held back when [`Impairment::reorder_gap`] is zero.
pub const DEFAULT_REORDER_GAP: Duration = Duration::from_millis(10);
/// Largest datagram the relay carries.
pub const MAX_DATAGRAM: usize = 65_535;
/// Client addresses tracked at once; packets from further clients are dropped.
pub const MAX_CLIENTS: usize = 1024;
/// How often blocked threads wake to notice a stop.
const POLL: Duration = Duration::from_millis(50);
/// The timer thread spins (instead of sleeping) for the last stretch before a
/// release, so delays land within a few microseconds.
const SPIN: Duration = Duration::from_micros(200);

/// Gilbert–Elliott bursty loss: a two-state Markov chain stepped once per packet.
/// In the good state a packet is lost with `loss_good`, in the bad state with
/// `loss_bad`; `p` moves good → bad, `r` moves bad → good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p: f64,
    pub r: f64,
    pub loss_bad: f64,
    pub loss_good: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: every packet in the bad state is lost, none in the good.
    pub fn new(p: f64, r: f64) -> Self {
        Self {
            p,
            r,
            loss_bad: 1.0,
            loss_good: 0.0,
        }
    }

    /// Long-run share of packets lost.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        let bad = self.p / (self.p + self.r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }

    /// Mean number of packets per stay in the bad state (the mean burst length when
    /// `loss_bad` is 1 and `loss_good` 0).
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.r
    }
}

/// What the relay does to one direction's packets. `Impairment::default()` passes
/// everything untouched.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Fixed one-way delay added to every packet.
    pub delay: Duration,
    /// Extra delay drawn uniformly from `[0, jitter]` per packet. Order is kept: a
    /// packet never leaves before the one in front of it (unless reordered).
    pub jitter: Duration,
    /// Independent random loss probability.
    pub loss: f64,
    /// Bursty loss on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Probability that a forwarded packet is sent twice.
    pub duplicate: f64,
    /// Probability that a packet is held back by `reorder_gap` so later ones overtake it.
    pub reorder: f64,
    /// Hold-back of a reordered packet; zero means [`DEFAULT_REORDER_GAP`].
    pub reorder_gap: Duration,
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: None,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_gap: Duration::ZERO,
        }
    }
}

/// A rejected impairment: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("impairment `{field}`: {reason}")]
pub struct ImpairmentError {
    pub field: String,
    pub reason: String,
}

impl ImpairmentError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Impairment {
    /// Only a fixed delay.
    pub fn delay(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }

    /// Only random loss with probability `loss`.
    pub fn loss(loss: f64) -> Self {
        Self {
            loss,
            ..Self::default()
        }
    }

    /// Checks every probability is in [0, 1].
    pub fn validate(&self) -> Result<(), ImpairmentError> {
        let mut probs = vec![
            ("loss", self.loss),
            ("dup", self.duplicate),
            ("reorder", self.reorder),
        ];
        if let Some(ge) = &self.burst {
            probs.extend([
                ("ge.p", ge.p),
                ("ge.r", ge.r),
                ("ge.loss_bad", ge.loss_bad),
                ("ge.loss_good", ge.loss_good),
            ]);
        }
        for (field, v) in probs {
            if !(0.0..=1.0).contains(&v) {
                return Err(ImpairmentError::new(
                    field,
                    format!("{v} is not a probability in [0, 1]"),
                ));
            }
        }
        Ok(())
    }

    fn gap(&self) -> Duration {
        if self.reorder_gap.is_zero() {
            DEFAULT_REORDER_GAP
        } else {
            self.reorder_gap
        }
    }
}

/// Parses `delay=20ms,jitter=5ms,loss=2%,ge=0.01:0.3[:loss_bad[:loss_good]],dup=1%,
/// reorder=5%[:10ms]`. Durations take `us`, `ms` or `s`; probabilities a `%` or a
/// fraction. An empty string or `none` is no impairment.
impl FromStr for Impairment {
    type Err = ImpairmentError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut imp = Impairment::default();
        let spec = spec.trim();
        if spec.is_empty() || spec == "none" {
            return Ok(imp);
        }
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| ImpairmentError::new(part, "expected key=value"))?;
            let mut fields = value.split(':');
            let first = fields.next().unwrap_or_default();
            match key {
                "delay" => imp.delay = parse_duration(key, first)?,
                "jitter" => imp.jitter = parse_duration(key, first)?,
                "loss" => imp.loss = parse_prob(key, first)?,
                "dup" => imp.duplicate = parse_prob(key, first)?,
                "reorder" => {
                    imp.reorder = parse_prob(key, first)?;
                    if let Some(gap) = fields.next() {
                        imp.reorder_gap = parse_duration(key, gap)?;
                    }
                }
                "ge" => {
                    let p = parse_prob("ge.p", first)?;
                    let r = parse_prob("ge.r", fields.next().unwrap_or("1"))?;
                    let mut ge = GilbertElliott::new(p, r);
                    if let Some(h) = fields.next() {
                        ge.loss_bad = parse_prob("ge.loss_bad", h)?;
                    }
                    if let Some(k) = fields.next() {
                        ge.loss_good = parse_prob("ge.loss_good", k)?;
                    }
                    imp.burst = Some(ge);
                }
                _ => return Err(ImpairmentError::new(key, "unknown key")),
            }
            if fields.next().is_some() {
                return Err(ImpairmentError::new(key, "too many `:` fields"));
            }
        }
        imp.validate()?;
        Ok(imp)
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.delay.is_zero() {
            parts.push(format!("delay={}", fmt_ms(self.delay)));
        }
        if !self.jitter.is_zero() {
            parts.push(format!("jitter={}", fmt_ms(self.jitter)));
        }
        if self.loss > 0.0 {
            parts.push(format!("loss={}%", self.loss * 100.0));
        }
        if let Some(ge) = &self.burst {
            parts.push(format!(
                "ge={}:{}:{}:{}",
                ge.p, ge.r, ge.loss_bad, ge.loss_good
            ));
        }
        if self.duplicate > 0.0 {
            parts.push(format!("dup={}%", self.duplicate * 100.0));
        }
        if self.reorder > 0.0 {
            parts.push(format!(
                "reorder={}%:{}",
                self.reorder * 100.0,
                fmt_ms(self.gap())
            ));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

fn fmt_ms(d: Duration) -> String {
    format!("{}ms", d.as_secs_f64() * 1e3)
}

fn parse_duration(field: &str, s: &str) -> Result<Duration, ImpairmentError> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(ImpairmentError::new(
            field,
            format!("`{s}` needs a unit: us, ms or s"),
        ));
    };
    let v: f64 = num
        .parse()
        .map_err(|_| ImpairmentError::new(field, format!("`{s}` is not a duration")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(ImpairmentError::new(field, format!("`{s}` is negative")));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_prob(field: &str, s: &str) -> Result<f64, ImpairmentError> {
    let s = s.trim();
    let (num, scale) = match s.strip_suffix('%') {
        Some(n) => (n, 0.01),
        None => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| ImpairmentError::new(field, format!("`{s}` is not a number")))?;
    let v = v * scale;
    if !(0.0..=1.0).contains(&v) {
        return Err(ImpairmentError::new(
            field,
            format!("`{s}` is not a probability in [0, 1]"),
        ));
    }
    Ok(v)
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// The link is cut ([`RelayHandle::set_down`]).
    Down,
    /// Independent random loss.
    Random,
    /// Gilbert–Elliott loss.
    Burst,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Drop(DropCause),
    /// Send `copies` (1, or 2 when duplicated) at `at`.
    Deliver {
        at: Instant,
        copies: u8,
    },
}

/// One direction's impairment state: the pure decision model. Fed the RNG and
/// `now` per packet; never reads a clock.
#[derive(Debug, Clone)]
pub struct LinkModel {
    imp: Impairment,
    down: bool,
    /// Gilbert–Elliott state: true while in the bad state.
    bad: bool,
    /// Release time of the last in-order packet: later packets never leave earlier.
    floor: Option<Instant>,
}

impl LinkModel {
    pub fn new(imp: Impairment) -> Self {
        Self {
            imp,
            down: false,
            bad: false,
            floor: None,
        }
    }

    pub fn impairment(&self) -> Impairment {
        self.imp
    }

    /// Replaces the impairment; the burst state and the order floor carry over.
    pub fn set_impairment(&mut self, imp: Impairment) {
        self.imp = imp;
    }

    pub fn set_down(&mut self, down: bool) {
        self.down = down;
    }

    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Decides the fate of a packet that arrived at `now`.
    pub fn decide(&mut self, rng: &mut fastrand::Rng, now: Instant) -> Fate {
        if self.down {
            return Fate::Drop(DropCause::Down);
        }
        let imp = &self.imp;
        if let Some(ge) = &imp.burst {
            // Step the chain first, then draw the loss in the state it landed in.
            self.bad = if self.bad {
                rng.f64() >= ge.r
            } else {
                rng.f64() < ge.p
            };
            let loss = if self.bad { ge.loss_bad } else { ge.loss_good };
            if loss > 0.0 && rng.f64() < loss {
                return Fate::Drop(DropCause::Burst);
            }
        }
        if imp.loss > 0.0 && rng.f64() < imp.loss {
            return Fate::Drop(DropCause::Random);
        }
        let mut at = now + imp.delay;
        if !imp.jitter.is_zero() {
            at += imp.jitter.mul_f64(rng.f64());
        }
        if imp.reorder > 0.0 && rng.f64() < imp.reorder {
            // Held back and not part of the order floor: what follows overtakes it.
            at += imp.gap();
        } else {
            if let Some(floor) = self.floor {
                at = at.max(floor);
            }
            self.floor = Some(at);
        }
        let copies = if imp.duplicate > 0.0 && rng.f64() < imp.duplicate {
            2
        } else {
            1
        };
        Fate::Deliver { at, copies }
    }
}

/// A direction through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → upstream server.
    Up,
    /// Upstream server → client.
    Down,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// One direction's counters, read with [`RelayHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Packets that arrived at the relay.
    pub received: u64,
    /// Packets sent on (each counted once, duplicates aside).
    pub forwarded: u64,
    /// Packets dropped (loss, burst loss, link down, or too many clients).
    pub dropped: u64,
    /// Extra copies sent.
    pub duplicated: u64,
    /// Packets waiting in the delay queue right now.
    pub queued: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    queued: AtomicU64,
}

#[derive(Debug)]
struct Models {
    rng: fastrand::Rng,
    links: [LinkModel; 2],
}

/// A packet waiting in the delay queue.
#[derive(Debug)]
struct Scheduled {
    at: Instant,
    /// Tie-break: equal release times leave in arrival order.
    seq: u64,
    dir: Direction,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
    copies: u8,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap and we want the earliest release on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Debug, Default)]
struct Queue {
    heap: BinaryHeap<Scheduled>,
    next_seq: u64,
}

#[derive(Debug)]
struct Shared {
    models: Mutex<Models>,
    counters: [Counters; 2],
    queue: Mutex<Queue>,
    wake: Condvar,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking relay thread must not wedge the test that owns the relay.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn counters(&self, dir: Direction) -> &Counters {
        &self.counters[dir.index()]
    }

    /// Decides and then sends now or queues one packet that arrived going `dir`.
    fn handle(&self, dir: Direction, sock: &Arc<UdpSocket>, to: SocketAddr, data: &[u8]) {
        let c = self.counters(dir);
        c.received.fetch_add(1, AtomicOrdering::Relaxed);
        let now = Instant::now();
        let fate = {
            let mut m = lock(&self.models);
            let Models { rng, links } = &mut *m;
            links[dir.index()].decide(rng, now)
        };
        let (at, copies) = match fate {
            Fate::Drop(_) => {
                c.dropped.fetch_add(1, AtomicOrdering::Relaxed);
                return;
            }
            Fate::Deliver { at, copies } => (at, copies),
        };
        let mut q = lock(&self.queue);
        if at <= Instant::now() && q.heap.is_empty() {
            drop(q);
            self.send(dir, sock, to, data, copies);
            return;
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.heap.push(Scheduled {
            at,
            seq,
            dir,
            sock: Arc::clone(sock),
            to,
            data: data.to_vec(),
            copies,
        });
        c.queued.fetch_add(1, AtomicOrdering::Relaxed);
        drop(q);
        self.wake.notify_one();
    }

    fn send(&self, dir: Direction, sock: &UdpSocket, to: SocketAddr, data: &[u8], copies: u8) {
        let c = self.counters(dir);
        for i in 0..copies {
            // A send error (ICMP unreachable from an earlier send, full buffer) is
            // what a real network does to a packet: it is simply gone.
            let _ = sock.send_to(data, to);
            if i == 0 {
                c.forwarded.fetch_add(1, AtomicOrdering::Relaxed);
            } else {
                c.duplicated.fetch_add(1, AtomicOrdering::Relaxed);
            }
        }
    }

    /// The timer thread: releases queued packets at their time.
    fn run_timer(&self) {
        let mut q = lock(&self.queue);
        while !self.stop.load(AtomicOrdering::Relaxed) {
            let Some(top) = q.heap.peek() else {
                q = self
                    .wake
                    .wait_timeout(q, POLL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            };
            let now = Instant::now();
            if top.at <= now {
                // peek() just returned Some under the same lock.
                let item = q.heap.pop().unwrap();
                drop(q);
                self.counters(item.dir)
                    .queued
                    .fetch_sub(1, AtomicOrdering::Relaxed);
                self.send(item.dir, &item.sock, item.to, &item.data, item.copies);
                q = lock(&self.queue);
                continue;
            }
            let left = top.at - now;
            if left > SPIN {
                q = self
                    .wake
                    .wait_timeout(q, (left - SPIN).min(POLL))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            } else {
                drop(q);
                std::hint::spin_loop();
                q = lock(&self.queue);
            }
        }
    }
}

/// A handle to a running relay: change impairments, cut the link, read counters.
/// Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct RelayHandle {
    shared: Arc<Shared>,
}

impl RelayHandle {
    /// Sets one direction's impairment (takes effect for the next packet).
    pub fn set_impairment(&self, dir: Direction, imp: Impairment) -> Result<(), ImpairmentError> {
        imp.validate()?;
        lock(&self.shared.models).links[dir.index()].set_impairment(imp);
        Ok(())
    }

    /// Sets the same impairment both ways.
    pub fn set_both(&self, imp: Impairment) -> Result<(), ImpairmentError> {
        self.set_impairment(Direction::Up, imp)?;
        self.set_impairment(Direction::Down, imp)
    }

    /// Clears every impairment (the link stays cut if it is).
    pub fn clear(&self) {
        // Default impairment always validates.
        self.set_both(Impairment::default()).unwrap();
    }

    pub fn impairment(&self, dir: Direction) -> Impairment {
        lock(&self.shared.models).links[dir.index()].impairment()
    }

    /// Cuts the link (every new packet in both directions dropped) or restores it.
    pub fn set_down(&self, down: bool) {
        let mut m = lock(&self.shared.models);
        for l in &mut m.links {
            l.set_down(down);
        }
    }

    pub fn is_down(&self) -> bool {
        lock(&self.shared.models).links[0].is_down()
    }

    /// Re-seeds the RNG (for a repeatable phase within a longer run).
    pub fn reseed(&self, seed: u64) {
        lock(&self.shared.models).rng.seed(seed);
    }

    pub fn stats(&self, dir: Direction) -> DirStats {
        let c = self.shared.counters(dir);
        DirStats {
            received: c.received.load(AtomicOrdering::Relaxed),
            forwarded: c.forwarded.load(AtomicOrdering::Relaxed),
            dropped: c.dropped.load(AtomicOrdering::Relaxed),
            duplicated: c.duplicated.load(AtomicOrdering::Relaxed),
            queued: c.queued.load(AtomicOrdering::Relaxed),
        }
    }

    /// True when nothing waits in the delay queue.
    pub fn is_idle(&self) -> bool {
        lock(&self.shared.queue).heap.is_empty()
    }
}

/// A running relay. Stops its threads when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    handle: RelayHandle,
    threads: Vec<JoinHandle<()>>,
    sessions: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    /// Listens on `listen` and relays to `upstream`, with no impairment yet.
    pub fn start(listen: SocketAddr, upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen)?);
        front.set_read_timeout(Some(POLL))?;
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            models: Mutex::new(Models {
                rng: fastrand::Rng::with_seed(seed),
                links: [
                    LinkModel::new(Impairment::default()),
                    LinkModel::new(Impairment::default()),
                ],
            }),
            counters: Default::default(),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let sessions = Arc::new(Mutex::new(Vec::new()));
        let timer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("relay-timer".into())
                .spawn(move || shared.run_timer())?
        };
        let front_thread = {
            let shared = Arc::clone(&shared);
            let sessions = Arc::clone(&sessions);
            std::thread::Builder::new()
                .name("relay-front".into())
                .spawn(move || run_front(&shared, &front, upstream, &sessions))?
        };
        Ok(Self {
            addr,
            upstream,
            handle: RelayHandle { shared },
            threads: vec![timer, front_thread],
            sessions,
        })
    }

    /// Listens on an ephemeral loopback port in front of `upstream`.
    pub fn loopback(upstream: SocketAddr, seed: u64) -> io::Result<Self> {
        let ip: IpAddr = if upstream.is_ipv6() {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        Self::start(SocketAddr::new(ip, 0), upstream, seed)
    }

    /// The address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    pub fn handle(&self) -> RelayHandle {
        self.handle.clone()
    }

    /// Shorthands for the handle's methods.
    pub fn set_impairment(&self, dir: Direction, imp: Impairment) -> Result<(), ImpairmentError> {
        self.handle.set_impairment(dir, imp)
    }

    pub fn set_both(&self, imp: Impairment) -> Result<(), ImpairmentError> {
        self.handle.set_both(imp)
    }

    pub fn set_down(&self, down: bool) {
        self.handle.set_down(down);
    }

    pub fn stats(&self, dir: Direction) -> DirStats {
        self.handle.stats(dir)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.handle.shared.stop.store(true, AtomicOrdering::Relaxed);
        self.handle.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for t in lock(&self.sessions).drain(..) {
            let _ = t.join();
        }
    }
}

/// The front thread: takes client packets, opens one upstream socket per client.
fn run_front(
    shared: &Arc<Shared>,
    front: &Arc<UdpSocket>,
    upstream: SocketAddr,
    sessions: &Mutex<Vec<JoinHandle<()>>>,
) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(AtomicOrdering::Relaxed) {
        let (n, client) = match front.recv_from(&mut buf) {
            Ok(x) => x,
            // Timeouts (to check `stop`) and ICMP errors from earlier sends.
            Err(_) => continue,
        };
        let sock = match clients.get(&client) {
            Some(s) => Arc::clone(s),
            None => match open_session(shared, front, client, upstream, sessions) {
                Some(s) if clients.len() < MAX_CLIENTS => {
                    clients.insert(client, Arc::clone(&s));
                    s
                }
                _ => {
                    let c = shared.counters(Direction::Up);
                    c.received.fetch_add(1, AtomicOrdering::Relaxed);
                    c.dropped.fetch_add(1, AtomicOrdering::Relaxed);
                    continue;
                }
            },
        };
        shared.handle(Direction::Up, &sock, upstream, &buf[..n]);
    }
}

/// Binds the upstream socket for a new client and starts the thread that relays
/// the server's replies back to it.
fn open_session(
    shared: &Arc<Shared>,
    front: &Arc<UdpSocket>,
    client: SocketAddr,
    upstream: SocketAddr,
    sessions: &Mutex<Vec<JoinHandle<()>>>,
) -> Option<Arc<UdpSocket>> {
    let ip: IpAddr = match (upstream.ip().is_loopback(), upstream.is_ipv6()) {
        (true, false) => Ipv4Addr::LOCALHOST.into(),
        (true, true) => Ipv6Addr::LOCALHOST.into(),
        (false, false) => Ipv4Addr::UNSPECIFIED.into(),
        (false, true) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let sock = Arc::new(UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?);
    sock.set_read_timeout(Some(POLL)).ok()?;
    let thread = {
        let shared = Arc::clone(shared);
        let front = Arc::clone(front);
        let sock = Arc::clone(&sock);
        std::thread::Builder::new()
            .name("relay-session".into())
            .spawn(move || {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while !shared.stop.load(AtomicOrdering::Relaxed) {
                    if let Ok((n, _from)) = sock.recv_from(&mut buf) {
                        shared.handle(Direction::Down, &front, client, &buf[..n]);
                    }
                }
            })
            .ok()?
    };
    lock(sessions).push(thread);
    Some(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 100_000;

    fn run(imp: Impairment, seed: u64, n: usize) -> Vec<Fate> {
        let mut m = LinkModel::new(imp);
        let mut rng = fastrand::Rng::with_seed(seed);
        // A fixed origin, so runs with the same seed compare equal.
        static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let t0 = *T0.get_or_init(Instant::now);
        // One packet per millisecond of model time.
        (0..n)
            .map(|i| m.decide(&mut rng, t0 + Duration::from_millis(i as u64)))
            .collect()
    }

    fn loss_share(fates: &[Fate]) -> f64 {
        fates.iter().filter(|f| matches!(f, Fate::Drop(_))).count() as f64 / fates.len() as f64
    }

    #[test]
    fn no_impairment_passes_everything_now() {
        let mut m = LinkModel::new(Impairment::default());
        let mut rng = fastrand::Rng::with_seed(1);
        let now = Instant::now();
        assert_eq!(
            m.decide(&mut rng, now),
            Fate::Deliver { at: now, copies: 1 }
        );
    }

    #[test]
    fn random_loss_rate_within_tolerance_over_100k() {
        for (seed, loss) in [(1, 0.01), (2, 0.05), (3, 0.2), (4, 0.5)] {
            let got = loss_share(&run(Impairment::loss(loss), seed, N));
            // 4 standard deviations of a binomial share.
            let tol = 4.0 * (loss * (1.0 - loss) / N as f64).sqrt();
            assert!((got - loss).abs() < tol, "loss {loss}: got {got}");
        }
    }

    #[test]
    fn same_seed_same_fates() {
        let imp: Impairment = "loss=10%,jitter=5ms,dup=5%,reorder=5%".parse().unwrap();
        assert_eq!(run(imp, 7, 1000), run(imp, 7, 1000));
        assert_ne!(run(imp, 7, 1000), run(imp, 8, 1000));
    }

    #[test]
    fn gilbert_elliott_mean_loss_and_burst_lengths() {
        let ge = GilbertElliott::new(0.01, 0.25);
        let imp = Impairment {
            burst: Some(ge),
            ..Impairment::default()
        };
        let fates = run(imp, 11, N);
        let got = loss_share(&fates);
        let want = ge.mean_loss(); // 0.01 / 0.26 ≈ 3.85 %
        assert!((got - want).abs() < 0.2 * want, "mean loss {got} vs {want}");
        // Burst lengths are geometric with mean 1/r = 4.
        let mut bursts = Vec::new();
        let mut run_len = 0;
        for f in &fates {
            if matches!(f, Fate::Drop(DropCause::Burst)) {
                run_len += 1;
            } else if run_len > 0 {
                bursts.push(run_len);
                run_len = 0;
            }
        }
        let mean = bursts.iter().sum::<u32>() as f64 / bursts.len() as f64;
        assert!((mean - 4.0).abs() < 0.4, "mean burst {mean}");
        assert!(bursts.iter().any(|&b| b >= 10), "no long bursts at all");
        // Same loss rate at random would almost never give bursts of 4 on average.
        let random = run(Impairment::loss(want), 11, N);
        let mut longest = 0;
        let mut cur = 0;
        for f in &random {
            cur = if matches!(f, Fate::Drop(_)) {
                cur + 1
            } else {
                0
            };
            longest = longest.max(cur);
        }
        assert!(longest < 6, "random loss had a burst of {longest}");
    }

    #[test]
    fn gilbert_elliott_partial_loss_states() {
        let ge = GilbertElliott {
            p: 0.05,
            r: 0.2,
            loss_bad: 0.5,
            loss_good: 0.01,
        };
        let got = loss_share(&run(
            Impairment {
                burst: Some(ge),
                ..Impairment::default()
            },
            5,
            N,
        ));
        assert!((got - ge.mean_loss()).abs() < 0.1 * ge.mean_loss(), "{got}");
    }

    #[test]
    fn jitter_stays_in_bounds_and_keeps_order() {
        let imp = Impairment {
            delay: Duration::from_millis(20),
            jitter: Duration::from_millis(10),
            ..Impairment::default()
        };
        let mut m = LinkModel::new(imp);
        let mut rng = fastrand::Rng::with_seed(3);
        let t0 = Instant::now();
        let mut last = t0;
        let mut extra_max = Duration::ZERO;
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 500);
            let Fate::Deliver { at, copies: 1 } = m.decide(&mut rng, now) else {
                panic!("jitter alone must deliver once");
            };
            assert!(at >= last, "packet {i} would overtake");
            assert!(at >= now + imp.delay);
            extra_max = extra_max.max(at - now - imp.delay);
            last = at;
        }
        // Order keeping can push a packet past its own draw, but only by the
        // previous packet's jitter (at 0.5 ms spacing: < jitter).
        assert!(extra_max <= imp.jitter, "{extra_max:?}");
        assert!(extra_max > imp.jitter / 2);
    }

    #[test]
    fn reorder_lets_later_packets_overtake() {
        let imp = Impairment {
            delay: Duration::from_millis(5),
            reorder: 0.1,
            reorder_gap: Duration::from_millis(3),
            ..Impairment::default()
        };
        let fates = run(imp, 9, N);
        let times: Vec<Instant> = fates
            .iter()
            .map(|f| match f {
                Fate::Deliver { at, .. } => *at,
                Fate::Drop(_) => unreachable!("no loss configured"),
            })
            .collect();
        let overtaken = times.windows(2).filter(|w| w[1] < w[0]).count();
        let share = overtaken as f64 / N as f64;
        // Packets 1 ms apart, held 3 ms: each reordered packet is overtaken.
        assert!((share - 0.1).abs() < 0.01, "reordered share {share}");
    }

    #[test]
    fn duplication_rate() {
        let fates = run(
            Impairment {
                duplicate: 0.03,
                ..Impairment::default()
            },
            4,
            N,
        );
        let dups = fates
            .iter()
            .filter(|f| matches!(f, Fate::Deliver { copies: 2, .. }))
            .count() as f64
            / N as f64;
        assert!((dups - 0.03).abs() < 0.003, "{dups}");
    }

    #[test]
    fn down_drops_everything_and_restores() {
        let mut m = LinkModel::new(Impairment::default());
        let mut rng = fastrand::Rng::with_seed(1);
        let now = Instant::now();
        m.set_down(true);
        assert_eq!(m.decide(&mut rng, now), Fate::Drop(DropCause::Down));
        m.set_down(false);
        assert!(matches!(m.decide(&mut rng, now), Fate::Deliver { .. }));
    }

    #[test]
    fn spec_parses_and_prints() {
        let imp: Impairment =
            "delay=20ms, jitter=500us, loss=2%, ge=0.01:0.3, dup=0.01, reorder=5%:4ms"
                .parse()
                .unwrap();
        assert_eq!(imp.delay, Duration::from_millis(20));
        assert_eq!(imp.jitter, Duration::from_micros(500));
        assert!((imp.loss - 0.02).abs() < 1e-12);
        assert_eq!(imp.burst, Some(GilbertElliott::new(0.01, 0.3)));
        assert!((imp.duplicate - 0.01).abs() < 1e-12);
        assert!((imp.reorder - 0.05).abs() < 1e-12);
        assert_eq!(imp.reorder_gap, Duration::from_millis(4));
        let again: Impairment = imp.to_string().parse().unwrap();
        assert_eq!(again.delay, imp.delay);
        assert_eq!(again.burst, imp.burst);
        assert_eq!(again.reorder_gap, imp.reorder_gap);
        assert_eq!("none".parse::<Impairment>().unwrap(), Impairment::default());
        assert_eq!(Impairment::default().to_string(), "none");
    }

    #[test]
    fn spec_errors_name_the_field() {
        for (spec, field) in [
            ("loss=150%", "loss"),
            ("delay=20", "delay"),
            ("wobble=1", "wobble"),
            ("ge=0.1:2", "ge.r"),
            ("delay", "delay"),
        ] {
            let err = spec.parse::<Impairment>().unwrap_err();
            assert_eq!(err.field, field, "{spec}: {err}");
        }
        let bad = Impairment::loss(-0.1);
        assert!(bad.validate().is_err());
    }
}
