//! Active health checks take a dead backend out and bring it back.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::require_root;

use crate::lab::*;

const CHECK_INTERVAL_MS: u64 = 300;

const CHECK_TIMEOUT_MS: u64 = 250;

const FALL: u64 = 3;

/// Backend 1 fails its active check under load, leaves the scheduler within
/// interval × fall (+ one interval), and takes connections again after it
/// passes `rise` checks. NAT: its server process dies and comes back. DSR:
/// the VIP disappears from its loopback while its server keeps listening on
/// its own address, which only a check of the VIP notices.
fn health_check(test: &str, forwarding: &str) {
    if !require_root(test) {
        return;
    }
    let kind = if forwarding == "nat" {
        "kind = \"http\"\npath = \"/\"\nhost = \"www.foobar.com\"\nstatus = [200, 299]"
    } else {
        "kind = \"tcp\""
    };
    let config = service_config(
        forwarding,
        &format!(
            "[service.check]\n{kind}\ninterval_ms = {CHECK_INTERVAL_MS}\ntimeout_ms = {CHECK_TIMEOUT_MS}\nrise = 2\nfall = {FALL}\n"
        ),
    );
    let mut lab = lab_with(Mode::Native, &config);
    let port = if forwarding == "nat" { 8080 } else { 80 };
    let b1 = format!("backend=\"203.0.113.11:{port}\"");
    lab.daemon
        .wait_for("health checks running", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(CHECK_INTERVAL_MS * 2));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    // Worst case from the break to the backend being out: the first failing
    // probe starts up to one interval later, `fall` probes in all, the last
    // one taking up to its timeout. The margin covers probe scheduling and
    // the report's handling on a loaded 2-core machine (seen: tens of ms).
    let bound = Duration::from_millis(CHECK_INTERVAL_MS * FALL + CHECK_TIMEOUT_MS);
    let margin = Duration::from_millis(500);
    let (outcomes, broke, went_down, restored, went_up, down_metrics, down_status) =
        std::thread::scope(|s| {
            let load = s.spawn(|| background_load_counted(&lab.client, vip, &stop, &ok));
            std::thread::sleep(Duration::from_secs(1));
            let broke = Instant::now();
            let broke_wall = std::time::SystemTime::now();
            if forwarding == "nat" {
                lab.servers[0].stop();
            } else {
                lab.backends[0].sh(&["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
            }
            lab.daemon.wait_for("backend DOWN", Duration::from_secs(10));
            // When the daemon logged it (its own clock, not this loop's).
            let went_down = lab
                .daemon
                .logged_at("backend DOWN")
                .expect("DOWN logged with a time")
                .duration_since(broke_wall)
                .expect("DOWN logged after the break");
            std::thread::sleep(Duration::from_secs(1));
            let down_metrics = scrape(&lab);
            let down_status = status_table(&lab);
            let restored = Instant::now();
            if forwarding == "nat" {
                lab.servers[0] = start_server(&lab.backends[0], 0);
            } else {
                lab.backends[0].sh(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            }
            lab.daemon.wait_for("backend UP", Duration::from_secs(10));
            let went_up = Instant::now();
            // Enough requests after UP for round robin to give b1 some.
            let after_up = ok.load(Ordering::Relaxed) + 20;
            wait_count(&ok, after_up, Duration::from_secs(20), "requests after UP");
            stop.store(true, Ordering::Relaxed);
            (
                load.join().unwrap(),
                broke,
                went_down,
                restored,
                went_up,
                down_metrics,
                down_status,
            )
        });
    let log = lab.daemon.log().join("\n");
    let late_failures: Vec<_> = outcomes
        .iter()
        .filter(|(t, r)| r.is_err() && *t > broke + bound + margin)
        .collect();
    let failures = outcomes.iter().filter(|(_, r)| r.is_err()).count();
    let b1_after_up = outcomes
        .iter()
        .filter(|(t, r)| *t > went_up && r.as_deref() == Ok("b1"))
        .count();
    eprintln!(
        "{test}: {} requests, {failures} failed; DOWN logged {:?} after the break (bound {bound:?}); UP {:?} after restore; b1 served {b1_after_up} after UP",
        outcomes.len(),
        went_down,
        went_up - restored
    );
    // With redispatch (NAT's default) a dead backend's connections go
    // elsewhere, so no failure would show a slow check: the time to DOWN
    // itself is the check's measure.
    assert!(
        went_down <= bound + margin,
        "{test}: DOWN {went_down:?} after the break, bound interval x fall + timeout = {bound:?} + {margin:?}\n{log}"
    );
    assert!(
        late_failures.is_empty(),
        "{test}: {} connections failed later than interval x fall + timeout + 500 ms after the break, first at {:?}: {:?}\n{log}",
        late_failures.len(),
        late_failures[0].0 - broke,
        late_failures[0].1
    );
    assert!(
        b1_after_up > 0,
        "{test}: b1 got no connections after UP\n{log}"
    );
    // While down, metrics and status said so.
    assert_eq!(
        sample(&down_metrics, "xdplb_backend_up", &b1),
        Some(0.0),
        "{down_metrics}"
    );
    assert!(
        down_status
            .lines()
            .any(|l| l.contains("203.0.113.11") && l.contains("DOWN") && l.contains("fail:")),
        "{down_status}"
    );
    // And now they show it back, with checks, latency and traffic counted.
    let m = scrape(&lab);
    assert_eq!(sample(&m, "xdplb_backend_up", &b1), Some(1.0), "{m}");
    assert!(
        sample(&m, "xdplb_backend_checks_total", &b1).unwrap_or(0.0) > 3.0,
        "{m}"
    );
    assert!(
        sample(&m, "xdplb_backend_check_latency_seconds", &b1).is_some(),
        "{m}"
    );
    assert!(
        sample(&m, "xdplb_backend_connections_total", &b1).unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert!(
        sample(&m, "xdplb_service_packets_total", "www.foobar.com").unwrap_or(0.0) > 0.0,
        "{m}"
    );
    assert!(
        sample(
            &m,
            "xdplb_packets_total",
            &format!("reason=\"fwd_{forwarding}\"")
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );
    let st = status_table(&lab);
    assert!(
        st.lines()
            .filter(|l| l.contains("203.0.113.") && l.contains(" up "))
            .count()
            == 2,
        "{st}"
    );
    eprintln!("{test}: status while b1 was down:\n{down_status}");
    let status = lab.daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "{test}: daemon exit {status:?}\n{log}"
    );
    // Probe routes (DSR) are gone with the daemon.
    let rules = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "rule", "show"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        !rules.contains("fwmark"),
        "{test}: probe rules left behind:\n{rules}"
    );
}

#[test]
fn health_check_nat_http_takes_a_dead_backend_out_and_back() {
    health_check(
        "health_check_nat_http_takes_a_dead_backend_out_and_back",
        "nat",
    );
}

#[test]
fn health_check_dsr_probes_the_vip_on_the_backend() {
    health_check("health_check_dsr_probes_the_vip_on_the_backend", "dsr");
}
