//! Empty library target: lets `xdplb-tests` list this crate as a build
//! dependency so cargo rebuilds the eBPF object when it changes.
#![no_std]
