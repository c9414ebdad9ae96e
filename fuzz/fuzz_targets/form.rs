//! Fuzzes the hand-written form decoding of `src/http/forms.rs` with
//! arbitrary bytes: it must never panic, and encoding what it decoded
//! must decode to the same pairs again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pic_store::http::forms::{self, BodyKind};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // The body paths take raw bytes, as a request carries them.
    for kind in [Some(BodyKind::Form), Some(BodyKind::Json), None] {
        if let Ok(fields) = forms::body_object(kind, data) {
            for name in fields.keys() {
                let _ = forms::text(&fields, name);
                let _ = forms::flag(&fields, name);
            }
            if kind == Some(BodyKind::Form) {
                assert!(
                    fields.values().all(Value::is_string),
                    "a form value that is not text"
                );
            }
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        assert!(
            forms::body_object(Some(BodyKind::Form), data).is_err()
                || data.iter().all(u8::is_ascii_whitespace),
            "a form body that is not UTF-8 was accepted"
        );
        return;
    };
    let _ = forms::body_kind(Some(text));
    let _ = forms::decode(text);
    if let Ok(pairs) = forms::parse_urlencoded(text) {
        let again =
            forms::parse_urlencoded(&encode_pairs(&pairs)).expect("an encoded form decodes");
        assert_eq!(pairs, again, "decode(encode(pairs)) differs");
    }
    // Any text survives a trip through the encoder.
    assert_eq!(
        forms::decode(&encode(text)).expect("an encoded text decodes"),
        text
    );
    if let Ok(lines) = forms::env_lines(text) {
        for (k, v) in lines {
            assert!(
                !k.is_empty() && k.trim() == k && v.trim() == v,
                "{k:?}={v:?}"
            );
            assert!(!k.contains('\n') && !v.contains('\n'), "{k:?}={v:?}");
        }
    }
});

/// `application/x-www-form-urlencoded` as a browser writes it.
fn encode_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b' ' => out.push('+'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
