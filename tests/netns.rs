//! End-to-end tests: real TCP/HTTP and UDP from a client namespace through
//! `xdplb` in an LB namespace to two backend server processes, for DSR and
//! NAT, in native and generic XDP mode.
//!
//! Topology (all addresses exist only inside these namespaces):
//!
//! ```text
//! client 198.51.100.2 -- cli [LB] b1 -- 203.0.113.11 backend b1 (VIP on lo)
//!                                 b2 -- 203.0.113.21 backend b2 (VIP on lo)
//! ```
//! The LB has no route to the VIP, so every answered request went through
//! the XDP program. Native mode on veth needs TX checksum offload off on the
//! senders into the LB and NAPI (GRO) on the peers receiving redirects.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_common::Reason;
use xdplb_tests::{
    BACKEND_LINKS, LbTopology, Netns, ProcessGuard, Xdplb, require_root, start_xdplb, target_bin,
    xdplb_args,
};

const VIP: &str = "192.0.2.10";
const TCP_CONNECTIONS: usize = 120;
const UDP_FLOWS: usize = 40;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Native,
    Generic,
}

struct Lab {
    // Field order is drop order: processes stop before namespaces go.
    daemon: Xdplb,
    servers: Vec<ProcessGuard>,
    /// Native mode: the pass-through program on the client's and backends'
    /// veth ends (detached when dropped).
    _peers: Vec<aya::Ebpf>,
    client: Netns,
    lb: Netns,
    backends: Vec<Netns>,
    config: std::path::PathBuf,
    pid_file: std::path::PathBuf,
    _turn: Turn,
}

/// Tests that measure throughput run alone; the others share the machine
/// (cargo runs them two at a time here).
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

enum Turn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

impl Turn {
    /// A panicking test poisons the lock; the others still get their turn.
    fn shared() -> Turn {
        Turn::Shared(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
    }
    fn exclusive() -> Turn {
        Turn::Exclusive(MACHINE.write().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn lab(mode: Mode, forwarding: &str, scheduler: &str) -> Lab {
    let (tcp_port, udp_port) = if forwarding == "nat" {
        (8080, 5353)
    } else {
        (80, 53)
    };
    lab_with(
        mode,
        &format!(
            r#"
[dataplane]
flow_table_size = 65536

[[service]]
name = "www.foobar.com"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "{scheduler}"
forwarding = "{forwarding}"
backend = [{{ address = "203.0.113.11", port = {tcp_port} }}, {{ address = "203.0.113.21", port = {tcp_port} }}]

[[service]]
name = "dns"
vip = "{VIP}"
port = 53
protocol = "udp"
scheduler = "{scheduler}"
forwarding = "{forwarding}"
backend = [{{ address = "203.0.113.11", port = {udp_port} }}, {{ address = "203.0.113.21", port = {udp_port} }}]
"#
        ),
    )
}

/// The command line of backend `i`'s test server (HTTP on 80 and 8080,
/// UDP on the VIP:53 and its own address:5353).
fn server_args(i: usize) -> Vec<String> {
    let srv = target_bin("xdplb-testsrv").display().to_string();
    [
        srv.as_str(),
        &format!("b{}", i + 1),
        "--tcp",
        "0.0.0.0:80",
        "0.0.0.0:8080",
        "--udp",
        &format!("{VIP}:53"),
        &format!("{}:5353", BACKEND_LINKS[i].addr),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_server(ns: &Netns, i: usize) -> ProcessGuard {
    let mut g = ProcessGuard::spawn(&format!("b{}", i + 1), &ns.name, &server_args(i));
    g.wait_for("listening", Duration::from_secs(10));
    g
}

/// The lab with `config` (its interfaces come from the command line).
fn lab_with(mode: Mode, config_text: &str) -> Lab {
    lab_in_turn(mode, config_text, Turn::shared())
}

/// The lab, built once this test has its `turn` of the machine.
fn lab_in_turn(mode: Mode, config_text: &str, turn: Turn) -> Lab {
    let topo = LbTopology::new("xdplb", VIP, mode == Mode::Native);
    let servers = topo
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| start_server(ns, i))
        .collect();
    let LbTopology {
        client,
        lb,
        backends,
    } = topo;
    let config = std::env::temp_dir().join(format!("{}.toml", lb.name));
    std::fs::write(&config, config_text).unwrap();
    let xdp_mode = if mode == Mode::Native {
        "native"
    } else {
        "generic"
    };
    let pid_file = config.with_extension("pid");
    let peers = if mode == Mode::Native {
        std::iter::once(&client)
            .chain(&backends)
            .map(|ns| xdplb_tests::programs::pass_through_on(ns, "eth0"))
            .collect()
    } else {
        Vec::new()
    };
    let daemon = start_xdplb(
        &lb,
        &target_bin("xdplb"),
        &config,
        &pid_file,
        &["--xdp-mode", xdp_mode],
    );
    let attached = daemon
        .log()
        .iter()
        .filter(|l| l.contains("XDP program attached") && l.contains(&format!("\"{xdp_mode}\"")))
        .count();
    assert_eq!(
        attached,
        3,
        "attached in {xdp_mode} mode on 3 interfaces:\n{}",
        daemon.log().join("\n")
    );
    Lab {
        daemon,
        servers,
        _peers: peers,
        client,
        lb,
        backends,
        config,
        pid_file,
        _turn: turn,
    }
}

impl Lab {
    /// Write `text` as the config, `xdplb reload`, and wait for the daemon's
    /// `n`-th "reload applied".
    fn reload(&mut self, text: &str, n: usize) {
        std::fs::write(&self.config, text).unwrap();
        xdplb_cmd(&["reload", "--pid-file", self.pid_file.to_str().unwrap()]);
        self.daemon
            .wait_for_count("reload applied", n, Duration::from_secs(10));
    }
}

/// One HTTP request on a new connection; returns the backend's name.
fn http_get(vip: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: www.foobar.com\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    if !resp.starts_with("HTTP/1.0 200") {
        return Err(format!("bad response {resp:?}"));
    }
    resp.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .map(str::to_string)
        .ok_or(format!("no name in {resp:?}"))
}

/// One datagram on a new socket (a new flow); returns the backend's name.
fn udp_ask(vip: SocketAddr) -> Result<String, String> {
    let s = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.connect(vip).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 256];
    let mut last = String::new();
    for _ in 0..3 {
        s.send(b"who").map_err(|e| e.to_string())?;
        match s.recv(&mut buf) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                return text
                    .trim()
                    .strip_prefix("backend=")
                    .map(str::to_string)
                    .ok_or(format!("bad reply {text:?}"));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("no reply: {last}"))
}

/// Run `n` requests (bounded by count and a 90 s deadline) and tally them.
fn load(
    n: usize,
    f: impl Fn() -> Result<String, String>,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut by_backend = BTreeMap::new();
    let mut errors = Vec::new();
    for _ in 0..n {
        if Instant::now() > deadline {
            errors.push("deadline reached".into());
            break;
        }
        match f() {
            Ok(name) => *by_backend.entry(name).or_insert(0) += 1,
            Err(e) => errors.push(e),
        }
    }
    (by_backend, errors)
}

/// How many CPUs counted `reason`, from the daemon's pinned per-CPU map.
fn cpus_that_counted(lab: &Lab, reason: Reason) -> usize {
    let path = lab
        .daemon
        .pin_root
        .join(format!("v{}", lb_common::LAYOUT_VERSION))
        .join(lb_common::names::REASONS);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map: aya::maps::PerCpuArray<aya::maps::MapData, u64> =
        aya::maps::PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data)).unwrap();
    let values = map.get(&(reason as u32), 0).unwrap();
    values.iter().filter(|v| **v > 0).count()
}

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

/// A NAT round-robin config for the TCP VIP with the given (address, weight)
/// backends on port 8080, plus `extra` appended verbatim.
fn nat_config(backends: &[(&str, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("{{ address = \"{a}\", port = 8080, weight = {w} }}"))
        .collect();
    format!(
        "[dataplane]\nflow_table_size = 65536\n\n[[service]]\nname = \"www.foobar.com\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{}]\n{extra}",
        list.join(", ")
    )
}

/// A connection held open across reloads: one line out, the backend's name back.
struct Held(std::io::BufReader<TcpStream>);

impl Held {
    fn open(vip: SocketAddr) -> Held {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut h = Held(std::io::BufReader::new(s));
        h.0.get_mut().write_all(b"HOLD\n").unwrap();
        h
    }

    fn ask(&mut self) -> Result<String, String> {
        use std::io::BufRead;
        if self.0.get_mut().write_all(b"ping\n").is_err() {
            return Err("write failed".into());
        }
        let mut line = String::new();
        self.0.read_line(&mut line).map_err(|e| e.to_string())?;
        line.trim()
            .strip_prefix("backend=")
            .map(str::to_string)
            .ok_or(format!("bad reply {line:?}"))
    }

    fn first(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.0.read_line(&mut line).expect("first reply");
        line.trim()
            .strip_prefix("backend=")
            .expect("backend name")
            .to_string()
    }
}

#[test]
fn reload_applies_diffs_keeps_established_flows_and_rejects_bad_configs() {
    let test = "reload_applies_diffs_keeps_established_flows_and_rejects_bad_configs";
    if !require_root(test) {
        return;
    }
    let mut lab = lab(Mode::Native, "nat", "round_robin");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let reload = |lab: &Lab| {
        let out = std::process::Command::new(target_bin("xdplb"))
            .args(["reload", "--pid-file", lab.pid_file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "xdplb reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];

    let _in = lab.client.enter();
    let mut held = Held::open(vip);
    let held_on = held.first();
    let (kept_addr, other_addr) = if held_on == "b1" {
        both
    } else {
        [both[1], both[0]]
    }
    .map(|(a, _)| a)
    .into();

    // 1. Re-weight and add a service: applied live, the held flow carries on.
    std::fs::write(
        &lab.config,
        nat_config(&[(kept_addr, 3), (other_addr, 1)], "[[service]]\nname = \"extra\"\nvip = \"192.0.2.11\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nbackend = [{ address = \"203.0.113.11\", port = 8080 }]\n"),
    )
    .unwrap();
    reload(&lab);
    lab.daemon
        .wait_for_count("reload applied", 1, Duration::from_secs(10));
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after reload 1"
    );
    let (spread, errors) = load(40, || http_get(vip));
    assert!(errors.is_empty(), "after reload 1: {errors:?}");
    let kept_name = held_on.clone();
    assert!(
        spread.get(&kept_name).copied().unwrap_or(0) >= 25,
        "weight 3:1 not applied: {spread:?}"
    );
    let extra: SocketAddr = "192.0.2.11:80".parse().unwrap();
    assert_eq!(
        http_get(extra).as_deref(),
        Ok("b1"),
        "service added by reload"
    );

    // 2. An invalid config is rejected; the previous one keeps serving.
    std::fs::write(
        &lab.config,
        nat_config(&both, "").replace("port = 8080", "port = 0"),
    )
    .unwrap();
    reload(&lab);
    lab.daemon
        .wait_for_count("reload rejected", 1, Duration::from_secs(10));
    let (spread2, errors) = load(20, || http_get(vip));
    assert!(
        errors.is_empty() && spread2.len() == 2,
        "old config must keep serving: {spread2:?} {errors:?}"
    );
    assert_eq!(
        http_get(extra).as_deref(),
        Ok("b1"),
        "old config's extra service still there"
    );
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after rejected reload"
    );

    // 3. Remove the other backend: new flows avoid it, the held flow stays.
    std::fs::write(&lab.config, nat_config(&[(kept_addr, 1)], "")).unwrap();
    reload(&lab);
    lab.daemon
        .wait_for_count("reload applied", 2, Duration::from_secs(10));
    let (spread3, errors) = load(20, || http_get(vip));
    assert!(errors.is_empty(), "after removing a backend: {errors:?}");
    assert_eq!(
        spread3.keys().collect::<Vec<_>>(),
        vec![&kept_name],
        "removed backend still gets flows: {spread3:?}"
    );
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after backend removal"
    );
    assert!(
        http_get(extra).is_err(),
        "service removed by reload still answers"
    );
    drop(_in);
    // Managed neighbour entries follow the backend set across reloads.
    let neigh = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "neigh", "show"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    let managed = |addr: &str| {
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{addr} ")) && l.contains("managed"))
    };
    assert!(
        managed(kept_addr),
        "kept backend lost its managed entry:\n{neigh}"
    );
    assert!(
        !managed(other_addr),
        "removed backend's managed entry left behind:\n{neigh}"
    );
    let status = lab.daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit {status:?}"
    );
}

// --- Control plane: health, passive health, hitless restart, metrics --------

const CHECK_INTERVAL_MS: u64 = 300;
const CHECK_TIMEOUT_MS: u64 = 250;
const FALL: u64 = 3;

/// One TCP service over both backends with `[service.*]` tables appended,
/// and metrics on the LB namespace's loopback.
fn service_config(forwarding: &str, tables: &str) -> String {
    let port = if forwarding == "nat" { 8080 } else { 80 };
    format!(
        r#"
[dataplane]
flow_table_size = 65536

[control]
metrics_address = "127.0.0.1:9100"

[[service]]
name = "www.foobar.com"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "{forwarding}"
backend = [{{ address = "203.0.113.11", port = {port} }}, {{ address = "203.0.113.21", port = {port} }}]
{tables}
"#
    )
}

/// One request's start time and outcome.
type Outcome = (Instant, Result<String, String>);

/// New HTTP connections from the client namespace until `stop` is set,
/// bounded by 4000 requests and 60 s.
fn background_load(client: &Netns, vip: SocketAddr, stop: &AtomicBool) -> Vec<Outcome> {
    let _in = client.enter();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) && out.len() < 4000 && Instant::now() < deadline {
        let start = Instant::now();
        out.push((start, http_get(vip)));
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

/// GET /metrics from the daemon (it listens on the LB namespace's loopback).
fn scrape(lab: &Lab) -> String {
    let _in = lab.lb.enter();
    let mut s = TcpStream::connect("127.0.0.1:9100").expect("metrics endpoint");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    body
}

/// The value of the sample of `metric` whose labels contain `label`.
fn sample(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn status_table(lab: &Lab) -> String {
    let out = std::process::Command::new(target_bin("xdplb"))
        .args(["status", "--socket"])
        .arg(&lab.daemon.status_socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xdplb status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

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
    // Worst case from the break to the backend being out: the first failing
    // probe starts up to one interval later, `fall` probes in all, the last
    // one taking up to its timeout. The margin covers probe scheduling and
    // the report's handling on a loaded 2-core machine (seen: tens of ms).
    let bound = Duration::from_millis(CHECK_INTERVAL_MS * FALL + CHECK_TIMEOUT_MS);
    let margin = Duration::from_millis(500);
    let (outcomes, broke, went_down, restored, went_up, down_metrics, down_status) =
        std::thread::scope(|s| {
            let load = s.spawn(|| background_load(&lab.client, vip, &stop));
            std::thread::sleep(Duration::from_secs(1));
            let broke = Instant::now();
            if forwarding == "nat" {
                lab.servers[0].stop();
            } else {
                lab.backends[0].sh(&["ip", "addr", "del", &format!("{VIP}/32"), "dev", "lo"]);
            }
            lab.daemon.wait_for("backend DOWN", Duration::from_secs(10));
            let went_down = Instant::now();
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
            std::thread::sleep(Duration::from_secs(1));
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
        went_down - broke,
        went_up - restored
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

/// tc (TCX) ingress programs attached to `dev` in `ns`.
fn tcx_attached(ns: &Netns, dev: &str) -> usize {
    let _in = ns.enter();
    aya::programs::SchedClassifier::query_tcx(dev, aya::programs::TcAttachType::Ingress)
        .map(|(_, progs)| progs.len())
        .unwrap_or_else(|e| panic!("query tcx on {dev}: {e}"))
}

fn xdp_attached(lb: &Netns) -> usize {
    let out = std::process::Command::new("ip")
        .args(["-n", &lb.name, "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("prog/xdp")
        .count()
}

fn xdplb_cmd(args: &[&str]) {
    let out = std::process::Command::new(target_bin("xdplb"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "xdplb {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Start another daemon on the same pins; it must adopt them.
fn restart_daemon(
    lb: &Netns,
    config: &std::path::Path,
    pid_file: &std::path::Path,
    pin_root: &std::path::Path,
    name: &str,
) -> ProcessGuard {
    let args = xdplb_args(
        &target_bin("xdplb"),
        config,
        pid_file,
        pin_root,
        &["--xdp-mode", "native"],
    );
    let mut p = ProcessGuard::spawn_in_netns(name, &lb.name, &args);
    p.wait_for("xdplb ready", Duration::from_secs(30));
    assert!(
        p.log()
            .iter()
            .any(|l| l.contains("adopting the pinned data path")),
        "{name} did not adopt the pins:\n{}",
        p.log().join("\n")
    );
    p
}

#[test]
fn hitless_restart_survives_sigkill_and_keep_running_stop() {
    let test = "hitless_restart_survives_sigkill_and_keep_running_stop";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held = {
        let _in = lab.client.enter();
        Held::open(vip)
    };
    let held_on = held.first();
    let pins = lab
        .daemon
        .pin_root
        .join(format!("v{}", lb_common::LAYOUT_VERSION));
    let stop = AtomicBool::new(false);
    let (outcomes, gap) = std::thread::scope(|s| {
        let load = s.spawn(|| background_load(&lab.client, vip, &stop));
        std::thread::sleep(Duration::from_millis(500));
        // 1. SIGKILL: no chance to clean up. Forwarding must go on.
        let pid = lab.daemon.child.id() as i32;
        // SAFETY: our own child, by PID.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let _ = lab.daemon.child.wait();
        let killed = Instant::now();
        assert!(
            pins.join("link_cli").exists() && pins.join("FLOWS").exists(),
            "pins gone after SIGKILL"
        );
        assert_eq!(xdp_attached(&lab.lb), 3, "XDP detached by the kill");
        assert_eq!(
            tcx_attached(&lab.lb, "cli"),
            1,
            "tc program detached by the kill"
        );
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection without a daemon"
        );
        // 2. A new daemon adopts the pinned maps and links.
        lab.daemon.process = restart_daemon(
            &lab.lb,
            &lab.config,
            &lab.pid_file,
            &lab.daemon.pin_root,
            "xdplb-2",
        );
        let restarted = Instant::now();
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection after restart"
        );
        std::thread::sleep(Duration::from_millis(500));
        // 3. `xdplb stop --keep-running`: exits, forwarding stays; a third adopts.
        let pid_file = lab.pid_file.display().to_string();
        xdplb_cmd(&["stop", "--keep-running", "--pid-file", &pid_file]);
        assert_eq!(xdp_attached(&lab.lb), 3, "--keep-running detached");
        assert_eq!(
            tcx_attached(&lab.lb, "b1"),
            1,
            "--keep-running detached the tc program (or a restart added a second)"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection after --keep-running stop"
        );
        lab.daemon.process = restart_daemon(
            &lab.lb,
            &lab.config,
            &lab.pid_file,
            &lab.daemon.pin_root,
            "xdplb-3",
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), (killed, restarted))
    });
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection at the end"
    );
    let failures: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    let (killed, restarted) = gap;
    let without_daemon = outcomes
        .iter()
        .filter(|(t, r)| *t > killed && *t < restarted && r.is_ok())
        .count();
    let spread: BTreeMap<&str, usize> = outcomes.iter().fold(BTreeMap::new(), |mut m, (_, r)| {
        if let Ok(b) = r {
            *m.entry(b.as_str()).or_insert(0) += 1;
        }
        m
    });
    eprintln!(
        "{test}: {} new connections, {} failed, {without_daemon} while no daemon ran; spread {spread:?}",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{test}: failures {:?}",
        &failures[..failures.len().min(3)]
    );
    assert!(
        without_daemon > 10,
        "{test}: too few connections tried without a daemon"
    );
    assert_eq!(spread.len(), 2, "{test}: {spread:?}");
    // 4. `xdplb stop`: detach, unpin, release.
    let pid_file = lab.pid_file.display().to_string();
    xdplb_cmd(&["stop", "--pid-file", &pid_file]);
    assert_eq!(
        xdp_attached(&lab.lb),
        0,
        "XDP left attached by a clean stop"
    );
    for dev in ["cli", "b1", "b2"] {
        assert_eq!(tcx_attached(&lab.lb, dev), 0, "tc program left on {dev}");
    }
    assert!(!lab.daemon.pin_root.exists(), "pins left by a clean stop");
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("unpinned"), "{log}");
}

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

/// A MariaDB server in a backend namespace, its data under the temp dir;
/// shut down (SIGTERM) and removed on drop.
struct Mariadb {
    process: ProcessGuard,
    dir: std::path::PathBuf,
}

impl Mariadb {
    fn start(ns: &Netns) -> Mariadb {
        let dir = std::env::temp_dir().join(format!("{}-mariadb", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("data");
        let out = std::process::Command::new("mariadb-install-db")
            .args([
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .expect("mariadb-install-db (cargo xtask setup installs mariadb-server-core)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let args: Vec<String> = vec![
            "mariadbd".into(),
            "--no-defaults".into(),
            "--user=root".into(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", dir.join("sock").display()),
            format!("--pid-file={}", dir.join("pid").display()),
            "--bind-address=0.0.0.0".into(),
            "--port=3306".into(),
            "--skip-log-bin".into(),
            "--skip-name-resolve".into(),
            "--innodb-buffer-pool-size=16M".into(),
        ];
        let mut process = ProcessGuard::spawn(&format!("mariadbd@{}", ns.name), &ns.name, &args);
        process.wait_for("ready for connections", Duration::from_secs(60));
        let m = Mariadb { process, dir };
        m.sql(
            "CREATE USER xdplb_check@'%' IDENTIFIED VIA mysql_native_password USING PASSWORD('pw')",
        );
        m
    }

    /// Run SQL as root over the server's Unix socket.
    fn sql(&self, q: &str) -> String {
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-u", "root", "-N", "-S"])
            .arg(self.dir.join("sock"))
            .args(["-e", q])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `SELECT @@global.read_only` through a VIP from the client namespace, as
/// the check's user, on a new connection.
fn read_only_via(client: &Netns, vip: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &client.name,
            "mariadb",
            "--no-defaults",
            "--connect-timeout=3",
            "-h",
            vip,
        ])
        .args([
            "-u",
            "xdplb_check",
            "-ppw",
            "-N",
            "-e",
            "SELECT @@global.read_only",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "via {vip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Scrape until `backend_up(writer b1, writer b2, reader b1, reader b2)`
/// equals `want`, or panic after `timeout`. Returns how long it took.
fn wait_roles(lab: &Lab, want: [f64; 4], timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let m = scrape(lab);
        let up = |svc: &str, b: &str| {
            m.lines()
                .find(|l| {
                    l.starts_with("xdplb_backend_up{")
                        && l.contains(&format!("service=\"{svc}\""))
                        && l.contains(&format!("backend=\"{b}:3306\""))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or(-1.0)
        };
        let got = [
            up("mysql-writer", "203.0.113.11"),
            up("mysql-writer", "203.0.113.21"),
            up("mysql-reader", "203.0.113.11"),
            up("mysql-reader", "203.0.113.21"),
        ];
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "roles {got:?}, want {want:?} after {timeout:?}:\n{}",
            lab.daemon.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A writer VIP follows the MySQL primary and a reader VIP the replica, by
/// the check's role test against real MariaDB servers, also when the roles
/// swap.
#[test]
fn mysql_role_checks_follow_the_primary() {
    let test = "mysql_role_checks_follow_the_primary";
    if !require_root(test) {
        return;
    }
    let service = |name: &str, vip: &str, role: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = 3306\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 3306 }}, {{ address = \"203.0.113.21\", port = 3306 }}]\n[service.check]\nkind = \"mysql\"\nmysql_role = \"{role}\"\nmysql_user = \"xdplb_check\"\nmysql_password = \"pw\"\ninterval_ms = 300\ntimeout_ms = 250\nrise = 2\nfall = 2\n"
        )
    };
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}{}",
        service("mysql-writer", "192.0.2.20", "read_write"),
        service("mysql-reader", "192.0.2.21", "read_only")
    );
    let lab = lab_with(Mode::Native, &config);
    let db1 = Mariadb::start(&lab.backends[0]);
    let db2 = Mariadb::start(&lab.backends[1]);
    db2.sql("SET GLOBAL read_only = 1");
    // b1 primary, b2 replica.
    let settled = wait_roles(&lab, [1.0, 0.0, 0.0, 1.0], Duration::from_secs(20));
    for _ in 0..4 {
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.20"),
            "0",
            "writer VIP reached a replica"
        );
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.21"),
            "1",
            "reader VIP reached the primary"
        );
    }
    // Fail over: b2 becomes the primary.
    db1.sql("SET GLOBAL read_only = 1");
    db2.sql("SET GLOBAL read_only = 0");
    let swapped = wait_roles(&lab, [0.0, 1.0, 1.0, 0.0], Duration::from_secs(10));
    for _ in 0..4 {
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.20"),
            "0",
            "writer VIP after the swap"
        );
        assert_eq!(
            read_only_via(&lab.client, "192.0.2.21"),
            "1",
            "reader VIP after the swap"
        );
    }
    eprintln!("{test}: roles settled {settled:?} after start; followed a swap in {swapped:?}");
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("server is read-only (a replica)"), "{log}");
    assert!(log.contains("server is read-write (the primary)"), "{log}");
}

/// Path-MTU discovery through a NAT VIP: the LB's link to the backend has a
/// smaller MTU than the client's path, so the client's full-sized segments
/// cannot be forwarded. The LB must answer them with ICMP "fragmentation
/// needed" quoting the packet as the client sent it (to the VIP); the
/// client then lowers its path MTU, re-sends smaller segments, and the
/// request completes. An ICMP quoting the translated packet (to the backend)
/// would be ignored by the client, and the connection would stall.
#[test]
fn path_mtu_discovery_works_through_a_nat_vip() {
    let test = "path_mtu_discovery_works_through_a_nat_vip";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080 }}]\n"
    );
    let lab = lab_with(Mode::Native, &config);
    // Only the LB's side of the link to backend 1 is small: the backend
    // still advertises a 1460-byte MSS, so the client sends 1500-byte packets.
    lab.lb.sh(&["ip", "link", "set", "b1", "mtu", "1280"]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let pad = "x".repeat(6000);
    let request = format!("GET / HTTP/1.0\r\nHost: www\r\nX-Pad: {pad}\r\n\r\n");
    let started = Instant::now();
    let result = {
        let _in = lab.client.enter();
        (|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read: {e}"))?;
            Ok(resp)
        })()
    };
    let took = started.elapsed();
    let route = std::process::Command::new("ip")
        .args(["-n", &lab.client.name, "route", "get", VIP])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    let m = scrape(&lab);
    let icmps = sample(&m, "xdplb_packets_total", "reason=\"tx_icmp_frag_needed\"").unwrap_or(0.0);
    eprintln!(
        "{test}: request took {took:?}; {icmps} ICMPs sent; client route: {}",
        route.trim()
    );
    let resp = result.unwrap_or_else(|e| {
        panic!(
            "{test}: large request through the VIP failed after {took:?}: {e}\nclient route: {route}\n{}",
            lab.daemon.log().join("\n")
        )
    });
    assert!(resp.starts_with("HTTP/1.0 200"), "{test}: {resp:?}");
    assert!(
        resp.contains(&format!("request_bytes={}\n", request.len())),
        "{test}: the backend did not receive the whole {}-byte request: {resp:?}",
        request.len()
    );
    assert!(
        icmps >= 1.0,
        "{test}: no ICMP fragmentation-needed counted:\n{m}"
    );
    assert!(
        route.contains("mtu 1280"),
        "{test}: the client did not learn the path MTU from the LB's ICMP: {route}"
    );
}

/// A counter of the TCP MIB extension (`/proc/net/netstat`) in `ns`.
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", "/proc/net/netstat"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/net/netstat"))
}

/// MAC address of `dev` in `ns`.
fn mac_of(ns: &Netns, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "link", "show", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev}: {text}"))
        .to_string()
}

/// The VIP is a local address of the LB (as on an HA node that answers ARP
/// for it), and the LB has never learned the client's MAC (the client knows
/// its gateway's statically, so it never ARPs). The backend's SYN-ACK,
/// translated to come from the VIP, has no neighbour to go to: handed to the
/// IP stack it would be dropped as a martian (source: a local address) and
/// the connection would hang. Marked for the tc program instead, it goes
/// through the kernel's neighbour resolution and reaches the client at the
/// first try: no SYN is retransmitted.
#[test]
fn a_client_the_lb_never_saw_gets_answers_from_a_local_vip() {
    let test = "a_client_the_lb_never_saw_gets_answers_from_a_local_vip";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    lab.lb
        .sh(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let lb_mac = mac_of(&lab.lb, "cli");
    lab.client.sh(&[
        "ip",
        "neigh",
        "replace",
        "198.51.100.1",
        "lladdr",
        &lb_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    lab.lb.sh(&["ip", "neigh", "flush", "dev", "cli"]);
    let neigh = |lab: &Lab| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lb.name, "neigh", "show", "198.51.100.2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(neigh(&lab), "", "the LB must not know the client yet");
    let retrans_before = tcp_ext(&lab.client, "TCPSynRetrans");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (first, more) = {
        let _in = lab.client.enter();
        (http_get(vip), load(20, || http_get(vip)))
    };
    let retransmitted = tcp_ext(&lab.client, "TCPSynRetrans") - retrans_before;
    let m = scrape(&lab);
    let rescued = sample(&m, "xdplb_packets_total", "reason=\"pass_no_neighbour\"").unwrap_or(0.0);
    let fast = sample(&m, "xdplb_packets_total", "reason=\"fwd_reverse_nat\"").unwrap_or(0.0);
    let learned = neigh(&lab);
    eprintln!(
        "{test}: first request {first:?}; {} more ok; {rescued} replies sent through neighbour resolution, then {fast} translated in XDP; SYNs retransmitted: {retransmitted}; LB now has: {learned}",
        more.0.values().sum::<usize>()
    );
    let log = lab.daemon.log().join("\n");
    assert!(
        first.is_ok(),
        "{test}: first connection failed: {first:?}\n{log}"
    );
    assert!(
        more.1.is_empty(),
        "{test}: later connections failed: {:?}",
        more.1
    );
    assert_eq!(
        retransmitted, 0,
        "{test}: the client had to retransmit SYNs: the first SYN-ACK did not reach it"
    );
    assert!(
        rescued >= 1.0,
        "{test}: no reply went through neighbour resolution:\n{m}"
    );
    assert!(
        fast >= 20.0,
        "{test}: later replies not translated in XDP:\n{m}"
    );
    assert!(
        learned.contains("lladdr"),
        "{test}: the LB did not resolve the client: {learned:?}"
    );
    lab.daemon.stop();
}

/// One connection of a load run.
struct Attempt {
    start: Instant,
    /// The client's port: under load they repeat within seconds.
    port: u16,
    result: Result<String, String>,
    /// From connect to the whole response.
    took: Duration,
}

/// One `Connection: close` HTTP/1.1 request on a new connection, as a
/// browser or `wrk -H 'Connection: close'` makes it. Timeouts exceed one SYN
/// retransmission (1 s), which a redispatched connection waits for.
fn close_request(vip: SocketAddr) -> (u16, Result<String, String>) {
    let mut s = match TcpStream::connect_timeout(&vip, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => return (0, Err(format!("connect: {e}"))),
    };
    let port = s.local_addr().map_or(0, |a| a.port());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let result = (|| {
        s.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)
            .map_err(|e| format!("read: {e}"))?;
        resp.lines()
            .find_map(|l| l.strip_prefix("backend="))
            .map(str::to_string)
            .ok_or(format!("bad response {resp:?}"))
    })();
    (port, result)
}

/// Up to `total` connections from `workers` threads in the client
/// namespace, until `stop` is set or `deadline` passes: bounded in count and
/// time.
fn hammer(
    client: &Netns,
    vip: SocketAddr,
    total: usize,
    workers: usize,
    deadline: Duration,
    stop: &AtomicBool,
) -> Vec<Attempt> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let until = Instant::now() + deadline;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let _in = client.enter();
                    let mut out = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < total
                        && !stop.load(Ordering::Relaxed)
                        && Instant::now() < until
                    {
                        let start = Instant::now();
                        let (port, result) = close_request(vip);
                        out.push(Attempt {
                            start,
                            port,
                            result,
                            took: start.elapsed(),
                        });
                    }
                    out
                })
            })
            .collect();
        let mut all: Vec<Attempt> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_by_key(|a| a.start);
        all
    })
}

/// One run of heavy legitimate load: `LOAD_RUN` `Connection: close`
/// connections from `LOAD_WORKERS` workers, within a minute.
fn legitimate_load(client: &Netns, vip: SocketAddr) -> Vec<Attempt> {
    hammer(
        client,
        vip,
        LOAD_RUN,
        LOAD_WORKERS,
        Duration::from_secs(60),
        &AtomicBool::new(false),
    )
}

const LOAD_WORKERS: usize = 24;
/// Connections per measured run.
const LOAD_RUN: usize = 15_000;
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

/// The shipped config's passive thresholds (config/www.foobar.com.toml).
const SHIPPED_PASSIVE: &str =
    "[service.passive]\nsyn_retransmits = 20\nrefused = 20\nwindow_ms = 1000\n";

/// Issue 7's scenario: thousands of new `Connection: close` connections per
/// second, client ports forced to repeat by a 256-port range, NAT with the
/// shipped HTTP check and passive health.
/// 1. With passive health on, no backend is taken out, no connection fails,
///    and throughput stays within 10% of the same load without it (runs
///    alternate A B A B A B in this process; the best of each compared;
///    printed).
/// 2. A backend killed under that load stops taking new connections within
///    200 ms (passive health; the daemon's own log time), no connection
///    started after the kill fails (redispatch), and when it returns it gets
///    its share again within rise x interval + 1 s.
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
        "{test}: kill under load: {} connections, {in_flight_failures} failed that were in flight at the kill, {} failed that started after; held {held_after:.1?} after the kill; share back {back_after:.1?} after the restart (bound {bound:?})",
        attempts.len(),
        late_failures.len()
    );
    assert!(
        held_after < Duration::from_millis(200),
        "{test}: passive health took {held_after:?}\n{log}"
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

/// Host safety: a neighbour entry the daemon did not create (here a static
/// one for backend 2, made by the operator while the daemon ran) is never
/// changed or removed; the daemon's own managed entry (backend 1) goes with
/// it on a clean stop.
#[test]
fn neighbour_entries_the_daemon_did_not_create_are_left_alone() {
    let test = "neighbour_entries_the_daemon_did_not_create_are_left_alone";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &nat_config(&[("203.0.113.11", 1)], ""));
    let b2_mac = mac_of(&lab.backends[1], "eth0");
    lab.lb.sh(&[
        "ip",
        "neigh",
        "replace",
        "203.0.113.21",
        "lladdr",
        &b2_mac,
        "dev",
        "b2",
        "nud",
        "permanent",
    ]);
    let neigh = |lab: &Lab, addr: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lb.name, "neigh", "show", addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = neigh(&lab, "203.0.113.21");
    lab.reload(
        &nat_config(&[("203.0.113.11", 1), ("203.0.113.21", 1)], ""),
        1,
    );
    let ours = neigh(&lab, "203.0.113.11");
    assert!(
        ours.contains("managed"),
        "{test}: backend 1 not managed: {ours}"
    );
    assert_eq!(
        neigh(&lab, "203.0.113.21"),
        before,
        "{test}: changed while running"
    );
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("not xdplb's; left as it is"), "{test}:\n{log}");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (spread, errors) = {
        let _in = lab.client.enter();
        load(20, || http_get(vip))
    };
    assert!(
        errors.is_empty() && spread.len() == 2,
        "{test}: {spread:?} {errors:?}"
    );
    let status = lab.daemon.stop();
    assert!(status.is_some_and(|s| s.success()));
    assert_eq!(
        neigh(&lab, "203.0.113.21"),
        before,
        "{test}: the operator's entry changed"
    );
    assert!(
        !neigh(&lab, "203.0.113.11").contains("managed"),
        "{test}: the daemon's own entry left behind"
    );
}

/// GET `path` from `addr` inside `ns`; the body.
fn http_body(ns: &Netns, addr: &str, path: &str) -> String {
    let _in = ns.enter();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(resp)
}

/// A real Prometheus server (Debian's) scrapes the daemon's endpoint and
/// loads the shipped alerting rules: the exposition parses, the samples the
/// dashboard and rules use arrive with the right values, `/status` and
/// `/healthz` answer.
#[test]
fn a_real_prometheus_scrapes_the_endpoint_and_loads_the_rules() {
    let test = "a_real_prometheus_scrapes_the_endpoint_and_loads_the_rules";
    if !require_root(test) {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if std::process::Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            !ci,
            "{test}: prometheus is not installed (cargo xtask setup installs it)"
        );
        eprintln!("SKIP {test}: prometheus is not installed");
        return;
    }
    let lab = lab_with(Mode::Native, &service_config("nat", ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (_, errors) = {
        let _in = lab.client.enter();
        load(20, || http_get(vip))
    };
    assert!(errors.is_empty(), "{errors:?}");
    let dir = std::env::temp_dir().join(format!("{}-prometheus", lab.lb.name));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/xdplb-alerts.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: xdplb\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n",
            rules.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = vec![
        "prometheus".into(),
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        "--web.listen-address=127.0.0.1:9090".into(),
    ];
    let mut prom = ProcessGuard::spawn("prometheus", &lab.lb.name, &args);
    prom.wait_for(
        "Server is ready to receive web requests",
        Duration::from_secs(30),
    );
    let query = |q: &str| -> Option<f64> {
        let body = http_body(
            &lab.lb,
            "127.0.0.1:9090",
            &format!("/api/v1/query?query={q}"),
        );
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    // Scrapes every second: wait (bounded) for the first successful one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while query("up%7Bjob%3D%22xdplb%22%7D") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{test}: never scraped:\n{}",
            prom.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let fwd = query("xdplb_packets_total%7Breason%3D%22fwd_nat%22%7D").unwrap_or(0.0);
    let conns = query("sum(xdplb_service_connections_total)").unwrap_or(0.0);
    let up = query("xdplb_backend_up%7Bbackend%3D%22203.0.113.11%3A8080%22%7D");
    eprintln!("{test}: Prometheus sees fwd_nat={fwd}, connections={conns}, backend up={up:?}");
    assert!(fwd >= 20.0, "{test}: fwd_nat {fwd}");
    assert_eq!(conns, 20.0, "{test}: one connection per request");
    assert_eq!(up, Some(1.0));
    let rules_json = http_body(&lab.lb, "127.0.0.1:9090", "/api/v1/rules");
    for alert in [
        "XdplbNotScraped",
        "XdplbBackendDown",
        "XdplbServiceWithoutBackend",
        "XdplbDropsRising",
    ] {
        assert!(
            rules_json.contains(alert),
            "{test}: rule {alert} not loaded: {rules_json}"
        );
    }
    // The other endpoints of the same server.
    let status: serde_json::Value =
        serde_json::from_str(&http_body(&lab.lb, "127.0.0.1:9100", "/status")).unwrap();
    assert_eq!(status["services"][0]["name"], "www.foobar.com");
    assert_eq!(http_body(&lab.lb, "127.0.0.1:9100", "/healthz"), "ok\n");
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Client addresses 10.200.0.0/16: "any-IP" on the client's loopback (a
/// local route), routed to the client by the LB, so one namespace can be
/// thousands of clients.
fn many_clients(lab: &Lab) {
    lab.client
        .sh(&["ip", "route", "add", "local", "10.200.0.0/16", "dev", "lo"]);
    lab.lb
        .sh(&["ip", "route", "add", "10.200.0.0/16", "via", "198.51.100.2"]);
}

/// One `Connection: close` request to the VIP from client address `src`.
fn request_from(src: std::net::Ipv4Addr) -> Result<String, String> {
    use std::os::fd::{FromRawFd as _, IntoRawFd as _};
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    socket
        .bind(&SocketAddr::from((src, 0)).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    socket
        .connect_timeout(&vip.into(), Duration::from_secs(3))
        .map_err(|e| format!("connect from {src}: {e}"))?;
    // SAFETY: the fd came from a connected socket we own.
    let mut s = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    resp.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .map(str::to_string)
        .ok_or(format!("bad response {resp:?}"))
}

/// Issue 10's source_hash: weights 3:1 give 3:1 over 1000 connections from
/// 500 client addresses (within 5 points); every client keeps its backend
/// across connections; removing a backend moves only its own clients.
#[test]
fn source_hash_keeps_clients_weights_hold_and_only_a_removed_backends_clients_move() {
    let test = "source_hash_keeps_clients_weights_hold_and_only_a_removed_backends_clients_move";
    if !require_root(test) {
        return;
    }
    let config = |backends: &str| {
        format!(
            "[dataplane]\nflow_table_size = 65536\n\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"source_hash\"\nforwarding = \"nat\"\nbackend = [{backends}]\n"
        )
    };
    let both = "{ address = \"203.0.113.11\", port = 8080, weight = 3 }, { address = \"203.0.113.21\", port = 8080, weight = 1 }";
    let mut lab = lab_with(Mode::Native, &config(both));
    many_clients(&lab);
    let clients: Vec<std::net::Ipv4Addr> = (0..500u32)
        .map(|i| std::net::Ipv4Addr::from(0x0ac8_0000 + 1 + i * 7))
        .collect();
    let run = |lab: &Lab| -> Vec<String> {
        let _in = lab.client.enter();
        clients
            .iter()
            .map(|c| request_from(*c).unwrap_or_else(|e| panic!("{test}: {e}")))
            .collect()
    };
    let first = run(&lab);
    let second = run(&lab);
    assert_eq!(first, second, "every client keeps its backend");
    let b1 = first.iter().chain(&second).filter(|b| *b == "b1").count();
    let share = b1 as f64 / (2 * clients.len()) as f64;
    eprintln!(
        "{test}: b1 (weight 3) served {:.1}% of 1000 connections",
        share * 100.0
    );
    assert!(
        (share - 0.75).abs() < 0.05,
        "3:1 within 5 points: {share:.3}"
    );

    // b2 leaves: its clients move to b1, b1's stay.
    lab.reload(
        &config("{ address = \"203.0.113.11\", port = 8080, weight = 3 }"),
        1,
    );
    let after = run(&lab);
    assert!(after.iter().all(|b| b == "b1"), "all on b1 now");
    // And back: exactly the clients b2 had before return to it.
    lab.reload(&config(both), 2);
    let back = run(&lab);
    assert_eq!(back, first, "the same clients as before on each backend");
}

/// Issue 10: iperf3 (a control connection and data connections that must
/// meet the same server) through a source_hash service: 10 runs of one
/// stream and 10 of `-P 4`, every one completes.
#[test]
fn iperf3_through_a_source_hash_service() {
    let test = "iperf3_through_a_source_hash_service";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n\n[[service]]\nname = \"iperf\"\nvip = \"{VIP}\"\nport = 5201\nprotocol = \"tcp\"\nscheduler = \"source_hash\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 5201 }}, {{ address = \"203.0.113.21\", port = 5201 }}]\n"
    );
    let lab = lab_with(Mode::Native, &config);
    let _servers: Vec<ProcessGuard> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut g = ProcessGuard::spawn(
                &format!("iperf3-b{}", i + 1),
                &ns.name,
                // iperf3 reports on stdout; the guard reads stderr.
                &["sh", "-c", "exec iperf3 -s -p 5201 --forceflush 1>&2"].map(String::from),
            );
            g.wait_for("Server listening", Duration::from_secs(10));
            g
        })
        .collect();
    let mut failures = Vec::new();
    for parallel in ["1", "4"] {
        for run in 0..10 {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &lab.client.name, "timeout", "20"])
                .args(["iperf3", "-c", VIP, "-p", "5201", "-t", "1", "-P", parallel])
                .output()
                .unwrap();
            if !out.status.success() {
                failures.push(format!(
                    "-P {parallel} run {run}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{test}: {failures:#?}");
    eprintln!("{test}: 20 of 20 iperf3 runs completed");
}

/// Issue 10's drain: weight 0 keeps a held connection on its backend and
/// sends no new connection there; `xdplb status` says "draining"; weight
/// back, new connections return.
#[test]
fn weight_0_drains_a_backend_keeping_its_established_connections() {
    let test = "weight_0_drains_a_backend_keeping_its_established_connections";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let mut lab = lab_with(
        Mode::Native,
        &nat_config(&both, "[control]\nmetrics_address = \"127.0.0.1:9100\"\n"),
    );
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    // Round robin alternates: within a few connections one lands on b2.
    let mut held = {
        let _in = lab.client.enter();
        let mut found = None;
        for _ in 0..8 {
            let mut h = Held::open(vip);
            if h.first() == "b2" {
                found = Some(h);
                break;
            }
        }
        found.expect("a connection to b2")
    };
    lab.reload(
        &nat_config(
            &[("203.0.113.11", 1), ("203.0.113.21", 0)],
            "[control]\nmetrics_address = \"127.0.0.1:9100\"\n",
        ),
        1,
    );
    let _in = lab.client.enter();
    let served: Vec<String> = (0..50)
        .map(|_| http_get(vip).unwrap_or_else(|e| panic!("{test}: {e}")))
        .collect();
    assert!(
        served.iter().all(|b| b == "b1"),
        "no new connection to the drained b2: {served:?}"
    );
    assert_eq!(
        held.ask().as_deref(),
        Ok("b2"),
        "the held connection stays on b2"
    );
    drop(_in);
    let table = status_table(&lab);
    let b2_line = table
        .lines()
        .find(|l| l.contains("203.0.113.21:8080"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(b2_line.contains("draining (weight 0)"), "{table}");
    assert_eq!(
        sample(&scrape(&lab), "xdplb_backend_draining", "203.0.113.21:8080"),
        Some(1.0)
    );
    // Weight back: b2 takes new connections again.
    lab.reload(
        &nat_config(&both, "[control]\nmetrics_address = \"127.0.0.1:9100\"\n"),
        2,
    );
    let _in = lab.client.enter();
    let served: Vec<String> = (0..10).map(|_| http_get(vip).unwrap()).collect();
    assert!(served.iter().any(|b| b == "b2"), "{served:?}");
    assert_eq!(held.ask().as_deref(), Ok("b2"));
}

/// Issue 10's routing hygiene: NAT routes, so a datagram reaching the LB with
/// TTL 1 is answered with ICMP "time exceeded" (from the VIP, quoting the
/// datagram as sent: traceroute shows the hop), while TTL 2 gets through.
/// The client's kernel counts the ICMP in `InTimeExcds` only if its
/// checksums are right.
#[test]
fn nat_answers_ttl_1_with_time_exceeded() {
    let test = "nat_answers_ttl_1_with_time_exceeded";
    if !require_root(test) {
        return;
    }
    let lab = lab(Mode::Native, "nat", "round_robin");
    // The client kernel's count of "time exceeded" messages it accepted.
    let time_exceeded = || -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client.name, "cat", "/proc/net/snmp"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == "InTimeExcds")
            .unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let before = time_exceeded();
    let _in = lab.client.enter();
    let udp = UdpSocket::bind("198.51.100.2:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp.set_ttl(1).unwrap();
    for _ in 0..3 {
        udp.send_to(b"q", format!("{VIP}:53")).unwrap();
    }
    drop(_in);
    // ICMP arrives in microseconds; 3 s is margin for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(3);
    while time_exceeded() < before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        time_exceeded() - before,
        3,
        "{test}: the client got a time exceeded per datagram"
    );
    let _in = lab.client.enter();
    udp.set_ttl(2).unwrap();
    udp.send_to(b"q", format!("{VIP}:53")).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = udp.recv_from(&mut buf).expect("TTL 2 gets through");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("backend="));
    drop(_in);
    assert!(
        cpus_that_counted(&lab, Reason::TxIcmpTimeExceeded) >= 1,
        "{test}: tx_icmp_time_exceeded counted"
    );
}

/// Issue 10's next-hop cache: the data path keeps each backend's next hop
/// (egress, MACs) per CPU instead of asking the FIB for every packet, so a
/// change in the kernel's neighbour table must reach the cache. Backend b1
/// takes a new MAC and the LB's neighbour entry follows (as it would after
/// re-resolution): a connection held across the change and new ones keep
/// reaching b1. Without the invalidation they would go to the old MAC,
/// which b1 no longer accepts.
#[test]
fn traffic_follows_a_backend_mac_change() {
    let test = "traffic_follows_a_backend_mac_change";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let lab = lab_with(Mode::Native, &nat_config(&both, ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held = {
        let _in = lab.client.enter();
        // Warm both backends' cached next hops.
        for _ in 0..10 {
            http_get(vip).unwrap_or_else(|e| panic!("{test}: before the change: {e}"));
        }
        let mut found = None;
        for _ in 0..8 {
            let mut h = Held::open(vip);
            if h.first() == "b1" {
                found = Some(h);
                break;
            }
        }
        found.expect("a connection to b1")
    };
    let new_mac = "02:00:00:00:b1:99";
    lab.backends[0].sh(&["ip", "link", "set", "eth0", "address", new_mac]);
    lab.lb.sh(&[
        "ip",
        "neigh",
        "replace",
        "203.0.113.11",
        "lladdr",
        new_mac,
        "dev",
        "b1",
        "nud",
        "reachable",
    ]);
    let changed = Instant::now();
    let _in = lab.client.enter();
    assert_eq!(
        held.ask().as_deref(),
        Ok("b1"),
        "{test}: the held connection reaches b1 at its new MAC"
    );
    let followed = changed.elapsed();
    let served: Vec<String> = (0..20)
        .map(|_| http_get(vip).unwrap_or_else(|e| panic!("{test}: after the change: {e}")))
        .collect();
    eprintln!("{test}: held connection answered {followed:?} after the change; {served:?}");
    assert!(served.iter().any(|b| b == "b1"), "{served:?}");
    // The event reaches the cache in milliseconds; at worst the periodic
    // refresh does, and TCP's retransmission (1 s initial RTO for the
    // first, 200 ms+ later) delivers the request: 2 s of margin.
    assert!(
        followed < xdplb::net::HOP_REFRESH + Duration::from_secs(2),
        "{test}: took {followed:?}"
    );
}

/// A NAT service on `VIP:port` with `scheduler` over b1 and b2 (weights).
fn sched_service(name: &str, port: u16, scheduler: &str, w1: u32, w2: u32) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\nscheduler = \"{scheduler}\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080, weight = {w1} }}, {{ address = \"203.0.113.21\", port = 8080, weight = {w2} }}]\n"
    )
}

/// Issue 10: weights 3:1 give 3:1 within a few percent over 1000
/// connections, for round robin, Maglev and least_conn (source_hash, which
/// needs many client addresses, has its own test above). Sequential
/// connections: least_conn sees ties (each connection closes before the
/// next) and takes its first candidate, which the weighted ring drew.
#[test]
fn weights_3_to_1_hold_for_every_scheduler() {
    let test = "weights_3_to_1_hold_for_every_scheduler";
    if !require_root(test) {
        return;
    }
    let schedulers = [("round_robin", 80), ("maglev", 81), ("least_conn", 82)];
    let mut config = "[dataplane]\nflow_table_size = 65536\n".to_string();
    for (s, port) in schedulers {
        config.push_str(&sched_service(s, port, s, 3, 1));
    }
    let lab = lab_with(Mode::Native, &config);
    let _in = lab.client.enter();
    for (s, port) in schedulers {
        let vip: SocketAddr = format!("{VIP}:{port}").parse().unwrap();
        let served: Vec<String> = (0..1000)
            .map(|_| http_get(vip).unwrap_or_else(|e| panic!("{test}: {s}: {e}")))
            .collect();
        let share = served.iter().filter(|b| *b == "b1").count() as f64 / 1000.0;
        eprintln!("{test}: {s}: b1 (weight 3) served {:.1}%", share * 100.0);
        // Maglev and least_conn draw by hash: 1000 draws at p = 0.75 have a
        // standard deviation of 1.4%; 5 points is about 3.6 of them.
        assert!(
            (share - 0.75).abs() <= 0.05,
            "{test}: {s}: b1 served {:.1}%, not 75% +- 5",
            share * 100.0
        );
    }
}

/// Issue 10: least_conn sends new connections away from a backend holding
/// many long-lived ones. b2 drains (weight 0) while 30 connections are held
/// open on b1; with b2's weight back, new short connections go to b2
/// (fewer connections), the held ones stay where they are, and once they
/// close b1's estimate returns to 0 (data path FINs; the census corrects
/// whatever it missed within its period).
#[test]
fn least_conn_sends_new_connections_away_from_a_loaded_backend() {
    let test = "least_conn_sends_new_connections_away_from_a_loaded_backend";
    if !require_root(test) {
        return;
    }
    let config = |w2: u32| {
        format!(
            "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}",
            sched_service("www", 80, "least_conn", 1, w2)
        )
    };
    let mut lab = lab_with(Mode::Native, &config(0));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held: Vec<Held> = {
        let _in = lab.client.enter();
        (0..30).map(|_| Held::open(vip)).collect()
    };
    for h in &mut held {
        assert_eq!(h.first(), "b1", "{test}: b2 drains, so b1 takes them");
    }
    let estimate = |lab: &Lab, backend: &str| {
        sample(
            &scrape(lab),
            "xdplb_backend_active_connections",
            &format!("{backend}:8080"),
        )
    };
    lab.reload(&config(1), 1);
    let served: Vec<String> = {
        let _in = lab.client.enter();
        (0..100)
            .map(|_| http_get(vip).unwrap_or_else(|e| panic!("{test}: {e}")))
            .collect()
    };
    let to_b2 = served.iter().filter(|b| *b == "b2").count();
    eprintln!(
        "{test}: b1 holds 30; of 100 new connections b2 took {to_b2}; estimates b1 {:?} b2 {:?}",
        estimate(&lab, "203.0.113.11"),
        estimate(&lab, "203.0.113.21")
    );
    // Weights 1:1 put both backends in every candidate pair, so each new
    // connection compares 30 (b1) with 0 or 1 (b2).
    assert!(to_b2 >= 95, "{test}: only {to_b2} of 100 went to b2");
    {
        let _in = lab.client.enter();
        for h in &mut held {
            assert_eq!(h.ask().as_deref(), Ok("b1"), "{test}: held ones stay");
        }
    }
    drop(held);
    // The census runs every second: 1 s + 2 s of margin.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut b1 = estimate(&lab, "203.0.113.11");
    while b1 != Some(0.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        b1 = estimate(&lab, "203.0.113.11");
    }
    assert_eq!(
        b1,
        Some(0.0),
        "{test}: b1's estimate after its connections closed"
    );
}

/// Anything that reacts to traffic is tried under heavy legitimate load:
/// least_conn under thousands of `Connection: close` connections per second
/// from a 256-port client range (4-tuples repeat within seconds). Nothing
/// fails, the backends share the load evenly, and the estimates neither
/// drift nor stay up: afterwards they are back near 0 within the census
/// period plus margin.
#[test]
fn least_conn_under_heavy_legitimate_load() {
    let test = "least_conn_under_heavy_legitimate_load";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}",
        sched_service("www", 80, "least_conn", 1, 1)
    );
    let lab = lab_in_turn(Mode::Native, &config, Turn::exclusive());
    lab.client
        .sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20255"]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let no_stop = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let began = Instant::now();
    // The estimates every 50 ms while the load runs: at most LOAD_WORKERS
    // connections are open at once, so a sum far above that is drift.
    let (run, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0.0f64;
            while !done.load(Ordering::Relaxed) {
                let m = scrape(&lab);
                let sum: f64 = ["203.0.113.11", "203.0.113.21"]
                    .iter()
                    .filter_map(|b| {
                        sample(&m, "xdplb_backend_active_connections", &format!("{b}:8080"))
                    })
                    .sum();
                peak = peak.max(sum);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let run = hammer(
            &lab.client,
            vip,
            LOAD_RUN,
            LOAD_WORKERS,
            Duration::from_secs(60),
            &no_stop,
        );
        done.store(true, Ordering::Relaxed);
        (run, sampler.join().unwrap())
    });
    let took = began.elapsed();
    let failed = run.iter().filter(|a| a.result.is_err()).count();
    let b1 = run
        .iter()
        .filter(|a| a.result.as_deref() == Ok("b1"))
        .count();
    let share = b1 as f64 / run.len() as f64;
    let estimate = |backend: &str| {
        sample(
            &scrape(&lab),
            "xdplb_backend_active_connections",
            &format!("{backend}:8080"),
        )
        .unwrap_or(-1.0)
    };
    let right_after = (estimate("203.0.113.11"), estimate("203.0.113.21"));
    eprintln!(
        "{test}: {} connections in {took:.2?} ({:.0}/s), {failed} failed, b1 {:.1}%; estimates: peak sum {peak} during, {right_after:?} right after",
        run.len(),
        run.len() as f64 / took.as_secs_f64(),
        share * 100.0
    );
    assert!(
        peak <= 2.0 * LOAD_WORKERS as f64,
        "{test}: the estimates summed to {peak} with at most {LOAD_WORKERS} connections open"
    );
    assert_eq!(failed, 0, "{test}: connections failed under load");
    assert_eq!(run.len(), LOAD_RUN);
    assert!(
        (0.4..=0.6).contains(&share),
        "{test}: b1 took {:.1}%",
        share * 100.0
    );
    // Every connection closed; the census (1 s) resets what the data path
    // may have missed: 1 s + 2 s of margin. "Near 0": a connection or two
    // may be in TIME_WAIT-free teardown on the backend's side still.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut now = right_after;
    while (now.0 > 2.0 || now.1 > 2.0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = (estimate("203.0.113.11"), estimate("203.0.113.21"));
    }
    assert!(
        now.0 <= 2.0 && now.1 <= 2.0 && now.0 >= 0.0 && now.1 >= 0.0,
        "{test}: estimates after the load: {now:?}"
    );
}

/// Issue 10: ICMP echo to a VIP is answered (by the data path: the VIP is
/// not configured on the LB host here, so the kernel could not) and
/// counted.
#[test]
fn ping_to_a_vip_is_answered_and_counted() {
    let test = "ping_to_a_vip_is_answered_and_counted";
    if !require_root(test) {
        return;
    }
    let lab = lab(Mode::Native, "nat", "round_robin");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.name,
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            VIP,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{test}: {}", text.lines().rev().nth(1).unwrap_or(""));
    assert!(
        text.contains("5 received"),
        "{test}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cpus_that_counted(&lab, Reason::TxIcmpEchoReply) >= 1,
        "{test}: tx_icmp_echo_reply counted"
    );
}

/// Issue 10's routing hygiene: path-MTU discovery through the LB for a
/// router beyond it. The client namespace becomes a router to a far client
/// over a link whose router side has MTU 1280 (the far client still
/// advertises a 1460-byte MSS). The backend's full-size segments (NAT,
/// from the VIP) reach that router, which answers "fragmentation needed"
/// to the VIP; the data path relays it to the backend with the quoted
/// header translated back, the backend's TCP lowers its segment size, and
/// the 20 kB response arrives. Without the relay the ICMP ends at the LB
/// host (it has no route to the VIP) and the response never comes.
#[test]
fn path_mtu_discovery_works_for_a_router_beyond_the_lb() {
    let test = "path_mtu_discovery_works_for_a_router_beyond_the_lb";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080 }}]\n"
    );
    let lab = lab_with(Mode::Native, &config);
    let far = Netns::new("xdplb-far");
    xdplb_tests::veth(&lab.client, "far", &far, "eth0");
    lab.client
        .sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "far"]);
    lab.client.sh(&["ip", "link", "set", "far", "mtu", "1280"]);
    lab.client.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    far.sh(&["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    far.sh(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    // Full checksums from the far client: native XDP on the LB sees its
    // packets as the router forwards them.
    far.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
    lab.lb.sh(&[
        "ip",
        "route",
        "add",
        "10.77.0.0/24",
        "via",
        "198.51.100.2",
        "dev",
        "cli",
    ]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let started = Instant::now();
    let result = {
        let _in = far.enter();
        (|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /big HTTP/1.0\r\nHost: www\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read after {} bytes: {e}", resp.len()))?;
            Ok(resp)
        })()
    };
    let took = started.elapsed();
    let relayed = cpus_that_counted(&lab, Reason::FwdIcmpToBackend);
    eprintln!(
        "{test}: took {took:?}; relayed ICMP counted on {relayed} CPU(s); {}",
        result
            .as_ref()
            .map_or_else(|e| e.clone(), |r| format!("{} bytes", r.len()))
    );
    let resp = result.unwrap_or_else(|e| panic!("{test}: {e}"));
    assert!(
        resp.contains("backend=b1") && resp.contains(&"x".repeat(20_000)),
        "{test}: the whole response arrived"
    );
    assert!(relayed >= 1, "{test}: fwd_icmp_to_backend counted");
}

/// Issue 11's lists, changed by reloads under a held connection: a service
/// deny list refuses one source range while the held connection and other
/// clients go on; the global deny list cuts a client off entirely, its
/// established connection included, while the range denied before is
/// allowed again; without lists everyone is back.
#[test]
fn firewall_lists_change_live_by_reload() {
    let test = "firewall_lists_change_live_by_reload";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = |service: &str, global: &str| {
        format!(
            "[firewall]\ndeny = [{global}]\n{}{service}\n",
            nat_config(&both, "")
        )
    };
    let mut lab = lab_with(Mode::Native, &config("", ""));
    many_clients(&lab);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let far = std::net::Ipv4Addr::new(10, 200, 0, 7);
    let (mut held, before) = {
        let _in = lab.client.enter();
        let mut held = Held::open(vip);
        let _ = held.first();
        (held, request_from(far))
    };
    assert!(before.is_ok(), "{test}: {before:?}");
    // nat_config's service ends the text: its deny list is appended to it.
    lab.reload(&config("deny = [\"10.200.0.0/16\"]", ""), 1);
    {
        let _in = lab.client.enter();
        assert!(request_from(far).is_err(), "{test}: the denied range");
        assert!(held.ask().is_ok(), "{test}: the held connection goes on");
        assert!(http_get(vip).is_ok(), "{test}: other clients go on");
    }
    lab.reload(&config("", "\"198.51.100.2\""), 2);
    {
        let _in = lab.client.enter();
        assert!(held.ask().is_err(), "{test}: globally denied: cut off");
        assert!(http_get(vip).is_err(), "{test}: and no new connection");
        assert!(
            request_from(far).is_ok(),
            "{test}: the range is allowed again"
        );
    }
    lab.reload(&config("", ""), 3);
    let _in = lab.client.enter();
    assert!(http_get(vip).is_ok(), "{test}: no lists, back in");
    drop(_in);
    assert!(cpus_that_counted(&lab, Reason::DropDenied) >= 1);
    assert!(cpus_that_counted(&lab, Reason::DropDeniedGlobal) >= 1);
}

/// Issue 11: the run-time deny list from the CLI. `xdplb deny add` cuts a
/// client off at once, `deny list` shows it, the list survives a restart
/// (it is kept in `[firewall] deny_file`), `deny del` lets the client back;
/// taking off what is not there is an error that says so.
#[test]
fn deny_cli_changes_live_and_survives_a_restart() {
    let test = "deny_cli_changes_live_and_survives_a_restart";
    if !require_root(test) {
        return;
    }
    let deny_file = std::env::temp_dir().join(format!("{test}-{}.list", std::process::id()));
    let _ = std::fs::remove_file(&deny_file);
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = format!(
        "[firewall]\ndeny_file = \"{}\"\n{}",
        deny_file.display(),
        nat_config(&both, "")
    );
    let mut lab = lab_with(Mode::Native, &config);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let deny = |lab: &Lab, args: &[&str]| {
        std::process::Command::new(target_bin("xdplb"))
            .arg("deny")
            .args(args)
            .arg("--socket")
            .arg(&lab.daemon.status_socket)
            .output()
            .unwrap()
    };
    let get = |lab: &Lab| {
        let _in = lab.client.enter();
        http_get(vip)
    };
    assert!(get(&lab).is_ok(), "{test}: before");
    let out = deny(&lab, &["add", "198.51.100.2"]);
    assert!(out.status.success(), "{test}: {out:?}");
    assert!(get(&lab).is_err(), "{test}: denied at once");
    let list = String::from_utf8_lossy(&deny(&lab, &["list"]).stdout).to_string();
    assert!(list.contains("198.51.100.2/32"), "{test}: {list}");
    let kept = std::fs::read_to_string(&deny_file).unwrap();
    assert!(kept.contains("198.51.100.2/32"), "{test}: {kept}");
    // A clean stop (maps unpinned), then a new daemon (its own PID file,
    // socket and pins: the old guard cleans up its own): the file brings
    // the list back.
    lab.daemon.stop();
    let pid_file = lab.pid_file.with_extension("second.pid");
    lab.daemon = start_xdplb(
        &lab.lb,
        &target_bin("xdplb"),
        &lab.config,
        &pid_file,
        &["--xdp-mode", "native"],
    );
    assert!(get(&lab).is_err(), "{test}: still denied after a restart");
    let out = deny(&lab, &["del", "10.0.0.0/8"]);
    assert!(!out.status.success(), "{test}: deleting what is not there");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in the run-time deny list"),
        "{test}: {out:?}"
    );
    let out = deny(&lab, &["del", "198.51.100.2"]);
    assert!(out.status.success(), "{test}: {out:?}");
    assert!(get(&lab).is_ok(), "{test}: allowed again");
    let _ = std::fs::remove_file(&deny_file);
}

/// Issue 11's rate limits, tried as the brief asks: a client over its
/// per-client limit (50/s, burst 10) is held to about that rate while
/// another client at 20/s is not limited at all; and under heavy
/// legitimate load (15,000 `Connection: close` connections from one
/// address, client ports repeating) below a limit (100,000/s) nothing is
/// refused: repeated 4-tuples and established packets are not mistaken
/// for new clients' floods.
#[test]
fn rate_limits_hold_a_client_to_its_rate_and_spare_legitimate_load() {
    let test = "rate_limits_hold_a_client_to_its_rate_and_spare_legitimate_load";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = |limit: &str| {
        format!(
            "[control]\nmetrics_address = \"127.0.0.1:9100\"\n{}rate_limit = {{ {limit} }}\n",
            nat_config(&both, "")
        )
    };
    let mut lab = lab_in_turn(
        Mode::Native,
        &config("per_client = 50, per_client_burst = 10"),
        Turn::exclusive(),
    );
    many_clients(&lab);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let limited =
        |lab: &Lab| sample(&scrape(lab), "xdplb_service_rate_limited_total", "www").unwrap_or(0.0);
    let (admitted, attempts, took, other) = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let _in = lab.client.enter();
            (0..20)
                .map(|_| {
                    let r = request_from(std::net::Ipv4Addr::new(10, 200, 0, 7));
                    std::thread::sleep(Duration::from_millis(50));
                    r
                })
                .collect::<Vec<_>>()
        });
        let _in = lab.client.enter();
        let began = Instant::now();
        let (mut admitted, mut attempts) = (0u32, 0u32);
        // Bounded: one second, and each refused attempt waits 100 ms
        // (below the 1 s SYN retransmission, so a refused SYN stays refused).
        while began.elapsed() < Duration::from_secs(1) {
            attempts += 1;
            if let Ok(mut c) = TcpStream::connect_timeout(&vip, Duration::from_millis(100)) {
                admitted += 1;
                let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n");
            }
        }
        (admitted, attempts, began.elapsed(), other.join().unwrap())
    });
    let secs = took.as_secs_f64();
    eprintln!(
        "{test}: the hurried client: {admitted} of {attempts} admitted in {took:.2?} (10 + 50/s allows {:.0}); the other: {} of 20; limited counted {}",
        10.0 + 50.0 * secs,
        other.iter().filter(|r| r.is_ok()).count(),
        limited(&lab)
    );
    // GCRA admits at most burst + rate x time; 5 of margin for the two
    // CPUs admitting at the same instant (buckets are not atomic).
    assert!(
        f64::from(admitted) <= 10.0 + 50.0 * secs + 5.0,
        "{test}: {admitted} admitted"
    );
    assert!(
        f64::from(admitted) >= 25.0 * secs,
        "{test}: held far below its rate: {admitted}"
    );
    assert!(attempts > admitted, "{test}: nothing was refused");
    assert!(
        other.iter().all(|r| r.is_ok()),
        "{test}: the client within its rate was refused: {other:?}"
    );
    assert!(limited(&lab) >= 1.0);

    // Heavy legitimate load under a limit it stays below.
    lab.reload(&config("per_client = 100000"), 1);
    lab.client
        .sh(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 20255"]);
    let before = limited(&lab);
    let began = Instant::now();
    let run = legitimate_load(&lab.client, vip);
    let failed = run.iter().filter(|a| a.result.is_err()).count();
    eprintln!(
        "{test}: load: {} connections in {:.2?}, {failed} failed, {} refused by the limit",
        run.len(),
        began.elapsed(),
        limited(&lab) - before
    );
    assert_eq!(failed, 0, "{test}: legitimate load failed");
    assert_eq!(
        limited(&lab) - before,
        0.0,
        "{test}: the limit fired on legitimate load"
    );
}

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

/// What a flood run saw (besides what it printed).
struct FloodRun {
    sent: xdplb_tests::flood::Sent,
    /// Requests made during the flood.
    requests: usize,
    /// Verdict-reason counters during the flood.
    reasons: BTreeMap<String, f64>,
}

/// Issue 11's flood run: spoofed SYNs (198.18.0.0/15, random ports) at
/// `FLOOD_RATE` to the NAT VIP from the client namespace, at most 1,200,000
/// or 8 s, while the client makes `Connection: close` requests (ports
/// repeating) and 20 connections opened before it are held across it.
/// Asserts the issue's targets: ≥ 99% of the requests during the flood
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
    let before = reasons(&scrape(&lab));
    let flood = Flood {
        target: format!("{VIP}:80").parse().unwrap(),
        source_net: "10.200.0.0".parse().unwrap(),
        prefix_len: 16,
        count: 1_200_000,
        max: Duration::from_secs(8),
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
        let run = hammer(&lab.client, vip, 20_000, 8, Duration::from_secs(10), &done);
        let (sent, cpu) = flooder.join().unwrap();
        (sent, cpu, run, census.join().unwrap())
    });
    let after = reasons(&scrape(&lab));
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
         softirq {:.1}% of all CPU time; verdicts during the flood: {delta:?}",
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
