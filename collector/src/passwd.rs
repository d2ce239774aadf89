//! Logins for the embedded broker, read from a Mosquitto password file (the format
//! `mosquitto_passwd` writes), so one tool makes the logins for either broker.
//!
//! Each line is `username:hash`, the hash `$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512,
//! Mosquitto 2's default) or `$6$salt$hash` (salted SHA-512, `mosquitto_passwd -H
//! sha512`), salt and hash in base64. Verification runs on ring and compares in
//! constant time. This module checks logins; it does not decide who may connect.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// The most PBKDF2 iterations accepted: verifying must stay cheap enough that a
/// flood of bad logins cannot pin a core for long per attempt.
const MAX_ITERATIONS: u32 = 100_000;
/// Largest password file read (about 300,000 logins).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// The logins of one password file: username → hash.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: BTreeMap<String, Hash>,
}

impl fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hashes are secrets too: only the names are shown.
        f.debug_struct("PasswordFile")
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PasswordFile {
    /// Reads and parses `path`; the error names the file and line.
    pub fn load(path: &Path) -> Result<Self, String> {
        let bytes = crate::config::read_file(path, MAX_FILE)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of a password file (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (user, hash) = line
                .split_once(':')
                .ok_or_else(|| format!("line {n}: expected username:hash"))?;
            if user.is_empty() {
                return Err(format!("line {n}: empty username"));
            }
            let hash = parse_hash(hash).map_err(|m| format!("line {n} ({user}): {m}"))?;
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(format!("line {n}: {user} is listed twice"));
            }
        }
        if users.is_empty() {
            return Err("no logins in it (make them with mosquitto_passwd)".into());
        }
        Ok(Self { users })
    }

    /// How many logins the file holds.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            None => false,
            Some(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let got = ctx.finish();
                constant_time_eq(got.as_ref(), hash)
            }
        }
    }
}

/// Equal length and content, in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    let b64 = |what: &str, v: &str| {
        B64.decode(v)
            .ok()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| format!("bad base64 in the {what}"))
    };
    let parts: Vec<&str> = s.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_ITERATIONS)
                .and_then(NonZeroU32::new)
                .ok_or_else(|| format!("iterations {iterations:?} not in 1..={MAX_ITERATIONS}"))?;
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt: b64("salt", salt)?,
                hash: b64("hash", hash)?,
            })
        }
        ["", "6", salt, hash] => Ok(Hash::Sha512 {
            salt: b64("salt", salt)?,
            hash: b64("hash", hash)?,
        }),
        _ => Err(
            "not a mosquitto_passwd hash ($7$… or $6$…); plain-text passwords are not accepted"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by mosquitto_passwd 2.0.11: alice and dave with the default
    // sha512-pbkdf2 (101 and 1000 iterations), carol with -H sha512.
    const FILE: &str = "\
alice:$7$101$cVFy5ADTY9uU3qqW$BQztE9k94aho0lgA6CRBkUFheiNQfHrSPRh+TdK+yA0iMlI0o5qIWGYLoVj0JdAGs6rmiSSLL9Vxv/w//TRNKg==
carol:$6$t4/ff30oos9swwvL$vmSBdr3YgHxj0QCTs1q+stuAd4xg2IBuks8VjuDszCp58DhReRcjks5Ejp96B//+MLdr/ZvEfXtyn4O2cAQbqA==
dave:$7$1000$RQFYjVEme9v/vAOc$yE9iUp6BizEgc5yaEu/glAt0W9tfTMXWtC6sT4WFUw7M0dfzDw4cydPZ6zcx6nq4BQ2OrkhfxETL+qTQwKQnsw==
";

    #[test]
    fn verifies_what_mosquitto_passwd_wrote() {
        let f = PasswordFile::parse(FILE).unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"correct horse"));
        assert!(f.verify("carol", b"pw3"));
        assert!(f.verify("dave", b"pw4"));
        assert!(!f.verify("alice", b"correct horse "));
        assert!(!f.verify("alice", b"pw3"));
        assert!(!f.verify("carol", b"pw4"));
        assert!(!f.verify("mallory", b"correct horse"));
        assert!(!f.verify("", b""));
    }

    #[test]
    fn refuses_what_it_cannot_check_naming_the_line() {
        let e = PasswordFile::parse("# logins\nalice:secret\n").unwrap_err();
        assert!(e.starts_with("line 2 (alice):"), "{e}");
        let e = PasswordFile::parse("alice\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        let e = PasswordFile::parse("a:$7$0$AAAA$AAAA\n").unwrap_err();
        assert!(e.contains("iterations"), "{e}");
        let e = PasswordFile::parse("a:$7$100001$AAAA$AAAA\n").unwrap_err();
        assert!(e.contains("iterations"), "{e}");
        let e = PasswordFile::parse("a:$6$!!$AAAA\n").unwrap_err();
        assert!(e.contains("base64"), "{e}");
        assert!(PasswordFile::parse("\n# nothing\n").is_err());
        let twice = format!("{FILE}{}", FILE.lines().next().unwrap());
        assert!(PasswordFile::parse(&twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn debug_shows_names_not_hashes() {
        let f = PasswordFile::parse(FILE).unwrap();
        let d = format!("{f:?}");
        assert!(d.contains("alice") && !d.contains("cVFy5"), "{d}");
    }
}
