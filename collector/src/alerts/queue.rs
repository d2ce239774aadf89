//! The alert outbox: a small SQLite file (`alerts.db` beside the history) holding
//! every incident event once per receiver until that receiver took it.
//!
//! Why SQLite rather than a folder of files: taking an event for every receiver is
//! one transaction (all receivers or none), fsync'd (`synchronous=FULL`) before
//! [`Queue::push`] returns; the head of each receiver's queue is one indexed query;
//! the event numbers that make ids stable live in the same transaction; and
//! rusqlite is already linked for the history. The file stays SQLite even when the
//! history is PostgreSQL: it is this node's own delivery state.

use std::path::Path;

use anyhow::Context;
use faultline_shared::{IncidentEvent, IncidentEventKind};
use rusqlite::{Connection, OptionalExtension, params};

/// One event waiting for one receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Queue order (never reused: AUTOINCREMENT).
    pub seq: i64,
    /// `X-Faultline-Event-Id`: `{incident}:{event}:{n}`, n counting that
    /// incident's events from 1.
    pub event_id: String,
    /// The `IncidentEvent` JSON, exactly the bytes signed and sent.
    pub body: Vec<u8>,
}

/// A connection to the outbox; the owner pushes, each delivery worker opens its own.
#[derive(Debug)]
pub struct Queue {
    db: Connection,
}

impl Queue {
    /// Opens (creating) the outbox at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(30))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 receiver TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 body BLOB NOT NULL,
                 taken_ms INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS outbox_receiver ON outbox(receiver, seq);
             -- Events numbered so far per incident, while it is open: an incident
             -- with a row here has been alerted (its `opened` was taken).
             CREATE TABLE IF NOT EXISTS incidents (
                 incident TEXT PRIMARY KEY,
                 events INTEGER NOT NULL
             );",
        )
        .with_context(|| format!("create the outbox in {}", path.display()))?;
        Ok(Self { db })
    }

    /// Takes `event` for every receiver in one durable transaction and returns its id.
    pub fn push(
        &mut self,
        event: &IncidentEvent,
        receivers: &[String],
        now_ms: u64,
    ) -> anyhow::Result<String> {
        let body = serde_json::to_vec(event)?;
        let inc = &event.incident.id;
        let tx = self.db.transaction()?;
        let n: i64 = tx
            .query_row(
                "SELECT events FROM incidents WHERE incident = ?1",
                [inc],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0)
            + 1;
        if event.event == IncidentEventKind::Closed {
            tx.execute("DELETE FROM incidents WHERE incident = ?1", [inc])?;
        } else {
            tx.execute(
                "INSERT INTO incidents (incident, events) VALUES (?1, ?2)
                 ON CONFLICT(incident) DO UPDATE SET events = excluded.events",
                params![inc, n],
            )?;
        }
        let event_id = event_id(event, n);
        for r in receivers {
            tx.execute(
                "INSERT INTO outbox (receiver, event_id, body, taken_ms) VALUES (?1, ?2, ?3, ?4)",
                params![r, event_id, body, now_ms as i64],
            )?;
        }
        tx.commit()?;
        Ok(event_id)
    }

    /// The oldest entry waiting for `receiver`.
    pub fn head(&self, receiver: &str) -> anyhow::Result<Option<Entry>> {
        Ok(self
            .db
            .prepare_cached(
                "SELECT seq, event_id, body FROM outbox WHERE receiver = ?1 ORDER BY seq LIMIT 1",
            )?
            .query_row([receiver], |r| {
                Ok(Entry {
                    seq: r.get(0)?,
                    event_id: r.get(1)?,
                    body: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// Removes a delivered entry.
    pub fn remove(&self, seq: i64) -> anyhow::Result<()> {
        self.db
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1")?
            .execute([seq])?;
        Ok(())
    }

    /// Entries waiting for `receiver`.
    pub fn pending(&self, receiver: &str) -> anyhow::Result<u64> {
        let n: i64 = self.db.query_row(
            "SELECT count(*) FROM outbox WHERE receiver = ?1",
            [receiver],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// True when `incident`'s `opened` has been taken and it has not closed since.
    pub fn alerted(&self, incident: &str) -> anyhow::Result<bool> {
        Ok(self
            .db
            .query_row(
                "SELECT 1 FROM incidents WHERE incident = ?1",
                [incident],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Drops entries for receivers no longer configured; returns how many.
    pub fn drop_unknown(&self, receivers: &[String]) -> anyhow::Result<u64> {
        let known: std::collections::BTreeSet<&str> =
            receivers.iter().map(String::as_str).collect();
        let mut stmt = self.db.prepare("SELECT DISTINCT receiver FROM outbox")?;
        let present = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        let mut dropped = 0;
        for r in present.iter().filter(|r| !known.contains(r.as_str())) {
            dropped +=
                self.db
                    .execute("DELETE FROM outbox WHERE receiver = ?1", [r])? as u64;
        }
        Ok(dropped)
    }
}

/// The id every attempt of this event carries: `{incident}:{event}:{n}`.
pub fn event_id(event: &IncidentEvent, n: i64) -> String {
    let kind = match event.event {
        IncidentEventKind::Opened => "opened",
        IncidentEventKind::Updated => "updated",
        IncidentEventKind::Closed => "closed",
    };
    format!("{}:{kind}:{n}", event.incident.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultline_shared::{Incident, Scope, State, Subject};

    pub(crate) fn event(id: &str, kind: IncidentEventKind) -> IncidentEvent {
        IncidentEvent {
            event: kind,
            incident: Incident {
                id: id.into(),
                scope: Scope::Provider,
                target_id: Subject::from(faultline_shared::Id::new("voipco").unwrap()),
                cause: None,
                state: State::Outage,
                opened_ms: 1,
                closed_ms: (kind == IncidentEventKind::Closed).then_some(2),
                sites: vec![],
            },
        }
    }

    fn temp() -> std::path::PathBuf {
        std::env::temp_dir().join(format!(
            "faultline-alerts-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        ))
    }

    #[test]
    fn entries_come_out_in_order_per_receiver_with_stable_ids_across_reopen() {
        let path = temp();
        let rs = ["a".to_owned(), "b".to_owned()];
        {
            let mut q = Queue::open(&path).unwrap();
            use IncidentEventKind::*;
            assert_eq!(
                q.push(&event("inc-1", Opened), &rs, 0).unwrap(),
                "inc-1:opened:1"
            );
            assert!(q.alerted("inc-1").unwrap());
            assert_eq!(
                q.push(&event("inc-1", Updated), &rs, 0).unwrap(),
                "inc-1:updated:2"
            );
            assert_eq!(
                q.push(&event("inc-1", Closed), &rs, 0).unwrap(),
                "inc-1:closed:3"
            );
            assert!(!q.alerted("inc-1").unwrap());
            let h = q.head("a").unwrap().unwrap();
            assert_eq!(h.event_id, "inc-1:opened:1");
            q.remove(h.seq).unwrap();
        }
        // Reopened (a restart): the rest is still there, in order, same ids.
        let q = Queue::open(&path).unwrap();
        assert_eq!(q.pending("a").unwrap(), 2);
        assert_eq!(q.pending("b").unwrap(), 3);
        assert_eq!(q.head("a").unwrap().unwrap().event_id, "inc-1:updated:2");
        assert_eq!(q.head("b").unwrap().unwrap().event_id, "inc-1:opened:1");
        let body: IncidentEvent =
            serde_json::from_slice(&q.head("b").unwrap().unwrap().body).unwrap();
        assert_eq!(body, event("inc-1", IncidentEventKind::Opened));
        assert_eq!(q.drop_unknown(&["a".to_owned()]).unwrap(), 3);
        assert!(q.head("b").unwrap().is_none());
        drop(q);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
