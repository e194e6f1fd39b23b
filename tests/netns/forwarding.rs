//! Real TCP/HTTP and UDP through the LB, DSR and NAT, native and generic
//! XDP, with the daemon leaving the host clean on its stop.

use std::net::SocketAddr;

use lb_common::Reason;
use xdplb_tests::require_root;

use crate::lab::*;

const TCP_CONNECTIONS: usize = 120;

const UDP_FLOWS: usize = 40;

fn end_to_end(test: &str, mode: Mode, forwarding: &str, scheduler: &str) {
    if !require_root(test) {
        return;
    }
    let mut lab = lab(mode, forwarding, scheduler);
    let vip_tcp: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let vip_udp: SocketAddr = format!("{VIP}:53").parse().unwrap();
    let (tcp, tcp_errors, udp, udp_errors) = {
        let _in = lab.client.enter();
        let (tcp, tcp_errors) = load(TCP_CONNECTIONS, || http_get(vip_tcp));
        let (udp, udp_errors) = load(UDP_FLOWS, || udp_ask(vip_udp));
        (tcp, tcp_errors, udp, udp_errors)
    };
    // CPUs that forwarded client packets, from the program's per-CPU counters
    // (read from the pins before the daemon stops and removes them).
    let forwarding_cpus = cpus_that_counted(
        &lab,
        if forwarding == "nat" {
            Reason::FwdNat
        } else {
            Reason::FwdDsr
        },
    );
    let status = lab.daemon.stop();
    let log = lab.daemon.log().join("\n");
    assert!(
        tcp_errors.is_empty(),
        "{test}: {} TCP failures, first: {:?}\n{log}",
        tcp_errors.len(),
        tcp_errors.first()
    );
    assert!(
        udp_errors.is_empty(),
        "{test}: {} UDP failures, first: {:?}\n{log}",
        udp_errors.len(),
        udp_errors.first()
    );
    assert_eq!(tcp.values().sum::<usize>(), TCP_CONNECTIONS);
    assert_eq!(
        tcp.len(),
        2,
        "{test}: TCP spread over both backends: {tcp:?}"
    );
    assert_eq!(
        udp.len(),
        2,
        "{test}: UDP spread over both backends: {udp:?}"
    );
    if scheduler == "round_robin" {
        // One cursor per CPU: each CPU alternates exactly, so the split is
        // off by at most one flow per CPU that forwarded packets.
        assert!(forwarding_cpus >= 1);
        for (b, n) in &tcp {
            assert!(
                n.abs_diff(TCP_CONNECTIONS / 2) <= forwarding_cpus,
                "{test}: round robin gave {b} {n} of {TCP_CONNECTIONS} with {forwarding_cpus} CPUs forwarding: {tcp:?}"
            );
        }
    }
    eprintln!("{test}: TCP {tcp:?} UDP {udp:?}");
    // The XDP program did the forwarding, and the daemon left cleanly.
    let fwd = if forwarding == "nat" {
        "fwd_nat="
    } else {
        "fwd_dsr="
    };
    assert!(
        log.contains(fwd),
        "{test}: no {fwd} in final counters:\n{log}"
    );
    if forwarding == "nat" {
        assert!(
            log.contains("fwd_reverse_nat="),
            "{test}: replies not translated by XDP:\n{log}"
        );
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "{test}: daemon exit {status:?}\n{log}"
    );
    let links = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("prog/xdp"),
        "{test}: XDP program left attached after shutdown:\n{links}"
    );
    for dev in ["cli", "b1", "b2"] {
        assert_eq!(
            tcx_attached(&lab.lb, dev),
            0,
            "{test}: tc program left on {dev} after shutdown"
        );
    }
    // It kept the backends' neighbours resolved while running, and removed
    // those managed entries again on shutdown.
    assert!(
        log.contains("managed neighbour entry in place"),
        "{test}: no managed neighbours:\n{log}"
    );
    let neigh = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "neigh", "show"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(
        !neigh.contains("managed"),
        "{test}: managed neighbour entries left behind:\n{neigh}"
    );
}

#[test]
fn native_dsr_maglev() {
    end_to_end("native_dsr_maglev", Mode::Native, "dsr", "maglev");
}

#[test]
fn native_nat_round_robin() {
    end_to_end("native_nat_round_robin", Mode::Native, "nat", "round_robin");
}

#[test]
fn generic_dsr_round_robin() {
    end_to_end(
        "generic_dsr_round_robin",
        Mode::Generic,
        "dsr",
        "round_robin",
    );
}

#[test]
fn generic_nat_maglev() {
    end_to_end("generic_nat_maglev", Mode::Generic, "nat", "maglev");
}
