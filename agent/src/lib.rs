//! The agent's library side: only what is pure and worth reaching from outside the
//! binary — the wire codecs ([`wire`]), which the fuzz targets in `fuzz/` feed with
//! arbitrary bytes. Everything else (probes, delivery, config, commands) lives in the
//! `faultline-agent` binary.

pub mod wire;
