//! Handles on the loaded object's programs and maps: a program by name, a
//! map taken out of it, or a second handle beside the first (threads and
//! tasks of their own hold these).

use aya::{
    Ebpf,
    programs::{SchedClassifier, Xdp},
};
use lb_common::names;

use super::error::BpfError;

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
