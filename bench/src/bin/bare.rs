//! The floor for `GET /api/services`: a bare tiny_http server that answers
//! every request with the same bytes, from as many worker threads as
//! pic-store's server has, and does nothing else.
//!
//!   bare ADDR FILE [WORKERS]
//!
//! FILE holds the body to send (captured from pic-store by scripts/bench);
//! it goes out as `application/json`, like pic-store's answer.

use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bare ADDR FILE [WORKERS]");
        std::process::exit(2);
    }
    let body = match std::fs::read(&args[2]) {
        Ok(b) => Arc::new(b),
        Err(e) => fail(&format!("read {}: {e}", args[2])),
    };
    let workers: usize = args.get(3).and_then(|w| w.parse().ok()).unwrap_or(8);
    let server = match tiny_http::Server::http(&args[1]) {
        Ok(s) => Arc::new(s),
        Err(e) => fail(&format!("listen on {}: {e}", args[1])),
    };
    let content_type =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            .unwrap_or_else(|_| fail("bad header"));
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (server, body, ct) = (server.clone(), body.clone(), content_type.clone());
            std::thread::spawn(move || {
                while let Ok(rq) = server.recv() {
                    let resp =
                        tiny_http::Response::from_data(body.as_slice())
                            .with_header(ct.clone())
                            .with_chunked_threshold(usize::MAX);
                    let _ = rq.respond(resp);
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bare: {msg}");
    std::process::exit(1);
}
