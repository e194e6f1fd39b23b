//! The namespace lab every test here shares: the topology, the daemon and
//! the backends' servers, the clients (single requests, held connections,
//! bounded load), and what the tests read back (metrics, status, counters).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use lb_common::Reason;
use xdplb_tests::{BACKEND_LINKS, LbTopology, Netns, ProcessGuard, Xdplb, start_xdplb, target_bin};

pub(crate) const VIP: &str = "192.0.2.10";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Mode {
    Native,
    Generic,
}

pub(crate) struct Lab {
    // Field order is drop order: processes stop before namespaces go.
    pub(crate) daemon: Xdplb,
    pub(crate) servers: Vec<ProcessGuard>,
    /// Native mode: the pass-through program on the client's and backends'
    /// veth ends (detached when dropped).
    pub(crate) _peers: Vec<aya::Ebpf>,
    pub(crate) client: Netns,
    pub(crate) lb: Netns,
    pub(crate) backends: Vec<Netns>,
    pub(crate) config: std::path::PathBuf,
    pub(crate) pid_file: std::path::PathBuf,
    pub(crate) _turn: Turn,
}

/// Tests that measure throughput run alone; the others share the machine
/// (cargo runs them two at a time here).
pub(crate) static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub(crate) enum Turn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

impl Turn {
    /// A panicking test poisons the lock; the others still get their turn.
    pub(crate) fn shared() -> Turn {
        Turn::Shared(MACHINE.read().unwrap_or_else(|e| e.into_inner()))
    }
    pub(crate) fn exclusive() -> Turn {
        Turn::Exclusive(MACHINE.write().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

pub(crate) fn lab(mode: Mode, forwarding: &str, scheduler: &str) -> Lab {
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
pub(crate) fn server_args(i: usize) -> Vec<String> {
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

pub(crate) fn start_server(ns: &Netns, i: usize) -> ProcessGuard {
    let mut g = ProcessGuard::spawn(&format!("b{}", i + 1), &ns.name, &server_args(i));
    g.wait_for("listening", Duration::from_secs(10));
    g
}

/// The lab with `config` (its interfaces come from the command line).
pub(crate) fn lab_with(mode: Mode, config_text: &str) -> Lab {
    lab_in_turn(mode, config_text, Turn::shared())
}

/// The lab, built once this test has its `turn` of the machine.
pub(crate) fn lab_in_turn(mode: Mode, config_text: &str, turn: Turn) -> Lab {
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
    pub(crate) fn reload(&mut self, text: &str, n: usize) {
        std::fs::write(&self.config, text).unwrap();
        let socket = self.daemon.status_socket.clone();
        xdplb_cmd(&["reload", "--socket", socket.to_str().unwrap()]);
        self.daemon
            .wait_for_count("reload applied", n, Duration::from_secs(10));
    }
}

/// One HTTP request on a new connection; returns the backend's name.
pub(crate) fn http_get(vip: SocketAddr) -> Result<String, String> {
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
pub(crate) fn udp_ask(vip: SocketAddr) -> Result<String, String> {
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
pub(crate) fn load(
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
pub(crate) fn cpus_that_counted(lab: &Lab, reason: Reason) -> usize {
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

/// A NAT round-robin config for the TCP VIP with the given (address, weight)
/// backends on port 8080, plus `extra` appended verbatim.
pub(crate) fn nat_config(backends: &[(&str, u32)], extra: &str) -> String {
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
pub(crate) struct Held(std::io::BufReader<TcpStream>);

impl Held {
    pub(crate) fn open(vip: SocketAddr) -> Held {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut h = Held(std::io::BufReader::new(s));
        h.0.get_mut().write_all(b"HOLD\n").unwrap();
        h
    }

    pub(crate) fn ask(&mut self) -> Result<String, String> {
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

    pub(crate) fn first(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.0.read_line(&mut line).expect("first reply");
        line.trim()
            .strip_prefix("backend=")
            .expect("backend name")
            .to_string()
    }
}

/// One TCP service over both backends with `[service.*]` tables appended,
/// and metrics on the LB namespace's loopback.
pub(crate) fn service_config(forwarding: &str, tables: &str) -> String {
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
pub(crate) type Outcome = (Instant, Result<String, String>);

/// New HTTP connections from the client namespace until `stop` is set,
/// bounded by 4000 requests and 60 s.
pub(crate) fn background_load(client: &Netns, vip: SocketAddr, stop: &AtomicBool) -> Vec<Outcome> {
    background_load_counted(client, vip, stop, &AtomicUsize::new(0))
}

/// [`background_load`], counting the requests that succeeded in `ok` as
/// they do (for a test that waits for so many, not for so long).
pub(crate) fn background_load_counted(
    client: &Netns,
    vip: SocketAddr,
    stop: &AtomicBool,
    ok: &AtomicUsize,
) -> Vec<Outcome> {
    let _in = client.enter();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) && out.len() < 4000 && Instant::now() < deadline {
        let start = Instant::now();
        let r = http_get(vip);
        if r.is_ok() {
            ok.fetch_add(1, Ordering::Relaxed);
        }
        out.push((start, r));
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}

/// Wait until `counter` reaches `n`; fail after `limit` saying `what`.
pub(crate) fn wait_count(counter: &AtomicUsize, n: usize, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} within {limit:?}",
            counter.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// GET /metrics from the daemon (it listens on the LB namespace's loopback).
pub(crate) fn scrape(lab: &Lab) -> String {
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
pub(crate) fn sample(metrics: &str, metric: &str, label: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub(crate) fn status_table(lab: &Lab) -> String {
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

/// tc (TCX) ingress programs attached to `dev` in `ns`.
pub(crate) fn tcx_attached(ns: &Netns, dev: &str) -> usize {
    let _in = ns.enter();
    aya::programs::SchedClassifier::query_tcx(dev, aya::programs::TcAttachType::Ingress)
        .map(|(_, progs)| progs.len())
        .unwrap_or_else(|e| panic!("query tcx on {dev}: {e}"))
}

pub(crate) fn xdp_attached(lb: &Netns) -> usize {
    let out = std::process::Command::new("ip")
        .args(["-n", &lb.name, "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .matches("prog/xdp")
        .count()
}

pub(crate) fn xdplb_cmd(args: &[&str]) {
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

/// A counter of the TCP MIB extension (`/proc/net/netstat`) in `ns`.
pub(crate) fn tcp_ext(ns: &Netns, name: &str) -> u64 {
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
pub(crate) fn mac_of(ns: &Netns, dev: &str) -> String {
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

/// One connection of a load run.
pub(crate) struct Attempt {
    pub(crate) start: Instant,
    /// The client's port: under load they repeat within seconds.
    pub(crate) port: u16,
    pub(crate) result: Result<String, String>,
    /// From connect to the whole response.
    pub(crate) took: Duration,
}

/// One `Connection: close` HTTP/1.1 request on a new connection, as a
/// browser or `wrk -H 'Connection: close'` makes it. Timeouts exceed one SYN
/// retransmission (1 s), which a redispatched connection waits for.
pub(crate) fn close_request(vip: SocketAddr) -> (u16, Result<String, String>) {
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
pub(crate) fn hammer(
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
pub(crate) fn legitimate_load(client: &Netns, vip: SocketAddr) -> Vec<Attempt> {
    hammer(
        client,
        vip,
        LOAD_RUN,
        LOAD_WORKERS,
        Duration::from_secs(60),
        &AtomicBool::new(false),
    )
}

pub(crate) const LOAD_WORKERS: usize = 24;

/// Connections per measured run.
pub(crate) const LOAD_RUN: usize = 15_000;

/// Client addresses 10.200.0.0/16: "any-IP" on the client's loopback (a
/// local route), routed to the client by the LB, so one namespace can be
/// thousands of clients.
pub(crate) fn many_clients(lab: &Lab) {
    lab.client
        .sh(&["ip", "route", "add", "local", "10.200.0.0/16", "dev", "lo"]);
    lab.lb
        .sh(&["ip", "route", "add", "10.200.0.0/16", "via", "198.51.100.2"]);
}

/// One `Connection: close` request to the VIP from client address `src`.
pub(crate) fn request_from(src: std::net::Ipv4Addr) -> Result<String, String> {
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

/// A NAT service on `VIP:port` with `scheduler` over b1 and b2 (weights).
pub(crate) fn sched_service(name: &str, port: u16, scheduler: &str, w1: u32, w2: u32) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\nscheduler = \"{scheduler}\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080, weight = {w1} }}, {{ address = \"203.0.113.21\", port = 8080, weight = {w2} }}]\n"
    )
}
