//! Which VIPs this node may announce. A VIP is announced while the data
//! path is attached and at least one of its services has the backends its
//! `announce` policy asks for; otherwise a router would send this node
//! connections it can only drop. Pure: tested without a daemon.

use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use crate::{
    config::{Announce, Config, ServiceConfig},
    plan::BackendRef,
};

/// One VIP's verdict and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipDecision {
    pub vip: Ipv4Addr,
    pub announce: bool,
    /// Withdrawn by `xdplb drain` whatever its services say.
    pub draining: bool,
    /// Why (each of its services: name, backends taking new connections of
    /// those with weight, its policy).
    pub why: String,
}

/// Backends of `s` taking new connections, of those with weight.
fn up_of(s: &ServiceConfig, out: &HashSet<BackendRef>) -> (usize, usize) {
    let weighted: Vec<_> = s.backends.iter().filter(|b| b.weight > 0).collect();
    let up = weighted
        .iter()
        .filter(|b| !out.contains(&s.backend_ref(b)))
        .count();
    (up, weighted.len())
}

/// Whether `s` lets its VIP be announced.
fn passes(s: &ServiceConfig, out: &HashSet<BackendRef>) -> bool {
    let (up, of) = up_of(s, out);
    match s.announce {
        Announce::Any => up >= 1,
        Announce::Quorum => of > 0 && up * 2 > of,
    }
}

/// `decisions` with every VIP withdrawn for a drain.
pub fn drained(mut decisions: Vec<VipDecision>) -> Vec<VipDecision> {
    for d in &mut decisions {
        d.announce = false;
        d.draining = true;
    }
    decisions
}

/// `decisions` with every VIP held back while a starting node waits for
/// its peers' flow tables (`[cluster.sync]`): a connection ECMP moves to a
/// node without its entry would be sent to another backend.
pub fn joining(mut decisions: Vec<VipDecision>) -> Vec<VipDecision> {
    for d in &mut decisions {
        if d.announce {
            d.announce = false;
            d.why = format!("waiting for the peers' flow tables; {}", d.why);
        }
    }
    decisions
}

/// Every VIP of `config`, in address order, with its verdict. `out`: the
/// backends out of their scheduler (down or held); `attached`: whether the
/// data path is attached (a node that cannot forward announces nothing).
pub fn decide(config: &Config, out: &HashSet<BackendRef>, attached: bool) -> Vec<VipDecision> {
    let mut by_vip: BTreeMap<Ipv4Addr, Vec<&ServiceConfig>> = BTreeMap::new();
    for s in &config.services {
        by_vip.entry(s.vip).or_default().push(s);
    }
    by_vip
        .into_iter()
        .map(|(vip, services)| {
            let announce = attached && services.iter().any(|s| passes(s, out));
            let why = if !attached {
                "data path not attached".to_string()
            } else {
                services
                    .iter()
                    .map(|s| {
                        let (up, of) = up_of(s, out);
                        format!("{}: {up}/{of} up ({})", s.name, s.announce.label())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            VipDecision {
                vip,
                announce,
                draining: false,
                why,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[cluster]

[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80 }, { address = "203.0.113.13", port = 80 }]

[[service]]
name = "web-tls"
vip = "192.0.2.10"
port = 443
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 443 }]

[[service]]
name = "db"
vip = "192.0.2.20"
port = 3306
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
announce = "quorum"
backend = [{ address = "203.0.113.21", port = 3306 }, { address = "203.0.113.22", port = 3306 }, { address = "203.0.113.23", port = 3306 }, { address = "203.0.113.24", port = 3306, weight = 0 }]
"#;

    fn config() -> Config {
        Config::parse(std::path::Path::new("test.toml"), CONFIG).unwrap()
    }

    fn down(c: &Config, which: &[(&str, &str)]) -> HashSet<BackendRef> {
        which
            .iter()
            .map(|(svc, addr)| {
                let s = c.services.iter().find(|s| s.name == *svc).unwrap();
                let b = s
                    .backends
                    .iter()
                    .find(|b| b.address.to_string() == *addr)
                    .unwrap();
                s.backend_ref(b)
            })
            .collect()
    }

    fn announced(d: &[VipDecision]) -> Vec<String> {
        d.iter()
            .filter(|d| d.announce)
            .map(|d| d.vip.to_string())
            .collect()
    }

    #[test]
    fn every_vip_with_a_backend_up_is_announced_once() {
        let c = config();
        let d = decide(&c, &HashSet::new(), true);
        assert_eq!(d.len(), 2, "one verdict per VIP, not per service");
        assert_eq!(announced(&d), ["192.0.2.10", "192.0.2.20"]);
        assert_eq!(d[0].why, "web: 3/3 up (any), web-tls: 1/1 up (any)");
    }

    #[test]
    fn a_drain_withdraws_every_vip_and_keeps_the_reasons() {
        let d = drained(decide(&config(), &HashSet::new(), true));
        assert!(announced(&d).is_empty());
        assert!(d.iter().all(|d| d.draining));
        assert_eq!(d[1].why, "db: 3/3 up (quorum)");
    }

    #[test]
    fn nothing_is_announced_while_the_data_path_is_not_attached() {
        let d = decide(&config(), &HashSet::new(), false);
        assert!(announced(&d).is_empty());
        assert_eq!(d[0].why, "data path not attached");
    }

    #[test]
    fn a_vip_stays_while_any_of_its_services_can_serve() {
        let c = config();
        // web-tls has lost its backend, web still has two.
        let out = down(&c, &[("web-tls", "203.0.113.11"), ("web", "203.0.113.11")]);
        assert!(announced(&decide(&c, &out, true)).contains(&"192.0.2.10".to_string()));
        // Both lost every backend: withdrawn.
        let out = down(
            &c,
            &[
                ("web-tls", "203.0.113.11"),
                ("web", "203.0.113.11"),
                ("web", "203.0.113.12"),
                ("web", "203.0.113.13"),
            ],
        );
        let d = decide(&c, &out, true);
        assert!(!d[0].announce);
        assert_eq!(d[0].why, "web: 0/3 up (any), web-tls: 0/1 up (any)");
    }

    #[test]
    fn quorum_needs_more_than_half_of_the_weighted_backends() {
        let c = config();
        // 2 of 3 weighted backends up (the weight-0 one does not count).
        let d = decide(&c, &down(&c, &[("db", "203.0.113.21")]), true);
        assert!(d[1].announce, "{}", d[1].why);
        assert_eq!(d[1].why, "db: 2/3 up (quorum)");
        // 1 of 3: withdrawn, though one backend could still serve.
        let d = decide(
            &c,
            &down(&c, &[("db", "203.0.113.21"), ("db", "203.0.113.22")]),
            true,
        );
        assert!(!d[1].announce);
    }
}
