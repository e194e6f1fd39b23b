//! The active-passive pair: two xdplb hosts acting as one.
//!
//! - `wire.rs`: adverts and flow-sync batches on the wire, HMAC-SHA256;
//! - `replay.rs`: per-peer epoch and sequence checks, kept across restarts;
//! - `state.rs`: the VRRP-style state machine, pure, simulated-clock tests;
//! - `track.rs`: tracked interfaces and services → priority or FAULT;
//! - `sync.rs`: flow records and their translation between nodes' ids;
//! - `garp.rs`, `notify.rs`: gratuitous ARP, the operator's notify command;
//! - `owned.rs`: the addresses a MASTER owns, in announcement order;
//! - `node.rs`: the node itself, on a thread and runtime of its own so the
//!   daemon's other work never delays an advert.
//!
//! Both nodes keep their data paths loaded, programmed and health-checked;
//! becoming MASTER only moves addresses. The MASTER's data path reports each
//! new flow through a ring buffer, and the node streams them to the peer,
//! which writes them into its own maps.

mod addresses;
pub mod garp;
pub mod node;
pub mod notify;
pub mod owned;
pub mod replay;
pub mod state;
mod status;
pub mod sync;
pub mod track;
pub mod wire;

pub use node::{Command, HaMaps, HaNode};
pub use state::State;
pub use status::{HaStatus, PeerStatus, PeerSync};
