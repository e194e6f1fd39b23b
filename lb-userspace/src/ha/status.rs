//! What the node tells the rest of the daemon about the pair (for `xdplb
//! status` and the metrics).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use super::{state::State, wire};

/// The peer as last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub addr: Ipv4Addr,
    pub state: wire::WireState,
    pub priority: u8,
    pub epoch: u64,
    /// How long ago its last advert arrived.
    pub last_seen: Duration,
    /// Not heard for a master-down interval: the state is what it last
    /// said, not what it is.
    pub lost: bool,
}

/// A cluster peer as this node knows it (flow sync both ways).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSync {
    /// Heard in its current life (an advert or flows accepted).
    pub epoch: Option<u64>,
    /// How long ago its last accepted message arrived.
    pub last_seen: Option<Duration>,
    /// Heard within 3 advert intervals.
    pub up: bool,
    /// Live flow records sent to it, and bulk (whole-table) ones.
    pub records_sent: u64,
    pub bulk_sent: u64,
    /// Datagrams to it the socket refused (a down link, a full buffer).
    pub send_errors: u64,
    /// Live flow records received from it, and bulk ones.
    pub records_received: u64,
    pub bulk_received: u64,
    /// Its whole table arrived (in its current life).
    pub bulk_done: bool,
    /// Bulk records received since its last table's end marker (compared
    /// with the count the marker carries: a lost datagram asks again).
    pub bulk_walk_received: u64,
    /// Its last batch: its batching delay plus the time to write it here.
    pub lag: Option<Duration>,
}

/// What `xdplb status` and the metrics show of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaStatus {
    pub state: State,
    pub priority: u8,
    pub group: u8,
    pub address: Option<Ipv4Addr>,
    pub peer: Option<PeerStatus>,
    pub transitions: u64,
    pub last_cause: String,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    pub rejected: BTreeMap<&'static str, u64>,
    /// Challenges sent to peers whose epoch was not verified.
    pub challenges_sent: u64,
    /// This node could forward now, were it MASTER (it preempts only then).
    pub ready: bool,
    pub flows_sent: u64,
    pub flows_received: u64,
    /// Received records this node had no service or backend for.
    pub flows_unknown: u64,
    /// Flow reports the data path had no ring-buffer room for.
    pub events_lost: u64,
    /// Flow reports dropped because the send queue was full.
    pub queue_dropped: u64,
    /// Last batch received: sender-side batching delay plus the time to
    /// write it here (network transit not included).
    pub sync_lag: Option<Duration>,
    /// Cluster membership only: each configured peer.
    pub peers: BTreeMap<Ipv4Addr, PeerSync>,
    /// Cluster membership only: the peers' tables arrived (or the join
    /// wait passed), so the VIPs may be announced.
    pub joined: bool,
}

impl HaStatus {
    pub fn new(group: u8, priority: u8) -> HaStatus {
        HaStatus {
            state: State::Init,
            priority,
            group,
            address: None,
            peer: None,
            transitions: 0,
            last_cause: String::new(),
            adverts_sent: 0,
            adverts_received: 0,
            rejected: wire::Reject::ALL.iter().map(|r| (r.label(), 0)).collect(),
            challenges_sent: 0,
            ready: false,
            flows_sent: 0,
            flows_received: 0,
            flows_unknown: 0,
            events_lost: 0,
            queue_dropped: 0,
            sync_lag: None,
            peers: BTreeMap::new(),
            joined: false,
        }
    }
}
