//! The configuration maps (services, backends, rings, VIPs, and what the
//! data path derives from them: service slots by id, the address filter)
//! as a [`Dataplane`], and reading them back (adoption after a restart).
//!
//! The ring array is memory-mapped (`BPF_F_MMAPABLE`): a whole ring of 65537
//! slots is written with one copy instead of 65537 syscalls, into the half
//! its service does not use, and goes live with one service update.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap as _, MapData,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use ipnet::Ipv4Net;
use lb_common::{
    ADDR_FILTER_ENTRIES, AclServiceKey, Backend, FILTER_BACKENDS, FILTER_VIPS, Firewall,
    RING_ENTRIES, RING_SIZE, ServiceInfo, ServiceKey, ServiceSlot, VipInfo, addr_filter_bit, names,
    ring_word,
};

use super::{
    error::{BpfError, error_chain},
    handles::take,
    mapped::Mapped,
};
use crate::{
    dataplane::{Dataplane, DataplaneError},
    plan::{Plan, PlannedService, acl::AclEntry},
};

/// The ring array, mapped into our memory: `u64` elements, two slots each.
struct RingMemory {
    mem: Mapped,
    _map: Array<MapData, u64>,
}

impl RingMemory {
    fn map(ring: Array<MapData, u64>) -> Result<Self, BpfError> {
        let mem = Mapped::new(ring.map().fd().as_fd(), RING_ENTRIES as usize)?;
        Ok(Self { mem, _map: ring })
    }

    /// The elements of one ring.
    fn words(&mut self, service_id: u32, half: u8) -> &mut [u64] {
        let (at, _) = ring_word(service_id, half, 0);
        let len = self.mem.len();
        let at = (at as usize).min(len);
        let n = (lb_common::RING_WORDS as usize).min(len - at);
        &mut self.mem.slice()[at..at + n]
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

/// The address filter (`ADDR_FILTER`) and the addresses behind it: a
/// bit stays set while any address that hashes to it is a VIP (set 0) or a
/// backend (set 1). A bit is set before the address is used and cleared
/// after it is gone, so the data path never misses a VIP or a NAT reply.
struct AddrFilter {
    map: Array<MapData, u64>,
    vips: BTreeSet<u32>,
    /// Backend addresses by backend id.
    backends: BTreeMap<u32, u32>,
}

impl AddrFilter {
    /// Rewrite the filter word holding `addr_be`'s bit in `set` from the
    /// addresses now in that set.
    fn refresh(&mut self, set: u32, addr_be: u32) -> Result<(), DataplaneError> {
        let (word, _) = addr_filter_bit(set, addr_be);
        let addrs: Box<dyn Iterator<Item = &u32>> = if set == FILTER_VIPS {
            Box::new(self.vips.iter())
        } else {
            Box::new(self.backends.values())
        };
        let value = addrs
            .map(|a| addr_filter_bit(set, *a))
            .filter(|(w, _)| *w == word)
            .fold(0u64, |acc, (_, bit)| acc | bit);
        self.map
            .set(word, value, 0)
            .map_err(map_err("update", names::ADDR_FILTER))
    }

    /// Write every word from the address sets (start-up, adoption).
    fn rewrite_all(&mut self) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; ADDR_FILTER_ENTRIES as usize];
        for a in &self.vips {
            let (w, bit) = addr_filter_bit(FILTER_VIPS, *a);
            words[w as usize] |= bit;
        }
        for a in self.backends.values() {
            let (w, bit) = addr_filter_bit(FILTER_BACKENDS, *a);
            words[w as usize] |= bit;
        }
        for (i, v) in words.into_iter().enumerate() {
            self.map
                .set(i as u32, v, 0)
                .map_err(map_err("update", names::ADDR_FILTER))?;
        }
        Ok(())
    }
}

/// The firewall's maps.
struct FirewallMaps {
    global: LpmTrie<MapData, u32, u8>,
    service: LpmTrie<MapData, AclServiceKey, u8>,
    state: Array<MapData, Firewall>,
}

/// An address's bytes as the data path reads them (network order).
fn addr_be(net: &Ipv4Net) -> u32 {
    u32::from_ne_bytes(net.network().octets())
}

fn global_key(net: &Ipv4Net) -> LpmKey<u32> {
    LpmKey::new(u32::from(net.prefix_len()), addr_be(net))
}

fn service_key(id: u32, net: &Ipv4Net) -> LpmKey<AclServiceKey> {
    LpmKey::new(
        32 + u32::from(net.prefix_len()),
        AclServiceKey {
            service_id_be: id.to_be(),
            addr_be: addr_be(net),
        },
    )
}

/// The prefix an LPM key of `prefix_len` bits over `addr_be` stands for.
fn net_of(prefix_len: u32, addr_be: u32) -> Option<Ipv4Net> {
    Ipv4Net::new(
        std::net::Ipv4Addr::from(addr_be.to_ne_bytes()),
        prefix_len.min(32) as u8,
    )
    .ok()
}

/// The configuration maps, owned.
pub struct BpfDataplane {
    services: HashMap<MapData, ServiceKey, ServiceInfo>,
    slots: Array<MapData, ServiceSlot>,
    backends: Array<MapData, Backend>,
    ring: RingMemory,
    vips: HashMap<MapData, u32, VipInfo>,
    reply_owners: HashMap<MapData, lb_common::ReplyOwnerKey, u32>,
    filter: AddrFilter,
    firewall: FirewallMaps,
    rate_limits: Array<MapData, lb_common::RateLimit>,
}

impl BpfDataplane {
    /// Take the maps; the address filter is rebuilt from the VIPs and
    /// backends they hold (empty, or a previous daemon's).
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        let vips: HashMap<MapData, u32, VipInfo> = take(ebpf, names::VIPS)?;
        let backends: Array<MapData, Backend> = take(ebpf, names::BACKENDS)?;
        let err = |name| move |source| BpfError::Map { name, source };
        let mut filter = AddrFilter {
            map: take(ebpf, names::ADDR_FILTER)?,
            vips: BTreeSet::new(),
            backends: BTreeMap::new(),
        };
        for k in vips.keys() {
            filter.vips.insert(k.map_err(err(names::VIPS))?);
        }
        for id in 0..lb_common::MAX_BACKENDS {
            let b = backends.get(&id, 0).map_err(err(names::BACKENDS))?;
            if b.addr_be != 0 {
                filter.backends.insert(id, b.addr_be);
            }
        }
        filter.rewrite_all()?;
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            slots: take(ebpf, names::SERVICE_SLOTS)?,
            backends,
            ring: RingMemory::map(take(ebpf, names::BACKEND_RING)?)?,
            vips,
            reply_owners: take(ebpf, names::REPLY_OWNERS)?,
            filter,
            firewall: FirewallMaps {
                global: take(ebpf, names::ACL_GLOBAL)?,
                service: take(ebpf, names::ACL_SERVICE)?,
                state: take(ebpf, names::FIREWALL)?,
            },
            rate_limits: take(ebpf, names::RATE_LIMITS)?,
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
            let rate = self
                .rate_limits
                .get(&info.id, 0)
                .map_err(err(names::RATE_LIMITS))?;
            services.push(PlannedService {
                name: String::new(),
                key,
                info,
                ring,
                rate,
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
        for entry in self.reply_owners.iter() {
            let (key, id) = entry.map_err(err(names::REPLY_OWNERS))?;
            plan.reply_owners.insert(key, id);
        }
        let fw = &self.firewall;
        for entry in fw.global.iter() {
            let (k, a) = entry.map_err(err(names::ACL_GLOBAL))?;
            if let Some(net) = net_of(k.prefix_len(), k.data()) {
                plan.acl.insert(AclEntry::Global(net), a);
            }
        }
        for entry in fw.service.iter() {
            let (k, a) = entry.map_err(err(names::ACL_SERVICE))?;
            let d = k.data();
            if let Some(net) = net_of(k.prefix_len().saturating_sub(32), d.addr_be) {
                let id = u32::from_be(d.service_id_be);
                plan.acl.insert(AclEntry::Service { id, net }, a);
            }
        }
        plan.acl_generation = fw
            .state
            .get(&0, 0)
            .map_err(err(names::FIREWALL))?
            .generation;
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
    fn set_rate_limit(
        &mut self,
        service_id: u32,
        limit: lb_common::RateLimit,
    ) -> Result<(), DataplaneError> {
        self.rate_limits
            .set(service_id, limit, 0)
            .map_err(map_err("update", names::RATE_LIMITS))
    }
    fn set_acl(&mut self, entry: AclEntry, action: u8) -> Result<(), DataplaneError> {
        let fw = &mut self.firewall;
        match entry {
            AclEntry::Global(net) => fw
                .global
                .insert(&global_key(&net), action, 0)
                .map_err(map_err("update", names::ACL_GLOBAL)),
            AclEntry::Service { id, net } => fw
                .service
                .insert(&service_key(id, &net), action, 0)
                .map_err(map_err("update", names::ACL_SERVICE)),
        }
    }
    fn remove_acl(&mut self, entry: AclEntry) -> Result<(), DataplaneError> {
        let fw = &mut self.firewall;
        let r = match entry {
            AclEntry::Global(net) => fw.global.remove(&global_key(&net)),
            AclEntry::Service { id, net } => fw.service.remove(&service_key(id, &net)),
        };
        match r {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(map_err("delete", names::ACL_SERVICE)),
        }
    }
    fn set_firewall(&mut self, fw: Firewall) -> Result<(), DataplaneError> {
        self.firewall
            .state
            .set(0, fw, 0)
            .map_err(map_err("update", names::FIREWALL))
    }
    fn set_vip(&mut self, addr_be: u32, info: VipInfo) -> Result<(), DataplaneError> {
        if self.filter.vips.insert(addr_be) {
            self.filter.refresh(FILTER_VIPS, addr_be)?;
        }
        self.vips
            .insert(addr_be, info, 0)
            .map_err(map_err("update", names::VIPS))
    }
    fn set_reply_owner(
        &mut self,
        key: lb_common::ReplyOwnerKey,
        id: u32,
    ) -> Result<(), DataplaneError> {
        self.reply_owners
            .insert(key, id, 0)
            .map_err(map_err("update", names::REPLY_OWNERS))
    }
    fn remove_reply_owner(&mut self, key: lb_common::ReplyOwnerKey) -> Result<(), DataplaneError> {
        match self.reply_owners.remove(&key) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(map_err("delete", names::REPLY_OWNERS)),
        }
    }
    fn remove_vip(&mut self, addr_be: u32) -> Result<(), DataplaneError> {
        match self.vips.remove(&addr_be) {
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            r => r.map_err(map_err("delete", names::VIPS)),
        }?;
        if self.filter.vips.remove(&addr_be) {
            self.filter.refresh(FILTER_VIPS, addr_be)?;
        }
        Ok(())
    }
    fn set_backend(&mut self, id: u32, backend: Backend) -> Result<(), DataplaneError> {
        // The new address is in the filter before the entry names it; the
        // old one leaves it after.
        let old = self.filter.backends.get(&id).copied();
        if backend.addr_be != 0 && old != Some(backend.addr_be) {
            self.filter.backends.insert(id, backend.addr_be);
            self.filter.refresh(FILTER_BACKENDS, backend.addr_be)?;
        }
        self.backends
            .set(id, backend, 0)
            .map_err(map_err("update", names::BACKENDS))?;
        if let Some(old) = old
            && old != backend.addr_be
        {
            if backend.addr_be == 0 {
                self.filter.backends.remove(&id);
            }
            self.filter.refresh(FILTER_BACKENDS, old)?;
        }
        Ok(())
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
    /// The slot by id first, then the hash entry: both say the same, and
    /// a packet may use either while the other is being written (the ring
    /// halves they name are both valid until the next grace period).
    fn set_service(&mut self, key: ServiceKey, info: ServiceInfo) -> Result<(), DataplaneError> {
        self.slots
            .set(info.id, ServiceSlot { key, info }, 0)
            .map_err(map_err("update", names::SERVICE_SLOTS))?;
        self.services
            .insert(key, info, 0)
            .map_err(map_err("update", names::SERVICES))
    }
    /// The slot first (unless a new service took its id), so established
    /// flows stop finding the service by id before it goes from the hash.
    fn remove_service(&mut self, key: ServiceKey) -> Result<(), DataplaneError> {
        if let Ok(info) = self.services.get(&key, 0)
            && let Ok(slot) = self.slots.get(&info.id, 0)
            && slot.key == key
        {
            self.slots
                .set(info.id, ServiceSlot::default(), 0)
                .map_err(map_err("update", names::SERVICE_SLOTS))?;
        }
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
