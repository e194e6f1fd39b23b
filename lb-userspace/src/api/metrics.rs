//! `/metrics`: the view as OpenMetrics text, encoded by `prometheus-client`,
//! or in the Prometheus text format for scrapers that do not ask for it.
//! Each scrape builds a fresh registry from the current view (the values
//! are the data path's counters, read at scrape time).

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::view::{BackendView, HaView, HealthView, ServiceView, View};

/// `Content-Type` of the OpenMetrics exposition (for scrapers that ask
/// for it: Prometheus does).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text exposition (everyone else:
/// `curl`, `promtool check metrics`, older scrapers).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The view in the Prometheus text format (0.0.4): the OpenMetrics text
/// with counters' HELP and TYPE named as their samples (`_total`), and no
/// `# EOF`. (`prometheus-client` writes OpenMetrics only; the two differ in
/// nothing else for the gauges and counters exported here.)
pub fn prometheus_text(v: &View) -> String {
    to_prometheus_text(&openmetrics(v))
}

fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = help.take() {
                out.push_str(h);
                out.push('\n');
            }
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = kind == "counter" && !name.ends_with("_total");
            if let Some(h) = help.take() {
                match (
                    counter,
                    h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')),
                ) {
                    (true, Some((n, text))) => {
                        let _ = writeln!(out, "# HELP {n}_total {text}");
                    }
                    _ => {
                        out.push_str(h);
                        out.push('\n');
                    }
                }
            }
            if counter {
                let _ = writeln!(out, "# TYPE {name}_total counter");
            } else {
                let kind = if kind == "unknown" { "untyped" } else { kind };
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// A label value, escaped as the exposition format requires. (The crate
/// writes label values verbatim: a service named `a"b` would otherwise break
/// the whole scrape.)
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Value(String);

impl EncodeLabelValue for Value {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => e.write_str("\\\\")?,
                '"' => e.write_str("\\\"")?,
                '\n' => e.write_str("\\n")?,
                c => e.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels = Vec<(String, Value)>;

fn label(k: &str, v: &str) -> (String, Value) {
    (k.into(), Value(v.into()))
}

fn service_labels(s: &ServiceView) -> Labels {
    vec![
        label("service", &s.name),
        label("vip", &s.vip),
        label("protocol", s.protocol),
    ]
}

fn backend_labels(s: &ServiceView, b: &BackendView) -> Labels {
    let mut l = service_labels(s);
    l.push(label("backend", &b.endpoint));
    l
}

enum Kind {
    Counter,
    Gauge,
}

/// One metric: a name without `_total` (the encoder adds it to counters),
/// help, kind, and the value for an entity (`None`: no sample).
struct Metric<T> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&T) -> Option<f64>,
}

const SERVICE_METRICS: &[Metric<ServiceView>] = &[
    Metric {
        name: "xdplb_service_packets",
        help: "Client packets sent to a backend of the service",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.packets as f64),
    },
    Metric {
        name: "xdplb_service_bytes",
        help: "Bytes of those packets",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.bytes as f64),
    },
    Metric {
        name: "xdplb_service_connections",
        help: "Connections started: TCP SYNs scheduled (a new SYN on a reused 4-tuple included, retransmissions not); UDP: new flows",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.connections as f64),
    },
    Metric {
        name: "xdplb_service_connections_per_second",
        help: "Connections started per second over the last second",
        kind: Kind::Gauge,
        value: |s| Some(s.conn_rate),
    },
    Metric {
        name: "xdplb_service_rate_limited",
        help: "New connections refused by the service's rate limits (per client or in all)",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.rate_limited as f64),
    },
    Metric {
        name: "xdplb_service_half_open_spilled",
        help: "New TCP connections started in the embryonic table because the half-open budget was spent (SYNs going unanswered: a flood); 0 under legitimate load",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.half_open_spilled as f64),
    },
    Metric {
        name: "xdplb_service_midstream",
        help: "TCP packets without SYN that found no flow (flow table too small, or state lost)",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.midstream as f64),
    },
    Metric {
        name: "xdplb_service_no_backend_packets",
        help: "Packets that found no backend up (dropped or passed per when_empty)",
        kind: Kind::Counter,
        value: |s| Some(s.traffic.no_backend as f64),
    },
    Metric {
        name: "xdplb_service_backends_up",
        help: "Backends taking new connections",
        kind: Kind::Gauge,
        value: |s| {
            Some(
                s.backends
                    .iter()
                    .filter(|b| b.health.takes_new() && b.weight > 0)
                    .count() as f64,
            )
        },
    },
];

const BACKEND_METRICS: &[Metric<BackendView>] = &[
    Metric {
        name: "xdplb_backend_packets",
        help: "Client packets sent to the backend",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.packets as f64),
    },
    Metric {
        name: "xdplb_backend_bytes",
        help: "Bytes of those packets",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.bytes as f64),
    },
    Metric {
        name: "xdplb_backend_connections",
        help: "Connections scheduled to the backend (TCP SYN-started; UDP new flows)",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.connections as f64),
    },
    Metric {
        name: "xdplb_backend_connections_per_second",
        help: "Connections scheduled per second over the last second",
        kind: Kind::Gauge,
        value: |b| Some(b.conn_rate),
    },
    Metric {
        name: "xdplb_backend_flow_entries",
        help: "Flow-table entries pinned to the backend (idle ones count until evicted)",
        kind: Kind::Gauge,
        value: |b| Some(b.flows as f64),
    },
    Metric {
        name: "xdplb_backend_half_open_entries",
        help: "Half-open TCP connections (SYN seen, no client ACK yet) pinned to the backend, in the embryonic table a SYN flood fills instead of the flow table",
        kind: Kind::Gauge,
        value: |b| Some(b.half_open as f64),
    },
    Metric {
        name: "xdplb_backend_active_connections",
        help: "least_conn services: active connections the data path counts (SYN opens, FIN or RST closes), corrected every census",
        kind: Kind::Gauge,
        value: |b| b.active_connections.map(|c| c as f64),
    },
    Metric {
        name: "xdplb_backend_up",
        help: "1 if the backend takes new connections by health, 0 if a check or passive health took it out",
        kind: Kind::Gauge,
        value: |b| Some(b.health.takes_new() as u8 as f64),
    },
    Metric {
        name: "xdplb_backend_held",
        help: "1 while passive health holds the backend: no new connections, established flows stay",
        kind: Kind::Gauge,
        value: |b| Some((b.health == HealthView::Held) as u8 as f64),
    },
    Metric {
        name: "xdplb_backend_draining",
        help: "1 while the backend drains (weight 0): established flows stay, no new connections",
        kind: Kind::Gauge,
        value: |b| Some(b.draining() as u8 as f64),
    },
    Metric {
        name: "xdplb_backend_weight",
        help: "Configured weight",
        kind: Kind::Gauge,
        value: |b| Some(b.weight as f64),
    },
    Metric {
        name: "xdplb_backend_syn_retransmits",
        help: "Client SYNs retransmitted (same ISN) on connections pinned to the backend (passive health)",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.syn_retransmits as f64),
    },
    Metric {
        name: "xdplb_backend_refused",
        help: "NAT connections the backend refused: RST answering the SYN (passive health)",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.refused as f64),
    },
    Metric {
        name: "xdplb_backend_redispatched",
        help: "Refused NAT connections whose RST was withheld and whose retried SYN went to another backend",
        kind: Kind::Counter,
        value: |b| Some(b.traffic.redispatched as f64),
    },
    Metric {
        name: "xdplb_backend_checks",
        help: "Active health checks run",
        kind: Kind::Counter,
        value: |b| (b.health != HealthView::Unchecked).then_some(b.checks as f64),
    },
    Metric {
        name: "xdplb_backend_check_failures",
        help: "Active health checks failed",
        kind: Kind::Counter,
        value: |b| (b.health != HealthView::Unchecked).then_some(b.check_failures as f64),
    },
    Metric {
        name: "xdplb_backend_check_latency_seconds",
        help: "Duration of the last active health check",
        kind: Kind::Gauge,
        value: |b| b.check_latency.map(|d| d.as_secs_f64()),
    },
];

/// Register `m` with a sample per `(labels, entity)`.
fn register<'a, T: 'a>(
    r: &mut Registry,
    m: &Metric<T>,
    samples: impl Iterator<Item = (Labels, &'a T)>,
) {
    match m.kind {
        Kind::Counter => {
            let f = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
            for (l, x) in samples {
                if let Some(v) = (m.value)(x) {
                    f.get_or_create(&l).inc_by(v);
                }
            }
            r.register(m.name, m.help, f);
        }
        Kind::Gauge => {
            let f = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            for (l, x) in samples {
                if let Some(v) = (m.value)(x) {
                    f.get_or_create(&l).set(v);
                }
            }
            r.register(m.name, m.help, f);
        }
    }
}

/// The view as OpenMetrics text.
pub fn openmetrics(v: &View) -> String {
    let mut r = Registry::default();
    for m in SERVICE_METRICS {
        register(&mut r, m, v.services.iter().map(|s| (service_labels(s), s)));
    }
    for m in BACKEND_METRICS {
        let samples = v
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (backend_labels(s, b), b)));
        register(&mut r, m, samples);
    }
    let reasons = Family::<Labels, Counter>::default();
    for (reason, n) in &v.reasons {
        reasons
            .get_or_create(&vec![label("reason", reason)])
            .inc_by(*n);
    }
    r.register(
        "xdplb_packets",
        "Packets seen by the XDP program, by verdict reason",
        reasons,
    );
    if let Some(h) = &v.ha {
        register_ha(&mut r, h);
    }
    if let Some(s) = &v.cluster_sync {
        register_sync(&mut r, s);
    }
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![
            label("version", env!("CARGO_PKG_VERSION")),
            label("commit", env!("XDPLB_COMMIT")),
        ])
        .set(1);
    r.register(
        "xdplb_build_info",
        "1, labelled with the daemon's version and the commit it was built from",
        build,
    );
    let rings = Family::<Labels, Gauge>::default();
    for s in v.services.iter().filter(|s| !s.ring_fingerprint.is_empty()) {
        let mut l = service_labels(s);
        l.push(label("fingerprint", &s.ring_fingerprint));
        rings.get_or_create(&l).set(1);
    }
    r.register(
        "xdplb_service_ring",
        "1, labelled with the service's ring fingerprint: nodes showing the same fingerprint pick the same backend for a connection",
        rings,
    );
    if let Some(c) = &v.cluster {
        register_cluster(&mut r, c);
    }
    for (name, help, n) in [
        (
            "xdplb_checks_not_run",
            "Health probes not run for a fault of this host (no descriptors, no probe slot); never a backend failure",
            v.daemon.checks_not_run,
        ),
        (
            "xdplb_status_socket_refused",
            "Status-socket connections refused for their peer's credentials",
            v.daemon.status_refused,
        ),
    ] {
        let c = Counter::<u64>::default();
        c.inc_by(n);
        r.register(name, help, c);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// The cluster's announcements.
fn register_cluster(r: &mut Registry, c: &crate::cluster::AnnounceStatus) {
    let announced = Family::<Labels, Gauge>::default();
    let wanted = Family::<Labels, Gauge>::default();
    for a in &c.vips {
        let l = vec![label("vip", &a.vip.to_string())];
        announced.get_or_create(&l).set(a.announced as i64);
        wanted.get_or_create(&l).set(a.wanted as i64);
    }
    r.register(
        "xdplb_cluster_vip_announced",
        "1 while the VIP's route is in the announce table (BIRD announces it)",
        announced,
    );
    r.register(
        "xdplb_cluster_vip_wanted",
        "1 while the VIP's services pass their announce policy (a difference from announced: a route change failing)",
        wanted,
    );
    let sessions = Family::<Labels, Gauge>::default();
    for b in &c.bird.sessions {
        sessions
            .get_or_create(&vec![label("session", &b.name)])
            .set(b.established() as i64);
    }
    r.register(
        "xdplb_cluster_bgp_session_up",
        "1 while the local BIRD's BGP session is Established",
        sessions,
    );
    let bird = Gauge::<i64>::default();
    bird.set(c.bird.error.is_none() as i64);
    r.register(
        "xdplb_cluster_bird_up",
        "1 if the local BIRD's control socket answered at the last reading (every second)",
        bird,
    );
    for (name, help, n) in [
        (
            "xdplb_cluster_announce_changes",
            "VIP routes added or removed",
            c.changes,
        ),
        (
            "xdplb_cluster_announce_errors",
            "Route changes or reads that failed (retried every second)",
            c.errors,
        ),
    ] {
        let counter = Counter::<u64>::default();
        counter.inc_by(n);
        r.register(name, help, counter);
    }
}

/// The cluster's flow sync, per peer.
fn register_sync(r: &mut Registry, s: &crate::api::view::SyncView) {
    let joined = Gauge::<i64>::default();
    joined.set(s.joined as i64);
    r.register(
        "xdplb_cluster_sync_joined",
        "1 once the peers' flow tables arrived (or the join wait passed): the VIPs may be announced",
        joined,
    );
    let up = Family::<Labels, Gauge>::default();
    let records = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let lag = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for p in &s.peers {
        let peer = label("peer", &p.address);
        up.get_or_create(&vec![peer.clone()]).set(p.up as i64);
        for (direction, kind, n) in [
            ("sent", "live", p.records_sent),
            ("received", "live", p.records_received),
            ("sent", "bulk", p.bulk_sent),
            ("received", "bulk", p.bulk_received),
        ] {
            records
                .get_or_create(&vec![
                    peer.clone(),
                    label("direction", direction),
                    label("kind", kind),
                ])
                .inc_by(n);
        }
        errors
            .get_or_create(&vec![peer.clone()])
            .inc_by(p.send_errors);
        if let Some(l) = p.lag {
            lag.get_or_create(&vec![peer]).set(l.as_secs_f64());
        }
    }
    r.register(
        "xdplb_cluster_peer_up",
        "1 while the cluster peer is heard (within 3 advert intervals)",
        up,
    );
    r.register(
        "xdplb_cluster_sync_records",
        "Flow records sent to or received from each peer: live (new flows) and bulk (whole tables to a peer in a new life)",
        records,
    );
    r.register(
        "xdplb_cluster_sync_send_errors",
        "Sync datagrams to the peer that the socket refused (a down link, a full buffer): their records are lost",
        errors,
    );
    r.register(
        "xdplb_cluster_sync_lag_seconds",
        "The peer's last flow batch: its batching delay plus writing it here (transit excluded)",
        lag,
    );
    let lost = Family::<Labels, Counter>::default();
    lost.get_or_create(&vec![label("where", "ring")])
        .inc_by(s.events_lost);
    lost.get_or_create(&vec![label("where", "queue")])
        .inc_by(s.queue_dropped);
    r.register(
        "xdplb_cluster_sync_lost",
        "New flows never sent: the data path's ring buffer or the send queue was full",
        lost,
    );
    let unknown = Counter::<u64>::default();
    unknown.inc_by(s.records_unknown);
    r.register(
        "xdplb_cluster_sync_unknown",
        "Received records naming a service or backend this node does not have (configs differ)",
        unknown,
    );
    let rejected = Family::<Labels, Counter>::default();
    for (reason, n) in &s.rejected {
        rejected
            .get_or_create(&vec![label("reason", reason)])
            .inc_by(*n);
    }
    r.register(
        "xdplb_cluster_sync_rejected",
        "Sync datagrams refused (bad tag, wrong group, unknown peer, replay, ...), by reason",
        rejected,
    );
}

/// The HA pair's metrics.
fn register_ha(r: &mut Registry, h: &HaView) {
    let state = Family::<Labels, Gauge>::default();
    for s in crate::ha::State::ALL {
        state
            .get_or_create(&vec![label("state", s.label())])
            .set((s.label() == h.state) as i64);
    }
    r.register(
        "xdplb_ha_state",
        "1 for this node's HA state (init, backup, master, fault)",
        state,
    );
    let gauge = |r: &mut Registry, name: &str, help: &str, v: f64| {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(v);
        r.register(name, help, g);
    };
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    gauge(
        r,
        "xdplb_ha_priority",
        "Priority this node advertises (tracking included)",
        h.priority as f64,
    );
    counter(r, "xdplb_ha_transitions", "HA state changes", h.transitions);
    counter(r, "xdplb_ha_adverts_sent", "Adverts sent", h.adverts_sent);
    counter(
        r,
        "xdplb_ha_adverts_received",
        "Adverts accepted from the peer",
        h.adverts_received,
    );
    let rejected = Family::<Labels, Counter>::default();
    for (reason, n) in &h.rejected {
        rejected
            .get_or_create(&vec![label("reason", reason)])
            .inc_by(*n);
    }
    r.register(
        "xdplb_ha_adverts_rejected",
        "Heartbeat-channel datagrams refused (bad tag, wrong group, stale epoch, replay, ...), by reason",
        rejected,
    );
    let synced = Family::<Labels, Counter>::default();
    synced
        .get_or_create(&vec![label("direction", "sent")])
        .inc_by(h.flows_sent);
    synced
        .get_or_create(&vec![label("direction", "received")])
        .inc_by(h.flows_received);
    r.register(
        "xdplb_ha_flows_synced",
        "Flow records sent to or received from the peer",
        synced,
    );
    counter(
        r,
        "xdplb_ha_flows_unknown",
        "Received flow records naming a service or backend this node does not have",
        h.flows_unknown,
    );
    counter(
        r,
        "xdplb_ha_flow_events_lost",
        "New flows the data path could not report (ring buffer full) or the sender dropped (queue full)",
        h.events_lost + h.queue_dropped,
    );
    if let Some(lag) = h.sync_lag {
        gauge(
            r,
            "xdplb_ha_sync_lag_seconds",
            "Last received flow batch: sender batching plus writing it here (transit excluded)",
            lag.as_secs_f64(),
        );
    }
    if let Some(p) = &h.peer {
        gauge(
            r,
            "xdplb_ha_peer_last_seen_seconds",
            "Seconds since the peer's last advert",
            p.last_seen,
        );
        gauge(
            r,
            "xdplb_ha_peer_up",
            "1 while the peer is heard, 0 once it has been silent for a master-down interval",
            if p.lost { 0.0 } else { 1.0 },
        );
    }
    counter(
        r,
        "xdplb_ha_challenges_sent",
        "Challenges sent to a peer whose epoch this node had not verified (it restarted, or this node did)",
        h.challenges_sent,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::view::samples::view;

    #[test]
    fn openmetrics_text_has_typed_labelled_samples() {
        let t = openmetrics(&view());
        assert!(t.contains("# TYPE xdplb_backend_up gauge\n"), "{t}");
        assert!(
            t.contains("xdplb_backend_up{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\",backend=\"203.0.113.21:80\"} 0.0\n"),
            "{t}"
        );
        assert!(t.contains("# TYPE xdplb_backend_packets counter\n"));
        assert!(t.contains("xdplb_backend_packets_total{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\",backend=\"203.0.113.11:80\"} 10.0\n"), "{t}");
        assert!(t.contains("xdplb_backend_check_latency_seconds{") && t.contains("} 0.0015\n"));
        assert!(t.contains("xdplb_service_backends_up{service=\"w\\\"w\",vip=\"192.0.2.10:80\",protocol=\"tcp\"} 1.0\n"));
        assert!(
            t.contains("xdplb_packets_total{reason=\"drop_no_backend\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("xdplb_checks_not_run_total 3\n"), "{t}");
        assert!(t.contains("xdplb_status_socket_refused_total 1\n"), "{t}");
        assert!(t.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
        // Every sample line belongs to a declared family.
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                t.contains(&format!("# TYPE {family} ")),
                "{name} undeclared"
            );
        }
    }

    #[test]
    fn cluster_metrics_and_ring_fingerprints_are_exported() {
        let text = openmetrics(&crate::api::view::samples::cluster_view());
        for want in [
            "xdplb_cluster_vip_announced{vip=\"192.0.2.10\"} 1",
            "xdplb_cluster_vip_announced{vip=\"192.0.2.20\"} 0",
            "xdplb_cluster_vip_wanted{vip=\"192.0.2.20\"} 0",
            "xdplb_cluster_announce_changes_total 3",
            "xdplb_cluster_announce_errors_total 0",
            "xdplb_cluster_bgp_session_up{session=\"upstream\"} 1",
            "xdplb_cluster_bgp_session_up{session=\"backup\"} 0",
            "xdplb_cluster_bird_up 1",
            "fingerprint=\"00c0ffee00c0ffee\"} 1",
            "xdplb_cluster_sync_joined 1",
            "xdplb_cluster_peer_up{peer=\"10.1.0.12\"} 1",
            "xdplb_cluster_peer_up{peer=\"10.1.0.13\"} 0",
            "xdplb_cluster_sync_records_total{peer=\"10.1.0.12\",direction=\"sent\",kind=\"live\"} 500",
            "xdplb_cluster_sync_records_total{peer=\"10.1.0.12\",direction=\"received\",kind=\"bulk\"} 30",
            "xdplb_cluster_sync_lag_seconds{peer=\"10.1.0.12\"} 0.0025",
            "xdplb_cluster_sync_unknown_total 2",
            "xdplb_cluster_sync_rejected_total{reason=\"bad_tag\"} 1",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert!(!openmetrics(&view()).contains("xdplb_cluster_"));
    }

    #[test]
    fn build_info_names_version_and_commit() {
        let text = openmetrics(&view());
        let line = text
            .lines()
            .find(|l| l.starts_with("xdplb_build_info{"))
            .expect("build info");
        assert!(
            line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && line.contains(&format!("commit=\"{}\"", env!("XDPLB_COMMIT")))
                && line.ends_with(" 1"),
            "{line}"
        );
    }

    #[test]
    fn the_prometheus_text_names_counters_as_their_samples() {
        let text = prometheus_text(&crate::api::view::samples::cluster_view());
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# HELP xdplb_packets_total "), "{text}");
        assert!(
            text.contains("# TYPE xdplb_packets_total counter"),
            "{text}"
        );
        assert!(text.contains("# TYPE xdplb_service_connections_per_second gauge"));
        // Every sample's family has HELP and TYPE under its own name.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# HELP {name} "))
                    && text.contains(&format!("# TYPE {name} ")),
                "{name} has no HELP/TYPE of its own"
            );
        }
        // The samples are the OpenMetrics ones.
        let om = openmetrics(&crate::api::view::samples::cluster_view());
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples(&text), samples(&om));
    }

    #[test]
    fn ha_metrics_are_exported() {
        let text = openmetrics(&crate::api::view::samples::ha_view());
        for want in [
            "xdplb_ha_state{state=\"master\"} 1",
            "xdplb_ha_state{state=\"backup\"} 0",
            "xdplb_ha_priority 150.0",
            "xdplb_ha_transitions_total 2",
            "xdplb_ha_adverts_rejected_total{reason=\"bad_tag\"} 3",
            "xdplb_ha_flows_synced_total{direction=\"sent\"} 1234",
            "xdplb_ha_sync_lag_seconds 0.0015",
            "xdplb_ha_peer_last_seen_seconds 0.04",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!openmetrics(&view()).contains("xdplb_ha_"));
    }

    #[test]
    fn the_grafana_dashboard_only_uses_exported_metrics() {
        let dashboard = include_str!("../../../config/grafana-dashboard.json");
        let exported = openmetrics(&view());
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
                exported.contains(&format!("\n{name}{{")),
                "dashboard uses {name}, which /metrics does not export"
            );
        }
        assert!(used >= 10, "dashboard queries only {used} metrics");
    }

    #[test]
    fn a_weight_0_backend_is_draining() {
        let mut v = view();
        v.services[0].backends[0].weight = 0;
        let m = openmetrics(&v);
        assert!(
            m.lines().any(|l| l.starts_with("xdplb_backend_draining{")
                && l.contains("backend=\"203.0.113.11:80\"")
                && l.ends_with(" 1.0")),
            "{m}"
        );
    }
}
