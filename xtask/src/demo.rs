//! `cargo xtask run` without a NIC: the www.foobar.com setup in network
//! namespaces, xdplb in the middle, a bounded burst of HTTP requests, and
//! the spread over the two backends. Everything is torn down on exit,
//! including on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::bail;
use xdplb_testsupport::{BACKEND_LINKS, LbTopology, ProcessGuard, start_xdplb};

use crate::{cargo, run as run_cmd, say};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

const VIP: &str = "192.0.2.10:80";

pub fn run(root: &Path, requests: usize) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads XDP programs: run it as root");
    }
    say("building xdplb and the demo web servers");
    run_cmd(cargo().args(["build", "-p", "lb-userspace", "-p", "xdplb-tests", "--bins"]))?;
    let bin = root.join("target/debug");
    let config = root.join("config/www.foobar.com.toml");

    say("creating namespaces: client, lb, web1, web2 (removed again on exit)");
    let LbTopology {
        client,
        lb,
        backends: webs,
    } = LbTopology::new("xdplb-demo", "192.0.2.10", true);
    let mut servers = Vec::new();
    for (ns, (link, name)) in webs.iter().zip(BACKEND_LINKS.iter().zip(["web1", "web2"])) {
        let args = [
            bin.join("xdplb-testsrv").display().to_string(),
            name.into(),
            "--tcp".into(),
            "0.0.0.0:80".into(),
        ];
        let mut g = ProcessGuard::spawn(name, &ns.name, &args);
        g.wait_for("listening", Duration::from_secs(10));
        say(&format!("{name} serving HTTP on {}:80", link.addr));
        servers.push(g);
    }

    say(&format!(
        "starting xdplb with {} on the LB's interfaces cli, b1, b2",
        config.display()
    ));
    let pid_file = std::env::temp_dir().join(format!("{}.pid", lb.name));
    let mut daemon = start_xdplb(&lb, &bin.join("xdplb"), &config, &pid_file, &[]);
    for line in daemon.log() {
        eprintln!("    {line}");
    }

    say(&format!(
        "sending {requests} HTTP requests to http://{VIP}/ from the client namespace"
    ));
    let vip: SocketAddr = VIP.parse()?;
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    {
        let _in = client.enter();
        for _ in 0..requests {
            if STOP.load(Ordering::SeqCst) || Instant::now() > deadline {
                break;
            }
            match get(vip) {
                Ok(name) => *spread.entry(name).or_default() += 1,
                Err(_) => failures += 1,
            }
        }
    }
    // Let the daemon's once-a-second flow census and rate sample catch up.
    std::thread::sleep(Duration::from_millis(1500));
    say("xdplb status (read from the running daemon's status socket):");
    match std::process::Command::new(bin.join("xdplb"))
        .arg("status")
        .arg("--socket")
        .arg(&daemon.status_socket)
        .output()
    {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("    xdplb status failed: {e}"),
    }
    let stopped = daemon.stop();
    println!("\nwww.foobar.com ({VIP}) -> backends, {requests} requests:");
    for (name, n) in &spread {
        println!(
            "  {name:>5} {n:>4}  {}",
            "#".repeat(*n * 50 / requests.max(1))
        );
    }
    if failures > 0 {
        println!("  failed {failures:>4}");
    }
    for line in daemon
        .log()
        .iter()
        .filter(|l| l.contains("counters") || l.contains("detached"))
    {
        println!("    {line}");
    }
    say("tearing down (daemon stopped, namespaces removed)");
    drop(servers);
    drop(daemon);
    if STOP.load(Ordering::SeqCst) {
        say("interrupted");
    }
    if !stopped.is_some_and(|s| s.success()) {
        bail!("xdplb did not exit cleanly: {stopped:?}");
    }
    if failures > 0 || spread.len() < 2 {
        bail!("{failures} requests failed; spread {spread:?}");
    }
    Ok(())
}

fn get(vip: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&vip, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: www.foobar.com\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| e.to_string())?;
    r.lines()
        .find_map(|l| l.strip_prefix("backend="))
        .map(str::to_string)
        .ok_or_else(|| "no backend name".into())
}
