//! Builds the XDP program (`lb-ebpf`) and leaves the object in OUT_DIR,
//! where `xdplb` embeds it.

fn main() {
    commit();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    ebpf_build::build("lb-ebpf", &dir);
}

/// `XDPLB_COMMIT`: the commit `xdplb --version` names ("unknown" outside a
/// git checkout). Changes in the working tree are not noticed (build.rs
/// reruns on a new commit or index, not on every edit).
fn commit() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output();
    let commit = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => "unknown".to_string(),
    };
    println!("cargo:rustc-env=XDPLB_COMMIT={commit}");
    // A new commit or checkout changes these.
    for f in ["../.git/HEAD", "../.git/index", "../.git/refs/heads"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
