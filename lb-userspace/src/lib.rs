//! xdplb control plane: configuration, scheduling tables, and programming of
//! the XDP data path.

pub mod bpf;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod neigh;
pub mod plan;
pub mod ring;
