//! `[cluster]` validation through the whole parser.

use std::path::Path;

use super::{Announce, Config};

const SERVICE: &str = r#"
[[service]]
name = "web"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
announce = "quorum"
backend = [{ address = "203.0.113.11", port = 80 }]
"#;

fn parse(cluster: &str) -> Result<Config, String> {
    Config::parse(Path::new("lb.toml"), &format!("{cluster}\n{SERVICE}")).map_err(|e| e.to_string())
}

#[test]
fn defaults_and_the_service_policy_parse() {
    let c = parse("[cluster]").unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(
        (cl.announce_table, cl.route_protocol, cl.withdraw_grace_ms),
        (4242, 242, 2000)
    );
    assert_eq!(c.services[0].announce, Announce::Quorum);
    assert!(parse("").unwrap().cluster.is_none());
}

#[test]
fn tables_and_protocols_of_others_are_refused_with_file_and_key() {
    let e = parse("[cluster]\nannounce_table = 254").unwrap_err();
    assert!(e.starts_with("lb.toml"), "{e}");
    assert!(
        e.contains("cluster.announce_table: 254 is a table the kernel uses"),
        "{e}"
    );
    let e = parse("[cluster]\nroute_protocol = 12").unwrap_err();
    assert!(e.contains("cluster.route_protocol: 12 is reserved"), "{e}");
    let e = parse("[cluster]\nwithdraw_grace_ms = 600000").unwrap_err();
    assert!(e.contains("cluster.withdraw_grace_ms"), "{e}");
    let e = parse("[cluster]\nannounce_tabel = 5").unwrap_err();
    assert!(e.contains("announce_tabel"), "{e}");
}

#[test]
fn a_cluster_node_is_not_also_an_ha_pair() {
    let ha = "[ha]\ngroup = 1\npriority = 100\ninterface = \"ha0\"\npeers = [\"10.0.0.2\"]\nkey_file = \"/etc/xdplb/ha.key\"\nvip_interface = \"eth0\"\n";
    let e = parse(&format!("[cluster]\n{ha}")).unwrap_err();
    assert!(
        e.contains("cluster: [cluster] and [ha] together are not supported"),
        "{e}"
    );
}

/// The HA tests' key files serve the cluster's key too.
fn sync_key(name: &str, mode: u32, len: usize) -> std::path::PathBuf {
    super::ha_tests::key_file(&format!("cluster-{name}"), mode, len)
}

fn sync_section(key: &Path, extra: &str) -> String {
    format!(
        "[cluster]\n[cluster.sync]\ninterface = \"front\"\npeers = [\"10.1.0.11\", \"10.1.0.12\", \"10.1.0.13\"]\nkey_file = \"{}\"\n{extra}",
        key.display()
    )
}

#[test]
fn sync_parses_with_defaults_and_becomes_the_pairs_node_in_cluster_membership() {
    let key = sync_key("good", 0o600, 32);
    let c = parse(&sync_section(&key, "")).unwrap();
    let s = c.cluster.unwrap().sync.unwrap();
    assert_eq!(
        (s.port, s.group, s.advert_interval_ms, s.join_wait_ms),
        (5789, 1, 200, 3000)
    );
    let h = s.membership();
    assert_eq!(h.membership, super::Membership::Cluster);
    assert_eq!(h.peers.len(), 3, "the own address is skipped at run time");
    assert!(h.sync_flows && h.floating.is_empty() && h.track_service.is_empty());
    assert_eq!(h.read_key().unwrap().len(), 32);
    // The pair's own section stays a pair.
    assert!(parse("").unwrap().ha.is_none());
    std::fs::remove_file(key).unwrap();
}

#[test]
fn bad_sync_settings_are_refused_with_file_key_and_reason() {
    let key = sync_key("bad", 0o600, 32);
    let cases = [
        ("peers = []", "cluster.sync.peers: name at least one peer"),
        ("port = 0", "cluster.sync.port: must be 1..=65535"),
        ("advert_interval_ms = 5", "cluster.sync.advert_interval_ms"),
        ("join_wait_ms = 70000", "cluster.sync.join_wait_ms"),
        ("group = 0", "cluster.sync.group"),
    ];
    for (extra, want) in cases {
        let text = sync_section(&key, extra).replace(
            "peers = [\"10.1.0.11\", \"10.1.0.12\", \"10.1.0.13\"]\n",
            if extra.starts_with("peers") {
                ""
            } else {
                "peers = [\"10.1.0.11\", \"10.1.0.12\", \"10.1.0.13\"]\n"
            },
        );
        let e = parse(&text).unwrap_err();
        assert!(e.starts_with("lb.toml") && e.contains(want), "{extra}: {e}");
    }
    let twice = sync_section(&key, "").replace("\"10.1.0.13\"", "\"10.1.0.11\"");
    let e = parse(&twice).unwrap_err();
    assert!(
        e.contains("cluster.sync.peers[2]: 10.1.0.11 is listed twice"),
        "{e}"
    );
    let open = sync_key("open", 0o644, 32);
    let e = parse(&sync_section(&open, "")).unwrap_err();
    assert!(
        e.contains("cluster.sync.key_file") && e.contains("chmod 600"),
        "{e}"
    );
    let short = sync_key("short", 0o600, 8);
    let e = parse(&sync_section(&short, "")).unwrap_err();
    assert!(
        e.contains("cluster.sync.key_file") && e.contains("at least 16"),
        "{e}"
    );
    for k in [key, open, short] {
        std::fs::remove_file(k).unwrap();
    }
}
