//! The boundary between control logic and the BPF maps.
//!
//! [`Programmer`] turns a [`Plan`] into the fewest map writes, in an order
//! that never lets the data path see a service whose ring points at a
//! backend that is not there yet. [`Dataplane`] is implemented by the real
//! maps (`bpf::BpfDataplane`) and by [`fake::FakeDataplane`] for tests.

pub mod bpf;
pub mod fake;
mod programmer;

use lb_common::{Backend, ServiceInfo, ServiceKey};

pub use programmer::{ApplyStats, Programmer};

#[derive(Debug, thiserror::Error)]
#[error("{op} {map}: {message}")]
pub struct DataplaneError {
    pub op: &'static str,
    pub map: &'static str,
    pub message: String,
}

pub trait Dataplane {
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError>;
    fn set_ring_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), DataplaneError>;
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError>;
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError>;
}
