//! Keeps the kernel routes BIRD announces in step with the gate's verdicts.
//! A task of its own: it applies each new set of verdicts at once (a VIP
//! whose last backend went down is withdrawn within a netlink round trip
//! of the health change), and every second compares the table with what it
//! wants, so a route someone deleted by hand, or a failed request, is put
//! right. Only routes of the daemon's protocol number in its table are
//! touched.

use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{
    bird::{BgpSession, bgp_sessions},
    gate::VipDecision,
};
use crate::{
    config::ClusterConfig,
    net::{NetError, Netlink},
};

/// How often the table is compared with the verdicts without a change.
const RECHECK: Duration = Duration::from_secs(1);

/// One VIP as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VipAnnouncement {
    pub vip: Ipv4Addr,
    /// The gate's verdict.
    pub wanted: bool,
    /// Its route is in the table (what BIRD sees).
    pub announced: bool,
    /// Withdrawn by `xdplb drain`.
    pub draining: bool,
    pub why: String,
}

/// What the announcer did, for `status` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AnnounceStatus {
    pub table: u32,
    pub vips: Vec<VipAnnouncement>,
    /// Routes added and removed since start.
    pub changes: u64,
    /// Netlink requests that failed (retried every second).
    pub errors: u64,
    /// The local BIRD, as last read (every second).
    pub bird: BirdView,
}

/// What the local BIRD said of its BGP sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BirdView {
    pub socket: String,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
    pub sessions: Vec<BgpSession>,
}

pub struct Announcer {
    pub config: ClusterConfig,
    wanted: watch::Sender<Vec<VipDecision>>,
    status: Arc<Mutex<AnnounceStatus>>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Start announcing per `initial` (inside the daemon's runtime).
    pub fn start(config: &ClusterConfig, initial: Vec<VipDecision>) -> Result<Self, NetError> {
        let netlink = Netlink::open()?;
        let (wanted, rx) = watch::channel(initial);
        let status = Arc::new(Mutex::new(AnnounceStatus {
            table: config.announce_table,
            bird: BirdView {
                socket: config.bird_socket.display().to_string(),
                ..Default::default()
            },
            ..Default::default()
        }));
        let task = tokio::spawn(run(netlink, config.clone(), rx, status.clone()));
        info!(
            table = config.announce_table,
            protocol = config.route_protocol,
            "cluster: announcing VIPs through routing table {} (BIRD's `protocol kernel` learns them)",
            config.announce_table
        );
        Ok(Announcer {
            config: config.clone(),
            wanted,
            status,
            task,
        })
    }

    /// New verdicts; applied at once if they differ from the last.
    pub fn want(&self, decisions: Vec<VipDecision>) {
        self.wanted.send_if_modified(|w| {
            if *w == decisions {
                false
            } else {
                *w = decisions;
                true
            }
        });
    }

    pub fn status(&self) -> AnnounceStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stop and withdraw every VIP this daemon announced; how many.
    pub async fn withdraw_all(self) -> Result<usize, NetError> {
        self.task.abort();
        let netlink = Netlink::open()?;
        let (table, protocol) = (self.config.announce_table, self.config.route_protocol);
        let routes = netlink.announced(table, protocol).await?;
        for vip in &routes {
            netlink.withdraw(*vip, table, protocol).await?;
        }
        Ok(routes.len())
    }

    /// Stop, leaving the routes for the next daemon (which adopts them).
    pub fn leave(self) {
        self.task.abort();
    }
}

async fn run(
    netlink: Netlink,
    config: ClusterConfig,
    mut wanted: watch::Receiver<Vec<VipDecision>>,
    status: Arc<Mutex<AnnounceStatus>>,
) {
    let mut tick = tokio::time::interval(RECHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged_errors = 0u64;
    let (table, protocol) = (config.announce_table, config.route_protocol);
    loop {
        let decisions = wanted.borrow_and_update().clone();
        let (announced, changes, errors) = reconcile(&netlink, table, protocol, &decisions).await;
        let bird = bgp_sessions(&config.bird_socket).await;
        if let Ok(mut s) = status.lock() {
            match bird {
                Ok(sessions) => {
                    s.bird.error = None;
                    s.bird.sessions = sessions;
                }
                Err(e) => {
                    s.bird.error = Some(e.to_string());
                    s.bird.sessions.clear();
                }
            }
            s.changes += changes;
            s.errors += errors.len() as u64;
            s.vips = decisions
                .iter()
                .map(|d| VipAnnouncement {
                    vip: d.vip,
                    wanted: d.announce,
                    announced: announced.contains(&d.vip),
                    draining: d.draining,
                    why: d.why.clone(),
                })
                .collect();
        }
        for e in errors {
            // The first errors, then one in a hundred: a lasting fault
            // (no permission, say) must not flood the log every second.
            if logged_errors < 5 || logged_errors.is_multiple_of(100) {
                warn!(table, error = %e, "cluster: changing an announcement failed; retrying every second");
            }
            logged_errors += 1;
        }
        tokio::select! {
            r = wanted.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

/// Make the table hold exactly the wanted VIPs: what it holds afterwards,
/// the routes changed, the errors.
async fn reconcile(
    netlink: &Netlink,
    table: u32,
    protocol: u8,
    decisions: &[VipDecision],
) -> (BTreeSet<Ipv4Addr>, u64, Vec<NetError>) {
    let mut errors = Vec::new();
    let mut present = match netlink.announced(table, protocol).await {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return (BTreeSet::new(), 0, errors);
        }
    };
    let wanted: BTreeSet<Ipv4Addr> = decisions
        .iter()
        .filter(|d| d.announce)
        .map(|d| d.vip)
        .collect();
    let mut changes = 0;
    for vip in present.clone().difference(&wanted) {
        let why = decisions
            .iter()
            .find(|d| d.vip == *vip)
            .map_or("no longer configured", |d| d.why.as_str());
        match netlink.withdraw(*vip, table, protocol).await {
            Ok(()) => {
                present.remove(vip);
                changes += 1;
                let draining = decisions.iter().any(|d| d.vip == *vip && d.draining);
                if draining {
                    info!(vip = %vip, "cluster: VIP withdrawn for the drain");
                } else {
                    warn!(vip = %vip, why, "cluster: VIP WITHDRAWN");
                }
            }
            Err(e) => errors.push(e),
        }
    }
    for vip in wanted.difference(&present.clone()) {
        match netlink.announce(*vip, table, protocol).await {
            Ok(()) => {
                present.insert(*vip);
                changes += 1;
                info!(vip = %vip, "cluster: VIP announced");
            }
            Err(e) => errors.push(e),
        }
    }
    (present, changes, errors)
}
