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

/// One update per map per packet: counts the packet and, if `new_flow`, the flow.
#[inline(always)]
fn add(map: &PerCpuArray<Traffic>, id: u32, bytes: u64, new_flow: bool) {
    if let Some(t) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*t).packets += 1;
            (*t).bytes += bytes;
            (*t).new_flows += new_flow as u64;
        }
    }
}

#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, bytes: u64, new_flow: bool) {
    add(&SERVICE_STATS, service_id, bytes, new_flow);
    add(&BACKEND_STATS, backend_id, bytes, new_flow);
}
