//! The real data path: the embedded XDP object loaded and pinned
//! (`load.rs`), attached to interfaces (`attach.rs`), its configuration maps
//! as a [`Dataplane`](super::Dataplane) (`maps.rs`), its counters
//! (`counters.rs`), the flow-table census (`census.rs`) and the half-open
//! budget (`half_open.rs`).

mod attach;
mod census;
mod counters;
mod error;
mod ha_maps;
mod half_open;
mod handles;
mod iface_macs;
mod load;
mod mapped;
mod maps;
pub mod walk;

pub use attach::{Attachment, attach, detach};
pub use census::{Census, FlowCensus};
pub use counters::{CounterSnapshot, Counters};
pub use error::BpfError;
pub use ha_maps::{clear_ha_settings, ha_maps};
pub use half_open::HalfOpen;
pub use handles::{hop_generation, neigh_program, xdp_program};
pub use iface_macs::IfaceMacs;
pub use load::{EBPF_OBJECT, Loaded, TableSizes, TestFault, load, load_with, pin_dir, unpin};
pub use maps::BpfDataplane;
