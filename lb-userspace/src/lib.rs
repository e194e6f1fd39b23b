//! xdplb control plane: configuration, scheduling tables, health, and
//! programming of the XDP data path.

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod firewall;
pub mod ha;
pub mod health;
pub mod net;
pub mod plan;
