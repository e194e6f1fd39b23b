//! A service's ring, summed up in one number: nodes of a cluster that show
//! the same fingerprint for a service send every connection of it to the
//! same backend (Maglev, source_hash), so a connection that ECMP moves to
//! another node keeps its backend. Backends are named by address and port,
//! not by the node-local ids the ring holds, so nodes that number their
//! backends differently still agree.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::{Xxh3, xxh3_64};

use crate::plan::{Plan, PlannedService};

/// Every service's fingerprint, kept across map changes: a ring whose
/// backend ids and id table did not change is not walked again (a health
/// change re-plans every service; walking each 65,537-slot ring by identity
/// costs milliseconds).
#[derive(Debug, Default)]
pub struct Fingerprints {
    /// Service id -> (digest of its ring's ids and the id table, fingerprint).
    cached: BTreeMap<u32, (u64, String)>,
    current: BTreeMap<u32, String>,
}

impl Fingerprints {
    /// Follow `plan`.
    pub fn update(&mut self, plan: &Plan) {
        let mut ids = Xxh3::new();
        for (id, b) in &plan.backends {
            ids.update(&id.to_ne_bytes());
            ids.update(&b.addr_be.to_ne_bytes());
            ids.update(&b.port_be.to_ne_bytes());
        }
        let table = ids.digest();
        let mut cached = BTreeMap::new();
        for s in &plan.services {
            let bytes: Vec<u8> = s.ring.iter().flat_map(|id| id.to_ne_bytes()).collect();
            let key = xxh3_64(&bytes) ^ table.rotate_left(17) ^ u64::from(s.info.scheduler);
            let fp = match self.cached.remove(&s.info.id) {
                Some((k, fp)) if k == key => fp,
                _ => ring_fingerprint(plan, s),
            };
            cached.insert(s.info.id, (key, fp));
        }
        self.current = cached
            .iter()
            .map(|(id, (_, fp))| (*id, fp.clone()))
            .collect();
        self.cached = cached;
    }

    /// Fingerprints by service id.
    pub fn by_service(&self) -> &BTreeMap<u32, String> {
        &self.current
    }
}

/// The fingerprint of `s`'s live ring in `plan`: 16 hex digits.
pub fn ring_fingerprint(plan: &Plan, s: &PlannedService) -> String {
    let mut h = Xxh3::new();
    h.update(&[s.info.scheduler]);
    h.update(&s.info.ring_len.to_le_bytes());
    for id in &s.ring {
        match plan.backends.get(id) {
            Some(b) => {
                h.update(&b.addr_be.to_ne_bytes());
                h.update(&b.port_be.to_ne_bytes());
            }
            None => h.update(&[0xff; 6]),
        }
    }
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests {
    use std::{collections::HashSet, path::Path};

    use super::*;
    use crate::{config::Config, control::Control, dataplane::fake::FakeDataplane};

    const CONFIG: &str = r#"
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80 }, { address = "203.0.113.13", port = 80 }]
"#;

    fn plan_of(text: &str) -> Plan {
        let config = || Config::parse(Path::new("t.toml"), text).unwrap();
        let mut c = Control::new(config());
        c.apply(&mut FakeDataplane::default(), config()).unwrap();
        c.applied().clone()
    }

    fn fingerprint_of(text: &str) -> String {
        let plan = plan_of(text);
        ring_fingerprint(&plan, &plan.services[0])
    }

    #[test]
    fn nodes_with_the_same_backends_agree_and_a_change_shows() {
        let a = fingerprint_of(CONFIG);
        assert_eq!(a.len(), 16);
        // Another node lists the backends in another order: ids differ,
        // the ring (Maglev orders backends by identity) does not.
        let reordered = CONFIG.replace(
            r#"{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80 }"#,
            r#"{ address = "203.0.113.12", port = 80 }, { address = "203.0.113.11", port = 80 }"#,
        );
        assert_ne!(reordered, CONFIG);
        assert_eq!(fingerprint_of(&reordered), a);
        // A weight or a backend differs: so does the fingerprint.
        let weighted = CONFIG.replace(
            r#"{ address = "203.0.113.13", port = 80 }"#,
            r#"{ address = "203.0.113.13", port = 80, weight = 2 }"#,
        );
        let other = CONFIG.replace("203.0.113.13", "203.0.113.14");
        let all: HashSet<String> = [a, fingerprint_of(&weighted), fingerprint_of(&other)].into();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn the_cache_follows_every_change() {
        let mut f = Fingerprints::default();
        let a = plan_of(CONFIG);
        f.update(&a);
        assert_eq!(
            f.by_service()[&a.services[0].info.id],
            ring_fingerprint(&a, &a.services[0])
        );
        let b = plan_of(&CONFIG.replace("203.0.113.13", "203.0.113.14"));
        f.update(&b);
        assert_eq!(
            f.by_service()[&b.services[0].info.id],
            ring_fingerprint(&b, &b.services[0])
        );
        assert_ne!(
            ring_fingerprint(&a, &a.services[0]),
            ring_fingerprint(&b, &b.services[0])
        );
        f.update(&Plan::default());
        assert!(f.by_service().is_empty());
    }
}
