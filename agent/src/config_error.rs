//! The one error type a bad config file produces: which file, which line, which field,
//! and what is wrong. Binaries print it once and exit 2.

use std::fmt;
use std::path::PathBuf;

/// A config file problem, naming the field and (when known) the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    /// Dotted field path, e.g. `mqtt.url` or `target[2].host`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The 1-based line of byte offset `at` in `src`.
pub fn line_of(src: &str, at: usize) -> usize {
    src.as_bytes()[..at.min(src.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}
