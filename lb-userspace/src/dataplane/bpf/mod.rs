//! The real data path: the embedded XDP object loaded and pinned
//! (`load.rs`), attached to interfaces (`attach.rs`), its configuration maps
//! as a [`Dataplane`](super::Dataplane) (`maps.rs`), its counters
//! (`counters.rs`) and the flow-table census (`census.rs`).

mod attach;
mod census;
mod counters;
mod ha_maps;
mod load;
mod mapped;
mod maps;
pub mod walk;

use std::path::PathBuf;

use aya::Ebpf;

pub use attach::{Attachment, attach, detach, neigh_program};
pub use census::{Census, FlowCensus};
pub use counters::{CounterSnapshot, Counters};
pub use ha_maps::{clear_ha_settings, ha_maps};
pub use load::{
    EBPF_OBJECT, Loaded, TableSizes, TestFault, load, load_program, load_small, load_with, pin_dir,
    unpin, xdp_program,
};
pub use maps::BpfDataplane;

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
    #[error("map {0}: a second handle: {1}")]
    Dup(&'static str, std::io::Error),
    #[error("mapping the ring array into memory: {0}")]
    Mmap(std::io::Error),
    #[error(transparent)]
    Write(#[from] crate::dataplane::DataplaneError),
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    T::try_from(map).map_err(|source| BpfError::Map { name, source })
}

/// A second descriptor of map `name` (an array or hash map).
pub(crate) fn dup_fd(ebpf: &Ebpf, name: &'static str) -> Result<std::os::fd::OwnedFd, BpfError> {
    use aya::maps::Map;
    let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
    let data: &aya::maps::MapData = match map {
        Map::Array(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuArray(m) => m,
        _ => return Err(BpfError::MissingMap(name)),
    };
    std::os::fd::AsFd::as_fd(data.fd())
        .try_clone_to_owned()
        .map_err(|e| BpfError::Dup(name, e))
}

/// A handle on the next-hop generation (for `net::HopInvalidator`).
pub fn hop_generation(ebpf: &Ebpf) -> Result<aya::maps::Array<aya::maps::MapData, u32>, BpfError> {
    again(ebpf, lb_common::names::HOP_GENERATION)
}

/// A second handle on map `name`, leaving the first where it is.
pub(crate) fn again<T>(ebpf: &Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let err = |source| BpfError::Map { name, source };
    let data = aya::maps::MapData::from_fd(dup_fd(ebpf, name)?).map_err(err)?;
    T::try_from(aya::maps::Map::from_map_data(data).map_err(err)?).map_err(err)
}
