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
    time::{Duration, Instant},
};

use xdplb_tests::{
    BACKEND_LINKS, LbTopology, Netns, ProcessGuard, Xdplb, require_root, start_xdplb, target_bin,
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
    _servers: Vec<ProcessGuard>,
    client: Netns,
    lb: Netns,
    _backends: Vec<Netns>,
    config: std::path::PathBuf,
    pid_file: std::path::PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

fn lab(mode: Mode, forwarding: &str, scheduler: &str) -> Lab {
    let topo = LbTopology::new("xdplb", VIP, mode == Mode::Native);
    let mut servers = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        let name = format!("b{}", i + 1);
        let srv = target_bin("xdplb-testsrv").display().to_string();
        let args: Vec<String> = [
            srv.as_str(),
            &name,
            "--tcp",
            "0.0.0.0:80",
            "0.0.0.0:8080",
            "--udp",
            &format!("{VIP}:53"),
            &format!("{}:5353", BACKEND_LINKS[i].addr),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut g = ProcessGuard::spawn(&name, &ns.name, &args);
        g.wait_for("listening", Duration::from_secs(10));
        servers.push(g);
    }
    let LbTopology {
        client,
        lb,
        backends,
    } = topo;

    let (tcp_port, udp_port) = if forwarding == "nat" {
        (8080, 5353)
    } else {
        (80, 53)
    };
    let config = std::env::temp_dir().join(format!("{}.toml", lb.name));
    std::fs::write(
        &config,
        format!(
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
    .unwrap();
    let xdp_mode = if mode == Mode::Native {
        "native"
    } else {
        "generic"
    };
    let pid_file = config.with_extension("pid");
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
        _servers: servers,
        client,
        lb,
        _backends: backends,
        config,
        pid_file,
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
        // off by at most one flow per CPU that handled packets.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (b, n) in &tcp {
            assert!(
                n.abs_diff(TCP_CONNECTIONS / 2) <= cpus,
                "{test}: round robin gave {b} {n} of {TCP_CONNECTIONS}: {tcp:?}"
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
