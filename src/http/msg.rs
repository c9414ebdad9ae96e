//! The request and the answer as every handler sees them: a request
//! whose body is already read (bounded), and an answer with the security
//! headers every answer carries. No I/O.

use super::forms;
use crate::error::Error;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

/// A request as the handlers see it: the body is already read (bounded).
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub remote: Option<IpAddr>,
}

impl Req {
    /// The first header of that name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    /// The body (JSON or form) as an object; other media types are refused.
    pub fn fields(&self) -> crate::error::Result<Map<String, Value>> {
        forms::body_object(forms::body_kind(self.header("Content-Type")), &self.body)
    }

    /// A query parameter (decoded), if present and well formed.
    pub fn query_param(&self, name: &str) -> Option<String> {
        forms::parse_urlencoded(&self.query)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The address throttling is keyed on (unknown: the unspecified one).
    pub fn client(&self) -> IpAddr {
        self.remote
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sent with every answer; the admin page needs no script, no frame and
/// no other origin. `same-origin`, not `no-referrer`: under `no-referrer`
/// browsers send `Origin: null` with the page's own form posts, which the
/// cross-site check must refuse.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
];

impl Resp {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Resp {
        let mut headers: Vec<(String, String)> = SECURITY_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        headers.push(("Content-Type".into(), content_type.into()));
        Resp {
            status,
            headers,
            body: body.into(),
        }
    }

    pub fn json(status: u16, v: &Value) -> Resp {
        let mut body = serde_json::to_vec_pretty(v).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        Resp::new(status, "application/json", body)
    }

    pub fn html(status: u16, body: String) -> Resp {
        Resp::new(status, "text/html; charset=utf-8", body)
    }

    pub fn text(status: u16, body: &str) -> Resp {
        Resp::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// The JSON error shape of spec §12.
    pub fn error(status: u16, message: &str, errors: Vec<String>) -> Resp {
        Resp::json(
            status,
            &json!({"ok": false, "error": message, "errors": errors}),
        )
    }

    pub fn from_error(e: &Error) -> Resp {
        Resp::error(e.http_status(), &e.to_string(), e.details())
    }

    /// 303 See Other: where a form post goes next.
    pub fn see_other(location: &str) -> Resp {
        Resp::text(303, &format!("see {location}")).with("Location", location)
    }

    pub fn with(mut self, name: &str, value: &str) -> Resp {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}
