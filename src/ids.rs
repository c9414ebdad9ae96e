//! Checked identifiers. A `ServiceId` (also used for connection ids) can
//! only come from its parser, so one that reaches a URL, a path or a
//! project name has passed `^[a-z][a-z0-9-]{0,30}$`.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceId(String);

/// Whether `s` matches `^[a-z][a-z0-9-]{0,30}$`.
pub fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 31
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl ServiceId {
    /// `sample`: the id a template is checked with when the manifest's own
    /// id is missing or wrong (spec §7 item 6).
    pub(crate) fn sample() -> ServiceId {
        ServiceId("sample".to_string())
    }

    pub fn parse(s: &str) -> Result<ServiceId> {
        if is_slug(s) {
            Ok(ServiceId(s.to_string()))
        } else {
            Err(Error::invalid(
                "id",
                vec![format!(
                    "{:?} is not a valid id (lower-case letter, then up to 30 of a-z, 0-9, -)",
                    truncate(s, 64)
                )],
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ServiceId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Cuts a string for an error message, on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in [
            "a",
            "radicale",
            "web-dav2",
            "a234567890123456789012345678901",
        ] {
            assert!(ServiceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "-a",
            "A",
            "a_b",
            "../../etc",
            "a/b",
            "a.b",
            "a2345678901234567890123456789012",
            "a\n",
            "é",
        ] {
            assert!(ServiceId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é...");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
