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
