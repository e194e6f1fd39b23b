//! The configuration maps (services, backends, rings) as a
//! [`Dataplane`], and reading them back (adoption after a restart).
//!
//! The ring array is memory-mapped (`BPF_F_MMAPABLE`): a whole ring of 65537
//! slots is written with one copy instead of 65537 syscalls, into the half
//! its service does not use, and goes live with one service update.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap as _, MapData},
};
use lb_common::{
    Backend, RING_ENTRIES, RING_SIZE, ServiceInfo, ServiceKey, VipInfo, names, ring_word,
};

use super::{BpfError, error_chain, take};
use crate::{
    dataplane::{Dataplane, DataplaneError},
    plan::{Plan, PlannedService},
};

/// The ring array, mapped into our memory: `u64` elements, two slots each.
struct RingMemory {
    ptr: *mut u64,
    len: usize,
    _map: Array<MapData, u64>,
}

impl RingMemory {
    fn map(ring: Array<MapData, u64>) -> Result<Self, BpfError> {
        let len = RING_ENTRIES as usize;
        // (The array's own fd; the mapping keeps the memory alive with it.)
        let fd = ring.map().fd().as_fd().as_raw_fd();
        // SAFETY: maps the array map's own memory (created with
        // BPF_F_MMAPABLE; 8-byte elements, `RING_ENTRIES` of them).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(BpfError::Mmap(std::io::Error::last_os_error()));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
            _map: ring,
        })
    }

    /// The elements of one ring.
    fn words(&mut self, service_id: u32, half: u8) -> &mut [u64] {
        let (at, _) = ring_word(service_id, half, 0);
        let at = (at as usize).min(self.len);
        let n = (lb_common::RING_WORDS as usize).min(self.len - at);
        // SAFETY: in bounds of the mapping, which lives as long as self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), n) }
    }

    fn read(&mut self, service_id: u32, half: u8, len: usize) -> Vec<u32> {
        let words = self.words(service_id, half);
        (0..len.min(RING_SIZE as usize))
            .map(|slot| (words[slot / 2] >> ((slot & 1) * 32)) as u32)
            .collect()
    }

    /// Write a ring. The data path only reads halves a service entry points
    /// at, and this one does not (the programmer's contract).
    fn write(&mut self, service_id: u32, half: u8, ring: &[u32]) {
        let words = self.words(service_id, half);
        for (w, pair) in words.iter_mut().zip(ring.chunks(2)) {
            *w = pair[0] as u64 | (pair.get(1).copied().unwrap_or(0) as u64) << 32;
        }
    }
}

// SAFETY: the mapping belongs to the process, not to a thread; moving its
// owner to another thread (e.g. a writer in a test) is fine.
unsafe impl Send for RingMemory {}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len * 8) };
    }
}

/// The configuration maps, owned.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    backends: Array<MapData, Backend>,
    ring: RingMemory,
    vips: HashMap<MapData, u32, VipInfo>,
}

impl BpfDataplane {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            backends: take(ebpf, names::BACKENDS)?,
            ring: RingMemory::map(take(ebpf, names::BACKEND_RING)?)?,
            vips: take(ebpf, names::VIPS)?,
        })
    }
}

impl BpfDataplane {
    /// What the maps hold, as a plan (service names unknown): how a restarted
    /// daemon learns the ids and contents a previous one left pinned.
    pub fn read_plan(&mut self) -> Result<Plan, BpfError> {
        let err = |name| move |source| BpfError::Map { name, source };
        let mut services = Vec::new();
        for entry in self.services.iter() {
            let (key, info) = entry.map_err(err(names::SERVICES))?;
            let ring = self.ring.read(info.id, info.ring, info.ring_len as usize);
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
        let mut plan = Plan::new(services, backends);
        for entry in self.vips.iter() {
            let (addr, v) = entry.map_err(err(names::VIPS))?;
            plan.vips.insert(addr, v);
        }
        Ok(plan)
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
    fn set_vip(&mut self, addr_be: u32, info: VipInfo) -> Result<(), DataplaneError> {
        self.vips
            .insert(addr_be, info, 0)
            .map_err(map_err("update", names::VIPS))
    }
    fn remove_vip(&mut self, addr_be: u32) -> Result<(), DataplaneError> {
        match self.vips.remove(&addr_be) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(map_err("delete", names::VIPS)),
        }
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        self.backends
            .set(id, backend, 0)
            .map_err(map_err("update", names::BACKENDS))
    }
    fn write_ring(
        &mut self,
        service_id: u32,
        half: u8,
        ring: &[u32],
    ) -> Result<(), DataplaneError> {
        if service_id >= lb_common::MAX_SERVICES || ring.len() > RING_SIZE as usize {
            return Err(DataplaneError {
                op: "write",
                map: names::BACKEND_RING,
                message: format!("service {service_id}, {} slots: out of range", ring.len()),
            });
        }
        self.ring.write(service_id, half, ring);
        Ok(())
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

    /// An RCU grace period: `membarrier(MEMBARRIER_CMD_GLOBAL)` returns after
    /// `synchronize_rcu()`, and every XDP run happens inside an RCU read
    /// section. Where it is unavailable (nohz_full CPUs), a pause far longer
    /// than any XDP run.
    fn quiesce(&mut self) -> Result<(), DataplaneError> {
        const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
        // SAFETY: a plain syscall with no pointers.
        let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if rc != 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(())
    }
}
