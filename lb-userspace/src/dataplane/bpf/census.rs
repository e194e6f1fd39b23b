//! The flow-table census: entries per backend, counted off the hot path.

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
use lb_common::{FlowKey, FlowValue, names};

use super::{BpfError, dup_fd, walk};

/// Counts flow-table entries per backend in a background thread, because a
/// walk of a large LRU table takes one syscall per entry and must not stall
/// health checks. Entries are flows the table still holds (idle ones stay
/// until the LRU evicts them), so this is "flows pinned", not "open TCP
/// connections".
pub struct FlowCensus {
    counts: Arc<Mutex<BTreeMap<u32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl FlowCensus {
    /// Walk the table every `period`, or less often if a walk takes longer
    /// than a ninth of it.
    pub fn start(ebpf: &mut Ebpf, period: Duration) -> Result<Self, BpfError> {
        // A descriptor of its own: the HA node walks the table too.
        let flows = dup_fd(ebpf, names::FLOWS)?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::Builder::new()
            .name("flow-census".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let began = std::time::Instant::now();
                    let mut per_backend = BTreeMap::new();
                    // Bounded: a walk that loses its place restarts, so stop
                    // after twice the largest table.
                    let walked =
                        walk::walk(flows.as_fd(), 2 * (1 << 24), |_: FlowKey, v: FlowValue| {
                            *per_backend.entry(v.backend_id).or_insert(0u64) += 1;
                            true
                        });
                    if let Err(e) = walked {
                        tracing::warn!(error = %e, "flow census walk");
                    }
                    if let Ok(mut g) = c.lock() {
                        *g = per_backend;
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

    /// Entries per backend id at the last walk.
    pub fn counts(&self) -> BTreeMap<u32, u64> {
        self.counts.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for FlowCensus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
