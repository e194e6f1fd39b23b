//! Running as a service: the systemd unit verifies (`systemd-analyze
//! verify`, from Debian's systemd), and the Prometheus alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`, from
//! Debian's prometheus). `cargo xtask setup` installs both tools. Needs no
//! root.

use std::{path::PathBuf, process::Command};

use xdplb_tests::{require_tool, target_bin};

fn config_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The shipped unit with its paths pointed at this build and a shipped
/// config (verify checks that the commands exist).
fn unit_for_this_build(text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xdplb-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("xdplb.service");
    let text = text
        .replace(
            "/usr/local/bin/xdplb",
            &target_bin("xdplb").display().to_string(),
        )
        .replace(
            "/etc/xdplb/lb.toml",
            &config_dir()
                .join("www.foobar.com.toml")
                .display()
                .to_string(),
        );
    std::fs::write(&unit, text).unwrap();
    unit
}

#[test]
fn the_systemd_unit_verifies() {
    let test = "the_systemd_unit_verifies";
    if !require_tool(test, "systemd-analyze") {
        return;
    }
    let shipped = std::fs::read_to_string(config_dir().join("xdplb.service")).unwrap();
    assert!(shipped.contains("Type=notify") && shipped.contains("ExecReload="));
    let unit = unit_for_this_build(&shipped);
    let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok && out.trim().is_empty(), "{test}: {out}");
    // The check can fail: a misspelt key is reported.
    let broken = unit_for_this_build(&shipped.replace("Restart=on-failure", "Restrat=on-failure"));
    let (_, out) = run(Command::new("systemd-analyze").arg("verify").arg(&broken));
    assert!(out.contains("Unknown key 'Restrat'"), "{test}: {out}");
    let _ = std::fs::remove_dir_all(unit.parent().unwrap());
}

#[test]
fn alerting_rules_check_and_pass_their_unit_tests() {
    let test = "alerting_rules_check_and_pass_their_unit_tests";
    if !require_tool(test, "promtool") {
        return;
    }
    let dir = config_dir();
    let (ok, out) = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("xdplb-alerts.yml")));
    assert!(ok, "{test}: {out}");
    assert!(out.contains("SUCCESS: 9 rules found"), "{test}: {out}");
    let (ok, out) = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(dir.join("xdplb-alerts.test.yml")));
    assert!(ok, "{test}: {out}");
}
