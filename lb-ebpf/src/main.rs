//! xdplb data path: an XDP program that load-balances IPv4 TCP/UDP services.
//!
//! Per packet: parse Ethernet/IPv4/L4 (`parse`), look up the service by
//! (VIP, port, protocol), find or create the flow's backend (`sched`),
//! rewrite (`nat` or MAC-only for DSR) and forward to the next hop the
//! kernel's FIB names (`forward`). Backend replies of NAT flows are
//! translated back to the VIP. Every verdict is counted under a `Reason`.
#![no_std]
#![no_main]

mod fault;
mod forward;
mod icmp;
mod maps;
mod nat;
mod neigh;
mod parse;
mod sched;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{Forwarding, Reason, SERVICE_F_PASS_WHEN_EMPTY};

use crate::parse::{Packet, Parsed};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    stats::count_reason(reason);
    action
}

/// Baseline for benchmarks: bounce every frame, doing nothing else.
#[xdp]
pub fn baseline_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let pkt = match parse::parse(ctx) {
        Parsed::Packet(p) => p,
        Parsed::Verdict(action, reason) => return (action, reason),
    };
    if let Some(svc) = maps::service(&pkt) {
        if !pkt.ip_checksum_ok() {
            return (xdp_action::XDP_DROP, Reason::DropBadIpChecksum);
        }
        return to_backend(ctx, &pkt, &svc);
    }
    if let Some(rev) = maps::nat_reverse(&pkt) {
        if !pkt.ip_checksum_ok() {
            return (xdp_action::XDP_DROP, Reason::DropBadIpChecksum);
        }
        if let nat::Reply::Refused { redispatch } = nat::track_reply(&pkt, &rev) {
            stats::count_refused(rev.backend_id, redispatch);
            if redispatch {
                return (xdp_action::XDP_DROP, Reason::DropRstRedispatch);
            }
        }
        return nat::reverse(ctx, &pkt, &rev);
    }
    (xdp_action::XDP_PASS, Reason::PassNotService)
}

#[inline(always)]
fn to_backend(ctx: &XdpContext, pkt: &Packet, svc: &lb_common::ServiceInfo) -> (u32, Reason) {
    let Some(c) = sched::flow_backend(pkt, svc) else {
        stats::count_no_backend(svc.id);
        return if svc.flags & SERVICE_F_PASS_WHEN_EMPTY != 0 {
            (xdp_action::XDP_PASS, Reason::PassNoBackend)
        } else {
            (xdp_action::XDP_DROP, Reason::DropNoBackend)
        };
    };
    let (action, reason) = if svc.forwarding == Forwarding::Nat as u8 {
        nat::forward(ctx, pkt, svc, c.backend_id, &c.backend)
    } else {
        forward::dsr(ctx, pkt, c.backend.addr_be)
    };
    let sent = matches!(reason, Reason::FwdNat | Reason::FwdDsr);
    stats::count_traffic(svc.id, c.backend_id, sent.then_some(pkt.frame_len), &c);
    (action, reason)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the verifier rejects programs that could
    // get here, and no code path calls a panicking function.
    loop {}
}

/// GPL-compatible licence, required for `bpf_fib_lookup`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
