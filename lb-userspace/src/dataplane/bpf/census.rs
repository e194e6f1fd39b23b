//! The flow-table census: entries per backend, counted off the hot path,
//! and least_conn's drift correction: each backend's active-connection
//! estimate (`BACKEND_CONNS`, kept by the data path from SYNs, FINs and
//! RSTs) is brought to the open counted connections the walks find, since
//! flows evicted from the table or silently dead never close. A walk is
//! not an instant: a connection opened or closed while it walks can be
//! seen on the wrong side of it, so one walk's difference may be noise. Only
//! the part two walks in a row agree on is corrected (a real drift stays;
//! a race does not repeat), so a drift is gone within two periods.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use std::os::fd::AsFd as _;

use aya::Ebpf;
use lb_common::{
    FLOW_F_CLOSING, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FLOW_F_SYN, FlowKey, FlowValue,
    MAX_BACKENDS, names,
};

use super::{error::BpfError, handles::dup_fd, mapped::Mapped, walk};

/// What the last walk found.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Flow-table entries by backend id.
    pub flows: BTreeMap<u32, u64>,
    /// Half-open connections (in `EMBRYOS`, or in `FLOWS` with a SYN and no
    /// ACK yet) by backend id; `flows` counts the rest.
    pub half_open: BTreeMap<u32, u64>,
    /// least_conn: the active-connection estimate by backend id, as the
    /// data path has it now (non-zero ones only).
    pub active: BTreeMap<u32, u64>,
}

/// Counts flow-table entries per backend in a background thread, because a
/// walk of a large LRU table is long (batched, ~0.2 s of CPU for 1M entries:
/// `cargo xtask bench`) and must not stall health checks. Entries are flows the table still holds (idle ones stay
/// until the LRU evicts them), so this is "flows pinned", not "open TCP
/// connections".
pub struct FlowCensus {
    counts: Arc<Mutex<Walked>>,
    /// `BACKEND_CONNS`, mapped: read live, corrected by the walk.
    conns: Arc<Mapped>,
    stop: Arc<AtomicBool>,
}

/// Entries by backend id of the two tables, from the last walk.
#[derive(Debug, Clone, Default)]
struct Walked {
    flows: BTreeMap<u32, u64>,
    half_open: BTreeMap<u32, u64>,
}

/// The non-zero estimates as they are now (negative ones as 0).
fn estimates(conns: &Mapped) -> BTreeMap<u32, u64> {
    (0..conns.len())
        .filter_map(|i| {
            let v = conns.atomic(i)?.load(Ordering::Relaxed);
            (v != 0).then_some((i as u32, if (v as i64) < 0 { 0 } else { v }))
        })
        .collect()
}

/// What to correct now, and what to remember for the next walk, from this
/// walk's difference (`found - estimate`) and the part of the last walk's
/// difference that was not corrected: the overlap of the two, if they
/// point the same way.
fn agreed(now: i64, last: i64) -> (i64, i64) {
    let apply = if now > 0 && last > 0 {
        now.min(last)
    } else if now < 0 && last < 0 {
        now.max(last)
    } else {
        0
    };
    (apply, now - apply)
}

/// Correct each estimate by what this walk and the last agree it is off
/// (`before`: the estimates when this walk began; `open`: the open counted
/// connections it found; `last`: the uncorrected differences of the last
/// walk, updated), by atomic adds, so no concurrent update is lost.
fn correct(conns: &Mapped, before: &[u64], open: &BTreeMap<u32, u64>, last: &mut [i64]) {
    for (i, b) in before.iter().enumerate() {
        let found = open.get(&(i as u32)).copied().unwrap_or(0);
        let Some(a) = conns.atomic(i) else { break };
        let (apply, rest) = agreed(found.wrapping_sub(*b) as i64, last[i]);
        last[i] = rest;
        if apply != 0 {
            a.fetch_add(apply as u64, Ordering::Relaxed);
        }
    }
}

impl FlowCensus {
    /// Walk the table every `period`, or less often if a walk takes longer
    /// than a 199th of it: at most 0.5% of a CPU however large the table
    /// (issue 21: the daemon's own cost under load), so a 1M-entry table is
    /// counted about every 20 s, a table of a few thousand every `period`.
    pub fn start(ebpf: &mut Ebpf, period: Duration) -> Result<Self, BpfError> {
        // A descriptor of its own: the HA node walks the table too.
        let flows = dup_fd(ebpf, names::FLOWS)?;
        let embryos = dup_fd(ebpf, names::EMBRYOS)?;
        let conns_fd = dup_fd(ebpf, names::BACKEND_CONNS)?;
        let conns = Arc::new(Mapped::new(conns_fd.as_fd(), MAX_BACKENDS as usize)?);
        let counts = Arc::new(Mutex::new(Walked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s, mapped) = (counts.clone(), stop.clone(), conns.clone());
        std::thread::Builder::new()
            .name("flow-census".into())
            .spawn(move || {
                let mut last = vec![0i64; mapped.len()];
                while !s.load(Ordering::Relaxed) {
                    let began = std::time::Instant::now();
                    let before: Vec<u64> = (0..mapped.len())
                        .map(|i| mapped.atomic(i).map_or(0, |a| a.load(Ordering::Relaxed)))
                        .collect();
                    let mut found = Walked::default();
                    let mut open = BTreeMap::new();
                    // Both tables: least_conn counts a connection from its
                    // SYN, while it is still half-open.
                    let mut walked = Ok(0);
                    // A connection still in its handshake counts as
                    // half-open in either table (`FLOWS` holds them while
                    // the data path's half-open budget lasts).
                    let Walked {
                        flows: in_flows,
                        half_open,
                    } = &mut found;
                    for fd in [&flows, &embryos] {
                        // Bounded: twice the largest table (an entry-by-entry
                        // walk, on a kernel without batches, may restart).
                        let w =
                            walk::walk(fd.as_fd(), 2 * (1 << 24), |_: FlowKey, v: FlowValue| {
                                let per_backend = if std::ptr::eq(fd, &embryos)
                                    || v.flags & (FLOW_F_SYN | FLOW_F_ESTABLISHED) == FLOW_F_SYN
                                {
                                    &mut *half_open
                                } else {
                                    &mut *in_flows
                                };
                                *per_backend.entry(v.backend_id).or_insert(0u64) += 1;
                                if v.flags & (FLOW_F_COUNTED | FLOW_F_CLOSING) == FLOW_F_COUNTED {
                                    *open.entry(v.backend_id).or_insert(0u64) += 1;
                                }
                                true
                            });
                        walked = walked.and(w);
                    }
                    match walked {
                        Ok(_) => correct(&mapped, &before, &open, &mut last),
                        // A failed walk corrects nothing.
                        Err(e) => tracing::warn!(error = %e, "flow census walk"),
                    }
                    if let Ok(mut g) = c.lock() {
                        *g = found;
                    }
                    // At most 0.5% of one CPU, however large the table
                    // (the daemon's whole cost under load stays below a
                    // hundredth of a core: issue 21).
                    let pause = period.max(began.elapsed() * 199);
                    let mut slept = Duration::ZERO;
                    while slept < pause && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            })
            .map_err(BpfError::Thread)?;
        Ok(Self {
            counts,
            conns,
            stop,
        })
    }

    /// Flow-table entries from the last walk, and the estimates as they
    /// are now.
    pub fn counts(&self) -> Census {
        let walked = self.counts.lock().map(|g| g.clone()).unwrap_or_default();
        Census {
            flows: walked.flows,
            half_open: walked.half_open,
            active: estimates(&self.conns),
        }
    }
}

impl Drop for FlowCensus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::agreed;

    /// A drift (estimate 3 too high: evicted flows that never closed) is
    /// corrected once two walks saw it; a race seen by one walk only (a
    /// connection opened while the walk passed) is not; a drift found while
    /// some of it was noise is corrected by what repeats.
    #[test]
    fn only_what_two_walks_agree_on_is_corrected() {
        let walks = |diffs: &[i64]| {
            let mut last = 0;
            diffs
                .iter()
                .map(|d| {
                    let (apply, rest) = agreed(*d, last);
                    last = rest;
                    apply
                })
                .collect::<Vec<_>>()
        };
        // The estimate is 3 too high: walk 1 sees it, walk 2 corrects it,
        // walk 3 finds nothing left.
        assert_eq!(walks(&[-3, -3, 0]), [0, -3, 0]);
        // One walk raced a new connection: nothing is corrected.
        assert_eq!(walks(&[1, 0, 0]), [0, 0, 0]);
        assert_eq!(walks(&[0, -1, 0, 1, 0]), [0, 0, 0, 0, 0]);
        // Opposite signs never agree.
        assert_eq!(walks(&[2, -2, 2, -2]), [0, 0, 0, 0]);
        // 2 too low for good, plus a race of 1 in the first walk: 2 now,
        // the race's 1 not.
        assert_eq!(walks(&[3, 2, 0]), [0, 2, 0]);
    }
}
