//! Reloads: applied as differences, established flows kept, bad configs
//! rejected while the old one serves.

use std::{net::SocketAddr, time::Duration};

use xdplb_tests::{require_root, target_bin};

use crate::lab::*;

#[test]
fn reload_applies_diffs_keeps_established_flows_and_rejects_bad_configs() {
    let test = "reload_applies_diffs_keeps_established_flows_and_rejects_bad_configs";
    if !require_root(test) {
        return;
    }
    let mut lab = lab(Mode::Native, "nat", "round_robin");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    // `xdplb reload` waits for the daemon's verdict: (exit status, stdout,
    // stderr).
    let reload = |lab: &Lab| {
        let out = std::process::Command::new(target_bin("xdplb"))
            .args([
                "reload",
                "--socket",
                lab.daemon.status_socket.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];

    let _in = lab.client.enter();
    let mut held = Held::open(vip);
    let held_on = held.first();
    let (kept_addr, other_addr) = if held_on == "b1" {
        both
    } else {
        [both[1], both[0]]
    }
    .map(|(a, _)| a)
    .into();

    // 1. Re-weight and add a service: applied live, the held flow carries on.
    std::fs::write(
        &lab.config,
        nat_config(&[(kept_addr, 3), (other_addr, 1)], "[[service]]\nname = \"extra\"\nvip = \"192.0.2.11\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"maglev\"\nforwarding = \"nat\"\nbackend = [{ address = \"203.0.113.11\", port = 8080 }]\n"),
    )
    .unwrap();
    let (ok, out, err) = reload(&lab);
    assert!(ok, "xdplb reload: {out}{err}");
    assert!(
        out.starts_with(
            "applied: services: 1 added (extra), 1 removed (dns), 1 changed (www.foobar.com); backends: 1 added, 2 removed"
        ),
        "the verdict: {out}"
    );
    lab.daemon
        .wait_for_count("reload applied", 1, Duration::from_secs(10));
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after reload 1"
    );
    let (spread, errors) = load(40, || http_get(vip));
    assert!(errors.is_empty(), "after reload 1: {errors:?}");
    let kept_name = held_on.clone();
    assert!(
        spread.get(&kept_name).copied().unwrap_or(0) >= 25,
        "weight 3:1 not applied: {spread:?}"
    );
    let extra: SocketAddr = "192.0.2.11:80".parse().unwrap();
    assert_eq!(
        http_get(extra).as_deref(),
        Ok("b1"),
        "service added by reload"
    );

    // 2. An invalid config is rejected; the previous one keeps serving.
    std::fs::write(
        &lab.config,
        nat_config(&both, "").replace("port = 8080", "port = 0"),
    )
    .unwrap();
    let (ok, out, err) = reload(&lab);
    // Rejected: a non-zero exit naming file, line, key and reason.
    assert!(!ok, "a rejected reload exited 0: {out}{err}");
    assert!(
        err.contains(&format!("rejected: {}:", lab.config.display()))
            && err.contains("port")
            && err.contains("still serving the previous configuration"),
        "{err}"
    );
    lab.daemon
        .wait_for_count("reload rejected", 1, Duration::from_secs(10));
    let (spread2, errors) = load(20, || http_get(vip));
    assert!(
        errors.is_empty() && spread2.len() == 2,
        "old config must keep serving: {spread2:?} {errors:?}"
    );
    assert_eq!(
        http_get(extra).as_deref(),
        Ok("b1"),
        "old config's extra service still there"
    );
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after rejected reload"
    );

    // 3. Remove the other backend: new flows avoid it, the held flow stays.
    std::fs::write(&lab.config, nat_config(&[(kept_addr, 1)], "")).unwrap();
    let (ok, out, err) = reload(&lab);
    assert!(ok, "xdplb reload: {out}{err}");
    assert!(
        out.starts_with(
            "applied: services: 1 removed (extra), 1 changed (www.foobar.com); backends: 0 added, 2 removed"
        ),
        "{out}"
    );
    lab.daemon
        .wait_for_count("reload applied", 2, Duration::from_secs(10));
    let (spread3, errors) = load(20, || http_get(vip));
    assert!(errors.is_empty(), "after removing a backend: {errors:?}");
    assert_eq!(
        spread3.keys().collect::<Vec<_>>(),
        vec![&kept_name],
        "removed backend still gets flows: {spread3:?}"
    );
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection after backend removal"
    );
    assert!(
        http_get(extra).is_err(),
        "service removed by reload still answers"
    );
    drop(_in);
    // Managed neighbour entries follow the backend set across reloads.
    let neigh = std::process::Command::new("ip")
        .args(["-n", &lab.lb.name, "neigh", "show"])
        .output()
        .unwrap();
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    let managed = |addr: &str| {
        neigh
            .lines()
            .any(|l| l.starts_with(&format!("{addr} ")) && l.contains("managed"))
    };
    assert!(
        managed(kept_addr),
        "kept backend lost its managed entry:\n{neigh}"
    );
    assert!(
        !managed(other_addr),
        "removed backend's managed entry left behind:\n{neigh}"
    );
    let status = lab.daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "daemon exit {status:?}"
    );
}

// --- Control plane: health, passive health, hitless restart, metrics --------
