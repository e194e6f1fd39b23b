//! Reading the per-CPU counter maps: verdict reasons, per-service and
//! per-backend traffic.

use std::{collections::BTreeMap, fmt};

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray},
};
use lb_common::{Reason, Traffic, names};

use super::{error::BpfError, handles::take};

/// The counter maps, owned.
pub struct Counters {
    reasons: PerCpuArray<MapData, u64>,
    services: PerCpuArray<MapData, Traffic>,
    backends: PerCpuArray<MapData, Traffic>,
}

/// Counters summed over CPUs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub reasons: BTreeMap<&'static str, u64>,
    pub services: BTreeMap<u32, Traffic>,
    pub backends: BTreeMap<u32, Traffic>,
}

impl CounterSnapshot {
    pub fn reason(&self, r: Reason) -> u64 {
        self.reasons.get(r.label()).copied().unwrap_or(0)
    }
}

impl fmt::Display for CounterSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nonzero: Vec<String> = self
            .reasons
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(
            f,
            "{}",
            if nonzero.is_empty() {
                "no packets".to_string()
            } else {
                nonzero.join(" ")
            }
        )
    }
}

impl Counters {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, BpfError> {
        Ok(Self {
            reasons: take(ebpf, names::REASONS)?,
            services: take(ebpf, names::SERVICE_STATS)?,
            backends: take(ebpf, names::BACKEND_STATS)?,
        })
    }

    /// One reason's count on each CPU (which CPUs did that work).
    pub fn reason_by_cpu(&self, r: Reason) -> Result<Vec<u64>, BpfError> {
        let values = self
            .reasons
            .get(&(r as u32), 0)
            .map_err(|source| BpfError::Map {
                name: names::REASONS,
                source,
            })?;
        Ok(values.iter().copied().collect())
    }

    /// Sum the per-CPU counters of the given service and backend ids.
    pub fn snapshot(
        &self,
        service_ids: &[u32],
        backend_ids: &[u32],
    ) -> Result<CounterSnapshot, BpfError> {
        let mut snap = CounterSnapshot::default();
        for r in Reason::ALL {
            let v = self
                .reasons
                .get(&(*r as u32), 0)
                .map_err(|source| BpfError::Map {
                    name: names::REASONS,
                    source,
                })?;
            snap.reasons.insert(r.label(), v.iter().sum());
        }
        snap.services = sum_traffic(&self.services, service_ids, names::SERVICE_STATS)?;
        snap.backends = self.backend_traffic(backend_ids)?;
        Ok(snap)
    }

    /// Only the given backends' traffic, summed over CPUs.
    pub fn backend_traffic(&self, ids: &[u32]) -> Result<BTreeMap<u32, Traffic>, BpfError> {
        sum_traffic(&self.backends, ids, names::BACKEND_STATS)
    }
}

fn sum_traffic(
    m: &PerCpuArray<MapData, Traffic>,
    ids: &[u32],
    name: &'static str,
) -> Result<BTreeMap<u32, Traffic>, BpfError> {
    let mut out = BTreeMap::new();
    for id in ids {
        let v = m
            .get(id, 0)
            .map_err(|source| BpfError::Map { name, source })?;
        let t = v.iter().fold(Traffic::default(), |a, t| a.merged(t));
        out.insert(*id, t);
    }
    Ok(out)
}
