//! One HA node: the heartbeat socket, the state machine's clock, the
//! addresses it owns, the data path's lease, and flow sync in both
//! directions. It runs on a thread with its own single-threaded runtime, so
//! nothing the daemon does (a plan apply, a slow probe) delays an advert.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use lb_common::{
    FLOW_F_CLOSING, FLOW_F_ESTABLISHED, FLOW_F_SYN, FlowEvent, FlowKey, FlowValue, MAX_ACCEPT_MACS,
    NatReverse, PROTO_TCP, SETTINGS_F_HA, SETTINGS_F_SYNC_CLOSES, SETTINGS_F_SYNC_FLOWS, Settings,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::mpsc,
    time::Instant,
};
use tracing::{info, warn};

use super::{
    addresses::AddressWorker,
    garp, notify,
    owned::{Owned, owned_addresses},
    replay::{self, ReplayGuard},
    state::{Action, Input, Machine, Params, State},
    status::PeerSync,
    status::{HaStatus, PeerStatus},
    sync::{self, FlowRecord, MAX_RECORDS, SyncIndex},
    track::{self, Tracked},
    wire::{self, Kind, Message, NONCE_LEN, Reject, WireState},
};
use crate::{
    config::{Config, HaConfig, Membership},
    dataplane::bpf::walk,
    net::{Netlink, link},
};

/// Flows a bulk walk read, on their way to the node thread.
struct BulkChunk {
    events: Vec<FlowEvent>,
    /// The walk's end.
    last: bool,
    /// Cluster: the one peer the walk is for (a pair has one peer).
    peer: Option<Ipv4Addr>,
}

/// Datagrams a timer that fires reads first, at most (see the loop).
const LATE_READS: usize = 64;

/// Flow reports waiting to be sent, at most.
const QUEUE_LIMIT: usize = 65_536;
/// A flow report waits at most this long for a fuller datagram.
const BATCH_DELAY: Duration = Duration::from_millis(2);
/// Tracked interfaces are looked at this often.
const POLL: Duration = Duration::from_millis(10);
/// A challenge's answer is taken this long after it was sent.
const CHALLENGE_TTL: Duration = Duration::from_secs(1);
/// A peer's challenges are answered at most this often (a replayed one
/// makes this node send no faster).
const ANSWER_GAP: Duration = Duration::from_millis(5);

/// The maps the node needs: its own handles (duplicated file descriptors),
/// so the daemon keeps its own.
pub struct HaMaps {
    pub settings: Array<MapData, Settings>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub nat: HashMap<MapData, FlowKey, NatReverse>,
    pub events: RingBuf<MapData>,
    pub lost: PerCpuArray<MapData, u64>,
    /// Another descriptor of the flow table, for walks (bulk sync).
    pub flows_fd: OwnedFd,
}

/// What the daemon tells the node.
pub enum Command {
    /// The applied plan changed: translate flow records with this.
    Index(SyncIndex),
    /// Whether each tracked service has a backend, in `track_service` order.
    Services(Vec<bool>),
    /// The addresses a MASTER owns changed (a reload added or removed a
    /// service VIP): a MASTER takes the new ones at once and drops the old.
    Addresses(Vec<Owned>),
    /// Whether this node could forward now, were it MASTER (preemption
    /// waits for it).
    Ready(bool),
    /// Stop. `resign`: a clean stop (MASTER hands over at once and drops its
    /// addresses); otherwise forwarding and addresses stay for a restart
    /// (the lease lets the next daemon resume, or the peer take over).
    Stop { resign: bool },
}

pub struct HaNode {
    tx: mpsc::UnboundedSender<Command>,
    status: Arc<Mutex<HaStatus>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, for the lease.
fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime fills the struct.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl HaNode {
    /// Start the node for `config` (which has `[ha]`).
    pub fn start(
        config: &Config,
        h: HaConfig,
        key: Vec<u8>,
        maps: HaMaps,
        index: SyncIndex,
        services_ok: Vec<bool>,
    ) -> std::io::Result<HaNode> {
        // A cluster node owns no addresses (BIRD announces the VIPs).
        let owned = match h.membership {
            Membership::Pair => owned_addresses(config, &h),
            Membership::Cluster => Vec::new(),
        };
        let interfaces = config.dataplane.interfaces.clone();
        let status = Arc::new(Mutex::new(HaStatus::new(h.group, h.priority)));
        let (tx, rx) = mpsc::unbounded_channel();
        let st = status.clone();
        let thread = std::thread::Builder::new()
            .name("xdplb-ha".into())
            .spawn(move || {
                realtime(h.realtime_priority);
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "HA runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let HaMaps {
                        settings,
                        flows,
                        nat,
                        events,
                        lost,
                        flows_fd,
                    } = maps;
                    let maps = NodeMaps {
                        settings,
                        flows,
                        nat,
                        lost,
                        flows_fd,
                    };
                    match Node::new(h, key, owned, interfaces, maps, index, services_ok, st).await {
                        Ok(node) => node.run(rx, events).await,
                        Err(e) => {
                            warn!(error = %e, "HA node did not start: this node takes no addresses")
                        }
                    }
                });
            })?;
        Ok(HaNode {
            tx,
            status,
            thread: Some(thread),
        })
    }

    pub fn send(&self, c: Command) {
        let _ = self.tx.send(c);
    }

    pub fn status(&self) -> HaStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Stop the node and wait for it (it sends its last advert and, when
    /// resigning, removes its addresses first).
    pub fn stop(mut self, resign: bool) {
        let _ = self.tx.send(Command::Stop { resign });
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct NodeMaps {
    settings: Array<MapData, Settings>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    nat: HashMap<MapData, FlowKey, NatReverse>,
    lost: PerCpuArray<MapData, u64>,
    flows_fd: OwnedFd,
}

struct Node {
    h: HaConfig,
    key: Vec<u8>,
    owned: Vec<Owned>,
    /// Adds and removes the addresses (RTNL) off this thread.
    addresses: AddressWorker,
    /// Sends the gratuitous ARPs (one packet socket for the node's life).
    garp: garp::Sender,
    socket: UdpSocket,
    address: Ipv4Addr,
    machine: Machine,
    t0: Instant,
    epoch: u64,
    seq: u64,
    replay: ReplayGuard,
    settings: Array<MapData, Settings>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    nat: HashMap<MapData, FlowKey, NatReverse>,
    lost: PerCpuArray<MapData, u64>,
    flows_fd: OwnedFd,
    index: SyncIndex,
    tracked: Tracked,
    queue: Vec<(FlowEvent, Instant)>,
    flush_at: Option<Instant>,
    /// Peer epochs the whole flow table was sent to.
    bulk_synced: std::collections::HashMap<Ipv4Addr, u64>,
    /// Cluster: tables being sent to each peer (`None`: a walk under way;
    /// `Some(t)`: the last one ended at `t`) and the records of the walk
    /// under way.
    bulk_sending: std::collections::HashMap<Ipv4Addr, Option<Instant>>,
    bulk_walk_sent: std::collections::HashMap<Ipv4Addr, u64>,
    bulk_tx: mpsc::Sender<BulkChunk>,
    bulk_rx: Option<mpsc::Receiver<BulkChunk>>,
    /// Bulk walks under way, and the flows reported live meanwhile: a walk
    /// reads an entry some time before its chunk is sent, so a flow that
    /// changed since (a new connection on a reused 4-tuple) would reach the
    /// peer after its newer live record and overwrite it there. Those are
    /// left out of the walk's chunks.
    bulk_walks: usize,
    live_during_bulk: std::collections::HashSet<FlowKey>,
    peer_seen: Option<(PeerStatus, Instant)>,
    /// What the daemon reads (`HaNode::status`). This thread never waits
    /// for its lock: it keeps its own copy (`local`) and publishes it when
    /// the lock is free. A daemon thread descheduled while holding the
    /// lock (a busy CPU, an ordinary thread) held this SCHED_FIFO thread
    /// off for hundreds of milliseconds: the peer took over (issue 20).
    status: Arc<Mutex<HaStatus>>,
    local: std::cell::RefCell<HaStatus>,
    unpublished: std::cell::Cell<bool>,
    /// Whether this node is MASTER, for the gratuitous-ARP rounds' task.
    master: Arc<std::sync::atomic::AtomicBool>,
    /// Outstanding challenges: the nonce sent to each peer, and when.
    challenges: std::collections::HashMap<Ipv4Addr, ([u8; NONCE_LEN], Instant)>,
    /// When each peer's challenge was last answered.
    answered: std::collections::HashMap<Ipv4Addr, Instant>,
    /// This node's data-path MACs, sent in its adverts.
    own_macs: Vec<[u8; 6]>,
    /// Each peer's data-path MACs, from its adverts.
    peer_macs: std::collections::HashMap<Ipv4Addr, Vec<[u8; 6]>>,
    /// When each peer's last accepted message came, and whether it said
    /// the peer is out (priority 0: resigning, or in FAULT).
    peer_last: std::collections::HashMap<Ipv4Addr, (Instant, bool)>,
    /// The MACs the data path accepts now besides its own (dead peers').
    accepting: Vec<[u8; 6]>,
    /// The lease last written.
    lease_until_ns: u64,
    /// Peers the last `send` could not send to (cluster counters).
    failed_sends: std::cell::RefCell<Vec<Ipv4Addr>>,
    /// Active-active membership: no election, every node's flows synced.
    cluster: bool,
    /// Cluster: the next advert, and when a starting node stops waiting
    /// for its peers' tables.
    next_advert: Instant,
    join_by: Instant,
}

impl Node {
    #[allow(clippy::too_many_arguments)]
    async fn new(
        h: HaConfig,
        key: Vec<u8>,
        owned: Vec<Owned>,
        data_path_interfaces: Vec<String>,
        maps: NodeMaps,
        index: SyncIndex,
        services_ok: Vec<bool>,
        status: Arc<Mutex<HaStatus>>,
    ) -> anyhow::Result<Node> {
        let nl = Netlink::open()?;
        let address = match h.address {
            Some(a) => a,
            None => {
                let i = link::ifindex(&h.interface)
                    .ok_or_else(|| anyhow::anyhow!("ha.interface: no interface {}", h.interface))?;
                nl.first_ipv4(i).await?.ok_or_else(|| {
                    anyhow::anyhow!("ha.interface: {} has no IPv4 address", h.interface)
                })?
            }
        };
        let cluster = h.membership == Membership::Cluster;
        let mut h = h;
        if cluster {
            // One file for every node: the own address is not a peer.
            h.peers.retain(|p| *p != address);
        }
        let std_socket = std::net::UdpSocket::bind(SocketAddrV4::new(address, h.port))?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let text = match std::fs::read(&h.state_file) {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                info!(file = %h.state_file.display(), "no HA state file: a first start (peers are verified by a handshake either way)");
                None
            }
            Err(e) => {
                warn!(file = %h.state_file.display(), error = %e, "HA state file unreadable: replaced");
                None
            }
        };
        let loaded = replay::load(text.as_deref(), now_us);
        for problem in &loaded.problems {
            warn!(file = %h.state_file.display(), %problem, "HA state file is not as xdplb wrote it: replaced");
        }
        let epoch = loaded.epoch;
        let replay = ReplayGuard::default();
        if let Err(e) = replay::save(&h.state_file, epoch, &replay) {
            warn!(file = %h.state_file.display(), error = %e, "HA state file not written");
        }
        let own_macs: Vec<[u8; 6]> = data_path_interfaces
            .iter()
            .filter_map(|i| link::mac(i))
            .collect();
        let tracked = Tracked {
            interfaces: h
                .track_interface
                .iter()
                .map(|t| link::is_up(&t.name))
                .collect(),
            services: services_ok,
        };
        let (priority, fault) =
            track::effective(h.priority, (&h.track_interface, &h.track_service), &tracked);
        let mut machine = Machine::new(
            Params {
                address,
                advert_interval: Duration::from_millis(h.advert_interval_ms as u64),
                preempt: h.preempt,
                preempt_delay: Duration::from_millis(h.preempt_delay_ms as u64),
            },
            priority,
        );
        // Fault known before start: the machine starts in FAULT.
        machine.handle(Duration::ZERO, Input::Track { priority, fault });
        let (bulk_tx, bulk_rx) = mpsc::channel(8);
        if let Ok(mut s) = status.lock() {
            s.address = Some(address);
            s.priority = priority;
            if cluster {
                s.peers = h.peers.iter().map(|p| (*p, PeerSync::default())).collect();
                s.joined = h.peers.is_empty();
            }
        }
        let join_by = Instant::now() + Duration::from_millis(h.join_wait_ms as u64);
        Ok(Node {
            owned,
            addresses: AddressWorker::start()?,
            garp: garp::Sender::open()?,
            socket,
            address,
            machine,
            t0: Instant::now(),
            epoch,
            seq: 0,
            replay,
            settings: maps.settings,
            flows: maps.flows,
            nat: maps.nat,
            lost: maps.lost,
            flows_fd: maps.flows_fd,
            index,
            tracked,
            queue: Vec::new(),
            flush_at: None,
            bulk_synced: Default::default(),
            bulk_sending: Default::default(),
            bulk_walk_sent: Default::default(),
            bulk_tx,
            bulk_rx: Some(bulk_rx),
            bulk_walks: 0,
            live_during_bulk: Default::default(),
            peer_seen: None,
            local: std::cell::RefCell::new(
                status
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_else(|p| p.into_inner().clone()),
            ),
            unpublished: std::cell::Cell::new(false),
            master: Default::default(),
            status,
            key,
            h,
            challenges: Default::default(),
            answered: Default::default(),
            own_macs,
            peer_macs: Default::default(),
            peer_last: Default::default(),
            accepting: Vec::new(),
            lease_until_ns: 0,
            failed_sends: Default::default(),
            cluster,
            next_advert: Instant::now(),
            join_by,
        })
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn status(&self, f: impl FnOnce(&mut HaStatus)) {
        f(&mut self.local.borrow_mut());
        self.unpublished.set(true);
        self.publish();
    }

    /// Copy the local status out if the daemon is not reading it now (the
    /// loop tries again every turn).
    fn publish(&self) {
        if !self.unpublished.get() {
            return;
        }
        if let Ok(mut shared) = self.status.try_lock() {
            shared.clone_from(&self.local.borrow());
            self.unpublished.set(false);
        }
    }

    fn settings_value(&self) -> Settings {
        self.settings.get(&0, 0).unwrap_or_default()
    }

    fn write_settings(&mut self, lease_until_ns: u64) {
        self.lease_until_ns = lease_until_ns;
        // A cluster node forwards whatever its lease (no ARP ownership),
        // and its peers drop a connection's copy when it closes.
        let flags = if self.cluster {
            SETTINGS_F_SYNC_CLOSES
        } else {
            SETTINGS_F_HA
        } | if self.h.sync_flows {
            SETTINGS_F_SYNC_FLOWS
        } else {
            0
        };
        let mut accept_macs = [[0u8; 6]; MAX_ACCEPT_MACS];
        let n = self.accepting.len().min(MAX_ACCEPT_MACS);
        accept_macs[..n].copy_from_slice(&self.accepting[..n]);
        let s = Settings {
            flags,
            _pad: 0,
            lease_until_ns,
            accept_macs,
            accept_count: n as u32,
            _pad2: 0,
        };
        if let Err(e) = self.settings.set(0, s, 0) {
            warn!(error = %e, "writing the HA lease");
        }
    }

    /// The MACs of the peers declared dead: each peer whose last message
    /// said it is out (priority 0: resigning or in FAULT), or that has
    /// not been heard for a master-down interval. Their frames are
    /// forwarded here (a switch floods them once their port is down, and
    /// neighbours send to them until the gratuitous ARPs arrive); a peer
    /// heard alive again takes its MACs back, so no frame is forwarded
    /// twice.
    fn update_accepting(&mut self) {
        let down = self.machine.master_down_interval();
        let mut macs: Vec<[u8; 6]> = Vec::new();
        for (peer, (at, out)) in &self.peer_last {
            if *out || at.elapsed() > down {
                macs.extend(self.peer_macs.get(peer).into_iter().flatten());
            }
        }
        macs.sort();
        macs.dedup();
        if macs != self.accepting {
            info!(macs = ?macs.iter().map(format_mac).collect::<Vec<_>>(), "frames addressed to these peer MACs are forwarded here (empty: none)");
            self.accepting = macs;
            let lease = self.lease_until_ns;
            self.write_settings(lease);
        }
    }

    /// The lease the data path answers ARP under: until the peer could
    /// have taken over (3 advert intervals; its skew only adds to that).
    fn extend_lease(&mut self) {
        let lease = monotonic_ns() + 3 * self.h.advert_interval_ms as u64 * 1_000_000;
        self.write_settings(lease);
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, events: RingBuf<MapData>) {
        // Resume MASTER only if the previous daemon held it and its lease
        // still runs (a quick restart); otherwise start without addresses.
        let prev = self.settings_value();
        let resume = prev.flags & SETTINGS_F_HA != 0 && prev.lease_until_ns > monotonic_ns();
        if self.cluster {
            self.write_settings(0);
            self.status(|s| s.state = State::Master);
        } else if resume {
            self.write_settings(prev.lease_until_ns);
        } else {
            self.write_settings(0);
            self.release().await;
            self.addresses.flush();
        }
        if !self.cluster {
            let now = self.now();
            let actions = self.machine.handle(
                now,
                Input::Start {
                    resume_master: resume,
                },
            );
            self.act(actions).await;
        }

        // SAFETY: the ring buffer owns its map fd, which stays open and the
        // same for as long as the AsyncFd owns the ring buffer.
        let mut events =
            match unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) } {
                Ok(e) => Some(e),
                Err(e) => {
                    warn!(error = %e, "flow events cannot be polled; flow sync off");
                    None
                }
            };
        let mut bulk_rx = self.bulk_rx.take().expect("bulk channel");
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_save = Instant::now();
        let mut buf = vec![0u8; 2048];
        loop {
            self.publish();
            let deadline = if self.cluster {
                self.next_advert
            } else {
                self.machine
                    .next_deadline()
                    .map(|d| self.t0 + d)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
            };
            let flush_at = self
                .flush_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                c = rx.recv() => match c {
                    None | Some(Command::Stop { .. }) if self.cluster => {
                        // Nobody reads the flow reports any more.
                        self.settings.set(0, Settings::default(), 0).ok();
                        self.save_state(true);
                        return;
                    }
                    Some(Command::Ready(_) | Command::Addresses(_) | Command::Services(_)) if self.cluster => {}
                    None | Some(Command::Stop { resign: true }) => {
                        let now = self.now();
                        let actions = self.machine.handle(now, Input::Shutdown);
                        self.act(actions).await;
                        self.addresses.flush();
                        self.write_settings(0);
                        self.save_state(true);
                        return;
                    }
                    Some(Command::Stop { resign: false }) => {
                        self.save_state(true);
                        info!("HA node stopped without resigning: addresses and lease stay for the next daemon");
                        return;
                    }
                    Some(Command::Index(i)) => self.index = i,
                    Some(Command::Ready(ready)) => {
                        let now = self.now();
                        let actions = self.machine.handle(now, Input::Ready(ready));
                        self.act(actions).await;
                        self.status(|s| s.ready = ready);
                    }
                    Some(Command::Addresses(owned)) => self.readdress(owned).await,
                    Some(Command::Services(ok)) => {
                        self.tracked.services = ok;
                        self.retrack().await;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let late = deadline.elapsed();
                    if late > self.interval() {
                        warn!(late_ms = late.as_millis() as u64, "HA timer fired late: this node's thread was held off the CPU");
                    }
                    // A thread woken late (a busy CPU) first reads what
                    // arrived meanwhile, so it does not take over from a
                    // peer whose adverts wait in its socket. Bounded, so a
                    // flood at the port cannot hold off this node's own
                    // adverts; the timer acts only if still due.
                    for _ in 0..LATE_READS {
                        let Some((n, from)) = recv_now(&self.socket, &mut buf) else {
                            break;
                        };
                        let data = buf[..n].to_vec();
                        self.receive(&data, from).await;
                    }
                    if self.cluster {
                        self.cluster_advert().await;
                        continue;
                    }
                    let now = self.now();
                    let actions = self.machine.handle(now, Input::Timer);
                    self.act(actions).await;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        let data = buf[..n].to_vec();
                        self.receive(&data, from).await;
                    }
                    Err(e) => warn!(error = %e, "HA socket"),
                },
                ready = async {
                    match events.as_mut() {
                        Some(e) => e.readable_mut().await.map(Some),
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok(Some(mut guard)) = ready {
                        let now = Instant::now();
                        let rb = guard.get_inner_mut();
                        while let Some(item) = rb.next() {
                            if item.len() >= std::mem::size_of::<FlowEvent>() {
                                // SAFETY: the data path writes whole FlowEvents.
                                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) };
                                if self.bulk_walks > 0 {
                                    self.live_during_bulk.insert(ev.key);
                                }
                                self.queue_event(ev, now);
                            }
                        }
                        guard.clear_ready();
                    }
                    if self.queue.len() >= MAX_RECORDS {
                        self.flush().await;
                    }
                }
                chunk = bulk_rx.recv() => {
                    if let Some(chunk) = chunk {
                        let now = Instant::now();
                        if let Some(peer) = chunk.peer {
                            self.send_bulk(peer, &chunk.events, chunk.last).await;
                            continue;
                        }
                        for ev in chunk.events {
                            if !self.live_during_bulk.contains(&ev.key) {
                                self.queue_event(ev, now);
                            }
                        }
                        if chunk.last {
                            self.bulk_walks = self.bulk_walks.saturating_sub(1);
                            if self.bulk_walks == 0 {
                                self.live_during_bulk.clear();
                            }
                        }
                        self.flush().await;
                    }
                }
                _ = tokio::time::sleep_until(flush_at) => self.flush().await,
                _ = poll.tick() => {
                    if self.cluster {
                        if last_save.elapsed() >= Duration::from_secs(1) {
                            last_save = Instant::now();
                            self.cluster_tick();
                        }
                        continue;
                    }
                    self.update_accepting();
                    let up: Vec<bool> = self.h.track_interface.iter().map(|t| link::is_up(&t.name)).collect();
                    if up != self.tracked.interfaces {
                        self.tracked.interfaces = up;
                        self.retrack().await;
                    }
                    if last_save.elapsed() >= Duration::from_secs(1) {
                        last_save = Instant::now();
                        let lost: u64 = self.lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
                        let seen = self.peer_seen.as_ref().map(|(p, at)| (p.clone(), at.elapsed()));
                        let down = self.machine.master_down_interval();
                        self.status(|s| {
                            s.events_lost = lost;
                            if let Some((mut p, ago)) = seen {
                                p.last_seen = ago;
                                p.lost = ago > down;
                                s.peer = Some(p);
                            }
                        });
                    }
                }
            }
        }
    }

    /// Write the state file (own epoch; the peers' verified epochs for the
    /// record). Off this thread unless stopping: a file write can wait on
    /// the disk for a long time, and this thread's adverts must not (a
    /// MASTER's timers fired 100-600 ms late under load while it wrote the
    /// file every second). Written at start, when a peer's epoch is
    /// verified, and at a stop.
    fn save_state(&mut self, stopping: bool) {
        let (path, epoch, replay) = (self.h.state_file.clone(), self.epoch, self.replay.clone());
        let write = move || {
            // One writer at a time.
            static WRITING: Mutex<()> = Mutex::new(());
            let _one = WRITING.lock();
            if let Err(e) = replay::save(&path, epoch, &replay) {
                warn!(file = %path.display(), error = %e, "HA state file not written");
            }
        };
        if stopping {
            write();
        } else {
            let _ = std::thread::Builder::new()
                .name("xdplb-ha-state".into())
                .spawn(write);
        }
    }

    async fn retrack(&mut self) {
        let (priority, fault) = track::effective(
            self.h.priority,
            (&self.h.track_interface, &self.h.track_service),
            &self.tracked,
        );
        let now = self.now();
        let actions = self.machine.handle(now, Input::Track { priority, fault });
        self.status(|s| s.priority = priority);
        self.act(actions).await;
    }

    fn queue_event(&mut self, ev: FlowEvent, at: Instant) {
        if !self.cluster && self.machine.state() != State::Master {
            return; // only the MASTER's flows are the pair's
        }
        if self.queue.len() >= QUEUE_LIMIT {
            self.status(|s| s.queue_dropped += 1);
            return;
        }
        self.queue.push((ev, at));
        self.flush_at.get_or_insert(at + BATCH_DELAY);
    }

    /// Send queued flow reports to the peers, `MAX_RECORDS` per datagram.
    async fn flush(&mut self) {
        self.flush_at = None;
        if self.queue.is_empty() {
            return;
        }
        let queue = std::mem::take(&mut self.queue);
        let now = Instant::now();
        let records: Vec<FlowRecord> = queue
            .iter()
            .filter_map(|(ev, at)| {
                let age = now
                    .saturating_duration_since(*at)
                    .as_micros()
                    .min(u32::MAX as u128);
                self.index.record(ev, age as u32)
            })
            .collect();
        for chunk in records.chunks(MAX_RECORDS) {
            let state = self.wire_state();
            let msg = self.message(
                Kind::Flows,
                self.machine.priority(),
                state,
                sync::encode(chunk),
            );
            self.send(&msg).await;
            if self.cluster {
                let n = chunk.len() as u64;
                let failed = self.failed_sends.take();
                self.status(|s| {
                    for (peer, p) in s.peers.iter_mut() {
                        if failed.contains(peer) {
                            p.send_errors += 1;
                        } else {
                            p.records_sent += n;
                        }
                    }
                });
            }
        }
        let n = records.len() as u64;
        self.status(|s| s.flows_sent += n);
    }

    fn message(&mut self, kind: Kind, priority: u8, state: WireState, payload: Vec<u8>) -> Vec<u8> {
        self.seq += 1;
        Message {
            kind,
            group: self.h.group,
            priority,
            state,
            advert_interval_ms: self.h.advert_interval_ms.min(u16::MAX as u32) as u16,
            sender: self.address,
            epoch: self.epoch,
            seq: self.seq,
            payload,
        }
        .encode(&self.key)
    }

    async fn send_to(&self, peer: Ipv4Addr, datagram: &[u8]) {
        if let Err(e) = self
            .socket
            .send_to(datagram, SocketAddrV4::new(peer, self.h.port))
            .await
        {
            tracing::debug!(%peer, error = %e, "HA send");
        }
    }

    async fn send(&self, datagram: &[u8]) {
        for p in &self.h.peers {
            if let Err(e) = self
                .socket
                .send_to(datagram, SocketAddrV4::new(*p, self.h.port))
                .await
            {
                // A down link: the adverts resume when it is back.
                tracing::debug!(peer = %p, error = %e, "HA send");
                self.failed_sends.borrow_mut().push(*p);
            }
        }
    }

    /// The state this node's messages carry.
    fn wire_state(&self) -> WireState {
        if self.cluster {
            WireState::Active
        } else {
            self.machine.state().wire()
        }
    }

    fn reject(&self, r: Reject) {
        self.status(|s| *s.rejected.entry(r.label()).or_insert(0) += 1);
    }

    async fn receive(&mut self, data: &[u8], from: std::net::SocketAddr) {
        let msg = match self.authenticate(data, from) {
            Ok(m) => m,
            Err(r) => return self.reject(r),
        };
        match msg.kind {
            Kind::Challenge => return self.answer(&msg).await,
            Kind::Response => {
                if self.verified(&msg) {
                    // Fresh beyond doubt: as good as an advert.
                    if self.cluster {
                        self.heard(&msg);
                    } else {
                        self.advert(&msg, false).await;
                    }
                }
                return;
            }
            Kind::Advert | Kind::Flows | Kind::Bulk | Kind::BulkEnd => {}
        }
        if let Err(r) = self.replay.check(msg.sender, msg.epoch, msg.seq) {
            self.reject(r);
            if matches!(r, Reject::UnverifiedEpoch | Reject::StaleEpoch) {
                self.challenge(msg.sender).await;
            }
            return;
        }
        if self.cluster {
            self.heard(&msg);
        }
        match msg.kind {
            // A cluster advert names the peers whose tables it still wants.
            Kind::Advert if self.cluster => {
                if wire::payload_addresses(&msg.payload).contains(&self.address) {
                    self.maybe_bulk_sync(msg.sender, msg.epoch, msg.state)
                }
            }
            Kind::Advert => self.advert(&msg, true).await,
            Kind::Flows => self.flows(&msg),
            Kind::Bulk if self.cluster => self.bulk(&msg),
            Kind::BulkEnd if self.cluster => self.bulk_end(&msg),
            Kind::Bulk | Kind::BulkEnd | Kind::Challenge | Kind::Response => {}
        }
    }

    /// An accepted advert (or verified response: `with_macs` false, its
    /// payload is the nonce).
    async fn advert(&mut self, msg: &Message, with_macs: bool) {
        let peer = PeerStatus {
            addr: msg.sender,
            state: msg.state,
            priority: msg.priority,
            epoch: msg.epoch,
            last_seen: Duration::ZERO,
            lost: false,
        };
        self.status(|s| {
            s.adverts_received += 1;
            s.peer = Some(peer.clone());
        });
        self.peer_seen = Some((peer, Instant::now()));
        if with_macs {
            let macs = wire::payload_macs(&msg.payload);
            if !macs.is_empty() {
                self.peer_macs.insert(msg.sender, macs);
            }
        }
        self.peer_last
            .insert(msg.sender, (Instant::now(), msg.priority == 0));
        let now = self.now();
        let actions = self.machine.handle(
            now,
            Input::Advert {
                from: msg.sender,
                priority: msg.priority,
                state: msg.state,
                interval: Duration::from_millis(msg.advert_interval_ms as u64),
            },
        );
        self.act(actions).await;
        self.update_accepting();
        self.maybe_bulk_sync(msg.sender, msg.epoch, msg.state);
    }

    fn flows(&mut self, msg: &Message) {
        let received = Instant::now();
        let Ok(records) = sync::decode(&msg.payload) else {
            return self.reject(Reject::Malformed);
        };
        if !self.cluster && self.machine.state() == State::Master {
            return; // a MASTER keeps its own decisions
        }
        let (mut unknown, mut oldest) = (0u64, 0u32);
        for r in &records {
            oldest = oldest.max(r.age_us);
            match self.index.entries(r) {
                Some(e) if self.cluster && r.flags & FLOW_F_CLOSING != 0 => self.forget(&e),
                Some(e) => {
                    if let Some((rk, rv)) = e.reverse
                        && let Err(e) = self.nat.insert(rk, rv, 0)
                    {
                        warn!(error = %e, "writing a synced reverse-NAT entry");
                    }
                    if let Err(err) = self.flows.insert(e.key, e.value, 0) {
                        warn!(error = %err, "writing a synced flow");
                    }
                }
                None => unknown += 1,
            }
        }
        let lag = Duration::from_micros(oldest as u64) + received.elapsed();
        let n = records.len() as u64;
        let from = msg.sender;
        self.status(|s| {
            s.flows_received += n;
            s.flows_unknown += unknown;
            s.sync_lag = Some(lag);
            if let Some(p) = s.peers.get_mut(&from) {
                p.records_received += n;
                p.lag = Some(lag);
            }
        });
    }

    /// Decode and authenticate, and check the sender is a configured peer
    /// sending from its own address. Freshness is the caller's.
    fn authenticate(&self, data: &[u8], from: std::net::SocketAddr) -> Result<Message, Reject> {
        let msg = Message::decode(data, self.h.group, &self.key)?;
        let std::net::SocketAddr::V4(src) = from else {
            return Err(Reject::UnknownPeer);
        };
        if *src.ip() != msg.sender || !self.h.peers.contains(&msg.sender) {
            return Err(Reject::UnknownPeer);
        }
        Ok(msg)
    }

    /// Ask `peer` to prove its epoch: a fresh nonce it must answer. At most
    /// one outstanding per peer, sent again after an advert interval.
    async fn challenge(&mut self, peer: Ipv4Addr) {
        let now = Instant::now();
        if self
            .challenges
            .get(&peer)
            .is_some_and(|(_, sent)| now < *sent + self.interval())
        {
            return;
        }
        let nonce = nonce();
        self.challenges.insert(peer, (nonce, now));
        let state = self.wire_state();
        let msg = self.message(
            Kind::Challenge,
            self.machine.priority(),
            state,
            nonce.to_vec(),
        );
        self.send_to(peer, &msg).await;
        self.status(|s| s.challenges_sent += 1);
    }

    /// Answer an authenticated challenge from this node's current epoch.
    async fn answer(&mut self, msg: &Message) {
        if msg.payload.len() != NONCE_LEN {
            return self.reject(Reject::Malformed);
        }
        let now = Instant::now();
        if self
            .answered
            .get(&msg.sender)
            .is_some_and(|t| now < *t + ANSWER_GAP)
        {
            return;
        }
        self.answered.insert(msg.sender, now);
        let state = self.machine.state();
        let priority = if state == State::Fault {
            0
        } else {
            self.machine.priority()
        };
        let wire_state = self.wire_state();
        let reply = self.message(Kind::Response, priority, wire_state, msg.payload.clone());
        self.send_to(msg.sender, &reply).await;
    }

    /// A response: if it answers this node's outstanding challenge, its
    /// epoch is the peer's verified one from now on.
    fn verified(&mut self, msg: &Message) -> bool {
        let fresh = self
            .challenges
            .get(&msg.sender)
            .is_some_and(|(nonce, sent)| {
                msg.payload.as_slice() == nonce.as_slice() && sent.elapsed() < CHALLENGE_TTL
            });
        if !fresh {
            self.reject(Reject::UnsolicitedResponse);
            return false;
        }
        self.challenges.remove(&msg.sender);
        let before = self.replay.epoch(msg.sender);
        self.replay.verify(msg.sender, msg.epoch, msg.seq);
        self.save_state(false);
        info!(peer = %msg.sender, epoch = msg.epoch, previous = ?before, "peer's epoch verified (it answered this node's challenge)");
        true
    }

    /// Cluster: say this node is alive (peers hearing a new life send it
    /// their tables), then see whether it has joined.
    async fn cluster_advert(&mut self) {
        // The peers whose current life this node has verified (so their
        // tables would be accepted) and whose tables it has not got.
        let wanted: Vec<Ipv4Addr> = self
            .local
            .borrow()
            .peers
            .iter()
            .filter(|(_, p)| p.epoch.is_some() && !p.bulk_done)
            .map(|(a, _)| *a)
            .collect();
        let payload = wire::addresses_payload(&wanted);
        let msg = self.message(Kind::Advert, 100, WireState::Active, payload);
        self.send(&msg).await;
        self.failed_sends.take();
        self.status(|s| s.adverts_sent += 1);
        self.next_advert = Instant::now() + self.interval();
        self.check_joined();
    }

    /// Cluster, once a second: each peer's liveness for the status.
    fn cluster_tick(&mut self) {
        let lost: u64 = self.lost.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0);
        let down = 3 * self.interval();
        let seen: Vec<(Ipv4Addr, Duration)> = self
            .peer_last
            .iter()
            .map(|(p, (at, _))| (*p, at.elapsed()))
            .collect();
        self.status(|s| {
            s.events_lost = lost;
            for (peer, ago) in seen {
                if let Some(p) = s.peers.get_mut(&peer) {
                    p.last_seen = Some(ago);
                    p.up = ago <= down;
                }
            }
        });
        self.check_joined();
    }

    /// Cluster: an accepted message from `msg.sender`, which is alive in
    /// `msg.epoch`.
    fn heard(&mut self, msg: &Message) {
        let now = Instant::now();
        let first = self.peer_last.insert(msg.sender, (now, false)).is_none();
        let (peer, epoch) = (msg.sender, msg.epoch);
        let mut new_life = false;
        self.status(|s| {
            if msg.kind == Kind::Advert {
                s.adverts_received += 1;
            }
            if let Some(p) = s.peers.get_mut(&peer) {
                if p.epoch != Some(epoch) {
                    // Another life: its table is to come again.
                    new_life = p.epoch.is_some();
                    p.epoch = Some(epoch);
                    p.bulk_done = false;
                    p.bulk_walk_received = 0;
                }
                p.last_seen = Some(Duration::ZERO);
                p.up = true;
            }
        });
        if first || new_life {
            info!(%peer, epoch, "cluster peer heard");
        }
    }

    /// Cluster: a peer's connection is closing: its copy here goes (the
    /// table keeps room for live connections), unless the entry is another
    /// connection's by now (another backend or first SYN).
    fn forget(&mut self, e: &sync::LocalEntries) {
        let same = self.flows.get(&e.key, 0).is_ok_and(|cur| {
            cur.backend_id == e.value.backend_id && cur.syn_seq_be == e.value.syn_seq_be
        });
        if same {
            let _ = self.flows.remove(&e.key);
            if let Some((rk, _)) = e.reverse {
                let _ = self.nat.remove(&rk);
            }
        }
    }

    /// Cluster: a peer's whole-table records; written only where this node
    /// has no entry (its own decision, or a live record, is newer).
    fn bulk(&mut self, msg: &Message) {
        let Ok(records) = sync::decode(&msg.payload) else {
            return self.reject(Reject::Malformed);
        };
        let mut unknown = 0u64;
        for r in &records {
            let Some(e) = self.index.entries(r) else {
                unknown += 1;
                continue;
            };
            // BPF_NOEXIST: an existing entry stays (EEXIST is the answer).
            if self.flows.insert(e.key, e.value, 1).is_ok()
                && let Some((rk, rv)) = e.reverse
            {
                let _ = self.nat.insert(rk, rv, 1);
            }
        }
        let (n, from) = (records.len() as u64, msg.sender);
        self.status(|s| {
            s.flows_unknown += unknown;
            if let Some(p) = s.peers.get_mut(&from) {
                p.bulk_received += n;
                p.bulk_walk_received += n;
            }
        });
    }

    /// Cluster: a peer's whole table has arrived.
    /// It arrived whole if as many records came as the marker says (else
    /// this node's adverts go on asking for it).
    fn bulk_end(&mut self, msg: &Message) {
        let Ok(count) = <[u8; 8]>::try_from(msg.payload.as_slice()) else {
            return self.reject(Reject::Malformed);
        };
        let (from, sent) = (msg.sender, u64::from_be_bytes(count));
        let mut received = 0;
        self.status(|s| {
            if let Some(p) = s.peers.get_mut(&from) {
                received = std::mem::take(&mut p.bulk_walk_received);
                p.bulk_done = received >= sent;
            }
        });
        if received >= sent {
            info!(peer = %from, records = received, "cluster peer's flow table received");
        } else {
            warn!(peer = %from, sent, received, "cluster peer's flow table arrived incomplete: asking again");
        }
        self.check_joined();
    }

    /// Cluster: joined once every peer heard has sent its table and every
    /// configured peer has been heard, or the join wait is over.
    fn check_joined(&mut self) {
        if self.local.borrow().joined {
            return;
        }
        let all = self
            .local
            .borrow()
            .peers
            .values()
            .all(|p| p.epoch.is_some() && p.bulk_done);
        let waited = Instant::now() >= self.join_by;
        if all || waited {
            let missing: Vec<String> = self
                .local
                .borrow()
                .peers
                .iter()
                .filter(|(_, p)| !p.bulk_done)
                .map(|(a, _)| a.to_string())
                .collect();
            if missing.is_empty() {
                info!("cluster: every peer's flow table received; the VIPs may be announced");
            } else {
                warn!(peers = ?missing, wait_ms = self.h.join_wait_ms, "cluster: joined without these peers' flow tables (not heard, or slow): their connections may not survive moving here");
            }
            self.status(|s| s.joined = true);
        }
    }

    /// Cluster: a bulk walk's records to `peer` (and its end marker).
    async fn send_bulk(&mut self, peer: Ipv4Addr, events: &[FlowEvent], last: bool) {
        let records: Vec<FlowRecord> = events
            .iter()
            .filter_map(|ev| self.index.record(ev, 0))
            .collect();
        for chunk in records.chunks(MAX_RECORDS) {
            let msg = self.message(Kind::Bulk, 100, WireState::Active, sync::encode(chunk));
            self.send_to(peer, &msg).await;
        }
        let n = records.len() as u64;
        self.status(|s| {
            if let Some(p) = s.peers.get_mut(&peer) {
                p.bulk_sent += n;
            }
        });
        *self.bulk_walk_sent.entry(peer).or_default() += n;
        if last {
            let total = self.bulk_walk_sent.remove(&peer).unwrap_or(0);
            self.bulk_sending.insert(peer, Some(Instant::now()));
            let msg = self.message(
                Kind::BulkEnd,
                100,
                WireState::Active,
                total.to_be_bytes().to_vec(),
            );
            self.send_to(peer, &msg).await;
        }
    }

    fn interval(&self) -> Duration {
        Duration::from_millis(self.h.advert_interval_ms as u64)
    }

    /// A MASTER sends its whole flow table to a peer it has not synced in
    /// this peer's life (a new epoch: the peer restarted or just came).
    fn maybe_bulk_sync(&mut self, peer: Ipv4Addr, epoch: u64, peer_state: WireState) {
        if self.cluster {
            // Asked for by the peer's adverts until it has the table: one
            // walk at a time, and another ask answered only after a pause
            // (the end marker may still be on its way).
            match self.bulk_sending.get(&peer) {
                Some(None) => return,
                Some(Some(t)) if t.elapsed() < Duration::from_secs(1) => return,
                _ => {}
            }
            self.bulk_sending.insert(peer, None);
        } else if !self.h.sync_flows
            || self.machine.state() != State::Master
            || peer_state == WireState::Master
            || self.bulk_synced.get(&peer) == Some(&epoch)
        {
            return;
        }
        self.bulk_synced.insert(peer, epoch);
        let fd = match self.flows_fd.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                warn!(error = %e, "bulk flow sync");
                if self.cluster {
                    // Asked again by the peer's next adverts.
                    self.bulk_sending.insert(peer, Some(Instant::now()));
                }
                return;
            }
        };
        let tx = self.bulk_tx.clone();
        // A cluster's walk goes to that peer alone; the pair's joins the
        // live stream to its one peer.
        let to = self.cluster.then_some(peer);
        if !self.cluster {
            self.bulk_walks += 1;
        }
        info!(%peer, "sending the whole flow table to the peer (bulk sync)");
        std::thread::spawn(move || {
            let mut chunk = Vec::with_capacity(MAX_RECORDS * 8);
            let mut sent = 0usize;
            // Bounded: twice the largest table (an entry-by-entry walk, on
            // a kernel without batches, may restart).
            let walked = walk::walk(
                fd.as_fd(),
                2 * (1 << 24),
                |key: FlowKey, value: FlowValue| {
                    // A connection still in its handshake is not sent (as
                    // live sync sends it only once completed): a SYN flood
                    // is not synced.
                    if key.proto == PROTO_TCP
                        && value.flags & (FLOW_F_SYN | FLOW_F_ESTABLISHED) == FLOW_F_SYN
                    {
                        return true;
                    }
                    // A cluster's joiner needs no closed connection.
                    if to.is_some() && value.flags & FLOW_F_CLOSING != 0 {
                        return true;
                    }
                    chunk.push(FlowEvent { key, value });
                    if chunk.len() == chunk.capacity() {
                        sent += chunk.len();
                        let events = std::mem::take(&mut chunk);
                        if tx
                            .blocking_send(BulkChunk {
                                events,
                                last: false,
                                peer: to,
                            })
                            .is_err()
                        {
                            return false; // the node stopped
                        }
                        chunk.reserve(MAX_RECORDS * 8);
                        // About 150,000 flows a second: the peer's socket keeps up.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    true
                },
            );
            if let Err(e) = walked {
                warn!(error = %e, "bulk flow sync walk");
            }
            sent += chunk.len();
            let _ = tx.blocking_send(BulkChunk {
                events: chunk,
                last: true,
                peer: to,
            });
            info!(flows = sent, "bulk flow sync done");
        });
    }

    async fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::SendAdvert { priority } => {
                    if self.machine.state() == State::Master && priority > 0 {
                        self.extend_lease();
                    }
                    let state = self.machine.state().wire();
                    let macs = wire::macs_payload(&self.own_macs);
                    let msg = self.message(Kind::Advert, priority, state, macs);
                    self.send(&msg).await;
                    self.status(|s| s.adverts_sent += 1);
                }
                Action::Resign => {
                    let macs = wire::macs_payload(&self.own_macs);
                    let msg = self.message(Kind::Advert, 0, WireState::Master, macs);
                    self.send(&msg).await;
                    self.status(|s| s.adverts_sent += 1);
                }
                Action::Acquire => {
                    self.extend_lease();
                    self.acquire().await;
                }
                Action::Announce => {
                    info!(
                        master = self.machine.state() == State::Master,
                        "HA peer heard again after a silence: announcing the addresses again"
                    );
                    self.announce(self.owned.clone())
                }
                Action::Release => {
                    self.write_settings(0);
                    self.release().await;
                }
                Action::Transition { from, to, cause } => {
                    info!(
                        from = from.label(),
                        to = to.label(),
                        priority = self.machine.priority(),
                        %cause,
                        "HA state change"
                    );
                    self.master
                        .store(to == State::Master, std::sync::atomic::Ordering::Relaxed);
                    self.status(|s| {
                        s.state = to;
                        s.transitions += 1;
                        s.last_cause = cause.clone();
                    });
                    if to != State::Master {
                        self.queue.clear();
                    }
                    if let Some(cmd) = &self.h.notify {
                        drop(notify::spawn(
                            cmd.clone(),
                            to.label(),
                            Duration::from_millis(self.h.notify_timeout_ms as u64),
                        ));
                    }
                }
            }
        }
    }

    /// Become the owner: gratuitous ARPs first (the neighbours move now;
    /// the data path forwards without the addresses on the host), then the
    /// addresses, then the remaining rounds.
    async fn acquire(&mut self) {
        let owned = self.owned.clone();
        // Floating addresses (the way back) first, the VIPs right behind.
        garp_round(&self.garp, &owned);
        self.add_addresses(&owned);
        self.announce_after_first(owned);
    }

    fn add_addresses(&self, owned: &[Owned]) {
        self.addresses.add(owned.to_vec());
    }

    /// A reload changed the owned addresses.
    async fn readdress(&mut self, owned: Vec<Owned>) {
        if owned == self.owned {
            return;
        }
        let gone: Vec<Owned> = self
            .owned
            .iter()
            .filter(|o| !owned.contains(o))
            .cloned()
            .collect();
        let new: Vec<Owned> = owned
            .iter()
            .filter(|o| !self.owned.contains(o))
            .cloned()
            .collect();
        info!(added = ?new.iter().map(|o| o.addr).collect::<Vec<_>>(), removed = ?gone.iter().map(|o| o.addr).collect::<Vec<_>>(), "HA addresses changed");
        self.owned = owned;
        if self.machine.state() == State::Master {
            self.remove_addresses(&gone);
            self.add_addresses(&new);
            self.announce(new);
        } else {
            // Not ours to hold; a node that is not MASTER holds none.
            self.remove_addresses(&gone);
        }
    }

    /// Gratuitous ARPs for every owned address, `garp_repeat` rounds, and
    /// one more `garp_master_delay_ms` after the first. Every round only
    /// while this node is still MASTER: a node that yields must not send
    /// the neighbours back to itself (issue 20: on failback the yielding
    /// node's later rounds did).
    fn announce(&self, owned: Vec<Owned>) {
        if self.machine.state() == State::Master {
            garp_round(&self.garp, &owned);
        }
        self.announce_after_first(owned);
    }

    /// The rounds after the first (see [`Node::announce`]).
    fn announce_after_first(&self, owned: Vec<Owned>) {
        let (repeat, interval, late) = (
            self.h.garp_repeat.max(1),
            Duration::from_millis(self.h.garp_interval_ms as u64),
            Duration::from_millis(self.h.garp_master_delay_ms as u64),
        );
        let flag = self.master.clone();
        let sender = self.garp.clone();
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            let master = || flag.load(std::sync::atomic::Ordering::Relaxed);
            for _ in 1..repeat {
                tokio::time::sleep(interval).await;
                if !master() {
                    return;
                }
                garp_round(&sender, &owned);
            }
            if late.is_zero() {
                return;
            }
            tokio::time::sleep_until(began + late).await;
            if master() {
                garp_round(&sender, &owned);
            }
        });
    }

    async fn release(&mut self) {
        let owned = self.owned.clone();
        self.remove_addresses(&owned);
    }

    fn remove_addresses(&self, owned: &[Owned]) {
        self.addresses.remove(owned.to_vec());
    }
}

/// One datagram already in `socket`'s queue, read with a syscall now:
/// tokio's `try_recv_from` answers from the readiness it last saw, which a
/// thread woken late has not polled yet (it said "would block" with
/// adverts waiting).
fn recv_now(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, std::net::SocketAddr)> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: zeroed sockaddr_in is valid; the kernel fills it.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `buf` and `addr` are valid for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if n < 0 || addr.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    let port = u16::from_be(addr.sin_port);
    Some((n as usize, std::net::SocketAddr::from((ip, port))))
}

/// Make the calling thread `SCHED_FIFO` at `priority` (0: leave it as it
/// is); a refusal (no `CAP_SYS_NICE`) is logged and the node runs anyway.
fn realtime(priority: u8) {
    if priority == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        warn!(
            priority,
            error = %std::io::Error::last_os_error(),
            "the HA thread stays an ordinary thread: under CPU load its adverts may be late"
        );
    } else {
        info!(priority, "HA thread runs SCHED_FIFO");
    }
}

/// A fresh random nonce (the kernel's generator).
fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    let mut filled = 0;
    while filled < NONCE_LEN {
        // SAFETY: writes at most the buffer's remaining length.
        let rc = unsafe { libc::getrandom(n[filled..].as_mut_ptr().cast(), NONCE_LEN - filled, 0) };
        if rc > 0 {
            filled += rc as usize;
        }
    }
    n
}

fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One gratuitous ARP per owned address, in order.
fn garp_round(sender: &garp::Sender, owned: &[Owned]) {
    for o in owned {
        if let Err(e) = sender.send(&o.iface, o.addr) {
            warn!(addr = %o.addr, iface = %o.iface, error = %e, "gratuitous ARP");
        }
    }
}
