//! Events a peer or a fault can repeat thousands of times a second (a
//! refused peer, a probe that cannot run, an accept that fails): counted
//! every time, logged at most once a second with how many there were.

use std::time::{Duration, Instant};

/// A count and when it was last logged.
#[derive(Debug, Default)]
pub struct Throttled {
    pub total: u64,
    unlogged: u64,
    last_log: Option<Instant>,
}

impl Throttled {
    /// Count one; `Some(n)` when it is time to log (n since the last log).
    pub fn note(&mut self) -> Option<u64> {
        self.total += 1;
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_all_logs_once_a_second() {
        let mut t = Throttled::default();
        assert_eq!(t.note(), Some(1), "the first is logged");
        for _ in 0..999 {
            assert_eq!(t.note(), None);
        }
        assert_eq!(t.total, 1000);
    }
}
