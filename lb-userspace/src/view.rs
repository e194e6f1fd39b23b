//! What the daemon shows: one [`View`] of services, backends, health and
//! counters, rendered as Prometheus text (`/metrics`) or as the table
//! `xdplb status` prints. Pure, so both formats are tested without a daemon.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use lb_common::Traffic;

use crate::{config::ForwardingKind, control::Control, health::State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthView {
    Up,
    /// Passive health stopped new connections; established flows stay.
    Held,
    Down,
    /// The service has no active check.
    Unchecked,
}

impl HealthView {
    fn label(self) -> &'static str {
        match self {
            HealthView::Up => "up",
            HealthView::Held => "HELD (passive)",
            HealthView::Down => "DOWN",
            HealthView::Unchecked => "up (no check)",
        }
    }

    /// Takes new connections (by health; weight aside).
    fn takes_new(self) -> bool {
        matches!(self, HealthView::Up | HealthView::Unchecked)
    }
}

#[derive(Debug, Clone)]
pub struct BackendView {
    pub endpoint: String,
    pub weight: u32,
    pub health: HealthView,
    pub traffic: Traffic,
    pub conn_rate: f64,
    pub flows: u64,
    pub check_latency: Option<Duration>,
    pub last_error: Option<String>,
    pub checks: u64,
    pub check_failures: u64,
}

#[derive(Debug, Clone)]
pub struct ServiceView {
    pub name: String,
    pub vip: String,
    pub protocol: &'static str,
    pub forwarding: &'static str,
    pub traffic: Traffic,
    pub conn_rate: f64,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Default)]
pub struct View {
    pub services: Vec<ServiceView>,
    pub reasons: Vec<(&'static str, u64)>,
}

/// Counter inputs the daemon has read from the maps.
#[derive(Debug)]
pub struct Readings<'a> {
    pub services: &'a BTreeMap<u32, Traffic>,
    pub backends: &'a BTreeMap<u32, Traffic>,
    pub reasons: &'a BTreeMap<&'static str, u64>,
    /// New flows per second, by service id and by backend id.
    pub service_rates: &'a BTreeMap<u32, f64>,
    pub backend_rates: &'a BTreeMap<u32, f64>,
    /// Flow-table entries by backend id.
    pub flows: &'a BTreeMap<u32, u64>,
}

/// Assemble the view of what `control` serves.
pub fn build(control: &Control, r: &Readings<'_>) -> View {
    let plan = control.applied();
    let mut services = Vec::new();
    for s in &control.config().services {
        let key = s.key();
        let Some(ps) = plan.services.iter().find(|p| p.key == key) else {
            continue;
        };
        let id = ps.info.id;
        let mut backends = Vec::new();
        for b in &s.backends {
            let me = s.backend_ref(b);
            let bid = plan.backend_id(&me);
            let st = control.state(&me);
            backends.push(BackendView {
                endpoint: format!("{}:{}", b.address, b.port),
                weight: b.weight,
                health: match st.map(|s| s.health.state()) {
                    None => HealthView::Unchecked,
                    Some(State::Up) => HealthView::Up,
                    Some(State::Held) => HealthView::Held,
                    Some(State::Down) => HealthView::Down,
                },
                traffic: bid
                    .and_then(|i| r.backends.get(&i))
                    .copied()
                    .unwrap_or_default(),
                conn_rate: bid
                    .and_then(|i| r.backend_rates.get(&i))
                    .copied()
                    .unwrap_or(0.0),
                flows: bid.and_then(|i| r.flows.get(&i)).copied().unwrap_or(0),
                check_latency: st.and_then(|s| s.last_latency),
                last_error: st.and_then(|s| s.last_error.clone()),
                checks: st.map_or(0, |s| s.checks),
                check_failures: st.map_or(0, |s| s.failures),
            });
        }
        services.push(ServiceView {
            name: s.name.clone(),
            vip: format!("{}:{}", s.vip, s.port),
            protocol: match s.protocol {
                crate::config::Protocol::Tcp => "tcp",
                crate::config::Protocol::Udp => "udp",
            },
            forwarding: match s.forwarding {
                ForwardingKind::Dsr => "dsr",
                ForwardingKind::Nat => "nat",
            },
            traffic: r.services.get(&id).copied().unwrap_or_default(),
            conn_rate: r.service_rates.get(&id).copied().unwrap_or(0.0),
            backends,
        });
    }
    View {
        services,
        reasons: r.reasons.iter().map(|(k, v)| (*k, *v)).collect(),
    }
}

/// Escape a Prometheus label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(v: &View) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let svc_labels = |s: &ServiceView| {
        format!(
            "service=\"{}\",vip=\"{}\",protocol=\"{}\"",
            esc(&s.name),
            s.vip,
            s.protocol
        )
    };
    type SvcMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ServiceView) -> f64,
    );
    let svc: &[SvcMetric] = &[
        (
            "xdplb_service_packets_total",
            "counter",
            "Client packets sent to a backend of the service.",
            |s| s.traffic.packets as f64,
        ),
        (
            "xdplb_service_bytes_total",
            "counter",
            "Bytes of those packets.",
            |s| s.traffic.bytes as f64,
        ),
        (
            "xdplb_service_connections_total",
            "counter",
            "Connections started: TCP SYNs scheduled (a new SYN on a reused 4-tuple included, retransmissions not); UDP: new flows.",
            |s| s.traffic.connections as f64,
        ),
        (
            "xdplb_service_connections_per_second",
            "gauge",
            "Connections started per second over the last second.",
            |s| s.conn_rate,
        ),
        (
            "xdplb_service_midstream_total",
            "counter",
            "TCP packets without SYN that found no flow (flow table too small, or state lost).",
            |s| s.traffic.midstream as f64,
        ),
        (
            "xdplb_service_no_backend_packets_total",
            "counter",
            "Packets that found no backend up (dropped or passed per when_empty).",
            |s| s.traffic.no_backend as f64,
        ),
        (
            "xdplb_service_backends_up",
            "gauge",
            "Backends taking new connections.",
            |s| {
                s.backends
                    .iter()
                    .filter(|b| b.health.takes_new() && b.weight > 0)
                    .count() as f64
            },
        ),
    ];
    for (name, kind, help, get) in svc {
        f.head(name, kind, help);
        for s in &v.services {
            f.sample(name, &svc_labels(s), get(s));
        }
    }
    type BeMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&BackendView) -> Option<f64>,
    );
    let be: &[BeMetric] = &[
        (
            "xdplb_backend_packets_total",
            "counter",
            "Client packets sent to the backend.",
            |b| Some(b.traffic.packets as f64),
        ),
        (
            "xdplb_backend_bytes_total",
            "counter",
            "Bytes of those packets.",
            |b| Some(b.traffic.bytes as f64),
        ),
        (
            "xdplb_backend_connections_total",
            "counter",
            "Connections scheduled to the backend (TCP SYN-started; UDP new flows).",
            |b| Some(b.traffic.connections as f64),
        ),
        (
            "xdplb_backend_connections_per_second",
            "gauge",
            "Connections scheduled per second over the last second.",
            |b| Some(b.conn_rate),
        ),
        (
            "xdplb_backend_flow_entries",
            "gauge",
            "Flow-table entries pinned to the backend (idle ones count until evicted).",
            |b| Some(b.flows as f64),
        ),
        (
            "xdplb_backend_up",
            "gauge",
            "1 if the backend takes new connections by health, 0 if a check or passive health took it out.",
            |b| Some(b.health.takes_new() as u8 as f64),
        ),
        (
            "xdplb_backend_held",
            "gauge",
            "1 while passive health holds the backend: no new connections, established flows stay.",
            |b| Some((b.health == HealthView::Held) as u8 as f64),
        ),
        ("xdplb_backend_weight", "gauge", "Configured weight.", |b| {
            Some(b.weight as f64)
        }),
        (
            "xdplb_backend_syn_retransmits_total",
            "counter",
            "Client SYNs retransmitted (same ISN) on connections pinned to the backend (passive health).",
            |b| Some(b.traffic.syn_retransmits as f64),
        ),
        (
            "xdplb_backend_refused_total",
            "counter",
            "NAT connections the backend refused: RST answering the SYN (passive health).",
            |b| Some(b.traffic.refused as f64),
        ),
        (
            "xdplb_backend_redispatched_total",
            "counter",
            "Refused NAT connections whose RST was withheld and whose retried SYN went to another backend.",
            |b| Some(b.traffic.redispatched as f64),
        ),
        (
            "xdplb_backend_checks_total",
            "counter",
            "Active health checks run.",
            |b| (b.health != HealthView::Unchecked).then_some(b.checks as f64),
        ),
        (
            "xdplb_backend_check_failures_total",
            "counter",
            "Active health checks failed.",
            |b| (b.health != HealthView::Unchecked).then_some(b.check_failures as f64),
        ),
        (
            "xdplb_backend_check_latency_seconds",
            "gauge",
            "Duration of the last active health check.",
            |b| b.check_latency.map(|d| d.as_secs_f64()),
        ),
    ];
    for (name, kind, help, get) in be {
        f.head(name, kind, help);
        for s in &v.services {
            for b in &s.backends {
                if let Some(x) = get(b) {
                    f.sample(
                        name,
                        &format!("{},backend=\"{}\"", svc_labels(s), b.endpoint),
                        x,
                    );
                }
            }
        }
    }
    f.head(
        "xdplb_packets_total",
        "counter",
        "Packets seen by the XDP program, by verdict reason.",
    );
    for (reason, n) in &v.reasons {
        f.sample("xdplb_packets_total", &format!("reason=\"{reason}\""), n);
    }
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
                b.health.label().into(),
                b.weight.to_string(),
                format!("{:.1}", b.conn_rate),
                b.flows.to_string(),
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
    let mut out = String::new();
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        let b = |endpoint: &str, health, packets| BackendView {
            endpoint: endpoint.into(),
            weight: 1,
            health,
            traffic: Traffic {
                packets,
                bytes: packets * 100,
                connections: 3,
                ..Traffic::default()
            },
            conn_rate: 1.5,
            flows: 3,
            check_latency: Some(Duration::from_micros(1500)),
            last_error: (health == HealthView::Down).then(|| "connect refused".into()),
            checks: 10,
            check_failures: 4,
        };
        View {
            services: vec![ServiceView {
                name: "w\"w".into(),
                vip: "192.0.2.10:80".into(),
                protocol: "tcp",
                forwarding: "nat",
                traffic: Traffic {
                    packets: 30,
                    connections: 6,
                    no_backend: 2,
                    ..Traffic::default()
                },
                conn_rate: 3.0,
                backends: vec![
                    b("203.0.113.11:80", HealthView::Up, 10),
                    b("203.0.113.21:80", HealthView::Down, 20),
                ],
            }],
            reasons: vec![("drop_no_backend", 2), ("fwd_nat", 30)],
        }
    }

    #[test]
    fn prometheus_text_has_typed_labelled_samples() {
        let t = prometheus(&view());
        assert!(t.contains("# TYPE xdplb_backend_up gauge\n"));
        assert!(t.contains("xdplb_backend_up{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\",backend=\"203.0.113.21:80\"} 0\n"), "{t}");
        assert!(t.contains("xdplb_backend_packets_total{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\",backend=\"203.0.113.11:80\"} 10\n"));
        assert!(t.contains("xdplb_backend_check_latency_seconds{") && t.contains("} 0.0015\n"));
        assert!(t.contains("xdplb_service_backends_up{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\"} 1\n"));
        assert!(t.contains("xdplb_packets_total{reason=\"drop_no_backend\"} 2\n"));
        // Every sample line belongs to a declared family.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split('{').next().unwrap();
            assert!(t.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }

    #[test]
    fn the_grafana_dashboard_only_uses_exported_metrics() {
        let dashboard = include_str!("../../config/grafana-dashboard.json");
        let exported = prometheus(&view());
        let mut used = 0;
        for (i, _) in dashboard.match_indices("xdplb_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "xdplb_" {
                continue;
            }
            used += 1;
            assert!(
                exported.contains(&format!("# TYPE {name} ")),
                "dashboard uses {name}, which /metrics does not export"
            );
        }
        assert!(used >= 10, "dashboard queries only {used} metrics");
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
    }
}
