//! The active-active cluster in namespaces: a router running BIRD (ECMP
//! over the LB nodes, L4 hash, BFD) in front of three LB nodes, each
//! running BIRD with the shipped `config/bird-lb.conf` unchanged and xdplb
//! with `[cluster]`; two DSR backends behind them. BIRD comes from Debian
//! (`bird2`, installed by `cargo xtask setup`).
//!
//! ```text
//! client 198.51.100.0/24 -- router -- brf: 10.1.0.0/24    BGP + BFD to every LB node
//!                             |         |.11      |.12      |.13   ("front")
//!                             |        [lb1]     [lb2]     [lb3]   VIP 192.0.2.10 announced
//!                             |         |.2       |.3       |.4    ("bk")
//!                             +---- brb: 203.0.113.0/24 (router .254)
//!                                       |b1 .11   |b2 .12          own the VIP on lo
//! ```
//! The daemons run XDP in generic mode (routing and failover are under
//! test here; the fixture and fuzz tests check the bytes).

use std::{
    io::{BufRead, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime},
};

use xdplb_tests::{
    Netns, ProcessGuard, Xdplb, require_root, require_tool, target_bin, veth, xdplb_args_on,
};

const VIP: &str = "192.0.2.10";
const ROUTER_FRONT: &str = "10.1.0.1";
const BACKENDS: [&str; 2] = ["203.0.113.11", "203.0.113.12"];
/// Nodes started with the cluster; one more namespace waits to join.
const NODES: usize = 3;
const NODES_MAX: usize = NODES + 1;
/// Client source addresses 198.51.100.10 .. +SOURCES.
const SOURCES: u8 = 40;
/// BIRD's BFD in the shipped configs: 100 ms x 3.
const BFD_DETECT: Duration = Duration::from_millis(300);
/// The daemons' `[cluster] withdraw_grace_ms` here.
const GRACE_MS: u64 = 1000;

/// The tests here run one at a time: each starts seven daemons.
static MACHINE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn node_addr(i: usize) -> String {
    format!("10.1.0.{}", 11 + i)
}

/// What the nodes run: the service's scheduler, and whether they sync
/// flows (`[cluster.sync]`, with this key file).
#[derive(Clone, Copy)]
struct Setup<'a> {
    scheduler: &'a str,
    sync_key: Option<&'a Path>,
}

const MAGLEV: Setup<'static> = Setup {
    scheduler: "maglev",
    sync_key: None,
};

fn config_text(bird_socket: &Path, setup: Setup<'_>) -> String {
    let sync = setup.sync_key.map_or(String::new(), |key| {
        let peers: Vec<String> = (0..NODES_MAX)
            .map(|i| format!("\"{}\"", node_addr(i)))
            .collect();
        // One file for every node: each skips its own address.
        format!(
            "[cluster.sync]\ninterface = \"front\"\npeers = [{}]\nkey_file = \"{}\"\nadvert_interval_ms = 100\nstate_file = \"{}\"\n",
            peers.join(", "),
            key.display(),
            bird_socket.with_extension("peers").display()
        )
    });
    format!(
        r#"[dataplane]
flow_table_size = 65536

[control]
metrics_address = "127.0.0.1:9100"

[cluster]
withdraw_grace_ms = {GRACE_MS}
bird_socket = "{bird}"
{sync}

[[service]]
name = "web"
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "{scheduler}"
forwarding = "dsr"
backend = [{{ address = "{b1}", port = 80 }}, {{ address = "{b2}", port = 80 }}]
[service.check]
kind = "tcp"
interval_ms = 200
timeout_ms = 150
rise = 1
fall = 2
"#,
        b1 = BACKENDS[0],
        b2 = BACKENDS[1],
        bird = bird_socket.display(),
        scheduler = setup.scheduler,
    )
}

/// A BIRD daemon in a namespace, with its own control socket.
fn start_bird(name: &str, ns: &Netns, config: &Path, files: &mut Vec<PathBuf>) -> ProcessGuard {
    let sock = std::env::temp_dir().join(format!("{}.bird.ctl", ns.name));
    let pid = std::env::temp_dir().join(format!("{}.bird.pid", ns.name));
    files.extend([sock.clone(), pid.clone()]);
    let args: Vec<String> = [
        "bird",
        "-f",
        "-c",
        &config.display().to_string(),
        "-s",
        &sock.display().to_string(),
        "-P",
        &pid.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut g = ProcessGuard::spawn_in_netns(name, &ns.name, &args);
    g.wait_for("Started", Duration::from_secs(10));
    g
}

struct Cluster {
    // Field order is drop order: processes first, then namespaces.
    lbs: Vec<Option<Xdplb>>,
    birds: Vec<Option<ProcessGuard>>,
    _router_bird: ProcessGuard,
    _servers: Vec<ProcessGuard>,
    client: std::sync::Arc<Netns>,
    router: Netns,
    sw: Netns,
    lb_ns: Vec<Netns>,
    _backends: Vec<Netns>,
    files: Vec<PathBuf>,
    configs: Vec<PathBuf>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for lb in &mut self.lbs {
            drop(lb.take());
        }
        for b in &mut self.birds {
            drop(b.take());
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        // A SIGKILLed daemon's pins.
        for ns in &self.lb_ns {
            let _ = std::fs::remove_dir_all(PathBuf::from("/sys/fs/bpf").join(&ns.name));
        }
    }
}

impl Cluster {
    /// The topology, the backends, every BIRD and every xdplb; returns
    /// once the router has a path to the VIP through every node.
    fn start(test: &str) -> Cluster {
        Cluster::start_with(test, MAGLEV)
    }

    fn start_with(test: &str, setup: Setup<'_>) -> Cluster {
        let sw = Netns::new("xdplb-cl-sw");
        let router = Netns::new("xdplb-cl-rt");
        let client = Netns::new("xdplb-cl-cl");
        let lb_ns: Vec<Netns> = (0..NODES_MAX)
            .map(|i| Netns::new(&format!("xdplb-cl-lb{}", i + 1)))
            .collect();
        let backends = [Netns::new("xdplb-cl-b1"), Netns::new("xdplb-cl-b2")];
        for br in ["brf", "brb"] {
            sw.sh(&["ip", "link", "add", br, "type", "bridge"]);
            sw.sh(&["ip", "link", "set", br, "up"]);
        }
        let port = |ns: &Netns, ns_if: &str, sw_if: &str, br: &str| {
            veth(ns, ns_if, &sw, sw_if);
            sw.sh(&["ip", "link", "set", sw_if, "master", br]);
        };
        veth(&client, "eth0", &router, "cl");
        for a in 0..SOURCES {
            client.sh(&[
                "ip",
                "addr",
                "add",
                &format!("198.51.100.{}/24", 10 + a),
                "dev",
                "eth0",
            ]);
        }
        client.sh(&["ip", "route", "add", "default", "via", "198.51.100.1"]);
        port(&router, "fr", "r-f", "brf");
        port(&router, "bk", "r-b", "brb");
        router.sh(&["ip", "addr", "add", "198.51.100.1/24", "dev", "cl"]);
        router.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{ROUTER_FRONT}/24"),
            "dev",
            "fr",
        ]);
        router.sh(&["ip", "addr", "add", "203.0.113.254/24", "dev", "bk"]);
        router.sh(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            // ECMP by the L4 hash, as config/bird-router.conf says.
            "net.ipv4.fib_multipath_hash_policy=1",
        ]);
        for (i, lb) in lb_ns.iter().enumerate() {
            port(lb, "front", &format!("lb{}-f", i + 1), "brf");
            port(lb, "bk", &format!("lb{}-b", i + 1), "brb");
            lb.sh(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", node_addr(i)),
                "dev",
                "front",
            ]);
            lb.sh(&[
                "ip",
                "addr",
                "add",
                &format!("203.0.113.{}/24", 2 + i),
                "dev",
                "bk",
            ]);
            lb.sh(&["ip", "route", "add", "default", "via", ROUTER_FRONT]);
            lb.sh(&[
                "sysctl",
                "-qw",
                // The data path's FIB lookups need forwarding on.
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            ]);
        }
        let srv = target_bin("xdplb-testsrv").display().to_string();
        let mut servers = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            port(b, "eth0", &format!("b{}-b", i + 1), "brb");
            b.sh(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", BACKENDS[i]),
                "dev",
                "eth0",
            ]);
            b.sh(&["ip", "route", "add", "default", "via", "203.0.113.254"]);
            b.sh(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
            b.sh(&[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
            ]);
            let name = format!("b{}", i + 1);
            let args: Vec<String> = [srv.as_str(), &name, "--tcp", "0.0.0.0:80"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut g = ProcessGuard::spawn(&name, &b.name, &args);
            g.wait_for("listening", Duration::from_secs(10));
            servers.push(g);
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        let router_bird = start_bird(
            "bird-router",
            &router,
            &repo.join("config/bird-router.conf"),
            &mut files,
        );
        let dir = std::env::temp_dir();
        let configs: Vec<PathBuf> = lb_ns
            .iter()
            .map(|ns| {
                let path = dir.join(format!("{}.toml", ns.name));
                let bird = dir.join(format!("{}.bird.ctl", ns.name));
                std::fs::write(&path, config_text(&bird, setup)).unwrap();
                files.extend([
                    bird.with_extension("peers"),
                    path.clone(),
                    path.with_extension("pid"),
                    path.with_extension("sock"),
                ]);
                path
            })
            .collect();
        eprintln!("{test}: namespaces {} .. {}", sw.name, backends[1].name);
        let mut c = Cluster {
            lbs: (0..NODES_MAX).map(|_| None).collect(),
            birds: (0..NODES_MAX).map(|_| None).collect(),
            _router_bird: router_bird,
            _servers: servers,
            client: std::sync::Arc::new(client),
            router,
            sw,
            lb_ns,
            _backends: backends.into(),
            files,
            configs,
        };
        for i in 0..NODES {
            c.start_node(i);
        }
        c.wait_paths(NODES, Duration::from_secs(30));
        c
    }

    /// Node `i`'s xdplb, then its BIRD (the shipped config, unchanged).
    fn start_node(&mut self, i: usize) {
        let ns = &self.lb_ns[i];
        let config = &self.configs[i];
        let pid_file = config.with_extension("pid");
        let pin_root = PathBuf::from("/sys/fs/bpf").join(&ns.name);
        let args = xdplb_args_on(
            &["front", "bk"],
            &target_bin("xdplb"),
            config,
            &pid_file,
            &pin_root,
            &["--xdp-mode", "generic"],
        );
        let mut process = ProcessGuard::spawn_in_netns(&format!("lb{}", i + 1), &ns.name, &args);
        process.wait_for("xdplb ready", Duration::from_secs(30));
        self.lbs[i] = Some(Xdplb {
            process,
            pin_root,
            status_socket: config.with_extension("sock"),
            pid_file,
        });
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        self.birds[i] = Some(start_bird(
            &format!("bird-lb{}", i + 1),
            &self.lb_ns[i],
            &repo.join("config/bird-lb.conf"),
            &mut self.files,
        ));
    }

    /// Next hops of the router's route to the VIP.
    fn paths(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.router.name, "route", "show", VIP])
            .output()
            .expect("ip route");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect()
    }

    /// Wait until the router's VIP route has `n` next hops; how long it took.
    fn wait_paths(&self, n: usize, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let p = self.paths();
            if p.len() == n {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < timeout,
                "router: {} paths to {VIP} after {timeout:?}, wanted {n}: {p:?}\n{}",
                p.len(),
                self.bird_logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn bird_logs(&self) -> String {
        self.birds
            .iter()
            .flatten()
            .map(|b| format!("--- {}:\n{}", b.name, b.log().join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn metrics(&self, i: usize) -> String {
        let _in = self.lb_ns[i].enter();
        let mut s = TcpStream::connect("127.0.0.1:9100").expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }

    /// The value of the first sample of node `i` starting with `prefix`.
    fn sample(&self, i: usize, prefix: &str) -> Option<f64> {
        self.metrics(i)
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// New connections node `i` has forwarded to the service.
    fn connections(&self, i: usize) -> u64 {
        self.sample(i, "xdplb_service_connections_total{service=\"web\"")
            .unwrap_or_else(|| panic!("lb{}: no connection counter", i + 1)) as u64
    }

    /// Every node's connection count (0 for a node not running).
    fn all_connections(&self) -> Vec<u64> {
        (0..NODES_MAX)
            .map(|i| {
                if self.lbs[i].is_some() {
                    self.connections(i)
                } else {
                    0
                }
            })
            .collect()
    }

    fn fingerprint(&self, i: usize) -> String {
        let m = self.metrics(i);
        m.lines()
            .find(|l| l.starts_with("xdplb_service_ring{"))
            .and_then(|l| l.split("fingerprint=\"").nth(1))
            .and_then(|l| l.split('"').next())
            .unwrap_or_else(|| panic!("lb{}: no ring fingerprint:\n{m}", i + 1))
            .to_string()
    }

    fn announced(&self, i: usize) -> bool {
        self.sample(i, &format!("xdplb_cluster_vip_announced{{vip=\"{VIP}\"}}")) == Some(1.0)
    }

    /// The VIP routes in node `i`'s announce table.
    fn announce_table(&self, i: usize) -> String {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.lb_ns[i].name, "route", "show", "table", "4242"])
            .output()
            .expect("ip route");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Node `i` loses power: its links go down at the switch, then its
    /// xdplb and BIRD are SIGKILLed (killed first, BIRD's sockets would
    /// close its BGP session at once, which a dead node's cannot). When
    /// the links went down.
    fn kill_node(&mut self, i: usize) -> SystemTime {
        let at = self.link(i, "f", false);
        self.link(i, "b", false);
        let mut lb = self.lbs[i].take().expect("running");
        let mut bird = self.birds[i].take().expect("running");
        // SAFETY: PIDs of children this test started and has not reaped.
        unsafe {
            libc::kill(lb.process.child.id() as i32, libc::SIGKILL);
            libc::kill(bird.child.id() as i32, libc::SIGKILL);
        }
        let _ = lb.process.child.wait();
        let _ = bird.child.wait();
        at
    }

    /// Set node `i`'s front (`f`) or backend-side (`b`) link up or down at
    /// the switch; when.
    fn link(&self, i: usize, side: &str, up: bool) -> SystemTime {
        let at = SystemTime::now();
        xdplb_tests::sh(&[
            "ip",
            "-n",
            &self.sw.name,
            "link",
            "set",
            &format!("lb{}-{side}", i + 1),
            if up { "up" } else { "down" },
        ]);
        at
    }
}

/// A connection from one of the client's source addresses.
fn connect(src: u8, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 10 + src % SOURCES), 0);
    s.bind(&from.into())?;
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    s.connect_timeout(&vip.into(), timeout)?;
    Ok(s.into())
}

/// One HTTP request with `Connection: close`; the backend that answered.
fn request(src: u8, timeout: Duration) -> Result<String, String> {
    let t0 = Instant::now();
    let mut s = connect(src, timeout).map_err(|e| format!("connect: {e}"))?;
    let port = s.local_addr().map_or(0, |a| a.port());
    s.set_read_timeout(Some(
        timeout
            .saturating_sub(t0.elapsed())
            .max(Duration::from_millis(1)),
    ))
    .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("port {port}: write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("port {port}: read: {e}"))?;
    resp.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .map(str::to_string)
        .ok_or(format!("bad response {resp:?}"))
}

/// A long-lived connection: a line each way every time it is asked.
struct Held(std::io::BufReader<TcpStream>, String);

impl Held {
    fn open(client: &Netns, src: u8) -> Held {
        let _in = client.enter();
        let s = connect(src, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut h = Held(std::io::BufReader::new(s), String::new());
        h.0.get_mut().write_all(b"HOLD\n").unwrap();
        h.1 = h.line().expect("first reply");
        h
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.0.read_line(&mut line).map_err(|e| e.to_string())?;
        line.trim()
            .strip_prefix("backend=")
            .map(str::to_string)
            .ok_or(format!("bad reply {line:?}"))
    }

    /// One exchange, answered by the backend that took the connection.
    fn ask(&mut self) -> Result<(), String> {
        self.0
            .get_mut()
            .write_all(b"ping\n")
            .map_err(|e| e.to_string())?;
        let b = self.line()?;
        if b == self.1 {
            Ok(())
        } else {
            Err(format!("answered by {b}, opened on {}", self.1))
        }
    }
}

const PROBE_EVERY: Duration = Duration::from_millis(10);
/// A probe slower than this was held up by the event.
const PROBE_LATE: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const LOAD_WORKERS: usize = 3;
const LOAD_MAX: usize = 40_000;

/// What an event did to new connections and to the long-lived ones.
#[derive(Debug, Default)]
struct Run {
    probes: usize,
    late_probes: usize,
    failed_probes: usize,
    /// From the first late or failed probe to the next probe on time after
    /// the last one.
    outage: Duration,
    load: usize,
    load_failed: usize,
    load_rate: f64,
    /// Exchanges on long-lived connections, and those that failed.
    exchanges: usize,
    held_failures: Vec<String>,
    failures: Vec<String>,
}

/// Probes (a new connection every 10 ms), `Connection: close` load and
/// the long-lived connections (a line each every 100 ms) around `event`,
/// called after `before`; then `after` more. Bounded in count and time.
fn under_load(
    client: &Netns,
    held: &mut [Held],
    before: Duration,
    after: Duration,
    event: impl FnOnce() -> SystemTime,
) -> Run {
    let stop = AtomicBool::new(false);
    let made = AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::<(Instant, String)>::new());
    let hard_stop = Instant::now() + before + after + Duration::from_secs(40);
    std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut out: Vec<(Instant, Result<Duration, String>)> = Vec::new();
            std::thread::scope(|ps| {
                let mut running = Vec::new();
                let mut next = Instant::now();
                let mut n = 0u8;
                while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                    n = n.wrapping_add(1);
                    let src = n;
                    running.push(ps.spawn(move || {
                        let _in = client.enter();
                        let start = Instant::now();
                        (start, request(src, PROBE_TIMEOUT).map(|_| start.elapsed()))
                    }));
                    next += PROBE_EVERY;
                    if let Some(d) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                }
                out = running.into_iter().map(|h| h.join().unwrap()).collect();
            });
            out.sort_by_key(|p| p.0);
            out
        });
        let holder = s.spawn(|| {
            let mut exchanges = 0;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < hard_stop {
                for (i, h) in held.iter_mut().enumerate() {
                    match h.ask() {
                        Ok(()) => exchanges += 1,
                        Err(e) => errors.push(format!("long-lived {i}: {e}")),
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (exchanges, errors)
        });
        let t_load = Instant::now();
        let mut workers = Vec::new();
        for w in 0..LOAD_WORKERS {
            let (made, failures, stop) = (&made, &failures, &stop);
            workers.push(s.spawn(move || {
                let _in = client.enter();
                let mut src = w as u8 * 13;
                while !stop.load(Ordering::Relaxed)
                    && made.fetch_add(1, Ordering::Relaxed) < LOAD_MAX
                    && Instant::now() < hard_stop
                {
                    src = src.wrapping_add(1);
                    let start = Instant::now();
                    if let Err(e) = request(src, Duration::from_secs(3)) {
                        failures.lock().unwrap().push((start, format!("load: {e}")));
                    }
                }
            }));
        }
        std::thread::sleep(before);
        let event_wall = event();
        let event_at = Instant::now()
            - SystemTime::now()
                .duration_since(event_wall)
                .unwrap_or_default();
        std::thread::sleep(after);
        stop.store(true, Ordering::Relaxed);
        let probes = probe.join().unwrap();
        let (exchanges, held_failures) = holder.join().unwrap();
        for w in workers {
            w.join().unwrap();
        }
        let elapsed = t_load.elapsed().as_secs_f64();
        let slow = |p: &(Instant, Result<Duration, String>)| {
            p.1.as_ref().map_or(true, |d| *d > PROBE_LATE)
        };
        let outage = match probes.iter().position(slow) {
            None => Duration::ZERO,
            Some(f) => {
                let last = probes.iter().rposition(slow).unwrap();
                let end = probes
                    .get(last + 1)
                    .map_or(probes[last].0 + PROBE_LATE, |p| p.0);
                end - probes[f].0
            }
        };
        let mut failed: Vec<(Instant, String)> = std::mem::take(&mut *failures.lock().unwrap());
        let load_failed = failed.len();
        failed.extend(
            probes
                .iter()
                .filter_map(|(at, r)| r.as_ref().err().map(|e| (*at, format!("probe: {e}")))),
        );
        failed.sort_by_key(|f| f.0);
        let offset = |at: Instant| {
            if at >= event_at {
                format!("+{:?}", at - event_at)
            } else {
                format!("-{:?}", event_at - at)
            }
        };
        let load = made.load(Ordering::Relaxed).min(LOAD_MAX);
        Run {
            probes: probes.len(),
            late_probes: probes
                .iter()
                .filter(|p| p.1.as_ref().is_ok_and(|d| *d > PROBE_LATE))
                .count(),
            failed_probes: probes.iter().filter(|p| p.1.is_err()).count(),
            outage,
            load,
            load_failed,
            load_rate: load as f64 / elapsed,
            exchanges,
            held_failures,
            failures: failed
                .iter()
                .take(8)
                .map(|(at, e)| format!("{} {e}", offset(*at)))
                .collect(),
        }
    })
}

/// `n` long-lived connections from different sources, with the node each
/// went through (read off the nodes' connection counters around each open).
fn open_held(c: &Cluster, n: usize) -> (Vec<Held>, Vec<usize>) {
    let mut held = Vec::new();
    let mut on = Vec::new();
    for k in 0..n {
        let before = c.all_connections();
        held.push(Held::open(&c.client, 100 + k as u8));
        let after = c.all_connections();
        let node = (0..NODES_MAX)
            .find(|i| after[*i] > before[*i])
            .expect("a node counted the connection");
        on.push(node);
    }
    (held, on)
}

#[test]
fn cluster_spreads_connections_and_keeps_them_when_a_node_dies() {
    let test = "cluster_spreads_connections_and_keeps_them_when_a_node_dies";
    if !require_root(test) || !require_tool(test, "bird") {
        return;
    }
    let _turn = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(test);
    // Every node announces, and builds the same ring.
    let prints: Vec<String> = (0..NODES).map(|i| c.fingerprint(i)).collect();
    // Each daemon reads its BIRD's session (every second).
    for i in 0..NODES {
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.sample(i, "xdplb_cluster_bgp_session_up{session=\"upstream\"}") != Some(1.0) {
            assert!(
                Instant::now() < deadline,
                "lb{}: BGP session not seen up:\n{}",
                i + 1,
                c.metrics(i)
                    .lines()
                    .filter(|l| l.starts_with("xdplb_cluster"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(c.sample(i, "xdplb_cluster_bird_up"), Some(1.0));
    }
    assert!(
        prints.iter().all(|p| *p == prints[0]),
        "rings differ: {prints:?}"
    );
    for i in 0..NODES {
        assert!(c.announced(i), "lb{}: VIP not announced", i + 1);
        assert!(
            c.announce_table(i)
                .contains(&format!("blackhole {VIP} proto 242")),
            "lb{}: table 4242: {}",
            i + 1,
            c.announce_table(i)
        );
    }

    // `xdplb status --json` says the same.
    let out = std::process::Command::new(target_bin("xdplb"))
        .args(["status", "--json", "--socket"])
        .arg(&c.lbs[0].as_ref().unwrap().status_socket)
        .output()
        .expect("xdplb status --json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["cluster"]["vips"][0]["vip"], VIP, "{j}");
    assert_eq!(j["cluster"]["vips"][0]["announced"], true, "{j}");
    assert_eq!(
        j["services"][0]["ring_fingerprint"],
        prints[0].as_str(),
        "{j}"
    );
    assert_eq!(
        j["cluster"]["bird"]["sessions"][0]["info"], "Established",
        "{j}"
    );

    // Spread: new connections from many sources and ports over every node.
    const SPREAD: usize = 600;
    let before = c.all_connections();
    {
        let _in = c.client.enter();
        for k in 0..SPREAD {
            let r = request(k as u8, Duration::from_secs(3));
            assert!(r.is_ok(), "spread request {k}: {r:?}");
        }
    }
    let after = c.all_connections();
    let shares: Vec<f64> = (0..NODES)
        .map(|i| (after[i] - before[i]) as f64 / SPREAD as f64)
        .collect();
    eprintln!(
        "{test}: spread of {SPREAD} new connections over 3 nodes: {:.1}% / {:.1}% / {:.1}%",
        shares[0] * 100.0,
        shares[1] * 100.0,
        shares[2] * 100.0
    );
    for (i, s) in shares.iter().enumerate() {
        assert!(
            (0.20..=0.47).contains(s),
            "lb{} carried {:.1}% of new connections",
            i + 1,
            s * 100.0
        );
    }

    // Long-lived connections over every node; the node carrying most dies.
    let (mut held, on) = open_held(&c, 12);
    let carried = |i: usize| on.iter().filter(|n| **n == i).count();
    let victim = (0..NODES).max_by_key(|i| carried(*i)).unwrap();
    eprintln!(
        "{test}: 12 long-lived connections: {} / {} / {} per node; lb{} dies",
        carried(0),
        carried(1),
        carried(2),
        victim + 1
    );
    let client = c.client.clone();
    let mut detected = Duration::ZERO;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || {
            let at = c.kill_node(victim);
            c.wait_paths(NODES - 1, Duration::from_secs(10));
            detected = at.elapsed().unwrap_or_default();
            at
        },
    );
    eprintln!(
        "{test}: node killed + links down: the router dropped it after {detected:?} (BFD {BFD_DETECT:?}); \
         {} probes, {} late, {} failed, new connections held up for {:?}; load {} connections ({:.0}/s), {} failed; \
         long-lived: {} exchanges, {} failed; first failures: {:?}",
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.outage,
        run.load,
        run.load_rate,
        run.load_failed,
        run.exchanges,
        run.held_failures.len(),
        run.failures
    );
    assert!(
        run.held_failures.is_empty(),
        "long-lived connections broke: {:?}",
        run.held_failures
    );
    for (i, h) in held.iter_mut().enumerate() {
        assert_eq!(h.ask(), Ok(()), "long-lived {i} after the node died");
    }
    assert!(run.exchanges > 0 && run.probes > 0);
    // New connections sent to the dead node before BFD took it out wait
    // for a SYN retransmission (1 s); none may fail outright.
    assert_eq!(run.failed_probes, 0, "failed probes: {:?}", run.failures);
    // The outage: BFD's detection, the router's update, plus a stated
    // 1.5 s margin for a loaded 2-core machine (a SYN lost in the window
    // is retransmitted after 1 s, which ends the outage for it).
    let bound = BFD_DETECT + Duration::from_millis(200) + Duration::from_millis(1500);
    assert!(
        run.outage <= bound,
        "new connections held up for {:?} (bound {bound:?})",
        run.outage
    );
}

#[test]
fn a_node_withdraws_when_its_backends_fail_and_before_it_stops() {
    let test = "a_node_withdraws_when_its_backends_fail_and_before_it_stops";
    if !require_root(test) || !require_tool(test, "bird") {
        return;
    }
    let _turn = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(test);
    let mut held: Vec<Held> = Vec::new();

    // Node 1 loses its backends (its link to them is cut): its checks
    // fail, it withdraws, the router moves its traffic to the others.
    let client = c.client.clone();
    let withdrawn_after: Duration;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(1),
        Duration::from_secs(3),
        || {
            let at = c.link(0, "b", false);
            c.wait_paths(NODES - 1, Duration::from_secs(10));
            at
        },
    );
    {
        let lb = c.lbs[0].as_mut().unwrap();
        lb.wait_for("VIP WITHDRAWN", Duration::from_secs(5));
        let log = lb.log();
        let last_down = log
            .iter()
            .filter(|l| l.contains("backend DOWN"))
            .filter_map(|l| xdplb_tests::parse_log_time(l))
            .max()
            .expect("backends went down");
        let withdrawn = log
            .iter()
            .find(|l| l.contains("VIP WITHDRAWN"))
            .and_then(|l| xdplb_tests::parse_log_time(l))
            .unwrap();
        withdrawn_after = withdrawn.duration_since(last_down).unwrap_or_default();
    }
    eprintln!(
        "{test}: lb1 lost its link to the backends: withdrawn {withdrawn_after:?} after the last went down; \
         {} probes, {} late, {} failed; load {} ({:.0}/s), {} failed; first failures: {:?}",
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.load,
        run.load_rate,
        run.load_failed,
        run.failures
    );
    assert!(
        withdrawn_after <= Duration::from_secs(1),
        "withdrawn {withdrawn_after:?} after the last backend went down"
    );
    assert!(!c.announced(0));
    assert_eq!(c.announce_table(0), "", "lb1 still has a VIP route");
    assert_eq!(run.failed_probes + run.load_failed, 0, "{:?}", run.failures);

    // Node 2 stops cleanly under load: it withdraws, forwards for the grace
    // time, then detaches. No connection fails.
    held = open_held(&c, 6).0;
    let client = c.client.clone();
    let mut stopped = None;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(1),
        Duration::from_secs(3),
        || {
            let at = SystemTime::now();
            let mut lb = c.lbs[1].take().unwrap();
            stopped = lb.process.stop();
            let log = lb.log();
            drop(lb);
            assert!(
                log.iter()
                    .any(|l| l.contains("VIPs withdrawn; forwarding on")),
                "lb2 did not withdraw on stop:\n{}",
                log.join("\n")
            );
            at
        },
    );
    eprintln!(
        "{test}: lb2 stopped cleanly: {} probes, {} late, {} failed; load {} ({:.0}/s), {} failed; long-lived {} exchanges, {} failed; first failures: {:?}",
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.load,
        run.load_rate,
        run.load_failed,
        run.exchanges,
        run.held_failures.len(),
        run.failures
    );
    assert!(stopped.is_some_and(|s| s.success()), "lb2 exit {stopped:?}");
    assert_eq!(c.announce_table(1), "", "lb2 left its VIP route");
    c.wait_paths(1, Duration::from_secs(10));
    assert_eq!(run.failed_probes + run.load_failed, 0, "{:?}", run.failures);
    assert!(run.held_failures.is_empty(), "{:?}", run.held_failures);
}

#[test]
fn a_joining_node_takes_new_connections_and_moves_none_badly() {
    let test = "a_joining_node_takes_new_connections_and_moves_none_badly";
    if !require_root(test) || !require_tool(test, "bird") {
        return;
    }
    let _turn = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(test);
    let (mut held, on) = open_held(&c, 12);
    let before = c.all_connections();
    let client = c.client.clone();
    let mut joined = Duration::ZERO;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || {
            let at = SystemTime::now();
            c.start_node(NODES);
            c.wait_paths(NODES_MAX, Duration::from_secs(30));
            joined = at.elapsed().unwrap_or_default();
            at
        },
    );
    let after = c.all_connections();
    let new: Vec<u64> = (0..NODES_MAX).map(|i| after[i] - before[i]).collect();
    let total: u64 = new.iter().sum();
    assert_eq!(
        c.fingerprint(NODES),
        c.fingerprint(0),
        "the new node's ring differs"
    );
    eprintln!(
        "{test}: lb4 joined under load ({joined:?} from its start to the router's fourth path); \
         12 long-lived connections ({} / {} / {} per node before) : {} exchanges, {} failed; \
         {} probes, {} late, {} failed; load {} ({:.0}/s), {} failed; new connections per node during the run: {new:?}; \
         first failures: {:?}",
        on.iter().filter(|n| **n == 0).count(),
        on.iter().filter(|n| **n == 1).count(),
        on.iter().filter(|n| **n == 2).count(),
        run.exchanges,
        run.held_failures.len(),
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.load,
        run.load_rate,
        run.load_failed,
        run.failures
    );
    assert!(run.held_failures.is_empty(), "{:?}", run.held_failures);
    for (i, h) in held.iter_mut().enumerate() {
        assert_eq!(h.ask(), Ok(()), "long-lived {i} after the join");
    }
    assert_eq!(run.failed_probes + run.load_failed, 0, "{:?}", run.failures);
    assert!(
        new[NODES] > 0 && total > 0,
        "the new node took no new connection: {new:?}"
    );
}

#[test]
fn drain_takes_a_node_out_without_losing_a_connection() {
    let test = "drain_takes_a_node_out_without_losing_a_connection";
    if !require_root(test) || !require_tool(test, "bird") {
        return;
    }
    let _turn = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = Cluster::start(test);
    let (mut held, on) = open_held(&c, 9);
    let node = (0..NODES)
        .max_by_key(|i| on.iter().filter(|n| *n == i).count())
        .unwrap();
    let socket = c.lbs[node].as_ref().unwrap().status_socket.clone();
    let client = c.client.clone();
    let mut answer = String::new();
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(1),
        Duration::from_secs(5),
        || {
            let at = SystemTime::now();
            let out = std::process::Command::new(target_bin("xdplb"))
                .args(["drain", "--timeout", "30", "--socket"])
                .arg(&socket)
                .output()
                .expect("xdplb drain");
            answer = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "xdplb drain: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            at
        },
    );
    // The drain ends by itself: 2 s without a packet, well within 30 s.
    let mut lb = c.lbs[node].take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = lb.process.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "lb{} still draining", node + 1);
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = lb.log();
    drop(lb);
    let over = log
        .iter()
        .find(|l| l.contains("drain over"))
        .cloned()
        .unwrap_or_default();
    eprintln!(
        "{test}: lb{} drained ({} of 9 long-lived connections on it): {}; {}; \
         {} probes, {} late, {} failed; load {} ({:.0}/s), {} failed; long-lived {} exchanges, {} failed; first failures: {:?}",
        node + 1,
        on.iter().filter(|n| **n == node).count(),
        answer.trim(),
        over,
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.load,
        run.load_rate,
        run.load_failed,
        run.exchanges,
        run.held_failures.len(),
        run.failures
    );
    assert!(answer.starts_with("draining: 1 VIPs withdrawn"), "{answer}");
    assert!(status.success(), "lb{} exit {status}", node + 1);
    assert!(over.contains("no packet for 2 s"), "{}", log.join("\n"));
    assert_eq!(c.announce_table(node), "");
    c.wait_paths(NODES - 1, Duration::from_secs(10));
    assert_eq!(run.failed_probes + run.load_failed, 0, "{:?}", run.failures);
    assert!(run.held_failures.is_empty(), "{:?}", run.held_failures);
    for (i, h) in held.iter_mut().enumerate() {
        assert_eq!(h.ask(), Ok(()), "long-lived {i} after the drain");
    }
}

#[test]
fn shipped_bird_configs_parse() {
    let test = "shipped_bird_configs_parse";
    if !require_tool(test, "bird") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["config/bird-lb.conf", "config/bird-router.conf"] {
        let out = std::process::Command::new("bird")
            .args(["-p", "-c"])
            .arg(repo.join(f))
            .output()
            .expect("bird -p");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A sample of node `i` with these labels, 0 when absent.
fn peer_sample(c: &Cluster, i: usize, name_and_labels: &str) -> f64 {
    c.sample(i, name_and_labels).unwrap_or(0.0)
}

/// Round robin or least_conn with `[cluster.sync]`: connections ECMP moves
/// keep their backend only through the synced flow tables (without them a
/// moved connection's next packet is scheduled afresh: with two backends,
/// half of them would be reset). Twelve long-lived connections survive a
/// fourth node joining under load (the joiner holds its VIP back until the
/// peers' tables arrived), then the death of the node that carried most.
fn synced_cluster_keeps_connections(test: &str, scheduler: &str) {
    if !require_root(test) || !require_tool(test, "bird") {
        return;
    }
    let _turn = MACHINE.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::PermissionsExt as _;
    let key = std::env::temp_dir().join(format!("{test}.{}.key", std::process::id()));
    std::fs::write(&key, b"a cluster key of thirty-two bytes").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let setup = Setup {
        scheduler,
        sync_key: Some(&key),
    };
    let mut c = Cluster::start_with(test, setup);
    c.files.push(key.clone());
    for i in 0..NODES {
        assert_eq!(
            c.sample(i, "xdplb_cluster_sync_joined"),
            Some(1.0),
            "lb{}: announced before joining",
            i + 1
        );
    }
    // `xdplb status` shows the sync and each peer.
    let out = std::process::Command::new(target_bin("xdplb"))
        .args(["status", "--socket"])
        .arg(&c.lbs[0].as_ref().unwrap().status_socket)
        .output()
        .expect("xdplb status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cluster sync: joined")
            && text.contains(&format!("peer {} up", node_addr(1)))
            && text.contains(&format!("peer {} never heard", node_addr(NODES))),
        "{text}"
    );
    let (mut held, on) = open_held(&c, 12);
    let carried = |i: usize| on.iter().filter(|n| **n == i).count();
    eprintln!(
        "{test}: 12 long-lived connections: {} / {} / {} per node",
        carried(0),
        carried(1),
        carried(2)
    );
    // Every node has every long-lived connection: each peer's records
    // arrive (the live stream of the node that opened it; the last one may
    // still be on its way: batched for up to 2 ms, waited for up to a
    // stated 5 s on a loaded machine).
    for i in 0..NODES {
        let received = || -> f64 {
            (0..NODES)
                .filter(|p| *p != i)
                .map(|p| {
                    peer_sample(
                        &c,
                        i,
                        &format!(
                            "xdplb_cluster_sync_records_total{{peer=\"{}\",direction=\"received\",kind=\"live\"}}",
                            node_addr(p)
                        ),
                    )
                })
                .sum()
        };
        let others = on.iter().filter(|n| **n != i).count() as f64;
        let deadline = Instant::now() + Duration::from_secs(5);
        while received() < others && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let got = received();
        assert!(
            got >= others,
            "lb{}: {got} live records received, {others} connections opened elsewhere",
            i + 1
        );
    }

    // A fourth node joins under load.
    let client = c.client.clone();
    let mut joined = Duration::ZERO;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || {
            let at = SystemTime::now();
            c.start_node(NODES);
            c.wait_paths(NODES_MAX, Duration::from_secs(30));
            joined = at.elapsed().unwrap_or_default();
            at
        },
    );
    let bulk: f64 = (0..NODES)
        .map(|p| {
            peer_sample(
                &c,
                NODES,
                &format!(
                    "xdplb_cluster_sync_records_total{{peer=\"{}\",direction=\"received\",kind=\"bulk\"}}",
                    node_addr(p)
                ),
            )
        })
        .sum();
    eprintln!(
        "{test}: lb4 joined under load ({joined:?} from its start to the router's fourth path), \
         {bulk} bulk records received; long-lived: {} exchanges, {} failed; {} probes, {} late, {} failed; \
         load {} ({:.0}/s), {} failed; first failures: {:?}",
        run.exchanges,
        run.held_failures.len(),
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.load,
        run.load_rate,
        run.load_failed,
        run.failures
    );
    assert!(
        bulk >= held.len() as f64,
        "the joiner got {bulk} records of its peers' tables; its log:\n{}",
        c.lbs[NODES].as_ref().unwrap().process.log().join("\n")
    );
    assert!(run.held_failures.is_empty(), "{:?}", run.held_failures);
    for (i, h) in held.iter_mut().enumerate() {
        assert_eq!(h.ask(), Ok(()), "long-lived {i} after the join");
    }
    assert_eq!(run.failed_probes + run.load_failed, 0, "{:?}", run.failures);

    // The node that carried most long-lived connections dies.
    let victim = (0..NODES).max_by_key(|i| carried(*i)).unwrap();
    let mut detected = Duration::ZERO;
    let run = under_load(
        &client,
        &mut held,
        Duration::from_secs(2),
        Duration::from_secs(4),
        || {
            let at = c.kill_node(victim);
            c.wait_paths(NODES_MAX - 1, Duration::from_secs(10));
            detected = at.elapsed().unwrap_or_default();
            at
        },
    );
    eprintln!(
        "{test}: lb{} (carrying {} long-lived) killed + links down: the router dropped it after {detected:?}; \
         long-lived: {} exchanges, {} failed; {} probes, {} late, {} failed, held up {:?}; load {} ({:.0}/s), {} failed; \
         first failures: {:?}",
        victim + 1,
        carried(victim),
        run.exchanges,
        run.held_failures.len(),
        run.probes,
        run.late_probes,
        run.failed_probes,
        run.outage,
        run.load,
        run.load_rate,
        run.load_failed,
        run.failures
    );
    assert!(
        run.held_failures.is_empty(),
        "long-lived connections broke: {:?}",
        run.held_failures
    );
    for (i, h) in held.iter_mut().enumerate() {
        assert_eq!(h.ask(), Ok(()), "long-lived {i} after the node died");
    }
    assert_eq!(run.failed_probes, 0, "failed probes: {:?}", run.failures);
}

#[test]
fn round_robin_keeps_connections_through_a_join_and_a_death_by_flow_sync() {
    synced_cluster_keeps_connections(
        "round_robin_keeps_connections_through_a_join_and_a_death_by_flow_sync",
        "round_robin",
    );
}

#[test]
fn least_conn_keeps_connections_through_a_join_and_a_death_by_flow_sync() {
    synced_cluster_keeps_connections(
        "least_conn_keeps_connections_through_a_join_and_a_death_by_flow_sync",
        "least_conn",
    );
}
