//! Policy routes that send DSR health probes to one backend while they are
//! addressed to the VIP, so a probe proves the backend answers *on the VIP*
//! (the address clients use), not merely on its own address.
//!
//! Backend id `n` gets fwmark `MARK_BASE + n`, a rule `fwmark → table
//! MARK_BASE + n` and in that table one route `VIP/32 via backend`. The probe
//! socket carries the mark (`SO_MARK`). The rules sit *before* the `local`
//! rule, which the daemon moves from priority 0 to [`LOCAL_RULE_PRIORITY`]
//! while it has probe routes (as Cilium does for its proxy): an HA MASTER
//! owns the VIP, and without this its probes would be delivered to itself.
//! The probes' answers come from the VIP, a local address, so the
//! backend-facing interface needs `accept_local`. `daemon/host.rs` installs
//! and removes all of it.

use std::net::Ipv4Addr;

use crate::net::PolicyRoute;

/// 'XD' in the top half: marks and tables of xdplb's probe routes.
pub const MARK_BASE: u32 = 0x5844_0000;
/// Priority of the probe rules: before the moved `local` rule.
pub const RULE_PRIORITY: u32 = 100;
/// Where the `local` rule goes while probe rules exist.
pub const LOCAL_RULE_PRIORITY: u32 = 200;

/// The probe route of backend `backend_id` at `backend` (reached over
/// `ifindex`) for service address `vip`.
pub fn probe_route(backend_id: u32, vip: Ipv4Addr, backend: Ipv4Addr, ifindex: u32) -> PolicyRoute {
    PolicyRoute {
        mark: MARK_BASE + backend_id,
        table: MARK_BASE + backend_id,
        priority: RULE_PRIORITY,
        dst: vip,
        gateway: backend,
        ifindex,
    }
}
