//! Builds the XDP program (`lb-ebpf`) and leaves the object in OUT_DIR,
//! where `xdplb` embeds it.

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    ebpf_build::build("lb-ebpf", &dir);
}
