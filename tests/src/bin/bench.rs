//! `cargo xtask bench`: ns per packet of the XDP data path, measured by the
//! kernel (BPF_PROG_TEST_RUN), each beside a bare XDP_TX program run the
//! same way in the same process. Ratios, not absolute times, are the result.
//!
//! Two methods, because NAT rewrites the frame in place and the kernel
//! re-runs a repeated test on the rewritten buffer:
//! - "repeat": one syscall runs the program N times (kernel-averaged);
//! - "single": N syscalls with repeat = 1 (fresh input each time; adds the
//!   kernel's per-run timing overhead, present in the baseline too).

use std::path::Path;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use xdplb::{
    config::Config,
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane},
    plan::{Availability, Planner},
};
use xdplb_tests::{CLIENT, CLIENT_MAC, LB_CLIENT_MAC, fib_lab};

const REPEAT: u32 = 1_000_000;
const SINGLE_RUNS: u32 = 200_000;

const CONFIG: &str = r#"
[dataplane]
flow_table_size = 1048576
manage_neighbours = false

[[service]]
name = "dsr"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80 }]

[[service]]
name = "nat"
vip = "192.0.2.20"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]
"#;

fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, 80, 1, 64240)
        .ack(1)
        .write(&mut v, &[0u8; 10])
        .unwrap();
    v // 64 bytes: 14 + 20 + 20 + 10
}

/// Kernel-averaged ns per run, `repeat` runs in one syscall.
fn repeated(ebpf: &mut Ebpf, prog: &'static str, frame: &[u8], repeat: u32) -> (f64, u32) {
    let p = bpf::xdp_program(ebpf, prog).unwrap();
    let mut out = vec![0u8; frame.len() + 256];
    let r = p
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .unwrap();
    (r.duration.as_nanos() as f64, r.return_value)
}

/// Mean kernel-measured ns over `n` single runs; `frame_for(i)` gives each input.
fn single(
    ebpf: &mut Ebpf,
    prog: &'static str,
    n: u32,
    frame_for: impl Fn(u32) -> Vec<u8>,
) -> (f64, u32) {
    let p = bpf::xdp_program(ebpf, prog).unwrap();
    let mut total = 0u128;
    let mut last = 0;
    for i in 0..n {
        let frame = frame_for(i);
        let mut out = vec![0u8; frame.len() + 256];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .unwrap();
        total += r.duration.as_nanos();
        last = r.return_value;
    }
    (total as f64 / n as f64, last)
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
    xdplb_tests::pin_to_cpu0();
    let ns = fib_lab("xdplb-bench");
    let _in = ns.enter();
    let config = Config::parse(Path::new("bench.toml"), CONFIG).unwrap();
    let mut ebpf = bpf::load(config.dataplane.flow_table_size, None)
        .unwrap()
        .ebpf;
    let mut dp = BpfDataplane::new(&mut ebpf).unwrap();
    Programmer::default()
        .apply(
            &mut dp,
            Planner::default()
                .plan(&config, &Default::default())
                .unwrap(),
        )
        .unwrap();

    let dsr_vip = [192, 0, 2, 10];
    let nat_vip = [192, 0, 2, 20];
    let est_dsr = tcp_frame(CLIENT, dsr_vip, 40000);
    let est_nat = tcp_frame(CLIENT, nat_vip, 40001);
    let non_vip = tcp_frame(CLIENT, [192, 0, 2, 99], 40002);
    // Prime the established flows.
    single(&mut ebpf, "xdplb", 1, |_| est_dsr.clone());
    single(&mut ebpf, "xdplb", 1, |_| est_nat.clone());
    // A distinct client per run: new flow-table (and for NAT, reverse-NAT) entries.
    let new_flow = |vip: [u8; 4]| {
        move |i: u32| {
            tcp_frame(
                [10, (i >> 16) as u8, (i >> 8) as u8, i as u8],
                vip,
                1024 + (i % 60000) as u16,
            )
        }
    };

    bpf::load_program(&mut ebpf, "baseline_tx").unwrap();
    let base_rep = repeated(&mut ebpf, "baseline_tx", &est_dsr, REPEAT).0;
    let base_single = single(&mut ebpf, "baseline_tx", SINGLE_RUNS, |_| est_dsr.clone()).0;
    let rows: Vec<(&str, &str, (f64, u32), f64)> = vec![
        (
            "established flow, DSR",
            "repeat",
            repeated(&mut ebpf, "xdplb", &est_dsr, REPEAT),
            base_rep,
        ),
        (
            "not for a VIP (XDP_PASS)",
            "repeat",
            repeated(&mut ebpf, "xdplb", &non_vip, REPEAT),
            base_rep,
        ),
        (
            "established flow, NAT",
            "single",
            single(&mut ebpf, "xdplb", SINGLE_RUNS, |_| est_nat.clone()),
            base_single,
        ),
        (
            "new flow, DSR (Maglev)",
            "single",
            single(&mut ebpf, "xdplb", SINGLE_RUNS, new_flow(dsr_vip)),
            base_single,
        ),
        (
            "new flow, NAT (Maglev)",
            "single",
            single(&mut ebpf, "xdplb", SINGLE_RUNS, new_flow(nat_vip)),
            base_single,
        ),
    ];
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
    println!("xdplb data path, 64-byte TCP frames, BPF_PROG_TEST_RUN on one CPU");
    println!("machine: {cpu}, {cpus} CPUs, kernel {}", kernel.trim());
    println!(
        "baseline: bare XDP_TX program, {base_rep:.1} ns (repeat {REPEAT}), {base_single:.1} ns (single, {SINGLE_RUNS} runs)\n"
    );
    println!(
        "{:<28} {:<7} {:>9} {:>10} {:>8}  verdict",
        "case", "method", "ns/pkt", "baseline", "ratio"
    );
    for (name, method, (ns_pkt, verdict), base) in rows {
        let verdict = match verdict {
            2 => "PASS",
            3 => "TX",
            4 => "REDIRECT",
            _ => "other",
        };
        println!(
            "{name:<28} {method:<7} {ns_pkt:>9.1} {base:>10.1} {:>7.1}x  {verdict}",
            ns_pkt / base
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
