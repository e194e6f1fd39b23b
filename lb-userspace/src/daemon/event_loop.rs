//! The daemon's state and its event loop: signals, probe reports, the
//! passive-health and rate ticks, view requests from the HTTP endpoint and
//! the status socket. Every error after start-up is logged and survived.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt},
    sync::mpsc,
};
use tracing::{error, info, warn};

use super::{host::Host, options::Options, throttle::Throttled};
use crate::{
    api::{self, server::ViewRequest},
    config::Config,
    control::{Control, Hold},
    dataplane::bpf::{BpfDataplane, CounterSnapshot, Counters, FlowCensus},
    health::{
        Transition, passive,
        probe::{Outcome, Probes, Report},
    },
    plan::BackendRef,
};

/// How often passive-health counters are sampled: a failing backend stops
/// taking new connections within this (plus the threshold's own time).
pub const PASSIVE_TICK: Duration = Duration::from_millis(50);

/// Connection rates from two counter readings a second apart.
#[derive(Default)]
pub struct Rates {
    last: Option<(Instant, CounterSnapshot)>,
    pub services: BTreeMap<u32, f64>,
    pub backends: BTreeMap<u32, f64>,
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

pub struct Daemon {
    pub control: Control,
    pub dp: BpfDataplane,
    pub counters: Counters,
    pub census: FlowCensus,
    pub host: Host,
    pub probes: Probes,
    pub reports: mpsc::UnboundedSender<Report>,
    pub passive: HashMap<BackendRef, passive::Window>,
    pub started: Instant,
    pub rates: Rates,
    /// The HA node, with `[ha]`.
    pub ha: Option<crate::ha::HaNode>,
    /// What the HA node was last told of its tracked services.
    pub ha_services: Vec<bool>,
    /// Probes not run for a reason of this host's (never a backend's
    /// failure).
    pub not_run: Throttled,
    /// Status-socket peers refused for their credentials.
    pub status_refused: Throttled,
    /// Status-socket accepts that failed (no descriptors, say).
    pub accept_failed: Throttled,
    /// The attached interfaces' MACs for the data path, and the interfaces.
    pub iface_macs: crate::dataplane::bpf::IfaceMacs,
    /// The half-open budget, refilled every second.
    pub half_open: crate::dataplane::bpf::HalfOpen,
    pub interfaces: Vec<String>,
    /// Whether this node could forward (for HA preemption).
    pub readiness: super::readiness::Readiness,
    /// The data path is attached (VIPs may be announced).
    pub attached: bool,
    /// The VIP announcer, with `[cluster]`, once attached.
    pub cluster: Option<crate::cluster::Announcer>,
    /// `[cluster.sync]`: the flow-sync node (the pair's, in the cluster
    /// membership), and whether it has joined (its peers' tables arrived).
    pub sync: Option<crate::ha::HaNode>,
    pub joined: bool,
    /// Ring fingerprints by service id, as of the last map change.
    pub fingerprints: crate::cluster::fingerprint::Fingerprints,
    /// `xdplb drain` under way.
    pub drain: Option<super::drain::Drain>,
}

/// What the event loop listens to besides signals and timers.
pub struct Inputs {
    pub reports: mpsc::UnboundedReceiver<Report>,
    pub views: mpsc::Receiver<ViewRequest>,
    pub status: tokio::net::UnixListener,
    /// Who may use the status socket.
    pub access: super::access::Policy,
    /// systemd's watchdog (`WatchdogSec=`): ping every half interval from
    /// the loop itself, so a loop that hangs is restarted.
    pub watchdog: Option<Duration>,
}

/// How the loop ended.
pub enum Exit {
    /// Detach and clean up (unless told to keep running).
    Stop { keep_running: bool },
}

impl Daemon {
    /// Make maps, neighbours, probe routes and probes match `config`. On
    /// error the maps keep serving the previously applied configuration.
    pub async fn apply(&mut self, config: Config) -> anyhow::Result<()> {
        let st = self.control.apply(&mut self.dp, config)?;
        self.tell_pair();
        self.tell_cluster();
        info!(
            services_written = st.services_written,
            services_removed = st.services_removed,
            backends_written = st.backends_written,
            backends_retired = st.backends_retired,
            ring_slots_written = st.ring_slots_written,
            "maps programmed"
        );
        self.host.sync_neighbours(self.control.config()).await;
        let targets = self.host.probe_targets(self.control.check_targets()).await;
        let total = targets.len();
        let u = self.probes.update(targets, &self.reports);
        info!(
            probes = total,
            kept = u.kept,
            started = u.started,
            stopped = u.stopped,
            "health checks running"
        );
        // Passive windows of backends still configured with passive health
        // go on; the others are dropped.
        let passive: HashSet<BackendRef> = self
            .control
            .config()
            .services
            .iter()
            .filter(|s| s.passive.is_some())
            .flat_map(|s| s.backends.iter().map(move |b| s.backend_ref(b)))
            .collect();
        self.passive.retain(|b, _| passive.contains(b));
        Ok(())
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
        if !self.probes.current(&r.backend, r.task) {
            return; // from a probe a reload replaced
        }
        let result = match r.outcome {
            Outcome::Passed => Ok(()),
            Outcome::Failed(e) => Err(e.to_string()),
            Outcome::NotRun(why) => {
                if let Some(n) = self.not_run.note() {
                    warn!(backend = %r.backend, reason = why, not_run = n, "health probes not run (a fault of this host, not of the backends): their backends keep their state");
                }
                return;
            }
        };
        self.readiness.reported.insert(r.backend);
        let detail = result.clone().err();
        match self.control.record(&r.backend, result, r.latency) {
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

    /// Write pending health changes; a failure is retried by the next call.
    pub fn sync(&mut self) {
        match self.control.sync(&mut self.dp) {
            Ok(Some(st)) => {
                info!(
                    backends_written = st.backends_written,
                    ring_slots_written = st.ring_slots_written,
                    services_written = st.services_written,
                    "maps follow backend health"
                );
                self.tell_pair();
                self.tell_cluster();
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "writing health to the maps failed; retrying"),
        }
    }

    pub fn snapshot(&self) -> Option<CounterSnapshot> {
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
            .iter()
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

    pub fn view(&self) -> api::View {
        let snap = self.snapshot().unwrap_or_default();
        let census = self.census.counts();
        let ha = self.ha.as_ref().map(|n| n.status());
        let sync = self.sync.as_ref().map(|n| n.status());
        api::build(
            &self.control,
            &api::Readings {
                services: &snap.services,
                backends: &snap.backends,
                reasons: &snap.reasons,
                service_rates: &self.rates.services,
                backend_rates: &self.rates.backends,
                flows: &census.flows,
                half_open: &census.half_open,
                active: &census.active,
                ha: ha.as_ref(),
                cluster: self.cluster.as_ref().map(|c| c.status()),
                cluster_sync: sync.as_ref(),
                fingerprints: self.fingerprints.by_service(),
                daemon: api::DaemonView {
                    checks_not_run: self.not_run.total,
                    status_refused: self.status_refused.total,
                },
            },
        )
    }

    /// Answer one line from the status socket: `status` (or nothing) the
    /// table; `deny list|add P|del P` the run-time deny list, kept in
    /// `[firewall] deny_file` before the maps change. Errors start with
    /// "error: ".
    pub fn control_request(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] | ["status"] => api::status::table(&self.view()),
            ["status", "json"] => api::status::json(&self.view()) + "\n",
            ["drain"] | ["drain", _] => {
                let secs = match words.get(1).map(|w| w.parse::<u64>()) {
                    None => Ok(300),
                    Some(Ok(s)) if (1..=86_400).contains(&s) => Ok(s),
                    Some(_) => Err(()),
                };
                match secs {
                    Ok(s) => match self.start_drain(Duration::from_secs(s)) {
                        Ok(msg) => msg,
                        Err(e) => format!("error: {e}\n"),
                    },
                    Err(()) => "error: drain TIMEOUT: whole seconds, 1 to 86400\n".into(),
                }
            }
            ["deny", "list"] => {
                let mut out = String::new();
                for p in &self.control.config().firewall.deny {
                    out += &format!("{p} (config)\n");
                }
                for n in self.control.runtime_deny() {
                    out += &format!("{n}\n");
                }
                out
            }
            ["deny", "add", prefix, "force"] => match self.change_deny("add", prefix, true) {
                Ok(msg) => msg,
                Err(e) => format!("error: {e}\n"),
            },
            ["deny", op @ ("add" | "del"), prefix] => match self.change_deny(op, prefix, false) {
                Ok(msg) => msg,
                Err(e) => format!("error: {e}\n"),
            },
            _ => format!(
                "error: unknown request {line:?} (status, status json, reload, drain [SECONDS], deny list, deny add PREFIX, deny del PREFIX)\n"
            ),
        }
    }

    fn change_deny(&mut self, op: &str, prefix: &str, force: bool) -> Result<String, String> {
        let net = prefix.parse::<crate::config::Prefix>()?.0;
        if op == "add" && !force {
            let backend = self
                .control
                .config()
                .services
                .iter()
                .flat_map(|s| s.backends.iter())
                .find(|b| net.contains(&b.address));
            if let Some(b) = backend {
                return Err(format!(
                    "{net} covers backend {}: its replies and checks are never denied, but this looks like a mistake; add --force to deny it anyway",
                    b.address
                ));
            }
            if net.prefix_len() < 8 {
                return Err(format!(
                    "{net} covers a large part of the Internet (shorter than /8); add --force to deny it anyway"
                ));
            }
        }
        let mut list = self.control.runtime_deny().to_vec();
        let present = list.contains(&net);
        match (op, present) {
            ("add", true) => return Ok(format!("{net} is denied already\n")),
            ("add", false) => list.push(net),
            (_, false) => {
                let in_config = self
                    .control
                    .config()
                    .firewall
                    .deny
                    .iter()
                    .any(|p| p.0 == net);
                return Err(if in_config {
                    format!("{net} is in the config's [firewall] deny; remove it there and reload")
                } else {
                    format!("{net} is not in the run-time deny list")
                });
            }
            (_, true) => list.retain(|n| *n != net),
        }
        if list.len() + self.control.config().firewall.deny.len()
            > lb_common::MAX_ACL_GLOBAL as usize
        {
            return Err(format!(
                "the data path holds at most {} global entries",
                lb_common::MAX_ACL_GLOBAL
            ));
        }
        let path = self.control.config().firewall.deny_file.clone();
        let old = self.control.runtime_deny().to_vec();
        crate::firewall::save(&path, &list).map_err(|e| e.to_string())?;
        if let Err(e) = self.control.set_runtime_deny(&mut self.dp, list) {
            // The maps kept the old list: so does the file.
            let _ = crate::firewall::save(&path, &old);
            return Err(e.to_string());
        }
        let verb = if op == "add" {
            "denied"
        } else {
            "no longer denied"
        };
        info!(prefix = %net, file = %path.display(), "run-time deny list: {verb}");
        Ok(format!("{net} {verb}\n"))
    }

    /// Serve until a signal ends it.
    pub async fn run(&mut self, inputs: Inputs, o: &Options) -> std::io::Result<Exit> {
        let Inputs {
            mut reports,
            mut views,
            status,
            access,
            watchdog,
        } = inputs;

        let (config_path, overrides) = (&o.config, &o.overrides);
        let (stats_interval, keep_running) = (o.stats_interval, o.keep_running);
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
        let half = watchdog.map_or(Duration::from_secs(3600), |w| {
            (w / 2).max(Duration::from_millis(10))
        });
        let mut watchdog_tick = tokio::time::interval(half);
        for t in [
            &mut stats_tick,
            &mut rate_tick,
            &mut passive_tick,
            &mut watchdog_tick,
        ] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Requests on the status socket: read off the loop, answered in it.
        let (requests_tx, mut requests) = mpsc::channel::<(String, tokio::net::UnixStream)>(16);
        let mut accept_paused: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(Exit::Stop { keep_running }); }
                _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(Exit::Stop { keep_running }); }
                _ = usr1.recv() => { info!("SIGUSR1: exiting, data path keeps forwarding"); return Ok(Exit::Stop { keep_running: true }); }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", config_path.display());
                    let _ = self.reload(config_path, overrides).await;
                }
                Some(r) = reports.recv() => self.on_report(r),
                Some(reply) = views.recv() => { let _ = reply.send(self.view()); }
                _ = passive_tick.tick() => {
                    self.passive_tick();
                    if !self.joined && self.sync.as_ref().is_some_and(|n| n.status().joined) {
                        self.joined = true;
                        self.tell_cluster();
                    }
                    // Until ready, readiness is looked at often: a node
                    // back after a failover preempts soon after it is.
                    if self.ha.is_some() && self.readiness.told != Some(true) {
                        self.tell_readiness(false).await;
                    }
                }
                _ = rate_tick.tick() => {
                    if let Some(s) = self.snapshot() { self.rates.update(Instant::now(), s); }
                    self.sync(); // retries a failed health write
                    // A link flap flushes managed neighbour entries.
                    self.host.keep_neighbours().await;
                    self.iface_macs.sync(&self.interfaces);
                    self.half_open.tick();
                    self.tell_readiness(true).await;
                    if let Some(why) = self.drain_over() {
                        info!(why, "drain over: stopping");
                        return Ok(Exit::Stop { keep_running: false });
                    }
                }
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                }
                _ = stats_tick.tick(), if stats_interval > 0 => {
                    if let Some(s) = self.snapshot() { info!(counters = %s, "counters"); }
                }
                _ = tokio::time::sleep_until(accept_paused.unwrap_or_else(tokio::time::Instant::now)), if accept_paused.is_some() => {
                    accept_paused = None;
                }
                c = status.accept(), if accept_paused.is_none() => match c {
                    Ok((stream, _)) => {
                        let cred = stream.peer_cred().ok();
                        let (uid, gid, pid) = cred.map_or((u32::MAX, u32::MAX, None), |c| (c.uid(), c.gid(), c.pid()));
                        if !super::access::allowed(access, uid, gid, pid) {
                            if let Some(n) = self.status_refused.note() {
                                warn!(uid, pid = pid.unwrap_or(0), refused = n, "status socket: a peer that is not root, the daemon's user or in control.status_socket_group was refused");
                            }
                            tokio::spawn(async move {
                                let mut stream = stream;
                                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(b"error: not permitted: root, the daemon's user or control.status_socket_group only\n")).await;
                            });
                            continue;
                        }
                        let tx = requests_tx.clone();
                        tokio::spawn(async move {
                            if let Some(r) = read_request(stream).await {
                                let _ = tx.send(r).await;
                            }
                        });
                    }
                    Err(e) => {
                        // The connection stays queued (no descriptor for it,
                        // say): pause accepting, or this spins.
                        accept_paused = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                        if let Some(n) = self.accept_failed.note() {
                            warn!(error = %e, failed = n, "status socket: accept failed; pausing 100 ms");
                        }
                    }
                },
                Some((line, mut stream)) = requests.recv() => {
                    let reply = if line.trim() == "reload" {
                        // `xdplb reload`: the verdict goes back to the asker.
                        info!("reload requested on the status socket: reloading {}", config_path.display());
                        match self.reload(config_path, overrides).await {
                            Ok(applied) => format!("{applied}\n"),
                            Err(e) => format!("error: {e}\n"),
                        }
                    } else {
                        self.control_request(line.trim())
                    };
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(reply.as_bytes())).await;
                    });
                }
            }
        }
    }
}

/// One request line from a status-socket client (at most 256 bytes, within
/// 2 s; a client that sends nothing and closes gets the status table).
async fn read_request(stream: tokio::net::UnixStream) -> Option<(String, tokio::net::UnixStream)> {
    use tokio::io::AsyncBufReadExt as _;
    let mut reader = tokio::io::BufReader::new(stream);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        let mut limited = (&mut reader).take(256);
        limited.read_line(&mut line).await
    })
    .await;
    match read {
        Ok(Ok(_)) => Some((line, reader.into_inner())),
        _ => None,
    }
}
