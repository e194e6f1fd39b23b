//! From a validated config to the exact contents the maps should hold.
//!
//! Pure: no maps, no syscalls. Ids are stable across plans made by the same
//! [`Planner`], so a reload re-uses the slots of services and backends that
//! are still there.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
};

use lb_common::{
    BACKEND_F_ACTIVE, BACKEND_F_NEW_CONNECTIONS, BACKEND_F_SOLE_REPLY, Backend, Forwarding,
    MAX_BACKENDS, MAX_SERVICES, RING_SIZE, ReplyOwnerKey, SERVICE_F_ACL, SERVICE_F_ALLOW_ONLY,
    SERVICE_F_PASS_WHEN_EMPTY, SERVICE_F_REDISPATCH, Scheduler, ServiceInfo, ServiceKey,
    VIP_F_DROP_UNSERVED, VIP_F_HA, VipInfo,
};

pub mod acl;
pub mod maglev;
pub mod reply_owner;
pub mod ring;

// A backend's identity and a service's key are the config's notions; the
// planner hands them on.
use crate::config::{BackendConfig, Config, SchedulerKind, UnservedVip, WhenEmpty};
pub use crate::config::{BackendRef, service_key};
use maglev::MaglevBackend;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedService {
    pub name: String,
    pub key: ServiceKey,
    pub info: ServiceInfo,
    /// Backend id per ring slot; `ring.len() == info.ring_len`.
    pub ring: Vec<u32>,
    /// New-connection limits (all zero: none).
    pub rate: lb_common::RateLimit,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub services: Vec<PlannedService>,
    /// Backend id -> entry, for every backend any service uses.
    pub backends: BTreeMap<u32, Backend>,
    /// Addresses the data path answers for (address in network order ->
    /// `VIP_F_*`): service VIPs (drop unserved traffic) and HA addresses.
    pub vips: BTreeMap<u32, VipInfo>,
    /// The firewall's lists (global deny, services' allow/deny by id).
    pub acl: acl::AclSet,
    /// The firewall generation the lists were last written with.
    pub acl_generation: u16,
    /// `REPLY_OWNERS`: NAT backends whose replies need no reply entry
    /// (`reply_owner.rs`).
    pub reply_owners: BTreeMap<ReplyOwnerKey, u32>,
    /// Backend id by identity, kept with the plan (built once, not per call).
    ids: HashMap<BackendRef, u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("no free service id (limit {MAX_SERVICES})")]
    ServiceIds,
    #[error("no free backend id (limit {MAX_BACKENDS})")]
    BackendIds,
    #[error("service {0}: {1}")]
    Maglev(String, maglev::MaglevError),
}

/// Hands out stable small integer ids, re-using freed ones.
#[derive(Debug, Default)]
struct Ids<K> {
    ids: HashMap<K, u32>,
    limit: u32,
}

impl<K: std::hash::Hash + Eq + Clone> Ids<K> {
    fn new(limit: u32) -> Self {
        Self {
            ids: HashMap::new(),
            limit,
        }
    }

    /// Keep ids of `live` keys, free the others, then assign new ones. An id
    /// freed by this very call goes to a new key only when no other is free:
    /// until this plan is applied, an old ring may still name it.
    fn assign(&mut self, live: &[K]) -> Option<Vec<u32>> {
        let freed: HashSet<u32> = self
            .ids
            .iter()
            .filter(|(k, _)| !live.contains(k))
            .map(|(_, id)| *id)
            .collect();
        self.ids.retain(|k, _| live.contains(k));
        let mut used: Vec<bool> = vec![false; self.limit as usize];
        for id in self.ids.values() {
            used[*id as usize] = true;
        }
        let mut out = Vec::with_capacity(live.len());
        for k in live {
            let id = match self.ids.get(k) {
                Some(id) => *id,
                None => {
                    let free = |id: &usize| !used[*id];
                    let id = (0..used.len())
                        .find(|i| free(i) && !freed.contains(&(*i as u32)))
                        .or_else(|| (0..used.len()).find(free))?
                        as u32;
                    used[id as usize] = true;
                    self.ids.insert(k.clone(), id);
                    id
                }
            };
            out.push(id);
        }
        Some(out)
    }
}

/// Backends that are not fully up, and why.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Availability {
    /// Out: their flows re-schedule (active check failed).
    pub down: HashSet<BackendRef>,
    /// No new connections, established flows stay (passive failure).
    pub held: HashSet<BackendRef>,
}

impl Availability {
    /// Only `down` backends, none held.
    pub fn down(down: HashSet<BackendRef>) -> Self {
        Self {
            down,
            held: HashSet::new(),
        }
    }
}

/// Makes plans, remembering ids between them.
#[derive(Debug)]
pub struct Planner {
    services: Ids<ServiceKey>,
    backends: Ids<BackendRef>,
    /// Global deny entries added at run time (beside `[firewall] deny`).
    pub runtime_deny: Vec<ipnet::Ipv4Net>,
    /// The last plan's `REPLY_OWNERS` (an owner stays while its id does).
    reply_owners: BTreeMap<ReplyOwnerKey, u32>,
}

impl Default for Planner {
    fn default() -> Self {
        Self {
            services: Ids::new(MAX_SERVICES),
            backends: Ids::new(MAX_BACKENDS),
            runtime_deny: Vec::new(),
            reply_owners: BTreeMap::new(),
        }
    }
}

impl Plan {
    /// A plan of these services and backends, with its id index.
    pub fn new(services: Vec<PlannedService>, backends: BTreeMap<u32, Backend>) -> Plan {
        let mut p = Plan {
            services,
            backends,
            vips: BTreeMap::new(),
            acl: acl::AclSet::new(),
            acl_generation: 0,
            reply_owners: BTreeMap::new(),
            ids: HashMap::new(),
        };
        p.ids = p.index();
        p
    }

    /// Backend id by identity, for every backend entry.
    pub fn backend_ids(&self) -> &HashMap<BackendRef, u32> {
        &self.ids
    }

    /// The id of one backend.
    pub fn backend_id(&self, b: &BackendRef) -> Option<u32> {
        self.ids.get(b).copied()
    }

    fn index(&self) -> HashMap<BackendRef, u32> {
        let keys: HashMap<u32, ServiceKey> =
            self.services.iter().map(|s| (s.info.id, s.key)).collect();
        self.backends
            .iter()
            .filter_map(|(id, b)| {
                let key = *keys.get(&b.service_id)?;
                Some((
                    BackendRef::new(
                        key,
                        Ipv4Addr::from(u32::from_be(b.addr_be)),
                        u16::from_be(b.port_be),
                    ),
                    *id,
                ))
            })
            .collect()
    }
}

impl Planner {
    /// Take over the ids of a plan found in the maps (pinned by a previous
    /// daemon), so pinned flows keep meaning the same backends.
    pub fn adopt(&mut self, plan: &Plan) {
        self.services.ids = plan.services.iter().map(|s| (s.key, s.info.id)).collect();
        self.backends.ids = plan.backend_ids().clone();
        self.reply_owners = plan.reply_owners.clone();
    }

    /// The map contents for `config`: backends that are down inactive and out
    /// of their service's ring; held and weight-0 backends active (their
    /// flows stay) but out of the ring (no new connections).
    pub fn plan(&mut self, config: &Config, avail: &Availability) -> Result<Plan, PlanError> {
        let (down, held) = (&avail.down, &avail.held);
        let keys: Vec<ServiceKey> = config.services.iter().map(|s| s.key()).collect();
        let service_ids = self.services.assign(&keys).ok_or(PlanError::ServiceIds)?;

        let refs: Vec<BackendRef> = config
            .services
            .iter()
            .zip(&keys)
            .flat_map(|(s, key)| {
                s.backends
                    .iter()
                    .map(|b| BackendRef::new(*key, b.address, b.port))
            })
            .collect();
        let backend_ids = self.backends.assign(&refs).ok_or(PlanError::BackendIds)?;
        let id_of: HashMap<BackendRef, u32> = refs
            .iter()
            .copied()
            .zip(backend_ids.iter().copied())
            .collect();
        let service_id_of: HashMap<ServiceKey, u32> = keys
            .iter()
            .copied()
            .zip(service_ids.iter().copied())
            .collect();

        let weight_of: HashMap<BackendRef, u32> = config
            .services
            .iter()
            .zip(&keys)
            .flat_map(|(s, key)| {
                s.backends
                    .iter()
                    .map(|b| (BackendRef::new(*key, b.address, b.port), b.weight))
            })
            .collect();
        // NAT backends by what their replies carry: sole ones need no reply
        // entries.
        let nat: Vec<(ReplyOwnerKey, u32)> = config
            .services
            .iter()
            .zip(&keys)
            .filter(|(s, _)| Forwarding::from(s.forwarding) == Forwarding::Nat)
            .flat_map(|(s, key)| {
                s.backends.iter().map(|b| {
                    (
                        ReplyOwnerKey {
                            addr_be: u32::from(b.address).to_be(),
                            port_be: b.port.to_be(),
                            proto: key.proto,
                            _pad: 0,
                        },
                        id_of[&BackendRef::new(*key, b.address, b.port)],
                    )
                })
            })
            .collect();
        let (reply_owners, sole) = reply_owner::owners(&nat, &self.reply_owners);
        let backends = refs
            .iter()
            .map(|r| {
                let BackendRef {
                    service: key,
                    addr,
                    port,
                } = *r;
                let health = if down.contains(r) {
                    0
                } else if held.contains(r) || weight_of[r] == 0 {
                    BACKEND_F_ACTIVE
                } else {
                    BACKEND_F_ACTIVE | BACKEND_F_NEW_CONNECTIONS
                };
                let flags = health
                    | if sole.contains(&id_of[r]) {
                        BACKEND_F_SOLE_REPLY
                    } else {
                        0
                    };
                (
                    id_of[r],
                    Backend {
                        addr_be: u32::from(addr).to_be(),
                        port_be: port.to_be(),
                        flags,
                        _pad: 0,
                        service_id: service_id_of[&key],
                        weight: weight_of[r].min(u16::MAX as u32) as u16,
                        _pad2: [0; 2],
                    },
                )
            })
            .collect();

        let mut services = Vec::with_capacity(config.services.len());
        for ((s, key), id) in config.services.iter().zip(keys).zip(service_ids) {
            // Only backends that are up and have weight get new connections.
            let live: Vec<&BackendConfig> = s
                .backends
                .iter()
                .filter(|b| {
                    let r = BackendRef::new(key, b.address, b.port);
                    b.weight > 0 && !down.contains(&r) && !held.contains(&r)
                })
                .collect();
            let ids: Vec<u32> = live
                .iter()
                .map(|b| id_of[&BackendRef::new(key, b.address, b.port)])
                .collect();
            let slots = if live.is_empty() {
                Vec::new()
            } else {
                match s.scheduler {
                    // Both index a consistent table: by the 5-tuple, or by
                    // the client address alone.
                    SchedulerKind::Maglev | SchedulerKind::SourceHash => {
                        let mb: Vec<MaglevBackend> = live
                            .iter()
                            .map(|b| MaglevBackend {
                                key: format!("{}:{}", b.address, b.port),
                                weight: b.weight,
                            })
                            .collect();
                        maglev::table(&mb, RING_SIZE)
                            .map_err(|e| PlanError::Maglev(s.name.clone(), e))?
                    }
                    // least_conn draws its two candidates from the same
                    // weighted ring round robin walks.
                    SchedulerKind::RoundRobin | SchedulerKind::LeastConn => {
                        let weights: Vec<u32> = live.iter().map(|b| b.weight).collect();
                        ring::weighted_round_robin(&weights, RING_SIZE as usize)
                    }
                }
            };
            let ring: Vec<u32> = slots.iter().map(|&i| ids[i as usize]).collect();
            services.push(PlannedService {
                name: s.name.clone(),
                key,
                info: ServiceInfo {
                    id,
                    ring_len: ring.len() as u32,
                    scheduler: Scheduler::from(s.scheduler) as u8,
                    forwarding: Forwarding::from(s.forwarding) as u8,
                    flags: match s.when_empty {
                        WhenEmpty::Drop => 0,
                        WhenEmpty::Pass => SERVICE_F_PASS_WHEN_EMPTY,
                    } | if s.redispatches() {
                        SERVICE_F_REDISPATCH
                    } else {
                        0
                    } | if s.allow.is_empty() && s.deny.is_empty() {
                        0
                    } else {
                        SERVICE_F_ACL
                    } | if s.allow.is_empty() {
                        0
                    } else {
                        SERVICE_F_ALLOW_ONLY
                    } | if s.rate_limit.is_some() {
                        lb_common::SERVICE_F_RATE_LIMIT
                    } else {
                        0
                    } | if s.syn_cookie_threshold.is_some() {
                        lb_common::SERVICE_F_SYN_COOKIES
                    } else {
                        0
                    },
                    // Which half is live is the programmer's business.
                    ring: 0,
                },
                ring,
                rate: s.limits(),
            });
        }
        let mut plan = Plan::new(services, backends);
        plan.vips = vips(config);
        self.reply_owners = reply_owners.clone();
        plan.reply_owners = reply_owners;
        plan.acl = acl::build(config, &self.runtime_deny, |k| {
            service_id_of.get(k).copied()
        });
        Ok(plan)
    }
}

/// `VIPS` for `config`: every service VIP drops unserved traffic (unless
/// `unserved_vip = "pass"`); with `[ha]`, VIPs and floating addresses are
/// HA addresses whose ARP the lease guards.
pub fn vips(config: &Config) -> BTreeMap<u32, VipInfo> {
    let ha = if config.ha.is_some() { VIP_F_HA } else { 0 };
    let unserved = match config.dataplane.unserved_vip {
        UnservedVip::Drop => VIP_F_DROP_UNSERVED,
        UnservedVip::Pass => 0,
    };
    let mut out = BTreeMap::new();
    for s in &config.services {
        out.insert(
            u32::from(s.vip).to_be(),
            VipInfo {
                flags: unserved | ha,
            },
        );
    }
    if let Some(h) = &config.ha {
        for f in &h.floating {
            out.entry(u32::from(f.address).to_be())
                .or_insert(VipInfo { flags: 0 })
                .flags |= VIP_F_HA;
        }
    }
    out.retain(|_, v| v.flags != 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Protocol};
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    const TWO: &str = r#"
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
[[service.backend]]
address = "203.0.113.11"
port = 8080
[[service.backend]]
address = "203.0.113.12"
port = 8080
weight = 3
"#;

    #[test]
    fn round_robin_ring_carries_weights() {
        let plan = Planner::default()
            .plan(&config(TWO), &Availability::default())
            .unwrap();
        let s = &plan.services[0];
        assert_eq!(s.info.ring_len, 4);
        assert_eq!(s.key.port_be, 80u16.to_be());
        let ids: Vec<u32> = plan.backends.keys().copied().collect();
        let heavy = ids
            .iter()
            .find(|id| {
                plan.backends[id].addr_be == u32::from(Ipv4Addr::new(203, 0, 113, 12)).to_be()
            })
            .unwrap();
        assert_eq!(s.ring.iter().filter(|x| *x == heavy).count(), 3);
    }

    #[test]
    fn down_backends_leave_the_ring_and_turn_inactive() {
        let c = config(TWO);
        let mut planner = Planner::default();
        let key = service_key(Ipv4Addr::new(192, 0, 2, 10), 80, Protocol::Tcp);
        let heavy = BackendRef::new(key, Ipv4Addr::new(203, 0, 113, 12), 8080);
        let light = BackendRef::new(key, Ipv4Addr::new(203, 0, 113, 11), 8080);
        let all_up = planner.plan(&c, &Availability::default()).unwrap();
        let down = planner
            .plan(&c, &Availability::down(HashSet::from([heavy])))
            .unwrap();
        // Same ids; the heavy backend stays in the table but inactive.
        assert_eq!(
            all_up.backends.keys().collect::<Vec<_>>(),
            down.backends.keys().collect::<Vec<_>>()
        );
        let heavy_id = &down.backend_ids()[&heavy];
        assert_eq!(down.backends[heavy_id].flags, BACKEND_F_SOLE_REPLY);
        assert_eq!(down.services[0].info.ring_len, 1);
        assert!(!down.services[0].ring.contains(heavy_id));
        // All down: an empty ring, and the service says what to do then.
        let none = planner
            .plan(&c, &Availability::down(HashSet::from([heavy, light])))
            .unwrap();
        assert_eq!(none.services[0].info.ring_len, 0);
        assert_eq!(none.services[0].info.flags, SERVICE_F_REDISPATCH);
        let pass = config(&TWO.replace(
            "forwarding = \"nat\"",
            "forwarding = \"nat\"\nwhen_empty = \"pass\"",
        ));
        let none = planner
            .plan(&pass, &Availability::down(HashSet::from([heavy, light])))
            .unwrap();
        assert_eq!(
            none.services[0].info.flags,
            SERVICE_F_PASS_WHEN_EMPTY | SERVICE_F_REDISPATCH
        );
    }

    #[test]
    fn held_and_drained_backends_keep_their_flows_but_leave_the_ring() {
        let c = config(&TWO.replace("weight = 3", "weight = 0"));
        let mut planner = Planner::default();
        let key = service_key(Ipv4Addr::new(192, 0, 2, 10), 80, Protocol::Tcp);
        let drained = BackendRef::new(key, Ipv4Addr::new(203, 0, 113, 12), 8080);
        let held = BackendRef::new(key, Ipv4Addr::new(203, 0, 113, 11), 8080);
        let p = planner.plan(&c, &Availability::default()).unwrap();
        let ids = p.backend_ids().clone();
        assert_eq!(
            p.backends[&ids[&drained]].flags,
            BACKEND_F_ACTIVE | BACKEND_F_SOLE_REPLY
        );
        assert_eq!(
            p.backends[&ids[&held]].flags,
            BACKEND_F_ACTIVE | BACKEND_F_NEW_CONNECTIONS | BACKEND_F_SOLE_REPLY
        );
        let avail = Availability {
            down: HashSet::new(),
            held: HashSet::from([held]),
        };
        let p = planner.plan(&c, &avail).unwrap();
        assert_eq!(
            p.backends[&ids[&held]].flags,
            BACKEND_F_ACTIVE | BACKEND_F_SOLE_REPLY
        );
        assert_eq!(
            p.services[0].info.ring_len, 0,
            "nobody takes new connections"
        );
        // DSR never redispatches: it cannot see a refusal.
        let dsr = config(
            &TWO.replace("forwarding = \"nat\"", "forwarding = \"dsr\"")
                .replace("8080", "80"),
        );
        let p = Planner::default()
            .plan(&dsr, &Availability::default())
            .unwrap();
        assert_eq!(p.services[0].info.flags & SERVICE_F_REDISPATCH, 0);
    }

    #[test]
    fn the_same_server_has_an_id_per_service() {
        let two_vips = format!(
            "{TWO}{}",
            TWO.replace("name = \"web\"", "name = \"web2\"")
                .replace("port = 80\n", "port = 81\n")
        );
        let plan = Planner::default()
            .plan(&config(&two_vips), &Availability::default())
            .unwrap();
        assert_eq!(plan.backends.len(), 4);
        for s in &plan.services {
            for id in &s.ring {
                assert_eq!(plan.backends[id].service_id, s.info.id);
            }
        }
    }

    #[test]
    fn adopting_a_plan_keeps_its_ids() {
        let mut first = Planner::default();
        let three = TWO.replacen(
            "[[service.backend]]",
            "[[service.backend]]\naddress = \"203.0.113.13\"\nport = 8080\n[[service.backend]]",
            1,
        );
        let _ = first
            .plan(&config(&three), &Availability::default())
            .unwrap();
        // Freeing the first backend's id makes the later ids non-obvious.
        let found = first.plan(&config(TWO), &Availability::default()).unwrap();
        let mut second = Planner::default();
        second.adopt(&found);
        assert_eq!(
            second.plan(&config(TWO), &Availability::default()).unwrap(),
            found
        );
        let mut fresh = Planner::default();
        assert_ne!(
            fresh.plan(&config(TWO), &Availability::default()).unwrap(),
            found
        );
    }

    #[test]
    fn an_id_freed_by_a_plan_is_not_handed_out_by_the_same_plan() {
        let mut planner = Planner::default();
        let first = planner
            .plan(&config(TWO), &Availability::default())
            .unwrap();
        // Replace backend .11 by .13: .13 must not get .11's id in the same
        // plan (the applied ring still names it until the new one is live).
        let swapped = TWO.replace("203.0.113.11", "203.0.113.13");
        let second = planner
            .plan(&config(&swapped), &Availability::default())
            .unwrap();
        let old_ids: HashSet<u32> = first.backends.keys().copied().collect();
        let key = service_key(Ipv4Addr::new(192, 0, 2, 10), 80, Protocol::Tcp);
        let new = second
            .backend_id(&BackendRef::new(key, Ipv4Addr::new(203, 0, 113, 13), 8080))
            .unwrap();
        assert!(!old_ids.contains(&new), "reused {new} at once");
        // A later plan may reuse it.
        let third = planner
            .plan(&config(TWO), &Availability::default())
            .unwrap();
        assert_eq!(third.backends.len(), 2);
    }

    #[test]
    fn ids_survive_replanning_and_freed_ids_are_reused() {
        let mut planner = Planner::default();
        let first = planner
            .plan(&config(TWO), &Availability::default())
            .unwrap();
        let again = planner
            .plan(&config(TWO), &Availability::default())
            .unwrap();
        assert_eq!(first, again);
        // Drop the first backend: the second keeps its id.
        let fewer = TWO.replacen(
            "[[service.backend]]\naddress = \"203.0.113.11\"\nport = 8080\n",
            "",
            1,
        );
        let second = planner
            .plan(&config(&fewer), &Availability::default())
            .unwrap();
        assert_eq!(second.backends.len(), 1);
        let (id, b) = second.backends.iter().next().unwrap();
        assert_eq!(first.backends[id], *b);
    }
}
