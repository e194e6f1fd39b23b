//! Shared support for xdplb's integration tests: privilege checks, network
//! namespaces with guards that always clean up, and process guards.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Whether this is a CI run (`CI` set to `true` or `1`, as CI systems
/// set it): a test that cannot run there fails instead of skipping.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this test can run. Without root it fails under `CI=true`, and
/// otherwise skips with a printed reason (a developer's non-root run).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !is_ci(),
        "{test}: needs root (BPF and network namespaces) and CI=true forbids skipping"
    );
    eprintln!(
        "SKIP {test}: needs root for BPF and network namespaces (run `cargo xtask test` as root)"
    );
    false
}

/// Whether `tool` is on the PATH; without it a CI run fails, a developer's
/// run skips with the reason (`cargo xtask setup` installs every tool the
/// tests use).
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    assert!(
        !is_ci(),
        "{test}: {tool} is not installed (cargo xtask setup installs it)"
    );
    eprintln!("SKIP {test}: {tool} is not installed (cargo xtask setup installs it)");
    false
}

/// Run a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a command inside namespace `ns`.
pub fn ns_sh(ns: &str, args: &[&str]) {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full);
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace deleted (with its interfaces) on drop, also on panic.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new namespace named `<prefix>-<pid>-<n>`, unique across parallel
    /// tests and concurrent test processes. Loopback is brought up.
    pub fn new(prefix: &str) -> Netns {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn sh(&self, args: &[&str]) {
        ns_sh(&self.name, args);
    }

    /// Move the calling thread into this namespace until the guard drops.
    pub fn enter(&self) -> NetnsEntered {
        let here = File::open("/proc/thread-self/ns/net").expect("open own netns");
        let there = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        // SAFETY: valid fds; affects only this thread.
        let rc = unsafe { libc::setns(there.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        NetnsEntered { back: here }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Returns the thread to its previous namespace on drop.
pub struct NetnsEntered {
    back: File,
}

impl Drop for NetnsEntered {
    fn drop(&mut self) {
        // SAFETY: valid fd of the namespace we came from.
        unsafe { libc::setns(self.back.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Connect two namespaces (or one with itself) with a veth pair.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    sh(&[
        "ip", "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]);
    a.sh(&["ip", "link", "set", a_if, "up"]);
    b.sh(&["ip", "link", "set", b_if, "up"]);
}

/// How to start a child besides its command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChildSetup {
    /// Its umask (the test process's when unset).
    pub umask: Option<libc::mode_t>,
    /// Its open-descriptor limit, soft and hard (inherited when unset).
    pub nofile: Option<libc::rlim_t>,
}

/// A child process stopped by PID on drop: SIGTERM, then SIGKILL after 5 s.
pub struct ProcessGuard {
    pub child: Child,
    pub name: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl ProcessGuard {
    /// Start `args` in namespace `ns` (via `ip netns exec`), collecting its
    /// stderr lines.
    pub fn spawn(name: &str, ns: &str, args: &[String]) -> ProcessGuard {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        Self::start(name, cmd)
    }

    /// Start `args` in network namespace `ns` only, keeping this process's
    /// mount namespace. `ip netns exec` mounts a private /sys, which hides the
    /// host's /sys/fs/bpf; a daemon whose pins must outlive it (and be found
    /// by the next one) needs the real bpffs.
    pub fn spawn_in_netns(name: &str, ns: &str, args: &[String]) -> ProcessGuard {
        Self::spawn_in_netns_as(name, ns, args, ChildSetup::default())
    }

    /// [`spawn_in_netns`](Self::spawn_in_netns) with the process's umask
    /// and descriptor limit set as `child` says.
    pub fn spawn_in_netns_as(
        name: &str,
        ns: &str,
        args: &[String],
        child: ChildSetup,
    ) -> ProcessGuard {
        use std::os::unix::process::CommandExt as _;
        let netns = File::open(format!("/run/netns/{ns}")).expect("open netns");
        let fd = netns.as_raw_fd();
        let mut cmd = Command::new(&args[0]);
        cmd.args(&args[1..]);
        // SAFETY: setns, umask and setrlimit are async-signal-safe; the fd
        // stays open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(mask) = child.umask {
                    libc::umask(mask);
                }
                if let Some(n) = child.nofile {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let g = Self::start(name, cmd);
        drop(netns);
        g
    }

    fn start(name: &str, mut cmd: Command) -> ProcessGuard {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        ProcessGuard {
            child,
            name: name.into(),
            log,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait until a stderr line contains `needle`; panic with the log on
    /// timeout or early exit.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().iter().any(|l| l.contains(needle)) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {needle:?}:\n{}",
                    self.name,
                    self.log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: no {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log().join("\n")
        );
    }

    /// When the daemon logged the first line containing `needle` (tracing's
    /// RFC 3339 UTC timestamp at the start of the line), for measuring how
    /// long after an event the daemon acted, without the test's polling delay.
    pub fn logged_at(&self, needle: &str) -> Option<std::time::SystemTime> {
        self.log()
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| parse_log_time(l))
    }

    /// Wait until `n` stderr lines contain `needle`.
    pub fn wait_for_count(&mut self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().iter().filter(|l| l.contains(needle)).count() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{}: fewer than {n} {needle:?} within {timeout:?}:\n{}",
            self.name,
            self.log().join("\n")
        );
    }

    /// Stop with SIGTERM and return the exit status (SIGKILL after 5 s).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `2026-11-22T10:39:40.628915Z ...` at the start of `line`, as a time.
pub fn parse_log_time(line: &str) -> Option<std::time::SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let secs = days * 86_400 + h * 3_600 + min * 60;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_secs_f64(sec))
}

/// Path of a binary built in the same target directory as this test.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not built; run `cargo build --workspace` (cargo xtask test does)",
        p.display()
    );
    p
}

/// One backend of [`LbTopology`]: the LB's interface to it, the LB's address
/// on that link (the backend's gateway), and the backend's address.
pub struct BackendLink {
    pub lb_if: &'static str,
    pub gateway: &'static str,
    pub addr: &'static str,
}

pub const BACKEND_LINKS: [BackendLink; 2] = [
    BackendLink {
        lb_if: "b1",
        gateway: "203.0.113.1",
        addr: "203.0.113.11",
    },
    BackendLink {
        lb_if: "b2",
        gateway: "203.0.113.17",
        addr: "203.0.113.21",
    },
];

/// The LB lab used by the namespace tests and the demo:
///
/// ```text
/// client 198.51.100.2 -- cli [LB] b1 -- 203.0.113.11 backend 1 (VIP on lo)
///                                 b2 -- 203.0.113.21 backend 2 (VIP on lo)
/// ```
/// The LB routes between the links but has no route to the VIP, so traffic
/// to the VIP only gets through via the XDP program.
pub struct LbTopology {
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
}

impl LbTopology {
    /// Build it with `vip` on the backends' loopback (for DSR). With
    /// `native_veth`, set what native XDP on veth needs: TX checksum offload
    /// off on the senders into the LB, GRO (NAPI) on the redirect targets.
    pub fn new(prefix: &str, vip: &str, native_veth: bool) -> LbTopology {
        let client = Netns::new(&format!("{prefix}-client"));
        let lb = Netns::new(&format!("{prefix}-lb"));
        veth(&client, "eth0", &lb, "cli");
        client.sh(&["ip", "addr", "add", "198.51.100.2/24", "dev", "eth0"]);
        client.sh(&["ip", "route", "add", "default", "via", "198.51.100.1"]);
        lb.sh(&["ip", "addr", "add", "198.51.100.1/24", "dev", "cli"]);
        lb.sh(&[
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ]);
        let mut backends = Vec::new();
        for (i, link) in BACKEND_LINKS.iter().enumerate() {
            let ns = Netns::new(&format!("{prefix}-b{}", i + 1));
            veth(&lb, link.lb_if, &ns, "eth0");
            lb.sh(&[
                "ip",
                "addr",
                "add",
                &format!("{}/28", link.gateway),
                "dev",
                link.lb_if,
            ]);
            ns.sh(&[
                "ip",
                "addr",
                "add",
                &format!("{}/28", link.addr),
                "dev",
                "eth0",
            ]);
            ns.sh(&["ip", "route", "add", "default", "via", link.gateway]);
            // DSR: the backend owns the VIP but must not answer ARP for it.
            ns.sh(&["ip", "addr", "add", &format!("{vip}/32"), "dev", "lo"]);
            ns.sh(&[
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
            ]);
            if native_veth {
                ns.sh(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
            }
            backends.push(ns);
        }
        if native_veth {
            client.sh(&["ethtool", "-K", "eth0", "tx", "off", "gro", "on"]);
        }
        LbTopology {
            client,
            lb,
            backends,
        }
    }
}

/// A running `xdplb run` and what it owns on the host: stopping it (SIGTERM)
/// detaches and unpins; dropping it also removes its bpffs pins, which a
/// SIGKILLed daemon leaves behind.
pub struct Xdplb {
    pub process: ProcessGuard,
    /// `--pin-path` root, unique to the test.
    pub pin_root: PathBuf,
    pub status_socket: PathBuf,
    pub pid_file: PathBuf,
}

impl std::ops::Deref for Xdplb {
    type Target = ProcessGuard;
    fn deref(&self) -> &ProcessGuard {
        &self.process
    }
}

impl std::ops::DerefMut for Xdplb {
    fn deref_mut(&mut self) -> &mut ProcessGuard {
        &mut self.process
    }
}

impl Drop for Xdplb {
    fn drop(&mut self) {
        self.process.stop();
        let _ = std::fs::remove_file(&self.status_socket);
        if self.pin_root.exists() {
            let _ = std::fs::remove_dir_all(&self.pin_root);
        }
    }
}

/// The command line [`start_xdplb`] runs, for tests that restart the daemon.
pub fn xdplb_args(
    xdplb: &std::path::Path,
    config: &std::path::Path,
    pid_file: &std::path::Path,
    pin_root: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let ifaces: Vec<&str> = std::iter::once("cli")
        .chain(BACKEND_LINKS.iter().map(|l| l.lb_if))
        .collect();
    xdplb_args_on(&ifaces, xdplb, config, pid_file, pin_root, extra)
}

/// `xdplb run` attached to `ifaces`, with the status socket beside
/// `pid_file` and pins under `pin_root` (other topologies than
/// [`LbTopology`]).
pub fn xdplb_args_on(
    ifaces: &[&str],
    xdplb: &std::path::Path,
    config: &std::path::Path,
    pid_file: &std::path::Path,
    pin_root: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args = vec![
        xdplb.display().to_string(),
        "run".into(),
        "--config".into(),
        config.display().to_string(),
    ];
    for iface in ifaces {
        args.extend(["--iface".into(), iface.to_string()]);
    }
    args.extend([
        "--stats-interval".into(),
        "0".into(),
        "--pid-file".into(),
        pid_file.display().to_string(),
        "--status-socket".into(),
        pid_file.with_extension("sock").display().to_string(),
        "--pin-path".into(),
        pin_root.display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Start `xdplb run` in the LB namespace of an [`LbTopology`], attached to
/// the LB's client and backend interfaces, and wait until it is ready. Its
/// pins go under `/sys/fs/bpf/<lb namespace>` and its status socket next to
/// `pid_file`, so parallel tests do not meet. `extra` is appended to the
/// command line (e.g. `--xdp-mode native`).
pub fn start_xdplb(
    lb: &Netns,
    xdplb: &std::path::Path,
    config: &std::path::Path,
    pid_file: &std::path::Path,
    extra: &[&str],
) -> Xdplb {
    let pin_root = PathBuf::from("/sys/fs/bpf").join(&lb.name);
    let args = xdplb_args(xdplb, config, pid_file, &pin_root, extra);
    let mut process = ProcessGuard::spawn_in_netns("xdplb", &lb.name, &args);
    process.wait_for("xdplb ready", Duration::from_secs(30));
    Xdplb {
        process,
        pin_root,
        status_socket: pid_file.with_extension("sock"),
        pid_file: pid_file.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_timestamps_parse() {
        let t = super::parse_log_time("2026-11-22T10:39:40.628915Z  INFO xdplb: hello").unwrap();
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
        // date -u -d 2026-11-22T10:39:40Z +%s
        assert_eq!(d.as_secs(), 1_795_343_980);
        assert_eq!(d.subsec_micros(), 628_915);
    }
}
