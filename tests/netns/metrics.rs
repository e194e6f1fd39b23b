//! A real Prometheus scrapes the endpoint and loads the rules.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xdplb_tests::{Netns, ProcessGuard, require_root};

use crate::lab::*;

/// GET `path` from `addr` inside `ns`; the body.
fn http_body(ns: &Netns, addr: &str, path: &str) -> String {
    let _in = ns.enter();
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or(resp)
}

/// A real Prometheus server (Debian's) scrapes the daemon's endpoint and
/// loads the shipped alerting rules: the exposition parses, the samples the
/// dashboard and rules use arrive with the right values, `/status` and
/// `/healthz` answer.
#[test]
fn a_real_prometheus_scrapes_the_endpoint_and_loads_the_rules() {
    let test = "a_real_prometheus_scrapes_the_endpoint_and_loads_the_rules";
    if !require_root(test) {
        return;
    }
    if !xdplb_tests::require_tool(test, "prometheus") {
        return;
    }
    let lab = lab_with(Mode::Native, &service_config("nat", ""));
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (_, errors) = {
        let _in = lab.client.enter();
        load(20, || http_get(vip))
    };
    assert!(errors.is_empty(), "{errors:?}");
    // A plain GET (as curl or a pipe into promtool) gets the Prometheus
    // text format, which `promtool check metrics` accepts without a word.
    let plain = http_body(&lab.lb, "127.0.0.1:9100", "/metrics");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(plain.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
    let dir = std::env::temp_dir().join(format!("{}-prometheus", lab.lb.name));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/xdplb-alerts.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: xdplb\n    static_configs:\n      - targets: ['127.0.0.1:9100']\n",
            rules.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = vec![
        "prometheus".into(),
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        "--web.listen-address=127.0.0.1:9090".into(),
    ];
    let mut prom = ProcessGuard::spawn("prometheus", &lab.lb.name, &args);
    prom.wait_for(
        "Server is ready to receive web requests",
        Duration::from_secs(30),
    );
    let query = |q: &str| -> Option<f64> {
        let body = http_body(
            &lab.lb,
            "127.0.0.1:9090",
            &format!("/api/v1/query?query={q}"),
        );
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    // Scrapes every second: wait (bounded) for the first successful one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while query("up%7Bjob%3D%22xdplb%22%7D") != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "{test}: never scraped:\n{}",
            prom.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let fwd = query("xdplb_packets_total%7Breason%3D%22fwd_nat%22%7D").unwrap_or(0.0);
    let conns = query("sum(xdplb_service_connections_total)").unwrap_or(0.0);
    let up = query("xdplb_backend_up%7Bbackend%3D%22203.0.113.11%3A8080%22%7D");
    eprintln!("{test}: Prometheus sees fwd_nat={fwd}, connections={conns}, backend up={up:?}");
    assert!(fwd >= 20.0, "{test}: fwd_nat {fwd}");
    assert_eq!(conns, 20.0, "{test}: one connection per request");
    assert_eq!(up, Some(1.0));
    let rules_json = http_body(&lab.lb, "127.0.0.1:9090", "/api/v1/rules");
    for alert in [
        "XdplbNotScraped",
        "XdplbBackendDown",
        "XdplbServiceWithoutBackend",
        "XdplbDropsRising",
    ] {
        assert!(
            rules_json.contains(alert),
            "{test}: rule {alert} not loaded: {rules_json}"
        );
    }
    // The other endpoints of the same server.
    let status: serde_json::Value =
        serde_json::from_str(&http_body(&lab.lb, "127.0.0.1:9100", "/status")).unwrap();
    assert_eq!(status["services"][0]["name"], "www.foobar.com");
    assert_eq!(http_body(&lab.lb, "127.0.0.1:9100", "/healthz"), "ok\n");
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}
