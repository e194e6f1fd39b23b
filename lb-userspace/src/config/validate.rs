//! Checks serde cannot express: ranges, cross-entry rules, limits of the
//! data path. Each returns the key and the reason of the first problem.

use std::collections::HashSet;

use lb_common::{MAX_BACKENDS, MAX_SERVICES};

use super::names::interface_name_ok;
use super::{
    CheckConfig, CheckKind, Config, ForwardingKind, MAX_BACKENDS_PER_SERVICE, MAX_WEIGHT,
    MysqlRole, Protocol, SchedulerKind,
};

impl Config {
    /// Checks serde cannot express. Returns (key, reason) of the first problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let dp = &self.dataplane;
        for (i, name) in dp.interfaces.iter().enumerate() {
            if !interface_name_ok(name) {
                return Err((
                    format!("dataplane.interfaces[{i}]"),
                    format!("{name:?} is not a valid interface name"),
                ));
            }
        }
        if !(1024..=(1 << 24)).contains(&dp.flow_table_size) {
            return Err((
                "dataplane.flow_table_size".into(),
                format!("{} is outside 1024..=16777216", dp.flow_table_size),
            ));
        }
        if !(1024..=(1 << 24)).contains(&dp.embryonic_table_size) {
            return Err((
                "dataplane.embryonic_table_size".into(),
                format!("{} is outside 1024..=16777216", dp.embryonic_table_size),
            ));
        }
        if !(1..=65_536).contains(&self.control.max_concurrent_checks) {
            return Err((
                "control.max_concurrent_checks".into(),
                format!(
                    "{} is outside 1..=65536",
                    self.control.max_concurrent_checks
                ),
            ));
        }
        if !(100..=3_600_000).contains(&dp.next_hop_refresh_ms) {
            return Err((
                "dataplane.next_hop_refresh_ms".into(),
                format!("{} is outside 100..=3600000", dp.next_hop_refresh_ms),
            ));
        }
        if self.services.is_empty() {
            return Err((
                "service".into(),
                "at least one [[service]] is required".into(),
            ));
        }
        if self.services.len() > MAX_SERVICES as usize {
            return Err((
                "service".into(),
                format!(
                    "{} services; the data path holds at most {MAX_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        // Backend ids are per service, so every listed backend takes one.
        let mut all_backends = 0usize;
        let mut acl_entries = 0usize;
        let vips: HashSet<std::net::Ipv4Addr> = self.services.iter().map(|s| s.vip).collect();
        for (i, s) in self.services.iter().enumerate() {
            let at = |k: &str| format!("service[{i}].{k}");
            if s.name.trim().is_empty() {
                return Err((at("name"), "must not be empty".into()));
            }
            if !names.insert(s.name.as_str()) {
                return Err((
                    at("name"),
                    format!("{:?} is used by another service", s.name),
                ));
            }
            if s.vip.is_unspecified() || s.vip.is_multicast() || s.vip.is_broadcast() {
                return Err((at("vip"), format!("{} cannot be a virtual IP", s.vip)));
            }
            if s.port == 0 {
                return Err((at("port"), "must be 1..=65535".into()));
            }
            if !keys.insert((s.vip, s.port, s.protocol)) {
                return Err((
                    at("vip"),
                    format!(
                        "{}:{} {:?} is already served by another service",
                        s.vip, s.port, s.protocol
                    ),
                ));
            }
            if s.backends.is_empty() {
                return Err((
                    at("backend"),
                    "at least one [[service.backend]] is required".into(),
                ));
            }
            if s.backends.len() > MAX_BACKENDS_PER_SERVICE {
                return Err((
                    at("backend"),
                    format!(
                        "{} backends; at most {MAX_BACKENDS_PER_SERVICE}",
                        s.backends.len()
                    ),
                ));
            }
            let mut seen = HashSet::new();
            for (j, b) in s.backends.iter().enumerate() {
                let bat = |k: &str| format!("service[{i}].backend[{j}].{k}");
                if b.address.is_unspecified()
                    || b.address.is_multicast()
                    || b.address.is_broadcast()
                {
                    return Err((bat("address"), format!("{} cannot be a backend", b.address)));
                }
                if vips.contains(&b.address) {
                    return Err((
                        bat("address"),
                        format!(
                            "{} is a VIP: the load balancer would send its traffic to itself (a backend is a server's own address)",
                            b.address
                        ),
                    ));
                }
                if b.port == 0 {
                    return Err((bat("port"), "must be 1..=65535".into()));
                }
                if s.forwarding == ForwardingKind::Dsr && b.port != s.port {
                    return Err((
                        bat("port"),
                        format!(
                            "{} differs from the service port {}; DSR forwards without rewriting ports (use forwarding = \"nat\")",
                            b.port, s.port
                        ),
                    ));
                }
                if b.weight > MAX_WEIGHT {
                    return Err((
                        bat("weight"),
                        format!("{} is above the maximum {MAX_WEIGHT}", b.weight),
                    ));
                }
                if !seen.insert((b.address, b.port)) {
                    return Err((
                        bat("address"),
                        format!("{}:{} is listed twice", b.address, b.port),
                    ));
                }
                all_backends += 1;
            }
            if let Some(c) = &s.check {
                validate_check(c, &at)?;
            }
            if let Some(p) = &s.passive {
                if s.check.is_none() {
                    return Err((
                        at("passive"),
                        "needs an active [service.check]: it is what brings a passively failed backend back".into(),
                    ));
                }
                if !(100..=60_000).contains(&p.window_ms) {
                    return Err((at("passive.window_ms"), "must be 100..=60000".into()));
                }
                if p.refused > 0 && s.forwarding == ForwardingKind::Dsr {
                    return Err((
                        at("passive.refused"),
                        "DSR replies bypass the load balancer, so it never sees a backend refuse a connection (use syn_retransmits)".into(),
                    ));
                }
                if !(1..=100).contains(&p.max_out_percent) {
                    return Err((at("passive.max_out_percent"), "must be 1..=100".into()));
                }
                if s.protocol == Protocol::Udp && (p.refused > 0 || p.syn_retransmits > 0) {
                    return Err((
                        at("passive"),
                        "passive signals are TCP's; this service is UDP".into(),
                    ));
                }
            }
            if s.redispatch == Some(true)
                && (s.forwarding == ForwardingKind::Dsr || s.protocol == Protocol::Udp)
            {
                return Err((
                    at("redispatch"),
                    "applies to NAT TCP services only: the load balancer must see the backend refuse a connection".into(),
                ));
            }
            if let Some(p) = s.deny.iter().find(|p| s.allow.contains(p)) {
                return Err((
                    at("deny"),
                    format!(
                        "{p} is in allow too; the most specific prefix decides, so one prefix cannot be both"
                    ),
                ));
            }
            acl_entries += s.allow.len() + s.deny.len();
            if let Some(r) = &s.rate_limit {
                for (k, v) in [
                    ("per_client", r.per_client),
                    ("per_client_burst", r.per_client_burst),
                    ("total", r.total),
                    ("total_burst", r.total_burst),
                ] {
                    if v == Some(0) {
                        return Err((at(&format!("rate_limit.{k}")), "must be at least 1".into()));
                    }
                }
                if r.per_client.is_none() && r.total.is_none() {
                    return Err((
                        at("rate_limit"),
                        "sets no limit: give per_client, total or both (new connections per second)".into(),
                    ));
                }
                if (r.per_client_burst.is_some() && r.per_client.is_none())
                    || (r.total_burst.is_some() && r.total.is_none())
                {
                    return Err((at("rate_limit"), "a burst needs its rate".into()));
                }
            }
            if s.syn_cookie_threshold.is_some()
                && (s.forwarding != ForwardingKind::Nat || s.protocol != Protocol::Tcp)
            {
                return Err((
                    at("syn_cookie_threshold"),
                    "SYN cookies need a NAT TCP service: the LB translates the connection's sequence numbers, and a DSR backend's replies never pass it".into(),
                ));
            }
            if s.scheduler == SchedulerKind::LeastConn && s.protocol == Protocol::Udp {
                return Err((
                    at("scheduler"),
                    "least_conn counts connections by their TCP handshake and close; a UDP flow never closes (use round_robin, maglev or source_hash)".into(),
                ));
            }
            if s.backends.iter().all(|b| b.weight == 0) {
                return Err((
                    at("backend"),
                    "every backend has weight 0; no flow could be scheduled".into(),
                ));
            }
        }
        if let Some(c) = &self.cluster {
            super::cluster::validate(c, self.ha.is_some())?;
        }
        if let Some(h) = &self.ha {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            super::ha::validate(h, &names)?;
        }
        if acl_entries > lb_common::MAX_ACL_SERVICE as usize {
            return Err((
                "service".into(),
                format!(
                    "{acl_entries} allow/deny entries over all services; the data path holds at most {}",
                    lb_common::MAX_ACL_SERVICE
                ),
            ));
        }
        if self.firewall.deny.len() > lb_common::MAX_ACL_GLOBAL as usize {
            return Err((
                "firewall.deny".into(),
                format!(
                    "{} entries; the data path holds at most {}",
                    self.firewall.deny.len(),
                    lb_common::MAX_ACL_GLOBAL
                ),
            ));
        }
        if all_backends > MAX_BACKENDS as usize {
            return Err((
                "service".into(),
                format!(
                    "{all_backends} backends over all services; the data path holds at most {MAX_BACKENDS}"
                ),
            ));
        }
        Ok(())
    }
}

fn validate_check(c: &CheckConfig, at: &dyn Fn(&str) -> String) -> Result<(), (String, String)> {
    if !(100..=3_600_000).contains(&c.interval_ms) {
        return Err((at("check.interval_ms"), "must be 100..=3600000".into()));
    }
    if c.timeout_ms < 10 || c.timeout_ms > c.interval_ms {
        return Err((
            at("check.timeout_ms"),
            format!("must be 10..=interval_ms ({})", c.interval_ms),
        ));
    }
    for (k, v) in [("check.rise", c.rise), ("check.fall", c.fall)] {
        if !(1..=100).contains(&v) {
            return Err((at(k), "must be 1..=100".into()));
        }
    }
    if c.port == Some(0) {
        return Err((at("check.port"), "must be 1..=65535".into()));
    }
    match c.kind {
        CheckKind::Http | CheckKind::Https => {
            if !c.path.starts_with('/') || c.path.contains([' ', '\r', '\n']) {
                return Err((
                    at("check.path"),
                    format!("{:?} is not an HTTP path", c.path),
                ));
            }
            if c.host
                .as_deref()
                .is_some_and(|h| h.is_empty() || h.contains([' ', '\r', '\n']))
            {
                return Err((at("check.host"), "not a valid Host header value".into()));
            }
            let [lo, hi] = c.status;
            if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
                return Err((
                    at("check.status"),
                    format!("[{lo}, {hi}] is not a range of HTTP status codes"),
                ));
            }
        }
        CheckKind::Mysql => {
            if c.mysql_role != MysqlRole::Any && c.mysql_user.is_none() {
                return Err((
                    at("check.mysql_user"),
                    "a mysql_role check logs in to ask @@global.read_only; set mysql_user".into(),
                ));
            }
        }
        CheckKind::Tcp => {}
    }
    if let Some(ca) = &c.tls_ca_file {
        if c.kind != CheckKind::Https {
            return Err((
                at("check.tls_ca_file"),
                "only an https check uses it".into(),
            ));
        }
        if let Err(e) = std::fs::read(ca) {
            return Err((
                at("check.tls_ca_file"),
                format!("cannot read {}: {e}", ca.display()),
            ));
        }
    }
    Ok(())
}
