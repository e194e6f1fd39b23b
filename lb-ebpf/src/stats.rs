//! Per-CPU counters: verdict reasons, per-service and per-backend traffic.
//!
//! Each map value is checked for null on its own: combining the checks lets
//! LLVM merge them into pointer arithmetic the verifier rejects.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{Reason, Traffic};

use crate::maps::{BACKEND_STATS, REASONS, SERVICE_STATS};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add(map: &PerCpuArray<Traffic>, id: u32, packets: u64, bytes: u64, new_flows: u64) {
    if let Some(t) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*t).packets += packets;
            (*t).bytes += bytes;
            (*t).new_flows += new_flows;
        }
    }
}

#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u64) {
    add(&SERVICE_STATS, service_id, 1, bytes, 0);
    add(&BACKEND_STATS, backend_id, 1, bytes, 0);
}

#[inline(always)]
pub fn count_new_flow(service_id: u32, backend_id: u32) {
    add(&SERVICE_STATS, service_id, 0, 0, 1);
    add(&BACKEND_STATS, backend_id, 0, 0, 1);
}
