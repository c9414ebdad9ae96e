//! Request bodies and query strings: a hand-written
//! `application/x-www-form-urlencoded` decoder, the one shape both JSON
//! and form bodies are turned into before a handler reads them, and the
//! fields of that shape parsed into commands. No I/O.

use crate::error::{Error, Result};
use crate::ids::ServiceId;
use crate::ops::Command;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Decodes `a=1&b=x+y%21` into pairs, in order. `+` is a space; a bad
/// `%` escape or bytes that are not UTF-8 are an error, not a guess.
pub fn parse_urlencoded(text: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((decode(k)?, decode(v)?));
    }
    Ok(pairs)
}

/// Percent-decodes one key or value.
pub fn decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    let h = std::str::from_utf8(h).ok()?;
                    u8::from_str_radix(h, 16).ok()
                });
                match hex {
                    Some(b) => out.push(b),
                    None => return Err(bad_body("a malformed %-escape")),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| bad_body("text that is not UTF-8"))
}

fn bad_body(what: &str) -> Error {
    Error::invalid("request body", vec![format!("the form holds {what}")])
}

/// The media types a body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// Which kind a `Content-Type` names; `None` for anything else.
pub fn body_kind(content_type: Option<&str>) -> Option<BodyKind> {
    let essence = content_type?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(BodyKind::Json),
        "application/x-www-form-urlencoded" => Some(BodyKind::Form),
        _ => None,
    }
}

/// A JSON object or a form as a JSON object (form values are strings; a
/// repeated form key keeps its last value). An empty body is `{}`.
pub fn body_object(kind: Option<BodyKind>, body: &[u8]) -> Result<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match kind {
        Some(BodyKind::Json) => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err(Error::invalid(
                "request body",
                vec!["expected a JSON object".into()],
            )),
            Err(e) => Err(Error::invalid(
                "request body",
                vec![format!("not valid JSON: {e}")],
            )),
        },
        Some(BodyKind::Form) => {
            let text =
                std::str::from_utf8(body).map_err(|_| bad_body("bytes that are not UTF-8"))?;
            Ok(parse_urlencoded(text)?
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect())
        }
        None => Err(Error::invalid(
            "request body",
            vec![
                "send application/json or application/x-www-form-urlencoded (Content-Type)".into(),
            ],
        )),
    }
}

/// A required string field.
pub fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
        Some(Value::String(_)) | None => Err(Error::invalid(
            "request",
            vec![format!("{name:?} is required")],
        )),
        Some(_) => Err(Error::invalid(
            "request",
            vec![format!("{name:?} must be a string")],
        )),
    }
}

/// A yes/no field: JSON `true`, or a form's `1`, `on`, `true`, `yes`.
pub fn flag(fields: &Map<String, Value>, name: &str) -> bool {
    match fields.get(name) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(s.as_str(), "1" | "on" | "true" | "yes"),
        _ => false,
    }
}

/// `KEY=VALUE` lines (a form's text area) as pairs; blank lines skipped.
pub fn env_lines(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.push((k.trim().to_string(), v.trim().to_string()))
            }
            _ => errors.push(format!(
                "env line {:?} is not KEY=VALUE",
                crate::ids::truncate(line, 64)
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(Error::invalid("env", errors))
    }
}

// --- fields into commands (shared by the API and the forms) ---------------

/// A required field holding a service or connection id.
pub fn id_field(fields: &Map<String, Value>, name: &str) -> Result<ServiceId> {
    ServiceId::parse(text(fields, name)?)
}

/// `{"service", "name", "env"}`; `env` an object of strings, or (from a
/// form) `KEY=VALUE` lines.
pub fn connection_add(fields: &Map<String, Value>) -> Result<Command> {
    let service = id_field(fields, "service")?;
    let name = id_field(fields, "name")?;
    let env = match fields.get("env") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::String(lines)) => env_lines(lines)?.into_iter().collect(),
        Some(Value::Object(m)) => {
            let mut env = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        env.insert(k.clone(), s.clone());
                    }
                    _ => {
                        return Err(Error::invalid(
                            "env",
                            vec![format!("the value of {k:?} must be a string")],
                        ))
                    }
                }
            }
            env
        }
        Some(_) => {
            return Err(Error::invalid(
                "env",
                vec!["env must be an object of strings".into()],
            ))
        }
    };
    Ok(Command::ConnectionAdd { service, name, env })
}

/// `{"image_verification_mode": "off" | "warn" | "enforce"}`.
pub fn settings(fields: &Map<String, Value>) -> Result<Command> {
    let mode = text(fields, "image_verification_mode")?;
    Ok(Command::Settings(crate::ops::parse_mode(mode)?))
}

/// The settings' values of an install or configure (spec §13): the JSON
/// API's `{"settings": {"NAME": "VALUE"}}`, or a form's `NAME=VALUE`
/// fields (setting names are upper case; the form's own fields are not).
pub fn setting_values(fields: &Map<String, Value>) -> Result<BTreeMap<String, String>> {
    let bad = |why: String| Error::invalid("settings", vec![why]);
    let mut out = BTreeMap::new();
    if let Some(v) = fields.get("settings") {
        let Some(obj) = v.as_object() else {
            return Err(bad("must be an object of NAME: VALUE".into()));
        };
        for (k, v) in obj {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(bad(format!(
                        "{}: must be a string",
                        crate::ids::truncate(k, 64)
                    )))
                }
            };
            out.insert(k.clone(), value);
        }
        return Ok(out);
    }
    for (k, v) in fields {
        let setting_like = k.starts_with(|c: char| c.is_ascii_uppercase())
            && k.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if let (true, Some(s)) = (setting_like, v.as_str()) {
            out.insert(k.clone(), s.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let p = parse_urlencoded("a=1&b=x+y%21&c&d=%C3%A9&&e=a%3Db").unwrap();
        let want = [
            ("a", "1"),
            ("b", "x y!"),
            ("c", ""),
            ("d", "é"),
            ("e", "a=b"),
        ];
        assert_eq!(p.len(), want.len());
        for ((k, v), (wk, wv)) in p.iter().zip(want) {
            assert_eq!((k.as_str(), v.as_str()), (wk, wv));
        }
    }

    #[test]
    fn refuses_bad_escapes_and_non_utf8() {
        for bad in ["a=%", "a=%4", "a=%zz", "a=%ff", "%c3=1"] {
            assert!(parse_urlencoded(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            body_kind(Some("application/json; charset=utf-8")),
            Some(BodyKind::Json)
        );
        assert_eq!(
            body_kind(Some("Application/X-WWW-Form-Urlencoded")),
            Some(BodyKind::Form)
        );
        assert_eq!(body_kind(Some("text/plain")), None);
        assert_eq!(body_kind(None), None);
    }

    #[test]
    fn bodies_become_objects() {
        let j = body_object(Some(BodyKind::Json), br#"{"connection":"vpn"}"#).unwrap();
        assert_eq!(text(&j, "connection").unwrap(), "vpn");
        let f = body_object(Some(BodyKind::Form), b"connection=vpn&purge=on").unwrap();
        assert_eq!(text(&f, "connection").unwrap(), "vpn");
        assert!(flag(&f, "purge"));
        assert!(body_object(None, b"").unwrap().is_empty());
        assert!(body_object(Some(BodyKind::Json), b"[1]").is_err());
        assert!(body_object(Some(BodyKind::Json), b"{").is_err());
        assert!(body_object(None, b"x=1").is_err());
        assert!(text(&j, "missing").is_err());
    }

    #[test]
    fn env_text_area() {
        let e = env_lines("A=1\r\n\r\n B = x=y \n").unwrap();
        assert_eq!(
            e,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(env_lines("novalue\n=x").is_err());
    }
}
