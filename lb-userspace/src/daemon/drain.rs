//! `xdplb drain` under way: when it started, when it must end, and the
//! service packet count it watches for quiet (the event loop's `Daemon`
//! holds one; `cluster.rs` starts and ends it).

use std::time::{Duration, Instant};

/// A drain ends once no packet has reached a service for this long: the
/// routers have moved every flow elsewhere.
pub const DRAIN_QUIET: Duration = Duration::from_secs(2);

/// `xdplb drain` under way: every VIP withdrawn, forwarding on until the
/// node's services see no packet for [`DRAIN_QUIET`] or the timeout.
pub struct Drain {
    pub started: Instant,
    pub deadline: Instant,
    pub packets: u64,
    pub quiet_since: Instant,
}
