//! Heavy legitimate load: passive health and redispatch stay quiet, then
//! react to a real failure.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::require_root;

use crate::lab::*;

const LOAD_INTERVAL_MS: u64 = 300;

const LOAD_RISE: u64 = 2;

/// The shipped config's service (NAT, round robin, HTTP check), with the
/// check's timers shortened for the test, and `passive` appended.
fn load_config(passive: &str) -> String {
    service_config(
        "nat",
        &format!(
            "[service.check]\nkind = \"http\"\npath = \"/\"\nhost = \"www.foobar.com\"\ninterval_ms = {LOAD_INTERVAL_MS}\ntimeout_ms = 250\nrise = {LOAD_RISE}\nfall = 3\n{passive}"
        ),
    )
}

/// The shipped config's passive threshold (config/www.foobar.com.toml:
/// refusals), and the client-side signal beside it at the same level, so
/// heavy load is shown to raise neither.
const SHIPPED_PASSIVE: &str =
    "[service.passive]\nsyn_retransmits = 20\nrefused = 20\nwindow_ms = 1000\n";
/// Its refusal threshold.
const SHIPPED_REFUSED: f64 = 20.0;

/// Issue 7's scenario: thousands of new `Connection: close` connections per
/// second, client ports forced to repeat by a 256-port range, NAT with the
/// shipped HTTP check and passive health.
/// 1. With passive health on, no backend is taken out, no connection fails,
///    and throughput stays within 10% of the same load without it (runs
///    alternate A B A B A B in this process; the best of each compared;
///    printed).
/// 2. A backend killed under that load stops taking new connections once
///    the threshold's refusals arrived plus a passive tick (at the load's
///    own rate, half of its new connections meet the dead backend; 150 ms
///    of margin; the daemon's own log time), no connection started after
///    the kill fails (redispatch), and when it returns it gets its share
///    again within rise x interval + 1 s.
#[test]
fn heavy_legitimate_load_passive_health_redispatch_and_return() {
    let test = "heavy_legitimate_load_passive_health_redispatch_and_return";
    if !require_root(test) {
        return;
    }
    // Throughput is compared between runs: nothing else may run meanwhile.
    let mut lab = lab_in_turn(Mode::Native, &load_config(""), Turn::exclusive());
    lab.client
        .sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20255"]);
    lab.daemon
        .wait_for("health checks running", Duration::from_secs(10));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let no_stop = AtomicBool::new(false);
    let connections = |lab: &Lab| {
        sample(
            &scrape(lab),
            "xdplb_service_connections_total",
            "www.foobar.com",
        )
        .unwrap_or(0.0)
    };

    // 1. Alternate runs without (A) and with (B) passive health.
    let client_retransmits = tcp_ext(&lab.client, "TCPSynRetrans");
    let mut rate = [0.0f64; 2];
    let mut ports = std::collections::HashMap::<u16, usize>::new();
    let mut reloads = 0;
    for (i, with_passive) in [false, true, false, true, false, true]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            reloads += 1;
            let text = load_config(if with_passive { SHIPPED_PASSIVE } else { "" });
            lab.reload(&text, reloads);
        }
        let counted_before = connections(&lab);
        let began = Instant::now();
        let run = hammer(
            &lab.client,
            vip,
            LOAD_RUN,
            LOAD_WORKERS,
            Duration::from_secs(60),
            &no_stop,
        );
        let took = began.elapsed();
        let failed: Vec<&Attempt> = run.iter().filter(|a| a.result.is_err()).collect();
        for a in &run {
            *ports.entry(a.port).or_default() += 1;
        }
        let counted = connections(&lab) - counted_before;
        let r = run.len() as f64 / took.as_secs_f64();
        // The best run of each: other load on this shared machine only ever
        // slows a run down (one pair of runs differed by 12% here once).
        rate[with_passive as usize] = rate[with_passive as usize].max(r);
        eprintln!(
            "{test}: run {i} ({}): {} connections in {took:.2?} = {r:.0}/s, {} failed; the LB counted {counted}",
            if with_passive {
                "passive health on"
            } else {
                "passive health off"
            },
            run.len(),
            failed.len()
        );
        assert!(
            failed.is_empty(),
            "{test}: run {i}: {} of {} failed, first: {:?}",
            failed.len(),
            run.len(),
            failed[0].result
        );
        assert_eq!(run.len(), LOAD_RUN);
        assert_eq!(
            counted, LOAD_RUN as f64,
            "{test}: the LB must count every TCP connection once"
        );
    }
    let log = lab.daemon.log().join("\n");
    assert!(
        !log.contains("HELD") && !log.contains("DOWN"),
        "{test}: a healthy backend was taken out under legitimate load:\n{log}"
    );
    let reused = ports.values().filter(|&&n| n > 1).count();
    // Only true retransmissions count: the LB cannot have seen more than
    // the clients' kernels sent (the old code counted every reused 4-tuple).
    let client_retransmits = tcp_ext(&lab.client, "TCPSynRetrans") - client_retransmits;
    let m = scrape(&lab);
    let lb_retransmits: f64 = ["203.0.113.11", "203.0.113.21"]
        .iter()
        .map(|b| sample(&m, "xdplb_backend_syn_retransmits_total", b).unwrap_or(0.0))
        .sum();
    eprintln!(
        "{test}: SYN retransmissions: the clients sent {client_retransmits}, the LB counted {lb_retransmits}"
    );
    assert!(
        lb_retransmits <= client_retransmits as f64,
        "{test}: the LB counted retransmissions the clients never sent"
    );
    // Every connection started in the flow table (issue 21: one insert):
    // the half-open budget, which reacts to SYNs that go unanswered, never
    // took legitimate load for a flood.
    let spilled = sample(
        &m,
        "xdplb_service_half_open_spilled_total",
        "www.foobar.com",
    )
    .expect("the half-open spill counter in the scrape");
    assert_eq!(
        spilled, 0.0,
        "{test}: legitimate connections started beyond the half-open budget"
    );
    eprintln!(
        "{test}: best runs: passive health off {:.0}/s, on {:.0}/s ({:+.1}%); {} client ports, {reused} used more than once, most {} times",
        rate[0],
        rate[1],
        (rate[1] / rate[0] - 1.0) * 100.0,
        ports.len(),
        ports.values().max().unwrap()
    );
    assert!(ports.len() <= 256, "the port range was not narrow");
    assert!(
        rate[1] >= rate[0] * 0.9,
        "{test}: passive health cost more than 10% of throughput"
    );

    // 2. Kill backend 1's server (SIGTERM, then its exit) under the same
    //    load, then bring it back.
    let stop = AtomicBool::new(false);
    let (attempts, killed, killed_wall, restarted) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            hammer(
                &lab.client,
                vip,
                200_000,
                LOAD_WORKERS,
                Duration::from_secs(40),
                &stop,
            )
        });
        std::thread::sleep(Duration::from_millis(700));
        // Passive health is timed from the signal; "started after the kill"
        // from the exit, once the listener is gone: until then the dying
        // process's kernel still completes handshakes, which it then resets.
        let killed_wall = std::time::SystemTime::now();
        lab.servers[0].stop();
        let killed = Instant::now();
        lab.daemon
            .wait_for("backend HELD (passive)", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1500));
        let restarted = Instant::now();
        lab.servers[0] = start_server(&lab.backends[0], 0);
        lab.daemon.wait_for("backend UP", Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(2500));
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), killed, killed_wall, restarted)
    });
    let held_after = lab
        .daemon
        .logged_at("backend HELD (passive)")
        .and_then(|t| t.duration_since(killed_wall).ok())
        .expect("HELD log line with a time");
    // The load's rate just before the kill; round robin sends half of it to
    // the backend that dies, each one refused until the threshold is met.
    let warm = Duration::from_millis(500);
    let before_kill = attempts
        .iter()
        .filter(|a| a.start <= killed && a.start + warm > killed)
        .count();
    let rate = before_kill as f64 / warm.as_secs_f64();
    let held_bound = Duration::from_secs_f64(SHIPPED_REFUSED / (rate / 2.0))
        + xdplb::daemon::PASSIVE_TICK
        + Duration::from_millis(150);
    let late_failures: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.start > killed && a.result.is_err())
        .collect();
    let in_flight_failures = attempts
        .iter()
        .filter(|a| a.start <= killed && a.result.is_err())
        .count();
    // Its share back: the first 200 ms window after the restart in which b1
    // served at least a third of the connections started (round robin: half).
    let window = Duration::from_millis(200);
    let back_after = (0..50u32).find_map(|k| {
        let from = restarted + window * k;
        let w: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.start >= from && a.start < from + window)
            .collect();
        let b1 = w.iter().filter(|a| a.result.as_deref() == Ok("b1")).count();
        (w.len() >= 10 && b1 * 3 >= w.len()).then_some(window * k)
    });
    let bound = Duration::from_millis(LOAD_RISE * LOAD_INTERVAL_MS + 1000);
    let log = lab.daemon.log().join("\n");
    eprintln!(
        "{test}: kill under load: {} connections, {in_flight_failures} failed that were in flight at the kill, {} failed that started after; held {held_after:.1?} after the kill (bound {held_bound:.1?} at {rate:.0} connections/s); share back {back_after:.1?} after the restart (bound {bound:?})",
        attempts.len(),
        late_failures.len()
    );
    assert!(
        held_after < held_bound,
        "{test}: passive health took {held_after:?}, bound {held_bound:?}\n{log}"
    );
    assert!(
        late_failures.is_empty(),
        "{test}: {} connections started after the kill failed, first {:?} after it: {:?}",
        late_failures.len(),
        late_failures[0].start - killed,
        late_failures[0].result
    );
    let back_after =
        back_after.unwrap_or_else(|| panic!("{test}: b1 never got its share back\n{log}"));
    assert!(
        back_after <= bound,
        "{test}: b1's share came back {back_after:?} after the restart (bound {bound:?})"
    );
    let m = scrape(&lab);
    assert!(
        sample(&m, "xdplb_backend_redispatched_total", "203.0.113.11").unwrap_or(0.0) > 0.0,
        "{test}: no redispatch counted:\n{m}"
    );
}
