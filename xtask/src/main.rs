//! Developer tasks: `cargo xtask test | run | bench | setup`.
//!
//! Every task first checks the prerequisites (apt packages, the nightly
//! toolchain's rust-src, bpf-linker built against LLVM 22, bpffs) and
//! installs what is missing, saying what it does.

mod demo;
mod fixed_rate;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install or verify prerequisites only.
    Setup,
    /// Build everything and run all tests (unit, packet fixtures, namespaces),
    /// every test target even when one fails (`--no-fail-fast`).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Without --iface: a demo in network namespaces. With --iface: run
    /// xdplb on that interface with --config.
    Run {
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        #[arg(long)]
        config: Option<String>,
        /// Requests the demo sends to the VIP.
        #[arg(long, default_value_t = 100)]
        requests: usize,
    },
    /// ns/packet of the data path via BPF_PROG_TEST_RUN, against baselines
    /// run the same way. With --fixed-rate: the whole machine's CPU at a
    /// fixed rate of new connections, xdplb against nftables DNAT.
    Bench {
        /// Namespace lab, h2load at a fixed rate, xdplb and nftables in turn.
        #[arg(long)]
        fixed_rate: bool,
        /// New connections per second (--fixed-rate).
        #[arg(long, default_value_t = 5000)]
        rate: u32,
        /// Seconds per run (--fixed-rate).
        #[arg(long, default_value_t = 10)]
        secs: u32,
        /// Runs per mode, interleaved (--fixed-rate).
        #[arg(long, default_value_t = 3)]
        reps: u32,
    },
}

pub fn say(msg: &str) {
    eprintln!("[xtask] {msg}");
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Run a command, streaming its output; fail with its name if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo xtask run -- --iface eth0 ...`: a `--` right after the task name
    // separates xtask's own options, not positional arguments.
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(2).map(String::as_str) == Some("--") && args.get(1).is_some_and(|t| t != "test") {
        args.remove(2);
    }
    let cli = Cli::parse_from(args);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    std::env::set_current_dir(&root)?;
    match cli.cmd {
        Task::Setup => setup::ensure(),
        Task::Test { args } => {
            setup::ensure()?;
            say("building the daemon, the eBPF object and test binaries (cargo build)");
            run(cargo().arg("build"))?;
            say(
                "running all tests (cargo test): unit, packet fixtures (BPF_PROG_TEST_RUN), network namespaces",
            );
            // Every test target runs even when one fails, so one red
            // target does not hide the others' results.
            let mut cmd = cargo();
            cmd.arg("test");
            if !args.iter().any(|a| a == "--no-fail-fast") {
                cmd.arg("--no-fail-fast");
            }
            run(cmd.args(&args))
        }
        Task::Run {
            ifaces,
            config,
            requests,
        } => {
            setup::ensure()?;
            if ifaces.is_empty() {
                if config.is_some() {
                    bail!(
                        "--config needs --iface (without --iface the demo uses config/www.foobar.com.toml)"
                    );
                }
                demo::run(&root, requests)
            } else {
                let config = config.context("--iface needs --config FILE")?;
                say("building xdplb (release)");
                run(cargo().args(["build", "--release", "-p", "lb-userspace"]))?;
                let mut cmd = Command::new(root.join("target/release/xdplb"));
                cmd.args(["run", "--config", &config]);
                for i in &ifaces {
                    cmd.args(["--iface", i]);
                }
                say(&format!("running {cmd:?} (Ctrl-C detaches and exits)"));
                run(&mut cmd)
            }
        }
        Task::Bench {
            fixed_rate: true,
            rate,
            secs,
            reps,
        } => {
            setup::ensure()?;
            fixed_rate::run(&root, &fixed_rate::Options { rate, secs, reps })
        }
        Task::Bench { .. } => {
            setup::ensure()?;
            say("building and running the benchmark (release)");
            run(cargo().args([
                "run",
                "--release",
                "-q",
                "-p",
                "xdplb-tests",
                "--bin",
                "xdplb-bench",
            ]))
        }
    }
}
