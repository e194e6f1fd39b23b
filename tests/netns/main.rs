//! End-to-end tests: real TCP/HTTP and UDP from a client namespace through
//! `xdplb` in an LB namespace to two backend server processes, for DSR and
//! NAT, in native and generic XDP mode.
//!
//! Topology (all addresses exist only inside these namespaces):
//!
//! ```text
//! client 198.51.100.2 -- cli [LB] b1 -- 203.0.113.11 backend b1 (VIP on lo)
//!                                 b2 -- 203.0.113.21 backend b2 (VIP on lo)
//! ```
//! The LB has no route to the VIP, so every answered request went through
//! the XDP program. Native mode on veth needs TX checksum offload off on the
//! senders into the LB and NAPI (GRO) on the peers receiving redirects.
//!
//! One module per concern; `lab` is the shared lab.

mod attack;
mod control;
mod firewall;
mod flood;
mod forwarding;
mod health;
mod heavy_load;
mod lab;
mod metrics;
mod mysql;
mod passive;
mod reload;
mod restart;
mod routing;
mod schedulers;
