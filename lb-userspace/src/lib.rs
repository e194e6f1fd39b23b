//! xdplb control plane: configuration, scheduling tables, health, and
//! programming of the XDP data path.

pub mod check;
pub mod check_route;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod health;
pub mod neigh;
pub mod passive;
pub mod plan;
pub mod view;
