//! Replay protection per peer: a peer's boot epoch only grows, and within
//! an epoch each sequence number is accepted once (a 64-message window
//! tolerates reordering on the wire). What was last seen survives a
//! restart in the state file, so recordings made before it stay refused.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use super::wire::Reject;

const WINDOW: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    epoch: u64,
    /// Highest sequence number accepted in `epoch`.
    top: u64,
    /// Bit i: `top - i` was accepted.
    bits: u64,
}

/// What was accepted from each peer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayGuard {
    peers: BTreeMap<Ipv4Addr, Seen>,
}

impl ReplayGuard {
    /// Accept (`epoch`, `seq`) from `peer` once, or say why not. Only call
    /// it for authenticated messages.
    pub fn check(&mut self, peer: Ipv4Addr, epoch: u64, seq: u64) -> Result<(), Reject> {
        let s = self.peers.entry(peer).or_default();
        if epoch < s.epoch {
            return Err(Reject::StaleEpoch);
        }
        if epoch > s.epoch || s.bits == 0 {
            *s = Seen {
                epoch,
                top: seq,
                bits: 1,
            };
            return Ok(());
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

    /// The epoch last accepted from `peer`.
    pub fn epoch(&self, peer: Ipv4Addr) -> Option<u64> {
        self.peers.get(&peer).map(|s| s.epoch)
    }

    /// Lines `peer epoch top` (restored as "everything up to top seen").
    pub fn to_text(&self) -> String {
        self.peers
            .iter()
            .map(|(p, s)| format!("peer {p} {} {}\n", s.epoch, s.top))
            .collect()
    }

    pub fn from_text(text: &str) -> ReplayGuard {
        let mut g = ReplayGuard::default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let ["peer", addr, epoch, top] = f[..]
                && let (Ok(a), Ok(e), Ok(t)) = (addr.parse(), epoch.parse(), top.parse())
            {
                g.peers.insert(
                    a,
                    Seen {
                        epoch: e,
                        top: t,
                        bits: u64::MAX,
                    },
                );
            }
        }
        g
    }
}

/// This node's epoch for a new start: the wall clock in microseconds, but
/// never at or below the epoch recorded in the state file (a clock set back
/// must not make the peer take us for a replay).
pub fn next_epoch(state_text: &str, now_us: u64) -> u64 {
    let last = state_text
        .lines()
        .find_map(|l| l.strip_prefix("own ")?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    now_us.max(last + 1)
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
    fn each_sequence_number_once_and_epochs_only_grow() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(P, 5, 10), Ok(()));
        assert_eq!(g.check(P, 5, 10), Err(Reject::Replay));
        assert_eq!(g.check(P, 5, 12), Ok(()));
        // Reordered but new: accepted once.
        assert_eq!(g.check(P, 5, 11), Ok(()));
        assert_eq!(g.check(P, 5, 11), Err(Reject::Replay));
        // Far behind the window.
        assert_eq!(g.check(P, 5, 200), Ok(()));
        assert_eq!(g.check(P, 5, 100), Err(Reject::Replay));
        // An older boot of the peer.
        assert_eq!(g.check(P, 4, 1000), Err(Reject::StaleEpoch));
        // A newer boot starts over.
        assert_eq!(g.check(P, 6, 1), Ok(()));
        assert_eq!(g.check(P, 5, 201), Err(Reject::StaleEpoch));
    }

    #[test]
    fn what_was_seen_survives_a_restart() {
        let mut g = ReplayGuard::default();
        for seq in 1..=30 {
            g.check(P, 9, seq).unwrap();
        }
        let text = format!("own 77\n{}", g.to_text());
        let mut back = ReplayGuard::from_text(&text);
        assert_eq!(back.check(P, 9, 30), Err(Reject::Replay));
        assert_eq!(back.check(P, 9, 3), Err(Reject::Replay));
        assert_eq!(back.check(P, 8, 99), Err(Reject::StaleEpoch));
        assert_eq!(back.check(P, 9, 31), Ok(()));
        assert_eq!(next_epoch(&text, 50), 78, "the clock went back");
        assert_eq!(next_epoch(&text, 500), 500);
        assert_eq!(next_epoch("", 500), 500);
    }
}
