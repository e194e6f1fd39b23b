//! SYN floods: the embryonic table, SYN cookies, legitimate load beside.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::require_root;

use crate::lab::*;

/// CPU time so far (all CPUs, in clock ticks): (softirq, total).
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    (cpu[6], cpu.iter().take(8).sum())
}

const FLOOD_RATE: u64 = 150_000;
/// Forged SYNs a flood sends: 8 s at `FLOOD_RATE` on this kind of machine.
const FLOOD_COUNT: u64 = 1_200_000;
/// A flood's bound in time, however slowly it is sent.
const FLOOD_MAX: Duration = Duration::from_secs(40);

/// What a flood run saw (besides what it printed).
struct FloodRun {
    sent: xdplb_tests::flood::Sent,
    /// Requests made during the flood.
    requests: usize,
    /// Verdict-reason counters during the flood.
    reasons: BTreeMap<String, f64>,
    /// SYNs that started their connection in the embryonic table (the
    /// half-open budget spent) during the flood.
    spilled: f64,
}

/// The flood run: `FLOOD_COUNT` spoofed SYNs (10.200.0.0/16, random ports)
/// paced at `FLOOD_RATE` to the NAT VIP from the client namespace (bounded
/// by `FLOOD_MAX`), while the client makes `Connection: close` requests (ports
/// repeating) and 20 connections opened before it are held across it.
/// Asserts the targets: ≥ 99% of the requests during the flood
/// succeed, every held connection still answers from its backend.
fn flood_run(test: &str, scheduler: &str, embryos: Option<u64>, service_extra: &str) -> FloodRun {
    use xdplb_tests::flood::{Flood, syn_flood};
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = format!(
        "[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}",
        nat_config(&both, service_extra)
            .replace("round_robin", scheduler)
            .replace(
                "flow_table_size = 65536",
                &embryos.map_or("flow_table_size = 65536".into(), |n| {
                    format!("flow_table_size = 65536\nembryonic_table_size = {n}")
                }),
            )
    );
    let lab = lab_in_turn(Mode::Native, &config, Turn::exclusive());
    // The forged sources are routed back to the client namespace, whose
    // kernel answers what it gets for them with RSTs, as hosts whose
    // addresses were forged do.
    many_clients(&lab);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held: Vec<(Held, String)> = {
        let _in = lab.client.enter();
        (0..20)
            .map(|_| {
                let mut h = Held::open(vip);
                let b = h.first();
                (h, b)
            })
            .collect()
    };
    lab.client
        .sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20255"]);
    let reasons = |m: &str| -> BTreeMap<String, f64> {
        m.lines()
            .filter_map(|l| l.strip_prefix("xdplb_packets_total{reason=\""))
            .filter_map(|l| {
                let (name, rest) = l.split_once('"')?;
                Some((name.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    };
    let spilled = |lab: &Lab| {
        sample(
            &scrape(lab),
            "xdplb_service_half_open_spilled_total",
            "www.foobar.com",
        )
        .expect("the half-open spill counter in the scrape")
    };
    let spilled_before = spilled(&lab);
    let before = reasons(&scrape(&lab));
    let flood = Flood {
        target: format!("{VIP}:80").parse().unwrap(),
        source_net: "10.200.0.0".parse().unwrap(),
        prefix_len: 16,
        // Driven by its count: a slower machine sends it more slowly, for
        // longer (bounded).
        count: FLOOD_COUNT,
        max: FLOOD_MAX,
        rate: FLOOD_RATE,
    };
    let done = AtomicBool::new(false);
    let (cpu0, cpu0_total) = cpu_ticks();
    let (sent, (cpu1, cpu1_total), run, half_open) = std::thread::scope(|s| {
        let flooder = s.spawn(|| {
            let _in = lab.client.enter();
            let sent = syn_flood(&flood, 0x5eed).expect("flood");
            let cpu = cpu_ticks();
            done.store(true, Ordering::Relaxed);
            (sent, cpu)
        });
        // Requests start once the flood is under way.
        std::thread::sleep(Duration::from_millis(300));
        let census = s.spawn(|| {
            // The census walks once a second: read it mid-flood.
            std::thread::sleep(Duration::from_millis(2500));
            let m = scrape(&lab);
            ["203.0.113.11", "203.0.113.21"]
                .iter()
                .map(|b| sample(&m, "xdplb_backend_half_open_entries", b).unwrap_or(0.0))
                .sum::<f64>()
        });
        let run = hammer(
            &lab.client,
            vip,
            20_000,
            8,
            FLOOD_MAX + Duration::from_secs(2),
            &done,
        );
        let (sent, cpu) = flooder.join().unwrap();
        (sent, cpu, run, census.join().unwrap())
    });
    let after = reasons(&scrape(&lab));
    let spilled = spilled(&lab) - spilled_before;
    let delta: BTreeMap<String, f64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let softirq = (cpu1 - cpu0) as f64 / (cpu1_total - cpu0_total).max(1) as f64;
    let ok = run.iter().filter(|a| a.result.is_ok()).count();
    let share = ok as f64 / run.len().max(1) as f64;
    let mut ms: Vec<f64> = run
        .iter()
        .filter(|a| a.result.is_ok())
        .map(|a| a.took.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        ms.get(((ms.len() as f64 * p) as usize).min(ms.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    eprintln!(
        "{test}: flood {} SYNs in {:.2?} ({:.0}/s); {ok} of {} requests during the flood succeeded ({:.2}%), \
         request time p50 {:.1} ms p99 {:.1} ms; half-open entries mid-flood {half_open:.0} (table {embryos:?}); \
         softirq {:.1}% of all CPU time; SYNs beyond the half-open budget {spilled}; verdicts during the flood: {delta:?}",
        sent.packets,
        sent.elapsed,
        sent.rate(),
        run.len(),
        share * 100.0,
        pct(0.5),
        pct(0.99),
        softirq * 100.0
    );
    for (i, (h, b)) in held.iter_mut().enumerate() {
        assert_eq!(h.ask().as_ref(), Ok(&*b), "{test}: held connection {i}");
    }
    let failures: Vec<&String> = run
        .iter()
        .filter_map(|a| a.result.as_ref().err())
        .take(5)
        .collect();
    assert!(
        share >= 0.99,
        "{test}: {ok} of {} succeeded; e.g. {failures:?}",
        run.len()
    );
    assert!(
        run.len() >= 100,
        "{test}: too few requests to judge: {}",
        run.len()
    );
    FloodRun {
        sent,
        requests: run.len(),
        reasons: delta,
        spilled,
    }
}

/// The flood against the embryonic table alone (no cookies), NAT with
/// Maglev: the flood overflows the table, the flow table keeps the held
/// connections, and a request whose half-open entry the flood evicted is
/// picked up on its ACK by the same hash, so it reaches the same backend.
/// (With round robin such a request is re-picked at random and reset by the
/// other backend: 97.8% and 100% succeeded in two runs here; SYN cookies,
/// below, are the answer for it.)
#[test]
fn a_syn_flood_spares_legitimate_and_held_connections_maglev() {
    let test = "a_syn_flood_spares_legitimate_and_held_connections_maglev";
    if !require_root(test) {
        return;
    }
    // The default table (262,144 entries): a handshake's entry must outlive
    // the flood's SYNs that follow it (round robin has no other way to find
    // its backend again).
    let embryos = u64::from(lb_common::MAX_EMBRYOS);
    let r = flood_run(test, "maglev", None, "");
    assert!(
        r.sent.packets >= 4 * embryos,
        "{test}: the flood did not overflow the embryonic table: {} SYNs",
        r.sent.packets
    );
    // The flood's SYNs went to the embryonic table once the half-open
    // budget (1024 a second for this 65,536-entry flow table) was spent:
    // most of them. (How many may enter FLOWS exactly is the fixture
    // test's to bound: `a_syn_flood_evicts_no_established_flow`. Here, with
    // the daemon's refills and the requests' completions giving shares
    // back, 1.4% and 4.3% of the flood did in two runs; with a CPU burner
    // on one of the two cores, 78% of the generator's SYNs were counted
    // spilled in one run: not explained (the refills and completions
    // account for ~30,000 at most; whether veth dropped part of the flood
    // before the LB was not measured). The bound here says only that the
    // budget held most of the flood out of FLOWS.)
    assert!(
        r.spilled >= 0.5 * r.sent.packets as f64,
        "{test}: only {} of {} flood SYNs went to the embryonic table",
        r.spilled,
        r.sent.packets
    );
}

/// The same flood against SYN cookies (threshold 1000/s), round robin and
/// the smallest embryonic table: the LB answers the flood itself, so it keeps no state
/// for it and sends the backends nothing of it; the requests' connections
/// are opened by their cookie ACKs.
#[test]
fn syn_cookies_keep_a_flood_off_the_backends() {
    let test = "syn_cookies_keep_a_flood_off_the_backends";
    if !require_root(test) {
        return;
    }
    let r = flood_run(
        test,
        "round_robin",
        Some(1024),
        "syn_cookie_threshold = 1000\n",
    );
    let got = |k: &str| r.reasons.get(k).copied().unwrap_or(0.0);
    let to_backends = got("fwd_nat") + got("fwd_cookie_syn");
    assert!(
        got("tx_syn_cookie") >= 0.9 * r.sent.packets as f64,
        "{test}: the flood was not answered with cookies: {:?}",
        r.reasons
    );
    // The requests' own packets, and the burst before cookies started.
    let requests = r.requests as f64;
    assert!(
        to_backends <= 20.0 * requests + 1000.0,
        "{test}: {to_backends} packets went to the backends for {requests} requests"
    );
    // (A request on a 4-tuple the LB still holds, a port used again, goes
    // the stateful way: its flow entry says which connection it replaces.)
    assert!(
        got("fwd_cookie_syn") > 0.0,
        "{test}: no request used a cookie"
    );
}

/// The SYN-cookie threshold reacts to traffic, so it is tried under heavy
/// legitimate load: 15,000 `Connection: close` connections (24 workers,
/// client ports repeating within seconds). Under a threshold above their
/// rate (50,000/s) cookies never answer and none fails. With cookies always
/// on (threshold 0), 15,000 connections from as many client addresses
/// (so each 4-tuple is new: a SYN on a 4-tuple the LB still holds goes the
/// stateful way) are all opened by their cookies, and none fails.
#[test]
fn syn_cookies_under_heavy_legitimate_load() {
    let test = "syn_cookies_under_heavy_legitimate_load";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = |threshold: u32| {
        format!(
            "[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}syn_cookie_threshold = {threshold}\n",
            nat_config(&both, "")
        )
    };
    let mut lab = lab_in_turn(Mode::Native, &config(50_000), Turn::exclusive());
    many_clients(&lab);
    lab.client
        .sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20255"]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let reason = |lab: &Lab, r: &str| {
        sample(&scrape(lab), "xdplb_packets_total", &format!("\"{r}\"")).unwrap_or(0.0)
    };
    let report = |what: &str, n: usize, failed: &[&String], took: Duration, answered: f64| {
        eprintln!(
            "{test}: {what}: {n} connections in {took:.2?} ({:.0}/s), {} failed, {answered} SYNs answered with cookies",
            n as f64 / took.as_secs_f64(),
            failed.len()
        );
    };

    // Threshold 50,000/s: legitimate load stays below it.
    let began = Instant::now();
    let run = legitimate_load(&lab.client, vip);
    let failed: Vec<&String> = run.iter().filter_map(|a| a.result.as_ref().err()).collect();
    let answered = reason(&lab, "tx_syn_cookie");
    report(
        "threshold 50000",
        run.len(),
        &failed,
        began.elapsed(),
        answered,
    );
    assert!(
        failed.is_empty(),
        "{test}: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert_eq!(answered, 0.0, "{test}: cookies fired on legitimate load");

    // Always on: every connection from a new address.
    lab.reload(&config(0), 1);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let until = Instant::now() + Duration::from_secs(60);
    let began = Instant::now();
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..LOAD_WORKERS)
            .map(|_| {
                s.spawn(|| {
                    let _in = lab.client.enter();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= LOAD_RUN || Instant::now() >= until {
                            break out;
                        }
                        let src = std::net::Ipv4Addr::new(10, 200, (i >> 8) as u8, i as u8);
                        out.push(request_from(src));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let answered = reason(&lab, "tx_syn_cookie");
    let opened = reason(&lab, "fwd_cookie_syn");
    report(
        "threshold 0",
        results.len(),
        &failed,
        began.elapsed(),
        answered,
    );
    assert_eq!(results.len(), LOAD_RUN, "{test}: the run was cut short");
    assert!(
        failed.is_empty(),
        "{test}: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        answered >= LOAD_RUN as f64 && opened >= LOAD_RUN as f64,
        "{test}: {answered} SYNs answered, {opened} opened for {LOAD_RUN} connections"
    );
}
