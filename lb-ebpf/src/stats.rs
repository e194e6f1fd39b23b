//! Per-CPU counters: verdict reasons, per-service and per-backend traffic.

use lb_common::Reason;

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u64) {
    for t in [
        SERVICE_STATS.get_ptr_mut(service_id),
        BACKEND_STATS.get_ptr_mut(backend_id),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    for t in [
        SERVICE_STATS.get_ptr_mut(service_id),
        BACKEND_STATS.get_ptr_mut(backend_id),
    ]
    .into_iter()
    .flatten()
    {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { (*t).new_flows += 1 };
    }
}
