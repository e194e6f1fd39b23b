//! Prerequisites, checked every time and installed when missing.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{run, say};

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "ethtool",
    "procps",
    // A real MariaDB server and client for the MySQL health-check test
    // (server binaries only: no system service is installed or started).
    "mariadb-server-core",
    "mariadb-client-core",
    // promtool (checks and unit-tests the alerting rules) and the Prometheus
    // server (scrapes the daemon in a test, a real parser of /metrics). Its
    // service is not started here.
    "prometheus",
    // systemd-analyze verifies the shipped unit.
    "systemd",
    // iperf3 through a source_hash service (its control and data
    // connections must meet one backend). Its daemon is not enabled.
    "iperf3",
    // ping: ICMP echo to a VIP is answered by the data path.
    "iputils-ping",
    // BIRD 2: the cluster test's router and LB nodes run it, and `bird -p`
    // checks the shipped configs. Its system service is not started here.
    "bird2",
];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

pub fn ensure() -> anyhow::Result<()> {
    say("checking prerequisites");
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        say(&format!("apt packages present: {}", APT_PACKAGES.join(" ")));
    } else {
        if !is_root() {
            bail!("missing apt packages {missing:?}; run as root or install them");
        }
        say(&format!(
            "installing apt packages {missing:?} (apt-get update; apt-get install)"
        ));
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }

    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            say("nightly toolchain with rust-src present")
        }
        Some(_) => {
            say("adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))?;
        }
        None => {
            say("installing the nightly toolchain with rust-src");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }

    let version = output(Command::new("bpf-linker").arg("--version"));
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        say(&format!("bpf-linker {BPF_LINKER_VERSION} present"));
    } else {
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 at {LLVM_PREFIX} (about a minute; found: {})",
            version.as_deref().unwrap_or("none").trim()
        ));
        // bpf-linker's build script reads LLVM_PREFIX (else it uses the first
        // llvm-config on PATH, which may be another LLVM); llvm-sys reads
        // LLVM_SYS_221_PREFIX.
        run(crate::cargo()
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX))
        .context("installing bpf-linker")?;
    }

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        say("bpffs mounted at /sys/fs/bpf");
    } else if is_root() && Path::new("/sys/fs/bpf").exists() {
        say("mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    } else {
        say("bpffs not mounted and cannot mount it (not root); pinning will be unavailable");
    }
    if !is_root() {
        say("not root: tests that need BPF or namespaces will skip (under CI=true they fail)");
    }
    Ok(())
}
