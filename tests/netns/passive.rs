//! Passive health: refusals (NAT) and retried SYNs (DSR) hold a backend.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::require_root;

use crate::lab::*;

/// Passive health takes a backend out of new connections faster than its
/// (deliberately slow) active check could. NAT: the backend's server dies and
/// the connections it refuses are counted (and redispatched). DSR: the
/// backend's answers to clients are blackholed (its check, answered to the
/// LB's own address, still passes), and the clients' retransmitted SYNs are
/// counted; connections still in their handshake move on their next retry.
fn passive_health(test: &str, forwarding: &str) {
    if !require_root(test) {
        return;
    }
    let passive = if forwarding == "nat" {
        "refused = 3\nwindow_ms = 1000"
    } else {
        "syn_retransmits = 3\nwindow_ms = 2000"
    };
    let config = service_config(
        forwarding,
        &format!(
            "[service.check]\nkind = \"tcp\"\ninterval_ms = 5000\ntimeout_ms = 1000\nfall = 3\n[service.passive]\n{passive}\n"
        ),
    );
    let mut lab = lab_with(Mode::Native, &config);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let stop = AtomicBool::new(false);
    // Connections to the broken backend wait for their SYN to be retried
    // (DSR: blackholed; NAT: refused, the RST withheld for redispatch), so
    // several clients run at once, as real traffic does.
    let clients = 4;
    let (outcomes, broke, down_after) = std::thread::scope(|s| {
        let loads: Vec<_> = (0..clients)
            .map(|_| s.spawn(|| background_load(&lab.client, vip, &stop)))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        let broke = Instant::now();
        if forwarding == "nat" {
            lab.servers[0].stop();
        } else {
            lab.backends[0].sh(&["ip", "route", "add", "blackhole", "198.51.100.0/24"]);
        }
        lab.daemon
            .wait_for("backend HELD (passive)", Duration::from_secs(8));
        let down_after = broke.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        let outcomes: Vec<Outcome> = loads.into_iter().flat_map(|l| l.join().unwrap()).collect();
        (outcomes, broke, down_after)
    });
    let failures: Vec<Duration> = outcomes
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(t, _)| t.saturating_duration_since(broke))
        .collect();
    eprintln!(
        "{test}: passive HELD {down_after:?} after the break; {} of {} connections failed, started at most {:?} after it",
        failures.len(),
        outcomes.len(),
        failures.iter().max()
    );
    let log = lab.daemon.log().join("\n");
    // The active check alone needs 3 failures 5 s apart (and in DSR passes).
    // Passive health needs its threshold within one window: refusals come at
    // once (NAT), retransmitted SYNs after TCP's initial retransmission
    // timeout of 1 s (RFC 6298; DSR). Then within a passive tick. The margin
    // covers a loaded 2-core machine.
    let first_signal = if forwarding == "nat" {
        Duration::ZERO
    } else {
        Duration::from_secs(1)
    };
    let window = Duration::from_millis(if forwarding == "nat" { 1000 } else { 2000 });
    let bound = first_signal + window + xdplb::daemon::PASSIVE_TICK + Duration::from_millis(500);
    assert!(
        down_after < bound,
        "{test}: held {down_after:?} after the break, bound {bound:?}\n{log}"
    );
    assert!(
        failures.iter().all(|d| *d < down_after),
        "{test}: connections started after passive detection failed: {failures:?}"
    );
    let m = scrape(&lab);
    let signal = if forwarding == "nat" {
        "xdplb_backend_refused_total"
    } else {
        "xdplb_backend_syn_retransmits_total"
    };
    assert!(
        sample(&m, signal, "203.0.113.11").unwrap_or(0.0) >= 3.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "xdplb_backend_up", "203.0.113.11"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "xdplb_backend_held", "203.0.113.11"),
        Some(1.0),
        "{m}"
    );
}

#[test]
fn passive_health_nat_counts_refused_connections() {
    passive_health("passive_health_nat_counts_refused_connections", "nat");
}

#[test]
fn passive_health_dsr_counts_retried_syns() {
    passive_health("passive_health_dsr_counts_retried_syns", "dsr");
}
