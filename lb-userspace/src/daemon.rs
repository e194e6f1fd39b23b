//! `xdplb run`: the daemon's event loop around [`Control`].
//!
//! One current-thread tokio runtime: signals, probe reports, a passive-health
//! tick, a rate tick, the metrics listener and the status socket. Every
//! error after start-up is logged and survived; only start-up errors (bad
//! config, cannot load or attach) end the process.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tracing::{error, info, warn};
use xdplb::{
    check::{self, Probes, Report},
    check_route::ProbeRoute,
    config::{Config, ForwardingKind, XdpMode},
    control::{Control, Hold},
    dataplane::bpf::{self, BpfDataplane, CounterSnapshot, Counters, FlowCensus},
    health::Transition,
    neigh::{self, Netlink, Route},
    passive,
    plan::BackendRef,
    view,
};

/// How often passive-health counters are sampled: a failing backend stops
/// taking new connections within this (plus the threshold's own time).
const PASSIVE_TICK: Duration = Duration::from_millis(50);

/// Command-line settings that replace the config file's.
pub struct Overrides {
    pub ifaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub pin_path: Option<PathBuf>,
    pub status_socket: Option<PathBuf>,
}

pub struct Options {
    pub config: PathBuf,
    pub overrides: Overrides,
    pub stats_interval: u64,
    pub pid_file: PathBuf,
    pub keep_running: bool,
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
    if let Some(p) = &o.pin_path {
        config.dataplane.pin_path = p.clone();
    }
    if let Some(p) = &o.status_socket {
        config.control.status_socket = p.clone();
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

/// The kernel's FIB refuses to forward packets that arrive on an interface
/// with IPv4 forwarding off, and the data path then drops them
/// (`drop_no_route`). Say so at start-up rather than leave it to counters.
fn warn_if_forwarding_off(ifaces: &[String]) {
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            warn!(
                iface = %iface,
                "IPv4 forwarding is off on this interface: the kernel's FIB will not give next hops for packets arriving on it, so they are dropped (drop_no_route); set net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
            );
        }
    }
}

/// New-flow rates from two counter readings a second apart.
#[derive(Default)]
struct Rates {
    last: Option<(Instant, CounterSnapshot)>,
    services: BTreeMap<u32, f64>,
    backends: BTreeMap<u32, f64>,
}

impl Rates {
    fn update(&mut self, now: Instant, snap: CounterSnapshot) {
        if let Some((then, prev)) = &self.last {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
            let rate = |cur: &BTreeMap<u32, lb_common::Traffic>,
                        old: &BTreeMap<u32, lb_common::Traffic>| {
                cur.iter()
                    .map(|(id, t)| {
                        let before = old.get(id).map_or(t.connections, |o| o.connections);
                        (*id, t.connections.saturating_sub(before) as f64 / dt)
                    })
                    .collect()
            };
            self.services = rate(&snap.services, &prev.services);
            self.backends = rate(&snap.backends, &prev.backends);
        }
        self.last = Some((now, snap));
    }
}

struct Daemon {
    control: Control,
    dp: BpfDataplane,
    counters: Counters,
    census: FlowCensus,
    /// Managed neighbour entries this process keeps, by backend address.
    managed: Vec<(Ipv4Addr, Route)>,
    /// Policy routes for DSR probes, by backend id's mark.
    probe_routes: Vec<ProbeRoute>,
    probes: Probes,
    reports: mpsc::UnboundedSender<Report>,
    passive: HashMap<BackendRef, passive::Window>,
    started: Instant,
    rates: Rates,
}

impl Daemon {
    /// Make maps, neighbours, probe routes and probes match `config`. On
    /// error the maps keep serving the previously applied configuration.
    fn apply(&mut self, config: Config) -> anyhow::Result<()> {
        let st = self.control.apply(&mut self.dp, config)?;
        info!(
            services_written = st.services_written,
            services_removed = st.services_removed,
            backends_written = st.backends_written,
            backends_retired = st.backends_retired,
            ring_slots_written = st.ring_slots_written,
            "maps programmed"
        );
        self.sync_neighbours();
        self.restart_probes();
        self.passive.clear();
        Ok(())
    }

    fn sync_neighbours(&mut self) {
        let config = self.control.config();
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
    }

    /// (Re)start one probe task per checked backend. DSR probes go to the
    /// VIP through a per-backend policy route.
    fn restart_probes(&mut self) {
        let targets = self.control.check_targets();
        let mut routes = Vec::new();
        let mut probe_targets = Vec::new();
        let mut nl = match Netlink::open() {
            Ok(nl) => Some(nl),
            Err(e) => {
                warn!(error = %e, "netlink unavailable; DSR probes cannot be routed");
                None
            }
        };
        for t in targets {
            let (addr, port) = (t.backend.addr, t.backend.port);
            let check_port = t.check.port.unwrap_or(port);
            let (connect, mark) = match (t.forwarding, nl.as_mut()) {
                (ForwardingKind::Nat, _) => (SocketAddrV4::new(addr, check_port), None),
                (ForwardingKind::Dsr, Some(nl)) => {
                    let route = nl
                        .route_to(addr)
                        .map(|r| ProbeRoute::new(t.backend_id, t.vip, addr, r.ifindex));
                    match route.and_then(|r| nl.add_probe_route(&r).map(|()| r)) {
                        Ok(r) => {
                            routes.push(r);
                            (SocketAddrV4::new(t.vip, check_port), Some(r.mark))
                        }
                        Err(e) => {
                            warn!(service = %t.service, backend = %addr, error = %e, "cannot route the DSR probe to the VIP on this backend; probing its own address instead");
                            (SocketAddrV4::new(addr, check_port), None)
                        }
                    }
                }
                (ForwardingKind::Dsr, None) => (SocketAddrV4::new(addr, check_port), None),
            };
            probe_targets.push(check::Target {
                backend: t.backend,
                connect: SocketAddr::V4(connect),
                mark,
                spec: t.check,
            });
        }
        // Routes of backends no longer probed.
        if let Some(nl) = nl.as_mut() {
            for old in &self.probe_routes {
                if !routes.iter().any(|r| r.mark == old.mark)
                    && let Err(e) = nl.remove_probe_route(old)
                {
                    warn!(error = %e, "removing a probe route failed");
                }
            }
        }
        self.probe_routes = routes;
        info!(probes = probe_targets.len(), "health checks running");
        self.probes.restart(probe_targets, &self.reports);
    }

    fn remove_probe_routes(&mut self) {
        if self.probe_routes.is_empty() {
            return;
        }
        match Netlink::open() {
            Ok(mut nl) => {
                for r in self.probe_routes.drain(..) {
                    if let Err(e) = nl.remove_probe_route(&r) {
                        warn!(error = %e, "removing a probe route failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "netlink unavailable; probe routes left in place"),
        }
    }

    fn service_name(&self, b: &BackendRef) -> String {
        self.control
            .config()
            .services
            .iter()
            .find(|s| s.key() == b.service)
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    fn on_report(&mut self, r: Report) {
        if r.generation != self.probes.generation {
            return; // from probes of a previous configuration
        }
        let detail = r.result.clone().err();
        match self.control.record(&r.backend, r.result, r.latency) {
            Transition::Unchanged => {}
            Transition::WentDown => {
                warn!(service = %self.service_name(&r.backend), backend = %r.backend, reason = %detail.unwrap_or_default(), "backend DOWN: out of the scheduler, its flows re-schedule")
            }
            Transition::WentUp => {
                info!(service = %self.service_name(&r.backend), backend = %r.backend, "backend UP: takes new flows again")
            }
        }
        self.sync();
    }

    fn sync(&mut self) {
        match self.control.sync(&mut self.dp) {
            Ok(Some(st)) => info!(
                backends_written = st.backends_written,
                ring_slots_written = st.ring_slots_written,
                services_written = st.services_written,
                "maps follow backend health"
            ),
            Ok(None) => {}
            Err(e) => error!(error = %e, "writing health to the maps failed; retrying"),
        }
    }

    fn snapshot(&self) -> Option<CounterSnapshot> {
        let applied = self.control.applied();
        let service_ids: Vec<u32> = applied.services.iter().map(|s| s.info.id).collect();
        let backend_ids: Vec<u32> = applied.backends.keys().copied().collect();
        match self.counters.snapshot(&service_ids, &backend_ids) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "reading counters failed");
                None
            }
        }
    }

    /// Compare each passively watched backend's counters with its window.
    fn passive_tick(&mut self) {
        let watched: Vec<_> = self
            .control
            .config()
            .services
            .iter()
            .filter_map(|s| Some((s.key(), s.passive.clone()?)))
            .collect();
        if watched.is_empty() {
            return;
        }
        let ids: Vec<(BackendRef, u32)> = self
            .control
            .applied()
            .backend_ids()
            .into_iter()
            .filter(|(r, _)| watched.iter().any(|(k, _)| *k == r.service))
            .map(|(r, id)| (*r, *id))
            .collect();
        let backend_ids: Vec<u32> = ids.iter().map(|(_, id)| *id).collect();
        let Ok(traffic) = self.counters.backend_traffic(&backend_ids) else {
            return;
        };
        let now = self.started.elapsed();
        let mut tripped = Vec::new();
        for (r, id) in ids {
            let Some((_, cfg)) = watched.iter().find(|(k, _)| *k == r.service) else {
                continue;
            };
            let t = traffic.get(&id).copied().unwrap_or_default();
            let w = self
                .passive
                .entry(r)
                .or_insert_with(|| passive::Window::new(now, t.syn_retransmits, t.refused));
            if let Some(why) = w.observe(now, t.syn_retransmits, t.refused, cfg) {
                tripped.push((r, why, cfg.max_out_percent));
            }
        }
        for (r, why, max_out) in tripped {
            match self.control.hold(&r, max_out) {
                Hold::Held => {
                    warn!(service = %self.service_name(&r), backend = %r, reason = %why, "backend HELD (passive): no new connections until it passes rise checks; established flows stay")
                }
                Hold::NotUp => {}
                Hold::TooManyOut { out, of } => {
                    warn!(service = %self.service_name(&r), backend = %r, reason = %why, out, of, max_out_percent = max_out, "passive health would take this backend out, but that would leave too few taking new connections; keeping it")
                }
            }
        }
        self.sync();
    }

    fn view(&self) -> view::View {
        let snap = self.snapshot().unwrap_or_default();
        let flows = self.census.counts();
        view::build(
            &self.control,
            &view::Readings {
                services: &snap.services,
                backends: &snap.backends,
                reasons: &snap.reasons,
                service_rates: &self.rates.services,
                backend_rates: &self.rates.backends,
                flows: &flows,
            },
        )
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
        // These are fixed at load/attach/bind time.
        let old = self.control.config();
        if new.dataplane.interfaces != old.dataplane.interfaces
            || new.dataplane.xdp_mode != old.dataplane.xdp_mode
            || new.dataplane.flow_table_size != old.dataplane.flow_table_size
            || new.dataplane.pin_path != old.dataplane.pin_path
            || new.control != old.control
        {
            warn!(
                "dataplane.interfaces, xdp_mode, flow_table_size, pin_path and [control] take effect on restart; keeping the running values"
            );
            new.dataplane.interfaces = old.dataplane.interfaces.clone();
            new.dataplane.xdp_mode = old.dataplane.xdp_mode;
            new.dataplane.flow_table_size = old.dataplane.flow_table_size;
            new.dataplane.pin_path = old.dataplane.pin_path.clone();
            new.control = old.control.clone();
        }
        match self.apply(new) {
            Ok(()) => {
                log_services(self.control.config());
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
            check = ?c.check.as_ref().map(|k| k.kind),
            "serving"
        );
    }
}

/// Answer one HTTP request on the metrics listener with `body` if it asks
/// for /metrics. Runs as its own task with a deadline, so a slow scraper
/// never holds up the daemon.
async fn serve_metrics(mut stream: tokio::net::TcpStream, body: String) {
    let _ = tokio::time::timeout(Duration::from_secs(5), async move {
        let mut buf = vec![0u8; 2048];
        let mut n = 0;
        while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let line = String::from_utf8_lossy(&buf[..n]);
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let resp = if line.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 24\r\nConnection: close\r\n\r\nxdplb serves /metrics.\r\n".to_string()
        };
        let _ = stream.write_all(resp.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    // Everything is checked before anything on the host is touched.
    let config = read_config(&o.config, &o.overrides)?;
    let pin_root = (!config.dataplane.pin_path.as_os_str().is_empty())
        .then(|| config.dataplane.pin_path.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = match config.control.metrics_address {
        Some(a) => Some(
            rt.block_on(tokio::net::TcpListener::bind(a))
                .with_context(|| format!("control.metrics_address: cannot listen on {a}"))?,
        ),
        None => None,
    };
    let sock_path = config.control.status_socket.clone();
    let _ = std::fs::remove_file(&sock_path);
    let status = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(&sock_path).with_context(|| {
            format!(
                "control.status_socket: cannot listen on {}",
                sock_path.display()
            )
        })?
    };

    let loaded = bpf::load(config.dataplane.flow_table_size, pin_root.as_deref())
        .context("loading the XDP program")?;
    let mut ebpf = loaded.ebpf;
    let pin_dir = loaded.pin_dir;
    let dp = BpfDataplane::new(&mut ebpf)?;
    let counters = Counters::new(&mut ebpf)?;
    let census = FlowCensus::start(&mut ebpf, Duration::from_secs(1))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut control = Control::new(config.clone());
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
        managed: Vec::new(),
        probe_routes: Vec::new(),
        probes: Probes::default(),
        reports: tx,
        passive: HashMap::new(),
        started: Instant::now(),
        rates: Rates::default(),
    };
    let ifaces = config.dataplane.interfaces.clone();
    warn_if_forwarding_off(&ifaces);
    {
        let _guard = rt.enter(); // probe tasks are spawned on this runtime
        daemon.apply(config.clone())?;
    }
    let attachments = match bpf::attach(
        &mut ebpf,
        lb_common::names::PROGRAM,
        &ifaces,
        config.dataplane.xdp_mode,
        pin_dir.as_deref(),
    ) {
        Ok(a) => a,
        Err(e) => {
            release_neighbours(&daemon.managed.iter().map(|(_, r)| *r).collect::<Vec<_>>());
            daemon.remove_probe_routes();
            if let Some(d) = &pin_dir
                && !loaded.adopted
            {
                bpf::unpin(d);
            }
            return Err(e.into());
        }
    };
    log_services(daemon.control.config());
    if let Err(e) = std::fs::write(&o.pid_file, format!("{}\n", std::process::id())) {
        warn!(path = %o.pid_file.display(), error = %e, "cannot write PID file; `xdplb reload` will not find this daemon");
    }
    info!(interfaces = ?ifaces, pinned = pin_dir.is_some(), "xdplb ready");

    let stats_interval = o.stats_interval;
    let keep_running = rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let period = Duration::from_secs(stats_interval.max(1));
        let mut stats_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut rate_tick = tokio::time::interval(Duration::from_secs(1));
        // Passive health reacts within one tick of a threshold being reached.
        let mut passive_tick = tokio::time::interval(PASSIVE_TICK);
        for t in [&mut stats_tick, &mut rate_tick, &mut passive_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break Ok(o.keep_running); }
                _ = int.recv() => { info!("SIGINT: shutting down"); break Ok(o.keep_running); }
                _ = usr1.recv() => { info!("SIGUSR1: exiting, data path keeps forwarding"); break Ok(true); }
                _ = hup.recv() => { info!("SIGHUP: reloading {}", o.config.display()); daemon.reload(&o.config, &o.overrides); }
                Some(r) = rx.recv() => daemon.on_report(r),
                _ = passive_tick.tick() => daemon.passive_tick(),
                _ = rate_tick.tick() => {
                    if let Some(s) = daemon.snapshot() { daemon.rates.update(Instant::now(), s); }
                    daemon.sync(); // retries a failed health write
                }
                _ = stats_tick.tick(), if stats_interval > 0 => {
                    if let Some(s) = daemon.snapshot() { info!(counters = %s, "counters"); }
                }
                c = async { metrics.as_ref().unwrap().accept().await }, if metrics.is_some() => match c {
                    Ok((stream, _)) => { tokio::spawn(serve_metrics(stream, view::prometheus(&daemon.view()))); }
                    Err(e) => warn!(error = %e, "metrics accept failed"),
                },
                c = status.accept() => match c {
                    Ok((mut stream, _)) => {
                        let table = view::table(&daemon.view());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(table.as_bytes())).await;
                        });
                    }
                    Err(e) => warn!(error = %e, "status accept failed"),
                },
            }
        }
    });
    daemon.probes.stop();
    if let Some(s) = daemon.snapshot() {
        info!(counters = %s, "final counters");
    }
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(&o.pid_file);
    let keep_running = match keep_running {
        Ok(k) => k,
        Err::<_, std::io::Error>(e) => {
            error!(error = %e, "signal handling failed");
            false
        }
    };
    let keep_running = keep_running && pin_dir.is_some();
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
    release_neighbours(&daemon.managed.iter().map(|(_, r)| *r).collect::<Vec<_>>());
    daemon.remove_probe_routes();
    if let Some(d) = &pin_dir {
        bpf::unpin(d);
        info!(pin_dir = %d.display(), "unpinned");
    }
    Ok(())
}
