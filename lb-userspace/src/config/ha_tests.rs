//! `[ha]` validation through the whole parser: what an operator gets for
//! each mistake.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use super::Config;

const SERVICE: &str = r#"[[service]]
name = "www"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }]
"#;

/// A key file with `mode` and `len` bytes, unique to the test.
pub(super) fn key_file(name: &str, mode: u32, len: usize) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("xdplb-{}-{name}.key", std::process::id()));
    std::fs::write(&p, vec![b'k'; len]).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

fn ha(key: &Path, extra: &str) -> String {
    format!(
        "{SERVICE}\n[ha]\ngroup = 7\npriority = 150\ninterface = \"ha\"\npeers = [\"10.255.0.2\"]\nkey_file = \"{}\"\nvip_interface = \"eth0\"\n{extra}",
        key.display()
    )
}

fn error(text: &str) -> String {
    Config::parse(Path::new("/etc/xdplb/lb.toml"), text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn a_good_pair_config_has_the_documented_defaults() {
    let key = key_file("good", 0o600, 32);
    let c = Config::parse(Path::new("x.toml"), &ha(&key, "")).unwrap();
    let h = c.ha.unwrap();
    assert_eq!((h.advert_interval_ms, h.preempt_delay_ms), (30, 2000));
    assert!(h.preempt && h.sync_flows);
    assert_eq!((h.garp_repeat, h.garp_interval_ms, h.port), (3, 100, 5788));
    assert_eq!(h.garp_master_delay_ms, 1200);
    assert_eq!(h.read_key().unwrap().len(), 32);
    let _ = std::fs::remove_file(key);
}

#[test]
fn key_file_missing_world_readable_or_short_is_a_config_error() {
    let e = error(&ha(Path::new("/nonexistent/ha.key"), ""));
    assert!(
        e.contains("ha.key_file") && e.contains("/nonexistent/ha.key"),
        "{e}"
    );
    let open = key_file("open", 0o644, 32);
    let e = error(&ha(&open, ""));
    assert!(e.contains("ha.key_file") && e.contains("chmod 600"), "{e}");
    let group = key_file("group", 0o640, 32);
    let e = error(&ha(&group, ""));
    assert!(
        e.contains("group or others") && e.contains("chmod 600"),
        "{e}"
    );
    let short = key_file("short", 0o600, 8);
    let e = error(&ha(&short, ""));
    assert!(e.contains("ha.key_file") && e.contains("8 bytes"), "{e}");
    for p in [open, group, short] {
        let _ = std::fs::remove_file(p);
    }
}

/// The notify command runs as root: it, and every directory above it,
/// must be changeable by root only (keepalived's script security).
#[test]
fn a_notify_command_others_could_change_is_a_config_error() {
    let key = key_file("notify", 0o600, 32);
    let dir = std::env::temp_dir().join(format!("xdplb-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.join("notify.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let with = |p: &Path| ha(&key, &format!("notify = \"{}\"\n", p.display()));
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    Config::parse(Path::new("lb.toml"), &with(&script)).expect("a root-only script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o775)).unwrap();
    let e = error(&with(&script));
    assert!(
        e.contains("ha.notify") && e.contains("writable by group or others"),
        "{e}"
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = error(&with(&script));
    assert!(
        e.contains(&dir.display().to_string()),
        "a writable directory above it: {e}"
    );
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = error(&with(&script));
    assert!(e.contains("not an executable file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(key);
}

#[test]
fn bad_values_name_file_line_and_key() {
    let key = key_file("bad", 0o600, 32);
    let text = ha(&key, "").replace("priority = 150", "priority = 255");
    let e = error(&text);
    // [ha] is on line 10, priority on line 12.
    assert!(
        e.starts_with("/etc/xdplb/lb.toml:12: ha.priority: must be 1..=254"),
        "{e}"
    );
    for (extra, key_name) in [
        ("advert_interval_ms = 5", "ha.advert_interval_ms"),
        (
            "track_service = [{ name = \"nope\" }]",
            "ha.track_service[0].name",
        ),
        ("notify = \"relative.sh\"", "ha.notify"),
        (
            "floating = [{ address = \"0.0.0.0\", interface = \"eth1\" }]",
            "ha.floating[0].address",
        ),
    ] {
        let e = error(&ha(&key, extra));
        assert!(e.contains(&format!(" {key_name}: ")), "{extra}: {e}");
    }
    let e = error(&ha(&key, "").replace("[\"10.255.0.2\"]", "[\"10.255.0.2\", \"10.255.0.2\"]"));
    assert!(e.contains("ha.peers[1]: 10.255.0.2 is listed twice"), "{e}");
    let _ = std::fs::remove_file(key);
}
