//! Routing hygiene: path MTU, ICMP, TTL, neighbours and the next-hop cache.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use lb_common::Reason;
use xdplb_tests::{BACKEND_LINKS, Netns, require_root};

use crate::lab::*;

/// Path-MTU discovery through a NAT VIP: the LB's link to the backend has a
/// smaller MTU than the client's path, so the client's full-sized segments
/// cannot be forwarded. The LB must answer them with ICMP "fragmentation
/// needed" quoting the packet as the client sent it (to the VIP); the
/// client then lowers its path MTU, re-sends smaller segments, and the
/// request completes. An ICMP quoting the translated packet (to the backend)
/// would be ignored by the client, and the connection would stall.
#[test]
fn path_mtu_discovery_works_through_a_nat_vip() {
    let test = "path_mtu_discovery_works_through_a_nat_vip";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[control]\nmetrics_address = \"127.0.0.1:9100\"\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080 }}]\n"
    );
    let lab = lab_with(Mode::Native, &config);
    // Only the LB's side of the link to backend 1 is small: the backend
    // still advertises a 1460-byte MSS, so the client sends 1500-byte packets.
    lab.lb.sh(&["ip", "link", "set", "b1", "mtu", "1280"]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let pad = "x".repeat(6000);
    let request = format!("GET / HTTP/1.0\r\nHost: www\r\nX-Pad: {pad}\r\n\r\n");
    let started = Instant::now();
    let result = {
        let _in = lab.client.enter();
        (|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read: {e}"))?;
            Ok(resp)
        })()
    };
    let took = started.elapsed();
    let route = std::process::Command::new("ip")
        .args(["-n", &lab.client.name, "route", "get", VIP])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    let m = scrape(&lab);
    let icmps = sample(&m, "xdplb_packets_total", "reason=\"tx_icmp_frag_needed\"").unwrap_or(0.0);
    eprintln!(
        "{test}: request took {took:?}; {icmps} ICMPs sent; client route: {}",
        route.trim()
    );
    let resp = result.unwrap_or_else(|e| {
        panic!(
            "{test}: large request through the VIP failed after {took:?}: {e}\nclient route: {route}\n{}",
            lab.daemon.log().join("\n")
        )
    });
    assert!(resp.starts_with("HTTP/1.0 200"), "{test}: {resp:?}");
    assert!(
        resp.contains(&format!("request_bytes={}\n", request.len())),
        "{test}: the backend did not receive the whole {}-byte request: {resp:?}",
        request.len()
    );
    assert!(
        icmps >= 1.0,
        "{test}: no ICMP fragmentation-needed counted:\n{m}"
    );
    assert!(
        route.contains("mtu 1280"),
        "{test}: the client did not learn the path MTU from the LB's ICMP: {route}"
    );
}

/// The VIP is a local address of the LB (as on an HA node that answers ARP
/// for it), and the LB has never learned the client's MAC (the client knows
/// its gateway's statically, so it never ARPs). The backend's SYN-ACK,
/// translated to come from the VIP, has no neighbour to go to: handed to the
/// IP stack it would be dropped as a martian (source: a local address) and
/// the connection would hang. Marked for the tc program instead, it goes
/// through the kernel's neighbour resolution and reaches the client at the
/// first try: no SYN is retransmitted.
#[test]
fn a_client_the_lb_never_saw_gets_answers_from_a_local_vip() {
    let test = "a_client_the_lb_never_saw_gets_answers_from_a_local_vip";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &service_config("nat", ""));
    lab.lb
        .sh(&["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let lb_mac = mac_of(&lab.lb, "cli");
    lab.client.sh(&[
        "ip",
        "neigh",
        "replace",
        "198.51.100.1",
        "lladdr",
        &lb_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    lab.lb.sh(&["ip", "neigh", "flush", "dev", "cli"]);
    let neigh = |lab: &Lab| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lb.name, "neigh", "show", "198.51.100.2"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(neigh(&lab), "", "the LB must not know the client yet");
    let retrans_before = tcp_ext(&lab.client, "TCPSynRetrans");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (first, more) = {
        let _in = lab.client.enter();
        (http_get(vip), load(20, || http_get(vip)))
    };
    let retransmitted = tcp_ext(&lab.client, "TCPSynRetrans") - retrans_before;
    let m = scrape(&lab);
    let rescued = sample(&m, "xdplb_packets_total", "reason=\"pass_no_neighbour\"").unwrap_or(0.0);
    let fast = sample(&m, "xdplb_packets_total", "reason=\"fwd_reverse_nat\"").unwrap_or(0.0);
    let learned = neigh(&lab);
    eprintln!(
        "{test}: first request {first:?}; {} more ok; {rescued} replies sent through neighbour resolution, then {fast} translated in XDP; SYNs retransmitted: {retransmitted}; LB now has: {learned}",
        more.0.values().sum::<usize>()
    );
    let log = lab.daemon.log().join("\n");
    assert!(
        first.is_ok(),
        "{test}: first connection failed: {first:?}\n{log}"
    );
    assert!(
        more.1.is_empty(),
        "{test}: later connections failed: {:?}",
        more.1
    );
    assert_eq!(
        retransmitted, 0,
        "{test}: the client had to retransmit SYNs: the first SYN-ACK did not reach it"
    );
    assert!(
        rescued >= 1.0,
        "{test}: no reply went through neighbour resolution:\n{m}"
    );
    assert!(
        fast >= 20.0,
        "{test}: later replies not translated in XDP:\n{m}"
    );
    assert!(
        learned.contains("lladdr"),
        "{test}: the LB did not resolve the client: {learned:?}"
    );
    lab.daemon.stop();
}

/// Host safety: a neighbour entry the daemon did not create (here a static
/// one for backend 2, made by the operator while the daemon ran) is never
/// changed or removed; the daemon's own managed entry (backend 1) goes with
/// it on a clean stop.
#[test]
fn neighbour_entries_the_daemon_did_not_create_are_left_alone() {
    let test = "neighbour_entries_the_daemon_did_not_create_are_left_alone";
    if !require_root(test) {
        return;
    }
    let mut lab = lab_with(Mode::Native, &nat_config(&[("203.0.113.11", 1)], ""));
    let b2_mac = mac_of(&lab.backends[1], "eth0");
    lab.lb.sh(&[
        "ip",
        "neigh",
        "replace",
        "203.0.113.21",
        "lladdr",
        &b2_mac,
        "dev",
        "b2",
        "nud",
        "permanent",
    ]);
    let neigh = |lab: &Lab, addr: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lb.name, "neigh", "show", addr])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let before = neigh(&lab, "203.0.113.21");
    lab.reload(
        &nat_config(&[("203.0.113.11", 1), ("203.0.113.21", 1)], ""),
        1,
    );
    let ours = neigh(&lab, "203.0.113.11");
    assert!(
        ours.contains("managed"),
        "{test}: backend 1 not managed: {ours}"
    );
    assert_eq!(
        neigh(&lab, "203.0.113.21"),
        before,
        "{test}: changed while running"
    );
    let log = lab.daemon.log().join("\n");
    assert!(log.contains("not xdplb's; left as it is"), "{test}:\n{log}");
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let (spread, errors) = {
        let _in = lab.client.enter();
        load(20, || http_get(vip))
    };
    assert!(
        errors.is_empty() && spread.len() == 2,
        "{test}: {spread:?} {errors:?}"
    );
    let status = lab.daemon.stop();
    assert!(status.is_some_and(|s| s.success()));
    assert_eq!(
        neigh(&lab, "203.0.113.21"),
        before,
        "{test}: the operator's entry changed"
    );
    assert!(
        !neigh(&lab, "203.0.113.11").contains("managed"),
        "{test}: the daemon's own entry left behind"
    );
}

/// Issue 10's routing hygiene: NAT routes, so a datagram reaching the LB with
/// TTL 1 is answered with ICMP "time exceeded" (from the VIP, quoting the
/// datagram as sent: traceroute shows the hop), while TTL 2 gets through.
/// The client's kernel counts the ICMP in `InTimeExcds` only if its
/// checksums are right.
#[test]
fn nat_answers_ttl_1_with_time_exceeded() {
    let test = "nat_answers_ttl_1_with_time_exceeded";
    if !require_root(test) {
        return;
    }
    let lab = lab(Mode::Native, "nat", "round_robin");
    // The client kernel's count of "time exceeded" messages it accepted.
    let time_exceeded = || -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.client.name, "cat", "/proc/net/snmp"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
        let i = names
            .split_whitespace()
            .position(|n| n == "InTimeExcds")
            .unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    };
    let before = time_exceeded();
    let _in = lab.client.enter();
    let udp = UdpSocket::bind("198.51.100.2:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    udp.set_ttl(1).unwrap();
    for _ in 0..3 {
        udp.send_to(b"q", format!("{VIP}:53")).unwrap();
    }
    drop(_in);
    // ICMP arrives in microseconds; 3 s is margin for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(3);
    while time_exceeded() < before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        time_exceeded() - before,
        3,
        "{test}: the client got a time exceeded per datagram"
    );
    let _in = lab.client.enter();
    udp.set_ttl(2).unwrap();
    udp.send_to(b"q", format!("{VIP}:53")).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = udp.recv_from(&mut buf).expect("TTL 2 gets through");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("backend="));
    drop(_in);
    assert!(
        cpus_that_counted(&lab, Reason::TxIcmpTimeExceeded) >= 1,
        "{test}: tx_icmp_time_exceeded counted"
    );
}

/// The next-hop cache: the data path keeps each backend's next hop (egress,
/// MACs) per CPU instead of asking the FIB for every packet, so a change
/// in the kernel's neighbour table must reach the cache. Backend b1 takes a
/// new MAC and the LB's neighbour entry follows (as it would after
/// re-resolution). The daemon's periodic refresh is set to an hour, so
/// only the kernel's event can drop the cached hops: the generation moves
/// within a second of the change (printed: how soon), and then the held
/// connection and new ones reach b1 at its new MAC with no retransmission.
/// Without the invalidation they would go to the old MAC, which b1 no
/// longer accepts.
#[test]
fn traffic_follows_a_backend_mac_change() {
    let test = "traffic_follows_a_backend_mac_change";
    if !require_root(test) {
        return;
    }
    let both = [("203.0.113.11", 1), ("203.0.113.21", 1)];
    let config = nat_config(&both, "").replacen(
        "[dataplane]\n",
        "[dataplane]\nnext_hop_refresh_ms = 3600000\n",
        1,
    );
    let lab = lab_with(Mode::Native, &config);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let mut held = {
        let _in = lab.client.enter();
        // Warm both backends' cached next hops.
        for _ in 0..10 {
            http_get(vip).unwrap_or_else(|e| panic!("{test}: before the change: {e}"));
        }
        let mut found = None;
        for _ in 0..8 {
            let mut h = Held::open(vip);
            if h.first() == "b1" {
                found = Some(h);
                break;
            }
        }
        found.expect("a connection to b1")
    };
    let new_mac = "02:00:00:00:b1:99";
    lab.backends[0].sh(&["ip", "link", "set", "eth0", "address", new_mac]);
    let generation = || pinned_u32(&lab, lb_common::names::HOP_GENERATION);
    let before = generation();
    let changed = Instant::now();
    lab.lb.sh(&[
        "ip",
        "neigh",
        "replace",
        "203.0.113.11",
        "lladdr",
        new_mac,
        "dev",
        "b1",
        "nud",
        "reachable",
    ]);
    // Far below the hour of the periodic refresh: only the event did it.
    let limit = Duration::from_secs(1);
    while generation() == before {
        assert!(
            changed.elapsed() < limit,
            "{test}: the cached next hops were not dropped within {limit:?} of the change"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let dropped = changed.elapsed();
    let retransmitted = || tcp_snmp(&lab.client, "RetransSegs");
    let retrans_before = retransmitted();
    let _in = lab.client.enter();
    assert_eq!(
        held.ask().as_deref(),
        Ok("b1"),
        "{test}: the held connection reaches b1 at its new MAC"
    );
    let served: Vec<String> = (0..20)
        .map(|_| http_get(vip).unwrap_or_else(|e| panic!("{test}: after the change: {e}")))
        .collect();
    drop(_in);
    let retransmitted = retransmitted() - retrans_before;
    eprintln!(
        "{test}: cached next hops dropped {dropped:?} after `ip neigh replace` began (its process start included); then {retransmitted} segments retransmitted; {served:?}"
    );
    assert!(served.iter().any(|b| b == "b1"), "{served:?}");
    assert_eq!(
        retransmitted, 0,
        "{test}: segments went to the old MAC first"
    );
}

/// A counter of the `Tcp:` MIB (`/proc/net/snmp`) in `ns`.
fn tcp_snmp(ns: &Netns, name: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "cat", "/proc/net/snmp"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp"))
}

/// Entry 0 of the daemon's pinned one-entry array `name`.
fn pinned_u32(lab: &Lab, name: &str) -> u32 {
    let path = lab
        .daemon
        .pin_root
        .join(format!("v{}", lb_common::LAYOUT_VERSION))
        .join(name);
    let data =
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
    map.get(&0, 0).unwrap()
}

/// Issue 10: ICMP echo to a VIP is answered (by the data path: the VIP is
/// not configured on the LB host here, so the kernel could not) and
/// counted.
#[test]
fn ping_to_a_vip_is_answered_and_counted() {
    let test = "ping_to_a_vip_is_answered_and_counted";
    if !require_root(test) {
        return;
    }
    let lab = lab(Mode::Native, "nat", "round_robin");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.name,
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-W",
            "2",
            VIP,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{test}: {}", text.lines().rev().nth(1).unwrap_or(""));
    assert!(
        text.contains("5 received"),
        "{test}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cpus_that_counted(&lab, Reason::TxIcmpEchoReply) >= 1,
        "{test}: tx_icmp_echo_reply counted"
    );
}

/// Issue 10's routing hygiene: path-MTU discovery through the LB for a
/// router beyond it. The client namespace becomes a router to a far client
/// over a link whose router side has MTU 1280 (the far client still
/// advertises a 1460-byte MSS). The backend's full-size segments (NAT,
/// from the VIP) reach that router, which answers "fragmentation needed"
/// to the VIP; the data path relays it to the backend with the quoted
/// header translated back, the backend's TCP lowers its segment size, and
/// the 20 kB response arrives. Without the relay the ICMP ends at the LB
/// host (it has no route to the VIP) and the response never comes.
#[test]
fn path_mtu_discovery_works_for_a_router_beyond_the_lb() {
    let test = "path_mtu_discovery_works_for_a_router_beyond_the_lb";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"203.0.113.11\", port = 8080 }}]\n"
    );
    let lab = lab_with(Mode::Native, &config);
    let far = Netns::new("xdplb-far");
    xdplb_tests::veth(&lab.client, "far", &far, "eth0");
    lab.client
        .sh(&["ip", "addr", "add", "10.77.0.1/24", "dev", "far"]);
    lab.client.sh(&["ip", "link", "set", "far", "mtu", "1280"]);
    lab.client.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    far.sh(&["ip", "addr", "add", "10.77.0.2/24", "dev", "eth0"]);
    far.sh(&["ip", "route", "add", "default", "via", "10.77.0.1"]);
    // Full checksums from the far client: native XDP on the LB sees its
    // packets as the router forwards them.
    far.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
    lab.lb.sh(&[
        "ip",
        "route",
        "add",
        "10.77.0.0/24",
        "via",
        "198.51.100.2",
        "dev",
        "cli",
    ]);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let started = Instant::now();
    let result = {
        let _in = far.enter();
        (|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /big HTTP/1.0\r\nHost: www\r\n\r\n")
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read after {} bytes: {e}", resp.len()))?;
            Ok(resp)
        })()
    };
    let took = started.elapsed();
    let relayed = cpus_that_counted(&lab, Reason::FwdIcmpToBackend);
    eprintln!(
        "{test}: took {took:?}; relayed ICMP counted on {relayed} CPU(s); {}",
        result
            .as_ref()
            .map_or_else(|e| e.clone(), |r| format!("{} bytes", r.len()))
    );
    let resp = result.unwrap_or_else(|e| panic!("{test}: {e}"));
    assert!(
        resp.contains("backend=b1") && resp.contains(&"x".repeat(20_000)),
        "{test}: the whole response arrived"
    );
    assert!(relayed >= 1, "{test}: fwd_icmp_to_backend counted");
}

/// The `ip -d neigh` line of `addr` on `dev` in `ns`, if any.
fn neighbour_line(ns: &Netns, dev: &str, addr: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.name, "-d", "neigh", "show", addr, "dev", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{addr} ")))
        .map(str::to_string)
}

/// Issue 20: a link going down flushes every neighbour entry on it, the
/// managed ones xdplb keeps for backends too, and traffic then makes a
/// learned one in its place. The daemon makes its managed entry again
/// (looking every second) and traffic keeps flowing. Before, the entry was
/// lost for good.
#[test]
fn a_backend_link_flap_gets_its_managed_neighbour_back() {
    let test = "a_backend_link_flap_gets_its_managed_neighbour_back";
    if !require_root(test) {
        return;
    }
    let lab = lab(Mode::Generic, "nat", "round_robin");
    let link = &BACKEND_LINKS[0];
    let ours = |l: &Option<String>| {
        l.as_deref()
            .is_some_and(|l| l.contains("managed") && l.contains("proto 88"))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ours(&neighbour_line(&lab.lb, link.lb_if, link.addr)) {
        assert!(
            Instant::now() < deadline,
            "{test}: no managed entry at start: {:?}",
            neighbour_line(&lab.lb, link.lb_if, link.addr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The backend's side loses carrier and gets it back, as a cable pulled
    // and pushed in again.
    lab.backends[0].sh(&["ip", "link", "set", "eth0", "down"]);
    let flushed = neighbour_line(&lab.lb, link.lb_if, link.addr);
    lab.backends[0].sh(&["ip", "link", "set", "eth0", "up"]);
    // (Setting its own side down took the backend's routes; a pulled cable
    // would not have.)
    lab.backends[0].sh(&["ip", "route", "replace", "default", "via", link.gateway]);
    assert!(
        !ours(&flushed),
        "{test}: the flap did not flush the entry (the kernel keeps managed entries now?): {flushed:?}"
    );
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    // Traffic through the kernel's own resolution makes a learned entry.
    {
        let _in = lab.client.enter();
        let _ = load(10, || http_get(vip));
    }
    // Bound: the daemon looks every second; 2 s of margin for a loaded
    // machine.
    let bound = Duration::from_secs(3);
    let t0 = Instant::now();
    while !ours(&neighbour_line(&lab.lb, link.lb_if, link.addr)) {
        assert!(
            t0.elapsed() < bound,
            "{test}: managed entry not made again within {bound:?}: {:?}\n{}",
            neighbour_line(&lab.lb, link.lb_if, link.addr),
            lab.daemon.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (spread, errors) = {
        let _in = lab.client.enter();
        load(20, || http_get(vip))
    };
    assert!(errors.is_empty(), "{test}: after the flap: {errors:?}");
    assert_eq!(spread.len(), 2, "{test}: both backends serve: {spread:?}");
}

/// Issue 20: path-MTU discovery through a NAT VIP when the small link is
/// beyond the LB on the backends' side. Backend 1's namespace becomes a
/// router to a far backend over a link whose router side has MTU 1280 (the
/// far backend still advertises a 1460-byte MSS). The client's full-size
/// segments (translated to the far backend) reach that router, which
/// answers "fragmentation needed" to the client; the data path relays it
/// with the quoted destination translated back to the VIP, the client's
/// kernel lowers its path MTU to the VIP and the 6 kB request arrives
/// whole. Without the relay the ICMP reaches the client quoting an address
/// it never talked to, is ignored, and the request stalls.
#[test]
fn path_mtu_discovery_works_for_a_router_behind_the_lb() {
    let test = "path_mtu_discovery_works_for_a_router_behind_the_lb";
    if !require_root(test) {
        return;
    }
    let config = format!(
        "[dataplane]\nflow_table_size = 65536\n[[service]]\nname = \"www\"\nvip = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"round_robin\"\nforwarding = \"nat\"\nbackend = [{{ address = \"10.78.0.2\", port = 8080 }}]\n"
    );
    // The far backend and its router exist before the daemon starts, so
    // its first reply already finds a route.
    let lab = lab_with(Mode::Native, &nat_config(&[("203.0.113.11", 1)], ""));
    let router = &lab.backends[0];
    let far = Netns::new("xdplb-farb");
    xdplb_tests::veth(router, "farb", &far, "eth0");
    router.sh(&["ip", "addr", "add", "10.78.0.1/24", "dev", "farb"]);
    router.sh(&["ip", "link", "set", "farb", "mtu", "1280"]);
    router.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    far.sh(&["ip", "addr", "add", "10.78.0.2/24", "dev", "eth0"]);
    far.sh(&["ip", "route", "add", "default", "via", "10.78.0.1"]);
    // Full checksums from the far backend: native XDP on the LB sees its
    // packets as the router forwards them.
    far.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
    let srv = xdplb_tests::target_bin("xdplb-testsrv")
        .display()
        .to_string();
    let args: Vec<String> = [srv.as_str(), "far", "--tcp", "0.0.0.0:8080"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut server = xdplb_tests::ProcessGuard::spawn("far", &far.name, &args);
    server.wait_for("listening", Duration::from_secs(10));
    lab.lb.sh(&[
        "ip",
        "route",
        "add",
        "10.78.0.0/24",
        "via",
        BACKEND_LINKS[0].addr,
        "dev",
        BACKEND_LINKS[0].lb_if,
    ]);
    let mut lab = lab;
    lab.reload(&config, 1);
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    let pad = "x".repeat(6000);
    let request = format!("GET / HTTP/1.0\r\nHost: www\r\nX-Pad: {pad}\r\n\r\n");
    let started = Instant::now();
    let result = {
        let _in = lab.client.enter();
        (|| -> Result<String, String> {
            let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .map_err(|e| format!("read: {e}"))?;
            Ok(resp)
        })()
    };
    let took = started.elapsed();
    let route = std::process::Command::new("ip")
        .args(["-n", &lab.client.name, "route", "get", VIP])
        .output()
        .unwrap();
    let route = String::from_utf8_lossy(&route.stdout).to_string();
    let relayed = cpus_that_counted(&lab, Reason::FwdIcmpToClient);
    eprintln!(
        "{test}: request took {took:?}; relayed ICMP counted on {relayed} CPU(s); client route: {}",
        route.trim()
    );
    let resp = result.unwrap_or_else(|e| {
        panic!(
            "{test}: large request through the VIP failed after {took:?}: {e}\nclient route: {route}\n{}",
            lab.daemon.log().join("\n")
        )
    });
    assert!(
        resp.contains("backend=far")
            && resp.contains(&format!("request_bytes={}\n", request.len())),
        "{test}: the far backend did not receive the whole {}-byte request: {resp:?}",
        request.len()
    );
    assert!(relayed >= 1, "{test}: fwd_icmp_to_client counted");
    assert!(
        route.contains("mtu 1280"),
        "{test}: the client did not learn the path MTU from the relayed ICMP: {route}"
    );
    drop(server);
}
