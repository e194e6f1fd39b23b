//! What a reload changes, in one line for the operator who asked for it
//! (`xdplb reload` prints it): services added, removed and changed, and
//! backends added and removed over all services.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;

/// `old` -> `new` as "2 services added (a, b), 1 changed (c); 3 backends
/// added, 1 removed", or "no change".
pub fn summary(old: &Config, new: &Config) -> String {
    let by_name = |c: &Config| -> BTreeMap<String, _> {
        c.services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (o, n) = (by_name(old), by_name(new));
    let added: Vec<&str> = n
        .keys()
        .filter(|k| !o.contains_key(*k))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = o
        .keys()
        .filter(|k| !n.contains_key(*k))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = n
        .iter()
        .filter(|(k, s)| o.get(*k).is_some_and(|old| old != *s))
        .map(|(k, _)| k.as_str())
        .collect();
    let backends = |c: &Config| -> BTreeSet<(String, String, u16)> {
        c.services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (s.name.clone(), b.address.to_string(), b.port))
            })
            .collect()
    };
    let (ob, nb) = (backends(old), backends(new));
    let b_added = nb.difference(&ob).count();
    let b_removed = ob.difference(&nb).count();
    let mut parts = Vec::new();
    let list = |n: &[&str]| {
        if n.is_empty() {
            String::new()
        } else {
            format!(" ({})", n.join(", "))
        }
    };
    let services: Vec<String> = [
        (added.as_slice(), "added"),
        (removed.as_slice(), "removed"),
        (changed.as_slice(), "changed"),
    ]
    .iter()
    .filter(|(v, _)| !v.is_empty())
    .map(|(v, what)| format!("{} {what}{}", v.len(), list(v)))
    .collect();
    if !services.is_empty() {
        parts.push(format!("services: {}", services.join(", ")));
    }
    if b_added + b_removed > 0 {
        parts.push(format!("backends: {b_added} added, {b_removed} removed"));
    }
    let mut others = Vec::new();
    if old.firewall != new.firewall {
        others.push("[firewall]");
    }
    if old.cluster != new.cluster {
        others.push("[cluster]");
    }
    if old.dataplane != new.dataplane {
        others.push("[dataplane]");
    }
    if !others.is_empty() {
        parts.push(format!("changed: {}", others.join(", ")));
    }
    if parts.is_empty() {
        "no change".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(services: &str) -> Config {
        Config::parse(Path::new("t.toml"), services).unwrap()
    }

    fn service(name: &str, backends: &[&str]) -> String {
        let b: Vec<String> = backends
            .iter()
            .map(|a| format!("{{ address = \"{a}\", port = 80 }}"))
            .collect();
        format!(
            "[[service]]\nname = \"{name}\"\nvip = \"192.0.2.10\"\nport = {}\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nbackend = [{}]\n",
            8000 + u16::from(name.as_bytes()[0]),
            b.join(", ")
        )
    }

    #[test]
    fn a_reload_is_summed_up_in_one_line() {
        let old = config(
            &(service("web", &["203.0.113.11", "203.0.113.12"])
                + &service("api", &["203.0.113.21"])),
        );
        assert_eq!(summary(&old, &old), "no change");
        let new = config(
            &(service("web", &["203.0.113.11", "203.0.113.13", "203.0.113.14"])
                + &service("mail", &["203.0.113.31"])),
        );
        assert_eq!(
            summary(&old, &new),
            "services: 1 added (mail), 1 removed (api), 1 changed (web); backends: 3 added, 2 removed"
        );
        let fw = config(&format!(
            "[firewall]\ndeny = [\"198.51.100.0/24\"]\n{}{}",
            service("web", &["203.0.113.11", "203.0.113.12"]),
            service("api", &["203.0.113.21"])
        ));
        assert_eq!(summary(&old, &fw), "changed: [firewall]");
    }
}
