//! Active-active: several xdplb nodes behind routers that spread packets
//! over them by ECMP. Each node announces the VIPs it can serve through
//! its local BIRD (`gate.rs` decides which, `announcer.rs` keeps the kernel
//! routes BIRD learns them from); every node builds the same Maglev ring
//! from the same config, and `fingerprint.rs` lets an operator see that
//! they do.

pub mod announcer;
pub mod bird;
pub mod fingerprint;
pub mod gate;

pub use announcer::{AnnounceStatus, Announcer};
pub use gate::{VipDecision, decide, drained, joining};
