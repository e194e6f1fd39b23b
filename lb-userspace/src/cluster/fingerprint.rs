//! A service's ring, summed up in one number: nodes of a cluster that show
//! the same fingerprint for a service send every connection of it to the
//! same backend (Maglev, source_hash), so a connection that ECMP moves to
//! another node keeps its backend. Backends are named by address and port,
//! not by the node-local ids the ring holds, so nodes that number their
//! backends differently still agree.

use xxhash_rust::xxh3::Xxh3;

use crate::plan::{Plan, PlannedService};

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

    fn fingerprint_of(text: &str) -> String {
        let mut c = Control::new(Config::parse(Path::new("t.toml"), text).unwrap());
        let mut dp = FakeDataplane::default();
        c.apply(&mut dp, Config::parse(Path::new("t.toml"), text).unwrap())
            .unwrap();
        let plan = c.applied();
        ring_fingerprint(plan, &plan.services[0])
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
}
