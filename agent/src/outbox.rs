//! The agent's own bounded store of encoded reports, from which a report leaves only
//! when the broker acknowledges it (PUBACK).
//!
//! Every report waits here until acknowledged. A report keeps the packet id it was
//! first sent with until its PUBACK arrives; after a reconnect it is sent again with
//! that id and the DUP flag (MQTT 3.1.1 §4.4), whether or not the broker kept the
//! session (duplicates are fine: the collector counts each (site, boot, seq) once).
//! When full, the oldest report is dropped and counted.
//!
//! Pure and sans-IO: the connection asks it what to publish next and tells it what
//! was acknowledged and when the connection was lost; it never touches the network.

use std::collections::VecDeque;

/// What a packet id on the wire stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox report, by its key (the report's `seq`).
    Report(u64),
    /// A retained status message (not stored here: a new connection sends a fresh one).
    Status,
    /// A report dropped for room while on the wire: its id stays taken until acked.
    Dropped,
}

/// One QoS 1 publish to write: the packet id, whether it is a resend, the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub pkid: u16,
    pub dup: bool,
    pub payload: &'a [u8],
}

#[derive(Debug)]
struct Entry {
    key: u64,
    payload: Vec<u8>,
    /// The packet id it was first sent with, kept until acknowledged.
    pkid: Option<u16>,
    /// Sent on the current connection.
    sent: bool,
}

/// Bounded queue of encoded reports awaiting PUBACK, and the packet ids in use.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    capacity: usize,
    dropped: u64,
    /// Reports sent on this connection and not yet acknowledged.
    in_flight: usize,
    /// Every packet id in use and what it stands for (a few dozen at most).
    wire: Vec<(u16, Tag)>,
    last_pkid: u16,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` reports (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            in_flight: 0,
            wire: Vec::new(),
            last_pkid: 0,
        }
    }

    /// Adds a report; keys must increase. Returns the key of the oldest report when it
    /// had to be dropped to make room.
    pub fn push(&mut self, key: u64, payload: Vec<u8>) -> Option<u64> {
        debug_assert!(self.entries.back().is_none_or(|e| e.key < key));
        let dropped = if self.entries.len() >= self.capacity {
            self.dropped += 1;
            self.entries.pop_front().map(|e| {
                if let Some(p) = e.pkid {
                    self.retag(p, Tag::Dropped);
                    if e.sent {
                        self.in_flight -= 1;
                    }
                }
                e.key
            })
        } else {
            None
        };
        self.entries.push_back(Entry {
            key,
            payload,
            pkid: None,
            sent: false,
        });
        dropped
    }

    /// The next report to publish on this connection, oldest first, while fewer than
    /// `max_in_flight` are unacknowledged: a resend (same packet id, `dup`) or a first
    /// send (a fresh packet id). It counts as sent once returned.
    pub fn next_publish(&mut self, max_in_flight: usize) -> Option<Publish<'_>> {
        if self.in_flight >= max_in_flight {
            return None;
        }
        let i = self.entries.iter().position(|e| !e.sent)?;
        let (key, had) = (self.entries[i].key, self.entries[i].pkid);
        let pkid = match had {
            Some(p) => p,
            None => self.take_pkid(Tag::Report(key)),
        };
        self.in_flight += 1;
        let e = &mut self.entries[i];
        e.pkid = Some(pkid);
        e.sent = true;
        Some(Publish {
            pkid,
            dup: had.is_some(),
            payload: &e.payload,
        })
    }

    /// A packet id for a status publish about to be written.
    pub fn status_pkid(&mut self) -> u16 {
        self.take_pkid(Tag::Status)
    }

    /// The broker acknowledged `pkid`: the report it carried leaves the outbox.
    /// Returns what the publish carried (`None` for an id not in use).
    pub fn on_puback(&mut self, pkid: u16) -> Option<Tag> {
        let i = self.wire.iter().position(|&(p, _)| p == pkid)?;
        let (_, tag) = self.wire.swap_remove(i);
        if let Tag::Report(key) = tag
            && let Ok(i) = self.entries.binary_search_by_key(&key, |e| e.key)
            && let Some(e) = self.entries.remove(i)
            && e.sent
        {
            self.in_flight -= 1;
        }
        Some(tag)
    }

    /// The connection is gone: every report still here is sent again on the next one
    /// (with its packet id). Statuses and dropped reports give their ids back.
    pub fn on_connection_lost(&mut self) {
        for e in &mut self.entries {
            e.sent = false;
        }
        self.in_flight = 0;
        self.wire.retain(|(_, t)| matches!(t, Tag::Report(_)));
    }

    /// Reports waiting for acknowledgement (sent or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reports dropped because the outbox was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Reports sent on this connection and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Status publishes sent on this connection and not yet acknowledged.
    pub fn statuses_unacked(&self) -> usize {
        self.wire.iter().filter(|(_, t)| *t == Tag::Status).count()
    }

    /// The next packet id not in use (1..=65535, cycling), recorded as `tag`.
    fn take_pkid(&mut self, tag: Tag) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if self.wire.iter().all(|&(p, _)| p != self.last_pkid) {
                self.wire.push((self.last_pkid, tag));
                return self.last_pkid;
            }
        }
    }

    fn retag(&mut self, pkid: u16, tag: Tag) {
        if let Some(w) = self.wire.iter_mut().find(|(p, _)| *p == pkid) {
            w.1 = tag;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn payload(key: u64) -> Vec<u8> {
        key.to_le_bytes().to_vec()
    }

    fn key_of(p: &Publish<'_>) -> u64 {
        u64::from_le_bytes(p.payload[..8].try_into().unwrap())
    }

    /// Publishes everything allowed: (pkid, dup, key).
    fn send_all(ob: &mut Outbox, max: usize) -> Vec<(u16, bool, u64)> {
        let mut out = Vec::new();
        while let Some(p) = ob.next_publish(max) {
            out.push((p.pkid, p.dup, key_of(&p)));
        }
        out
    }

    #[test]
    fn a_report_leaves_only_on_its_puback() {
        let mut ob = Outbox::new(10);
        ob.push(0, payload(0));
        ob.push(1, payload(1));
        assert_eq!(send_all(&mut ob, 10), [(1, false, 0), (2, false, 1)]);
        assert_eq!(ob.next_publish(10), None, "nothing is sent twice");
        assert_eq!(ob.on_puback(2), Some(Tag::Report(1)));
        assert_eq!(ob.len(), 1);
        assert_eq!(ob.on_puback(2), None, "unknown or repeated ack is ignored");
        assert_eq!(ob.on_puback(1), Some(Tag::Report(0)));
        assert!(ob.is_empty());
        assert_eq!(ob.in_flight(), 0);
    }

    #[test]
    fn after_a_reconnect_unacked_reports_go_again_with_their_ids_and_dup() {
        let mut ob = Outbox::new(10);
        for k in 0..3 {
            ob.push(k, payload(k));
        }
        assert_eq!(send_all(&mut ob, 2), [(1, false, 0), (2, false, 1)]);
        ob.on_puback(1);
        ob.on_connection_lost();
        ob.push(3, payload(3));
        assert_eq!(
            send_all(&mut ob, 10),
            [(2, true, 1), (3, false, 2), (4, false, 3)]
        );
    }

    #[test]
    fn statuses_take_ids_and_give_them_back_on_a_new_connection() {
        let mut ob = Outbox::new(10);
        assert_eq!(ob.status_pkid(), 1);
        ob.push(5, payload(5));
        assert_eq!(send_all(&mut ob, 10), [(2, false, 5)]);
        assert_eq!(ob.statuses_unacked(), 1);
        assert_eq!(ob.on_puback(2), Some(Tag::Report(5)));
        assert_eq!(ob.on_puback(1), Some(Tag::Status));
        assert_eq!(ob.statuses_unacked(), 0);
        ob.status_pkid();
        ob.on_connection_lost();
        assert_eq!(ob.statuses_unacked(), 0);
    }

    #[test]
    fn packet_ids_skip_those_in_use_when_they_wrap() {
        let mut ob = Outbox::new(10);
        ob.push(0, payload(0));
        assert_eq!(send_all(&mut ob, 10), [(1, false, 0)]);
        ob.last_pkid = u16::MAX - 1;
        ob.push(1, payload(1));
        ob.push(2, payload(2));
        assert_eq!(
            send_all(&mut ob, 10),
            [(u16::MAX, false, 1), (2, false, 2)],
            "0 is never an id, 1 is still in use"
        );
    }

    #[test]
    fn when_full_the_oldest_is_dropped_and_counted_and_its_id_kept_until_acked() {
        let mut ob = Outbox::new(2);
        assert_eq!(ob.push(0, payload(0)), None);
        assert_eq!(ob.push(1, payload(1)), None);
        assert_eq!(send_all(&mut ob, 10).len(), 2);
        assert_eq!(ob.push(2, payload(2)), Some(0));
        assert_eq!(ob.dropped(), 1);
        assert_eq!(ob.len(), 2);
        assert_eq!(ob.in_flight(), 1);
        assert_eq!(send_all(&mut ob, 10), [(3, false, 2)]);
        assert_eq!(ob.on_puback(1), Some(Tag::Dropped));
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut ob = Outbox::new(100);
        for k in 0..50 {
            ob.push(k, payload(k));
        }
        assert_eq!(send_all(&mut ob, 16).len(), 16);
        assert_eq!(ob.in_flight(), 16);
        assert_eq!(ob.next_publish(16), None);
    }

    /// A broker that acks publishes in order; a connection loss forgets the wire.
    #[derive(Default)]
    struct Broker {
        wire: VecDeque<(u16, u64)>,
        delivered: Vec<u64>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Send,
        Ack,
        Status,
        Drop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            4 => Just(Op::Send),
            4 => Just(Op::Ack),
            1 => Just(Op::Status),
            1 => Just(Op::Drop),
        ]
    }

    proptest! {
        /// Whatever the order of reports, sends, acks and connection losses, every
        /// report is delivered at least once unless dropped for room, no two publishes
        /// on the wire share a packet id, and the bounds hold.
        #[test]
        fn nothing_is_lost_unless_dropped_for_room(
            ops in proptest::collection::vec(op(), 1..400),
            capacity in 1usize..40,
            max_in_flight in 1usize..12,
        ) {
            let mut ob = Outbox::new(capacity);
            let mut broker = Broker::default();
            let mut next_key = 0u64;
            let mut dropped = BTreeSet::new();
            let mut statuses = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push => {
                        if let Some(d) = ob.push(next_key, payload(next_key)) {
                            dropped.insert(d);
                        }
                        next_key += 1;
                    }
                    Op::Send => {
                        if let Some(p) = ob.next_publish(max_in_flight) {
                            let (pkid, key) = (p.pkid, key_of(&p));
                            prop_assert!(broker.wire.iter().all(|&(q, _)| q != pkid));
                            prop_assert!(statuses.iter().all(|&q| q != pkid));
                            broker.wire.push_back((pkid, key));
                        }
                    }
                    Op::Ack => {
                        if let Some((pkid, key)) = broker.wire.pop_front() {
                            broker.delivered.push(key);
                            ob.on_puback(pkid);
                        }
                    }
                    Op::Status => statuses.push_back(ob.status_pkid()),
                    Op::Drop => {
                        broker.wire.clear();
                        statuses.clear();
                        ob.on_connection_lost();
                    }
                }
                prop_assert!(ob.len() <= capacity);
                prop_assert!(ob.in_flight() <= max_in_flight);
            }
            // Then a stable connection until everything is through.
            broker.wire.clear();
            ob.on_connection_lost();
            for _ in 0..10_000 {
                while let Some(p) = ob.next_publish(max_in_flight) {
                    let (pkid, key) = (p.pkid, key_of(&p));
                    broker.wire.push_back((pkid, key));
                }
                let Some((pkid, key)) = broker.wire.pop_front() else { break };
                broker.delivered.push(key);
                ob.on_puback(pkid);
            }
            prop_assert!(ob.is_empty());
            let delivered: BTreeSet<u64> = broker.delivered.iter().copied().collect();
            for k in 0..next_key {
                prop_assert!(
                    delivered.contains(&k) || dropped.contains(&k),
                    "report {} neither delivered nor dropped", k
                );
            }
            prop_assert_eq!(ob.dropped() as usize, dropped.len());
        }
    }
}
