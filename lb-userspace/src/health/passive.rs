//! Passive health: the data path counts, per backend, client SYNs
//! retransmitted (same ISN) on connections pinned to it (the backend is not
//! completing handshakes) and, for NAT, the connections it refused (RST
//! answering the SYN). A backend whose counts grow by a threshold within one
//! window stops taking new connections at once, ahead of the active check
//! (its established flows stay); the active check's `rise` brings it back.
//!
//! Pure: the caller passes the counter totals and the time.

use std::time::Duration;

use crate::config::PassiveConfig;

/// Counter totals at the start of the current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: Duration,
    syn_retransmits: u64,
    refused: u64,
}

impl Window {
    pub fn new(now: Duration, syn_retransmits: u64, refused: u64) -> Self {
        Self {
            start: now,
            syn_retransmits,
            refused,
        }
    }

    /// Feed the current totals. Returns why the backend should go down if a
    /// threshold was reached in this window; a finished window starts anew.
    pub fn observe(
        &mut self,
        now: Duration,
        syn_retransmits: u64,
        refused: u64,
        cfg: &PassiveConfig,
    ) -> Option<String> {
        // Counters only grow; a smaller value means the maps were recreated.
        let syn = syn_retransmits.saturating_sub(self.syn_retransmits);
        let rst = refused.saturating_sub(self.refused);
        let tripped = if cfg.syn_retransmits > 0 && syn >= cfg.syn_retransmits {
            Some(format!(
                "{syn} client SYN retransmissions within {} ms (threshold {})",
                cfg.window_ms, cfg.syn_retransmits
            ))
        } else if cfg.refused > 0 && rst >= cfg.refused {
            Some(format!(
                "{rst} connections refused by the backend within {} ms (threshold {})",
                cfg.window_ms, cfg.refused
            ))
        } else {
            None
        };
        if tripped.is_some()
            || now.saturating_sub(self.start) >= Duration::from_millis(cfg.window_ms)
        {
            *self = Window::new(now, syn_retransmits, refused);
        }
        tripped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(syn: u64, rst: u64) -> PassiveConfig {
        PassiveConfig {
            syn_retransmits: syn,
            refused: rst,
            window_ms: 1000,
            max_out_percent: 50,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn threshold_within_one_window_trips() {
        let c = cfg(3, 0);
        let mut w = Window::new(ms(0), 10, 0);
        assert_eq!(w.observe(ms(300), 11, 0, &c), None);
        assert_eq!(w.observe(ms(600), 12, 0, &c), None);
        let why = w.observe(ms(900), 13, 0, &c).expect("3 within 1 s");
        assert!(why.contains("3 client SYN"), "{why}");
        // The window restarted at the trip: no double count.
        assert_eq!(w.observe(ms(1000), 13, 0, &c), None);
    }

    #[test]
    fn the_same_count_spread_over_windows_does_not() {
        let c = cfg(3, 0);
        let mut w = Window::new(ms(0), 0, 0);
        assert_eq!(w.observe(ms(500), 2, 0, &c), None);
        assert_eq!(w.observe(ms(1000), 2, 0, &c), None); // window ends: base 2
        assert_eq!(w.observe(ms(1500), 4, 0, &c), None);
        assert_eq!(w.observe(ms(2000), 4, 0, &c), None);
    }

    #[test]
    fn refused_and_disabled_signals() {
        let mut w = Window::new(ms(0), 0, 0);
        assert!(
            w.observe(ms(100), 0, 5, &cfg(0, 5))
                .unwrap()
                .contains("refused")
        );
        let mut w = Window::new(ms(0), 0, 0);
        assert_eq!(w.observe(ms(100), 100, 100, &cfg(0, 0)), None);
        // Recreated maps (counters went back to 0) do not underflow.
        let mut w = Window::new(ms(0), 50, 50);
        assert_eq!(w.observe(ms(100), 0, 0, &cfg(1, 1)), None);
    }
}
