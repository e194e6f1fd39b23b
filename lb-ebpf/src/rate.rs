//! New-connection rate limits (GCRA, one `u64` of state per bucket): per
//! client address in an LRU map, and per service. Asked only for a packet
//! that would start a connection, so established flows are never limited.
//! Buckets are shared between CPUs without atomics: two CPUs admitting at
//! the same instant may both pass (a limit errs towards letting through).

use lb_common::{ClientRateKey, Reason};

use crate::maps::{CLIENT_RATES, RATE_LIMITS, SERVICE_RATES};

/// GCRA: admit at `now` if `now >= tat - tolerance`; the new theoretical
/// arrival time is `max(tat, now) + interval`. `None`: refused.
#[inline(always)]
pub(crate) fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    if now.saturating_add(tolerance) < tat {
        return None;
    }
    Some(if tat > now { tat } else { now } + interval)
}

/// Whether service `id` admits a new connection from `src_be` now, or the
/// reason it does not. Out of line: only new connections of limited
/// services come here.
#[inline(never)]
pub fn admit(id: u32, src_be: u32) -> Result<(), Reason> {
    let Some(limit) = RATE_LIMITS.get(id) else {
        return Ok(());
    };
    // SAFETY: helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let key = ClientRateKey {
        service_id: id,
        addr_be: src_be,
    };
    let mut client_tat = None;
    if limit.client_interval_ns != 0 {
        // SAFETY: copied out at once.
        let tat = unsafe { CLIENT_RATES.get(key) }.copied().unwrap_or(0);
        match gcra(
            tat,
            now,
            limit.client_interval_ns,
            limit.client_tolerance_ns,
        ) {
            Some(t) => client_tat = Some(t),
            None => return Err(Reason::DropRateClient),
        }
    }
    if limit.total_interval_ns != 0
        && let Some(tat) = SERVICE_RATES.get_ptr_mut(id)
    {
        // SAFETY: a map value pointer; see the module note on races.
        match gcra(
            unsafe { *tat },
            now,
            limit.total_interval_ns,
            limit.total_tolerance_ns,
        ) {
            // SAFETY: as above.
            Some(t) => unsafe { *tat = t },
            None => return Err(Reason::DropRateService),
        }
    }
    if let Some(t) = client_tat {
        // Charged only once the service admitted it too. On failure (no
        // memory) the client goes unmetered this once.
        let _ = CLIENT_RATES.insert(key, t, 0);
    }
    Ok(())
}
