//! The maps the HA node works with, as handles of its own (duplicated
//! descriptors), and the switches of a node without HA.

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{Settings, names};

use super::{
    error::BpfError,
    handles::{again, dup_fd, take},
};
use crate::ha::HaMaps;

/// Handles for the HA node. Takes the flow-event ring buffer (one reader).
pub fn ha_maps(ebpf: &mut Ebpf) -> Result<HaMaps, BpfError> {
    let flows_fd = dup_fd(ebpf, names::FLOWS)?;
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
