//! The tests' own XDP programs (`tests/ebpf`), apart from xdplb's object:
//! the benchmark's baselines and the namespace labs' pass-through program.

use aya::{Ebpf, programs::Xdp};

use crate::Netns;

/// The object, built by `tests/build.rs`.
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdplb-test-ebpf"));

/// Names of its maps (the second baseline's tables).
pub const BASELINE_SERVICES: &str = "BASELINE_SERVICES";
pub const BASELINE_FLOWS: &str = "BASELINE_FLOWS";

pub const BASELINE_NEW_FLOWS: &str = "BASELINE_NEW_FLOWS";
pub const BASELINE_NEW_FLOWS_PERCPU_LRU: &str = "BASELINE_NEW_FLOWS_PERCPU_LRU";

/// The object with `programs` loaded into the kernel.
pub fn load(programs: &[&str]) -> Ebpf {
    load_sized(programs, &[])
}

/// [`load`], with maps resized first: (name, max entries).
pub fn load_sized(programs: &[&str], sizes: &[(&str, u32)]) -> Ebpf {
    let mut loader = aya::EbpfLoader::new();
    for (name, entries) in sizes {
        loader.map_max_entries(name, *entries);
    }
    let mut ebpf = loader.load(OBJECT).expect("load the tests' XDP object");
    for name in programs {
        program(&mut ebpf, name)
            .load()
            .unwrap_or_else(|e| panic!("load {name}: {e}"));
    }
    ebpf
}

/// One XDP program of a loaded object.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("no program {name}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{name} is not XDP: {e}"))
}

/// Frames the LB's program sends back out of the interface they came in on
/// (`XDP_TX`: ping replies, ICMP errors) reached a veth peer here only when
/// the peer ran an XDP program itself (without one, 0 of 5 pings were
/// answered and "time exceeded" never arrived). So native labs run this
/// pass-through program on the peers; it stays attached while the returned
/// object lives.
pub fn pass_through_on(ns: &Netns, dev: &str) -> Ebpf {
    let mut ebpf = load(&["pass_through"]);
    let _in = ns.enter();
    program(&mut ebpf, "pass_through")
        .attach(dev, aya::programs::XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach pass_through to {dev} in {}: {e}", ns.name));
    ebpf
}
