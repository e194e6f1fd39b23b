//! Hitless restart: forwarding without a daemon, adoption of the pins.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::{Netns, ProcessGuard, require_root, target_bin, xdplb_args};

use crate::lab::*;

/// Start another daemon on the same pins; it must adopt them.
fn restart_daemon(
    lb: &Netns,
    config: &std::path::Path,
    pid_file: &std::path::Path,
    pin_root: &std::path::Path,
    name: &str,
) -> ProcessGuard {
    let args = xdplb_args(
        &target_bin("xdplb"),
        config,
        pid_file,
        pin_root,
        &["--xdp-mode", "native"],
    );
    let mut p = ProcessGuard::spawn_in_netns(name, &lb.name, &args);
    p.wait_for("xdplb ready", Duration::from_secs(30));
    assert!(
        p.log()
            .iter()
            .any(|l| l.contains("adopting the pinned data path")),
        "{name} did not adopt the pins:\n{}",
        p.log().join("\n")
    );
    p
}

#[test]
fn hitless_restart_survives_sigkill_and_keep_running_stop() {
    let test = "hitless_restart_survives_sigkill_and_keep_running_stop";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held = {
        let _in = lab.client.enter();
        Held::open(vip)
    };
    let held_on = held.first();
    let pins = lab
        .daemon
        .pin_root
        .join(format!("v{}", lb_common::LAYOUT_VERSION));
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let (outcomes, gap) = std::thread::scope(|s| {
        let load = s.spawn(|| background_load_counted(&lab.client, vip, &stop, &ok));
        std::thread::sleep(Duration::from_millis(500));
        // 1. SIGKILL: no chance to clean up. Forwarding must go on.
        let pid = lab.daemon.child.id() as i32;
        // SAFETY: our own child, by PID.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let _ = lab.daemon.child.wait();
        let killed = Instant::now();
        assert!(
            pins.join("link_cli").exists() && pins.join("FLOWS").exists(),
            "pins gone after SIGKILL"
        );
        assert_eq!(xdp_attached(&lab.lb), 3, "XDP detached by the kill");
        assert_eq!(
            tcx_attached(&lab.lb, "cli"),
            1,
            "tc program detached by the kill"
        );
        // New connections go on with no daemon at all: wait for so many.
        wait_count(
            &ok,
            ok.load(Ordering::Relaxed) + WITHOUT_DAEMON,
            Duration::from_secs(20),
            "connections served with no daemon",
        );
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection without a daemon"
        );
        // 2. A new daemon adopts the pinned maps and links.
        lab.daemon.process = restart_daemon(
            &lab.lb,
            &lab.config,
            &lab.pid_file,
            &lab.daemon.pin_root,
            "xdplb-2",
        );
        let restarted = Instant::now();
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection after restart"
        );
        std::thread::sleep(Duration::from_millis(500));
        // 3. `xdplb stop --keep-running`: exits, forwarding stays; a third adopts.
        let pid_file = lab.pid_file.display().to_string();
        xdplb_cmd(&["stop", "--keep-running", "--pid-file", &pid_file]);
        assert_eq!(xdp_attached(&lab.lb), 3, "--keep-running detached");
        assert_eq!(
            tcx_attached(&lab.lb, "b1"),
            1,
            "--keep-running detached the tc program (or a restart added a second)"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            held.ask().as_deref(),
            Ok(held_on.as_str()),
            "held connection after --keep-running stop"
        );
        lab.daemon.process = restart_daemon(
            &lab.lb,
            &lab.config,
            &lab.pid_file,
            &lab.daemon.pin_root,
            "xdplb-3",
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), (killed, restarted))
    });
    assert_eq!(
        held.ask().as_deref(),
        Ok(held_on.as_str()),
        "held connection at the end"
    );
    let failures: Vec<_> = outcomes.iter().filter(|(_, r)| r.is_err()).collect();
    let (killed, restarted) = gap;
    let without_daemon = outcomes
        .iter()
        .filter(|(t, r)| *t > killed && *t < restarted && r.is_ok())
        .count();
    let spread: BTreeMap<&str, usize> = outcomes.iter().fold(BTreeMap::new(), |mut m, (_, r)| {
        if let Ok(b) = r {
            *m.entry(b.as_str()).or_insert(0) += 1;
        }
        m
    });
    eprintln!(
        "{test}: {} new connections, {} failed, {without_daemon} while no daemon ran; spread {spread:?}",
        outcomes.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{test}: failures {:?}",
        &failures[..failures.len().min(3)]
    );
    assert!(
        without_daemon >= WITHOUT_DAEMON,
        "{test}: {without_daemon} connections served without a daemon"
    );
    assert_eq!(spread.len(), 2, "{test}: {spread:?}");
    // 4. `xdplb stop`: detach, unpin, release.
    let pid_file = lab.pid_file.display().to_string();
    xdplb_cmd(&["stop", "--pid-file", &pid_file]);
    assert_eq!(
        xdp_attached(&lab.lb),
        0,
        "XDP left attached by a clean stop"
    );
    for dev in ["cli", "b1", "b2"] {
        assert_eq!(tcx_attached(&lab.lb, dev), 0, "tc program left on {dev}");
    }
    assert!(!lab.daemon.pin_root.exists(), "pins left by a clean stop");
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("unpinned"), "{log}");
}

/// New connections the restart test sees served while no daemon runs.
const WITHOUT_DAEMON: usize = 20;
