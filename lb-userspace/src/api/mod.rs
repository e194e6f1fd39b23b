//! What the daemon shows: the view of services, backends and counters
//! (`view.rs`), rendered as OpenMetrics (`metrics.rs`) and as the status
//! table and JSON (`status.rs`), served over HTTP (`server.rs`: `/metrics`,
//! `/status`, `/healthz`) and on the status socket `xdplb status` reads.

pub mod metrics;
pub mod server;
pub mod status;
pub mod view;

pub use view::{DaemonView, Readings, View, build};
