//! What the daemon shows: one [`View`] of services, backends, health and
//! counters, built from the control core and the counters it read. Rendered
//! by `metrics.rs` (OpenMetrics) and `status.rs` (table, JSON). Pure, so
//! every format is tested without a daemon.

use std::{collections::BTreeMap, time::Duration};

use serde::Serialize;

use lb_common::Traffic;

use crate::{config::ForwardingKind, control::Control, health::State};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthView {
    Up,
    /// Passive health stopped new connections; established flows stay.
    Held,
    Down,
    /// The service has no active check.
    Unchecked,
}

impl HealthView {
    pub fn label(self) -> &'static str {
        match self {
            HealthView::Up => "up",
            HealthView::Held => "HELD (passive)",
            HealthView::Down => "DOWN",
            HealthView::Unchecked => "up (no check)",
        }
    }

    /// Takes new connections (by health; weight aside).
    pub fn takes_new(self) -> bool {
        matches!(self, HealthView::Up | HealthView::Unchecked)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub endpoint: String,
    pub weight: u32,
    pub health: HealthView,
    #[serde(with = "traffic_json")]
    pub traffic: Traffic,
    pub conn_rate: f64,
    pub flows: u64,
    /// Half-open connections pinned to the backend (SYN seen, no ACK yet).
    pub half_open: u64,
    /// least_conn services: the data path's active-connection estimate (as
    /// last corrected by the census).
    pub active_connections: Option<u64>,
    #[serde(serialize_with = "seconds")]
    pub check_latency: Option<Duration>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub check_failures: u64,
}

impl BackendView {
    /// Weight 0 on a backend that is not down: it keeps its established
    /// flows and takes no new ones.
    pub fn draining(&self) -> bool {
        self.weight == 0 && self.health != HealthView::Down
    }

    /// What the status table shows.
    pub fn state_label(&self) -> &'static str {
        if self.draining() {
            "draining (weight 0)"
        } else {
            self.health.label()
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: String,
    pub protocol: &'static str,
    pub forwarding: &'static str,
    #[serde(with = "traffic_json")]
    pub traffic: Traffic,
    pub conn_rate: f64,
    /// The live ring summed up ([`crate::cluster::fingerprint`]): nodes
    /// showing the same one pick the same backend for a connection.
    pub ring_fingerprint: String,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    pub services: Vec<ServiceView>,
    pub reasons: Vec<(&'static str, u64)>,
    /// The HA pair, with `[ha]`.
    pub ha: Option<HaView>,
    /// The VIPs this node announces, with `[cluster]`.
    pub cluster: Option<crate::cluster::AnnounceStatus>,
    /// Flow sync with the other cluster nodes, with `[cluster.sync]`.
    pub cluster_sync: Option<SyncView>,
    /// The daemon's own faults and refusals.
    pub daemon: DaemonView,
}

/// What the daemon counts of itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonView {
    /// Health probes not run for a reason of this host's (no descriptors,
    /// no probe slot): never counted against a backend.
    pub checks_not_run: u64,
    /// Status-socket connections refused for their peer's credentials.
    pub status_refused: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    pub address: String,
    pub state: &'static str,
    pub priority: u8,
    /// Seconds since its last advert.
    pub last_seen: f64,
    /// Not heard for a master-down interval (`state` is what it last said).
    pub lost: bool,
}

/// A cluster node's flow sync: whether it has joined, and each peer.
#[derive(Debug, Clone, Serialize)]
pub struct SyncView {
    pub address: Option<String>,
    /// The peers' tables arrived (or the join wait passed): the VIPs may
    /// be announced.
    pub joined: bool,
    pub peers: Vec<SyncPeerView>,
    /// Flow reports the data path had no ring-buffer room for, and those
    /// the send queue had no room for.
    pub events_lost: u64,
    pub queue_dropped: u64,
    /// Records of services or backends this node does not have.
    pub records_unknown: u64,
    pub rejected: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncPeerView {
    pub address: String,
    pub up: bool,
    /// Seconds since its last accepted message (none: never heard).
    pub last_seen: Option<f64>,
    pub records_sent: u64,
    pub records_received: u64,
    pub bulk_sent: u64,
    pub bulk_received: u64,
    /// Its whole table arrived in its current life.
    pub bulk_done: bool,
    pub send_errors: u64,
    #[serde(serialize_with = "seconds")]
    pub lag: Option<Duration>,
}

impl SyncView {
    pub fn from_status(s: &crate::ha::HaStatus) -> SyncView {
        SyncView {
            address: s.address.map(|a| a.to_string()),
            joined: s.joined,
            peers: s
                .peers
                .iter()
                .map(|(a, p)| SyncPeerView {
                    address: a.to_string(),
                    up: p.up,
                    last_seen: p.last_seen.map(|d| d.as_secs_f64()),
                    records_sent: p.records_sent,
                    records_received: p.records_received,
                    bulk_sent: p.bulk_sent,
                    bulk_received: p.bulk_received,
                    bulk_done: p.bulk_done,
                    send_errors: p.send_errors,
                    lag: p.lag,
                })
                .collect(),
            events_lost: s.events_lost,
            queue_dropped: s.queue_dropped,
            records_unknown: s.flows_unknown,
            rejected: s.rejected.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HaView {
    pub state: &'static str,
    pub priority: u8,
    pub group: u8,
    pub address: Option<String>,
    pub peer: Option<PeerView>,
    pub transitions: u64,
    pub last_cause: String,
    pub adverts_sent: u64,
    pub adverts_received: u64,
    /// Heartbeat-channel datagrams refused, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    pub challenges_sent: u64,
    /// Could forward now, were it MASTER (it preempts only then).
    pub ready: bool,
    pub flows_sent: u64,
    pub flows_received: u64,
    pub flows_unknown: u64,
    pub events_lost: u64,
    pub queue_dropped: u64,
    #[serde(serialize_with = "seconds")]
    pub sync_lag: Option<Duration>,
}

impl HaView {
    pub fn from_status(s: &crate::ha::HaStatus) -> HaView {
        HaView {
            state: s.state.label(),
            priority: s.priority,
            group: s.group,
            address: s.address.map(|a| a.to_string()),
            peer: s.peer.as_ref().map(|p| PeerView {
                address: p.addr.to_string(),
                state: crate::ha::State::from_wire(p.state).label(),
                priority: p.priority,
                last_seen: p.last_seen.as_secs_f64(),
                lost: p.lost,
            }),
            transitions: s.transitions,
            last_cause: s.last_cause.clone(),
            adverts_sent: s.adverts_sent,
            adverts_received: s.adverts_received,
            rejected: s.rejected.clone(),
            challenges_sent: s.challenges_sent,
            ready: s.ready,
            flows_sent: s.flows_sent,
            flows_received: s.flows_received,
            flows_unknown: s.flows_unknown,
            events_lost: s.events_lost,
            queue_dropped: s.queue_dropped,
            sync_lag: s.sync_lag,
        }
    }
}

/// Counter inputs the daemon has read from the maps.
#[derive(Debug)]
pub struct Readings<'a> {
    pub services: &'a BTreeMap<u32, Traffic>,
    pub backends: &'a BTreeMap<u32, Traffic>,
    pub reasons: &'a BTreeMap<&'static str, u64>,
    /// New flows per second, by service id and by backend id.
    pub service_rates: &'a BTreeMap<u32, f64>,
    pub backend_rates: &'a BTreeMap<u32, f64>,
    /// Flow-table entries by backend id.
    pub flows: &'a BTreeMap<u32, u64>,
    /// Half-open connection entries by backend id.
    pub half_open: &'a BTreeMap<u32, u64>,
    /// least_conn active-connection estimates by backend id (non-zero ones).
    pub active: &'a BTreeMap<u32, u64>,
    pub ha: Option<&'a crate::ha::HaStatus>,
    pub cluster: Option<crate::cluster::AnnounceStatus>,
    pub cluster_sync: Option<&'a crate::ha::HaStatus>,
    /// Ring fingerprints by service id.
    pub fingerprints: &'a BTreeMap<u32, String>,
    pub daemon: DaemonView,
}

/// Assemble the view of what `control` serves.
pub fn build(control: &Control, r: &Readings<'_>) -> View {
    let plan = control.applied();
    let mut services = Vec::new();
    for s in &control.config().services {
        let key = s.key();
        let Some(ps) = plan.services.iter().find(|p| p.key == key) else {
            continue;
        };
        let id = ps.info.id;
        let mut backends = Vec::new();
        for b in &s.backends {
            let me = s.backend_ref(b);
            let bid = plan.backend_id(&me);
            let st = control.state(&me);
            backends.push(BackendView {
                endpoint: format!("{}:{}", b.address, b.port),
                weight: b.weight,
                health: match st.map(|s| s.health.state()) {
                    None => HealthView::Unchecked,
                    Some(State::Up) => HealthView::Up,
                    Some(State::Held) => HealthView::Held,
                    Some(State::Down) => HealthView::Down,
                },
                traffic: bid
                    .and_then(|i| r.backends.get(&i))
                    .copied()
                    .unwrap_or_default(),
                conn_rate: bid
                    .and_then(|i| r.backend_rates.get(&i))
                    .copied()
                    .unwrap_or(0.0),
                flows: bid.and_then(|i| r.flows.get(&i)).copied().unwrap_or(0),
                half_open: bid.and_then(|i| r.half_open.get(&i)).copied().unwrap_or(0),
                active_connections: (s.scheduler == crate::config::SchedulerKind::LeastConn)
                    .then(|| bid.and_then(|i| r.active.get(&i)).copied().unwrap_or(0)),
                check_latency: st.and_then(|s| s.last_latency),
                last_error: st.and_then(|s| s.last_error.clone()),
                checks: st.map_or(0, |s| s.checks),
                check_failures: st.map_or(0, |s| s.failures),
            });
        }
        services.push(ServiceView {
            name: s.name.clone(),
            vip: format!("{}:{}", s.vip, s.port),
            protocol: match s.protocol {
                crate::config::Protocol::Tcp => "tcp",
                crate::config::Protocol::Udp => "udp",
            },
            forwarding: match s.forwarding {
                ForwardingKind::Dsr => "dsr",
                ForwardingKind::Nat => "nat",
            },
            traffic: r.services.get(&id).copied().unwrap_or_default(),
            conn_rate: r.service_rates.get(&id).copied().unwrap_or(0.0),
            ring_fingerprint: r.fingerprints.get(&id).cloned().unwrap_or_default(),
            backends,
        });
    }
    View {
        services,
        reasons: r.reasons.iter().map(|(k, v)| (*k, *v)).collect(),
        ha: r.ha.map(HaView::from_status),
        cluster: r.cluster.clone(),
        cluster_sync: r.cluster_sync.map(SyncView::from_status),
        daemon: r.daemon.clone(),
    }
}

fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// `Traffic` (a map value type in `lb-common`, no serde there) as JSON.
mod traffic_json {
    use lb_common::Traffic;
    use serde::{Serialize, Serializer};

    #[derive(Serialize)]
    struct T {
        packets: u64,
        bytes: u64,
        connections: u64,
        no_backend: u64,
        syn_retransmits: u64,
        refused: u64,
        redispatched: u64,
        midstream: u64,
        rate_limited: u64,
        half_open_spilled: u64,
    }

    pub fn serialize<S: Serializer>(t: &Traffic, s: S) -> Result<S::Ok, S::Error> {
        T {
            packets: t.packets,
            bytes: t.bytes,
            connections: t.connections,
            no_backend: t.no_backend,
            syn_retransmits: t.syn_retransmits,
            refused: t.refused,
            redispatched: t.redispatched,
            midstream: t.midstream,
            rate_limited: t.rate_limited,
            half_open_spilled: t.half_open_spilled,
        }
        .serialize(s)
    }
}

/// Views for the renderers' tests (status table, JSON, OpenMetrics).
#[cfg(test)]
pub(crate) mod samples {
    use std::time::Duration;

    use lb_common::Traffic;

    use super::{BackendView, HealthView, ServiceView, View};

    pub(crate) fn view() -> View {
        let b = |endpoint: &str, health, packets| BackendView {
            endpoint: endpoint.into(),
            weight: 1,
            health,
            traffic: Traffic {
                packets,
                bytes: packets * 100,
                connections: 3,
                ..Traffic::default()
            },
            conn_rate: 1.5,
            flows: 3,
            half_open: 0,
            active_connections: None,
            check_latency: Some(Duration::from_micros(1500)),
            last_error: (health == HealthView::Down).then(|| "connect refused".into()),
            checks: 10,
            check_failures: 4,
        };
        View {
            services: vec![ServiceView {
                name: "w\"w".into(),
                vip: "192.0.2.10:80".into(),
                protocol: "tcp",
                forwarding: "nat",
                traffic: Traffic {
                    packets: 30,
                    connections: 6,
                    no_backend: 2,
                    ..Traffic::default()
                },
                conn_rate: 3.0,
                ring_fingerprint: "00c0ffee00c0ffee".into(),
                backends: vec![
                    b("203.0.113.11:80", HealthView::Up, 10),
                    b("203.0.113.21:80", HealthView::Down, 20),
                ],
            }],
            reasons: vec![("drop_no_backend", 2), ("fwd_nat", 30)],
            ha: None,
            cluster: None,
            cluster_sync: None,
            daemon: super::DaemonView {
                checks_not_run: 3,
                status_refused: 1,
            },
        }
    }

    /// The view of a cluster node announcing one VIP of two.
    pub(crate) fn cluster_view() -> View {
        use crate::cluster::{AnnounceStatus, announcer::VipAnnouncement};
        View {
            cluster: Some(AnnounceStatus {
                table: 4242,
                vips: vec![
                    VipAnnouncement {
                        vip: [192, 0, 2, 10].into(),
                        wanted: true,
                        announced: true,
                        draining: false,
                        why: "web: 1/2 up (any)".into(),
                    },
                    VipAnnouncement {
                        vip: [192, 0, 2, 20].into(),
                        wanted: false,
                        announced: false,
                        draining: false,
                        why: "db: 1/3 up (quorum)".into(),
                    },
                ],
                changes: 3,
                errors: 0,
                bird: crate::cluster::announcer::BirdView {
                    socket: "/run/bird/bird.ctl".into(),
                    error: None,
                    sessions: vec![
                        crate::cluster::bird::BgpSession {
                            name: "upstream".into(),
                            state: "up".into(),
                            info: "Established".into(),
                        },
                        crate::cluster::bird::BgpSession {
                            name: "backup".into(),
                            state: "start".into(),
                            info: "Active".into(),
                        },
                    ],
                },
            }),
            cluster_sync: Some(sync_view()),
            ..view()
        }
    }

    /// A cluster node's sync: one peer up, one never heard.
    fn sync_view() -> super::SyncView {
        let mut s = crate::ha::HaStatus::new(1, 100);
        s.address = Some([10, 1, 0, 11].into());
        s.joined = true;
        s.flows_unknown = 2;
        s.peers.insert(
            [10, 1, 0, 12].into(),
            crate::ha::PeerSync {
                epoch: Some(9),
                last_seen: Some(Duration::from_millis(100)),
                up: true,
                records_sent: 500,
                bulk_sent: 7,
                send_errors: 0,
                records_received: 400,
                bulk_received: 30,
                bulk_done: true,
                bulk_walk_received: 0,
                lag: Some(Duration::from_micros(2500)),
            },
        );
        s.peers
            .insert([10, 1, 0, 13].into(), crate::ha::PeerSync::default());
        *s.rejected.get_mut("bad_tag").unwrap() = 1;
        super::SyncView::from_status(&s)
    }

    /// The view of an HA MASTER with a BACKUP peer.
    pub(crate) fn ha_view() -> View {
        let mut s = crate::ha::HaStatus::new(7, 150);
        s.state = crate::ha::State::Master;
        s.address = Some([10, 255, 0, 1].into());
        s.peer = Some(crate::ha::PeerStatus {
            addr: [10, 255, 0, 2].into(),
            state: crate::ha::wire::WireState::Backup,
            priority: 100,
            epoch: 1,
            last_seen: Duration::from_millis(40),
            lost: false,
        });
        s.ready = true;
        s.transitions = 2;
        s.last_cause = "no MASTER advert for 360 ms (master-down interval)".into();
        s.flows_sent = 1234;
        s.sync_lag = Some(Duration::from_micros(1500));
        *s.rejected.get_mut("bad_tag").unwrap() = 3;
        View {
            ha: Some(super::HaView::from_status(&s)),
            ..view()
        }
    }
}
