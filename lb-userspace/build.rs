//! Builds the XDP program (`lb-ebpf`) and leaves the object in OUT_DIR,
//! where `xdplb` embeds it.

fn main() {
    commit();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-ebpf");
    ebpf_build::build("lb-ebpf", &dir);
}

/// `XDPLB_COMMIT`: the commit `xdplb --version` names ("unknown" outside a
/// git checkout).
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
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(&root)
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    println!(
        "cargo:rustc-env=XDPLB_COMMIT={commit}{}",
        if dirty { "+changes" } else { "" }
    );
    // A new commit or checkout changes these.
    for f in ["../.git/HEAD", "../.git/index"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
