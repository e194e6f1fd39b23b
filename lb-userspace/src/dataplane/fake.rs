//! In-memory data path for tests of the control logic.

use std::collections::{BTreeMap, HashMap};

use super::contract::{Dataplane, DataplaneError};
use lb_common::{Backend, Firewall, ReplyOwnerKey, ServiceInfo, ServiceKey, VipInfo};

use crate::plan::acl::AclEntry;

#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub services: HashMap<ServiceKey, ServiceInfo>,
    pub backends: BTreeMap<u32, Backend>,
    /// (service id, half) -> ring.
    pub rings: BTreeMap<(u32, u8), Vec<u32>>,
    pub vips: BTreeMap<u32, VipInfo>,
    pub reply_owners: BTreeMap<ReplyOwnerKey, u32>,
    pub acl: BTreeMap<AclEntry, u8>,
    pub rate_limits: BTreeMap<u32, lb_common::RateLimit>,
    pub firewall: Firewall,
    /// Fail the n-th write from now (0 = next), to test error paths.
    pub fail_at: Option<usize>,
    pub writes: usize,
    /// Every operation in order, to check the programmer's ordering.
    pub log: Vec<String>,
    /// Halves written since the last quiesce while a service still pointed
    /// at them, or since a flip away from them: must stay empty.
    pub unsafe_writes: Vec<(u32, u8)>,
    /// Halves a service stopped pointing at since the last quiesce.
    retiring: Vec<(u32, u8)>,
}

impl FakeDataplane {
    fn write(&mut self, map: &'static str) -> Result<(), DataplaneError> {
        if let Some(n) = self.fail_at {
            if n == 0 {
                self.fail_at = None;
                return Err(DataplaneError {
                    op: "update",
                    map,
                    message: "injected failure".into(),
                });
            }
            self.fail_at = Some(n - 1);
        }
        self.writes += 1;
        Ok(())
    }

    /// The backend id a flow hitting `slot` of service `key` would get.
    pub fn pick(&self, key: &ServiceKey, slot: u32) -> Option<u32> {
        let info = self.services.get(key)?;
        let ring = self.rings.get(&(info.id, info.ring))?;
        ring.get((slot % info.ring_len) as usize).copied()
    }

    fn live(&self, service_id: u32, half: u8) -> bool {
        self.services
            .values()
            .any(|i| i.id == service_id && i.ring == half)
    }
}

impl Dataplane for FakeDataplane {
    fn set_rate_limit(
        &mut self,
        service_id: u32,
        limit: lb_common::RateLimit,
    ) -> Result<(), DataplaneError> {
        self.write("RATE_LIMITS")?;
        self.log.push(format!("rate {service_id}"));
        self.rate_limits.insert(service_id, limit);
        Ok(())
    }
    fn set_acl(&mut self, entry: AclEntry, action: u8) -> Result<(), DataplaneError> {
        self.write("ACL")?;
        self.log.push(format!("acl set {entry:?} {action}"));
        self.acl.insert(entry, action);
        Ok(())
    }
    fn remove_acl(&mut self, entry: AclEntry) -> Result<(), DataplaneError> {
        self.write("ACL")?;
        self.log.push(format!("acl remove {entry:?}"));
        self.acl.remove(&entry);
        Ok(())
    }
    fn set_firewall(&mut self, fw: Firewall) -> Result<(), DataplaneError> {
        self.write("FIREWALL")?;
        self.log
            .push(format!("firewall generation {}", fw.generation));
        self.firewall = fw;
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        self.write("BACKENDS")?;
        self.log
            .push(format!("backend {id} flags {}", backend.flags));
        self.backends.insert(id, backend);
        Ok(())
    }
    fn write_ring(
        &mut self,
        service_id: u32,
        half: u8,
        ring: &[u32],
    ) -> Result<(), DataplaneError> {
        self.write("BACKEND_RING")?;
        if self.live(service_id, half) || self.retiring.contains(&(service_id, half)) {
            self.unsafe_writes.push((service_id, half));
        }
        self.log.push(format!("ring {service_id}/{half}"));
        self.rings.insert((service_id, half), ring.to_vec());
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError> {
        self.write("SERVICES")?;
        if let Some(old) = self.services.get(&key)
            && (old.id, old.ring) != (info.id, info.ring)
        {
            self.retiring.push((old.id, old.ring));
        }
        self.log.push(format!("service {}", info.id));
        self.services.insert(key, info);
        Ok(())
    }
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        self.write("SERVICES")?;
        if let Some(old) = self.services.remove(&key) {
            self.retiring.push((old.id, old.ring));
        }
        self.log.push("remove service".into());
        Ok(())
    }
    fn set_vip(&mut self, addr_be: u32, info: VipInfo) -> Result<(), DataplaneError> {
        self.write("VIPS")?;
        self.vips.insert(addr_be, info);
        Ok(())
    }
    fn remove_vip(&mut self, addr_be: u32) -> Result<(), DataplaneError> {
        self.write("VIPS")?;
        self.vips.remove(&addr_be);
        Ok(())
    }
    fn set_reply_owner(&mut self, key: ReplyOwnerKey, id: u32) -> Result<(), DataplaneError> {
        self.write("REPLY_OWNERS")?;
        self.reply_owners.insert(key, id);
        self.log.push(format!("set reply owner {id}"));
        Ok(())
    }
    fn remove_reply_owner(&mut self, key: ReplyOwnerKey) -> Result<(), DataplaneError> {
        self.write("REPLY_OWNERS")?;
        self.reply_owners.remove(&key);
        self.log.push("remove reply owner".into());
        Ok(())
    }
    fn quiesce(&mut self) -> Result<(), DataplaneError> {
        self.retiring.clear();
        self.log.push("quiesce".into());
        Ok(())
    }
}
