//! The data path's half-open budget and embryo gate, kept by the daemon
//! every second (issue 21: one insert per connection).
//!
//! A new TCP connection starts in `FLOWS` while the budget lasts
//! (`lb_common::half_open_budget` SYNs beyond those that completed, all
//! CPUs together) and is completed there in place by the client's ACK;
//! SYNs beyond it (a flood) go to `EMBRYOS`. Each tick gives the budget
//! back whole, so a flood leaks at most the budget a second into the flow
//! table, and closes `EMBRYO_GATE` once no entry went to `EMBRYOS` for
//! `EMBRYO_GATE_HOLD_NS` (new SYNs then skip that lookup).

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{EMBRYO_GATE_HOLD_NS, EmbryoGate, names};
use tracing::{info, warn};

use super::{error::BpfError, handles::again};

pub struct HalfOpen {
    spent: Array<MapData, u64>,
    gate: Array<MapData, EmbryoGate>,
    /// The gate was open at the last tick (a change is logged).
    was_open: bool,
}

/// The `retired_ns` to write so the gate closes, if it is open and its last
/// stamp is older than the hold time at `now_ns` (CLOCK_MONOTONIC).
pub fn gate_to_retire(gate: EmbryoGate, now_ns: u64) -> Option<u64> {
    (gate.used_ns > gate.retired_ns && now_ns.saturating_sub(gate.used_ns) > EMBRYO_GATE_HOLD_NS)
        .then_some(gate.used_ns)
}

impl HalfOpen {
    pub fn new(ebpf: &Ebpf) -> Result<HalfOpen, BpfError> {
        Ok(HalfOpen {
            spent: again(ebpf, names::HALF_OPEN_SPENT)?,
            gate: again(ebpf, names::EMBRYO_GATE)?,
            was_open: false,
        })
    }

    /// Give the budget back; close the gate if its hold has passed.
    pub fn tick(&mut self) {
        // (A data-path add at the same instant may be lost: one count.)
        if let Err(e) = self.spent.set(0, 0, 0) {
            warn!(error = %e, "half-open budget refill");
        }
        let Ok(gate) = self.gate.get(&0, 0) else {
            return;
        };
        let open = gate.used_ns > gate.retired_ns;
        if open && !self.was_open {
            info!(
                "entries in the embryonic table (SYNs beyond the half-open budget, pick-ups or SYN-cookie connections): SYNs look there too"
            );
        }
        self.was_open = open;
        if let Some(retired_ns) = gate_to_retire(gate, monotonic_ns()) {
            let closed = EmbryoGate {
                used_ns: gate.used_ns,
                retired_ns,
            };
            match self.gate.set(0, closed, 0) {
                Ok(()) => info!(
                    "no entry went to the embryonic table for 75 s: SYNs no longer look there"
                ),
                Err(e) => warn!(error = %e, "closing the embryo gate"),
            }
        }
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills the struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_closed_gate_stays_closed() {
        let g = EmbryoGate::default();
        assert_eq!(gate_to_retire(g, 1000 * S), None);
        let g = EmbryoGate {
            used_ns: 5 * S,
            retired_ns: 5 * S,
        };
        assert_eq!(gate_to_retire(g, 1000 * S), None);
    }

    #[test]
    fn an_open_gate_closes_only_after_the_hold() {
        let g = EmbryoGate {
            used_ns: 100 * S,
            retired_ns: 0,
        };
        assert_eq!(gate_to_retire(g, 100 * S + EMBRYO_GATE_HOLD_NS), None);
        assert_eq!(
            gate_to_retire(g, 100 * S + EMBRYO_GATE_HOLD_NS + 1),
            Some(100 * S)
        );
        // A stamp newer than the daemon's clock reading (written between
        // the read and the check) does not close it.
        assert_eq!(gate_to_retire(g, 50 * S), None);
    }

    #[test]
    fn a_stamp_after_retirement_opens_it_again() {
        let g = EmbryoGate {
            used_ns: 300 * S,
            retired_ns: 100 * S,
        };
        assert!(g.used_ns > g.retired_ns);
        assert_eq!(gate_to_retire(g, 301 * S), None);
    }
}
