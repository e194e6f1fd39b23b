//! `[ha]`: the active-passive pair. Model and its validation (the rest of
//! the config's validation is in `validate.rs`).

use std::{net::Ipv4Addr, path::PathBuf};

use serde::Deserialize;

use super::{files, names::interface_name_ok};

/// Shortest HMAC key accepted (bytes): 128 bits.
pub const MIN_KEY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Virtual router id: both nodes of a pair use the same; adverts of
    /// another group are ignored (and counted).
    pub group: u8,
    /// 1..=254; the higher wins MASTER; equal priorities: the higher address.
    pub priority: u8,
    /// Interface the heartbeats (and flow sync) use.
    pub interface: String,
    /// This node's address on `interface`; its first IPv4 address when unset.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// The other node(s), unicast.
    pub peers: Vec<Ipv4Addr>,
    /// UDP port of heartbeats and flow sync.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_advert_interval_ms")]
    pub advert_interval_ms: u32,
    /// Take MASTER back from a lower-priority MASTER.
    #[serde(default = "default_true")]
    pub preempt: bool,
    /// Wait this long (seeing the lower MASTER, and ready to forward)
    /// before preempting it.
    #[serde(default = "default_preempt_delay_ms")]
    pub preempt_delay_ms: u32,
    /// The shared HMAC-SHA256 key; must not be readable by others.
    pub key_file: PathBuf,
    /// Client-facing interface the VIPs are added to on MASTER.
    pub vip_interface: String,
    /// More addresses the MASTER owns, e.g. the inside gateway NAT backends
    /// route through.
    #[serde(default)]
    pub floating: Vec<FloatingAddress>,
    #[serde(default)]
    pub track_interface: Vec<Track>,
    #[serde(default)]
    pub track_service: Vec<Track>,
    /// Gratuitous ARPs per address on becoming MASTER.
    #[serde(default = "default_garp_repeat")]
    pub garp_repeat: u32,
    #[serde(default = "default_garp_interval_ms")]
    pub garp_interval_ms: u32,
    /// One more round this long after they start, if still MASTER (0:
    /// none): a second chance for a neighbour that missed the first rounds
    /// (a lost frame), as keepalived's `garp_master_delay`. (Linux takes a
    /// gratuitous ARP even within its neighbour lock time: in the lab the
    /// first rounds always fixed the router.)
    #[serde(default = "default_garp_master_delay_ms")]
    pub garp_master_delay_ms: u32,
    /// Command run on each state change with the new state as its argument
    /// (`master`, `backup`, `fault`); killed after `notify_timeout_ms`.
    #[serde(default)]
    pub notify: Option<PathBuf>,
    #[serde(default = "default_notify_timeout_ms")]
    pub notify_timeout_ms: u32,
    /// Stream new flows to the peer (needed by round robin and NAT to keep
    /// connections across a failover; Maglev + DSR needs none).
    #[serde(default = "default_true")]
    pub sync_flows: bool,
    /// Where the last sequence number seen from each peer is kept across
    /// restarts (replay protection).
    #[serde(default = "default_state_file")]
    pub state_file: PathBuf,
    /// `SCHED_FIFO` priority of the HA node's thread (1..=99; 0 leaves it
    /// an ordinary thread). A load balancer's CPUs are busy with packets:
    /// an ordinary thread's adverts were seen delayed past the peer's
    /// master-down interval under CPU load (a false takeover), as
    /// keepalived's `vrrp_rt_priority` prevents. The thread sleeps between
    /// adverts and batches; the kernel keeps 5% of each second for
    /// ordinary tasks (`sched_rt_runtime_us`).
    #[serde(default = "default_realtime_priority")]
    pub realtime_priority: u8,
    /// Pair (this section) or cluster (`[cluster.sync]`, converted by
    /// `ClusterSync::membership`): one node, wire format and key, two ways
    /// of membership.
    #[serde(skip)]
    pub membership: Membership,
    /// Cluster only: how long a starting node waits for its peers' flow
    /// tables before it lets its VIPs be announced.
    #[serde(skip)]
    pub join_wait_ms: u32,
}

/// How the nodes of a group share the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Membership {
    /// Active-passive: one MASTER owns the addresses (VRRP-style election);
    /// only its new flows are synced, to the BACKUP.
    #[default]
    Pair,
    /// Active-active behind ECMP: every node forwards, sends its new flows
    /// to every peer and applies theirs; no election, no addresses.
    Cluster,
}

/// An address the MASTER owns besides the VIPs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FloatingAddress {
    pub address: Ipv4Addr,
    #[serde(default = "default_prefix_len")]
    pub prefix_len: u8,
    pub interface: String,
}

/// keepalived's track semantics: weight 0 puts the node in FAULT while the
/// tracked thing fails; a positive weight is added to the priority while it
/// is fine; a negative one is added (lowering it) while it fails.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Track {
    pub name: String,
    #[serde(default)]
    pub weight: i32,
}

fn default_port() -> u16 {
    5788
}
/// 30 ms: a MASTER's silence is found within 3 adverts plus the skew
/// (90-120 ms), under the 150 ms a takeover may take (issue 20). The
/// adverts come from the node's own SCHED_FIFO thread: cheap (measured in
/// docs/ha.md), and no false takeover under load in the tests.
fn default_advert_interval_ms() -> u32 {
    30
}
/// A returning higher node waits this long after it is ready before it
/// takes MASTER back: checks settle, and a flapping node does not move
/// traffic at every flap.
fn default_preempt_delay_ms() -> u32 {
    2000
}
fn default_true() -> bool {
    true
}
fn default_garp_repeat() -> u32 {
    3
}
fn default_garp_interval_ms() -> u32 {
    100
}
fn default_garp_master_delay_ms() -> u32 {
    1200
}
fn default_notify_timeout_ms() -> u32 {
    5000
}
fn default_realtime_priority() -> u8 {
    10
}
fn default_prefix_len() -> u8 {
    32
}
fn default_state_file() -> PathBuf {
    PathBuf::from("/var/lib/xdplb/ha-peers")
}

impl HaConfig {
    /// The HMAC key: the file's bytes, a trailing newline removed. A
    /// missing, unreadable or short file, one accessible by group or others
    /// or owned by another user than root is an error.
    pub fn read_key(&self) -> Result<Vec<u8>, String> {
        let path = &self.key_file;
        files::private(path)?;
        let mut key = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            key.pop();
        }
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "{} holds {} bytes; at least {MIN_KEY_LEN} are needed",
                path.display(),
                key.len()
            ));
        }
        Ok(key)
    }
}

/// `[ha]`'s own rules; `services` names the config's services (for
/// `track_service`).
pub(super) fn validate(h: &HaConfig, services: &[&str]) -> Result<(), (String, String)> {
    let at = |k: &str| format!("ha.{k}");
    if h.group == 0 {
        return Err((at("group"), "must be 1..=255".into()));
    }
    if !(1..=254).contains(&h.priority) {
        return Err((at("priority"), "must be 1..=254".into()));
    }
    for (k, name) in [
        ("interface", &h.interface),
        ("vip_interface", &h.vip_interface),
    ] {
        if !interface_name_ok(name) {
            return Err((at(k), format!("{name:?} is not a valid interface name")));
        }
    }
    if h.peers.is_empty() {
        return Err((at("peers"), "name at least one peer address".into()));
    }
    for (i, p) in h.peers.iter().enumerate() {
        if p.is_unspecified() || p.is_multicast() || p.is_broadcast() || p.is_loopback() {
            return Err((
                at(&format!("peers[{i}]")),
                format!("{p} is not a unicast peer"),
            ));
        }
        if Some(*p) == h.address {
            return Err((
                at(&format!("peers[{i}]")),
                "is this node's own address".into(),
            ));
        }
        if h.peers[..i].contains(p) {
            return Err((at(&format!("peers[{i}]")), format!("{p} is listed twice")));
        }
    }
    if h.port == 0 {
        return Err((at("port"), "must be 1..=65535".into()));
    }
    if !(10..=40_950).contains(&h.advert_interval_ms) {
        return Err((at("advert_interval_ms"), "must be 10..=40950".into()));
    }
    if h.preempt_delay_ms > 3_600_000 {
        return Err((at("preempt_delay_ms"), "must be 0..=3600000".into()));
    }
    if h.garp_repeat > 100 {
        return Err((at("garp_repeat"), "must be 0..=100".into()));
    }
    if !(10..=10_000).contains(&h.garp_interval_ms) {
        return Err((at("garp_interval_ms"), "must be 10..=10000".into()));
    }
    if h.garp_master_delay_ms > 60_000 {
        return Err((at("garp_master_delay_ms"), "must be 0..=60000".into()));
    }
    if h.realtime_priority > 99 {
        return Err((
            at("realtime_priority"),
            "must be 0..=99 (0: not realtime)".into(),
        ));
    }
    if !(100..=600_000).contains(&h.notify_timeout_ms) {
        return Err((at("notify_timeout_ms"), "must be 100..=600000".into()));
    }
    if let Some(n) = &h.notify {
        if !n.is_absolute() {
            return Err((
                at("notify"),
                format!("{} must be an absolute path", n.display()),
            ));
        }
        files::trusted_program(n).map_err(|e| (at("notify"), e))?;
    }
    for (i, f) in h.floating.iter().enumerate() {
        let fat = |k: &str| at(&format!("floating[{i}].{k}"));
        if f.address.is_unspecified() || f.address.is_multicast() || f.address.is_broadcast() {
            return Err((fat("address"), format!("{} cannot float", f.address)));
        }
        if !(1..=32).contains(&f.prefix_len) {
            return Err((fat("prefix_len"), "must be 1..=32".into()));
        }
        if !interface_name_ok(&f.interface) {
            return Err((fat("interface"), "not a valid interface name".into()));
        }
    }
    for (i, t) in h.track_interface.iter().enumerate() {
        if !interface_name_ok(&t.name) {
            return Err((
                at(&format!("track_interface[{i}].name")),
                "not a valid interface name".into(),
            ));
        }
        if !(-254..=254).contains(&t.weight) {
            return Err((
                at(&format!("track_interface[{i}].weight")),
                "must be -254..=254".into(),
            ));
        }
    }
    for (i, t) in h.track_service.iter().enumerate() {
        if !services.contains(&t.name.as_str()) {
            return Err((
                at(&format!("track_service[{i}].name")),
                format!("no service named {:?}", t.name),
            ));
        }
        if !(-254..=254).contains(&t.weight) {
            return Err((
                at(&format!("track_service[{i}].weight")),
                "must be -254..=254".into(),
            ));
        }
    }
    h.read_key().map_err(|e| (at("key_file"), e))?;
    Ok(())
}
