//! What `xdplb run` is told: the command line's settings, the config file
//! they override, and the checks made on it before anything else.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tracing::{info, warn};

use crate::config::{Config, XdpMode};

/// Command-line settings that replace the config file's.
pub struct Overrides {
    pub ifaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub pin_path: Option<PathBuf>,
    pub status_socket: Option<PathBuf>,
}

pub struct Options {
    pub config: PathBuf,
    pub overrides: Overrides,
    pub stats_interval: u64,
    pub pid_file: PathBuf,
    pub keep_running: bool,
}

/// Read and validate the config (`Config::load` does), apply the overrides
/// and check that every interface exists here (which also rejects a bad
/// `--iface` name).
pub(super) fn read_config(path: &Path, o: &Overrides) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if !o.ifaces.is_empty() {
        config.dataplane.interfaces = o.ifaces.clone();
    }
    if let Some(m) = o.xdp_mode {
        config.dataplane.xdp_mode = m;
    }
    if let Some(p) = &o.pin_path {
        config.dataplane.pin_path = p.clone();
    }
    if let Some(p) = &o.status_socket {
        config.control.status_socket = p.clone();
    }
    if config.dataplane.interfaces.is_empty() {
        bail!(
            "{}: dataplane.interfaces: no interface to attach to (set it or pass --iface)",
            path.display()
        );
    }
    for iface in &config.dataplane.interfaces {
        let c = std::ffi::CString::new(iface.as_str()).context("interface name")?;
        // SAFETY: valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            bail!(
                "{}: dataplane.interfaces: no interface named {iface:?} in this network namespace",
                path.display()
            );
        }
    }
    Ok(config)
}

/// The kernel's FIB refuses to forward packets that arrive on an interface
/// with IPv4 forwarding off, and the data path then drops them
/// (`drop_no_route`). Say so at start-up rather than leave it to counters.
pub(super) fn warn_if_forwarding_off(ifaces: &[String]) {
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/forwarding");
        if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
            warn!(
                iface = %iface,
                "IPv4 forwarding is off on this interface: the kernel's FIB will not give next hops for packets arriving on it, so they are dropped (drop_no_route); set net.ipv4.conf.{iface}.forwarding=1 (or net.ipv4.ip_forward=1)"
            );
        }
    }
}

pub(super) fn log_services(config: &Config) {
    for c in &config.services {
        info!(
            service = %c.name,
            vip = %format!("{}:{}", c.vip, c.port),
            protocol = ?c.protocol,
            scheduler = ?c.scheduler,
            forwarding = ?c.forwarding,
            backends = c.backends.len(),
            check = ?c.check.as_ref().map(|k| k.kind),
            "serving"
        );
    }
}
