//! The agent's own bounded store of encoded reports, from which a report leaves only
//! when the broker acknowledges it (PUBACK).
//!
//! rumqttc alone is not enough for "nothing lost": it drops unacknowledged QoS 1
//! publishes when it reconnects to a broker that lost the session, and it holds only
//! what fits its channel. So every report waits here until acknowledged; after any
//! reconnect everything unacknowledged is submitted again (duplicates are fine: the
//! collector counts each (site, boot, seq) once). When full, the oldest report is
//! dropped and counted.
//!
//! Pure and sans-IO: the MQTT task tells it what rumqttc did (which packet id a
//! submitted publish got, which packet id was acknowledged, that the connection was
//! lost) and hands it a `submit` function; it never touches the network itself.

use std::collections::VecDeque;

/// What a publish handed to rumqttc carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An outbox report, by its key (the report's `seq`).
    Report(u64),
    /// A retained status message (tracked so packet ids stay matched, not stored here).
    Status,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    payload: Vec<u8>,
    /// Submitted on the current connection and not yet acknowledged.
    submitted: bool,
}

/// Bounded queue of encoded reports awaiting PUBACK, plus the packet-id bookkeeping.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    capacity: usize,
    dropped: u64,
    /// Reports submitted on this connection and not yet acknowledged.
    in_flight: usize,
    /// Publishes handed to rumqttc, oldest first, still waiting for their packet id
    /// (rumqttc assigns ids in the order it takes requests from its channel).
    awaiting_pkid: VecDeque<Tag>,
    /// Publishes on the wire: packet id → what it carries.
    on_wire: Vec<(u16, Tag)>,
    /// A publish rumqttc holds back because its packet id is still in use.
    collided: Option<(u16, Tag)>,
}

impl Outbox {
    /// An empty outbox holding at most `capacity` reports (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
            in_flight: 0,
            awaiting_pkid: VecDeque::new(),
            on_wire: Vec::new(),
            collided: None,
        }
    }

    /// Adds a report; keys must increase. Returns the key of the oldest report when it
    /// had to be dropped to make room.
    pub fn push(&mut self, key: u64, payload: Vec<u8>) -> Option<u64> {
        debug_assert!(self.entries.back().is_none_or(|e| e.key < key));
        let dropped = if self.entries.len() >= self.capacity {
            self.dropped += 1;
            // A dropped report that is on the wire keeps its packet id until acknowledged.
            self.entries.pop_front().map(|e| e.key)
        } else {
            None
        };
        self.entries.push_back(Entry {
            key,
            payload,
            submitted: false,
        });
        dropped
    }

    /// Submits reports not yet submitted on this connection, oldest first, while fewer
    /// than `max_in_flight` are unacknowledged. `submit` returns false when rumqttc
    /// cannot take the publish now (then this stops). Returns how many were submitted.
    pub fn pump(&mut self, max_in_flight: usize, mut submit: impl FnMut(&[u8]) -> bool) -> usize {
        let mut n = 0;
        for e in self.entries.iter_mut().filter(|e| !e.submitted) {
            if self.in_flight >= max_in_flight || !submit(&e.payload) {
                break;
            }
            e.submitted = true;
            self.in_flight += 1;
            self.awaiting_pkid.push_back(Tag::Report(e.key));
            n += 1;
        }
        n
    }

    /// Records that a status publish was handed to rumqttc.
    pub fn submitted_status(&mut self) {
        self.awaiting_pkid.push_back(Tag::Status);
    }

    /// rumqttc wrote a QoS 1 publish with `pkid` (`Event::Outgoing(Outgoing::Publish)`).
    pub fn on_outgoing_publish(&mut self, pkid: u16) {
        if let Some((p, tag)) = self.collided
            && p == pkid
        {
            // While a collision is pending rumqttc takes no new requests, so this
            // publish is the one it held back.
            self.collided = None;
            self.on_wire.push((pkid, tag));
            return;
        }
        if let Some(tag) = self.awaiting_pkid.pop_front() {
            self.on_wire.push((pkid, tag));
        }
    }

    /// rumqttc holds a publish back until `pkid` is acknowledged (`Outgoing::AwaitAck`).
    pub fn on_await_ack(&mut self, pkid: u16) {
        if let Some(tag) = self.awaiting_pkid.pop_front() {
            self.collided = Some((pkid, tag));
        }
    }

    /// The broker acknowledged `pkid`: the report it carried leaves the outbox.
    /// Returns what the publish carried (`None` for an id we do not know).
    pub fn on_puback(&mut self, pkid: u16) -> Option<Tag> {
        let i = self.on_wire.iter().position(|&(p, _)| p == pkid)?;
        let (_, tag) = self.on_wire.swap_remove(i);
        if let Tag::Report(key) = tag {
            self.in_flight = self.in_flight.saturating_sub(1);
            if let Ok(i) = self.entries.binary_search_by_key(&key, |e| e.key) {
                self.entries.remove(i);
            }
        }
        Some(tag)
    }

    /// The connection is gone: nothing is on the wire any more, and every report still
    /// here is to be submitted again on the next connection.
    pub fn on_connection_lost(&mut self) {
        for e in &mut self.entries {
            e.submitted = false;
        }
        self.in_flight = 0;
        self.awaiting_pkid.clear();
        self.on_wire.clear();
        self.collided = None;
    }

    /// Reports waiting for acknowledgement (submitted or not).
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

    /// Reports submitted on this connection and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Status publishes submitted and not yet acknowledged.
    pub fn statuses_unacked(&self) -> usize {
        let waiting = |t: &Tag| *t == Tag::Status;
        self.awaiting_pkid.iter().filter(|t| waiting(t)).count()
            + self.on_wire.iter().filter(|(_, t)| waiting(t)).count()
            + self.collided.iter().filter(|(_, t)| waiting(t)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// A stand-in for rumqttc: assigns packet ids in submission order and acks in order.
    #[derive(Default)]
    struct FakeBroker {
        next_pkid: u16,
        queued: VecDeque<Vec<u8>>,
        wire: VecDeque<(u16, Vec<u8>)>,
        delivered: Vec<u64>,
    }

    impl FakeBroker {
        fn submit(&mut self, payload: &[u8]) -> bool {
            if self.queued.len() >= 8 {
                return false; // channel full
            }
            self.queued.push_back(payload.to_vec());
            true
        }
        /// rumqttc writes one queued publish.
        fn write(&mut self, ob: &mut Outbox) -> bool {
            let Some(p) = self.queued.pop_front() else {
                return false;
            };
            self.next_pkid = self.next_pkid % 100 + 1;
            ob.on_outgoing_publish(self.next_pkid);
            self.wire.push_back((self.next_pkid, p));
            true
        }
        /// The broker acks the oldest publish on the wire.
        fn ack(&mut self, ob: &mut Outbox) -> bool {
            let Some((pkid, p)) = self.wire.pop_front() else {
                return false;
            };
            self.delivered
                .push(u64::from_le_bytes(p[..8].try_into().unwrap()));
            ob.on_puback(pkid);
            true
        }
        /// The connection drops: whatever was queued or on the wire is gone.
        fn drop_connection(&mut self, ob: &mut Outbox) {
            self.queued.clear();
            self.wire.clear();
            ob.on_connection_lost();
        }
    }

    fn payload(key: u64) -> Vec<u8> {
        key.to_le_bytes().to_vec()
    }

    #[test]
    fn a_report_leaves_only_on_its_puback() {
        let mut ob = Outbox::new(10);
        ob.push(0, payload(0));
        ob.push(1, payload(1));
        let mut sent = Vec::new();
        assert_eq!(
            ob.pump(10, |p| {
                sent.push(p.to_vec());
                true
            }),
            2
        );
        assert_eq!(ob.pump(10, |_| true), 0, "nothing is submitted twice");
        ob.on_outgoing_publish(7);
        ob.on_outgoing_publish(8);
        assert_eq!(ob.on_puback(8), Some(Tag::Report(1)));
        assert_eq!(ob.len(), 1);
        assert_eq!(ob.on_puback(8), None, "unknown or repeated ack is ignored");
        assert_eq!(ob.on_puback(7), Some(Tag::Report(0)));
        assert!(ob.is_empty());
        assert_eq!(ob.in_flight(), 0);
    }

    #[test]
    fn everything_unacked_is_resubmitted_after_a_reconnect() {
        let mut ob = Outbox::new(10);
        for k in 0..3 {
            ob.push(k, payload(k));
        }
        ob.pump(10, |_| true);
        ob.on_outgoing_publish(1);
        ob.on_outgoing_publish(2);
        ob.on_puback(1);
        ob.on_connection_lost();
        let mut again = Vec::new();
        ob.pump(10, |p| {
            again.push(p[0]);
            true
        });
        assert_eq!(again, [1, 2]);
    }

    #[test]
    fn status_publishes_keep_packet_ids_matched() {
        let mut ob = Outbox::new(10);
        ob.submitted_status();
        ob.push(5, payload(5));
        ob.pump(10, |_| true);
        ob.on_outgoing_publish(1); // the status
        ob.on_outgoing_publish(2); // report 5
        assert_eq!(ob.statuses_unacked(), 1);
        assert_eq!(ob.on_puback(2), Some(Tag::Report(5)));
        assert_eq!(ob.on_puback(1), Some(Tag::Status));
        assert_eq!(ob.statuses_unacked(), 0);
    }

    #[test]
    fn a_collision_maps_the_held_back_publish_when_it_goes_out() {
        let mut ob = Outbox::new(10);
        for k in 0..2 {
            ob.push(k, payload(k));
        }
        ob.pump(10, |_| true);
        ob.on_outgoing_publish(1); // report 0
        ob.on_await_ack(1); // report 1 must wait for pkid 1
        assert_eq!(ob.on_puback(1), Some(Tag::Report(0)));
        ob.on_outgoing_publish(1); // report 1 goes out with pkid 1
        assert_eq!(ob.on_puback(1), Some(Tag::Report(1)));
        assert!(ob.is_empty());
    }

    #[test]
    fn when_full_the_oldest_is_dropped_and_counted() {
        let mut ob = Outbox::new(2);
        assert_eq!(ob.push(0, payload(0)), None);
        assert_eq!(ob.push(1, payload(1)), None);
        assert_eq!(ob.push(2, payload(2)), Some(0));
        assert_eq!(ob.dropped(), 1);
        assert_eq!(ob.len(), 2);
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut ob = Outbox::new(100);
        for k in 0..50 {
            ob.push(k, payload(k));
        }
        assert_eq!(ob.pump(16, |_| true), 16);
        assert_eq!(ob.in_flight(), 16);
        assert_eq!(ob.pump(16, |_| true), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Pump,
        Write,
        Ack,
        Drop,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            3 => Just(Op::Pump),
            4 => Just(Op::Write),
            4 => Just(Op::Ack),
            1 => Just(Op::Drop),
        ]
    }

    proptest! {
        /// Whatever the order of reports, writes, acks and connection losses, every
        /// report is delivered at least once unless dropped for room, and the outbox
        /// never exceeds its capacity or its in-flight bound.
        #[test]
        fn nothing_is_lost_unless_dropped_for_room(
            ops in proptest::collection::vec(op(), 1..400),
            capacity in 1usize..40,
            max_in_flight in 1usize..12,
        ) {
            let mut ob = Outbox::new(capacity);
            let mut fake = FakeBroker::default();
            let mut next_key = 0u64;
            let mut dropped = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Push => {
                        if let Some(d) = ob.push(next_key, payload(next_key)) {
                            dropped.insert(d);
                        }
                        next_key += 1;
                    }
                    Op::Pump => { ob.pump(max_in_flight, |p| fake.submit(p)); }
                    Op::Write => { fake.write(&mut ob); }
                    Op::Ack => { fake.ack(&mut ob); }
                    Op::Drop => fake.drop_connection(&mut ob),
                }
                prop_assert!(ob.len() <= capacity);
                prop_assert!(ob.in_flight() <= max_in_flight);
            }
            // Then a stable connection until everything is through.
            fake.drop_connection(&mut ob);
            for _ in 0..10_000 {
                ob.pump(max_in_flight, |p| fake.submit(p));
                let progressed = fake.write(&mut ob) | fake.ack(&mut ob);
                if ob.is_empty() && !progressed {
                    break;
                }
            }
            prop_assert!(ob.is_empty());
            let delivered: BTreeSet<u64> = fake.delivered.iter().copied().collect();
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
