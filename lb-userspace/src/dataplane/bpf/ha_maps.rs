//! The maps the HA node works with, as handles of its own (duplicated
//! descriptors), and the switches of a node without HA.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf,
    maps::{Array, Map, MapData},
};
use lb_common::{Settings, names};

use super::{BpfError, take};
use crate::ha::HaMaps;

/// A second handle on map `name`, leaving the first where it is.
fn again<T>(ebpf: &Ebpf, name: &'static str) -> Result<T, BpfError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or(BpfError::MissingMap(name))?;
    let err = |source| BpfError::Map { name, source };
    let data: &MapData = match map {
        Map::Array(m) | Map::HashMap(m) | Map::LruHashMap(m) | Map::PerCpuArray(m) => m,
        _ => return Err(BpfError::MissingMap(name)),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| BpfError::Dup(name, e))?;
    let data = MapData::from_fd(fd).map_err(err)?;
    T::try_from(Map::from_map_data(data).map_err(err)?).map_err(err)
}

/// Handles for the HA node. Takes the flow-event ring buffer (one reader).
pub fn ha_maps(ebpf: &mut Ebpf) -> Result<HaMaps, BpfError> {
    let flows_fd = {
        let map = ebpf
            .map(names::FLOWS)
            .ok_or(BpfError::MissingMap(names::FLOWS))?;
        let Map::LruHashMap(m) = map else {
            return Err(BpfError::MissingMap(names::FLOWS));
        };
        m.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| BpfError::Dup(names::FLOWS, e))?
    };
    Ok(HaMaps {
        settings: again(ebpf, names::SETTINGS)?,
        flows: again(ebpf, names::FLOWS)?,
        nat: again(ebpf, names::NAT_REVERSE)?,
        lost: again(ebpf, names::EVENTS_LOST)?,
        events: take(ebpf, names::FLOW_EVENTS)?,
        flows_fd,
    })
}

/// A node without `[ha]`: no lease guard, no flow reports (a previous
/// daemon with HA may have left them on in the pinned map).
pub fn clear_ha_settings(ebpf: &Ebpf) -> Result<(), BpfError> {
    let mut s: Array<MapData, Settings> = again(ebpf, names::SETTINGS)?;
    s.set(0, Settings::default(), 0)
        .map_err(|source| BpfError::Map {
            name: names::SETTINGS,
            source,
        })
}
