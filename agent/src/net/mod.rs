//! What the agent reads about the host's network: the default gateway (from the
//! kernel's routing table). Names are resolved by the C library through tokio
//! (`tokio::net::lookup_host`), not here.

pub mod gateway;
