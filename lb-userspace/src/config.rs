//! The TOML configuration: parsing, validation and the errors an operator
//! sees. Every error names the file, the key and the reason.

use std::{
    collections::HashSet,
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use lb_common::{Forwarding, MAX_BACKENDS, MAX_SERVICES, PROTO_TCP, PROTO_UDP, Scheduler};
use serde::Deserialize;

/// Largest backend weight; weights are relative, this bounds ring sizes.
pub const MAX_WEIGHT: u32 = 1000;
/// Most backends one service may list.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;
const IFNAMSIZ: usize = 16;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceConfig>,
}

/// The daemon's own interfaces: metrics and status.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// Unix socket `xdplb status` reads the daemon's state from.
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            metrics_address: None,
            status_socket: default_status_socket(),
        }
    }
}

fn default_status_socket() -> PathBuf {
    PathBuf::from("/run/xdplb.sock")
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// Interfaces to attach to (client-facing and, for NAT, backend-facing).
    /// `--iface` on the command line replaces this list.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Entries in the flow table (and the reverse-NAT table).
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// Ask the kernel to keep backends' neighbour entries resolved
    /// (managed neighbours), so the XDP FIB lookup finds their MACs.
    #[serde(default = "default_true")]
    pub manage_neighbours: bool,
    /// bpffs directory the maps and XDP links are pinned under, so forwarding
    /// survives a daemon restart or crash. Empty: no pinning.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
}

fn default_pin_path() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/xdplb")
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::default(),
            flow_table_size: default_flow_table_size(),
            manage_neighbours: true,
            pin_path: default_pin_path(),
        }
    }
}

fn default_flow_table_size() -> u32 {
    lb_common::MAX_FLOWS
}
fn default_true() -> bool {
    true
}

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic with a logged reason.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: SchedulerKind,
    pub forwarding: ForwardingKind,
    /// What the service does while no backend is up.
    #[serde(default)]
    pub when_empty: WhenEmpty,
    /// Active health check; without one every backend counts as up.
    #[serde(default)]
    pub check: Option<CheckConfig>,
    /// Passive health from the data path's counters (needs `check`, which
    /// brings a passively failed backend back).
    #[serde(default)]
    pub passive: Option<PassiveConfig>,
    /// NAT, TCP: when a backend refuses a connection (RST answering the SYN),
    /// withhold the RST and send the client's retried SYN to another backend
    /// (once). On by default where it applies.
    #[serde(default)]
    pub redispatch: Option<bool>,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

/// Policy for a service whose backends are all down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenEmpty {
    /// Drop the packets (clients time out or retry).
    #[default]
    Drop,
    /// Hand them to the local network stack (e.g. a sorry server or a RST).
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// TCP connect.
    Tcp,
    /// HTTP/1.0 GET; the status must be in `status`.
    Http,
    /// Read the MySQL server greeting; optionally log in and check the role.
    Mysql,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MysqlRole {
    /// Any server that greets.
    #[default]
    Any,
    /// `@@global.read_only = 0`: the primary (writer VIP).
    ReadWrite,
    /// `@@global.read_only = 1`: a replica (reader VIP).
    ReadOnly,
}

/// Active health check, HAProxy style.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    pub kind: CheckKind,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Port to check; the backend's port when unset.
    #[serde(default)]
    pub port: Option<u16>,
    /// HTTP: path to GET.
    #[serde(default = "default_http_path")]
    pub path: String,
    /// HTTP: Host header; none when unset.
    #[serde(default)]
    pub host: Option<String>,
    /// HTTP: accepted status codes, inclusive `[low, high]`.
    #[serde(default = "default_http_status")]
    pub status: [u16; 2],
    /// MySQL: which role the server must have.
    #[serde(default)]
    pub mysql_role: MysqlRole,
    /// MySQL: account for the role query (mysql_native_password).
    #[serde(default)]
    pub mysql_user: Option<String>,
    #[serde(default)]
    pub mysql_password: Option<String>,
}

fn default_interval_ms() -> u64 {
    2000
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_http_path() -> String {
    "/".into()
}
fn default_http_status() -> [u16; 2] {
    [200, 399]
}

/// Passive health: thresholds on what the data path saw per backend within
/// one `window_ms`. 0 disables a signal. A passive failure stops new
/// connections to the backend; its established flows stay (only the active
/// check, failing `fall` times, moves them).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Client SYNs retransmitted (same ISN) on connections pinned to the
    /// backend.
    #[serde(default)]
    pub syn_retransmits: u64,
    /// Connections the backend refused: RST answering the SYN, before any
    /// SYN-ACK (NAT only; DSR replies bypass the LB). The ordinary resets of
    /// a server closing connections do not count.
    #[serde(default)]
    pub refused: u64,
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Passive health never takes more than this share of the service's
    /// backends out of new connections at once (and never the last one), so
    /// legitimate overload cannot empty a service.
    #[serde(default = "default_max_out_percent")]
    pub max_out_percent: u32,
}

fn default_max_out_percent() -> u32 {
    50
}

fn default_window_ms() -> u64 {
    1000
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: Ipv4Addr,
    pub port: u16,
    /// Relative share of new flows; 0 drains the backend (no new flows).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl ServiceConfig {
    /// Whether refused connections are redispatched (NAT TCP, unless off).
    pub fn redispatches(&self) -> bool {
        self.forwarding == ForwardingKind::Nat
            && self.protocol == Protocol::Tcp
            && self.redispatch.unwrap_or(true)
    }
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    RoundRobin,
    Maglev,
}

impl From<SchedulerKind> for Scheduler {
    fn from(s: SchedulerKind) -> Self {
        match s {
            SchedulerKind::RoundRobin => Scheduler::RoundRobin,
            SchedulerKind::Maglev => Scheduler::Maglev,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardingKind {
    Dsr,
    Nat,
}

impl From<ForwardingKind> for Forwarding {
    fn from(f: ForwardingKind) -> Self {
        match f {
            ForwardingKind::Dsr => Forwarding::Dsr,
            ForwardingKind::Nat => Forwarding::Nat,
        }
    }
}

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}{line}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        /// ":LINE" when known, else empty.
        line: LineSuffix,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct LineSuffix(pub Option<usize>);

impl fmt::Display for LineSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, ":{n}"),
            None => Ok(()),
        }
    }
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(path, text, "", &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            toml_error(path, text, &key, e.inner())
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                file: path.to_owned(),
                line: LineSuffix::default(),
                key,
                reason,
            })?;
        Ok(config)
    }

    /// Checks serde cannot express. Returns (key, reason) of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let dp = &self.dataplane;
        for (i, name) in dp.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', ' ']) {
                return Err((
                    format!("dataplane.interfaces[{i}]"),
                    format!("{name:?} is not a valid interface name"),
                ));
            }
        }
        if !(1024..=(1 << 24)).contains(&dp.flow_table_size) {
            return Err((
                "dataplane.flow_table_size".into(),
                format!("{} is outside 1024..=16777216", dp.flow_table_size),
            ));
        }
        if self.services.is_empty() {
            return Err((
                "service".into(),
                "at least one [[service]] is required".into(),
            ));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err((
                "service".into(),
                format!(
                    "{} services; the data path holds at most {MAX_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        // Backend ids are per service, so every listed backend takes one.
        let mut all_backends = 0usize;
        for (i, s) in self.services.iter().enumerate() {
            let at = |k: &str| format!("service[{i}].{k}");
            if s.name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(s.name.as_str()) {
                return Err((
                    at("name"),
                    format!("{:?} is used by another service", s.name),
                ));
            }
            if s.vip.is_unspecified() || s.vip.is_multicast() || s.vip.is_broadcast() {
                return Err((at("vip"), format!("{} cannot be a virtual IP", s.vip)));
            }
            if s.port == 0 {
                return Err((at("port"), "must be 1..=65535".into()));
            }
            if !keys.insert((s.vip, s.port, s.protocol)) {
                return Err((
                    at("vip"),
                    format!(
                        "{}:{} {:?} is already served by another service",
                        s.vip, s.port, s.protocol
                    ),
                ));
            }
            if s.backends.is_empty() {
                return Err((
                    at("backend"),
                    "at least one [[service.backend]] is required".into(),
                ));
            }
            if s.backends.len() > MAX_BACKENDS_PER_SERVICE {
                return Err((
                    at("backend"),
                    format!(
                        "{} backends; at most {MAX_BACKENDS_PER_SERVICE}",
                        s.backends.len()
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for (j, b) in s.backends.iter().enumerate() {
                let bat = |k: &str| format!("service[{i}].backend[{j}].{k}");
                if b.address.is_unspecified()
                    || b.address.is_multicast()
                    || b.address.is_broadcast()
                {
                    return Err((bat("address"), format!("{} cannot be a backend", b.address)));
                }
                if b.port == 0 {
                    return Err((bat("port"), "must be 1..=65535".into()));
                }
                if s.forwarding == ForwardingKind::Dsr && b.port != s.port {
                    return Err((
                        bat("port"),
                        format!(
                            "{} differs from the service port {}; DSR forwards without rewriting ports (use forwarding = \"nat\")",
                            b.port, s.port
                        ),
                    ));
                }
                if b.weight > MAX_WEIGHT {
                    return Err((
                        bat("weight"),
                        format!("{} is above the maximum {MAX_WEIGHT}", b.weight),
                    ));
                }
                if !seen.insert((b.address, b.port)) {
                    return Err((
                        bat("address"),
                        format!("{}:{} is listed twice", b.address, b.port),
                    ));
                }
                all_backends += 1;
            }
            if let Some(c) = &s.check {
                validate_check(c, &at)?;
            }
            if let Some(p) = &s.passive {
                if s.check.is_none() {
                    return Err((
                        at("passive"),
                        "needs an active [service.check]: it is what brings a passively failed backend back".into(),
                    ));
                }
                if !(100..=60_000).contains(&p.window_ms) {
                    return Err((at("passive.window_ms"), "must be 100..=60000".into()));
                }
                if p.refused > 0 && s.forwarding == ForwardingKind::Dsr {
                    return Err((
                        at("passive.refused"),
                        "DSR replies bypass the load balancer, so it never sees a backend refuse a connection (use syn_retransmits)".into(),
                    ));
                }
                if !(1..=100).contains(&p.max_out_percent) {
                    return Err((at("passive.max_out_percent"), "must be 1..=100".into()));
                }
                if s.protocol == Protocol::Udp && (p.refused > 0 || p.syn_retransmits > 0) {
                    return Err((
                        at("passive"),
                        "passive signals are TCP's; this service is UDP".into(),
                    ));
                }
            }
            if s.redispatch == Some(true)
                && (s.forwarding == ForwardingKind::Dsr || s.protocol == Protocol::Udp)
            {
                return Err((
                    at("redispatch"),
                    "applies to NAT TCP services only: the load balancer must see the backend refuse a connection".into(),
                ));
            }
            if s.backends.iter().all(|b| b.weight == 0) {
                return Err((
                    at("backend"),
                    "every backend has weight 0; no flow could be scheduled".into(),
                ));
            }
        }
        if all_backends > MAX_BACKENDS as usize {
            return Err((
                "service".into(),
                format!(
                    "{all_backends} backends over all services; the data path holds at most {MAX_BACKENDS}"
                ),
            ));
        }
        Ok(())
    }
}

fn validate_check(c: &CheckConfig, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if !(100..=3_600_000).contains(&c.interval_ms) {
        return Err((at("check.interval_ms"), "must be 100..=3600000".into()));
    }
    if c.timeout_ms < 10 || c.timeout_ms > c.interval_ms {
        return Err((
            at("check.timeout_ms"),
            format!("must be 10..=interval_ms ({})", c.interval_ms),
        ));
    }
    for (k, v) in [("check.rise", c.rise), ("check.fall", c.fall)] {
        if !(1..=100).contains(&v) {
            return Err((at(k), "must be 1..=100".into()));
        }
    }
    if c.port == Some(0) {
        return Err((at("check.port"), "must be 1..=65535".into()));
    }
    match c.kind {
        CheckKind::Http => {
            if !c.path.starts_with('/') || c.path.contains([' ', '\r', '\n']) {
                return Err((
                    at("check.path"),
                    format!("{:?} is not an HTTP path", c.path),
                ));
            }
            if c.host
                .as_deref()
                .is_some_and(|h| h.is_empty() || h.contains([' ', '\r', '\n']))
            {
                return Err((at("check.host"), "not a valid Host header value".into()));
            }
            let [lo, hi] = c.status;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err((
                    at("check.status"),
                    format!("[{lo}, {hi}] is not a range of HTTP status codes"),
                ));
            }
        }
        CheckKind::Mysql => {
            if c.mysql_role != MysqlRole::Any && c.mysql_user.is_none() {
                return Err((
                    at("check.mysql_user"),
                    "a mysql_role check logs in to ask @@global.read_only; set mysql_user".into(),
                ));
            }
        }
        CheckKind::Tcp => {}
    }
    Ok(())
}

fn toml_error(path: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    ConfigError::Invalid {
        file: path.to_owned(),
        line: LineSuffix(line),
        key: if key.is_empty() || key == "." {
            "(document)".into()
        } else {
            key.into()
        },
        reason: e.message().trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[service]]
name = "www"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
[[service.backend]]
address = "203.0.113.11"
port = 80
"#;

    /// Parse `text`, expect an error, return (key, message).
    fn err(text: &str) -> (String, String) {
        let e = Config::parse(Path::new("/etc/xdplb/lb.toml"), text)
            .expect_err("config should be rejected");
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/xdplb/lb.toml"),
            "error names the file: {msg}"
        );
        (e.key().unwrap_or_default().to_string(), msg)
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(Path::new("x.toml"), GOOD).unwrap();
        assert_eq!(c.services[0].backends[0].weight, 1);
        assert_eq!(c.dataplane.xdp_mode, XdpMode::Auto);
        assert!(c.dataplane.manage_neighbours);
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let (key, msg) = err(&GOOD.replace(
            "port = 80\nprotocol",
            "port = 80\nprotocoll = \"tcp\"\nprotocol",
        ));
        assert_eq!(key, "service[0].protocoll", "{msg}");
        assert!(
            msg.contains("lb.toml:6: ") && msg.contains("unknown field"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "vip = \"192.0.2.10\"",
                "vip = \"192.0.2.300\"",
                "service[0].vip",
                "invalid",
            ),
            (
                "scheduler = \"maglev\"",
                "scheduler = \"random\"",
                "service[0].scheduler",
                "unknown variant",
            ),
            (
                "port = 80\nprotocol",
                "port = 0\nprotocol",
                "service[0].port",
                "1..=65535",
            ),
            (
                "vip = \"192.0.2.10\"",
                "vip = \"0.0.0.0\"",
                "service[0].vip",
                "cannot be a virtual IP",
            ),
            (
                "address = \"203.0.113.11\"\nport = 80",
                "address = \"203.0.113.11\"\nport = 81",
                "service[0].backend[0].port",
                "DSR",
            ),
            (
                "address = \"203.0.113.11\"\nport = 80",
                "address = \"203.0.113.11\"\nport = 80\nweight = 0",
                "service[0].backend",
                "weight 0",
            ),
            (
                "address = \"203.0.113.11\"\nport = 80",
                "address = \"203.0.113.11\"\nport = 80\nweight = 1001",
                "service[0].backend[0].weight",
                "maximum",
            ),
        ];
        for (from, to, key, reason) in cases {
            let (k, msg) = err(&GOOD.replace(from, to));
            assert_eq!(&k, key, "{msg}");
            assert!(msg.contains(reason), "{msg} should say {reason:?}");
        }
    }

    #[test]
    fn cross_entry_rules() {
        let (k, msg) = err("");
        assert_eq!(k, "service", "{msg}");
        let dup = format!(
            "{GOOD}{}",
            GOOD.replace("name = \"www\"", "name = \"www2\"")
        );
        let (k, msg) = err(&dup);
        assert_eq!(k, "service[1].vip", "{msg}");
        assert!(msg.contains("already served"), "{msg}");
        let same_name = format!("{GOOD}{}", GOOD.replace("port = 80", "port = 443"));
        let (k, _) = err(&same_name);
        assert_eq!(k, "service[1].name");
        let twice = format!("{GOOD}[[service.backend]]\naddress = \"203.0.113.11\"\nport = 80\n");
        let (k, msg) = err(&twice);
        assert_eq!(k, "service[0].backend[1].address", "{msg}");
        let nobackend = GOOD.split("[[service.backend]]").next().unwrap();
        let (k, _) = err(nobackend);
        assert_eq!(k, "service[0].backend");
        let (k, _) = err(&format!("[dataplane]\nflow_table_size = 10\n{GOOD}"));
        assert_eq!(k, "dataplane.flow_table_size");
        let (k, _) = err(&format!("[dataplane]\ninterfaces = [\"\"]\n{GOOD}"));
        assert_eq!(k, "dataplane.interfaces[0]");
    }

    #[test]
    fn checks_and_passive_are_validated() {
        let with = |extra: &str| {
            GOOD.replace(
                "[[service.backend]]",
                &format!("{extra}\n[[service.backend]]"),
            )
        };
        let ok = Config::parse(
            Path::new("x.toml"),
            &with("[service.check]\nkind = \"http\"\npath = \"/health\"\n[service.passive]\nsyn_retransmits = 3"),
        )
        .unwrap();
        let c = ok.services[0].check.as_ref().unwrap();
        assert_eq!(
            (c.interval_ms, c.timeout_ms, c.rise, c.fall, c.status),
            (2000, 1000, 2, 3, [200, 399])
        );
        let cases: &[(&str, &str, &str)] = &[
            (
                "[service.check]\nkind = \"tcp\"\ntimeout_ms = 5000",
                "service[0].check.timeout_ms",
                "interval_ms",
            ),
            (
                "[service.check]\nkind = \"tcp\"\nfall = 0",
                "service[0].check.fall",
                "1..=100",
            ),
            (
                "[service.check]\nkind = \"http\"\nstatus = [300, 200]",
                "service[0].check.status",
                "range",
            ),
            (
                "[service.check]\nkind = \"http\"\npath = \"health\"",
                "service[0].check.path",
                "HTTP path",
            ),
            (
                "[service.check]\nkind = \"mysql\"\nmysql_role = \"read_write\"",
                "service[0].check.mysql_user",
                "log",
            ),
            (
                "[service.check]\nkind = \"smtp\"",
                "service[0].check.kind",
                "unknown variant",
            ),
            (
                "[service.passive]\nsyn_retransmits = 3",
                "service[0].passive",
                "active",
            ),
            (
                "[service.check]\nkind = \"tcp\"\n[service.passive]\nrefused = 3",
                "service[0].passive.refused",
                "DSR",
            ),
            (
                "[service.check]\nkind = \"tcp\"\n[service.passive]\nresets = 3",
                "service[0].passive.resets",
                "unknown field",
            ),
            (
                "[service.check]\nkind = \"tcp\"\n[service.passive]\nsyn_retransmits = 3\nmax_out_percent = 0",
                "service[0].passive.max_out_percent",
                "1..=100",
            ),
            ("redispatch = true", "service[0].redispatch", "NAT TCP"),
        ];
        for (extra, key, reason) in cases {
            let (k, msg) = err(&with(extra));
            assert_eq!(&k, key, "{msg}");
            assert!(msg.contains(reason), "{msg} should say {reason:?}");
        }
    }

    #[test]
    fn toml_syntax_error_has_a_line() {
        let (_, msg) = err("[[service]\nname = 1");
        assert!(msg.contains("/etc/xdplb/lb.toml:1:"), "{msg}");
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let e = Config::load(Path::new("/nonexistent/xdplb.toml")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/nonexistent/xdplb.toml: cannot read"),
            "{e}"
        );
    }
}
