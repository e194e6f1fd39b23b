//! The `mysql` check: read the server's greeting (a server that is up but
//! refusing, e.g. "Too many connections", greets with an error packet); for
//! a role check, log in and ask `@@global.read_only`.
//!
//! Packets and authentication come from `mysql_common`: the handshake,
//! `mysql_native_password` (MariaDB, MySQL 5.7) and `caching_sha2_password`
//! (MySQL 8's default), with its fast path and its full authentication over
//! plain TCP (the password encrypted with the server's RSA key, requested
//! from the server). This file only moves the packets.

use mysql_common::{
    auth::plugins::{AuthProc, ChallengeResponsePlugin, Context, Response},
    constants::CapabilityFlags,
    io::ParseBuf,
    misc::raw::{RawBytes, bytes::LenEnc},
    packets::{
        AuthMoreData, AuthPlugin, AuthSwitchRequest, ErrPacket, HandshakePacket, HandshakeResponse,
    },
    proto::MySerialize,
};
use std::net::SocketAddr;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::check::Check;
use crate::config::{CheckConfig, MysqlRole};

/// How a MySQL server fails the check.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("packet of {0} bytes; not a MySQL server?")]
    Oversize(usize),
    /// It greeted with an error packet ("Too many connections", ...).
    #[error("server refused: {0}")]
    Refused(String),
    #[error("greeting: {0}")]
    Greeting(String),
    #[error("login: {0}")]
    Login(String),
    #[error("query: {0}")]
    Query(String),
    #[error("@@global.read_only is {0:?}")]
    ReadOnlyValue(String),
    /// Up, but not in the role the service wants.
    #[error("server is {0}")]
    Role(&'static str),
}

/// `kind = "mysql"`.
pub struct MysqlCheck(pub CheckConfig);

impl Check for MysqlCheck {
    type Error = MysqlError;

    async fn run(&self, mut stream: TcpStream, _peer: SocketAddr) -> Result<(), MysqlError> {
        check(&mut stream, &self.0).await
    }
}

const COM_QUERY: u8 = 0x03;
const COM_QUIT: u8 = 0x01;
const MAX_PACKET: usize = 1 << 16;

fn capabilities() -> CapabilityFlags {
    CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_LONG_FLAG
}

/// A MySQL connection as the check sees it: packets with sequence numbers.
struct Conn<'a, S> {
    stream: &'a mut S,
    seq: u8,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<'_, S> {
    async fn read(&mut self) -> Result<Vec<u8>, MysqlError> {
        let io = |source| MysqlError::Io {
            what: "read",
            source,
        };
        let mut head = [0u8; 4];
        self.stream.read_exact(&mut head).await.map_err(io)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        if len > MAX_PACKET {
            return Err(MysqlError::Oversize(len));
        }
        self.seq = head[3].wrapping_add(1);
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        Ok(body)
    }

    async fn write(&mut self, body: &[u8]) -> Result<(), MysqlError> {
        let len = (body.len() as u32).to_le_bytes();
        let mut p = Vec::with_capacity(4 + body.len());
        p.extend_from_slice(&[len[0], len[1], len[2], self.seq]);
        p.extend_from_slice(body);
        self.seq = self.seq.wrapping_add(1);
        self.stream
            .write_all(&p)
            .await
            .map_err(|source| MysqlError::Io {
                what: "send",
                source,
            })
    }

    /// A command starts a new sequence.
    async fn command(&mut self, body: &[u8]) -> Result<(), MysqlError> {
        self.seq = 0;
        self.write(body).await
    }
}

fn server_error(p: &[u8]) -> String {
    match ParseBuf(p).parse::<ErrPacket<'_>>(capabilities()) {
        Ok(ErrPacket::Error(e)) => format!("error {}: {}", e.error_code(), e.message_str()),
        _ => "an error packet".into(),
    }
}

/// What an authentication plugin is told about the connection.
struct Auth<'a> {
    password: &'a [u8],
    scramble: &'a [u8],
}

impl Context for &Auth<'_> {
    fn pass(&self) -> &[u8] {
        self.password
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        false
    }
    fn scramble(&self) -> &[u8] {
        self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None // requested from the server when full authentication is needed
    }
}

fn plugin_step(
    proc: &mut AuthProc,
    auth: &Auth<'_>,
    challenge: &[u8],
    plugin: &AuthPlugin<'_>,
) -> Result<Option<Vec<u8>>, MysqlError> {
    match proc.run(auth, challenge) {
        Ok(Response::Next { packet } | Response::Last { packet }) => Ok(packet),
        Err(e) => Err(MysqlError::Login(format!(
            "{}: {e}",
            String::from_utf8_lossy(plugin.as_bytes())
        ))),
    }
}

pub async fn check<S>(stream: &mut S, spec: &CheckConfig) -> Result<(), MysqlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn { stream, seq: 0 };
    let greeting = conn.read().await?;
    if greeting.first() == Some(&0xff) {
        return Err(MysqlError::Refused(server_error(&greeting)));
    }
    let hello: HandshakePacket<'_> = ParseBuf(&greeting)
        .parse(())
        .map_err(|e| MysqlError::Greeting(e.to_string()))?;
    if spec.mysql_role == MysqlRole::Any {
        return Ok(());
    }
    let user = spec.mysql_user.as_deref().unwrap_or_default();
    let password = spec.mysql_password.as_deref().unwrap_or_default();
    login(&mut conn, &hello, user, password).await?;
    let read_only = select_one(&mut conn, "SELECT @@global.read_only").await?;
    let _ = conn.command(&[COM_QUIT]).await;
    let is_ro = match read_only.as_str() {
        "0" | "OFF" => false,
        "1" | "ON" => true,
        other => return Err(MysqlError::ReadOnlyValue(other.into())),
    };
    match (spec.mysql_role, is_ro) {
        (MysqlRole::ReadWrite, true) => Err(MysqlError::Role("read-only (a replica)")),
        (MysqlRole::ReadOnly, false) => Err(MysqlError::Role("read-write (the primary)")),
        _ => Ok(()),
    }
}

/// Log in with the plugin the server names, following auth switches and
/// the plugin's further exchanges until the server says OK or ERR.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    hello: &HandshakePacket<'_>,
    user: &str,
    password: &str,
) -> Result<(), MysqlError> {
    let login = |e: String| MysqlError::Login(e);
    let mut plugin = hello
        .auth_plugin()
        .map(|p| p.into_owned())
        .unwrap_or(AuthPlugin::MysqlNativePassword);
    let mut nonce = hello.nonce();
    nonce.truncate(20);
    let mut proc = AuthProc::init(&plugin).map_err(|e| login(e.to_string()))?;
    let first = {
        let auth = Auth {
            password: password.as_bytes(),
            scramble: &nonce,
        };
        plugin_step(&mut proc, &auth, &nonce, &plugin)?
    };
    let response = HandshakeResponse::new(
        Some(first.unwrap_or_default()),
        hello.server_version_parsed().unwrap_or((0, 0, 0)),
        Some(user.as_bytes()),
        None::<&[u8]>,
        Some(plugin.clone()),
        capabilities(),
        None,
        16 << 20,
    );
    let mut buf = Vec::new();
    response.serialize(&mut buf);
    conn.write(&buf).await?;
    loop {
        let reply = conn.read().await?;
        match reply.first() {
            Some(0x00) => return Ok(()),
            Some(0xff) => return Err(login(server_error(&reply))),
            Some(0xfe) => {
                let switch: AuthSwitchRequest<'_> = ParseBuf(&reply)
                    .parse(())
                    .map_err(|e| login(format!("auth switch: {e}")))?;
                plugin = switch.auth_plugin().into_owned();
                nonce = switch.plugin_data().to_vec();
                proc = AuthProc::init(&plugin).map_err(|e| login(e.to_string()))?;
                let auth = Auth {
                    password: password.as_bytes(),
                    scramble: &nonce,
                };
                let data = plugin_step(&mut proc, &auth, &nonce, &plugin)?;
                conn.write(&data.unwrap_or_default()).await?;
            }
            Some(0x01) => {
                let more: AuthMoreData<'_> = ParseBuf(&reply)
                    .parse(())
                    .map_err(|e| login(e.to_string()))?;
                let auth = Auth {
                    password: password.as_bytes(),
                    scramble: &nonce,
                };
                if let Some(data) = plugin_step(&mut proc, &auth, more.data(), &plugin)? {
                    conn.write(&data).await?;
                }
            }
            _ => return Err(login("unexpected reply".into())),
        }
    }
}

/// Run a query whose result is one row of one column; its text value.
async fn select_one<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<'_, S>,
    query: &str,
) -> Result<String, MysqlError> {
    let mut q = vec![COM_QUERY];
    q.extend_from_slice(query.as_bytes());
    conn.command(&q).await?;
    let count = conn.read().await?;
    if count.first() == Some(&0xff) {
        return Err(MysqlError::Query(server_error(&count)));
    }
    let _column = conn.read().await?;
    let mut row = conn.read().await?;
    if row.first() == Some(&0xfe) && row.len() < 9 {
        row = conn.read().await?; // the EOF after the column definitions
    }
    let value: RawBytes<'_, LenEnc> = ParseBuf(&row)
        .parse(())
        .map_err(|e| MysqlError::Query(format!("row: {e}")))?;
    Ok(String::from_utf8_lossy(value.as_bytes()).to_string())
}

#[cfg(test)]
mod tests {
    use mysql_common::auth::plugins::{
        caching_sha2_password::scramble_sha256, mysql_native_password::scramble_native,
    };
    use tokio::io::duplex;

    use super::*;

    const NONCE: &[u8; 20] = b"abcdefghijklmnopqrst";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Known answers, computed independently with Python's hashlib for the
    /// same inputs:
    /// native:  SHA1(p) XOR SHA1(nonce + SHA1(SHA1(p)))
    /// sha2:    SHA256(p) XOR SHA256(SHA256(SHA256(p)) + nonce)
    #[test]
    fn scrambles_match_known_answers() {
        assert_eq!(
            hex(&scramble_native(NONCE, b"secret").unwrap()),
            "8817c50fa779daef010ee7577825b0847df9842e"
        );
        assert_eq!(
            hex(&scramble_sha256(NONCE, b"secret").unwrap()),
            KNOWN_SHA2_SCRAMBLE
        );
    }

    const KNOWN_SHA2_SCRAMBLE: &str =
        "c76e2898612a4cf042c77fa8c4702c4c64c0c2c557c53c4d75595aaa6abae809";

    /// The greeting of a MySQL 8 server that wants `caching_sha2_password`.
    fn greeting(plugin: &[u8]) -> Vec<u8> {
        let mut g = vec![0x0a];
        g.extend_from_slice(b"8.0.36\0");
        g.extend_from_slice(&7u32.to_le_bytes());
        g.extend_from_slice(&NONCE[..8]);
        g.push(0);
        let caps = capabilities() | CapabilityFlags::CLIENT_PLUGIN_AUTH;
        g.extend_from_slice(&(caps.bits() as u16).to_le_bytes());
        g.push(255);
        g.extend_from_slice(&2u16.to_le_bytes());
        g.extend_from_slice(&((caps.bits() >> 16) as u16).to_le_bytes());
        g.push(21);
        g.extend_from_slice(&[0; 10]);
        g.extend_from_slice(&NONCE[8..]);
        g.push(0);
        g.extend_from_slice(plugin);
        g.push(0);
        g
    }

    /// A fake server on the other end of `server`: reads a packet.
    async fn recv<S: AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        (head[3], body)
    }

    async fn send<S: AsyncWrite + Unpin>(s: &mut S, seq: u8, body: &[u8]) {
        let len = (body.len() as u32).to_le_bytes();
        s.write_all(&[len[0], len[1], len[2], seq]).await.unwrap();
        s.write_all(body).await.unwrap();
    }

    /// The result set of `SELECT @@global.read_only` with `value`.
    async fn send_result<S: AsyncWrite + Unpin>(s: &mut S, value: &str) {
        send(s, 1, &[1]).await;
        send(
            s,
            2,
            b"\x03def\0\0\0\x12@@global.read_only\0\x0c\x3f\0\x01\0\0\0\x08\x80\0\0\0\0",
        )
        .await;
        send(s, 3, &[0xfe, 0, 0, 2, 0]).await;
        let mut row = vec![value.len() as u8];
        row.extend_from_slice(value.as_bytes());
        send(s, 4, &row).await;
        send(s, 5, &[0xfe, 0, 0, 2, 0]).await;
    }

    fn role_check() -> CheckConfig {
        toml::from_str(
            "kind = \"mysql\"\nmysql_role = \"read_only\"\nmysql_user = \"xdplb_check\"\nmysql_password = \"secret\"",
        )
        .unwrap()
    }

    /// MySQL 8, password cached: the client's first answer must be the
    /// known SHA-256 scramble; the server says "fast auth success", OK.
    #[test]
    fn caching_sha2_fast_path_against_a_mysql8_server() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, mut server) = duplex(4096);
            let fake = async move {
                send(&mut server, 0, &greeting(b"caching_sha2_password")).await;
                let (seq, resp) = recv(&mut server).await;
                assert_eq!(seq, 1);
                // The scramble sits after caps (4), max packet (4), charset
                // (1), filler (23), user, NUL, length byte.
                let user_end = 32 + resp[32..].iter().position(|b| *b == 0).unwrap();
                assert_eq!(&resp[32..user_end], b"xdplb_check");
                let len = resp[user_end + 1] as usize;
                let scramble = &resp[user_end + 2..user_end + 2 + len];
                assert_eq!(hex(scramble), KNOWN_SHA2_SCRAMBLE);
                assert!(resp.ends_with(b"caching_sha2_password\0"));
                send(&mut server, 2, &[0x01, 0x03]).await; // fast auth success
                send(&mut server, 3, &[0x00, 0, 0, 2, 0, 0, 0]).await; // OK
                let (_, q) = recv(&mut server).await;
                assert_eq!(q, b"\x03SELECT @@global.read_only");
                send_result(&mut server, "1").await;
            };
            let spec = role_check();
            let (r, ()) = tokio::join!(check(&mut client, &spec), fake);
            r.expect("logged in and found a replica");
        });
    }

    /// MySQL 8, password not cached, plain TCP: the client asks for the
    /// server's RSA key and sends the password XOR the nonce encrypted with
    /// it (OAEP), which the server decrypts with its private key.
    #[test]
    fn caching_sha2_full_authentication_with_the_servers_rsa_key() {
        use rsa::{Oaep, RsaPrivateKey, pkcs8::EncodePublicKey};
        let mut rng = rand::thread_rng();
        let key = RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let pem = key
            .to_public_key()
            .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, mut server) = duplex(8192);
            let fake = async move {
                send(&mut server, 0, &greeting(b"caching_sha2_password")).await;
                let _ = recv(&mut server).await;
                send(&mut server, 2, &[0x01, 0x04]).await; // perform full auth
                let (seq, ask) = recv(&mut server).await;
                assert_eq!((seq, ask.as_slice()), (3, &[0x02][..]), "asks for the key");
                let mut more = vec![0x01];
                more.extend_from_slice(pem.as_bytes());
                send(&mut server, 4, &more).await;
                let (_, encrypted) = recv(&mut server).await;
                let clear = key.decrypt(Oaep::new::<sha1::Sha1>(), &encrypted).unwrap();
                let mut want: Vec<u8> = b"secret\0".to_vec();
                for (i, b) in want.iter_mut().enumerate() {
                    *b ^= NONCE[i % NONCE.len()];
                }
                assert_eq!(clear, want, "password XOR nonce, NUL-terminated");
                send(&mut server, 6, &[0x00, 0, 0, 2, 0, 0, 0]).await;
                let _ = recv(&mut server).await;
                send_result(&mut server, "0").await;
            };
            let spec = role_check();
            let (r, ()) = tokio::join!(check(&mut client, &spec), fake);
            assert_eq!(
                r.map_err(|e| e.to_string()),
                Err("server is read-write (the primary)".into())
            );
        });
    }

    /// MariaDB greets with mysql_native_password; a server that refuses
    /// (too many connections) greets with an error packet.
    #[test]
    fn native_password_and_refusing_servers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, mut server) = duplex(4096);
            let fake = async move {
                send(&mut server, 0, &greeting(b"mysql_native_password")).await;
                let (_, resp) = recv(&mut server).await;
                let scramble = scramble_native(NONCE, b"secret").unwrap();
                assert!(
                    resp.windows(20).any(|w| w == scramble),
                    "native scramble in the response"
                );
                send(&mut server, 2, &[0x00, 0, 0, 2, 0, 0, 0]).await;
                let _ = recv(&mut server).await;
                send_result(&mut server, "ON").await;
            };
            let spec = role_check();
            let (r, ()) = tokio::join!(check(&mut client, &spec), fake);
            r.expect("read-only: a replica");

            let (mut client, mut server) = duplex(4096);
            let mut e = vec![0xff];
            e.extend_from_slice(&1040u16.to_le_bytes());
            e.extend_from_slice(b"#08004Too many connections");
            send(&mut server, 0, &e).await;
            let err = check(&mut client, &role_check())
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("1040") && err.contains("Too many connections"),
                "{err}"
            );
        });
    }
}
