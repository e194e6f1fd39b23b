//! The flow-table census: entries per backend, counted off the hot path,
//! and least_conn's drift correction: each backend's active-connection
//! estimate (`BACKEND_CONNS`, kept by the data path from SYNs, FINs and
//! RSTs) is reset to the open counted connections the walk found, since
//! flows evicted from the table or silently dead never close.

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
use lb_common::{FLOW_F_CLOSING, FLOW_F_COUNTED, FlowKey, FlowValue, MAX_BACKENDS, names};

use super::{BpfError, dup_fd, mapped::Mapped, walk};

/// What the last walk found.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Flow-table entries by backend id.
    pub flows: BTreeMap<u32, u64>,
    /// least_conn: the corrected active-connection estimate by backend id
    /// (backends with counted connections only).
    pub active: BTreeMap<u32, u64>,
}

/// Counts flow-table entries per backend in a background thread, because a
/// walk of a large LRU table takes one syscall per entry and must not stall
/// health checks. Entries are flows the table still holds (idle ones stay
/// until the LRU evicts them), so this is "flows pinned", not "open TCP
/// connections".
pub struct FlowCensus {
    counts: Arc<Mutex<Census>>,
    stop: Arc<AtomicBool>,
}

/// Set each estimate to the open counted connections the walk found plus
/// what the data path added while it walked (`before`: the estimates when
/// the walk began), by atomic adds, so no concurrent update is lost.
/// Returns the corrected estimates that are not zero.
fn correct(conns: &Mapped, before: &[u64], open: &BTreeMap<u32, u64>) -> BTreeMap<u32, u64> {
    let mut active = BTreeMap::new();
    for (i, b) in before.iter().enumerate() {
        let found = open.get(&(i as u32)).copied().unwrap_or(0);
        let Some(a) = conns.atomic(i) else { break };
        if *b != found {
            a.fetch_add(found.wrapping_sub(*b), Ordering::Relaxed);
        }
        let now = a.load(Ordering::Relaxed);
        if now != 0 {
            active.insert(i as u32, if (now as i64) < 0 { 0 } else { now });
        }
    }
    active
}

impl FlowCensus {
    /// Walk the table every `period`, or less often if a walk takes longer
    /// than a ninth of it.
    pub fn start(ebpf: &mut Ebpf, period: Duration) -> Result<Self, BpfError> {
        // A descriptor of its own: the HA node walks the table too.
        let flows = dup_fd(ebpf, names::FLOWS)?;
        let conns_fd = dup_fd(ebpf, names::BACKEND_CONNS)?;
        let mut conns = Mapped::new(conns_fd.as_fd(), MAX_BACKENDS as usize)?;
        let counts = Arc::new(Mutex::new(Census::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::Builder::new()
            .name("flow-census".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let began = std::time::Instant::now();
                    let before = conns.slice().to_vec();
                    let mut per_backend = BTreeMap::new();
                    let mut open = BTreeMap::new();
                    // Bounded: a walk that loses its place restarts, so stop
                    // after twice the largest table.
                    let walked =
                        walk::walk(flows.as_fd(), 2 * (1 << 24), |_: FlowKey, v: FlowValue| {
                            *per_backend.entry(v.backend_id).or_insert(0u64) += 1;
                            if v.flags & (FLOW_F_COUNTED | FLOW_F_CLOSING) == FLOW_F_COUNTED {
                                *open.entry(v.backend_id).or_insert(0u64) += 1;
                            }
                            true
                        });
                    let active = match walked {
                        Ok(_) => correct(&conns, &before, &open),
                        Err(e) => {
                            // A failed walk corrects nothing.
                            tracing::warn!(error = %e, "flow census walk");
                            correct(&conns, &before, &before_as_open(&before))
                        }
                    };
                    if let Ok(mut g) = c.lock() {
                        *g = Census {
                            flows: per_backend,
                            active,
                        };
                    }
                    // At most a tenth of one CPU, however large the table.
                    let pause = period.max(began.elapsed() * 9);
                    let mut slept = Duration::ZERO;
                    while slept < pause && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            })
            .map_err(BpfError::Thread)?;
        Ok(Self { counts, stop })
    }

    /// What the last walk found.
    pub fn counts(&self) -> Census {
        self.counts.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// The estimates as they were (a correction that changes nothing).
fn before_as_open(before: &[u64]) -> BTreeMap<u32, u64> {
    before
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0)
        .map(|(i, v)| (i as u32, *v))
        .collect()
}

impl Drop for FlowCensus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
