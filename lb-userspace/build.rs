//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` on the
//! nightly toolchain and leaves the object in OUT_DIR, where `xdplb` embeds
//! it. The nested build's output is shown only when it fails (cargo would
//! otherwise echo every line of it as a warning on every fresh build).

use std::{env, path::PathBuf, process::Command};

fn main() {
    if let Err(e) = build_ebpf() {
        println!("cargo:warning={e}");
        std::process::exit(1);
    }
}

fn build_ebpf() -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let root = manifest.join("../lb-ebpf");
    // The build-dependency on lb-ebpf's library covers lb-common; this
    // covers the program's own sources.
    println!("cargo:rerun-if-changed={}", root.display());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "lb-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&root)
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
        .map_err(|e| format!("starting `rustup run nightly cargo build` for lb-ebpf: {e}"))?;
    if !out.status.success() {
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            println!("cargo:warning={line}");
        }
        return Err(format!(
            "building the XDP program (lb-ebpf) failed ({}); its output is above. `cargo xtask setup` installs the nightly rust-src and bpf-linker it needs",
            out.status
        ));
    }
    let object = target_dir.join("bpfel-unknown-none/release/lb-ebpf");
    std::fs::copy(&object, out_dir.join("lb-ebpf"))
        .map_err(|e| format!("copying {}: {e}", object.display()))?;
    Ok(())
}
