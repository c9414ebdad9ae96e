//! Fuzzes the front door's reading of a request
//! (`http::front::relay_bytes`): the head scan and checks, `Expect`, the
//! admission's body limit, `HEAD`, and the body — `Content-Length` or
//! chunked, whole or cut short by a half-close — arriving in pieces of
//! several sizes. Input: the bytes a client sends before it half-closes.
//!
//! Checked: never a panic; admission sees the method as sent (`HEAD` as
//! `GET`) and no body; a refused admission is the answer, with no
//! `100 Continue`; a request is forwarded for one piece size only if for
//! every one, with the same bytes; what is forwarded is a head tiny_http
//! reads one way only — one `X-Pic-Peer` (the relay's), `Connection:
//! close`, no `Expect` or `Transfer-Encoding`, a `Content-Length` equal to
//! the body that follows and within the admitted limit — and relaying it
//! again changes nothing (unless the relay's own headers took a head at
//! the size limits past them).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pic_store::http::front::{relay_bytes, Relayed, MAX_HEAD, MAX_HEADER_LINES};
use pic_store::http::msg::Req;
use std::net::{IpAddr, Ipv4Addr};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

/// Stands in for `router::admit`: the limit by path, as the server's.
fn admit(req: &Req) -> Result<usize, u16> {
    assert!(req.body.is_empty(), "admission saw a body");
    assert_ne!(req.method, "HEAD", "admission saw HEAD, not GET");
    assert_eq!(req.remote, Some(PEER));
    assert!(
        req.headers.iter().all(|(k, _)| !k.eq_ignore_ascii_case("X-Pic-Peer")),
        "admission saw a client's X-Pic-Peer"
    );
    let path = req.path.as_str();
    if path.starts_with("/refused") {
        Err(401)
    } else if path.starts_with("/login") {
        Ok(4 * 1024)
    } else if path.starts_with("/api") {
        Ok(64 * 1024)
    } else if path.starts_with("/tiny") {
        Ok(16)
    } else {
        Ok(0)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut limit = None;
    let whole = relay_bytes(data, data.len().max(1), PEER, |req| {
        let r = admit(req);
        limit = Some(r);
        r
    });
    check(&whole, limit);
    for piece in [1, 2, 7, 100] {
        let other = relay_bytes(data, piece, PEER, admit);
        match (&whole, &other) {
            (Relayed::Forwarded { bytes: a, .. }, Relayed::Forwarded { bytes: b, .. }) => {
                assert_eq!(a, b, "piece {piece}: forwarded otherwise")
            }
            (Relayed::Forwarded { .. }, _) | (_, Relayed::Forwarded { .. }) => {
                panic!("piece {piece}: {other:?}, whole: {whole:?}")
            }
            _ => {}
        }
    }
});

fn check(r: &Relayed, admitted: Option<Result<usize, u16>>) {
    match r {
        Relayed::Refused(status) => {
            assert!((400..=599).contains(status), "refused with {status}");
            if let Some(Err(s)) = admitted {
                assert_eq!(*status, s, "a refused admission is the answer");
            }
        }
        Relayed::Incomplete(status) => assert!(matches!(status, 0 | 400), "{status}"),
        Relayed::Forwarded { bytes, continued } => {
            let Some(Ok(limit)) = admitted else {
                panic!("forwarded without admission")
            };
            let end = bytes
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a forwarded head ends")
                + 4;
            let head = std::str::from_utf8(&bytes[..end]).expect("an ASCII head");
            let body = &bytes[end..];
            let lines: Vec<&str> = head.trim_end().split("\r\n").collect();
            assert!(!lines[0].starts_with("HEAD "), "HEAD went on as HEAD");
            let named = |name: &str| -> Vec<&str> {
                lines[1..]
                    .iter()
                    .filter_map(|l| l.split_once(':'))
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim())
                    .collect()
            };
            assert_eq!(named("X-Pic-Peer"), vec!["10.0.0.7"], "{head}");
            assert_eq!(named("Connection"), vec!["close"], "{head}");
            assert!(named("Expect").is_empty(), "{head}");
            assert!(named("Transfer-Encoding").is_empty(), "{head}");
            match &named("Content-Length")[..] {
                [] => assert!(body.is_empty(), "a body without a length"),
                [n] => assert_eq!(n.parse::<usize>().ok(), Some(body.len()), "{head}"),
                more => panic!("{} Content-Length headers", more.len()),
            }
            assert!(body.len() <= limit, "{} bytes over the limit {limit}", body.len());
            if *continued {
                assert!(!body.is_empty() || !named("Content-Length").is_empty());
            }
            let again = relay_bytes(bytes, bytes.len(), PEER, admit);
            // The relay's own three headers may take a head at the
            // client's limits past them; tiny_http has none.
            let at_limits = end > MAX_HEAD - 128 || lines.len() > MAX_HEADER_LINES - 2;
            if at_limits && again == Relayed::Refused(431) {
                return;
            }
            assert_eq!(
                again,
                Relayed::Forwarded {
                    continued: false,
                    bytes: bytes.clone()
                },
                "relaying the forwarded request changed it"
            );
        }
    }
}
