//! `xdplb status`: the table printed from the status socket, and the same
//! view as JSON (`/status`).

use std::fmt::Write as _;

use super::view::{HealthView, View};

/// The view as JSON, for `/status`.
pub fn json(v: &View) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The HA line(s) above the table.
fn ha_lines(h: &super::view::HaView) -> String {
    let mut out = format!(
        "HA: {} (priority {}, group {}{}{})",
        h.state.to_uppercase(),
        h.priority,
        h.group,
        h.address
            .as_deref()
            .map(|a| format!(", {a}"))
            .unwrap_or_default(),
        if h.ready {
            ""
        } else {
            ", not ready to forward"
        }
    );
    match &h.peer {
        Some(p) if p.lost => {
            let _ = write!(
                out,
                "; peer {} LOST (silent for {:.1} s; it last said {}, priority {})",
                p.address,
                p.last_seen,
                p.state.to_uppercase(),
                p.priority,
            );
        }
        Some(p) => {
            let _ = write!(
                out,
                "; peer {} {} (priority {}), last advert {:.0} ms ago",
                p.address,
                p.state.to_uppercase(),
                p.priority,
                p.last_seen * 1e3
            );
        }
        None => out.push_str("; no peer heard"),
    }
    let _ = write!(
        out,
        "\nHA sync: {} flows sent, {} received",
        h.flows_sent, h.flows_received
    );
    if let Some(l) = h.sync_lag {
        let _ = write!(out, ", lag {:.1} ms", l.as_secs_f64() * 1e3);
    }
    if h.events_lost + h.queue_dropped > 0 {
        let _ = write!(out, ", {} lost", h.events_lost + h.queue_dropped);
    }
    out += &rejected_clause(&h.rejected);
    if !h.last_cause.is_empty() {
        let _ = write!(out, "\nHA last change: {}", h.last_cause);
    }
    out.push_str("\n\n");
    out
}

/// The cluster's announcements above the table.
/// "; rejected: reason n, ..." for the reasons counted (empty if none).
fn rejected_clause(rejected: &std::collections::BTreeMap<&'static str, u64>) -> String {
    let counted: Vec<String> = rejected
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    if counted.is_empty() {
        String::new()
    } else {
        format!("; rejected: {}", counted.join(", "))
    }
}

/// `[cluster.sync]`: joined or waiting, then a line per peer.
fn sync_lines(s: &crate::api::view::SyncView) -> String {
    let mut out = format!(
        "cluster sync: {}",
        if s.joined {
            "joined"
        } else {
            "JOINING (waiting for the peers' flow tables; VIPs held back)"
        }
    );
    let lost = s.events_lost + s.queue_dropped;
    if lost > 0 {
        let _ = write!(out, "; {lost} new flows never sent");
    }
    out += &rejected_clause(&s.rejected);
    out.push('\n');
    for p in &s.peers {
        let seen = match p.last_seen {
            None => "never heard".to_string(),
            Some(t) => format!("{} ({:.1} s ago)", if p.up { "up" } else { "LOST" }, t),
        };
        let _ = write!(
            out,
            "  peer {} {seen}: {} flows sent, {} received; tables {} sent, {} received{}",
            p.address,
            p.records_sent,
            p.records_received,
            p.bulk_sent,
            p.bulk_received,
            if p.bulk_done { " (whole)" } else { "" }
        );
        if let Some(l) = p.lag {
            let _ = write!(out, ", lag {:.1} ms", l.as_secs_f64() * 1e3);
        }
        if p.send_errors > 0 {
            let _ = write!(out, ", {} send errors", p.send_errors);
        }
        out.push('\n');
    }
    out
}

fn cluster_lines(c: &crate::cluster::AnnounceStatus) -> String {
    let mut out = format!(
        "cluster: {} of {} VIPs announced (routing table {}, learnt by BIRD)",
        c.vips.iter().filter(|a| a.announced).count(),
        c.vips.len(),
        c.table
    );
    if c.errors > 0 {
        let _ = write!(out, "; {} route changes failed", c.errors);
    }
    match &c.bird.error {
        Some(e) => {
            let _ = write!(out, "\nBIRD: cannot be read: {e}");
        }
        None => {
            let sessions: Vec<String> = c
                .bird
                .sessions
                .iter()
                .map(|s| {
                    if s.established() {
                        format!("{} Established", s.name)
                    } else {
                        format!("{} DOWN ({} {})", s.name, s.state, s.info)
                    }
                })
                .collect();
            let _ = write!(
                out,
                "\nBIRD: BGP {}",
                if sessions.is_empty() {
                    "no sessions configured".to_string()
                } else {
                    sessions.join(", ")
                }
            );
        }
    }
    out.push('\n');
    for a in &c.vips {
        let state = match (a.wanted, a.announced) {
            (false, false) if a.draining => "DRAINING",
            (true, true) => "announced",
            (false, false) => "WITHDRAWN",
            (true, false) => "announcing (route change failing)",
            (false, true) => "withdrawing (route change failing)",
        };
        let _ = writeln!(out, "  {:<15}  {state:<9}  {}", a.vip, a.why);
    }
    out.push('\n');
    out
}

/// The human table `xdplb status` prints.
pub fn table(v: &View) -> String {
    let mut rows = vec![
        [
            "SERVICE", "VIP", "BACKEND", "HEALTH", "WEIGHT", "CONN/S", "FLOWS", "CONNS", "PACKETS",
            "CHECK",
        ]
        .map(String::from),
    ];
    for s in &v.services {
        rows.push([
            s.name.clone(),
            format!("{} {} {}", s.vip, s.protocol, s.forwarding),
            String::new(),
            format!(
                "{}/{} up",
                s.backends
                    .iter()
                    .filter(|b| b.health != HealthView::Down)
                    .count(),
                s.backends.len()
            ),
            String::new(),
            format!("{:.1}", s.conn_rate),
            s.backends.iter().map(|b| b.flows).sum::<u64>().to_string(),
            s.traffic.connections.to_string(),
            s.traffic.packets.to_string(),
            if s.traffic.no_backend > 0 {
                format!("{} pkts found no backend", s.traffic.no_backend)
            } else {
                String::new()
            },
        ]);
        for b in &s.backends {
            let check = match (&b.last_error, b.check_latency) {
                (Some(e), _) => format!("fail: {e}"),
                (None, Some(d)) => format!("ok {:.1} ms", d.as_secs_f64() * 1e3),
                (None, None) => "-".into(),
            };
            rows.push([
                String::new(),
                String::new(),
                b.endpoint.clone(),
                b.state_label().into(),
                b.weight.to_string(),
                format!("{:.1}", b.conn_rate),
                match b.active_connections {
                    // least_conn: the estimate it schedules by.
                    Some(a) => format!("{} ({a} active)", b.flows),
                    None => b.flows.to_string(),
                },
                b.traffic.connections.to_string(),
                b.traffic.packets.to_string(),
                check,
            ]);
        }
    }
    let mut widths = [0usize; 10];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = v.ha.as_ref().map(ha_lines).unwrap_or_default();
    out += &v.cluster_sync.as_ref().map(sync_lines).unwrap_or_default();
    out += &v.cluster.as_ref().map(cluster_lines).unwrap_or_default();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let dropped: Vec<String> = v
        .reasons
        .iter()
        .filter(|(r, n)| *n > 0 && r.starts_with("drop"))
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    if !dropped.is_empty() {
        let _ = writeln!(out, "\ndrops: {}", dropped.join(" "));
    }
    let rings: Vec<String> = v
        .services
        .iter()
        .filter(|s| !s.ring_fingerprint.is_empty())
        .map(|s| format!("{} {}", s.name, s.ring_fingerprint))
        .collect();
    if !rings.is_empty() {
        let _ = writeln!(out, "\nring fingerprints: {}", rings.join(", "));
    }
    // SYN cookies at work: SYNs answered by the LB, connections they opened.
    let count = |name: &str| {
        v.reasons
            .iter()
            .find(|(r, _)| *r == name)
            .map_or(0, |(_, n)| *n)
    };
    let (answered, opened) = (count("tx_syn_cookie"), count("fwd_cookie_syn"));
    if answered + opened > 0 {
        let _ = writeln!(
            out,
            "syn cookies: {answered} SYNs answered, {opened} SYNs sent to backends for cookie connections"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::view::samples::{ha_view, view};

    #[test]
    fn ha_state_peer_sync_and_rejections_head_the_table() {
        let t = table(&ha_view());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "HA: MASTER (priority 150, group 7, 10.255.0.1); peer 10.255.0.2 BACKUP (priority 100), last advert 40 ms ago"
        );
        assert_eq!(
            lines[1],
            "HA sync: 1234 flows sent, 0 received, lag 1.5 ms; rejected: bad_tag 3"
        );
        assert!(lines[2].starts_with("HA last change: no MASTER advert"));
        assert!(lines[4].starts_with("SERVICE"));
        // A peer silent for a master-down interval is shown lost, and a
        // node that could not forward says so.
        let mut v = ha_view();
        let h = v.ha.as_mut().unwrap();
        h.ready = false;
        let p = h.peer.as_mut().unwrap();
        (p.lost, p.last_seen, p.state) = (true, 24.1, "master");
        assert_eq!(
            table(&v).lines().next().unwrap(),
            "HA: MASTER (priority 150, group 7, 10.255.0.1, not ready to forward); peer 10.255.0.2 LOST (silent for 24.1 s; it last said MASTER, priority 100)"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&ha_view())).unwrap();
        assert_eq!(j["ha"]["state"], "master");
        assert_eq!(j["ha"]["peer"]["state"], "backup");
        assert_eq!(j["ha"]["rejected"]["bad_tag"], 3);
    }

    #[test]
    fn cluster_announcements_and_ring_fingerprints_are_shown() {
        let t = table(&crate::api::view::samples::cluster_view());
        let t = t
            .split_once("cluster: ")
            .map(|(_, r)| format!("cluster: {r}"))
            .unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "cluster: 1 of 2 VIPs announced (routing table 4242, learnt by BIRD)"
        );
        assert_eq!(
            lines[1],
            "BIRD: BGP upstream Established, backup DOWN (start Active)"
        );
        assert_eq!(lines[2], "  192.0.2.10       announced  web: 1/2 up (any)");
        assert_eq!(
            lines[3],
            "  192.0.2.20       WITHDRAWN  db: 1/3 up (quorum)"
        );
        assert!(
            t.contains("ring fingerprints: w\"w 00c0ffee00c0ffee"),
            "{t}"
        );
        let s = table(&crate::api::view::samples::cluster_view());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "cluster sync: joined; rejected: bad_tag 1");
        assert_eq!(
            lines[1],
            "  peer 10.1.0.12 up (0.1 s ago): 500 flows sent, 400 received; tables 7 sent, 30 received (whole), lag 2.5 ms"
        );
        assert_eq!(
            lines[2],
            "  peer 10.1.0.13 never heard: 0 flows sent, 0 received; tables 0 sent, 0 received"
        );
        assert!(!table(&view()).contains("cluster:"));
        assert!(!table(&view()).contains("cluster sync:"));
    }

    #[test]
    fn status_table_lines_up() {
        let t = table(&view());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        assert!(lines[1].contains("1/2 up") && lines[1].contains("2 pkts found no backend"));
        assert!(lines[3].contains("DOWN") && lines[3].contains("fail: connect refused"));
        let col = lines[0].find("HEALTH").unwrap();
        assert_eq!(&lines[2][col..col + 2], "up");
        assert!(t.contains("drops: drop_no_backend=2"));
        assert!(!t.contains("syn cookies"), "shown only once they work");
    }

    #[test]
    fn a_weight_0_backend_shows_as_draining() {
        let mut v = view();
        v.services[0].backends[0].weight = 0;
        v.services[0].backends[1].weight = 0;
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[2].contains("draining (weight 0)"), "{t}");
        // A backend that is down is down, whatever its weight.
        assert!(lines[3].contains("DOWN"), "{t}");
        assert!(!lines[3].contains("draining"), "{t}");
    }

    #[test]
    fn json_carries_the_same_view() {
        let j: serde_json::Value = serde_json::from_str(&json(&view())).unwrap();
        let b = &j["services"][0]["backends"][1];
        assert_eq!(b["endpoint"], "203.0.113.21:80");
        assert_eq!(b["health"], "down");
        assert_eq!(b["traffic"]["packets"], 20);
        assert_eq!(b["check_latency"], 0.0015);
        assert_eq!(j["reasons"][0][0], "drop_no_backend");
    }
}
