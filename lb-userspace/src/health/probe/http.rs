//! The `http` check: GET a path, want a status in a range.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::check::Check;
use crate::config::CheckConfig;

/// How an HTTP answer fails the check.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("send: {0}")]
    Send(#[source] io::Error),
    #[error("read: {0}")]
    Read(#[source] io::Error),
    #[error("no HTTP status line")]
    NoStatusLine,
    #[error("HTTP status {code}, expected {}..={}", expected[0], expected[1])]
    Status { code: u16, expected: [u16; 2] },
}

/// `kind = "http"`.
pub struct HttpCheck(pub CheckConfig);

impl Check for HttpCheck {
    type Error = HttpError;

    async fn run(&self, mut stream: TcpStream, _peer: SocketAddr) -> Result<(), HttpError> {
        request(&mut stream, &self.0).await
    }
}

/// GET the path; the status code must be in the configured range. Over any
/// byte stream: a TCP connection (`http`) or a TLS session on it (`https`).
pub async fn request<S>(stream: &mut S, spec: &CheckConfig) -> Result<(), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let host = spec
        .host
        .as_deref()
        .map(|h| format!("Host: {h}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {} HTTP/1.0\r\n{host}User-Agent: xdplb-check\r\nConnection: close\r\n\r\n",
        spec.path
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(HttpError::Send)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = stream.read(&mut chunk).await.map_err(HttpError::Read)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = http_status(&buf).ok_or(HttpError::NoStatusLine)?;
    let [lo, hi] = spec.status;
    if (lo..=hi).contains(&code) {
        Ok(())
    } else {
        Err(HttpError::Status {
            code,
            expected: spec.status,
        })
    }
}

/// The status code of an HTTP/1.x response's first line.
pub fn http_status(buf: &[u8]) -> Option<u16> {
    let line = buf.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(http_status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(
            http_status(b"HTTP/1.0 503 Service Unavailable\r\nX: y"),
            Some(503)
        );
        assert_eq!(http_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(http_status(b"HTTP/1.1 2000 x\r\n"), None);
        assert_eq!(http_status(b""), None);
    }
}
