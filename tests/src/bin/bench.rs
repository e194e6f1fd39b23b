//! `cargo xtask bench`: ns per packet of the XDP data path, measured by the
//! kernel (BPF_PROG_TEST_RUN), each beside a bare XDP_TX program run the
//! same way in the same process. Ratios, not absolute times, are the result.
//!
//! The frames, the set-up before them and their verdicts are rows of the
//! fixture table (`xdplb_tests::cases`), so what is timed is what the
//! fixtures test. Two methods, because NAT rewrites the frame in place and
//! the kernel re-runs a repeated test on the rewritten buffer:
//! - "repeat": one syscall runs the program N times (kernel-averaged);
//! - "single": N syscalls with repeat = 1 (fresh input each time; adds the
//!   kernel's per-run timing overhead, present in the baseline too).

use std::path::Path;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use lb_common::names::PROGRAM;
use xdplb::{
    config::Config,
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane},
    plan::{Availability, Planner},
};
use xdplb_tests::{
    cases,
    frames::with_src,
    lab::{Lab, verdict_name, xdp_md},
};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 200_000;

/// How a row is timed.
#[derive(Clone, Copy)]
enum Method {
    /// One syscall, the same frame `REPEAT` times (for rows that do not
    /// rewrite the frame in a way that changes the next run).
    Repeat,
    /// `SINGLE_RUNS` syscalls, the row's frame each time.
    Single,
    /// `SINGLE_RUNS` syscalls, each from a new client address: new flows.
    NewClients,
}

/// The benchmark's rows: (label, fixture row, method).
const ROWS: &[(&str, &str, Method)] = &[
    (
        "established flow, DSR",
        "DSR: an established flow's packet follows its flow",
        Method::Repeat,
    ),
    (
        "not for a VIP (XDP_PASS)",
        "TCP to another address",
        Method::Repeat,
    ),
    (
        "established flow, NAT",
        "NAT: an established flow's packet is translated the same way",
        Method::Single,
    ),
    (
        "NAT reply (reverse NAT)",
        "NAT: a backend's reply goes back to the client from the VIP",
        Method::Single,
    ),
    (
        "new flow, DSR (Maglev)",
        "DSR: a new connection goes to its Maglev backend, only the MACs change",
        Method::NewClients,
    ),
    (
        "new flow, NAT (Maglev)",
        "NAT: a new connection's destination becomes its Maglev backend",
        Method::NewClients,
    ),
];

/// Kernel-averaged ns per run, `repeat` runs in one syscall.
fn repeated(
    ebpf: &mut Ebpf,
    prog: &'static str,
    frame: &[u8],
    ingress: u32,
    repeat: u32,
) -> (f64, u32) {
    let p = bpf::xdp_program(ebpf, prog).unwrap();
    let ctx = xdp_md(frame.len(), ingress);
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })
        .unwrap();
    (r.duration.as_nanos() as f64, r.return_value)
}

/// Mean kernel-measured ns over `n` single runs; `frame_for(i)` gives each
/// input. The verdict of every run must be `verdict`.
fn single(
    ebpf: &mut Ebpf,
    prog: &'static str,
    n: u32,
    ingress: u32,
    verdict: u32,
    frame_for: impl Fn(u32) -> Vec<u8>,
) -> f64 {
    let p = bpf::xdp_program(ebpf, prog).unwrap();
    let mut total = 0u128;
    for i in 0..n {
        let frame = frame_for(i);
        let ctx = xdp_md(frame.len(), ingress);
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            r.return_value, verdict,
            "{prog}: run {i} got another verdict"
        );
        total += r.duration.as_nanos();
    }
    total as f64 / n as f64
}

/// A config with one Maglev service over `n` backends.
fn maglev_config(n: usize) -> Config {
    let backends: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ address = \"10.{}.{}.1\", port = 80 }}",
                i / 256,
                i % 256
            )
        })
        .collect();
    let text = format!(
        "[dataplane]\nflow_table_size = 4096\nmanage_neighbours = false\n[[service]]\nname = \"big\"\nvip = \"192.0.2.80\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"dsr\"\nbackend = [{}]\n",
        backends.join(", ")
    );
    Config::parse(Path::new("ring.toml"), &text).unwrap()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time from "plan decided" to "new ring live" for a 65537-slot Maglev ring
/// with `n` backends, alternating between all up and the first one down:
/// (median, max) of that, the whole apply's median (with the grace period
/// that frees the old half), and planning's median (the Maglev table).
fn ring_swap(ebpf: &mut Ebpf, n: usize, changes: usize) -> (f64, f64, f64, f64) {
    let mut dp = BpfDataplane::new(ebpf).unwrap();
    let config = maglev_config(n);
    let key = config.services[0].key();
    let first = config.services[0].backend_ref(&config.services[0].backends[0]);
    let mut planner = Planner::default();
    let mut programmer = Programmer::default();
    programmer
        .apply(&mut dp, planner.plan(&config, &Default::default()).unwrap())
        .unwrap();
    let (mut live, mut whole, mut planning) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..changes {
        let avail = if i % 2 == 0 {
            Availability::down([first].into())
        } else {
            Availability::default()
        };
        let t = std::time::Instant::now();
        let plan = planner.plan(&config, &avail).unwrap();
        planning.push(t.elapsed().as_secs_f64() * 1e3);
        let t = std::time::Instant::now();
        let st = programmer.apply(&mut dp, plan).unwrap();
        whole.push(t.elapsed().as_secs_f64() * 1e3);
        live.push(st.live_after.expect("the ring changed").as_secs_f64() * 1e3);
    }
    assert!(programmer.applied().services.iter().any(|s| s.key == key));
    let max = live.iter().cloned().fold(0.0, f64::max);
    (median(live), max, median(whole), median(planning))
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xdplb-bench: needs root (BPF_PROG_TEST_RUN and a network namespace)");
        std::process::exit(2);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The fixture table's lab, with a flow table large enough that new-flow
    // rows measure inserts, not LRU evictions.
    let mut lab = Lab::new("xdplb-bench", cases::CONFIG, Some(1 << 20));
    let table = cases::table(&lab);
    bpf::load_program(&mut lab.ebpf, "baseline_tx").unwrap();
    let fxa = xdplb_tests::wire::ifindex("fxa");
    let probe = cases::find(&table, ROWS[0].1).input.clone();
    let base_rep = repeated(&mut lab.ebpf, "baseline_tx", &probe, fxa, REPEAT).0;
    let base_single = single(&mut lab.ebpf, "baseline_tx", SINGLE_RUNS, fxa, 3, |_| {
        probe.clone()
    });
    let mut rows = Vec::new();
    for (label, name, method) in ROWS {
        let case = cases::find(&table, name);
        cases::prepare(&mut lab, case).unwrap();
        let (input, ingress, verdict) = (&case.input, case.ingress, case.verdict);
        let (ns, base, how) = match method {
            Method::Repeat => {
                let (ns, v) = repeated(&mut lab.ebpf, PROGRAM, input, ingress, REPEAT);
                assert_eq!(v, verdict, "{label}: the row's verdict changed");
                (ns, base_rep, "repeat")
            }
            Method::Single => {
                let ns = single(
                    &mut lab.ebpf,
                    PROGRAM,
                    SINGLE_RUNS,
                    ingress,
                    verdict,
                    |_| input.clone(),
                );
                (ns, base_single, "single")
            }
            Method::NewClients => {
                let ns = single(&mut lab.ebpf, PROGRAM, SINGLE_RUNS, ingress, verdict, |i| {
                    with_src(input, [10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
                });
                (ns, base_single, "single")
            }
        };
        rows.push((*label, how, ns, base, verdict, input.len()));
    }
    // Ring changes, on a program of their own (fresh maps).
    let mut ring_rows = Vec::new();
    for n in [2usize, 100, 1000] {
        let mut ebpf = bpf::load(4096, None).unwrap().ebpf;
        ring_rows.push((n, ring_swap(&mut ebpf, n, 21)));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("xdplb data path, fixture-table frames, BPF_PROG_TEST_RUN on one CPU");
    println!("machine: {cpu}, {cpus} CPUs, kernel {}", kernel.trim());
    println!(
        "baseline: bare XDP_TX program, {base_rep:.1} ns (repeat {REPEAT}), {base_single:.1} ns (single, {SINGLE_RUNS} runs)\n"
    );
    println!(
        "{:<28} {:<7} {:>6} {:>9} {:>10} {:>8}  verdict",
        "case", "method", "bytes", "ns/pkt", "baseline", "ratio"
    );
    for (name, method, ns_pkt, base, verdict, len) in rows {
        println!(
            "{name:<28} {method:<7} {len:>6} {ns_pkt:>9.1} {base:>10.1} {:>7.1}x  {}",
            ns_pkt / base,
            verdict_name(verdict)
        );
    }
    println!(
        "\nring change, 65537-slot Maglev ring, 21 changes each (one backend down, then back):"
    );
    println!(
        "{:<9} {:>22} {:>12} {:>26} {:>18}",
        "backends",
        "plan -> ring live (med)",
        "(max)",
        "whole apply incl. grace",
        "planning (Maglev)"
    );
    for (n, (live, max, whole, planning)) in ring_rows {
        println!(
            "{n:<9} {:>20.3} ms {:>9.3} ms {:>23.3} ms {:>15.3} ms",
            live, max, whole, planning
        );
    }
}
