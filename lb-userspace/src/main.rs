//! `xdplb`: the load balancer daemon and its command-line tools.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::bail;
use clap::{Parser, Subcommand};
use xdplb::{
    cli::{self, pid},
    config::{Config, XdpMode},
    daemon,
};

const DEFAULT_PID_FILE: &str = "/run/xdplb.pid";
const DEFAULT_STATUS_SOCKET: &str = "/run/xdplb.sock";

#[derive(Parser)]
#[command(
    name = "xdplb",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("XDPLB_COMMIT"), ")"),
    about = "XDP layer-4 load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load the data path, program it from the config, attach, health-check
    /// and serve. SIGHUP re-reads the config; SIGTERM/SIGINT detach and exit;
    /// SIGUSR1 exits leaving forwarding in place for the next daemon.
    Run {
        /// The TOML configuration (checked whole before anything changes).
        #[arg(long)]
        config: PathBuf,
        /// Interface to attach to (repeatable); replaces dataplane.interfaces.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Override dataplane.xdp_mode.
        #[arg(long, value_parser = ["auto", "native", "generic"])]
        xdp_mode: Option<String>,
        /// Override dataplane.pin_path (bpffs directory; "" disables pinning).
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// Override control.status_socket.
        #[arg(long)]
        status_socket: Option<PathBuf>,
        /// On SIGTERM/SIGINT too, exit without detaching (as SIGUSR1 does).
        #[arg(long)]
        keep_running: bool,
        /// Seconds between counter summaries in the log (0: never).
        #[arg(long, default_value_t = 30)]
        stats_interval: u64,
        /// Where to write the daemon's PID (for `xdplb reload` / `stop`).
        #[arg(long, default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
    },
    /// Validate a config file; exits non-zero with file, key and reason.
    Check {
        /// The TOML configuration to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Ask the running daemon to re-read its config and print its verdict:
    /// what changed, or (exit 2) why the file was rejected, in which case
    /// the daemon keeps serving the previous config. (SIGHUP reloads too,
    /// reporting only in the log.)
    Reload {
        /// The daemon's status socket (control.status_socket).
        #[arg(long, default_value = DEFAULT_STATUS_SOCKET)]
        socket: PathBuf,
    },
    /// Stop the running daemon: detach and unpin (SIGTERM), or with
    /// `--keep-running` exit leaving the data path forwarding (SIGUSR1).
    Stop {
        /// The daemon's PID file (`run --pid-file`).
        #[arg(long, default_value = DEFAULT_PID_FILE)]
        pid_file: PathBuf,
        /// Exit leaving the data path forwarding for the next daemon.
        #[arg(long)]
        keep_running: bool,
        /// Seconds to wait for the daemon to exit (0: do not wait).
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
    /// Print services, backends, health, weights, conn/s and flows of the
    /// running daemon.
    Status {
        /// The daemon's status socket (control.status_socket).
        #[arg(long, default_value = DEFAULT_STATUS_SOCKET)]
        socket: PathBuf,
        /// The same view as JSON (as the HTTP endpoint's /status).
        #[arg(long)]
        json: bool,
    },
    /// Take this cluster node out of service ([cluster]): withdraw every
    /// VIP from the routers, keep forwarding what still arrives until no
    /// packet has reached a service for 2 s (or TIMEOUT), then stop.
    Drain {
        /// Stop after this many seconds even if packets still arrive.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// The daemon's status socket (control.status_socket).
        #[arg(long, default_value = DEFAULT_STATUS_SOCKET)]
        socket: PathBuf,
    },
    /// Print a shell completion script (e.g. `xdplb completions bash >
    /// /etc/bash_completion.d/xdplb`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff; e.g. `xdplb man | man -l -`).
    Man,
    /// The run-time global deny list of the running daemon: sources dropped
    /// before anything else, kept in [firewall] deny_file across restarts.
    Deny {
        #[command(subcommand)]
        op: DenyOp,
        /// The daemon's status socket (control.status_socket).
        #[arg(long, global = true, default_value = DEFAULT_STATUS_SOCKET)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum DenyOp {
    /// Deny a source prefix ("a.b.c.d/n" or an address). One that covers a
    /// configured backend, or a /0 to /7, is refused unless forced.
    Add {
        /// "a.b.c.d/n" or an address.
        prefix: String,
        /// Deny it although it covers a backend or a large part of the
        /// Internet (backends' replies and checks still get through).
        #[arg(long)]
        force: bool,
    },
    /// Take a prefix off the run-time list.
    Del {
        /// As it was added.
        prefix: String,
    },
    /// Print the list (config entries marked).
    List,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Reload { socket } => cli::reload(&socket).map(|out| print!("{out}")),
        Cmd::Stop {
            pid_file,
            keep_running,
            wait,
        } => stop(&pid_file, keep_running, wait),
        Cmd::Status { socket, json } => {
            if json {
                cli::request(&socket, "status json").map(|out| print!("{out}"))
            } else {
                status(&socket)
            }
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "xdplb", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man => man(&mut std::io::stdout()),
        Cmd::Drain { timeout, socket } => {
            cli::request(&socket, &format!("drain {timeout}")).map(|out| print!("{out}"))
        }
        Cmd::Deny { op, socket } => {
            let line = match op {
                DenyOp::Add { prefix, force } => {
                    format!("deny add {prefix}{}", if force { " force" } else { "" })
                }
                DenyOp::Del { prefix } => format!("deny del {prefix}"),
                DenyOp::List => "deny list".to_string(),
            };
            cli::request(&socket, &line).map(|out| print!("{out}"))
        }
        Cmd::Run {
            config,
            ifaces,
            xdp_mode,
            pin_path,
            status_socket,
            keep_running,
            stats_interval,
            pid_file,
        } => {
            let overrides = daemon::Overrides {
                ifaces,
                xdp_mode: xdp_mode.map(|m| match m.as_str() {
                    "native" => XdpMode::Native,
                    "generic" => XdpMode::Generic,
                    _ => XdpMode::Auto,
                }),
                pin_path,
                status_socket,
            };
            daemon::run(&daemon::Options {
                config,
                overrides,
                stats_interval,
                pid_file,
                keep_running,
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdplb: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        config.services.len(),
        backends
    );
    Ok(())
}

fn stop(pid_file: &Path, keep_running: bool, wait: u64) -> anyhow::Result<()> {
    let (sig, name) = if keep_running {
        (libc::SIGUSR1, "SIGUSR1")
    } else {
        (libc::SIGTERM, "SIGTERM")
    };
    let pid = pid::signal(pid_file, sig, name)?;
    let what = if keep_running {
        "exit leaving the data path forwarding"
    } else {
        "detach, unpin and exit"
    };
    println!("sent {name} to xdplb (pid {pid}): {what}");
    if wait == 0 {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        if !pid::alive(pid) {
            println!("xdplb (pid {pid}) has exited");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("xdplb (pid {pid}) still running after {wait} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(socket: &Path) -> anyhow::Result<()> {
    print!("{}", cli::status(socket)?);
    Ok(())
}

/// The man page of `xdplb` and each of its commands, one after another.
fn man(out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd.clone()).render(out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("xdplb-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone()).title(name).render(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// Every flag and argument of every command says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_id()));
                }
            }
            for sub in c.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "xdplb", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }

    #[test]
    fn completions_and_the_man_page_cover_every_command() {
        let mut cmd = super::Cli::command();
        let mut bash = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "xdplb", &mut bash);
        let bash = String::from_utf8(bash).unwrap();
        let mut man = Vec::new();
        super::man(&mut man).unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH xdplb "), "{man}");
        for sub in super::Cli::command().get_subcommands() {
            let name = sub.get_name();
            assert!(bash.contains(name), "bash completion lacks {name}");
            if name != "help" {
                assert!(
                    man.contains(&format!(".TH xdplb-{name} ")),
                    "man lacks {name}"
                );
            }
        }
        assert!(bash.contains("--status-socket") && man.contains("status\\-socket"));
    }

    #[test]
    fn the_version_names_the_commit() {
        let v = super::Cli::command().render_version();
        assert!(v.contains("(commit "), "{v}");
    }
}
