//! A fake Docker-API daemon for tests that need exact answers (recorded ones, errors,
//! vanished containers) without a real daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fake daemon on 127.0.0.1, one request per connection: `answer` gets the request's path
/// without the `/v1.NN` prefix and the query, and returns status and JSON body. Counts the
/// requests it answered.
pub fn fake_daemon(
    answer: impl Fn(&str) -> (u16, String) + Send + 'static,
) -> (u16, Arc<AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let req = String::from_utf8_lossy(&req);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let path = match path.strip_prefix("/v1.") {
                Some(rest) => rest.find('/').map_or(path, |i| &rest[i..]),
                None => path,
            };
            let (status, body) = answer(path);
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, served)
}
