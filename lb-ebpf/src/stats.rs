//! Per-CPU counters: verdict reasons, per-service and per-backend traffic.
//!
//! Each map value is checked for null on its own: combining the checks lets
//! LLVM merge them into pointer arithmetic the verifier rejects.

use aya_ebpf::maps::PerCpuArray;
use lb_common::{Reason, Traffic};

use crate::{
    maps::{BACKEND_STATS, REASONS, SERVICE_STATS},
    sched::Choice,
};

#[inline(always)]
pub fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

/// One update per map per packet: traffic (`sent`: the frame's bytes, when
/// it went to the backend) and what the packet meant for its connection
/// (`syn_retransmit` is always false for the service map).
#[inline(always)]
fn add(map: &PerCpuArray<Traffic>, id: u32, sent: Option<u64>, c: &Choice, syn_retransmit: bool) {
    if let Some(t) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            if let Some(bytes) = sent {
                (*t).packets += 1;
                (*t).bytes += bytes;
            }
            (*t).connections += c.connection as u64;
            (*t).half_open_spilled += (c.connection && c.embryo) as u64;
            (*t).midstream += c.midstream as u64;
            (*t).syn_retransmits += syn_retransmit as u64;
        }
    }
}

#[inline(always)]
pub fn count_traffic(service_id: u32, backend_id: u32, sent: Option<u64>, c: &Choice) {
    add(&SERVICE_STATS, service_id, sent, c, false);
    add(&BACKEND_STATS, backend_id, sent, c, c.syn_retransmit);
}

/// A connection opened by a valid SYN-cookie ACK, for the service and the
/// backend it was scheduled to.
#[inline(always)]
pub fn count_cookie_connection(service_id: u32, backend_id: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { (*t).connections += 1 };
    }
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*t).connections += 1 };
    }
}

/// A packet for the service found no backend.
#[inline(always)]
pub fn count_no_backend(service_id: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { (*t).no_backend += 1 };
    }
}

/// A new connection of the service refused by a rate limit.
#[inline(always)]
pub fn count_rate_limited(service_id: u32) {
    if let Some(t) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { (*t).rate_limited += 1 };
    }
}

/// The backend refused a NAT connection; `redispatched`: its RST was withheld.
#[inline(always)]
pub fn count_refused(backend_id: u32, redispatched: bool) {
    if let Some(t) = BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe {
            (*t).refused += 1;
            (*t).redispatched += redispatched as u64;
        }
    }
}
