//! `xdplb run`: start-up and shutdown order (this file), the event loop
//! (`event_loop.rs`), reload (`reload.rs`) and what the daemon changes on the
//! host besides its BPF objects (`host.rs`).
//!
//! Start-up checks everything before it touches the host: config and
//! interfaces, then the listeners, then loading (or adopting) the pinned
//! data path, programming it, neighbours and probes, and only then attaching.
//! Shutdown undoes it in reverse, or leaves forwarding in place when asked.

mod access;
mod changes;
mod cluster;
mod drain;
mod event_loop;
mod host;
mod instance;
mod options;
mod pair;
mod readiness;
mod ready;
mod reload;
mod throttle;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use event_loop::PASSIVE_TICK;
use event_loop::{Daemon, Exit, Inputs, Rates};
use host::Host;
pub use options::{Options, Overrides};
use options::{log_services, read_config, warn_if_forwarding_off};

use crate::{
    api,
    config::Config,
    control::Control,
    dataplane::bpf::{self, BpfDataplane, Counters, FlowCensus},
    health::probe::Probes,
};

/// A file (the status socket) removed when the daemon's start-up fails or
/// the daemon ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    instance::private_umask();
    // Everything is checked before anything on the host is touched.
    let config = read_config(&o.config, &o.overrides)?;
    let nofile = instance::raise_descriptor_limit();
    // Probes hold a socket each; the daemon's own needs are a few hundred.
    let wanted = u64::from(config.control.max_concurrent_checks) + 256;
    if nofile < wanted {
        warn!(
            limit = nofile,
            wanted,
            "the open-descriptor limit is low for control.max_concurrent_checks: probes beyond it are reported as not run (raise LimitNOFILE)"
        );
    } else {
        info!(limit = nofile, "open-descriptor limit");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(o, config))
}

async fn serve(o: &Options, config: Config) -> anyhow::Result<()> {
    let pin_root = (!config.dataplane.pin_path.as_os_str().is_empty())
        .then(|| config.dataplane.pin_path.clone());
    // One daemon per data path and PID file, before anything else.
    let mut instance = instance::claim(pin_root.as_deref(), &o.pid_file)?;
    let access = access::Policy {
        group: match &config.control.status_socket_group {
            Some(name) => Some(access::group_id(name)?),
            None => None,
        },
    };
    let metrics = match config.control.metrics_address {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("control.metrics_address: cannot listen on {a}"))?,
        ),
        None => None,
    };
    let sock_path = config.control.status_socket.clone();
    instance::free_socket_path(&sock_path)?;
    let status = tokio::net::UnixListener::bind(&sock_path).with_context(|| {
        format!(
            "control.status_socket: cannot listen on {}",
            sock_path.display()
        )
    })?;
    // Removed however start-up or the daemon ends.
    let _socket_file = RemoveOnDrop(sock_path.clone());
    access::protect_socket(&sock_path, access)?;

    let loaded = bpf::load(bpf::TableSizes::of(&config.dataplane), pin_root.as_deref())
        .context("loading the XDP program")?;
    let mut ebpf = loaded.ebpf;
    let pin_dir = loaded.pin_dir;
    let mut dp = BpfDataplane::new(&mut ebpf)?;
    let counters = Counters::new(&mut ebpf)?;
    let census = FlowCensus::start(&mut ebpf, Duration::from_secs(1))?;
    // Cached next hops follow the kernel's routes and neighbours.
    let _hops = crate::net::HopInvalidator::start(
        bpf::hop_generation(&ebpf)?,
        Duration::from_millis(config.dataplane.next_hop_refresh_ms),
    )
    .context("watching routes and neighbours")?;
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let mut control = Control::new(config.clone());
    let deny = crate::firewall::load(&config.firewall.deny_file)
        .context("firewall.deny_file: the run-time deny list")?;
    if !deny.is_empty() {
        info!(entries = deny.len(), file = %config.firewall.deny_file.display(), "run-time deny list loaded");
    }
    control.preset_runtime_deny(deny);
    if loaded.adopted {
        let found = dp.read_plan().context("reading the pinned maps")?;
        info!(
            pin_dir = %pin_dir.as_deref().unwrap_or(Path::new("")).display(),
            services = found.services.len(),
            backends = found.backends.len(),
            "adopting the pinned data path: flows, ids and counters carry over"
        );
        control.adopt(found);
    }
    let mut daemon = Daemon {
        control,
        dp,
        counters,
        census,
        host: Host::open().context("opening netlink")?,
        probes: Probes::new(config.control.max_concurrent_checks as usize),
        not_run: Default::default(),
        status_refused: Default::default(),
        accept_failed: Default::default(),
        iface_macs: bpf::IfaceMacs::new(&ebpf)?,
        half_open: bpf::HalfOpen::new(&ebpf)?,
        interfaces: config.dataplane.interfaces.clone(),
        readiness: Default::default(),
        reports: reports_tx,
        passive: HashMap::new(),
        started: Instant::now(),
        rates: Rates::default(),
        ha: None,
        ha_services: Vec::new(),
        attached: false,
        cluster: None,
        sync: None,
        joined: false,
        fingerprints: Default::default(),
        drain: None,
    };
    let ifaces = config.dataplane.interfaces.clone();
    warn_if_forwarding_off(&ifaces);
    daemon.apply(config.clone()).await?;
    let attachments = match bpf::attach(
        &mut ebpf,
        lb_common::names::PROGRAM,
        &ifaces,
        config.dataplane.xdp_mode,
        pin_dir.as_deref(),
    ) {
        Ok(a) => a,
        Err(e) => {
            daemon.probes.stop();
            daemon.host.release_all().await;
            if let Some(d) = &pin_dir
                && !loaded.adopted
            {
                bpf::unpin(d);
            }
            return Err(e.into());
        }
    };
    daemon.iface_macs.sync(&ifaces);
    log_services(daemon.control.config());
    // Attached and programmed: only now may this node take the addresses.
    match pair::start(daemon.control.config(), &mut ebpf, &daemon) {
        Ok((node, sync)) => {
            daemon.ha_services = pair::services_ok(&daemon);
            daemon.ha = node;
            daemon.joined = sync.is_none();
            daemon.sync = sync;
        }
        Err(e) => {
            daemon.probes.stop();
            bpf::detach(&mut ebpf, lb_common::names::PROGRAM, attachments, false);
            daemon.host.release_all().await;
            if let Some(d) = &pin_dir
                && !loaded.adopted
            {
                bpf::unpin(d);
            }
            return Err(e.context("starting the HA node"));
        }
    }
    // Attached and programmed: only now may routers send this node traffic.
    daemon.start_cluster();
    if let Err(e) = instance.write_pid() {
        warn!(path = %instance.pid_path().display(), error = %e, "cannot write PID file; `xdplb reload` will not find this daemon");
    }
    let (views_tx, views) = mpsc::channel(16);
    let endpoint = metrics.map(|l| tokio::spawn(api::server::serve(l, views_tx)));
    info!(interfaces = ?ifaces, pinned = pin_dir.is_some(), "xdplb ready");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut usec = 0;
    let watchdog =
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec));
    if let Some(w) = watchdog {
        info!(
            interval_ms = w.as_millis() as u64,
            "systemd watchdog: pinging every half interval"
        );
    }
    let inputs = Inputs {
        reports,
        views,
        status,
        access,
        watchdog,
    };
    let exit = daemon.run(inputs, o).await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    if let Some(e) = endpoint {
        e.abort();
    }
    daemon.probes.stop();
    if let Some(s) = daemon.snapshot() {
        info!(counters = %s, "final counters");
    }
    let _ = std::fs::remove_file(&o.pid_file);
    let keep_running = match exit {
        Ok(Exit::Stop { keep_running }) => keep_running,
        Err(e) => {
            error!(error = %e, "signal handling failed");
            false
        }
    };
    let keep_running = keep_running && pin_dir.is_some();
    // Routers stop sending before the data path stops forwarding.
    daemon.stop_cluster(keep_running).await;
    if let Some(node) = daemon.sync.take() {
        node.stop(!keep_running);
    }
    if let Some(node) = daemon.ha.take() {
        // A clean stop hands MASTER over at once; keep-running leaves the
        // addresses and the lease for the next daemon.
        node.stop(!keep_running);
    }
    bpf::detach(
        &mut ebpf,
        lb_common::names::PROGRAM,
        attachments,
        keep_running,
    );
    if keep_running {
        info!(
            "exiting; forwarding, flows, neighbour entries and probe routes stay for the next daemon"
        );
        return Ok(());
    }
    daemon.host.release_all().await;
    if let Some(d) = &pin_dir {
        bpf::unpin(d);
        info!(pin_dir = %d.display(), "unpinned");
    }
    Ok(())
}
