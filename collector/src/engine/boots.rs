//! Per site: which windows were counted, per boot, and which boot is live.
//!
//! A window is `(boot, seq)` (DESIGN.md "Payloads"): `boot` is random per agent
//! start, `seq` counts 0, 1, 2… within it. Each boot keeps the seqs counted as sorted
//! runs ([`SeqSet`]), so de-dup is exact for any seq of any boot remembered, however
//! late or out of order it arrives, and the holes between runs are the windows the
//! collector can prove missing (DESIGN.md "Nothing lost").
//!
//! Which boot is live never depends on the gateway's clock (a gateway without an RTC
//! reads 1970 after a reboot) nor on seq: it is the boot that appeared last. The
//! agent's online status names its boot before it sends anything on a connection, so
//! a status *announces* the live boot; a boot first seen in a report after that is a
//! previous boot's backlog (a durable spool sends the previous boot's unacknowledged
//! windows after a restart). Without statuses, the boot whose first report arrived
//! last is live. A backlog is counted and stored, never evaluated as "now".
//!
//! Memory is bounded per site: boots not heard from for [`FORGET_AFTER_MS`] are
//! forgotten (the live one never), at most [`MAX_BOOTS`] are kept, and a boot's seqs
//! may form at most [`MAX_RUNS`] separate runs. History's own record (`store.rs`)
//! keeps every boot's seqs longer, so a window of a forgotten boot is still stored
//! at most once.

use std::fmt;

/// Boots remembered per site.
pub const MAX_BOOTS: usize = 64;
/// Separate runs of seqs one boot may have (each gap between them is a run more).
pub const MAX_RUNS: usize = 1024;
/// A boot with no window for this long (collector time) is forgotten, unless live.
pub const FORGET_AFTER_MS: u64 = 7 * 86_400_000;

const DAY_MS: u64 = 24 * 3600 * 1000;
/// A new boot whose first window is past this seq does not count its earlier seqs as
/// missing (a day of 10 s windows).
const MAX_FIRST_SEQ: u64 = 8_640;

/// A set of seqs as sorted, disjoint, non-adjacent inclusive runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    runs: Vec<(u64, u64)>,
    len: u64,
}

/// The seq would need a run more than the set may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Text that is not a [`SeqSet`] (`"0-99,101,103-200"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq set `{0}`: expected ascending runs like 0-99,101,103-200")]
pub struct SeqSetParseError(pub String);

impl SeqSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn contains(&self, seq: u64) -> bool {
        let i = self.runs.partition_point(|r| r.1 < seq);
        self.runs.get(i).is_some_and(|r| r.0 <= seq)
    }

    /// Adds `seq`: `Ok(true)` when it was not there, `Ok(false)` when it was, and
    /// `Err(Full)` (nothing changed) when it would make more than `max_runs` runs.
    pub fn insert(&mut self, seq: u64, max_runs: usize) -> Result<bool, Full> {
        // Most inserts extend the last run: check that first.
        if let Some(last) = self.runs.last_mut()
            && last.1.checked_add(1) == Some(seq)
        {
            last.1 = seq;
            self.len += 1;
            return Ok(true);
        }
        let i = self.runs.partition_point(|r| r.1 < seq);
        if self.runs.get(i).is_some_and(|r| r.0 <= seq) {
            return Ok(false);
        }
        let joins_prev = i > 0 && self.runs[i - 1].1 + 1 == seq;
        let joins_next = self.runs.get(i).is_some_and(|r| r.0 == seq + 1);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.runs[i - 1].1 = self.runs[i].1;
                self.runs.remove(i);
            }
            (true, false) => self.runs[i - 1].1 = seq,
            (false, true) => self.runs[i].0 = seq,
            (false, false) => {
                if self.runs.len() >= max_runs {
                    return Err(Full);
                }
                self.runs.insert(i, (seq, seq));
            }
        }
        self.len += 1;
        Ok(true)
    }

    /// How many seqs are in the set.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    pub fn first(&self) -> Option<u64> {
        self.runs.first().map(|r| r.0)
    }

    pub fn last(&self) -> Option<u64> {
        self.runs.last().map(|r| r.1)
    }

    pub fn runs(&self) -> &[(u64, u64)] {
        &self.runs
    }

    /// Seqs from `floor` (or from the first one, when that is lower) up to the last
    /// one that are not in the set.
    pub fn gaps_from(&self, floor: Option<u64>) -> u64 {
        let (Some(first), Some(last)) = (self.first(), self.last()) else {
            return 0;
        };
        let from = floor.map_or(first, |f| f.min(first));
        (last - from + 1) - self.len
    }

    /// Parses the form [`SeqSet`]'s `Display` writes: `0-99,101,103-200` (empty: no seqs).
    pub fn parse(text: &str) -> Result<Self, SeqSetParseError> {
        let err = || SeqSetParseError(text.chars().take(80).collect());
        let mut set = SeqSet::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?),
                None => {
                    let v: u64 = part.parse().map_err(|_| err())?;
                    (v, v)
                }
            };
            if b < a || set.last().is_some_and(|l| a <= l.saturating_add(1)) {
                return Err(err());
            }
            set.runs.push((a, b));
            set.len += b - a + 1;
        }
        Ok(set)
    }
}

impl fmt::Display for SeqSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.runs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

/// What is kept about a boot besides its seqs (history stores it in `boots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootMeta {
    pub boot: u32,
    /// Order of appearance at its site: the live boot has the highest.
    pub ordinal: u64,
    /// The site's online status named this boot.
    pub announced: bool,
    /// Seqs from here on are expected (`Some(0)`: a boot that started while the site
    /// was known); `None`: counted from the first seq seen (first contact, or an old
    /// boot's backlog, whose earlier windows may predate this collector).
    pub floor: Option<u64>,
    /// Collector time it was last heard of.
    pub last_ms: u64,
}

/// One boot: its meta and the seqs counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSeen {
    pub meta: BootMeta,
    pub seqs: SeqSet,
}

impl BootSeen {
    /// Windows of this boot provably missing: holes in its seqs.
    pub fn missing(&self) -> u64 {
        self.seqs.gaps_from(self.meta.floor)
    }
}

/// What [`Boots::window`] says about a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Counted now for the first time; `live` when it is the newest window of the
    /// live boot (the one to evaluate).
    Fresh {
        live: bool,
    },
    Duplicate,
    /// Its boot's record is full ([`MAX_RUNS`]): it cannot be de-duplicated exactly.
    Full,
}

/// One site's boots.
#[derive(Debug, Clone, Default)]
pub struct Boots {
    boots: Vec<BootSeen>,
}

impl Boots {
    pub fn new() -> Self {
        Self::default()
    }

    /// From what history kept (any order); the newest [`MAX_BOOTS`] are kept.
    pub fn restore(mut boots: Vec<BootSeen>) -> Self {
        boots.sort_by_key(|b| b.meta.ordinal);
        let excess = boots.len().saturating_sub(MAX_BOOTS);
        boots.drain(..excess);
        Self { boots }
    }

    pub fn iter(&self) -> impl Iterator<Item = &BootSeen> {
        self.boots.iter()
    }

    fn live_index(&self) -> Option<usize> {
        (0..self.boots.len()).max_by_key(|&i| self.boots[i].meta.ordinal)
    }

    /// The live boot: the one that appeared last.
    pub fn live(&self) -> Option<&BootSeen> {
        self.live_index().map(|i| &self.boots[i])
    }

    /// Windows provably missing across the site's boots.
    pub fn missing(&self) -> u64 {
        self.boots.iter().map(BootSeen::missing).sum()
    }

    fn find(&self, boot: u32) -> Option<usize> {
        self.boots.iter().position(|b| b.meta.boot == boot)
    }

    fn next_ordinal(&self) -> u64 {
        self.boots
            .iter()
            .map(|b| b.meta.ordinal)
            .max()
            .map_or(1, |o| o + 1)
    }

    /// Makes room for one more boot: forgets those silent too long, then the oldest.
    fn make_room(&mut self, now_ms: u64) {
        let live = self.live().map(|b| b.meta.boot);
        self.boots.retain(|b| {
            Some(b.meta.boot) == live || b.meta.last_ms.saturating_add(FORGET_AFTER_MS) >= now_ms
        });
        while self.boots.len() >= MAX_BOOTS {
            let oldest = (0..self.boots.len())
                .filter(|&i| Some(self.boots[i].meta.boot) != live)
                .min_by_key(|&i| self.boots[i].meta.ordinal);
            match oldest {
                Some(i) => {
                    self.boots.remove(i);
                }
                None => break,
            }
        }
    }

    /// Whether window `seq` of a known `boot` could have been measured by `now_ms`:
    /// a boot's seqs cannot run ahead of the time since its last window by more than
    /// a day's backlog (otherwise one site could inflate the missing-windows count
    /// without bound). A boot not seen yet is always plausible.
    pub fn plausible(&self, now_ms: u64, boot: u32, seq: u64, window_ms: u32) -> bool {
        let Some(b) = self.find(boot).map(|i| &self.boots[i]) else {
            return true;
        };
        let Some(last) = b.seqs.last() else {
            return true;
        };
        let w = u64::from(window_ms.max(1));
        let allowed = now_ms.saturating_sub(b.meta.last_ms) / w + DAY_MS / w + 2;
        seq <= last.saturating_add(allowed)
    }

    /// Counts window `(boot, seq)` received at `now_ms`. Returns the verdict and, when
    /// a boot's meta changed (a boot seen for the first time), the meta to store.
    pub fn window(&mut self, now_ms: u64, boot: u32, seq: u64) -> (Seen, Option<BootMeta>) {
        if let Some(i) = self.find(boot) {
            let is_live = self.live_index() == Some(i);
            let b = &mut self.boots[i];
            let newest = b.seqs.last().is_none_or(|l| seq > l);
            return match b.seqs.insert(seq, MAX_RUNS) {
                Err(Full) => (Seen::Full, None),
                Ok(false) => (Seen::Duplicate, None),
                Ok(true) => {
                    b.meta.last_ms = b.meta.last_ms.max(now_ms);
                    (
                        Seen::Fresh {
                            live: is_live && newest,
                        },
                        None,
                    )
                }
            };
        }
        // A boot not seen before: after the agent announced another boot, it is an
        // earlier boot's backlog; otherwise it appeared last, so it is live.
        let backlog = self.live().is_some_and(|b| b.meta.announced);
        let known_site = !self.boots.is_empty();
        self.make_room(now_ms);
        let meta = BootMeta {
            boot,
            ordinal: if backlog { 0 } else { self.next_ordinal() },
            announced: false,
            // Its windows from 0 are expected, unless its first is further on than a
            // day's worth (a gateway long offline, or a forged seq): then they are
            // counted from the first seen, as at first contact.
            floor: (known_site && !backlog && seq <= MAX_FIRST_SEQ).then_some(0),
            last_ms: now_ms,
        };
        let mut seqs = SeqSet::new();
        // An empty set has room for a run.
        let _ = seqs.insert(seq, MAX_RUNS);
        self.boots.push(BootSeen { meta, seqs });
        (Seen::Fresh { live: !backlog }, Some(meta))
    }

    /// The site's online status at `now_ms`, naming its boot (or not). A named boot
    /// becomes live; a status without one leaves the choice to arrival order.
    pub fn announce(&mut self, now_ms: u64, boot: Option<u32>) -> Option<BootMeta> {
        let Some(boot) = boot else {
            let i = self.live_index()?;
            let b = &mut self.boots[i];
            if !b.meta.announced {
                return None;
            }
            b.meta.announced = false;
            return Some(b.meta);
        };
        match self.find(boot) {
            Some(i) => {
                let is_live = self.live_index() == Some(i);
                let next = self.next_ordinal();
                let b = &mut self.boots[i];
                if is_live && b.meta.announced {
                    return None;
                }
                if !is_live {
                    b.meta.ordinal = next;
                }
                b.meta.announced = true;
                b.meta.last_ms = b.meta.last_ms.max(now_ms);
                Some(b.meta)
            }
            None => {
                let known_site = !self.boots.is_empty();
                self.make_room(now_ms);
                let meta = BootMeta {
                    boot,
                    ordinal: self.next_ordinal(),
                    announced: true,
                    floor: known_site.then_some(0),
                    last_ms: now_ms,
                };
                self.boots.push(BootSeen {
                    meta,
                    seqs: SeqSet::new(),
                });
                Some(meta)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn seq_set_merges_runs_and_counts_gaps() {
        let mut s = SeqSet::new();
        for seq in [0, 1, 2, 5, 7, 6, 10] {
            assert_eq!(s.insert(seq, MAX_RUNS), Ok(true), "{seq}");
        }
        assert_eq!(s.to_string(), "0-2,5-7,10");
        assert_eq!(s.insert(6, MAX_RUNS), Ok(false));
        assert_eq!(s.gaps_from(None), 4);
        assert_eq!(s.insert(3, MAX_RUNS), Ok(true));
        assert_eq!(s.insert(4, MAX_RUNS), Ok(true));
        assert_eq!(s.to_string(), "0-7,10");
        assert_eq!(s.gaps_from(None), 2);
        assert_eq!(s.len(), 9);
        // Two runs at most: a third is refused and nothing changes.
        assert_eq!(s.insert(20, 2), Err(Full));
        assert_eq!(s.insert(11, 2), Ok(true));
        assert_eq!(SeqSet::parse(&s.to_string()).unwrap(), s);
        assert_eq!(SeqSet::parse("").unwrap(), SeqSet::new());
        for bad in ["5-3", "1,1", "0-4,4-6", "0-4,5", "x", "1-"] {
            assert!(SeqSet::parse(bad).is_err(), "{bad}");
        }
        let mut late = SeqSet::new();
        late.insert(50, MAX_RUNS).unwrap();
        assert_eq!(
            late.gaps_from(Some(0)),
            50,
            "a reboot's windows count from 0"
        );
        assert_eq!(late.gaps_from(None), 0);
    }

    #[test]
    fn seq_set_matches_a_naive_set() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut s = SeqSet::new();
        let mut naive = BTreeSet::new();
        for _ in 0..20_000 {
            let seq = rng.u64(0..3_000);
            assert_eq!(s.insert(seq, usize::MAX), Ok(naive.insert(seq)));
            assert!(s.contains(seq));
        }
        assert_eq!(s.len(), naive.len() as u64);
        let last = *naive.last().unwrap();
        let first = *naive.first().unwrap();
        assert_eq!(s.gaps_from(None), last - first + 1 - naive.len() as u64);
        for w in s.runs().windows(2) {
            assert!(w[0].1 + 1 < w[1].0, "runs disjoint and not adjacent");
        }
        for seq in 0..3_100 {
            assert_eq!(s.contains(seq), naive.contains(&seq));
        }
    }

    fn fresh(live: bool) -> Seen {
        Seen::Fresh { live }
    }

    #[test]
    fn each_window_counts_once_across_any_number_of_boots() {
        let mut b = Boots::new();
        let mut counted = BTreeMap::<(u32, u64), u32>::new();
        let mut rng = fastrand::Rng::with_seed(5);
        // Forty boots (a crash loop), every window of each arriving twice, all in
        // any order.
        let mut all: Vec<(u32, u64)> = (0..40)
            .flat_map(|boot| (0..200).map(move |seq| (boot, seq)))
            .flat_map(|w| [w, w])
            .collect();
        rng.shuffle(&mut all);
        for (boot, seq) in all {
            if let (Seen::Fresh { .. }, _) = b.window(1_000, boot, seq) {
                *counted.entry((boot, seq)).or_default() += 1;
            }
        }
        assert!(counted.values().all(|&n| n == 1), "a window counted twice");
        assert_eq!(counted.len(), 40 * 200, "every window counted");
        assert_eq!(b.missing(), 0);
    }

    #[test]
    fn a_new_boot_is_the_one_that_appeared_last_whatever_its_seqs_or_clock() {
        // No statuses: arrival order decides.
        let mut b = Boots::new();
        assert_eq!(b.window(0, 7, 100).0, fresh(true));
        assert_eq!(b.window(10, 7, 101).0, fresh(true));
        // The agent restarts as boot 8; its first report arrives.
        assert_eq!(b.window(20, 8, 0).0, fresh(true));
        // Boot 7's spooled windows arrive afterwards: stored, never live.
        assert_eq!(b.window(21, 7, 102).0, fresh(false));
        assert_eq!(b.window(22, 7, 103).0, fresh(false));
        assert_eq!(b.window(30, 8, 1).0, fresh(true));
        assert_eq!(b.window(31, 7, 102).0, Seen::Duplicate);
        assert_eq!(b.live().unwrap().meta.boot, 8);
    }

    #[test]
    fn a_status_announces_the_live_boot_and_unknown_boots_after_it_are_backlog() {
        let mut b = Boots::new();
        let m = b.announce(0, Some(8)).unwrap();
        assert!(m.announced);
        assert_eq!(
            m.floor, None,
            "first contact: counted from the first seq seen"
        );
        // Boot 6 and 7 (never seen: this collector is new) send their spools after
        // boot 8 announced itself: backlog, whatever order.
        let (seen, meta) = b.window(1, 7, 500);
        assert_eq!(seen, fresh(false));
        assert_eq!(meta.unwrap().floor, None);
        assert_eq!(b.window(2, 6, 40).0, fresh(false));
        assert_eq!(b.window(3, 8, 0).0, fresh(true));
        assert_eq!(b.window(4, 7, 501).0, fresh(false));
        assert_eq!(b.live().unwrap().meta.boot, 8);
        // The agent restarts as boot 9 and says so: 9 is live at once.
        assert_eq!(b.announce(5, Some(9)).unwrap().floor, Some(0));
        assert_eq!(b.window(6, 8, 1).0, fresh(false));
        assert_eq!(b.window(7, 9, 0).0, fresh(true));
        // A status already in force changes nothing; one without a boot hands the
        // choice back to arrival order.
        assert_eq!(b.announce(8, Some(9)), None);
        assert!(b.announce(9, None).is_some());
        assert_eq!(b.window(10, 10, 0).0, fresh(true));
    }

    #[test]
    fn missing_windows_are_the_holes_and_a_backlog_takes_them_back() {
        let mut b = Boots::new();
        for seq in [10, 11, 14] {
            b.window(0, 1, seq);
        }
        assert_eq!(b.missing(), 2, "12 and 13");
        // A reboot: the new boot counts from 0, so its first report at seq 3 proves
        // 0..3 missing.
        b.window(0, 2, 3);
        assert_eq!(b.missing(), 5);
        for seq in [12, 13] {
            b.window(0, 1, seq);
        }
        for seq in 0..3 {
            b.window(0, 2, seq);
        }
        assert_eq!(b.missing(), 0);
        // Windows before a first-contact boot's first seq were not provably lost.
        b.window(0, 1, 9);
        assert_eq!(b.missing(), 0);
    }

    #[test]
    fn memory_is_bounded_and_the_live_boot_never_forgotten() {
        let mut b = Boots::new();
        b.announce(0, Some(1));
        b.window(0, 1, 0);
        for boot in 2..200 {
            b.window(10, boot, 0);
        }
        assert!(b.iter().count() <= MAX_BOOTS);
        assert_eq!(b.live().unwrap().meta.boot, 1);
        // Silent boots are forgotten after FORGET_AFTER_MS; the live one stays.
        b.window(FORGET_AFTER_MS + 100, 500, 0);
        let boots: Vec<u32> = b.iter().map(|x| x.meta.boot).collect();
        assert_eq!(boots, [1, 500]);
        // One boot's runs are capped.
        let mut c = Boots::new();
        for i in 0..MAX_RUNS as u64 {
            assert!(matches!(c.window(0, 1, i * 2).0, Seen::Fresh { .. }));
        }
        assert_eq!(c.window(0, 1, MAX_RUNS as u64 * 2 + 5).0, Seen::Full);
        assert!(
            matches!(c.window(0, 1, 1).0, Seen::Fresh { .. }),
            "fills a hole"
        );
    }
}
