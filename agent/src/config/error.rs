//! The one error type a bad config file produces: which file, which line, which field,
//! and what is wrong. Binaries print it once and exit 2.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config file problem, naming the field and (when known) the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    /// Dotted field path, e.g. `mqtt.url` or `target[2].host`.
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error about `field` of the file at `path` (text `src`), located by the byte
    /// `span` of the offending value when there is one.
    pub fn new(
        path: &Path,
        src: &str,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> Self {
        Self {
            path: path.to_owned(),
            line: span.map(|s| line_of(src, s.start)),
            field: field.into(),
            message: message.to_string(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_file_line_and_field() {
        let src = "a = 1\nb = 2\n";
        let e = ConfigError::new(Path::new("x.toml"), src, Some(8..9), "b", "too big");
        assert_eq!(e.to_string(), "x.toml:2: b: too big");
        let e = ConfigError::new(Path::new("x.toml"), src, None, "c", "missing");
        assert_eq!(e.to_string(), "x.toml: c: missing");
    }

    #[test]
    fn line_of_counts_newlines_before_the_offset() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
    }
}
