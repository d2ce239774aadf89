//! The agent's network side that is not measurement: delivering reports to the broker
//! ([`delivery`]) from the durable [`spool`] through the [`outbox`]'s bookkeeping,
//! with [`backoff`] between reconnects.

pub mod backoff;
pub mod delivery;
pub mod outbox;
pub mod spool;
