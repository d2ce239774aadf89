//! Identifiers: 1–64 characters of `[A-Za-z0-9._-]`, the only names that may appear in
//! a topic or a payload as a site, target, provider or ISP.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest identifier accepted.
pub const MAX_ID_LEN: usize = 64;

/// A validated identifier; holding one proves it is 1–64 chars of `[A-Za-z0-9._-]`.
/// Shared, not copied: a clone is a reference count (the collector holds each site,
/// target and provider id in many places, for 100,000 sites).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(std::sync::Arc<str>);

impl Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Deserialized from a borrowed string where the format allows (postcard, JSON
/// without escapes): one allocation per id, the shared one.
impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an id: 1-64 characters of A-Z a-z 0-9 . _ -")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
                Id::validate(v).map_err(E::custom)?;
                Ok(Id(v.into()))
            }
        }
        d.deserialize_str(V)
    }
}

/// Why a string is not a valid [`Id`]; carries the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty (expected 1-64 characters of A-Z a-z 0-9 . _ -)")]
    Empty,
    #[error("id {0:?} is longer than 64 characters")]
    TooLong(String),
    #[error("id {id:?} contains {bad:?} (allowed: A-Z a-z 0-9 . _ -)")]
    BadChar { id: String, bad: char },
}

impl Id {
    /// Checks `s` without allocating.
    pub fn validate(s: &str) -> Result<(), IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(IdError::BadChar {
                id: s.to_owned(),
                bad,
            });
        }
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.to_owned()));
        }
        Ok(())
    }

    /// Validates and wraps `s`.
    pub fn new(s: impl AsRef<str>) -> Result<Self, IdError> {
        let s = s.as_ref();
        Self::validate(s)?;
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a verdict or an incident is about: a site, ISP or provider [`Id`], or a
/// route `"{isp}~{provider}"` (DESIGN.md "scope `route`"). `~` never appears in an
/// [`Id`], so the two cannot be confused.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subject {
    text: String,
    /// For a route: the ISP's and the provider's ids.
    route: Option<(Id, Id)>,
}

impl Subject {
    /// The route between `isp` and `provider`.
    pub fn route_of(isp: &Id, provider: &Id) -> Self {
        Self {
            text: format!("{isp}~{provider}"),
            route: Some((isp.clone(), provider.clone())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The ISP and provider of a route.
    pub fn route(&self) -> Option<(&Id, &Id)> {
        self.route.as_ref().map(|(i, p)| (i, p))
    }

    /// The plain id (site, ISP, provider); `None` for a route.
    pub fn id(&self) -> Option<Id> {
        self.route.is_none().then(|| Id(self.text.as_str().into()))
    }
}

impl From<Id> for Subject {
    fn from(id: Id) -> Self {
        Self {
            text: id.0.to_string(),
            route: None,
        }
    }
}

impl From<&Id> for Subject {
    fn from(id: &Id) -> Self {
        Self::from(id.clone())
    }
}

impl TryFrom<String> for Subject {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        match s.split_once('~') {
            Some((isp, provider)) => Ok(Self::route_of(&Id::new(isp)?, &Id::new(provider)?)),
            None => Ok(Self::from(Id::new(s)?)),
        }
    }
}

impl std::str::FromStr for Subject {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::try_from(s.to_owned())
    }
}

impl From<Subject> for String {
    fn from(s: Subject) -> String {
        s.text
    }
}

impl PartialEq<Id> for Subject {
    fn eq(&self, other: &Id) -> bool {
        self.route.is_none() && self.text == *other.0
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

impl PartialEq<&str> for Subject {
    fn eq(&self, other: &&str) -> bool {
        self.text == *other
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl TryFrom<String> for Id {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl TryFrom<&str> for Id {
    type Error = IdError;
    fn try_from(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl std::str::FromStr for Id {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0.to_string()
    }
}

impl AsRef<str> for Id {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Id {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Id {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_charset_up_to_64() {
        assert!(Id::new("acme-hq").is_ok());
        assert!(Id::new("a.b_c-D9").is_ok());
        assert!(Id::new("x".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_bad_chars_naming_the_input() {
        assert_eq!(Id::new(""), Err(IdError::Empty));
        assert_eq!(
            Id::new("x".repeat(65)),
            Err(IdError::TooLong("x".repeat(65)))
        );
        let err = Id::new("acme/hq").unwrap_err();
        assert_eq!(
            err,
            IdError::BadChar {
                id: "acme/hq".into(),
                bad: '/'
            }
        );
        assert!(err.to_string().contains("acme/hq"));
        for bad in ["a b", "a+b", "a#", "é", "a\0"] {
            assert!(Id::new(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn json_rejects_invalid_ids() {
        assert!(serde_json::from_str::<Id>("\"ok-id\"").is_ok());
        assert!(serde_json::from_str::<Id>("\"bad/id\"").is_err());
    }
}
