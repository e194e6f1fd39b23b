//! In-memory data path for tests of the control logic.

use std::collections::{BTreeMap, HashMap};

use super::{Dataplane, DataplaneError};
use lb_common::{Backend, ServiceInfo, ServiceKey};

#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub services: HashMap<ServiceKey, ServiceInfo>,
    pub backends: BTreeMap<u32, Backend>,
    pub rings: BTreeMap<(u32, u32), u32>,
    /// Fail the n-th write from now (0 = next), to test error paths.
    pub fail_at: Option<usize>,
    pub writes: usize,
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
        self.rings.get(&(info.id, slot % info.ring_len)).copied()
    }
}

impl Dataplane for FakeDataplane {
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        self.write("BACKENDS")?;
        self.backends.insert(id, backend);
        Ok(())
    }
    fn set_ring_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), DataplaneError> {
        self.write("BACKEND_RING")?;
        self.rings.insert((service_id, slot), backend_id);
        Ok(())
    }
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError> {
        self.write("SERVICES")?;
        self.services.insert(key, info);
        Ok(())
    }
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        self.write("SERVICES")?;
        self.services.remove(&key);
        Ok(())
    }
}
