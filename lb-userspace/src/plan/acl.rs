//! The firewall's source lists as the data path holds them: the global deny
//! list and every service's allow and deny entries, keyed by service id.
//! Pure: the programmer writes the difference between two sets.

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use lb_common::{ACL_ALLOW, ACL_DENY, ServiceKey};

use crate::config::Config;

/// One entry of the data path's lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclEntry {
    /// In `ACL_GLOBAL`: sources dropped before anything else.
    Global(Ipv4Net),
    /// In `ACL_SERVICE`: a source prefix of service `id`.
    Service { id: u32, net: Ipv4Net },
}

/// Entries and their actions (`ACL_ALLOW` / `ACL_DENY`).
pub type AclSet = BTreeMap<AclEntry, u8>;

/// The lists `config` asks for, with `extra_deny` (the run-time global
/// deny list) added; `id_of` names each service's id.
pub fn build(
    config: &Config,
    extra_deny: &[Ipv4Net],
    id_of: impl Fn(&ServiceKey) -> Option<u32>,
) -> AclSet {
    let mut set = AclSet::new();
    for net in config
        .firewall
        .deny
        .iter()
        .map(|p| p.0)
        .chain(extra_deny.iter().copied())
    {
        set.insert(AclEntry::Global(net), ACL_DENY);
    }
    // A configured backend's address is never globally denied: its replies
    // and the answers to health checks must get through whatever the list
    // covers (an exception the longest-prefix match finds first).
    if !set.is_empty() {
        for b in config.services.iter().flat_map(|s| s.backends.iter()) {
            let host = Ipv4Net::new(b.address, 32).expect("a /32");
            set.insert(AclEntry::Global(host), ACL_ALLOW);
        }
    }
    for s in &config.services {
        let Some(id) = id_of(&s.key()) else { continue };
        for p in &s.allow {
            set.insert(AclEntry::Service { id, net: p.0 }, ACL_ALLOW);
        }
        for p in &s.deny {
            set.insert(AclEntry::Service { id, net: p.0 }, ACL_DENY);
        }
    }
    set
}

/// Deny entries in the global list (the data path looks the list up only
/// while there are some).
pub fn global_entries(set: &AclSet) -> u32 {
    set.iter()
        .filter(|(e, a)| matches!(e, AclEntry::Global(_)) && **a == ACL_DENY)
        .count() as u32
}

/// The generation after `g`: 1..=65535, never 0 (a flow entry's 0 means
/// "never checked").
pub fn next_generation(g: u16) -> u16 {
    if g == u16::MAX { 1 } else { g + 1 }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn lists_become_entries_by_service_id() {
        let c = Config::parse(
            Path::new("t.toml"),
            "[firewall]\ndeny = [\"100.64.0.0/10\"]\n[[service]]\nname = \"w\"\nvip = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"dsr\"\nallow = [\"198.51.100.0/24\"]\ndeny = [\"198.51.100.3\"]\nbackend = [{ address = \"203.0.113.11\", port = 80 }]\n",
        )
        .unwrap();
        let set = build(&c, &["203.0.113.0/24".parse().unwrap()], |_| Some(7));
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert_eq!(
            set.get(&AclEntry::Global(net("100.64.0.0/10"))),
            Some(&ACL_DENY)
        );
        assert_eq!(
            set.get(&AclEntry::Global(net("203.0.113.0/24"))),
            Some(&ACL_DENY)
        );
        assert_eq!(
            set.get(&AclEntry::Service {
                id: 7,
                net: net("198.51.100.0/24")
            }),
            Some(&ACL_ALLOW)
        );
        assert_eq!(
            set.get(&AclEntry::Service {
                id: 7,
                net: net("198.51.100.3/32")
            }),
            Some(&ACL_DENY)
        );
        assert_eq!(global_entries(&set), 2);
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(41), 42);
        assert_eq!(next_generation(u16::MAX), 1);
    }
}
