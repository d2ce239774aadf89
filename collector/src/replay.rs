//! `replay`: the engine driven by a file's clock. Reads JSON lines
//! `{"at_ms", "topic", "payload"}` and writes every verdict change as one `Verdict`
//! JSON line, in time order. Deterministic: the same file always gives the same output.

use std::io::{BufRead, Write};

use anyhow::Context;
use faultline_shared::{Report, Topic, Topics, encode};
use serde::Deserialize;

use crate::engine::{Engine, Output, advance};

/// One input line.
#[derive(Debug, Deserialize)]
pub struct Line {
    pub at_ms: u64,
    pub topic: String,
    /// The JSON form of the payload; a JSON string is taken as the raw bytes instead
    /// (for malformed input).
    pub payload: serde_json::Value,
    /// Set to replay a retained message (as delivered when subscribing).
    #[serde(default)]
    pub retained: bool,
}

/// The bytes that would arrive on `topic` for `payload`: postcard for the binary
/// report topic, JSON otherwise.
pub fn payload_bytes(topics: &Topics, topic: &str, payload: &serde_json::Value) -> Vec<u8> {
    if let serde_json::Value::String(s) = payload {
        return s.as_bytes().to_vec();
    }
    if let Ok(Topic::Report { .. }) = topics.parse(topic)
        && let Ok(r) = serde_json::from_value::<Report>(payload.clone())
        && let Ok(bytes) = encode(&r)
    {
        return bytes;
    }
    serde_json::to_vec(payload).unwrap_or_default()
}

/// Replays `input` through `engine`, writing verdict changes to `out`. Returns the
/// number of lines read. The same loop as `run`'s owner: every timeout due before a
/// message is handled at its own time, then the message.
pub fn replay(
    engine: &mut Engine,
    topics: &Topics,
    input: impl BufRead,
    mut out: impl Write,
) -> anyhow::Result<u64> {
    let mut last_at = None;
    let mut n = 0;
    let emit = |engine: &mut Engine, out: &mut dyn Write| -> anyhow::Result<()> {
        while let Some(o) = engine.poll_output() {
            if let Output::Verdict(v) = o {
                serde_json::to_writer(&mut *out, &v)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    };
    for (i, line) in input.lines().enumerate() {
        let line = line.context("read input")?;
        if line.trim().is_empty() || line.trim_start().starts_with("//") {
            continue;
        }
        let l: Line = serde_json::from_str(&line).with_context(|| format!("line {}", i + 1))?;
        if last_at.is_some_and(|t| l.at_ms < t) {
            anyhow::bail!("line {}: at_ms {} goes back in time", i + 1, l.at_ms);
        }
        last_at = Some(l.at_ms);
        advance(engine, l.at_ms);
        emit(engine, &mut out)?;
        let bytes = payload_bytes(topics, &l.topic, &l.payload);
        let _ = engine.handle_message(topics, l.at_ms, &l.topic, &bytes, l.retained);
        emit(engine, &mut out)?;
        n += 1;
    }
    if let Some(t) = last_at {
        // Evaluate what the last messages said.
        let w = engine.config().window_ms;
        advance(engine, t.div_ceil(w) * w + engine.evaluation_delay_ms());
        emit(engine, &mut out)?;
    }
    out.flush()?;
    Ok(n)
}
