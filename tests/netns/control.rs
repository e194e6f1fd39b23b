//! The daemon's own faults and its control surface, tried as an attacker or
//! a careless operator would: a second daemon on the same data path, files
//! created under umask 000, a stranger on the status socket, descriptors
//! run out, reloads every 150 ms, a deny list covering the backends, a
//! table size changed across a hitless restart.

use std::{
    net::SocketAddr,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use xdplb_tests::{ChildSetup, ProcessGuard, require_root, target_bin, xdplb_args};

use crate::lab::*;

/// `xdplb run` in the lab's LB namespace with these files and this setup;
/// not waited for.
fn spawn_daemon(
    lab: &Lab,
    config: &Path,
    pid_file: &Path,
    pin_root: &Path,
    setup: ChildSetup,
    name: &str,
) -> ProcessGuard {
    let args = xdplb_args(
        &target_bin("xdplb"),
        config,
        pid_file,
        pin_root,
        &["--xdp-mode", "native"],
    );
    ProcessGuard::spawn_in_netns_as(name, &lab.lb.name, &args, setup)
}

/// Wait (bounded) for a process to exit; its status.
fn exit_of(p: &mut ProcessGuard, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} still running after {limit:?}:\n{}",
            p.name,
            p.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A second daemon on the same pinned data path, or with the same PID
/// file, refuses to start and touches nothing: the first keeps serving,
/// its status socket stays. Files the daemon creates are its own (0600)
/// whatever its umask; a stranger on the socket (its mode loosened by hand)
/// is refused and counted; a configured group is let in.
#[test]
fn one_daemon_per_data_path_private_files_and_checked_peers() {
    let test = "one_daemon_per_data_path_private_files_and_checked_peers";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let pin_root = lab.daemon.pin_root.clone();
    let other_pid = lab.pid_file.with_extension("second.pid");
    // The same pin path, its own PID file and socket.
    let mut second = spawn_daemon(
        &lab,
        &lab.config,
        &other_pid,
        &pin_root,
        ChildSetup::default(),
        "xdplb-second",
    );
    let status = exit_of(&mut second, Duration::from_secs(30));
    let log = second.log().join("\n");
    assert!(!status.success(), "{test}: a second daemon started:\n{log}");
    assert!(
        log.contains("holds the data path pinned")
            && log.contains(&format!("pid {}", lab.daemon.child.id())),
        "{test}: {log}"
    );
    // Another pin path, the same PID file.
    let elsewhere = PathBuf::from("/sys/fs/bpf").join(format!("{}-elsewhere", lab.lb.name));
    let mut third = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &elsewhere,
        ChildSetup::default(),
        "xdplb-third",
    );
    let status = exit_of(&mut third, Duration::from_secs(30));
    let log = third.log().join("\n");
    assert!(!status.success(), "{test}: {log}");
    assert!(log.contains("holds the PID file"), "{test}: {log}");
    let _ = std::fs::remove_dir_all(&elsewhere);
    // The first is untouched: its socket, its pins, its traffic.
    assert!(lab.daemon.status_socket.exists(), "{test}: socket unlinked");
    assert!(status_table(&lab).contains("www.foobar.com"));
    {
        let _in = lab.client.enter();
        http_get(vip).unwrap_or_else(|e| panic!("{test}: {e}"));
    }

    // A clean stop, then a daemon started under umask 000.
    assert!(lab.daemon.stop().is_some_and(|s| s.success()));
    let deny_file = std::env::temp_dir().join(format!("{}-deny.list", lab.lb.name));
    let _ = std::fs::remove_file(&deny_file);
    let config = format!(
        "[firewall]\ndeny_file = \"{}\"\n{}",
        deny_file.display(),
        service_config("nat", "")
    );
    std::fs::write(&lab.config, &config).unwrap();
    let open = ChildSetup {
        umask: Some(0),
        ..Default::default()
    };
    let mut d = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &pin_root,
        open,
        "xdplb-umask0",
    );
    d.wait_for("xdplb ready", Duration::from_secs(30));
    lab.daemon.process = d;
    let socket = lab.daemon.status_socket.clone();
    let run_deny = |args: &[&str]| {
        std::process::Command::new(target_bin("xdplb"))
            .arg("deny")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    };
    assert!(run_deny(&["add", "198.18.0.0/15"]).status.success());
    for (what, p) in [
        ("status socket", socket.as_path()),
        ("PID file", lab.pid_file.as_path()),
        ("deny file", deny_file.as_path()),
    ] {
        assert_eq!(
            mode(p),
            0o600,
            "{test}: {what} {} under umask 000",
            p.display()
        );
    }
    // A stranger (uid 65534) on a socket whose mode someone loosened.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |line: &str| {
        use std::os::unix::process::CommandExt as _;
        let mut c = std::process::Command::new(target_bin("xdplb"));
        c.args(line.split_whitespace()).arg("--socket").arg(&socket);
        c.uid(65534).gid(65534);
        c.output().unwrap()
    };
    let out = as_nobody("deny add 0.0.0.0/0");
    assert!(
        !out.status.success(),
        "{test}: a stranger changed the deny list: {out:?}"
    );
    let listed = String::from_utf8_lossy(&run_deny(&["list"]).stdout).to_string();
    assert!(!listed.contains("0.0.0.0/0"), "{test}: {listed}");
    let refused = metric_value(&scrape(&lab), "xdplb_status_socket_refused_total");
    assert_eq!(refused, Some(1.0), "{test}: the refusal counted");
    assert!(
        lab.daemon
            .log()
            .iter()
            .any(|l| l.contains("status socket: a peer") && l.contains("uid=65534")),
        "{test}: the refusal logged"
    );
    // With a group: its members are let in, the socket is the group's.
    lab.daemon.stop();
    std::fs::write(
        &lab.config,
        config.replacen(
            "[control]\n",
            "[control]\nstatus_socket_group = \"nogroup\"\n",
            1,
        ),
    )
    .unwrap();
    let mut d = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &pin_root,
        open,
        "xdplb-group",
    );
    d.wait_for("xdplb ready", Duration::from_secs(30));
    lab.daemon.process = d;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.gid()), (0o660, 65534), "{test}");
    let out = as_nobody("status");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("www.foobar.com"),
        "{test}: a member of the group was refused: {out:?}"
    );
    let _ = std::fs::remove_file(&deny_file);
}

/// The value of an unlabelled sample `name`.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Descriptors run out: 100 checked backends whose HTTP checks each hold a
/// socket for 200 ms (a slow server), under a hard limit of a dozen
/// descriptors more than the daemon holds when idle. Probes that cannot
/// get a socket are "not run", counted and logged at most once a second;
/// no backend goes DOWN and a status request still gets its answer.
#[test]
fn descriptors_running_out_are_no_backend_failure() {
    let test = "descriptors_running_out_are_no_backend_failure";
    if !require_root(test) {
        return;
    }
    // 100 backends (two servers, 50 ports each), all checked on a slow
    // server's port 8081.
    let backends: Vec<String> = ["203.0.113.11", "203.0.113.21"]
        .iter()
        .flat_map(|a| (9000..9050).map(move |p| format!("{{ address = \"{a}\", port = {p} }}")))
        .collect();
    let unchecked = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n[[service]]\nname = \"many\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{}]\n",
        backends.join(", ")
    );
    let checked = format!(
        "{unchecked}[service.check]\nkind = \"http\"\nport = 8081\ninterval_ms = 300\ntimeout_ms = 280\nrise = 1\nfall = 2\n"
    );
    // The daemon's own descriptors, measured without probes.
    let mut lab = lab_with(Mode::Native, &unchecked);
    let _slow: Vec<ProcessGuard> = lab
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let args: Vec<String> = [
                target_bin("xdplb-testsrv").display().to_string(),
                format!("slow{i}"),
                "--slow-ms".into(),
                "200".into(),
                "--tcp".into(),
                "0.0.0.0:8081".into(),
            ]
            .into();
            let mut g = ProcessGuard::spawn(&format!("slow{i}"), &ns.name, &args);
            g.wait_for("listening", Duration::from_secs(10));
            g
        })
        .collect();
    let idle = std::fs::read_dir(format!("/proc/{}/fd", lab.daemon.child.id()))
        .map(|d| d.count())
        .unwrap() as u64;
    let pin_root = lab.daemon.pin_root.clone();
    xdplb_cmd(&[
        "stop",
        "--keep-running",
        "--pid-file",
        lab.pid_file.to_str().unwrap(),
    ]);
    std::fs::write(&lab.config, &checked).unwrap();
    // A dozen more: fewer probes at once than the slow servers' 16
    // acceptors, so no probe fails for a server's own queue.
    let limit = idle + 12;
    let tight = ChildSetup {
        nofile: Some(limit),
        ..Default::default()
    };
    let mut d = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &pin_root,
        tight,
        "xdplb-tight",
    );
    d.wait_for("xdplb ready", Duration::from_secs(30));
    lab.daemon.process = d;
    // Five check intervals: every backend probed about five times.
    std::thread::sleep(Duration::from_millis(300 * 5));
    let table = status_table(&lab);
    let m = scrape(&lab);
    let log = lab.daemon.log();
    let not_run = metric_value(&m, "xdplb_checks_not_run_total").unwrap_or(0.0);
    let noted = log
        .iter()
        .filter(|l| l.contains("health probes not run"))
        .count();
    eprintln!(
        "{test}: {idle} descriptors when idle, limit {limit}; {not_run} probes not run, logged {noted} times"
    );
    assert!(
        !log.iter().any(|l| l.contains("backend DOWN")),
        "{test}: a backend went DOWN for a local fault:\n{}",
        log.join("\n")
    );
    assert!(not_run > 0.0, "{test}: the limit was never reached");
    assert!(
        table.lines().filter(|l| l.contains(" up ")).count() >= 100,
        "{test}: {table}"
    );
    // At most once a second (the run lasted about 2 s).
    assert!(noted <= 4, "{test}: logged {noted} times");
}

/// Reloads every 150 ms do not hide a failure: probes of backends a reload
/// leaves unchanged keep running with their rise/fall counts. A backend cut
/// off (its answers to the LB blackholed: every probe runs into its 250 ms
/// timeout, longer than the time between reloads) goes DOWN within
/// interval x fall + timeout (+0.5 s); probes started over at every reload
/// would never finish one.
#[test]
fn a_reload_storm_hides_no_failure() {
    let test = "a_reload_storm_hides_no_failure";
    if !require_root(test) {
        return;
    }
    let (interval, timeout, fall) = (300u64, 250u64, 2u64);
    let config = |extra_weight: u32| {
        format!(
            "{}[[service]]\nname = \"other\"\nvip = \"192.0.2.11\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.21\", port = 8080, weight = {extra_weight} }}]\n",
            service_config(
                "nat",
                &format!(
                    "[service.check]\nkind = \"tcp\"\ninterval_ms = {interval}\ntimeout_ms = {timeout}\nrise = 1\nfall = {fall}\n"
                )
            )
        )
    };
    let mut lab = lab_with(Mode::Native, &config(1));
    lab.daemon
        .wait_for("health checks running", Duration::from_secs(10));
    let stop = AtomicBool::new(false);
    let (went_down, reloads) = std::thread::scope(|s| {
        let storm = s.spawn(|| {
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                n += 1;
                std::fs::write(&lab.config, config(1 + n % 2)).unwrap();
                xdplb_cmd(&[
                    "reload",
                    "--socket",
                    lab.daemon.status_socket.to_str().unwrap(),
                ]);
                std::thread::sleep(Duration::from_millis(150));
            }
            n
        });
        std::thread::sleep(Duration::from_millis(600));
        let broke = std::time::SystemTime::now();
        lab.backends[0].sh(&["ip", "route", "add", "blackhole", "203.0.113.1/32"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        let down = loop {
            if let Some(t) = lab.daemon.logged_at("backend DOWN") {
                break Some(t.duration_since(broke).unwrap_or_default());
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::Relaxed);
        (down, storm.join().unwrap())
    });
    let bound = Duration::from_millis(interval * fall + timeout + 500);
    let kept = lab
        .daemon
        .log()
        .iter()
        .filter(|l| l.contains("health checks running") && l.contains("kept=2"))
        .count();
    eprintln!(
        "{test}: {reloads} reloads; DOWN {went_down:?} after the break (bound {bound:?}); {kept} reloads kept both probes"
    );
    let went_down =
        went_down.unwrap_or_else(|| panic!("{test}: never DOWN under {reloads} reloads"));
    assert!(
        went_down <= bound,
        "{test}: DOWN {went_down:?} after the break"
    );
    assert!(kept >= 3, "{test}: reloads did not keep the probes");
}

/// Operator slips: `deny add` of a prefix covering a backend is refused
/// without --force (and with it, the backend's traffic and checks go on);
/// a flow table size changed across a hitless restart is refused at start
/// with what to do, instead of being silently ignored.
#[test]
fn operator_slips_are_refused_or_harmless() {
    let test = "operator_slips_are_refused_or_harmless";
    if !require_root(test) {
        return;
    }
    let check = "[service.check]\nkind = \"tcp\"\ninterval_ms = 300\ntimeout_ms = 250\nrise = 1\nfall = 2\n";
    let mut lab = lab_with(Mode::Native, &service_config("nat", check));
    let socket = lab.daemon.status_socket.clone();
    let deny = |args: &[&str]| {
        std::process::Command::new(target_bin("xdplb"))
            .arg("deny")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap()
    };
    let out = deny(&["add", "203.0.113.0/24"]);
    assert!(!out.status.success(), "{test}: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("covers backend 203.0.113.11"),
        "{test}: {out:?}"
    );
    let out = deny(&["add", "0.0.0.0/0"]);
    assert!(!out.status.success(), "{test}: {out:?}");
    // Forced: backends' replies and checks still get through.
    let out = deny(&["add", "203.0.113.0/24", "--force"]);
    assert!(out.status.success(), "{test}: {out:?}");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    {
        let _in = lab.client.enter();
        for _ in 0..10 {
            http_get(vip).unwrap_or_else(|e| panic!("{test}: with the range denied: {e}"));
        }
    }
    std::thread::sleep(Duration::from_millis(300 * 3));
    assert!(
        !lab.daemon.log().iter().any(|l| l.contains("backend DOWN")),
        "{test}: checks failed with the backends' range denied"
    );
    assert!(deny(&["del", "203.0.113.0/24"]).status.success());

    // A hitless restart with another flow table size: refused, saying so.
    let pin_root = lab.daemon.pin_root.clone();
    xdplb_cmd(&[
        "stop",
        "--keep-running",
        "--pid-file",
        lab.pid_file.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&lab.config).unwrap();
    let resized = text.replace("flow_table_size = 65536", "flow_table_size = 131072");
    assert_ne!(resized, text);
    std::fs::write(&lab.config, &resized).unwrap();
    let mut d = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &pin_root,
        ChildSetup::default(),
        "xdplb-resized",
    );
    let status = exit_of(&mut d, Duration::from_secs(30));
    let log = d.log().join("\n");
    assert!(
        !status.success(),
        "{test}: started with a silently ignored size:\n{log}"
    );
    assert!(
        log.contains("dataplane.flow_table_size is 131072")
            && log.contains("65536 entries")
            && log.contains("xdplb stop"),
        "{test}: {log}"
    );
    // The data path kept forwarding meanwhile; the old size restarts it.
    {
        let _in = lab.client.enter();
        http_get(vip).unwrap_or_else(|e| panic!("{test}: no daemon: {e}"));
    }
    std::fs::write(&lab.config, &text).unwrap();
    let mut d = spawn_daemon(
        &lab,
        &lab.config,
        &lab.pid_file,
        &pin_root,
        ChildSetup::default(),
        "xdplb-again",
    );
    d.wait_for("xdplb ready", Duration::from_secs(30));
    lab.daemon.process = d;
}

/// systemd's watchdog (`WatchdogSec=` in the unit): given `WATCHDOG_USEC`
/// and `WATCHDOG_PID` as systemd sets them, the daemon tells the notify
/// socket `READY=1` once attached and then `WATCHDOG=1` every half interval
/// from its event loop. Counted, not timed: at 200 ms (a ping every 100
/// ms), at least 5 pings within 3 s (30 expected; the margin is for a
/// loaded 2-core machine).
#[test]
fn the_event_loop_pings_systemds_watchdog() {
    let test = "the_event_loop_pings_systemds_watchdog";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    // The lab's daemon makes room (its files are taken over below).
    lab.daemon.process.stop();
    let sock = std::env::temp_dir().join(format!("xdplb-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let notify = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut args = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!(
            "WATCHDOG_PID=$$ WATCHDOG_USEC=200000 NOTIFY_SOCKET={} exec \"$0\" \"$@\"",
            sock.display()
        ),
    ];
    args.extend(xdplb_args(
        &target_bin("xdplb"),
        &lab.config,
        &lab.pid_file,
        &lab.daemon.pin_root,
        &["--xdp-mode", "native"],
    ));
    let mut daemon = ProcessGuard::spawn_in_netns("xdplb-watchdog", &lab.lb.name, &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 256];
    let mut ready = false;
    let mut pings = 0;
    let mut pinging_since = None;
    while Instant::now() < deadline {
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.contains("READY=1") {
            ready = true;
        }
        if msg.contains("WATCHDOG=1") {
            pings += 1;
            let since = *pinging_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                break;
            }
        }
    }
    let log = daemon.log();
    daemon.stop();
    let _ = std::fs::remove_file(&sock);
    assert!(ready, "no READY=1:\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("systemd watchdog: pinging every half interval")),
        "{}",
        log.join("\n")
    );
    assert!(pings >= 5, "{pings} watchdog pings in 3 s");
}
