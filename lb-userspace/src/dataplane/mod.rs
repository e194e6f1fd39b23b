//! The boundary between control logic and the BPF maps.
//!
//! [`Programmer`] turns a [`Plan`] into the fewest map writes, in an order
//! the data path never sees half-done: a ring is written whole into the
//! service's spare half and goes live with one update of the service entry;
//! backends that gain rights are written before that flip, those that lose
//! them after. [`Dataplane`] is implemented by the real maps
//! (`bpf::BpfDataplane`) and by [`fake::FakeDataplane`] for tests.

pub mod bpf;
mod contract;
pub mod fake;
mod programmer;

pub use contract::{Dataplane, DataplaneError};
pub use programmer::{ApplyStats, Programmer};
