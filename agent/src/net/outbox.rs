//! What to send next and what the broker has acknowledged: the bookkeeping between the
//! spool (which holds the reports) and rumqttc (which assigns packet ids).
//!
//! A report leaves only on its PUBACK. rumqttc numbers each publish when its event
//! loop takes it from the request queue and says so, in queue order, with
//! `Outgoing::Publish(pkid)` (or `Outgoing::AwaitAck(pkid)` when that id is still
//! taken); so every publish handed to rumqttc is remembered in order and paired with
//! the next such event. When the connection is lost, the delivery task discards
//! rumqttc's own copies of anything unacknowledged, and everything here is sent again
//! on the next connection (the collector counts each window once).
//!
//! Pure and sans-IO: no sockets, no clocks, no disk.

use std::collections::VecDeque;

/// What a publish handed to rumqttc carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A spooled report, by its spool id.
    Report(u64),
    /// A retained status message (a new connection sends a fresh one).
    Status,
    /// A report dropped for room while on the wire.
    Dropped,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// Handed to rumqttc on the current connection.
    sent: bool,
}

/// The reports awaiting PUBACK and the publishes in flight.
#[derive(Debug, Default)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    /// Handed to rumqttc, not yet numbered (in order).
    queued: VecDeque<Tag>,
    /// Numbered and unacknowledged: packet id and what it carries, oldest first.
    wire: Vec<(u16, Tag)>,
    /// Reports handed over on this connection and not yet acknowledged.
    in_flight: usize,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a report to deliver; ids must increase.
    pub fn push(&mut self, id: u64) {
        debug_assert!(self.entries.back().is_none_or(|e| e.id < id));
        self.entries.push_back(Entry { id, sent: false });
    }

    /// The report `id` was dropped for room: it is not sent (again).
    pub fn forget(&mut self, id: u64) {
        let Ok(i) = self.entries.binary_search_by_key(&id, |e| e.id) else {
            return;
        };
        if let Some(e) = self.entries.remove(i)
            && e.sent
        {
            self.in_flight -= 1;
            for t in self
                .queued
                .iter_mut()
                .chain(self.wire.iter_mut().map(|w| &mut w.1))
            {
                if *t == Tag::Report(id) {
                    *t = Tag::Dropped;
                }
            }
        }
    }

    /// The oldest report not yet handed over on this connection, while fewer than
    /// `max_in_flight` are unacknowledged. Call [`Outbox::handed_over`] once rumqttc
    /// has taken it.
    pub fn next_to_send(&self, max_in_flight: usize) -> Option<u64> {
        if self.in_flight >= max_in_flight {
            return None;
        }
        self.entries.iter().find(|e| !e.sent).map(|e| e.id)
    }

    /// rumqttc took the publish of report `id`.
    pub fn handed_over(&mut self, id: u64) {
        if let Ok(i) = self.entries.binary_search_by_key(&id, |e| e.id)
            && !self.entries[i].sent
        {
            self.entries[i].sent = true;
            self.in_flight += 1;
            self.queued.push_back(Tag::Report(id));
        }
    }

    /// rumqttc took a status publish.
    pub fn status_handed_over(&mut self) {
        self.queued.push_back(Tag::Status);
    }

    /// rumqttc numbered the oldest publish it was handed (`Outgoing::Publish` or
    /// `Outgoing::AwaitAck`). Returns what it carries.
    pub fn on_numbered(&mut self, pkid: u16) -> Option<Tag> {
        let tag = self.queued.pop_front()?;
        self.wire.push((pkid, tag));
        Some(tag)
    }

    /// The broker acknowledged `pkid`: the oldest publish with that id. Returns what it
    /// carried (`None` for an id not in flight); a report is then delivered and gone.
    pub fn on_puback(&mut self, pkid: u16) -> Option<Tag> {
        let i = self.wire.iter().position(|&(p, _)| p == pkid)?;
        let (_, tag) = self.wire.remove(i);
        if let Tag::Report(id) = tag
            && let Ok(i) = self.entries.binary_search_by_key(&id, |e| e.id)
            && let Some(e) = self.entries.remove(i)
            && e.sent
        {
            self.in_flight -= 1;
        }
        Some(tag)
    }

    /// The connection is gone (and rumqttc's copies discarded): every report still
    /// here is sent again on the next one.
    pub fn on_connection_lost(&mut self) {
        for e in &mut self.entries {
            e.sent = false;
        }
        self.in_flight = 0;
        self.queued.clear();
        self.wire.clear();
    }

    /// Reports waiting for acknowledgement (handed over or not).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reports handed over on this connection and not yet acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Anything handed over and not yet acknowledged (reports or statuses).
    pub fn awaiting_ack(&self) -> bool {
        !self.queued.is_empty() || !self.wire.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Hands over everything allowed; returns the ids in order.
    fn hand_over_all(ob: &mut Outbox, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(id) = ob.next_to_send(max) {
            ob.handed_over(id);
            out.push(id);
        }
        out
    }

    #[test]
    fn a_report_leaves_only_on_its_puback() {
        let mut ob = Outbox::new();
        ob.push(10);
        ob.push(11);
        assert_eq!(hand_over_all(&mut ob, 16), [10, 11]);
        assert_eq!(ob.next_to_send(16), None, "nothing is handed over twice");
        assert_eq!(ob.on_numbered(1), Some(Tag::Report(10)));
        assert_eq!(ob.on_numbered(2), Some(Tag::Report(11)));
        assert_eq!(ob.on_puback(2), Some(Tag::Report(11)));
        assert_eq!(ob.len(), 1);
        assert_eq!(ob.on_puback(2), None, "unknown or repeated ack is ignored");
        assert_eq!(ob.on_puback(1), Some(Tag::Report(10)));
        assert!(ob.is_empty());
        assert_eq!(ob.in_flight(), 0);
        assert!(!ob.awaiting_ack());
    }

    #[test]
    fn statuses_and_reports_are_numbered_in_the_order_handed_over() {
        let mut ob = Outbox::new();
        ob.status_handed_over();
        ob.push(5);
        hand_over_all(&mut ob, 16);
        assert!(ob.awaiting_ack());
        assert_eq!(ob.on_numbered(7), Some(Tag::Status));
        assert_eq!(ob.on_numbered(8), Some(Tag::Report(5)));
        assert_eq!(ob.on_puback(7), Some(Tag::Status));
        assert!(ob.awaiting_ack(), "the report is still unacknowledged");
        assert_eq!(ob.on_puback(8), Some(Tag::Report(5)));
        assert!(!ob.awaiting_ack());
    }

    #[test]
    fn a_reused_packet_id_acks_the_oldest_publish_first() {
        // rumqttc's collision case: id 1 is numbered again while still unacked.
        let mut ob = Outbox::new();
        ob.push(1);
        ob.push(2);
        hand_over_all(&mut ob, 16);
        ob.on_numbered(1);
        ob.on_numbered(1);
        assert_eq!(ob.on_puback(1), Some(Tag::Report(1)));
        assert_eq!(ob.on_puback(1), Some(Tag::Report(2)));
    }

    #[test]
    fn after_a_lost_connection_everything_unacked_goes_again() {
        let mut ob = Outbox::new();
        for id in 0..3 {
            ob.push(id);
        }
        assert_eq!(hand_over_all(&mut ob, 2), [0, 1]);
        ob.on_numbered(1);
        ob.on_numbered(2);
        ob.on_puback(1);
        ob.on_connection_lost();
        ob.push(3);
        assert_eq!(hand_over_all(&mut ob, 10), [1, 2, 3]);
    }

    #[test]
    fn a_report_dropped_while_on_the_wire_keeps_its_id_until_acked() {
        let mut ob = Outbox::new();
        ob.push(0);
        ob.push(1);
        hand_over_all(&mut ob, 10);
        ob.on_numbered(1);
        ob.forget(0);
        ob.forget(1);
        assert_eq!(ob.in_flight(), 0);
        assert!(ob.is_empty());
        assert_eq!(ob.on_numbered(2), Some(Tag::Dropped));
        assert_eq!(ob.on_puback(1), Some(Tag::Dropped));
    }

    #[test]
    fn in_flight_is_bounded() {
        let mut ob = Outbox::new();
        for id in 0..50 {
            ob.push(id);
        }
        assert_eq!(hand_over_all(&mut ob, 16).len(), 16);
        assert_eq!(ob.in_flight(), 16);
        assert_eq!(ob.next_to_send(16), None);
    }

    /// rumqttc as the outbox sees it: numbers publishes in order (ids cycling through
    /// a small range), a broker acks in order; a lost connection forgets everything.
    #[derive(Default)]
    struct Wire {
        queue: VecDeque<Tag>,
        numbered: VecDeque<(u16, Tag)>,
        next: u16,
        delivered: Vec<u64>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Send,
        Number,
        Ack,
        Status,
        Drop,
        Forget,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Push),
            4 => Just(Op::Send),
            4 => Just(Op::Number),
            4 => Just(Op::Ack),
            1 => Just(Op::Status),
            1 => Just(Op::Drop),
            1 => Just(Op::Forget),
        ]
    }

    proptest! {
        /// Whatever the order of reports, hand-overs, numbering, acks, drops for room
        /// and connection losses: every report is delivered unless forgotten, and an
        /// ack always retires the report its publish carried.
        #[test]
        fn nothing_is_lost_and_acks_retire_the_right_report(
            ops in proptest::collection::vec(op(), 1..400),
            max_in_flight in 1usize..12,
        ) {
            let mut ob = Outbox::new();
            let mut w = Wire::default();
            let mut next_id = 0u64;
            let mut forgotten = BTreeSet::new();
            let number = |w: &mut Wire, ob: &mut Outbox| {
                if let Some(tag) = w.queue.pop_front() {
                    w.next = w.next % 5 + 1;
                    let got = ob.on_numbered(w.next);
                    prop_assert!(got == Some(tag) || got == Some(Tag::Dropped));
                    w.numbered.push_back((w.next, tag));
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Push => { ob.push(next_id); next_id += 1; }
                    Op::Send => {
                        if let Some(id) = ob.next_to_send(max_in_flight) {
                            ob.handed_over(id);
                            w.queue.push_back(Tag::Report(id));
                        }
                    }
                    Op::Number => number(&mut w, &mut ob)?,
                    Op::Ack => {
                        if let Some((pkid, tag)) = w.numbered.pop_front() {
                            let got = ob.on_puback(pkid);
                            prop_assert!(got == Some(tag) || got == Some(Tag::Dropped));
                            if let Tag::Report(id) = tag { w.delivered.push(id); }
                        }
                    }
                    Op::Status => { ob.status_handed_over(); w.queue.push_back(Tag::Status); }
                    Op::Drop => { w.queue.clear(); w.numbered.clear(); ob.on_connection_lost(); }
                    Op::Forget => {
                        let oldest = ob.entries.front().map(|e| e.id);
                        if let Some(id) = oldest { ob.forget(id); forgotten.insert(id); }
                    }
                }
                prop_assert!(ob.in_flight() <= max_in_flight);
            }
            w.queue.clear();
            w.numbered.clear();
            ob.on_connection_lost();
            for _ in 0..100_000 {
                while let Some(id) = ob.next_to_send(max_in_flight) {
                    ob.handed_over(id);
                    w.queue.push_back(Tag::Report(id));
                }
                number(&mut w, &mut ob)?;
                let Some((pkid, tag)) = w.numbered.pop_front() else { break };
                prop_assert_eq!(ob.on_puback(pkid), Some(tag));
                if let Tag::Report(id) = tag { w.delivered.push(id); }
            }
            prop_assert!(ob.is_empty());
            let delivered: BTreeSet<u64> = w.delivered.iter().copied().collect();
            for id in 0..next_id {
                prop_assert!(delivered.contains(&id) || forgotten.contains(&id),
                    "report {} neither delivered nor forgotten", id);
            }
        }
    }
}
