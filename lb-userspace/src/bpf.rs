//! The real data path: loading the embedded XDP object, attaching it, and
//! the aya-map implementation of [`Dataplane`], plus counter read-out.

use std::{collections::BTreeMap, fmt};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use lb_common::{Backend, Reason, ServiceInfo, ServiceKey, Traffic, names};
use tracing::{info, warn};

use crate::{
    config::XdpMode,
    dataplane::{Dataplane, DataplaneError},
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
}

/// Load (but do not attach) the data path. `flow_table_size` sizes the LRU
/// flow and reverse-NAT tables.
pub fn load(flow_table_size: u32) -> Result<Ebpf, BpfError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(names::FLOWS, flow_table_size)
        .map_max_entries(names::NAT_REVERSE, flow_table_size)
        .load(EBPF_OBJECT)?;
    load_program(&mut ebpf, names::PROGRAM)?;
    Ok(ebpf)
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

/// One interface the program is attached to.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    link: XdpLinkId,
}

/// Attach program `name` to each interface. `Auto` tries native mode first
/// and falls back to generic, logging why.
pub fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    ifaces: &[String],
    mode: XdpMode,
) -> Result<Vec<Attachment>, BpfError> {
    let prog = xdp_program(ebpf, name)?;
    let mut out = Vec::new();
    for iface in ifaces {
        let tries: &[(AyaXdpMode, &'static str)] = match mode {
            XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
            XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
            XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
        };
        let mut last_err = String::new();
        let mut attached = None;
        for (m, label) in tries {
            match prog.attach(iface, *m) {
                Ok(link) => {
                    attached = Some(Attachment {
                        iface: iface.clone(),
                        mode: label,
                        link,
                    });
                    break;
                }
                Err(e) => {
                    last_err = error_chain(&e);
                    if *label == "native" && mode == XdpMode::Auto {
                        warn!(iface, reason = %last_err, "native XDP attach failed; falling back to generic mode");
                    }
                }
            }
        }
        match attached {
            Some(a) => {
                info!(iface = %a.iface, mode = a.mode, program = name, "XDP program attached");
                out.push(a);
            }
            None => {
                // Do not leave the program on the interfaces done so far.
                detach(ebpf, name, out);
                return Err(BpfError::Attach {
                    iface: iface.clone(),
                    reason: last_err,
                });
            }
        }
    }
    Ok(out)
}

/// Detach the given attachments, logging (not failing on) errors.
pub fn detach(ebpf: &mut Ebpf, name: &'static str, attachments: Vec<Attachment>) {
    let Ok(prog) = xdp_program(ebpf, name) else {
        return;
    };
    for a in attachments {
        match prog.detach(a.link) {
            Ok(()) => info!(iface = %a.iface, "XDP program detached"),
            Err(e) => {
                warn!(iface = %a.iface, error = %error_chain(&e), "detaching XDP program failed")
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
        let sum = |m: &PerCpuArray<MapData, Traffic>,
                   id: u32,
                   name: &'static str|
         -> Result<Traffic, BpfError> {
            let v = m
                .get(&id, 0)
                .map_err(|source| BpfError::Map { name, source })?;
            Ok(v.iter().fold(Traffic::default(), |a, t| Traffic {
                packets: a.packets + t.packets,
                bytes: a.bytes + t.bytes,
                new_flows: a.new_flows + t.new_flows,
            }))
        };
        for id in service_ids {
            snap.services
                .insert(*id, sum(&self.services, *id, names::SERVICE_STATS)?);
        }
        for id in backend_ids {
            snap.backends
                .insert(*id, sum(&self.backends, *id, names::BACKEND_STATS)?);
        }
        Ok(snap)
    }
}
