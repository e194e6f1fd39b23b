//! `cargo xtask bench --fixed-rate`: the whole machine's CPU at a fixed rate
//! of new connections (issue 21, item 4), xdplb against an nftables DNAT
//! rule set doing the same job, in interleaved runs.
//!
//! The lab is the tests' (client, LB, two backends in network namespaces,
//! veths prepared for native XDP). nginx serves a short answer on each
//! backend; h2load opens connections from the client at a fixed rate (open
//! loop: it does not wait for answers before opening the next), one request
//! each with `Connection: close`, so client ports repeat within seconds as
//! they do in front of a real site. Busy CPU is read from /proc/stat over
//! the generator's run (all CPUs, everything the machine did: generator,
//! servers, kernel and balancer alike, so the difference between the modes
//! is the balancer's), beside an idle window before each run; the daemon's
//! own share from its /proc/PID/stat. Nothing here is a test: it prints
//! figures for README, whatever they are.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdplb_testsupport::{BACKEND_LINKS, LbTopology, Netns, ProcessGuard, start_xdplb};

use crate::{cargo, run as run_cmd, say};

const VIP: &str = "192.0.2.10";
/// Tools the runs need, by Debian package.
const PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx-light"),
    ("nft", "nftables"),
    ("h2load", "nghttp2-client"),
];
/// Clock ticks per second in /proc (USER_HZ, 100 on every Linux port that
/// matters; read with sysconf below).
fn user_hz() -> f64 {
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// /proc/stat's first line: (busy, softirq, total) ticks of all CPUs.
fn cpu_ticks() -> anyhow::Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 8 {
        bail!("unexpected /proc/stat line {line:?}");
    }
    // user nice system idle iowait irq softirq steal
    let total: u64 = v[..8].iter().sum();
    let idle = v[3] + v[4];
    Ok((total - idle, v[6], total))
}

/// utime + stime ticks of a process.
fn process_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The fields after the command name in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    t(11) + t(12)
}

/// One run's figures.
struct Figures {
    mode: &'static str,
    succeeded: u64,
    failed: u64,
    secs: f64,
    idle_cores: f64,
    busy_cores: f64,
    softirq_cores: f64,
    daemon_cores: Option<f64>,
}

pub struct Options {
    pub rate: u32,
    pub secs: u32,
    pub reps: u32,
}

pub fn run(root: &Path, o: &Options) -> anyhow::Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the fixed-rate runs create network namespaces and load XDP programs: run as root");
    }
    if o.rate == 0 || o.secs == 0 || o.reps == 0 {
        bail!("--rate, --secs and --reps must be above 0");
    }
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        say(&format!(
            "installing {missing:?} for the fixed-rate runs (apt-get; no service is started)"
        ));
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive")
                // Debian starts a freshly installed nginx's service; this
                // policy keeps it from doing so.
                .env("RUNLEVEL", "1"),
        )?;
    }
    say("building xdplb (release)");
    run_cmd(cargo().args(["build", "--release", "-p", "lb-userspace"]))?;
    let xdplb = root.join("target/release/xdplb");

    say("creating namespaces: client, lb, b1, b2 (removed again on exit)");
    let lab = LbTopology::new(&format!("xdplb-rate-{}", std::process::id()), VIP, true);
    // The client opens `rate` connections a second: its ports come back
    // within seconds (TIME_WAIT reused, as a busy client does).
    lab.client.sh(&[
        "sysctl",
        "-qw",
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ]);
    let work = std::env::temp_dir().join(&lab.lb.name);
    std::fs::create_dir_all(&work)?;
    let _cleanup = RemoveDir(work.clone());
    let mut servers = Vec::new();
    for (ns, link) in lab.backends.iter().zip(BACKEND_LINKS.iter()) {
        servers.push(nginx(ns, &work, link.addr)?);
    }
    let config = work.join("xdplb.toml");
    std::fs::write(&config, xdplb_config())?;
    let nft = work.join("dnat.nft");
    std::fs::write(&nft, nft_rules())?;

    let mut all = Vec::new();
    for rep in 1..=o.reps {
        for mode in ["xdplb", "nftables"] {
            say(&format!(
                "run {rep}/{}: {mode}, {} new connections/s for {} s",
                o.reps, o.rate, o.secs
            ));
            let f = match mode {
                "xdplb" => {
                    let pid_file = work.join("xdplb.pid");
                    let mut daemon = start_xdplb(
                        &lab.lb,
                        &xdplb,
                        &config,
                        &pid_file,
                        &["--xdp-mode", "native"],
                    );
                    let pid = daemon.child.id();
                    let f = measure(&lab.client, o, mode, Some(pid));
                    let stopped = daemon.stop();
                    if !stopped.is_some_and(|s| s.success()) {
                        bail!("xdplb did not stop cleanly: {stopped:?}");
                    }
                    f?
                }
                _ => {
                    lab.lb.sh(&["nft", "-f", &nft.display().to_string()]);
                    let f = measure(&lab.client, o, mode, None);
                    lab.lb.sh(&["nft", "delete", "table", "ip", "xdplb_rate"]);
                    f?
                }
            };
            print_row(&f);
            all.push(f);
        }
    }
    println!(
        "\nfixed rate: {} new connections/s, {} s per run, {} runs per mode, interleaved",
        o.rate, o.secs, o.reps
    );
    println!("busy CPU of the whole machine (cores), its idle figure subtracted:");
    for mode in ["xdplb", "nftables"] {
        let runs: Vec<&Figures> = all.iter().filter(|f| f.mode == mode).collect();
        let net: Vec<f64> = runs.iter().map(|f| f.busy_cores - f.idle_cores).collect();
        let mean = net.iter().sum::<f64>() / net.len() as f64;
        let soft = runs.iter().map(|f| f.softirq_cores).sum::<f64>() / runs.len() as f64;
        let failed: u64 = runs.iter().map(|f| f.failed).sum();
        let daemon = runs
            .iter()
            .filter_map(|f| f.daemon_cores)
            .collect::<Vec<_>>();
        println!(
            "  {mode:<9} mean {mean:.3} cores (runs: {}), softirq {soft:.3}, failed requests {failed}{}",
            net.iter()
                .map(|n| format!("{n:.3}"))
                .collect::<Vec<_>>()
                .join(" "),
            if daemon.is_empty() {
                String::new()
            } else {
                format!(
                    ", the daemon itself {:.4} cores",
                    daemon.iter().sum::<f64>() / daemon.len() as f64
                )
            }
        );
    }
    drop(servers);
    Ok(())
}

fn print_row(f: &Figures) {
    println!(
        "  {:<9} {} ok, {} failed in {:.1} s; busy {:.3} cores (idle before {:.3}), softirq {:.3}{}",
        f.mode,
        f.succeeded,
        f.failed,
        f.secs,
        f.busy_cores,
        f.idle_cores,
        f.softirq_cores,
        f.daemon_cores
            .map(|d| format!(", daemon {d:.4}"))
            .unwrap_or_default()
    );
}

/// An idle window, then the generator's run, CPU read around each.
fn measure(
    client: &Netns,
    o: &Options,
    mode: &'static str,
    daemon: Option<u32>,
) -> anyhow::Result<Figures> {
    let hz = user_hz();
    let (b0, _, _) = cpu_ticks()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (b1, s1, _) = cpu_ticks()?;
    let idle_cores = (b1 - b0) as f64 / hz / t0.elapsed().as_secs_f64();
    let d1 = daemon.map(process_ticks);
    // h2load's rate mode: `-r` connections every `--rate-period`, `-c` of
    // them in all, one request each (`-n` = `-c`).
    let per_tenth = (o.rate / 10).max(1);
    let total = per_tenth * 10 * o.secs;
    let t1 = Instant::now();
    let out = Command::new("timeout")
        .arg((o.secs + 60).to_string())
        .args(["ip", "netns", "exec", &client.name, "h2load", "--h1"])
        .args(["-H", "Connection: close", "-t", "1"])
        .args(["-r", &per_tenth.to_string(), "--rate-period", "100ms"])
        .args(["-c", &total.to_string(), "-n", &total.to_string()])
        .arg(format!("http://{VIP}/"))
        .output()
        .context("run h2load")?;
    let secs = t1.elapsed().as_secs_f64();
    let (b2, s2, _) = cpu_ticks()?;
    let d2 = daemon.map(process_ticks);
    let text = String::from_utf8_lossy(&out.stdout);
    let succeeded = h2load_succeeded(&text).with_context(|| {
        format!(
            "h2load said: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(Figures {
        mode,
        succeeded,
        // Failed, errored, timed out or never done.
        failed: u64::from(total).saturating_sub(succeeded),
        secs,
        idle_cores,
        busy_cores: (b2 - b1) as f64 / hz / secs,
        softirq_cores: (s2 - s1) as f64 / hz / secs,
        daemon_cores: match (d1, d2) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / hz / secs),
            _ => None,
        },
    })
}

/// Requests that succeeded, from h2load's "requests: N total, ... N
/// succeeded, ..." line.
fn h2load_succeeded(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("requests:"))?;
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let i = words.iter().position(|w| *w == "succeeded")?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}

/// Whether `bin` is installed (PATH, and /usr/sbin, which a non-login
/// root shell may lack).
fn on_path(bin: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .any(|d| d.join(bin).exists())
}

/// nginx in a backend namespace, answering every request with a few bytes.
fn nginx(ns: &Netns, work: &Path, addr: &str) -> anyhow::Result<ProcessGuard> {
    let dir = work.join(&ns.name);
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             \n  server {{\n    listen {addr}:80 backlog=8192;\n\
             \n    location / {{ return 200 \"{}\\n\"; }}\n  }}\n}}\n",
            ns.name
        ),
    )?;
    let args = [
        "nginx".to_string(),
        "-e".into(),
        format!("{d}/error.log"),
        "-c".into(),
        conf.display().to_string(),
    ];
    let g = ProcessGuard::spawn("nginx", &ns.name, &args);
    // Listening once a connection to it is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = Command::new("ip")
            .args(["netns", "exec", &ns.name, "ss", "-Hltn", "sport = :80"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        if up {
            return Ok(g);
        }
        if Instant::now() > deadline {
            bail!(
                "nginx in {} did not listen within 10 s: {:?}",
                ns.name,
                g.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The balancer's config: one NAT service, round robin, no health checks
/// (the nftables rule set has none either).
fn xdplb_config() -> String {
    let backends: Vec<String> = BACKEND_LINKS
        .iter()
        .map(|l| format!("{{ address = \"{}\", port = 80 }}", l.addr))
        .collect();
    format!(
        "[dataplane]\nflow_table_size = 1048576\n\n[[service]]\nname = \"www\"\n\
         vip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\n\
         forwarding = \"nat\"\nbackend = [{}]\n",
        backends.join(", ")
    )
}

/// The same job in nftables: DNAT to the two backends in turn; conntrack
/// translates the replies.
fn nft_rules() -> String {
    format!(
        "table ip xdplb_rate {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat;\n\
         \n    ip daddr {VIP} tcp dport 80 dnat to numgen inc mod 2 map {{ 0 : {}, 1 : {} }}\n  }}\n}}\n",
        BACKEND_LINKS[0].addr, BACKEND_LINKS[1].addr
    )
}

/// Removes a directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
