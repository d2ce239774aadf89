//! The lab's instruments: what both the test kit (`faultline-tests`) and the
//! collector's `demo` use, kept apart so the product never links test code.
//!
//! - [`relay`]: a UDP impairment relay (delay, jitter, loss, duplication,
//!   reordering, cuts), seeded; std threads and sockets only.
//! - [`fleet`]: the fleet simulator's pure core — N sites' reports with scripted
//!   faults, seeded, no clock and no I/O. Its MQTT shell (`publish`) lives in
//!   `faultline_tests::fleet`, which re-exports this module.

pub mod fleet;
pub mod relay;
