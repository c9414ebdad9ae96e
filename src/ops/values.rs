//! The values of a service's settings (spec §6 rule 15, §13): the owner's,
//! else the current ones, else the defaults, else generated secrets; a
//! required setting left without a value, an unknown name or a value that
//! breaks the env value rule or its type is refused, named.

use crate::error::{Error, Result};
use crate::manifest::{setting_value_problem, Manifest, SettingType};
use crate::state::Secret;
use std::collections::BTreeMap;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Every setting's value for `m`: `given` (by the owner now), over
/// `current` (kept from the install or last configure; an empty secret
/// given keeps it), over the default, over a generated secret.
pub(crate) fn resolve(
    m: &Manifest,
    given: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut problems = Vec::new();
    for name in given.keys() {
        if !m.settings.iter().any(|s| &s.name == name) {
            problems.push(format!(
                "{}: {} has no such setting",
                crate::ids::truncate(name, 64),
                m.id
            ));
        }
    }
    let mut values = BTreeMap::new();
    for s in &m.settings {
        let owner = given
            .get(&s.name)
            .filter(|v| !(v.is_empty() && s.kind == SettingType::Secret));
        let value = match (owner, current.get(&s.name), &s.default, s.generate) {
            (Some(v), ..) => Some(v.clone()),
            (None, Some(v), ..) => Some(v.clone()),
            (None, None, Some(d), _) => Some(d.clone()),
            (None, None, None, Some(n)) => Some(generate(usize::from(n))?),
            (None, None, None, None) => None,
        };
        match value {
            Some(v) => {
                if let Some(p) = setting_value_problem(&v, s.kind, &s.choices) {
                    // A secret's value is never repeated in an error.
                    let p = if s.kind == SettingType::Secret {
                        "its value breaks the env value rule".to_string()
                    } else {
                        p
                    };
                    problems.push(format!("{} ({}): {p}", s.name, s.label));
                }
                values.insert(s.name.clone(), v);
            }
            None if s.required => problems.push(format!(
                "{} ({}): is required and has no value",
                s.name, s.label
            )),
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(Error::invalid(format!("settings of {}", m.id), problems))
    }
}

/// Splits values into the record's plain settings and its secrets.
pub(crate) fn split(
    m: &Manifest,
    values: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, Secret>) {
    let mut plain = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (k, v) in values {
        let secret = m
            .settings
            .iter()
            .any(|s| s.name == k && s.kind == SettingType::Secret);
        if secret {
            secrets.insert(k, Secret(v));
        } else {
            plain.insert(k, v);
        }
    }
    (plain, secrets)
}

/// `n` characters from [A-Za-z0-9], uniformly, from /dev/urandom.
pub(crate) fn generate(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in crate::token::random_bytes(n * 2)? {
            // 248 = 4 * 62: rejecting the rest keeps every character equally likely.
            if b < 248 && out.len() < n {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let mut m = crate::net::tests::manifest("app");
        m.settings = serde_json::from_value(serde_json::json!([
            {"name": "ADMIN", "label": "Admin name", "type": "string", "default": "admin"},
            {"name": "PASSWORD", "label": "Password", "type": "secret", "generate": 24},
            {"name": "TOKEN", "label": "Token", "type": "secret", "required": true},
            {"name": "SIZE", "label": "Size", "type": "choice", "choices": ["s", "m"]},
        ]))
        .unwrap();
        m
    }

    fn given(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_generated_secrets_and_given_values() {
        let v = resolve(&manifest(), &given(&[("TOKEN", "t0k")]), &given(&[])).unwrap();
        assert_eq!(v["ADMIN"], "admin");
        assert_eq!(v["TOKEN"], "t0k");
        assert_eq!(v["PASSWORD"].len(), 24);
        assert!(v["PASSWORD"].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(!v.contains_key("SIZE"));
        let (plain, secrets) = split(&manifest(), v);
        assert_eq!(plain.keys().collect::<Vec<_>>(), ["ADMIN"]);
        assert_eq!(serde_json::to_value(&secrets).unwrap()["TOKEN"], "set");
    }

    #[test]
    fn required_unknown_and_bad_values_are_refused_by_name() {
        let err = resolve(&manifest(), &given(&[]), &given(&[])).unwrap_err();
        assert!(err.to_string().contains("TOKEN (Token)"), "{err}");
        let err = resolve(
            &manifest(),
            &given(&[("TOKEN", "x"), ("NOPE", "1"), ("SIZE", "xl")]),
            &given(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("NOPE") && err.contains("SIZE (Size)"), "{err}");
        let err = resolve(&manifest(), &given(&[("TOKEN", "a$b")]), &given(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TOKEN") && !err.contains("a$b"), "{err}");
    }

    #[test]
    fn an_empty_secret_keeps_the_current_one() {
        let current = given(&[("TOKEN", "old"), ("PASSWORD", "p"), ("ADMIN", "me")]);
        let v = resolve(
            &manifest(),
            &given(&[("TOKEN", ""), ("ADMIN", "you")]),
            &current,
        )
        .unwrap();
        assert_eq!((v["TOKEN"].as_str(), v["PASSWORD"].as_str()), ("old", "p"));
        assert_eq!(v["ADMIN"], "you");
    }
}
