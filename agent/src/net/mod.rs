//! The agent's network side that is not measurement: delivering reports to the broker
//! ([`delivery`]) from the durable [`spool`] through the [`outbox`]'s bookkeeping,
//! with a backoff between reconnects (`faultline_shared::backoff`), and the host's default [`gateway`] (from the
//! kernel's routing table). Names are resolved by the C library through tokio
//! (`tokio::net::lookup_host`), not here.

pub mod delivery;
pub mod gateway;
pub mod outbox;
pub mod spool;
