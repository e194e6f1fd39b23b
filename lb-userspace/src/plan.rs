//! From a validated config to the exact contents the maps should hold.
//!
//! Pure: no maps, no syscalls. Ids are stable across plans made by the same
//! [`Planner`], so a reload re-uses the slots of services and backends that
//! are still there.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
};

use lb_common::{
    BACKEND_F_ACTIVE, Backend, Forwarding, MAX_BACKENDS, MAX_SERVICES, RING_SIZE, Scheduler,
    ServiceInfo, ServiceKey,
};

use crate::{
    config::{Config, Protocol, SchedulerKind},
    maglev::{self, MaglevBackend},
    ring,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedService {
    pub name: String,
    pub key: ServiceKey,
    pub info: ServiceInfo,
    /// Backend id per ring slot; `ring.len() == info.ring_len`.
    pub ring: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub services: Vec<PlannedService>,
    /// Backend id -> entry, for every backend any service uses.
    pub backends: BTreeMap<u32, Backend>,
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

    /// Keep ids of `live` keys, free the others, then assign new ones.
    fn assign(&mut self, live: &[K]) -> Option<Vec<u32>> {
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
                    let id = used.iter().position(|u| !u)? as u32;
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

/// Makes plans, remembering ids between them.
#[derive(Debug)]
pub struct Planner {
    services: Ids<ServiceKey>,
    backends: Ids<(Ipv4Addr, u16)>,
}

impl Default for Planner {
    fn default() -> Self {
        Self {
            services: Ids::new(MAX_SERVICES),
            backends: Ids::new(MAX_BACKENDS),
        }
    }
}

pub fn service_key(vip: Ipv4Addr, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        vip_be: u32::from(vip).to_be(),
        port_be: port.to_be(),
        proto: protocol.number(),
        _pad: 0,
    }
}

impl Planner {
    pub fn plan(&mut self, config: &Config) -> Result<Plan, PlanError> {
        let keys: Vec<ServiceKey> = config
            .services
            .iter()
            .map(|s| service_key(s.vip, s.port, s.protocol))
            .collect();
        let service_ids = self.services.assign(&keys).ok_or(PlanError::ServiceIds)?;

        let mut endpoints: Vec<(Ipv4Addr, u16)> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| (b.address, b.port)))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        let backend_ids = self
            .backends
            .assign(&endpoints)
            .ok_or(PlanError::BackendIds)?;
        let id_of: HashMap<(Ipv4Addr, u16), u32> = endpoints
            .iter()
            .copied()
            .zip(backend_ids.iter().copied())
            .collect();

        let backends = endpoints
            .iter()
            .map(|&(addr, port)| {
                (
                    id_of[&(addr, port)],
                    Backend {
                        addr_be: u32::from(addr).to_be(),
                        port_be: port.to_be(),
                        flags: BACKEND_F_ACTIVE,
                        _pad: 0,
                    },
                )
            })
            .collect();

        let mut services = Vec::with_capacity(config.services.len());
        for ((s, key), id) in config.services.iter().zip(keys).zip(service_ids) {
            let ids: Vec<u32> = s
                .backends
                .iter()
                .map(|b| id_of[&(b.address, b.port)])
                .collect();
            let slots = match s.scheduler {
                SchedulerKind::Maglev => {
                    let mb: Vec<MaglevBackend> = s
                        .backends
                        .iter()
                        .map(|b| MaglevBackend {
                            key: format!("{}:{}", b.address, b.port),
                            weight: b.weight,
                        })
                        .collect();
                    maglev::table(&mb, RING_SIZE)
                        .map_err(|e| PlanError::Maglev(s.name.clone(), e))?
                }
                SchedulerKind::RoundRobin => {
                    let weights: Vec<u32> = s.backends.iter().map(|b| b.weight).collect();
                    ring::weighted_round_robin(&weights, RING_SIZE as usize)
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
                    _pad: [0; 2],
                },
                ring,
            });
        }
        Ok(Plan { services, backends })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
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
        let plan = Planner::default().plan(&config(TWO)).unwrap();
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
    fn ids_survive_replanning_and_freed_ids_are_reused() {
        let mut planner = Planner::default();
        let first = planner.plan(&config(TWO)).unwrap();
        let again = planner.plan(&config(TWO)).unwrap();
        assert_eq!(first, again);
        // Drop the first backend: the second keeps its id.
        let fewer = TWO.replacen(
            "[[service.backend]]\naddress = \"203.0.113.11\"\nport = 8080\n",
            "",
            1,
        );
        let second = planner.plan(&config(&fewer)).unwrap();
        assert_eq!(second.backends.len(), 1);
        let (id, b) = second.backends.iter().next().unwrap();
        assert_eq!(first.backends[id], *b);
    }
}
