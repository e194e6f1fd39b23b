//! Builds the XDP program (`lb-ebpf`) with aya-build on the nightly toolchain
//! and leaves the object in OUT_DIR, where `xdplb` embeds it.

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
            no_default_features: false,
            features: &[],
        }],
        aya_build::Toolchain::Nightly,
    )
}
