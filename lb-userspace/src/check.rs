//! Active health probes: one tokio task per (service, backend), each bounded
//! by its own timeout, so a target that hangs never delays another.
//!
//! A probe's result goes to the control loop over a channel; the rise/fall
//! bookkeeping is [`crate::health`]'s.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use sha1::{Digest, Sha1};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    config::{CheckConfig, CheckKind, MysqlRole},
    plan::BackendRef,
};

/// One backend to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: BackendRef,
    /// Where to connect: the backend (NAT) or the VIP (DSR).
    pub connect: SocketAddr,
    /// `SO_MARK` for the probe socket: DSR probes are policy-routed to the
    /// backend while addressed to the VIP (see [`crate::check_route`]).
    pub mark: Option<u32>,
    pub spec: CheckConfig,
}

/// One probe's outcome, sent to the control loop.
#[derive(Debug, Clone)]
pub struct Report {
    pub backend: BackendRef,
    /// Which set of probe tasks sent it; older generations are ignored.
    pub generation: u64,
    pub result: Result<(), String>,
    pub latency: Duration,
}

/// The running probe tasks; dropping them stops them.
#[derive(Default)]
pub struct Probes {
    tasks: Vec<JoinHandle<()>>,
    pub generation: u64,
}

impl Probes {
    /// Stop the current probes and start one task per target.
    pub fn restart(&mut self, targets: Vec<Target>, tx: &mpsc::UnboundedSender<Report>) {
        self.stop();
        self.generation += 1;
        let generation = self.generation;
        for t in targets {
            let tx = tx.clone();
            self.tasks.push(tokio::spawn(async move {
                let interval = Duration::from_millis(t.spec.interval_ms);
                // Spread probes over the interval so they do not all fire at once.
                let offset = spread(&t, interval);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let start = Instant::now();
                    let result = probe(&t).await;
                    let report = Report {
                        backend: t.backend,
                        generation,
                        result,
                        latency: start.elapsed(),
                    };
                    if tx.send(report).is_err() {
                        return;
                    }
                }
            }));
        }
    }

    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stable offset within the first tenth of the interval.
fn spread(t: &Target, interval: Duration) -> Duration {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{:?}", t.backend).as_bytes());
    interval / 10 * (h % 100) as u32 / 100
}

/// Run one probe with the target's timeout.
pub async fn probe(t: &Target) -> Result<(), String> {
    let timeout = Duration::from_millis(t.spec.timeout_ms);
    match tokio::time::timeout(timeout, probe_inner(t)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", t.spec.timeout_ms)),
    }
}

async fn probe_inner(t: &Target) -> Result<(), String> {
    let mut stream = connect(t.connect, t.mark).await?;
    match t.spec.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http => http(&mut stream, &t.spec).await,
        CheckKind::Mysql => mysql(&mut stream, &t.spec).await,
    }
}

async fn connect(addr: SocketAddr, mark: Option<u32>) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(mark) = mark {
        // SAFETY: setsockopt on a socket we own with a correctly sized value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&mark as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_MARK: {}", std::io::Error::last_os_error()));
        }
    }
    sock.connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// GET the path; the status code must be in the configured range.
async fn http(stream: &mut TcpStream, spec: &CheckConfig) -> Result<(), String> {
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
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let code = http_status(&buf).ok_or_else(|| "no HTTP status line".to_string())?;
    let [lo, hi] = spec.status;
    if (lo..=hi).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP status {code}, expected {lo}..={hi}"))
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

// --- MySQL -----------------------------------------------------------------

const CLIENT_LONG_PASSWORD: u32 = 0x1;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const NATIVE_PASSWORD: &str = "mysql_native_password";
const COM_QUERY: u8 = 0x03;
const COM_QUIT: u8 = 0x01;

/// Read the greeting (a server that is up but refusing, e.g. "Too many
/// connections", greets with an error packet). For a role check, log in with
/// `mysql_native_password` and ask `@@global.read_only`.
async fn mysql(stream: &mut TcpStream, spec: &CheckConfig) -> Result<(), String> {
    let (seq, greeting) = read_packet(stream).await?;
    let g = parse_greeting(&greeting)?;
    if spec.mysql_role == MysqlRole::Any {
        return Ok(());
    }
    let user = spec.mysql_user.as_deref().unwrap_or_default();
    let password = spec.mysql_password.as_deref().unwrap_or_default();
    let response = handshake_response(user, &native_password(password, &g.salt));
    write_packet(stream, seq.wrapping_add(1), &response).await?;
    let (seq, mut reply) = read_packet(stream).await?;
    if reply.first() == Some(&0xfe) {
        // Auth switch: only to mysql_native_password with a new salt.
        let body = &reply[1..];
        let nul = body.iter().position(|b| *b == 0).unwrap_or(body.len());
        let plugin = String::from_utf8_lossy(&body[..nul]).to_string();
        if plugin != NATIVE_PASSWORD {
            return Err(format!(
                "server wants auth plugin {plugin}; the check speaks {NATIVE_PASSWORD} only"
            ));
        }
        let salt: Vec<u8> = body
            .get(nul + 1..)
            .unwrap_or_default()
            .iter()
            .copied()
            .take(20)
            .collect();
        write_packet(
            stream,
            seq.wrapping_add(1),
            &native_password(password, &salt),
        )
        .await?;
        reply = read_packet(stream).await?.1;
    }
    ok_or_err(&reply, "login")?;
    let mut query = vec![COM_QUERY];
    query.extend_from_slice(b"SELECT @@global.read_only");
    write_packet(stream, 0, &query).await?;
    let read_only = read_single_value(stream).await?;
    let _ = write_packet(stream, 0, &[COM_QUIT]).await;
    let is_ro = match read_only.as_str() {
        "0" | "OFF" => false,
        "1" | "ON" => true,
        other => return Err(format!("@@global.read_only is {other:?}")),
    };
    match (spec.mysql_role, is_ro) {
        (MysqlRole::ReadWrite, true) => Err("server is read-only (a replica)".into()),
        (MysqlRole::ReadOnly, false) => Err("server is read-write (the primary)".into()),
        _ => Ok(()),
    }
}

/// What the check needs from the server greeting.
#[derive(Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: String,
    pub salt: Vec<u8>,
}

pub fn parse_greeting(p: &[u8]) -> Result<Greeting, String> {
    match p.first() {
        Some(0x0a) => {}
        Some(0xff) => return Err(format!("server refused: {}", err_message(p))),
        Some(v) => return Err(format!("protocol version {v}, expected 10")),
        None => return Err("empty greeting".into()),
    }
    let rest = &p[1..];
    let nul = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or("greeting: unterminated version")?;
    let version = String::from_utf8_lossy(&rest[..nul]).to_string();
    let rest = &rest[nul + 1..];
    // conn id (4), salt part 1 (8), filler (1), caps (2), charset (1),
    // status (2), caps high (2), salt length (1), reserved (10), salt part 2.
    if rest.len() < 4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10 + 12 {
        return Err("greeting: too short".into());
    }
    let mut salt = rest[4..12].to_vec();
    let part2 = &rest[31..];
    salt.extend(part2.iter().take(12));
    Ok(Greeting { version, salt })
}

fn err_message(p: &[u8]) -> String {
    // 0xff, code (2), optional '#' + SQL state (5), message.
    let code = p
        .get(1..3)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .unwrap_or(0);
    let mut msg = p.get(3..).unwrap_or_default();
    if msg.first() == Some(&b'#') {
        msg = msg.get(6..).unwrap_or_default();
    }
    format!("error {code}: {}", String::from_utf8_lossy(msg))
}

fn ok_or_err(p: &[u8], what: &str) -> Result<(), String> {
    match p.first() {
        Some(0x00) => Ok(()),
        Some(0xff) => Err(format!("{what}: {}", err_message(p))),
        _ => Err(format!("{what}: unexpected reply")),
    }
}

/// `SHA1(password) XOR SHA1(salt + SHA1(SHA1(password)))`; empty for no password.
pub fn native_password(password: &str, salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(password.as_bytes());
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(salt);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

fn handshake_response(user: &str, auth: &[u8]) -> Vec<u8> {
    let caps =
        CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;
    let mut p = Vec::with_capacity(64 + user.len());
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(33); // utf8_general_ci
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(auth.len() as u8);
    p.extend_from_slice(auth);
    p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
    p.push(0);
    p
}

async fn read_packet(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 4];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    if len > 1 << 16 {
        return Err(format!("packet of {len} bytes; not a MySQL server?"));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok((head[3], body))
}

async fn write_packet(stream: &mut TcpStream, seq: u8, body: &[u8]) -> Result<(), String> {
    let len = (body.len() as u32).to_le_bytes();
    let mut p = vec![len[0], len[1], len[2], seq];
    p.extend_from_slice(body);
    stream.write_all(&p).await.map_err(|e| format!("send: {e}"))
}

/// Read a one-column, one-row text result set and return its value.
async fn read_single_value(stream: &mut TcpStream) -> Result<String, String> {
    let (_, count) = read_packet(stream).await?;
    if count.first() == Some(&0xff) {
        return Err(format!("query: {}", err_message(&count)));
    }
    let _column = read_packet(stream).await?;
    let (_, mut row) = read_packet(stream).await?;
    if row.first() == Some(&0xfe) && row.len() < 9 {
        (_, row) = read_packet(stream).await?; // EOF after column definitions
    }
    let len = *row.first().ok_or("query: empty row")? as usize;
    let value = row.get(1..1 + len).ok_or("query: short row")?;
    Ok(String::from_utf8_lossy(value).to_string())
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

    #[test]
    fn greeting_and_error_packet() {
        // Laid out as MariaDB 10.11 sends it (protocol 10, 20-byte salt in two parts).
        let mut g = vec![0x0a];
        g.extend_from_slice(b"5.5.5-10.11.6-MariaDB-0+deb12u1\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(b"abcdefgh\0");
        g.extend_from_slice(&[0xfe, 0xf7, 0x2d, 0x02, 0x00, 0xff, 0x81, 0x15]);
        g.extend_from_slice(&[0; 10]);
        g.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        let parsed = parse_greeting(&g).unwrap();
        assert_eq!(parsed.version, "5.5.5-10.11.6-MariaDB-0+deb12u1");
        assert_eq!(parsed.salt, b"abcdefghijklmnopqrst");
        let mut e = vec![0xff];
        e.extend_from_slice(&1040u16.to_le_bytes());
        e.extend_from_slice(b"#08004Too many connections");
        let err = parse_greeting(&e).unwrap_err();
        assert!(
            err.contains("1040") && err.contains("Too many connections"),
            "{err}"
        );
        assert!(parse_greeting(&g[..20]).is_err());
    }

    #[test]
    fn native_password_scramble() {
        // Known answer computed with Python's hashlib for the same inputs.
        let salt = b"abcdefghijklmnopqrst";
        let got = native_password("secret", salt);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), 40);
        assert_eq!(hex, KNOWN_SCRAMBLE);
        assert!(native_password("", salt).is_empty());
    }

    /// A target that accepts and never answers times out on its own; the
    /// healthy one beside it keeps its cadence. Loopback only.
    #[test]
    fn a_hanging_target_never_delays_another() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (hang_addr, good_addr) = (hang.local_addr().unwrap(), good.local_addr().unwrap());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = hang.accept().await {
                    held.push(s); // never read, never answered
                }
            });
            tokio::spawn(async move {
                while let Ok((mut s, _)) = good.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").await;
                    });
                }
            });
            let spec: CheckConfig =
                toml::from_str("kind = \"http\"\ninterval_ms = 100\ntimeout_ms = 80").unwrap();
            let key = lb_common::ServiceKey::default();
            let target = |addr: SocketAddr, n: u16| Target {
                backend: crate::plan::BackendRef::new(key, std::net::Ipv4Addr::LOCALHOST, n),
                connect: addr,
                mark: None,
                spec: spec.clone(),
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut probes = Probes::default();
            probes.restart(vec![target(hang_addr, 1), target(good_addr, 2)], &tx);
            let mut hung = Vec::new();
            let mut ok = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1050);
            while let Ok(Some(r)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                assert_eq!(r.generation, probes.generation);
                if r.backend.port == 1 {
                    hung.push(r.result.unwrap_err());
                } else {
                    r.result.expect("the good target passes");
                    ok += 1;
                }
            }
            assert!(ok >= 9, "the good target was probed {ok} times in 1 s");
            assert!(!hung.is_empty());
            assert!(
                hung.iter().all(|e| e.contains("no answer within 80 ms")),
                "{hung:?}"
            );
        });
    }

    const KNOWN_SCRAMBLE: &str = "8817c50fa779daef010ee7577825b0847df9842e";
}
