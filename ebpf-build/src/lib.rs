//! Builds one of the workspace's eBPF crates (`bpfel-unknown-none`, on the
//! nightly toolchain, `-Z build-std=core`) from a build script and leaves
//! its object in `OUT_DIR` under the package's name, for `include_bytes!`.
//! The nested build's output is shown only when it fails (cargo would
//! otherwise echo every line of it as a warning on every fresh build).

use std::{env, path::Path, process::Command};

/// Build eBPF package `package` (its sources in `crate_dir`) and copy its
/// binary `package` to `OUT_DIR/package`. On failure the nested build's
/// output becomes cargo warnings and the build script exits.
pub fn build(package: &str, crate_dir: &Path) {
    if let Err(e) = try_build(package, crate_dir) {
        println!("cargo:warning={e}");
        std::process::exit(1);
    }
}

fn try_build(package: &str, crate_dir: &Path) -> Result<(), String> {
    let out_dir = env::var("OUT_DIR").map_err(|e| e.to_string())?;
    let out_dir = Path::new(&out_dir);
    // A build-dependency on the crate's (empty) library covers lb-common;
    // this covers the program's own sources.
    println!("cargo:rerun-if-changed={}", crate_dir.display());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--package", package])
        .args(["--bins", "--release", "--target", "bpfel-unknown-none"])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(crate_dir)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        );
    // The outer build's compiler settings must not leak into the nested one.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(key);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("starting `rustup run nightly cargo build` for {package}: {e}"))?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        return Err(format!(
            "building the eBPF crate {package} failed ({}); its output is above. `cargo xtask setup` installs the nightly rust-src and bpf-linker it needs",
            out.status
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release").join(package);
    std::fs::copy(&object, out_dir.join(package))
        .map_err(|e| format!("copying {}: {e}", object.display()))?;
    Ok(())
}
