//! `[cluster]`: this node is one of several active load balancers behind
//! routers that spread packets over them by ECMP. It announces each VIP it
//! can serve through the local routing daemon (BIRD): the daemon keeps one
//! route per announced VIP in a kernel routing table of its own, which
//! BIRD's `protocol kernel` learns and its BGP sessions announce.
//! Model and validation (the rest of the config's validation is in
//! `validate.rs`).

use std::path::PathBuf;

use serde::Deserialize;

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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            announce_table: default_announce_table(),
            route_protocol: default_route_protocol(),
            withdraw_grace_ms: default_withdraw_grace_ms(),
            bird_socket: default_bird_socket(),
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
    Ok(())
}
