//! Replay protection per peer. A node acts on a peer's messages only from
//! the one epoch it has *verified*: the peer answered a fresh nonce of this
//! node's from it (`Challenge`/`Response`, issue 20). Within that epoch each
//! sequence number is accepted once (a 64-message window tolerates
//! reordering on the wire); a message of any other epoch, higher or lower,
//! changes nothing and makes the node challenge the peer again. So
//!
//! - a peer that restarts (a new epoch) is heard again after one round trip;
//! - a peer whose clock went back (a lower epoch) is too: nothing pins the
//!   epoch a node accepts to what it saw before;
//! - a recording, of any epoch, is never acted on: a response to an old
//!   nonce matches no challenge, and sequence numbers up to the verifying
//!   response count as seen.
//!
//! The state file keeps this node's own epoch (so the next one is larger)
//! and, for the record only, what each peer sent last: it is never trusted
//! on start, so a deleted, damaged or tampered file costs one handshake.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use super::wire::Reject;

const WINDOW: u64 = 64;

/// The most an epoch in the state file may lie ahead of the clock: more is
/// a clock that was wrong when it was written (or a damaged file), and
/// would hold the next epochs in the future.
pub const EPOCH_AHEAD_LIMIT_US: u64 = 10 * 60 * 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    /// The verified epoch.
    epoch: u64,
    /// Highest sequence number accepted in `epoch`.
    top: u64,
    /// Bit i: `top - i` was accepted (or predates the verification).
    bits: u64,
}

/// What was verified and accepted from each peer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayGuard {
    peers: BTreeMap<Ipv4Addr, Seen>,
}

impl ReplayGuard {
    /// Accept (`epoch`, `seq`) from `peer` once, or say why not. Only call
    /// it for authenticated messages. `UnverifiedEpoch` and `StaleEpoch`
    /// mean: challenge the peer.
    pub fn check(&mut self, peer: Ipv4Addr, epoch: u64, seq: u64) -> Result<(), Reject> {
        let Some(s) = self.peers.get_mut(&peer) else {
            return Err(Reject::UnverifiedEpoch);
        };
        if epoch < s.epoch {
            return Err(Reject::StaleEpoch);
        }
        if epoch > s.epoch {
            return Err(Reject::UnverifiedEpoch);
        }
        if seq > s.top {
            let shift = seq - s.top;
            s.bits = if shift >= WINDOW { 0 } else { s.bits << shift } | 1;
            s.top = seq;
            return Ok(());
        }
        let age = s.top - seq;
        if age >= WINDOW || s.bits & (1 << age) != 0 {
            return Err(Reject::Replay);
        }
        s.bits |= 1 << age;
        Ok(())
    }

    /// `peer` answered a fresh nonce from `epoch` with sequence `seq`: its
    /// messages of that epoch after `seq` are accepted from now on (those
    /// before it were sent unverified, and may be recordings).
    pub fn verify(&mut self, peer: Ipv4Addr, epoch: u64, seq: u64) {
        self.peers.insert(
            peer,
            Seen {
                epoch,
                top: seq,
                bits: u64::MAX,
            },
        );
    }

    /// The epoch verified for `peer`.
    pub fn epoch(&self, peer: Ipv4Addr) -> Option<u64> {
        self.peers.get(&peer).map(|s| s.epoch)
    }

    /// Lines `peer epoch top` (a record for operators; not read back).
    pub fn to_text(&self) -> String {
        self.peers
            .iter()
            .map(|(p, s)| format!("peer {p} {} {}\n", s.epoch, s.top))
            .collect()
    }
}

/// What the state file said, as far as it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// This node's epoch for this start.
    pub epoch: u64,
    /// What was wrong with the file, for a loud warning each.
    pub problems: Vec<String>,
}

/// This node's epoch for a new start from the state file's text (`None`:
/// no file): the wall clock in microseconds, but above the epoch the file
/// records (a clock set back must not reuse an epoch), unless that one is
/// more than [`EPOCH_AHEAD_LIMIT_US`] ahead of the clock. A file that is not
/// what [`save`] writes is reported and replaced.
pub fn load(text: Option<&str>, now_us: u64) -> Loaded {
    let mut problems = Vec::new();
    let Some(text) = text else {
        return Loaded {
            epoch: now_us,
            problems,
        };
    };
    let mut own = None;
    let mut foreign = 0usize;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f[..] {
            ["own", e] if own.is_none() => match e.parse::<u64>() {
                Ok(e) => own = Some(e),
                Err(_) => foreign += 1,
            },
            ["peer", a, e, t]
                if a.parse::<Ipv4Addr>().is_ok()
                    && e.parse::<u64>().is_ok()
                    && t.parse::<u64>().is_ok() => {}
            [] => {}
            _ => foreign += 1,
        }
    }
    if foreign > 0 || own.is_none() {
        problems.push(format!(
            "{foreign} line(s) xdplb does not write{}: the file was damaged or replaced; peers are verified by a handshake, so nothing recorded in it is trusted",
            if own.is_none() { ", no own epoch" } else { "" }
        ));
    }
    let mut epoch = now_us;
    if let Some(last) = own {
        if last > now_us.saturating_add(EPOCH_AHEAD_LIMIT_US) {
            problems.push(format!(
                "its own epoch {last} is {} s ahead of the clock: ignored (was the clock wrong?)",
                (last - now_us) / 1_000_000
            ));
        } else {
            epoch = now_us.max(last + 1);
        }
    }
    Loaded { epoch, problems }
}

/// Write the state file: our epoch and what each peer sent last.
pub fn save(path: &Path, own_epoch: u64, guard: &ReplayGuard) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("own {own_epoch}\n{}", guard.to_text()))?;
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn nothing_is_accepted_before_the_epoch_is_verified() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(P, 5, 10), Err(Reject::UnverifiedEpoch));
        g.verify(P, 5, 10);
        // Sent before the response: maybe a recording.
        assert_eq!(g.check(P, 5, 9), Err(Reject::Replay));
        assert_eq!(g.check(P, 5, 10), Err(Reject::Replay));
        assert_eq!(g.check(P, 5, 12), Ok(()));
        assert_eq!(g.check(P, 5, 12), Err(Reject::Replay));
        // Reordered but new: accepted once.
        assert_eq!(g.check(P, 5, 11), Ok(()));
        assert_eq!(g.check(P, 5, 11), Err(Reject::Replay));
        // Far behind the window.
        assert_eq!(g.check(P, 5, 200), Ok(()));
        assert_eq!(g.check(P, 5, 100), Err(Reject::Replay));
        // Another boot of the peer, older or newer: not until verified.
        assert_eq!(g.check(P, 4, 1000), Err(Reject::StaleEpoch));
        assert_eq!(g.check(P, 6, 1), Err(Reject::UnverifiedEpoch));
        g.verify(P, 6, 1);
        assert_eq!(g.check(P, 6, 2), Ok(()));
        assert_eq!(g.check(P, 5, 201), Err(Reject::StaleEpoch));
        // A peer whose clock went back: a lower epoch, verified, is its
        // epoch now.
        g.verify(P, 3, 40);
        assert_eq!(g.check(P, 3, 41), Ok(()));
        assert_eq!(g.check(P, 6, 3), Err(Reject::UnverifiedEpoch));
        assert_eq!(g.epoch(P), Some(3));
    }

    #[test]
    fn the_state_file_keeps_epochs_growing_and_is_never_trusted_for_peers() {
        let mut g = ReplayGuard::default();
        g.verify(P, 9, 30);
        let text = format!("own 77\n{}", g.to_text());
        let l = load(Some(&text), 50);
        assert_eq!(
            l,
            Loaded {
                epoch: 78,
                problems: vec![]
            },
            "the clock went back"
        );
        assert_eq!(load(Some(&text), 500).epoch, 500);
        assert_eq!(
            load(None, 500),
            Loaded {
                epoch: 500,
                problems: vec![]
            }
        );
        // An own epoch a day ahead of the clock is not followed.
        let day = 86_400_000_000u64;
        let now = 1_800_000_000_000_000u64;
        let l = load(Some(&format!("own {}\n", now + day)), now);
        assert_eq!(l.epoch, now);
        assert_eq!(l.problems.len(), 1, "{:?}", l.problems);
        // Within the limit it is (the clock may have been stepped back).
        assert_eq!(
            load(Some(&format!("own {}\n", now + 1000)), now).epoch,
            now + 1001
        );
        // Garbage is reported, and the clock gives the epoch.
        for bad in [
            "\u{0}\u{1}garbage",
            "own x\n",
            "peer 10.0.0.2 9\n",
            "own 5\nwho knows\n",
        ] {
            let l = load(Some(bad), now);
            assert_eq!(l.epoch, now, "{bad:?}");
            assert_eq!(l.problems.len(), 1, "{bad:?}: {:?}", l.problems);
        }
        assert!(
            load(Some(""), now).problems.len() == 1,
            "an empty file has no own epoch"
        );
    }
}
