//! Builds the tests' own XDP programs (`tests/ebpf`: the benchmark's
//! baselines, the labs' pass-through) into OUT_DIR.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ebpf");
    ebpf_build::build("xdplb-test-ebpf", &dir);
}
