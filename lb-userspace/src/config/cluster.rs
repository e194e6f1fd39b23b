//! `[cluster]`: this node is one of several active load balancers behind
//! routers that spread packets over them by ECMP. It announces each VIP it
//! can serve through the local routing daemon (BIRD): the daemon keeps one
//! route per announced VIP in a kernel routing table of its own, which
//! BIRD's `protocol kernel` learns and its BGP sessions announce.
//! Model and validation (the rest of the config's validation is in
//! `validate.rs`).

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;

use super::{
    ha::{HaConfig, Membership},
    names::interface_name_ok,
};

/// Routing tables the kernel itself uses: `unspec`, `default`, `main`,
/// `local`.
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// Route protocol numbers the kernel and iproute2 give a meaning
/// (`unspec`, `redirect`, `kernel`, `boot`, `static`) and BIRD's own (12):
/// BIRD does not learn `kernel` routes, and would take `bird` ones for its
/// own.
const RESERVED_PROTOCOLS: [u8; 6] = [0, 1, 2, 3, 4, 12];

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Kernel routing table that holds one blackhole /32 route per
    /// announced VIP. No rule points at it, so it never routes a packet: it
    /// is only where BIRD learns what to announce (`kernel table N; learn`).
    #[serde(default = "default_announce_table")]
    pub announce_table: u32,
    /// Protocol number those routes carry (`ip route show table N proto
    /// P`): the daemon removes only routes of its own, and BIRD learns them
    /// as routes of another program.
    #[serde(default = "default_route_protocol")]
    pub route_protocol: u8,
    /// On a clean stop, time between withdrawing every VIP and detaching
    /// the data path: the routers hear of the withdrawal (BIRD's BGP update)
    /// and move new connections to the other nodes while this one still
    /// forwards what reaches it.
    #[serde(default = "default_withdraw_grace_ms")]
    pub withdraw_grace_ms: u32,
    /// BIRD's control socket, read (as `birdc` does) for the state of its
    /// BGP sessions in `status` and the metrics.
    #[serde(default = "default_bird_socket")]
    pub bird_socket: PathBuf,
    /// Flow sync between the nodes (`[cluster.sync]`): without it, only
    /// Maglev and source_hash keep connections when ECMP moves them.
    #[serde(default)]
    pub sync: Option<ClusterSync>,
}

/// `[cluster.sync]`: every node sends the flows it opens to every peer and
/// writes theirs into its own table, so a connection ECMP moves to another
/// node finds its backend there whatever the scheduler (round robin,
/// least_conn, NAT). The HA pair's node, wire format and key, in its
/// active-active membership (`docs/cluster.md`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSync {
    /// Interface the sync datagrams use.
    pub interface: String,
    /// This node's address on `interface`; its first IPv4 address when unset.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// Every node of the cluster; the node's own address may be listed (it
    /// is skipped), so one file serves every node.
    pub peers: Vec<Ipv4Addr>,
    #[serde(default = "default_sync_port")]
    pub port: u16,
    /// Nodes of another group are not listened to (counted).
    #[serde(default = "default_group")]
    pub group: u8,
    /// The shared HMAC-SHA256 key (at least 16 bytes; mode 0600, root's).
    pub key_file: PathBuf,
    /// A node says it is alive this often; a peer heard for the first time
    /// in its life (a restart, a new node) is sent this node's flow table.
    #[serde(default = "default_sync_advert_ms")]
    pub advert_interval_ms: u32,
    /// A starting node announces its VIPs once every live peer has sent it
    /// its flow table, or after this long (a peer that is down sends none).
    #[serde(default = "default_join_wait_ms")]
    pub join_wait_ms: u32,
    /// Peers' epochs and sequence numbers across restarts (replay
    /// protection), as the pair's `state_file`.
    #[serde(default = "default_sync_state_file")]
    pub state_file: PathBuf,
}

impl ClusterSync {
    /// The node's settings: the pair's, in the cluster membership (no
    /// election, no addresses, no tracking).
    pub fn membership(&self) -> HaConfig {
        HaConfig {
            group: self.group,
            priority: 100,
            interface: self.interface.clone(),
            address: self.address,
            peers: self.peers.clone(),
            port: self.port,
            advert_interval_ms: self.advert_interval_ms,
            preempt: false,
            preempt_delay_ms: 0,
            key_file: self.key_file.clone(),
            vip_interface: self.interface.clone(),
            floating: Vec::new(),
            track_interface: Vec::new(),
            track_service: Vec::new(),
            garp_repeat: 0,
            garp_interval_ms: 100,
            garp_master_delay_ms: 0,
            notify: None,
            notify_timeout_ms: 5000,
            sync_flows: true,
            state_file: self.state_file.clone(),
            // Sync is not failover-critical as the pair's adverts are.
            realtime_priority: 0,
            membership: Membership::Cluster,
            join_wait_ms: self.join_wait_ms,
        }
    }
}

fn default_sync_port() -> u16 {
    5789
}
fn default_group() -> u8 {
    1
}
fn default_sync_advert_ms() -> u32 {
    200
}
fn default_join_wait_ms() -> u32 {
    3000
}
fn default_sync_state_file() -> PathBuf {
    PathBuf::from("/var/lib/xdplb/cluster-peers")
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            announce_table: default_announce_table(),
            route_protocol: default_route_protocol(),
            withdraw_grace_ms: default_withdraw_grace_ms(),
            bird_socket: default_bird_socket(),
            sync: None,
        }
    }
}

fn default_announce_table() -> u32 {
    4242
}

fn default_route_protocol() -> u8 {
    242
}

fn default_withdraw_grace_ms() -> u32 {
    2000
}

/// Debian's `bird2` package.
fn default_bird_socket() -> PathBuf {
    PathBuf::from("/run/bird/bird.ctl")
}

/// When a service lets its VIP be announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Announce {
    /// While at least one backend takes new connections.
    #[default]
    Any,
    /// While more than half of its backends (of weight > 0) do.
    Quorum,
}

impl Announce {
    pub fn label(self) -> &'static str {
        match self {
            Announce::Any => "any",
            Announce::Quorum => "quorum",
        }
    }
}

pub(super) fn validate(c: &ClusterConfig, with_ha: bool) -> Result<(), (String, String)> {
    let at = |k: &str| format!("cluster.{k}");
    if with_ha {
        return Err((
            "cluster".into(),
            "[cluster] and [ha] together are not supported: an active-passive pair moves its VIPs by ARP; use one of them".into(),
        ));
    }
    if RESERVED_TABLES.contains(&c.announce_table) {
        return Err((
            at("announce_table"),
            format!(
                "{} is a table the kernel uses (0, 253 default, 254 main, 255 local); choose one of the daemon's own",
                c.announce_table
            ),
        ));
    }
    if RESERVED_PROTOCOLS.contains(&c.route_protocol) {
        return Err((
            at("route_protocol"),
            format!(
                "{} is reserved (0-4: the kernel's and static routes, 12: BIRD's own); choose one of the daemon's own, such as 242",
                c.route_protocol
            ),
        ));
    }
    if c.withdraw_grace_ms > 60_000 {
        return Err((
            at("withdraw_grace_ms"),
            "at most 60000 (a stop waits this long)".into(),
        ));
    }
    if let Some(s) = &c.sync {
        validate_sync(s)?;
    }
    Ok(())
}

fn validate_sync(s: &ClusterSync) -> Result<(), (String, String)> {
    let at = |k: &str| format!("cluster.sync.{k}");
    if !interface_name_ok(&s.interface) {
        return Err((
            at("interface"),
            format!("{:?} is not a valid interface name", s.interface),
        ));
    }
    if s.peers.is_empty() {
        return Err((at("peers"), "name at least one peer address".into()));
    }
    for (i, p) in s.peers.iter().enumerate() {
        if p.is_unspecified() || p.is_multicast() || p.is_broadcast() || p.is_loopback() {
            return Err((
                at(&format!("peers[{i}]")),
                format!("{p} is not a unicast peer"),
            ));
        }
        if s.peers[..i].contains(p) {
            return Err((at(&format!("peers[{i}]")), format!("{p} is listed twice")));
        }
    }
    if s.group == 0 {
        return Err((at("group"), "must be 1..=255".into()));
    }
    if s.port == 0 {
        return Err((at("port"), "must be 1..=65535".into()));
    }
    if !(10..=40_950).contains(&s.advert_interval_ms) {
        return Err((at("advert_interval_ms"), "must be 10..=40950".into()));
    }
    if s.join_wait_ms > 60_000 {
        return Err((
            at("join_wait_ms"),
            "at most 60000 (the VIPs wait this long)".into(),
        ));
    }
    s.membership().read_key().map_err(|e| (at("key_file"), e))?;
    Ok(())
}
