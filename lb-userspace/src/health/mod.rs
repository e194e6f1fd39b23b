//! Backend health: the state machine (`state.rs`: up, held, down, HAProxy's
//! rise/fall), active probes (`probe/`, one file per kind), the policy
//! routes that send DSR probes to one backend on the VIP (`dsr_route.rs`),
//! and passive health from the data path's counters (`passive.rs`).

pub mod dsr_route;
pub mod passive;
pub mod probe;
mod state;

pub use state::{Health, State, Transition};
