//! Wire formats of the protocols the probes speak, in smoltcp's shape: per protocol a
//! checked view over bytes (`Packet`), a parsed representation with `parse` / `emit`,
//! and byte-array fixtures in the tests.
//!
//! Pure: no sockets, no timers, no clock reads, no configuration. The probes (`probe`)
//! and the STAMP reflector (`reflect`) drive these over sockets. Name resolution is not
//! here: the agent resolves names through the C library.

pub mod dns;
pub mod icmp;
pub mod sip;
pub mod stamp;
pub mod stun;
