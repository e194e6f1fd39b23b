//! The configuration maps (services, backends, rings) as a
//! [`Dataplane`], and reading them back (adoption after a restart).

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData},
};
use lb_common::{Backend, ServiceInfo, ServiceKey, names};

use super::{BpfError, error_chain, take};
use crate::{
    dataplane::{Dataplane, DataplaneError},
    plan::{Plan, PlannedService},
};

/// The configuration maps, owned.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, Backend>,
    ring: Array<MapData, u32>,
}

impl BpfDataplane {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            ring: take(ebpf, names::BACKEND_RING)?,
        })
    }
}

impl BpfDataplane {
    /// What the maps hold, as a plan (service names unknown): how a restarted
    /// daemon learns the ids and contents a previous one left pinned.
    pub fn read_plan(&self) -> Result<Plan, BpfError> {
        let err = |name| move |source| BpfError::Map { name, source };
        let mut services = Vec::new();
        for entry in self.services.iter() {
            let (key, info) = entry.map_err(err(names::SERVICES))?;
            let mut ring = Vec::with_capacity(info.ring_len as usize);
            for slot in 0..info.ring_len.min(lb_common::RING_SIZE) {
                ring.push(
                    self.ring
                        .get(&(info.id * lb_common::RING_SIZE + slot), 0)
                        .map_err(err(names::BACKEND_RING))?,
                );
            }
            services.push(PlannedService {
                name: String::new(),
                key,
                info,
                ring,
            });
        }
        services.sort_by_key(|s| s.info.id);
        let mut backends = BTreeMap::new();
        for id in 0..lb_common::MAX_BACKENDS {
            let b = self.backends.get(&id, 0).map_err(err(names::BACKENDS))?;
            if b != Backend::default() {
                backends.insert(id, b);
            }
        }
        Ok(Plan::new(services, backends))
    }
}

fn map_err(
    op: &'static str,
    map: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError {
        op,
        map,
        message: error_chain(&e),
    }
}

impl Dataplane for BpfDataplane {
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_err("update", names::BACKENDS))
    }
    fn set_ring_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), DataplaneError> {
        self.ring
            .set(service_id * lb_common::RING_SIZE + slot, backend_id, 0)
            .map_err(map_err("update", names::BACKEND_RING))
    }
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError> {
        self.services
            .insert(key, info, 0)
            .map_err(map_err("update", names::SERVICES))
    }
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        self.services
            .remove(&key)
            .map_err(map_err("delete", names::SERVICES))
    }
}
