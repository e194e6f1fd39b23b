//! Test backend: answers HTTP over TCP and datagrams over UDP with its own
//! name, so a client can tell which backend served it.
//!
//! `xdplb-testsrv NAME [--slow-ms N] --tcp ADDR:PORT... --udp ADDR:PORT...`
//! (`--slow-ms`: wait that long before answering an HTTP request).

use std::{
    io::{Read, Write},
    net::{TcpListener, UdpSocket},
    thread,
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args
        .first()
        .expect("usage: xdplb-testsrv NAME --tcp A:P --udp A:P")
        .clone();
    let mut kind = "";
    let mut handles = Vec::new();
    for a in &args[1..] {
        match a.as_str() {
            "--slow-ms" => kind = "slow",
            ms if kind == "slow" => {
                let ms: u64 = ms.parse().expect("--slow-ms N");
                SLOW_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
                kind = "";
            }
            "--tcp" | "--udp" => kind = if a == "--tcp" { "tcp" } else { "udp" },
            addr if kind == "tcp" => {
                let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind tcp {addr}: {e}"));
                let name = name.clone();
                handles.push(thread::spawn(move || serve_tcp(l, &name)));
            }
            addr if kind == "udp" => {
                let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"));
                let name = name.clone();
                handles.push(thread::spawn(move || serve_udp(s, &name)));
            }
            other => panic!("unexpected argument {other}"),
        }
    }
    eprintln!("testsrv {name} listening");
    for h in handles {
        let _ = h.join();
    }
}

/// How long to wait before answering an HTTP request (`--slow-ms`).
static SLOW_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Threads accepting on one listener: short requests are answered inline,
/// so thousands of connections per second cost no thread each; a "HOLD"
/// connection gets a thread of its own.
const ACCEPTORS: usize = 16;

fn serve_tcp(l: TcpListener, name: &str) {
    let l = std::sync::Arc::new(l);
    let acceptors: Vec<_> = (0..ACCEPTORS)
        .map(|_| {
            let (l, name) = (l.clone(), name.to_string());
            thread::spawn(move || {
                loop {
                    if let Ok((c, _)) = l.accept() {
                        serve_conn(c, &name);
                    }
                }
            })
        })
        .collect();
    for a in acceptors {
        let _ = a.join();
    }
}

fn serve_conn(mut c: std::net::TcpStream, name: &str) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 1024];
    let mut req = Vec::new();
    // Read up to the end of the request head (or a plain line).
    let complete = |req: &[u8]| {
        req.windows(4).any(|w| w == b"\r\n\r\n")
            || req.ends_with(b"\n\n")
            || (req.starts_with(b"HOLD") && req.ends_with(b"\n"))
    };
    while !complete(&req) {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 65536 {
            break;
        }
    }
    // "HOLD": a long-lived connection; answer every line until EOF.
    if req.starts_with(b"HOLD") {
        let name = name.to_string();
        thread::spawn(move || {
            let mut buf = [0u8; 1024];
            let mut pending = req.iter().filter(|&&b| b == b'\n').count();
            loop {
                for _ in 0..pending {
                    if c.write_all(format!("backend={name}\n").as_bytes()).is_err() {
                        return;
                    }
                }
                let _ = c.set_read_timeout(Some(Duration::from_secs(120)));
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending = buf[..n].iter().filter(|&&b| b == b'\n').count(),
                }
            }
        });
        return;
    }
    // The request's size lets a test see it arrived whole; "GET /big"
    // asks for a 20000-byte padding line (full-size segments back).
    let pad = if req.starts_with(b"GET /big") {
        format!("pad={}\n", "x".repeat(20_000))
    } else {
        String::new()
    };
    let slow = SLOW_MS.load(std::sync::atomic::Ordering::Relaxed);
    if slow > 0 {
        thread::sleep(Duration::from_millis(slow));
    }
    let body = format!("backend={name}\nrequest_bytes={}\n{pad}", req.len());
    let resp = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = c.write_all(resp.as_bytes());
}

fn serve_udp(s: UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    loop {
        let Ok((_, peer)) = s.recv_from(&mut buf) else {
            continue;
        };
        let _ = s.send_to(format!("backend={name}\n").as_bytes(), peer);
    }
}
