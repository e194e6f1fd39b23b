//! `xdplb`: the load balancer daemon and its command-line tools.

use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use xdplb::{
    bpf::{self, BpfDataplane, Counters},
    config::{Config, XdpMode},
    dataplane::Programmer,
    neigh,
    plan::Planner,
};

#[derive(Parser)]
#[command(name = "xdplb", version, about = "XDP layer-4 load balancer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the data path, program it from the config, attach, and serve
    /// until SIGINT/SIGTERM (then detach).
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces dataplane.interfaces.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Override dataplane.xdp_mode: auto, native or generic.
        #[arg(long)]
        xdp_mode: Option<String>,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 30)]
        stats_interval: u64,
    },
    /// Validate a config file; exits non-zero with file, key and reason.
    Check {
        #[arg(long)]
        config: PathBuf,
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
        Cmd::Check { config } => check(config),
        Cmd::Run {
            config,
            ifaces,
            xdp_mode,
            stats_interval,
        } => run(config, ifaces, xdp_mode, stats_interval),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        config.services.len(),
        backends
    );
    Ok(())
}

fn run(
    path: PathBuf,
    ifaces: Vec<String>,
    xdp_mode: Option<String>,
    stats_interval: u64,
) -> anyhow::Result<()> {
    let mut config = Config::load(&path)?;
    if !ifaces.is_empty() {
        config.dataplane.interfaces = ifaces;
    }
    if let Some(m) = xdp_mode {
        config.dataplane.xdp_mode = match m.as_str() {
            "auto" => XdpMode::Auto,
            "native" => XdpMode::Native,
            "generic" => XdpMode::Generic,
            other => bail!("--xdp-mode: {other:?} is not one of auto, native, generic"),
        };
    }
    config
        .validate()
        .map_err(|(key, reason)| anyhow::anyhow!("{}: {key}: {reason}", path.display()))?;
    if config.dataplane.interfaces.is_empty() {
        bail!(
            "{}: dataplane.interfaces: no interface to attach to (set it or pass --iface)",
            path.display()
        );
    }

    // Unknown interfaces are a config error: report before touching anything.
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

    let mut ebpf =
        bpf::load(config.dataplane.flow_table_size).context("loading the XDP program")?;
    let mut dp = BpfDataplane::new(&mut ebpf)?;
    let counters = Counters::new(&mut ebpf)?;
    let mut planner = Planner::default();
    let mut programmer = Programmer::default();
    let plan = planner.plan(&config)?;
    let st = programmer
        .apply(&mut dp, plan)
        .context("programming the maps")?;
    info!(
        services = st.services_written,
        backends = st.backends_written,
        ring_slots = st.ring_slots_written,
        "maps programmed"
    );

    let mut managed = Vec::new();
    if config.dataplane.manage_neighbours {
        let mut addrs: Vec<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        addrs.sort();
        addrs.dedup();
        for (addr, r) in neigh::manage_backends(&addrs) {
            match r {
                Ok(route) => {
                    info!(backend = %addr, next_hop = %route.next_hop, ifindex = route.ifindex, "managed neighbour entry in place");
                    managed.push(route);
                }
                Err(e) => {
                    warn!(backend = %addr, error = %e, "cannot keep the backend's neighbour resolved; the kernel will forward its first packets")
                }
            }
        }
    }

    let attachments = bpf::attach(
        &mut ebpf,
        lb_common::names::PROGRAM,
        &config.dataplane.interfaces,
        config.dataplane.xdp_mode,
    )?;
    for s in &programmer.applied().services {
        let c = config
            .services
            .iter()
            .find(|c| c.name == s.name)
            .expect("planned from config");
        info!(
            service = %s.name,
            vip = %format!("{}:{}", c.vip, c.port),
            protocol = ?c.protocol,
            scheduler = ?c.scheduler,
            forwarding = ?c.forwarding,
            backends = c.backends.len(),
            "serving"
        );
    }
    info!(interfaces = ?config.dataplane.interfaces, "xdplb ready");

    let service_ids: Vec<u32> = programmer
        .applied()
        .services
        .iter()
        .map(|s| s.info.id)
        .collect();
    let backend_ids: Vec<u32> = programmer.applied().backends.keys().copied().collect();
    let log_counters = |label: &str| match counters.snapshot(&service_ids, &backend_ids) {
        Ok(s) => info!(counters = %s, "{label}"),
        Err(e) => warn!(error = %e, "reading counters failed"),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let waited = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let period = Duration::from_secs(stats_interval.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break; }
                _ = int.recv() => { info!("SIGINT: shutting down"); break; }
                _ = tick.tick(), if stats_interval > 0 => log_counters("counters"),
            }
        }
        Ok::<(), std::io::Error>(())
    });
    log_counters("final counters");
    bpf::detach(&mut ebpf, lb_common::names::PROGRAM, attachments);
    for (route, r) in neigh::release(&managed) {
        if let Err(e) = r {
            warn!(next_hop = %route.next_hop, error = %e, "removing managed neighbour entry failed");
        }
    }
    if let Err(e) = waited {
        error!(error = %e, "signal handling failed");
        return Err(e.into());
    }
    Ok(())
}
