//! The real data path: loading the embedded XDP object, attaching it, and
//! the aya-map implementation of [`Dataplane`], plus counter read-out.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachOptions},
        xdp::{XdpLink, XdpLinkId},
    },
};
use lb_common::{Backend, FlowKey, FlowValue, Reason, ServiceInfo, ServiceKey, Traffic, names};
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    dataplane::{Dataplane, DataplaneError},
    plan::{Plan, PlannedService},
};

/// The compiled `lb-ebpf` object, built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("attaching to {iface}: {reason}")]
    Attach { iface: String, reason: String },
    #[error("pinning at {0}: {1}")]
    Pin(PathBuf, String),
    #[error("starting the flow-census thread: {0}")]
    Thread(std::io::Error),
}

/// The loaded data path and whether its maps were adopted from pins.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// This layout version's pin directory, when pinning is on.
    pub pin_dir: Option<PathBuf>,
    /// The maps existed (a previous daemon left them): flows, config and
    /// counters carry over.
    pub adopted: bool,
}

/// bpffs magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin directory for this layout version under `root`.
pub fn pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{}", lb_common::LAYOUT_VERSION))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Load (but do not attach) the data path. `flow_table_size` sizes the LRU
/// flow and reverse-NAT tables. With `pin_root`, every map is pinned under
/// its versioned directory, re-using maps already pinned there.
pub fn load(flow_table_size: u32, pin_root: Option<&Path>) -> Result<Loaded, BpfError> {
    load_with(flow_table_size, pin_root, TestFault::None)
}

/// A bug the fuzz test plants in the data path to prove it would notice
/// (see `lb-ebpf/src/fault.rs`). Never set by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestFault {
    None = 0,
    /// NAT skips the port part of the L4 checksum update.
    NatPortChecksum = 1,
}

/// [`load`], with a planted [`TestFault`] (tests only).
pub fn load_with(
    flow_table_size: u32,
    pin_root: Option<&Path>,
    fault: TestFault,
) -> Result<Loaded, BpfError> {
    let mut loader = EbpfLoader::new();
    let fault = fault as u32;
    loader
        .map_max_entries(names::FLOWS, flow_table_size)
        .map_max_entries(names::NAT_REVERSE, flow_table_size)
        .override_global(names::TEST_FAULT, &fault, true);
    let dir = pin_root.map(pin_dir);
    let mut adopted = false;
    let map_paths: Vec<(&'static str, PathBuf)> = match &dir {
        Some(d) => names::MAPS.iter().map(|n| (*n, d.join(n))).collect(),
        None => Vec::new(),
    };
    if let Some(d) = &dir {
        std::fs::create_dir_all(d).map_err(|e| BpfError::Pin(d.clone(), e.to_string()))?;
        if !is_bpffs(d) {
            return Err(BpfError::Pin(
                d.clone(),
                "not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)".into(),
            ));
        }
        adopted = map_paths.iter().any(|(_, p)| p.exists());
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    load_program(&mut ebpf, names::PROGRAM)?;
    neigh_program(&mut ebpf)?
        .load()
        .map_err(|source| BpfError::Program {
            name: names::NEIGH_PROGRAM,
            source,
        })?;
    if let Some(d) = &dir {
        // Pinned so `bpftool prog show pinned` finds the running program.
        let path = d.join(format!("prog_{}", names::PROGRAM));
        let _ = std::fs::remove_file(&path);
        xdp_program(&mut ebpf, names::PROGRAM)?
            .pin(&path)
            .map_err(|e| BpfError::Pin(path.clone(), e.to_string()))?;
    }
    Ok(Loaded {
        ebpf,
        pin_dir: dir,
        adopted,
    })
}

/// Remove every pin of this layout version (after a clean detach).
pub fn unpin(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!(path = %e.path().display(), error = %err, "removing pin failed");
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    if let Some(root) = dir.parent() {
        let _ = std::fs::remove_dir(root); // only if empty
    }
}

/// Load one XDP program of the object into the kernel (the data path is
/// loaded by [`load`]; the benchmark loads its `baseline_tx` with this).
pub fn load_program(ebpf: &mut Ebpf, name: &'static str) -> Result<(), BpfError> {
    xdp_program(ebpf, name)?
        .load()
        .map_err(|source| BpfError::Program { name, source })
}

/// A loaded XDP program of the object by name.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, BpfError> {
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| BpfError::Program { name, source })
}

/// The tc program that sends packets with an unresolved next hop through
/// the kernel's neighbour resolution (`lb-ebpf/src/neigh.rs`).
pub fn neigh_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, BpfError> {
    let name = names::NEIGH_PROGRAM;
    ebpf.program_mut(name)
        .ok_or(BpfError::MissingProgram(name))?
        .try_into()
        .map_err(|source| BpfError::Program { name, source })
}

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    link: AttachLink,
    /// The tc-ingress neighbour-resolution program, if it could be attached.
    neigh: Option<NeighLink>,
}

#[derive(Debug)]
enum NeighLink {
    Owned(SchedClassifierLinkId),
    Pinned(PathBuf, FdLink),
}

fn neigh_link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("tclink_{iface}"))
}

/// Attach the tc program in front of the interface's other TCX programs
/// (it only acts on packets the XDP program marked), pinned with `pin_dir`;
/// a pinned link a previous daemon left is taken over in place.
fn attach_neigh(ebpf: &mut Ebpf, iface: &str, pin_dir: Option<&Path>) -> Result<NeighLink, String> {
    let prog = neigh_program(ebpf).map_err(|e| e.to_string())?;
    if let Some(dir) = pin_dir {
        let path = neigh_link_pin(dir, iface);
        if path.exists() {
            let adopted = (|| {
                let pinned = PinnedLink::from_pin(&path).map_err(|e| error_chain(&e))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| error_chain(&e))?;
                let id = prog.attach_to_link(link).map_err(|e| error_chain(&e))?;
                let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
                FdLink::try_from(link).map_err(|e| error_chain(&e))
            })();
            match adopted {
                Ok(link) => return Ok(NeighLink::Pinned(path, link)),
                Err(reason) => {
                    warn!(iface, %reason, "cannot take over the pinned tc link; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )
        .map_err(|e| error_chain(&e))?;
    let Some(dir) = pin_dir else {
        return Ok(NeighLink::Owned(id));
    };
    let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
    let fd_link = FdLink::try_from(link).map_err(|e| error_chain(&e))?;
    let path = neigh_link_pin(dir, iface);
    let pinned = fd_link.pin(&path).map_err(|e| error_chain(&e))?;
    Ok(NeighLink::Pinned(path, pinned.into()))
}

#[derive(Debug)]
enum AttachLink {
    /// Owned by the program; goes when the daemon goes.
    Owned(XdpLinkId),
    /// A bpf_link pinned at the path: survives the daemon.
    Pinned(PathBuf, FdLink),
}

fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Attach program `name` to each interface. `Auto` tries native mode first
/// and falls back to generic, logging why. With `pin_dir`, a link a previous
/// daemon pinned for the interface is taken over by atomically replacing its
/// program (no packet sees an interface without XDP), and new links are
/// pinned.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifaces: &[String],
    mode: XdpMode,
    pin_dir: Option<&Path>,
) -> Result<Vec<Attachment>, BpfError> {
    let mut out = Vec::new();
    for iface in ifaces {
        match attach_one(ebpf, name, iface, mode, pin_dir) {
            Ok(mut a) => {
                info!(iface = %a.iface, mode = a.mode, program = name, pinned = matches!(a.link, AttachLink::Pinned(..)), "XDP program attached");
                match attach_neigh(ebpf, iface, pin_dir) {
                    Ok(l) => {
                        info!(
                            iface,
                            program = names::NEIGH_PROGRAM,
                            "tc neighbour resolution attached"
                        );
                        a.neigh = Some(l);
                    }
                    Err(reason) => {
                        warn!(iface, %reason, "cannot attach the tc neighbour-resolution program (TCX, Linux 6.6+); packets whose next hop is unresolved go to the IP stack instead, where a NAT reply from a local VIP is dropped as a martian")
                    }
                }
                out.push(a);
            }
            Err(e) => {
                // Do not leave the program on the interfaces done so far.
                detach(ebpf, name, out, false);
                return Err(e);
            }
        }
    }
    Ok(out)
}

fn attach_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    iface: &str,
    mode: XdpMode,
    pin_dir: Option<&Path>,
) -> Result<Attachment, BpfError> {
    let prog = xdp_program(ebpf, name)?;
    let program_err = |source| BpfError::Program { name, source };
    if let Some(dir) = pin_dir {
        let path = link_pin(dir, iface);
        if path.exists() {
            match adopt_link(prog, &path) {
                Ok(link) => {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        mode: "adopted",
                        link: AttachLink::Pinned(path, link),
                        neigh: None,
                    });
                }
                Err(reason) => {
                    warn!(iface, path = %path.display(), %reason, "cannot take over the pinned XDP link; attaching anew");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }
    let tries: &[(AyaXdpMode, &'static str)] = match mode {
        XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
        XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
        XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
    };
    let mut last_err = String::new();
    for (m, label) in tries {
        match prog.attach(iface, *m) {
            Ok(id) => {
                let Some(dir) = pin_dir else {
                    return Ok(Attachment {
                        iface: iface.to_string(),
                        mode: label,
                        link: AttachLink::Owned(id),
                        neigh: None,
                    });
                };
                let link = prog.take_link(id).map_err(program_err)?;
                let fd_link = match FdLink::try_from(link) {
                    Ok(l) => l,
                    Err(e) => {
                        return Err(BpfError::Attach {
                            iface: iface.to_string(),
                            reason: format!(
                                "attached through netlink, which cannot be pinned ({}); set dataplane.pin_path = \"\" to run without hitless restart",
                                error_chain(&e)
                            ),
                        });
                    }
                };
                let path = link_pin(dir, iface);
                let pinned = fd_link
                    .pin(&path)
                    .map_err(|e| BpfError::Pin(path.clone(), error_chain(&e)))?;
                return Ok(Attachment {
                    iface: iface.to_string(),
                    mode: label,
                    link: AttachLink::Pinned(path, pinned.into()),
                    neigh: None,
                });
            }
            Err(e) => {
                last_err = error_chain(&e);
                if *label == "native" && mode == XdpMode::Auto {
                    warn!(iface, reason = %last_err, "native XDP attach failed; falling back to generic mode");
                }
            }
        }
    }
    Err(BpfError::Attach {
        iface: iface.to_string(),
        reason: last_err,
    })
}

/// Replace the program of a pinned link with ours; returns the link.
fn adopt_link(prog: &mut Xdp, path: &Path) -> Result<FdLink, String> {
    let pinned = PinnedLink::from_pin(path).map_err(|e| error_chain(&e))?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| error_chain(&e))?;
    let id = prog.attach_to_link(link).map_err(|e| error_chain(&e))?;
    let link = prog.take_link(id).map_err(|e| error_chain(&e))?;
    FdLink::try_from(link).map_err(|e| error_chain(&e))
}

/// Detach the given attachments, logging (not failing on) errors. With
/// `keep_running`, pinned links stay (forwarding goes on without the daemon).
pub fn detach(
    ebpf: &mut Ebpf,
    name: &'static str,
    attachments: Vec<Attachment>,
    keep_running: bool,
) {
    for a in attachments {
        match a.neigh {
            Some(NeighLink::Pinned(path, link)) => {
                if keep_running {
                    // Stays with the XDP link; the next daemon takes it over.
                } else {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(iface = %a.iface, error = %e, "removing the tc link pin failed");
                    }
                    drop(link);
                }
            }
            Some(NeighLink::Owned(id)) => {
                if let Ok(prog) = neigh_program(ebpf)
                    && let Err(e) = prog.detach(id)
                {
                    warn!(iface = %a.iface, error = %error_chain(&e), "detaching the tc program failed");
                }
            }
            None => {}
        }
        match a.link {
            AttachLink::Pinned(path, link) => {
                if keep_running {
                    info!(iface = %a.iface, pin = %path.display(), "XDP program left attached (pinned link)");
                    continue;
                }
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(iface = %a.iface, error = %e, "removing the link pin failed");
                }
                drop(link); // last reference: the kernel detaches
                info!(iface = %a.iface, "XDP program detached");
            }
            AttachLink::Owned(id) => {
                let Ok(prog) = xdp_program(ebpf, name) else {
                    continue;
                };
                match prog.detach(id) {
                    Ok(()) => info!(iface = %a.iface, "XDP program detached"),
                    Err(e) => {
                        warn!(iface = %a.iface, error = %error_chain(&e), "detaching XDP program failed")
                    }
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    T::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// The configuration maps, owned.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, Backend>,
    ring: Array<MapData, u32>,
}

impl BpfDataplane {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            ring: take(ebpf, names::BACKEND_RING)?,
        })
    }
}

impl BpfDataplane {
    /// What the maps hold, as a plan (service names unknown): how a restarted
    /// daemon learns the ids and contents a previous one left pinned.
    pub fn read_plan(&self) -> Result<Plan, BpfError> {
        let err = |name| move |source| BpfError::Map { name, source };
        let mut services = Vec::new();
        for entry in self.services.iter() {
            let (key, info) = entry.map_err(err(names::SERVICES))?;
            let mut ring = Vec::with_capacity(info.ring_len as usize);
            for slot in 0..info.ring_len.min(lb_common::RING_SIZE) {
                ring.push(
                    self.ring
                        .get(&(info.id * lb_common::RING_SIZE + slot), 0)
                        .map_err(err(names::BACKEND_RING))?,
                );
            }
            services.push(PlannedService {
                name: String::new(),
                key,
                info,
                ring,
            });
        }
        services.sort_by_key(|s| s.info.id);
        let mut backends = BTreeMap::new();
        for id in 0..lb_common::MAX_BACKENDS {
            let b = self.backends.get(&id, 0).map_err(err(names::BACKENDS))?;
            if b != Backend::default() {
                backends.insert(id, b);
            }
        }
        Ok(Plan::new(services, backends))
    }
}

fn map_err(
    op: &'static str,
    map: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError {
        op,
        map,
        message: error_chain(&e),
    }
}

impl Dataplane for BpfDataplane {
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_err("update", names::BACKENDS))
    }
    fn set_ring_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), DataplaneError> {
        self.ring
            .set(service_id * lb_common::RING_SIZE + slot, backend_id, 0)
            .map_err(map_err("update", names::BACKEND_RING))
    }
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError> {
        self.services
            .insert(key, info, 0)
            .map_err(map_err("update", names::SERVICES))
    }
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        self.services
            .remove(&key)
            .map_err(map_err("delete", names::SERVICES))
    }
}

/// The counter maps, owned.
pub struct Counters {
    reasons: PerCpuArray<MapData, u64>,
    services: PerCpuArray<MapData, Traffic>,
    backends: PerCpuArray<MapData, Traffic>,
}

/// Counters summed over CPUs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub reasons: BTreeMap<&'static str, u64>,
    pub services: BTreeMap<u32, Traffic>,
    pub backends: BTreeMap<u32, Traffic>,
}

impl CounterSnapshot {
    pub fn reason(&self, r: Reason) -> u64 {
        self.reasons.get(r.label()).copied().unwrap_or(0)
    }
}

impl fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero: Vec<String> = self
            .reasons
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}",
            if nonzero.is_empty() {
                "no packets".to_string()
            } else {
                nonzero.join(" ")
            }
        )
    }
}

impl Counters {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            reasons: take(ebpf, names::REASONS)?,
            services: take(ebpf, names::SERVICE_STATS)?,
            backends: take(ebpf, names::BACKEND_STATS)?,
        })
    }

    /// Sum the per-CPU counters of the given service and backend ids.
    pub fn snapshot(
        &self,
        service_ids: &[u32],
        backend_ids: &[u32],
    ) -> Result<CounterSnapshot, BpfError> {
        let mut snap = CounterSnapshot::default();
        for r in Reason::ALL {
            let v = self
                .reasons
                .get(&(*r as u32), 0)
                .map_err(|source| BpfError::Map {
                    name: names::REASONS,
                    source,
                })?;
            snap.reasons.insert(r.label(), v.iter().sum());
        }
        snap.services = sum_traffic(&self.services, service_ids, names::SERVICE_STATS)?;
        snap.backends = self.backend_traffic(backend_ids)?;
        Ok(snap)
    }

    /// Only the given backends' traffic, summed over CPUs.
    pub fn backend_traffic(&self, ids: &[u32]) -> Result<BTreeMap<u32, Traffic>, BpfError> {
        sum_traffic(&self.backends, ids, names::BACKEND_STATS)
    }
}

fn sum_traffic(
    m: &PerCpuArray<MapData, Traffic>,
    ids: &[u32],
    name: &'static str,
) -> Result<BTreeMap<u32, Traffic>, BpfError> {
    let mut out = BTreeMap::new();
    for id in ids {
        let v = m
            .get(id, 0)
            .map_err(|source| BpfError::Map { name, source })?;
        let t = v.iter().fold(Traffic::default(), |a, t| a.merged(t));
        out.insert(*id, t);
    }
    Ok(out)
}

impl Counters {}

/// Counts flow-table entries per backend in a background thread, because a
/// walk of a large LRU table takes one syscall per entry and must not stall
/// health checks. Entries are flows the table still holds (idle ones stay
/// until the LRU evicts them), so this is "flows pinned", not "open TCP
/// connections".
pub struct FlowCensus {
    counts: Arc<Mutex<BTreeMap<u32, u64>>>,
    stop: Arc<AtomicBool>,
}

impl FlowCensus {
    /// Walk the table every `period`, or less often if a walk takes longer
    /// than a ninth of it.
    pub fn start(ebpf: &mut Ebpf, period: Duration) -> Result<Self, BpfError> {
        let flows: HashMap<MapData, FlowKey, FlowValue> = take(ebpf, names::FLOWS)?;
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        std::thread::Builder::new()
            .name("flow-census".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let began = std::time::Instant::now();
                    let mut per_backend = BTreeMap::new();
                    // Bounded: a table that changes under the walk can make
                    // get_next_key restart, so stop after 2x the maximum.
                    for (_, v) in flows.iter().flatten().take(2 * (1 << 24)) {
                        *per_backend.entry(v.backend_id).or_insert(0u64) += 1;
                    }
                    if let Ok(mut g) = c.lock() {
                        *g = per_backend;
                    }
                    // At most a tenth of one CPU, however large the table.
                    let pause = period.max(began.elapsed() * 9);
                    let mut slept = Duration::ZERO;
                    while slept < pause && !s.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        slept += Duration::from_millis(100);
                    }
                }
            })
            .map_err(BpfError::Thread)?;
        Ok(Self { counts, stop })
    }

    /// Entries per backend id at the last walk.
    pub fn counts(&self) -> BTreeMap<u32, u64> {
        self.counts.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for FlowCensus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
