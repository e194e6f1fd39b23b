//! The TOML configuration: the model (this file), its validation
//! (`validate.rs`) and the errors an operator sees (`error.rs`). Every error
//! names the file, the line where known, the key and the reason.

mod cluster;
#[cfg(test)]
mod cluster_tests;
mod error;
mod files;
mod ha;
#[cfg(test)]
mod ha_tests;
mod names;
mod validate;

pub use cluster::{Announce, ClusterConfig, ClusterSync};
pub use error::{ConfigError, LineSuffix};
pub use ha::{FloatingAddress, HaConfig, MIN_KEY_LEN, Membership, Track};

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use lb_common::{Forwarding, PROTO_TCP, PROTO_UDP, Scheduler, ServiceKey};
use serde::Deserialize;

/// Largest backend weight; weights are relative, this bounds ring sizes.
pub const MAX_WEIGHT: u32 = 1000;
/// Most backends one service may list.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(rename = "service", default)]
    pub services: Vec<ServiceConfig>,
    /// The active-passive pair; none: a single node.
    #[serde(default)]
    pub ha: Option<HaConfig>,
    /// One of several active nodes behind ECMP, announcing its VIPs
    /// through BIRD; none: nothing is announced.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Source lists that apply before any service.
    #[serde(default)]
    pub firewall: FirewallConfig,
}

/// The global part of the data path's firewall.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// Source prefixes whose packets are dropped before anything else (any
    /// IPv4 to any address of the attached interfaces, not just VIPs).
    #[serde(default)]
    pub deny: Vec<Prefix>,
    /// Where `xdplb deny add|del` keeps the run-time deny list, so a
    /// restarted daemon forgets none of it. Changes only on restart.
    #[serde(default = "default_deny_file")]
    pub deny_file: PathBuf,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            deny: Vec::new(),
            deny_file: default_deny_file(),
        }
    }
}

fn default_deny_file() -> PathBuf {
    PathBuf::from("/var/lib/xdplb/deny.list")
}

/// An IPv4 source prefix, "a.b.c.d/n" or a single address "a.b.c.d".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix(pub ipnet::Ipv4Net);

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let net: ipnet::Ipv4Net = match s.parse::<Ipv4Addr>() {
            Ok(a) => ipnet::Ipv4Net::from(a),
            Err(_) => s
                .parse()
                .map_err(|_| format!("{s:?} is not an IPv4 address or prefix (a.b.c.d/n)"))?,
        };
        if net.trunc() != net {
            return Err(format!(
                "{s} has host bits set after /{}; did you mean {}?",
                net.prefix_len(),
                net.trunc()
            ));
        }
        Ok(Prefix(net))
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The daemon's own interfaces: metrics and status.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the Prometheus `/metrics` endpoint; none when unset.
    #[serde(default)]
    pub metrics_address: Option<SocketAddr>,
    /// Unix socket `xdplb status` (and `deny`) talk to the daemon on. It
    /// is created 0600: root and the daemon's user only.
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// A group whose members may use the status socket too (it becomes
    /// 0660 and that group's); every peer's credentials are checked.
    #[serde(default)]
    pub status_socket_group: Option<String>,
    /// Health probes under way at once, at most (each holds a socket). A
    /// probe that finds none free within its timeout is "not run", never a
    /// failure. Read when the daemon starts.
    #[serde(default = "default_max_concurrent_checks")]
    pub max_concurrent_checks: u32,
}

fn default_max_concurrent_checks() -> u32 {
    512
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            metrics_address: None,
            status_socket: default_status_socket(),
            status_socket_group: None,
            max_concurrent_checks: default_max_concurrent_checks(),
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
    /// Entries in the table of half-open TCP connections (SYN seen, no ACK
    /// yet). A SYN flood fills this one, never the flow table; size it for
    /// the handshakes in flight during a flood (rate x round trip).
    #[serde(default = "default_embryonic_table_size")]
    pub embryonic_table_size: u32,
    /// Ask the kernel to keep backends' neighbour entries resolved
    /// (managed neighbours), so the XDP FIB lookup finds their MACs.
    #[serde(default = "default_true")]
    pub manage_neighbours: bool,
    /// bpffs directory the maps and XDP links are pinned under, so forwarding
    /// survives a daemon restart or crash. Empty: no pinning.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Traffic to a VIP that no service forwards (another port or protocol,
    /// fragments, IP options; ICMP excepted).
    #[serde(default)]
    pub unserved_vip: UnservedVip,
    /// Cached next hops are dropped on every routing or neighbour event the
    /// kernel reports, and at least this often in case an event was lost
    /// (a full netlink socket buffer): how long a stale next hop can
    /// outlive a lost event. Each refresh costs every CPU one FIB lookup
    /// per backend. Read when the daemon starts.
    #[serde(default = "default_next_hop_refresh_ms")]
    pub next_hop_refresh_ms: u64,
}

/// What the data path does with traffic to a VIP no service forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnservedVip {
    /// Drop it, so the LB host's own services (sshd, ...) are not reachable
    /// on the VIP, which is a local address of an HA MASTER.
    #[default]
    Drop,
    /// Hand it to the LB host's network stack (the behaviour before).
    Pass,
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
            embryonic_table_size: default_embryonic_table_size(),
            manage_neighbours: true,
            pin_path: default_pin_path(),
            unserved_vip: UnservedVip::default(),
            next_hop_refresh_ms: default_next_hop_refresh_ms(),
        }
    }
}

fn default_flow_table_size() -> u32 {
    lb_common::MAX_FLOWS
}
fn default_embryonic_table_size() -> u32 {
    lb_common::MAX_EMBRYOS
}
fn default_next_hop_refresh_ms() -> u64 {
    1000
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
    /// Sources allowed to reach the service; empty: every source not denied.
    #[serde(default)]
    pub allow: Vec<Prefix>,
    /// Sources refused. The most specific prefix of `allow` and `deny`
    /// decides; the same prefix in both is a config error.
    #[serde(default)]
    pub deny: Vec<Prefix>,
    /// New-connection rate limits; established flows are never limited.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// SYN cookies (NAT TCP services): above this many SYNs per second (to
    /// this LB), the LB answers SYNs itself with a kernel SYN cookie and
    /// opens the backend's connection only for a valid cookie ACK, so a SYN
    /// flood costs no state and never reaches the backends. 0: always.
    /// Absent: never.
    #[serde(default)]
    pub syn_cookie_threshold: Option<u32>,
    /// With `[cluster]`: what lets this service's VIP be announced (a VIP
    /// is announced while any of its services lets it).
    #[serde(default)]
    pub announce: Announce,
    #[serde(rename = "backend", default)]
    pub backends: Vec<BackendConfig>,
}

/// New connections per second a service admits: per client address, and
/// in all. A burst may run ahead of the rate by `*_burst` connections
/// (default: one second's worth).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    #[serde(default)]
    pub per_client: Option<u32>,
    #[serde(default)]
    pub per_client_burst: Option<u32>,
    #[serde(default)]
    pub total: Option<u32>,
    #[serde(default)]
    pub total_burst: Option<u32>,
}

impl RateLimitConfig {
    /// The data path's GCRA parameters.
    pub fn to_map(&self) -> lb_common::RateLimit {
        let gcra = |rate: Option<u32>, burst: Option<u32>| match rate {
            Some(r) if r > 0 => {
                let interval = 1_000_000_000u64 / r as u64;
                let burst = burst.unwrap_or(r).max(1) as u64;
                (interval.max(1), interval * (burst - 1))
            }
            _ => (0, 0),
        };
        let (client_interval_ns, client_tolerance_ns) =
            gcra(self.per_client, self.per_client_burst);
        let (total_interval_ns, total_tolerance_ns) = gcra(self.total, self.total_burst);
        lb_common::RateLimit {
            client_interval_ns,
            client_tolerance_ns,
            total_interval_ns,
            total_tolerance_ns,
            ..Default::default()
        }
    }
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
    /// TLS (SNI from `host`, certificate verified unless `tls_verify =
    /// false`), then the `http` check over it.
    Https,
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
    /// HTTPS: verify the backend's certificate (against `tls_ca_file`, or
    /// the system's trusted roots) and its name (`host`, else its address).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// HTTPS: PEM file of the CA(s) to trust instead of the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// MySQL: which role the server must have.
    #[serde(default)]
    pub mysql_role: MysqlRole,
    /// MySQL: account for the role query (mysql_native_password or
    /// caching_sha2_password).
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
    /// backend. The only passive signal DSR has, but it is the clients':
    /// anyone who can send SYNs to the VIP can raise it (the damage bounded
    /// by `max_out_percent`), so it is off unless set.
    #[serde(default)]
    pub syn_retransmits: u64,
    /// Connections the backend refused: RST acknowledging the SYN, before
    /// any SYN-ACK, from where the backend is (NAT only; DSR replies bypass
    /// the LB). The ordinary resets of a server closing connections do not
    /// count; neither does a RST forged from the client's side.
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

/// A service's key in the data path's service map.
pub fn service_key(vip: Ipv4Addr, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip_be: u32::from(vip).to_be(),
        port_be: port.to_be(),
        proto: protocol.number(),
        _pad: 0,
    }
}

/// One backend of one service. Ids, health and counters are per service, so
/// the same server can be up for a reader VIP and down for a writer VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub service: ServiceKey,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl BackendRef {
    pub fn new(service: ServiceKey, addr: Ipv4Addr, port: u16) -> Self {
        Self {
            service,
            addr,
            port,
        }
    }
}

impl std::fmt::Display for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

impl ServiceConfig {
    /// The service's key in the data path's service map.
    pub fn key(&self) -> ServiceKey {
        service_key(self.vip, self.port, self.protocol)
    }

    /// The identity of one of this service's backends.
    pub fn backend_ref(&self, b: &BackendConfig) -> BackendRef {
        BackendRef::new(self.key(), b.address, b.port)
    }

    /// The data path's `RATE_LIMITS` entry: the rate limits and the
    /// SYN-cookie threshold (a GCRA whose burst is a tenth of a second's
    /// worth: cookies start once SYNs run that far ahead of the rate).
    pub fn limits(&self) -> lb_common::RateLimit {
        let mut m = self
            .rate_limit
            .as_ref()
            .map(|r| r.to_map())
            .unwrap_or_default();
        if let Some(t) = self.syn_cookie_threshold.filter(|t| *t > 0) {
            let interval = (1_000_000_000u64 / u64::from(t)).max(1);
            m.syn_cookie_interval_ns = interval;
            m.syn_cookie_tolerance_ns = interval * (u64::from(t) / 10);
        }
        m
    }

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
    SourceHash,
    LeastConn,
}

impl From<SchedulerKind> for Scheduler {
    fn from(s: SchedulerKind) -> Self {
        match s {
            SchedulerKind::RoundRobin => Scheduler::RoundRobin,
            SchedulerKind::Maglev => Scheduler::Maglev,
            SchedulerKind::SourceHash => Scheduler::SourceHash,
            SchedulerKind::LeastConn => Scheduler::LeastConn,
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

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            file: path.to_owned(),
            error,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| error::from_toml(path, text, "", &e))?;
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            error::from_toml(path, text, &key, e.inner())
        })?;
        config
            .validate()
            .map_err(|(key, reason)| ConfigError::Invalid {
                file: path.to_owned(),
                line: LineSuffix(error::line_of(text, &key)),
                key,
                reason,
            })?;
        Ok(config)
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
    fn rate_limits_become_gcra_parameters() {
        let r = RateLimitConfig {
            per_client: Some(50),
            per_client_burst: Some(10),
            total: Some(1000),
            total_burst: None,
        }
        .to_map();
        assert_eq!(r.client_interval_ns, 20_000_000);
        assert_eq!(r.client_tolerance_ns, 9 * 20_000_000, "burst 10: 9 ahead");
        assert_eq!(r.total_interval_ns, 1_000_000);
        assert_eq!(
            r.total_tolerance_ns,
            999 * 1_000_000,
            "burst defaults to a second's worth"
        );
        let none = RateLimitConfig {
            per_client: None,
            per_client_burst: None,
            total: Some(1),
            total_burst: None,
        }
        .to_map();
        assert_eq!((none.client_interval_ns, none.total_tolerance_ns), (0, 0));
    }

    #[test]
    fn syn_cookie_thresholds_become_a_meter() {
        let text = |t: &str| {
            GOOD.replace(
                "forwarding = \"dsr\"",
                &format!("forwarding = \"nat\"\n{t}"),
            )
        };
        let limits = |t: &str| {
            Config::parse(Path::new("x.toml"), &text(t))
                .unwrap()
                .services[0]
                .limits()
        };
        let m = limits("syn_cookie_threshold = 1000");
        assert_eq!(m.syn_cookie_interval_ns, 1_000_000);
        assert_eq!(
            m.syn_cookie_tolerance_ns,
            100 * 1_000_000,
            "a tenth of a second ahead"
        );
        let always = limits("syn_cookie_threshold = 0");
        assert_eq!(always.syn_cookie_interval_ns, 0, "0: always");
        let config = Config::parse(Path::new("x.toml"), &text("syn_cookie_threshold = 0")).unwrap();
        assert!(config.services[0].syn_cookie_threshold.is_some());
        let off = Config::parse(Path::new("x.toml"), &text("")).unwrap();
        assert_eq!(off.services[0].syn_cookie_threshold, None, "absent: never");
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
            (
                "protocol = \"tcp\"\nscheduler = \"maglev\"",
                "protocol = \"udp\"\nscheduler = \"least_conn\"",
                "service[0].scheduler",
                "a UDP flow never closes",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nallow = [\"198.51.100.1/24\"]",
                "service[0].allow[0]",
                "did you mean 198.51.100.0/24",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\ndeny = [\"example.com\"]",
                "service[0].deny[0]",
                "not an IPv4 address or prefix",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nallow = [\"10.0.0.0/8\"]\ndeny = [\"10.0.0.0/8\"]",
                "service[0].deny",
                "in allow too",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nrate_limit = { per_client = 0 }",
                "service[0].rate_limit.per_client",
                "at least 1",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nrate_limit = { total_burst = 5 }",
                "service[0].rate_limit",
                "sets no limit",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nrate_limit = { per_client = 5, total_burst = 5 }",
                "service[0].rate_limit",
                "a burst needs its rate",
            ),
            (
                "forwarding = \"dsr\"",
                "forwarding = \"dsr\"\nsyn_cookie_threshold = 1000",
                "service[0].syn_cookie_threshold",
                "need a NAT TCP service",
            ),
            (
                "protocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"dsr\"",
                "protocol = \"udp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nsyn_cookie_threshold = 0",
                "service[0].syn_cookie_threshold",
                "need a NAT TCP service",
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
    fn validation_errors_name_the_line_of_the_key() {
        // GOOD's backend port is on line 11.
        let e = Config::parse(
            Path::new("/etc/xdplb/lb.toml"),
            &GOOD.replace(
                "address = \"203.0.113.11\"\nport = 80",
                "address = \"203.0.113.11\"\nport = 8080",
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/etc/xdplb/lb.toml:11: service[0].backend[0].port: 8080 differs"),
            "{e}"
        );
        // The second service's name (line 14) repeats the first's.
        let e = Config::parse(Path::new("x.toml"), &format!("{GOOD}{GOOD}"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:14: service[1].name:"), "{e}");
        // A key the document lacks points at its nearest parent (the
        // service's table, whose header is on line 2).
        let nobackend = GOOD.split("[[service.backend]]").next().unwrap();
        let e = Config::parse(Path::new("x.toml"), nobackend)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.toml:2: service[0].backend:"), "{e}");
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
        // The cause is said once, also in an error chain.
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }
}
