//! Types and pure functions shared by the XDP program (`lb-ebpf`) and the
//! daemon (`lb-userspace`).
//!
//! Every map key and value is `#[repr(C)]` with fixed-width fields and
//! explicit padding, so both sides agree on the layout byte for byte. Fields
//! that hold addresses or ports are in **network byte order** and named `*_be`.
#![cfg_attr(not(test), no_std)]

pub mod csum;
pub mod hash;
pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::*;
