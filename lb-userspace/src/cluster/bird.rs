//! The local BIRD's BGP sessions, read through its control socket (the
//! line protocol `birdc` speaks: a greeting, a command, reply lines that
//! start with a four-digit code, `0000` at the end), so `status` and the
//! metrics say whether the routers hear this node's announcements.

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// How long BIRD has to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Reply lines read at most (a router with thousands of protocols is not
/// an LB node's BIRD).
const MAX_LINES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("{0}: unexpected reply {1:?}")]
    Protocol(String, String),
}

/// One BGP protocol of BIRD's.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BgpSession {
    pub name: String,
    /// BIRD's protocol state (`up`, `start`, `down`, ...).
    pub state: String,
    /// BGP's own (`Established`, `Active`, `Connect`, `Idle`, ...).
    pub info: String,
}

impl BgpSession {
    pub fn established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

/// The BGP protocols in a `show protocols` reply.
pub fn parse_protocols(reply: &str) -> Vec<BgpSession> {
    reply
        .lines()
        .filter_map(|l| {
            // "1002-name ..." starts the table, " name ..." continues it.
            let row = l.strip_prefix("1002-").or_else(|| l.strip_prefix(' '))?;
            let f: Vec<&str> = row.split_whitespace().collect();
            // name proto table state since [info...]
            if f.len() < 5 || f[1] != "BGP" {
                return None;
            }
            Some(BgpSession {
                name: f[0].to_string(),
                state: f[3].to_string(),
                info: f.get(5..).map(|i| i.join(" ")).unwrap_or_default(),
            })
        })
        .collect()
}

/// Ask the BIRD at `socket` for its BGP sessions.
pub async fn bgp_sessions(socket: &Path) -> Result<Vec<BgpSession>, BirdError> {
    let at = socket.display().to_string();
    tokio::time::timeout(TIMEOUT, async {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| BirdError::Io(at.clone(), e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .await
            .map_err(|e| BirdError::Io(at.clone(), e))?;
        if !line.starts_with("0001 ") {
            return Err(BirdError::Protocol(at.clone(), line));
        }
        reader
            .get_mut()
            .write_all(b"show protocols\n")
            .await
            .map_err(|e| BirdError::Io(at.clone(), e))?;
        let mut reply = String::new();
        for _ in 0..MAX_LINES {
            line.clear();
            let n = reader
                .read_line(&mut line)
                .await
                .map_err(|e| BirdError::Io(at.clone(), e))?;
            if n == 0 || line.starts_with("0000") {
                return Ok(parse_protocols(&reply));
            }
            if line.starts_with('8') || line.starts_with('9') {
                return Err(BirdError::Protocol(at.clone(), line.trim_end().to_string()));
            }
            reply.push_str(&line);
        }
        Err(BirdError::Protocol(at.clone(), "reply too long".into()))
    })
    .await
    .map_err(|_| BirdError::Timeout(socket.display().to_string(), TIMEOUT))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As BIRD 2.0.12 answered here.
    const REPLY: &str = "2002-Name       Proto      Table      State  Since         Info\n\
1002-device1    Device     ---        up     12:31:38.927  \n \
s1         Static     master4    up     12:31:38.927  \n \
upstream   BGP        ---        up     12:31:40.102  Established   \n \
backup     BGP        ---        start  12:31:38.927  Active        Socket: Connection refused\n";

    #[test]
    fn bgp_sessions_and_their_state_are_read_from_show_protocols() {
        let s = parse_protocols(REPLY);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[0].name, "upstream");
        assert!(s[0].established());
        assert_eq!(s[1].state, "start");
        assert_eq!(s[1].info, "Active Socket: Connection refused");
        assert!(!s[1].established());
        assert!(parse_protocols("0000 \n").is_empty());
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let e = bgp_sessions(Path::new("/nonexistent/bird.ctl"))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/bird.ctl: "), "{e}");
    }
}
