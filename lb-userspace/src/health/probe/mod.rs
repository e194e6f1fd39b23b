//! Active health probes: one tokio task per (service, backend), each bounded
//! by its own timeout, so a target that hangs never delays another
//! (`tasks.rs`). Every kind of check is a [`Check`] with an error type of
//! its own, one file each: `tcp` (connect), `http`, `https` (TLS, then
//! `http`), `mysql`; [`ProbeError`] wraps them and tells a local fault from
//! a backend's failure.
//!
//! A probe's result goes to the control loop over a channel; the rise/fall
//! bookkeeping is [`super::state`]'s.

mod check;
mod error;
mod http;
mod https;
mod mysql;
mod tasks;
mod tcp;

pub use check::Check;
pub use error::ProbeError;
pub use http::{HttpError, http_status};
pub use https::HttpsError;
pub use mysql::MysqlError;
pub use tasks::{Outcome, Probes, Report, Target, Updated};
pub use tcp::ConnectError;
