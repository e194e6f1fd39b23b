//! `xdplb`: the load balancer daemon and its command-line tools.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use xdplb::{
    bpf::{self, BpfDataplane, Counters},
    config::{Config, XdpMode},
    dataplane::Programmer,
    neigh::{self, Route},
    plan::Planner,
};

const DEFAULT_PID_FILE: &str = "/run/xdplb.pid";

#[derive(Parser)]
#[command(name = "xdplb", version, about = "XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the data path, program it from the config, attach, and serve
    /// until SIGINT/SIGTERM (then detach). SIGHUP re-reads the config.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces dataplane.interfaces.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Override dataplane.xdp_mode.
        #[arg(long, value_parser = ["auto", "native", "generic"])]
        xdp_mode: Option<String>,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 30)]
        stats_interval: u64,
        /// Where to write the daemon's PID (for `xdplb reload`).
        #[arg(long, default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
    },
    /// Validate a config file; exits non-zero with file, key and reason.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the running daemon to re-read its config (sends it SIGHUP).
    Reload {
        #[arg(long, default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Reload { pid_file } => reload(&pid_file),
        Cmd::Run {
            config,
            ifaces,
            xdp_mode,
            stats_interval,
            pid_file,
        } => {
            let overrides = Overrides {
                ifaces,
                xdp_mode: xdp_mode.map(|m| match m.as_str() {
                    "native" => XdpMode::Native,
                    "generic" => XdpMode::Generic,
                    _ => XdpMode::Auto,
                }),
            };
            run(&config, &overrides, stats_interval, &pid_file)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        config.services.len(),
        backends
    );
    Ok(())
}

fn reload(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("{}: cannot read (is xdplb running?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a PID: {text:?}", pid_file.display()))?;
    // SAFETY: sends SIGHUP to the PID the daemon wrote; no memory involved.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        bail!(
            "signalling xdplb (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    println!("sent SIGHUP to xdplb (pid {pid}); its log reports the result");
    Ok(())
}

/// Command-line settings that replace the config file's.
struct Overrides {
    ifaces: Vec<String>,
    xdp_mode: Option<XdpMode>,
}

/// Read and validate the config (`Config::load` does), apply the overrides
/// and check that every interface exists here (which also rejects a bad
/// `--iface` name).
fn read_config(path: &Path, o: &Overrides) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if !o.ifaces.is_empty() {
        config.dataplane.interfaces = o.ifaces.clone();
    }
    if let Some(m) = o.xdp_mode {
        config.dataplane.xdp_mode = m;
    }
    if config.dataplane.interfaces.is_empty() {
        bail!(
            "{}: dataplane.interfaces: no interface to attach to (set it or pass --iface)",
            path.display()
        );
    }
    for iface in &config.dataplane.interfaces {
        let c = std::ffi::CString::new(iface.as_str()).context("interface name")?;
        // SAFETY: valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            bail!(
                "{}: dataplane.interfaces: no interface named {iface:?} in this network namespace",
                path.display()
            );
        }
    }
    Ok(config)
}

/// What the daemon keeps between reloads.
struct Daemon {
    config: Config,
    planner: Planner,
    programmer: Programmer,
    dp: BpfDataplane,
    /// Managed neighbour entries this process made, by backend.
    managed: Vec<(Ipv4Addr, Route)>,
}

impl Daemon {
    /// Make maps and neighbour entries match `config`. On error the maps
    /// keep serving the previously applied plan.
    fn apply(&mut self, config: Config) -> anyhow::Result<()> {
        let plan = self.planner.plan(&config)?;
        let st = self
            .programmer
            .apply(&mut self.dp, plan)
            .context("programming the maps")?;
        info!(
            services_written = st.services_written,
            services_removed = st.services_removed,
            backends_written = st.backends_written,
            backends_retired = st.backends_retired,
            ring_slots_written = st.ring_slots_written,
            "maps programmed"
        );
        let mut wanted: Vec<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        wanted.sort();
        wanted.dedup();
        if !config.dataplane.manage_neighbours {
            wanted.clear();
        }
        let new: Vec<Ipv4Addr> = wanted
            .iter()
            .copied()
            .filter(|a| !self.managed.iter().any(|(m, _)| m == a))
            .collect();
        for (addr, r) in neigh::manage_backends(&new) {
            match r {
                Ok(route) => {
                    info!(backend = %addr, next_hop = %route.next_hop, ifindex = route.ifindex, "managed neighbour entry in place");
                    self.managed.push((addr, route));
                }
                Err(e) => {
                    warn!(backend = %addr, error = %e, "cannot keep the backend's neighbour resolved; the kernel will forward its first packets")
                }
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = self
            .managed
            .drain(..)
            .partition(|(a, _)| wanted.contains(a));
        self.managed = keep;
        let still_used: Vec<Route> = self.managed.iter().map(|(_, r)| *r).collect();
        let release: Vec<Route> = gone
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| !still_used.contains(r))
            .collect();
        release_neighbours(&release);
        self.config = config;
        Ok(())
    }

    /// SIGHUP: re-read the config and apply the difference. A bad config is
    /// logged and ignored; the running one keeps serving.
    fn reload(&mut self, path: &Path, overrides: &Overrides) {
        let mut new = match read_config(path, overrides) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %format!("{e:#}"), "reload rejected; still serving the previous configuration");
                return;
            }
        };
        // These are fixed at load/attach time.
        let old = &self.config.dataplane;
        if new.dataplane.interfaces != old.interfaces
            || new.dataplane.xdp_mode != old.xdp_mode
            || new.dataplane.flow_table_size != old.flow_table_size
        {
            warn!(
                "dataplane.interfaces, xdp_mode and flow_table_size take effect on restart; keeping the running values"
            );
            new.dataplane.interfaces = old.interfaces.clone();
            new.dataplane.xdp_mode = old.xdp_mode;
            new.dataplane.flow_table_size = old.flow_table_size;
        }
        match self.apply(new) {
            Ok(()) => {
                log_services(&self.config);
                info!("reload applied");
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "reload failed; the maps still hold the previous configuration")
            }
        }
    }
}

fn release_neighbours(routes: &[Route]) {
    for (route, r) in neigh::release(routes) {
        if let Err(e) = r {
            warn!(next_hop = %route.next_hop, error = %e, "removing managed neighbour entry failed");
        }
    }
}

fn log_services(config: &Config) {
    for c in &config.services {
        info!(
            service = %c.name,
            vip = %format!("{}:{}", c.vip, c.port),
            protocol = ?c.protocol,
            scheduler = ?c.scheduler,
            forwarding = ?c.forwarding,
            backends = c.backends.len(),
            "serving"
        );
    }
}

fn run(
    path: &Path,
    overrides: &Overrides,
    stats_interval: u64,
    pid_file: &Path,
) -> anyhow::Result<()> {
    // Everything is checked before anything on the host is touched.
    let config = read_config(path, overrides)?;
    let mut ebpf =
        bpf::load(config.dataplane.flow_table_size).context("loading the XDP program")?;
    let dp = BpfDataplane::new(&mut ebpf)?;
    let counters = Counters::new(&mut ebpf)?;
    let (ifaces, mode) = (
        config.dataplane.interfaces.clone(),
        config.dataplane.xdp_mode,
    );
    let mut daemon = Daemon {
        config: config.clone(),
        planner: Planner::default(),
        programmer: Programmer::default(),
        dp,
        managed: Vec::new(),
    };
    daemon.apply(config)?;
    let attachments = match bpf::attach(&mut ebpf, lb_common::names::PROGRAM, &ifaces, mode) {
        Ok(a) => a,
        Err(e) => {
            release_neighbours(&daemon.managed.iter().map(|(_, r)| *r).collect::<Vec<_>>());
            return Err(e.into());
        }
    };
    log_services(&daemon.config);
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        warn!(path = %pid_file.display(), error = %e, "cannot write PID file; `xdplb reload` will not find this daemon");
    }
    info!(interfaces = ?ifaces, "xdplb ready");

    let log_counters = |daemon: &Daemon, label: &str| {
        let applied = daemon.programmer.applied();
        let service_ids: Vec<u32> = applied.services.iter().map(|s| s.info.id).collect();
        let backend_ids: Vec<u32> = applied.backends.keys().copied().collect();
        match counters.snapshot(&service_ids, &backend_ids) {
            Ok(s) => info!(counters = %s, "{label}"),
            Err(e) => warn!(error = %e, "reading counters failed"),
        }
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let waited = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let period = Duration::from_secs(stats_interval.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = hup.recv() => { info!("SIGHUP: reloading {}", path.display()); daemon.reload(path, overrides); }
                _ = tick.tick(), if stats_interval > 0 => log_counters(&daemon, "counters"),
            }
        }
        Ok::<(), std::io::Error>(())
    });
    log_counters(&daemon, "final counters");
    bpf::detach(&mut ebpf, lb_common::names::PROGRAM, attachments);
    release_neighbours(&daemon.managed.iter().map(|(_, r)| *r).collect::<Vec<_>>());
    let _ = std::fs::remove_file(pid_file);
    if let Err(e) = waited {
        error!(error = %e, "signal handling failed");
        return Err(e.into());
    }
    Ok(())
}
