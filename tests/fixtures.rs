//! Packet fixtures: frames in, verdict and frame out, through the real XDP
//! program via BPF_PROG_TEST_RUN.
//!
//! Each test runs in its own network namespace holding veths with fixed MACs
//! and permanent neighbour entries, so the kernel FIB lookup the program does
//! gives known next hops. Expected frames are built from scratch with
//! etherparse (which computes checksums), so a byte-for-byte match proves the
//! program's incremental checksum updates right.
//!
//! `packet_fixture_table` runs the table in `xdplb_tests::cases` (one frame
//! per row, every counter checked); the tests after it are sequences, where
//! what a frame does depends on the frames before it.

use std::path::Path;

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{RING_SIZE, Reason, hash::flow_hash};
use xdplb::{
    config::{Config, Protocol},
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane, Counters, TestFault},
    plan::{Availability, BackendRef, Planner, service_key},
};
use xdplb_tests::{
    CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, backend_mac,
    cases::{self, CONFIG},
    fib_lab,
    frames::*,
    lab::{Lab, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX},
    pin_to_cpu0, require_root, wire,
};

/// A lab programmed from the fixture config, in a namespace of its own.
fn lab() -> Lab {
    Lab::new("xdplb-fx", CONFIG, None)
}

#[test]
fn packet_fixture_table() {
    if !require_root("packet_fixture_table") {
        return;
    }
    let mut fx = lab();
    let table = cases::table(&fx);
    let mut failed = Vec::new();
    let mut ran = 0;
    for case in &table {
        let errors = cases::run(&mut fx, case);
        ran += 1;
        if !errors.is_empty() {
            failed.push(format!(
                "{}:
    {}",
                case.name,
                errors.join("\n    ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} rows failed:\n{}",
        failed.len(),
        table.len(),
        failed.join("\n")
    );
    assert_eq!(ran, table.len());
    // Every row is its own: a name twice would hide a row in reports and
    // in the benchmark, which picks rows by name.
    let mut names = std::collections::BTreeSet::new();
    for case in &table {
        assert!(names.insert(case.name), "two rows named {:?}", case.name);
    }
    // Every verdict reason of the data path moves in some row, or in the
    // named sequence test (one frame cannot show it).
    let cookies = "syn_cookies_open_translate_and_refuse_connections";
    let elsewhere: &[(Reason, &str)] = &[
        (
            Reason::DropNoBackend,
            "passive_signals_and_the_all_down_policy",
        ),
        (
            Reason::PassNoBackend,
            "passive_signals_and_the_all_down_policy",
        ),
        (
            Reason::DropRstRedispatch,
            "refused_connections_are_redispatched_once",
        ),
        (Reason::TxSynCookie, cookies),
        (Reason::FwdCookieSyn, cookies),
        (Reason::DropBadCookie, cookies),
        (Reason::DropCookiePending, cookies),
        (Reason::TxCookieAck, cookies),
        (
            Reason::DropArpNotMaster,
            "arp_for_ha_addresses_follows_the_lease",
        ),
        (
            Reason::PassOtherHost,
            "frames_for_another_host_are_not_forwarded_unless_accepted",
        ),
        (
            Reason::DropPickupRefused,
            "a_connection_picked_up_mid_stream_is_proven_by_its_backend",
        ),
        (
            Reason::DropNatTupleInUse,
            "a_client_port_live_through_one_vip_is_not_given_the_same_backend_through_another",
        ),
    ];
    let uncovered: Vec<&str> = Reason::ALL
        .iter()
        .filter(|r| {
            !table
                .iter()
                .any(|c| c.reasons.iter().any(|(x, n)| x == *r && *n > 0))
                && !elsewhere.iter().any(|(x, _)| x == *r)
        })
        .map(|r| r.label())
        .collect();
    assert!(uncovered.is_empty(), "reasons no row shows: {uncovered:?}");
    eprintln!("{} fixture rows passed", table.len());
}

/// The table can fail: with NAT's port checksum update planted wrong, the
/// translated rows fail on their output, and the rows NAT does not touch
/// still pass.
#[test]
fn the_table_catches_a_planted_checksum_bug() {
    if !require_root("the_table_catches_a_planted_checksum_bug") {
        return;
    }
    let mut fx = Lab::with_fault("xdplb-fx", CONFIG, None, TestFault::NatPortChecksum);
    let table = cases::table(&fx);
    let failed = |fx: &mut Lab, name: &str| cases::run(fx, cases::find(&table, name));
    let nat = failed(
        &mut fx,
        "NAT: a new connection's destination becomes its Maglev backend",
    );
    assert!(
        nat.iter().any(|e| e.starts_with("output differs")),
        "the planted bug went unnoticed: {nat:?}"
    );
    let udp = failed(
        &mut fx,
        "NAT: a UDP datagram opens a flow and is translated",
    );
    assert!(
        udp.iter().any(|e| e.starts_with("output differs")),
        "{udp:?}"
    );
    for untouched in [
        "DSR: a new connection goes to its Maglev backend, only the MACs change",
        "TCP header ending beyond the datagram (total length 32)",
    ] {
        assert_eq!(
            failed(&mut fx, untouched),
            Vec::<String>::new(),
            "{untouched}"
        );
    }
}

/// An HA node answers ARP for its addresses only while its MASTER lease
/// runs: a node whose daemon died keeps forwarding, but stops claiming the
/// VIP once the peer may have taken it.
#[test]
fn arp_for_ha_addresses_follows_the_lease() {
    if !require_root("arp_for_ha_addresses_follows_the_lease") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 10];
    let arp = cases::arp_request(vip);
    let now_ns = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: fills the struct.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    // Without HA, ARP is the kernel's.
    assert_eq!(fx.run(&arp), (XDP_PASS, arp.clone()));
    fx.set_vip(vip, lb_common::VIP_F_DROP_UNSERVED | lb_common::VIP_F_HA);
    let ha = |lease_until_ns| lb_common::Settings {
        flags: lb_common::SETTINGS_F_HA,
        lease_until_ns,
        ..Default::default()
    };
    fx.set_settings(ha(now_ns() + 10_000_000_000));
    assert_eq!(fx.run(&arp), (XDP_PASS, arp.clone()), "lease running");
    fx.set_settings(ha(now_ns().saturating_sub(1)));
    let before = fx.reason(Reason::DropArpNotMaster);
    assert_eq!(fx.run(&arp), (XDP_DROP, arp.clone()), "lease over");
    assert_eq!(fx.reason(Reason::DropArpNotMaster), before + 1);
    // Other addresses' ARP is never touched.
    let other = cases::arp_request([192, 0, 2, 99]);
    assert_eq!(fx.run(&other), (XDP_PASS, other.clone()));
}

/// Issue 20: a unicast frame addressed to another host (a switch floods
/// unknown unicast to every port; an HA BACKUP used to forward the
/// MASTER's) is the kernel's, not forwarded; the frames of a peer the HA
/// node declared dead (`Settings::accept_macs`) are forwarded on purpose;
/// broadcast is everyone's. Without the interface's MAC set the check is
/// off (a lab, or an interface past `MAX_IFINDEX`).
#[test]
fn frames_for_another_host_are_not_forwarded_unless_accepted() {
    if !require_root("frames_for_another_host_are_not_forwarded_unless_accepted") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 10];
    let dead_master = [0x02, 0, 0, 0, 0x0d, 0xad];
    let fxa = xdplb_tests::wire::ifindex("fxa");
    fx.set_iface_mac(fxa, LB_CLIENT_MAC);
    let to = |dst: [u8; 6], sport: u16| {
        with_macs(&from_client(vip, sport, 80, L4::TcpSyn), CLIENT_MAC, dst)
    };
    let input = to(dead_master, 41000);
    assert_eq!(
        fx.run(&input),
        (XDP_PASS, input.clone()),
        "another host's frame"
    );
    assert_eq!(fx.reason(Reason::PassOtherHost), 1);
    assert_eq!(fx.reason(Reason::FwdDsr), 0);
    assert_eq!(fx.run(&to(LB_CLIENT_MAC, 41001)).0, XDP_REDIRECT, "our own");
    assert_eq!(fx.run(&to([0xff; 6], 41002)).0, XDP_REDIRECT, "broadcast");
    let mut accept_macs = [[0u8; 6]; lb_common::MAX_ACCEPT_MACS];
    accept_macs[1] = dead_master;
    fx.set_settings(lb_common::Settings {
        flags: lb_common::SETTINGS_F_HA,
        accept_macs,
        accept_count: 2,
        ..Default::default()
    });
    assert_eq!(
        fx.run(&to(dead_master, 41003)).0,
        XDP_REDIRECT,
        "a dead peer's"
    );
    // Only the first `accept_count` count.
    fx.set_settings(lb_common::Settings {
        flags: lb_common::SETTINGS_F_HA,
        accept_macs,
        accept_count: 1,
        ..Default::default()
    });
    assert_eq!(fx.run(&to(dead_master, 41004)).0, XDP_PASS);
    assert_eq!(fx.reason(Reason::PassOtherHost), 2);
    assert_eq!(fx.reason(Reason::FwdDsr), 3);
}

#[test]
fn dsr_rewrites_only_macs_and_pins_flows() {
    if !require_root("dsr_rewrites_only_macs_and_pins_flows") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 10];
    // Round robin: new flows take ring slots in turn; each flow stays put.
    for (i, sport) in [40000u16, 40001, 40002, 40003].into_iter().enumerate() {
        let backend = fx.ring_backend("dsr-rr", i as u32 % 2);
        for l4 in [L4::TcpSyn, L4::TcpAck, L4::TcpAck] {
            let input = from_client(vip, sport, 80, l4);
            let before = fx.reason(Reason::FwdDsr);
            let (action, out) = fx.run(&input);
            assert_eq!(action, XDP_REDIRECT, "flow {sport}");
            let mut want = input.clone();
            want[0..6].copy_from_slice(&backend_mac(backend[3]));
            want[6..12].copy_from_slice(&LB_BACKEND_MAC);
            assert_eq!(
                out, want,
                "flow {sport}: only MACs change, to backend {backend:?}"
            );
            assert_eq!(fx.reason(Reason::FwdDsr), before + 1);
        }
    }
    let snap = fx
        .counters
        .snapshot(&[fx.plan.services[0].info.id], &[])
        .unwrap();
    let t = snap.services.values().next().unwrap();
    assert_eq!((t.packets, t.connections), (12, 4), "per-service counters");
}

#[test]
fn maglev_choice_matches_userspace_prediction() {
    if !require_root("maglev_choice_matches_userspace_prediction") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 10];
    let mut seen = std::collections::HashSet::new();
    for sport in 30000u16..30060 {
        let h = flow_hash(
            u32::from_ne_bytes(CLIENT),
            u32::from_ne_bytes(vip),
            sport.to_be(),
            443u16.to_be(),
            6,
        );
        let backend = fx.ring_backend("dsr-maglev", h % RING_SIZE);
        seen.insert(backend);
        let (action, out) = fx.run(&from_client(vip, sport, 443, L4::TcpSyn));
        assert_eq!(action, XDP_REDIRECT);
        assert_eq!(
            out[0..6],
            backend_mac(backend[3]),
            "port {sport}: Maglev picked another backend"
        );
    }
    assert_eq!(seen.len(), 3, "60 flows should reach all 3 backends");
}

#[test]
fn passive_signals_and_the_all_down_policy() {
    if !require_root("passive_signals_and_the_all_down_policy") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 20];
    let backend = fx.ring_backend("nat-tcp", 0);
    let svc = fx
        .plan
        .services
        .iter()
        .find(|s| s.name == "nat-tcp")
        .unwrap();
    let (svc_id, id) = (svc.info.id, svc.ring[0]);
    // A SYN again on a pinned flow is a retried handshake; an ACK is not.
    let syn = from_client(vip, 42000, 80, L4::TcpSyn);
    assert_eq!(fx.run(&syn).0, XDP_REDIRECT);
    assert_eq!(fx.backend_traffic(id).syn_retransmits, 0, "first SYN");
    assert_eq!(fx.run(&syn).0, XDP_REDIRECT);
    assert_eq!(
        fx.run(&from_client(vip, 42000, 80, L4::TcpAck)).0,
        XDP_REDIRECT
    );
    assert_eq!(fx.backend_traffic(id).syn_retransmits, 1, "retried SYN");
    // The backend resets the established connection: an ordinary reset, not
    // a refusal; translated back and not counted as a passive signal.
    let rst = frame(
        backend_mac(backend[3]),
        LB_BACKEND_MAC,
        backend,
        CLIENT,
        8080,
        42000,
        L4::TcpRst,
        b"",
    );
    let (action, out) = fx.run(&rst);
    assert_eq!(action, XDP_REDIRECT);
    let want = routed(frame(
        LB_CLIENT_MAC,
        CLIENT_MAC,
        vip,
        CLIENT,
        80,
        42000,
        L4::TcpRst,
        b"",
    ));
    assert_frame(&out, &want, "RST translated to come from the VIP");
    assert_eq!(fx.backend_traffic(id).refused, 0);
    // Every backend down: new and pinned flows find none and are dropped.
    let key = service_key([192, 0, 2, 20].into(), 80, Protocol::Tcp);
    let down = [
        BackendRef::new(key, [203, 0, 113, 11].into(), 8080),
        BackendRef::new(key, [203, 0, 113, 12].into(), 8080),
    ];
    fx.replan(CONFIG, &down);
    let dropped = fx.reason(Reason::DropNoBackend);
    assert_eq!(fx.run(&from_client(vip, 42001, 80, L4::TcpSyn)).0, XDP_DROP);
    assert_eq!(fx.run(&from_client(vip, 42000, 80, L4::TcpAck)).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropNoBackend), dropped + 2);
    let no_backend =
        |fx: &Lab| fx.counters.snapshot(&[svc_id], &[]).unwrap().services[&svc_id].no_backend;
    assert_eq!(no_backend(&fx), 2);
    // when_empty = "pass": the local stack gets them, unchanged.
    let pass = CONFIG.replacen(
        "name = \"nat-tcp\"\n",
        "name = \"nat-tcp\"\nwhen_empty = \"pass\"\n",
        1,
    );
    assert_ne!(pass, CONFIG);
    fx.replan(&pass, &down);
    let input = from_client(vip, 42002, 80, L4::TcpSyn);
    let (action, out) = fx.run(&input);
    assert_eq!((action, out), (XDP_PASS, input));
    assert_eq!(fx.reason(Reason::PassNoBackend), 1);
    assert_eq!(no_backend(&fx), 3);
    // One backend back: flows are scheduled again.
    fx.replan(&pass, &down[..1]);
    assert_eq!(
        fx.run(&from_client(vip, 42003, 80, L4::TcpSyn)).0,
        XDP_REDIRECT
    );
}

/// least_conn's estimate counts a connection from its SYN until the first
/// FIN or RST either side sends, once; a retransmitted SYN does not count
/// again; a new connection replacing an open one on the same 4-tuple takes
/// the old one's place.
#[test]
fn least_conn_counts_connections_from_syn_to_fin_or_rst() {
    if !require_root("least_conn_counts_connections_from_syn_to_fin_or_rst") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 24];
    let ids = [
        fx.backend_id("nat-lc", [203, 0, 113, 11]),
        fx.backend_id("nat-lc", [203, 0, 113, 12]),
    ];
    let total = |fx: &Lab| ids.iter().map(|i| fx.conns(*i)).sum::<u64>();
    let go = |fx: &mut Lab, f: Vec<u8>| {
        let (action, out) = fx.run(&f);
        assert_eq!(action, XDP_REDIRECT);
        out
    };
    let b = dst_of(&go(&mut fx, client_tcp(vip, 47000, 100, SYN)));
    assert_eq!(total(&fx), 1, "a SYN opens");
    assert_eq!(fx.conns(fx.backend_id("nat-lc", b)), 1, "on its backend");
    go(&mut fx, client_tcp(vip, 47000, 100, SYN));
    assert_eq!(total(&fx), 1, "a retransmitted SYN is the same connection");
    go(&mut fx, client_tcp(vip, 47000, 101, ACK));
    go(&mut fx, client_tcp(vip, 47000, 101, FIN | ACK));
    assert_eq!(total(&fx), 0, "the client's FIN closes");
    go(&mut fx, client_tcp(vip, 47000, 101, FIN | ACK));
    go(&mut fx, client_tcp(vip, 47000, 102, RST));
    assert_eq!(total(&fx), 0, "closed once only");
    go(&mut fx, client_tcp(vip, 47000, 300, SYN));
    assert_eq!(total(&fx), 1, "a new connection on the closed 4-tuple");
    go(&mut fx, client_tcp(vip, 47000, 400, SYN));
    assert_eq!(total(&fx), 1, "another one replaces the open one");
    let b = dst_of(&go(&mut fx, client_tcp(vip, 47000, 401, ACK)));
    go(&mut fx, backend_tcp(b, 47000, SYN | ACK));
    go(&mut fx, backend_tcp(b, 47000, RST | ACK));
    assert_eq!(total(&fx), 0, "the backend's RST closes");
    let b = dst_of(&go(&mut fx, client_tcp(vip, 47000, 500, SYN)));
    assert_eq!(total(&fx), 1);
    go(&mut fx, backend_tcp(b, 47000, SYN | ACK));
    go(&mut fx, client_tcp(vip, 47000, 501, ACK));
    go(&mut fx, backend_tcp(b, 47000, FIN | ACK));
    assert_eq!(total(&fx), 0, "the backend's FIN closes");
}

/// A change to a service's lists reaches established flows on their next
/// packet (the firewall generation), while flows of sources still allowed
/// go on; taking the entry out lets the source back in.
#[test]
fn firewall_changes_reach_established_flows() {
    if !require_root("firewall_changes_reach_established_flows") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 10];
    let other = [198, 51, 100, 4];
    let packet = |src: [u8; 4], sport: u16, flags: u8| {
        with_src(
            &tcp_frame(
                (CLIENT_MAC, LB_CLIENT_MAC),
                CLIENT,
                vip,
                sport,
                9090,
                1,
                flags,
            ),
            src,
        )
    };
    for (src, sport) in [(CLIENT, 48000), (other, 48001)] {
        assert_eq!(fx.run(&packet(src, sport, SYN)).0, XDP_REDIRECT);
        assert_eq!(fx.run(&packet(src, sport, ACK)).0, XDP_REDIRECT);
    }
    let denied = CONFIG.replace(
        "deny = [\"198.51.100.3\"]",
        "deny = [\"198.51.100.3\", \"198.51.100.2\"]",
    );
    assert_ne!(denied, CONFIG);
    fx.replan(&denied, &[]);
    assert_eq!(
        fx.run(&packet(CLIENT, 48000, ACK)).0,
        XDP_DROP,
        "the newly denied source's established flow"
    );
    assert_eq!(
        fx.run(&packet(other, 48001, ACK)).0,
        XDP_REDIRECT,
        "a source still allowed keeps its flow"
    );
    fx.restore();
    assert_eq!(
        fx.run(&packet(CLIENT, 48000, ACK)).0,
        XDP_REDIRECT,
        "allowed again"
    );
}

#[test]
fn tcp_connections_follow_isn_fin_and_rst() {
    if !require_root("tcp_connections_follow_isn_fin_and_rst") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    assert_ne!(x, y);
    let (xid, yid) = (fx.backend_id("nat-tcp", x), fx.backend_id("nat-tcp", y));
    let go = |fx: &mut Lab, f: Vec<u8>| {
        let (action, out) = fx.run(&f);
        assert_eq!(action, XDP_REDIRECT);
        out
    };
    // A SYN opens a connection (round robin: x).
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 100, SYN))), x);
    // The same SYN again (same ISN) is a retransmission: same backend, counted
    // as a passive signal, not as a connection.
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 100, SYN))), x);
    assert_eq!(fx.backend_traffic(xid).syn_retransmits, 1);
    assert_eq!(fx.service_traffic("nat-tcp").connections, 1);
    // A SYN with another ISN on the same 4-tuple is a new connection: scheduled
    // afresh (round robin moves on to y) and counted.
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 200, SYN))), y);
    assert_eq!(fx.service_traffic("nat-tcp").connections, 2);
    assert_eq!(
        fx.backend_traffic(xid).syn_retransmits,
        1,
        "not a retransmission"
    );
    // Established, then the client closes: a later SYN, even with the same
    // ISN, is a new connection.
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 201, ACK))), y);
    assert_eq!(
        dst_of(&go(&mut fx, client_tcp(vip, 46000, 201, FIN | ACK))),
        y
    );
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 200, SYN))), x);
    assert_eq!(fx.service_traffic("nat-tcp").connections, 3);
    assert_eq!(fx.backend_traffic(yid).syn_retransmits, 0);
    // The backend answers, the client acknowledges, then the backend resets
    // the established connection: an ordinary reset, translated and not a
    // refusal; it closes the connection, so the next SYN is new again.
    let synack = go(&mut fx, backend_tcp(x, 46000, SYN | ACK));
    assert_eq!(synack[26..30], vip, "SYN-ACK from the VIP");
    go(&mut fx, client_tcp(vip, 46000, 201, ACK));
    let rst = go(&mut fx, backend_tcp(x, 46000, RST | ACK));
    assert_eq!(rst[26..30], vip);
    assert_eq!(fx.backend_traffic(xid).refused, 0);
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 200, SYN))), y);
    assert_eq!(fx.service_traffic("nat-tcp").connections, 4);
    // A backend FIN closes too.
    go(&mut fx, backend_tcp(y, 46000, SYN | ACK));
    go(&mut fx, client_tcp(vip, 46000, 201, ACK));
    go(&mut fx, backend_tcp(y, 46000, FIN | ACK));
    assert_eq!(dst_of(&go(&mut fx, client_tcp(vip, 46000, 200, SYN))), x);
    assert_eq!(fx.service_traffic("nat-tcp").connections, 5);
    // A packet without SYN that finds no flow is scheduled mid-connection,
    // counted as such and not as a connection.
    go(&mut fx, client_tcp(vip, 46001, 7, ACK));
    let t = fx.service_traffic("nat-tcp");
    assert_eq!((t.connections, t.midstream), (5, 1));
}

#[test]
fn refused_connections_are_redispatched_once() {
    if !require_root("refused_connections_are_redispatched_once") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    let (xid, yid) = (fx.backend_id("nat-tcp", x), fx.backend_id("nat-tcp", y));
    let (action, out) = fx.run(&client_tcp(vip, 46100, 500, SYN));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, x));
    // A RST that does not acknowledge the SYN (ISN 500: not ack 501) is no
    // refusal: passed on, nothing counted, nothing marked (the client drops
    // it, RFC 793); the client's SYN again is a retransmission to x.
    let stray = refusal(x, 46100, 777);
    let (action, out) = fx.run(&stray);
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        &out,
        &routed(refusal_to_client(vip, 46100, 777)),
        "an unacceptable RST, passed on translated",
    );
    assert_eq!(fx.backend_traffic(xid).refused, 0);
    assert_eq!(fx.reason(Reason::DropRstRedispatch), 0);
    let (action, out) = fx.run(&client_tcp(vip, 46100, 500, SYN));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, x), "still x");
    assert_eq!(fx.backend_traffic(xid).syn_retransmits, 1);
    // x refuses (RST acknowledging the SYN, no SYN-ACK before): withheld.
    let rst = refusal(x, 46100, 501);
    let (action, out) = fx.run(&rst);
    assert_eq!((action, &out), (XDP_DROP, &rst), "RST withheld, untouched");
    assert_eq!(fx.reason(Reason::DropRstRedispatch), 1);
    let t = fx.backend_traffic(xid);
    assert_eq!((t.refused, t.redispatched), (1, 1));
    // The client's retried SYN goes to another backend; it is the same
    // connection attempt, not a new one, nor a retransmission to x.
    let (action, out) = fx.run(&client_tcp(vip, 46100, 500, SYN));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, y), "redispatched");
    assert_eq!(fx.service_traffic("nat-tcp").connections, 1);
    assert_eq!(fx.backend_traffic(xid).syn_retransmits, 1);
    // y refuses too: redispatch happens once, so this RST reaches the client.
    let (action, out) = fx.run(&refusal(y, 46100, 501));
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        &out,
        &routed(refusal_to_client(vip, 46100, 501)),
        "the second refusal's RST translated to the client",
    );
    let t = fx.backend_traffic(yid);
    assert_eq!((t.refused, t.redispatched), (1, 0));
    assert_eq!(fx.reason(Reason::DropRstRedispatch), 1);

    // With redispatch off, the first refusal reaches the client and is counted.
    let off = [192, 0, 2, 21];
    let (action, out) = fx.run(&client_tcp(off, 46200, 900, SYN));
    assert_eq!(action, XDP_REDIRECT);
    let b = dst_of(&out);
    let bid = fx.backend_id("nat-noredispatch", b);
    let (action, out) = fx.run(&refusal(b, 46200, 901));
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        &out,
        &routed(refusal_to_client(off, 46200, 901)),
        "without redispatch the refusal reaches the client",
    );
    let t = fx.backend_traffic(bid);
    assert_eq!((t.refused, t.redispatched), (1, 0));

    // A reset after the backend answered (SYN-ACK) is not a refusal.
    let (_, out) = fx.run(&client_tcp(vip, 46300, 77, SYN));
    let b = dst_of(&out);
    let bid = fx.backend_id("nat-tcp", b);
    let before = fx.backend_traffic(bid).refused;
    assert_eq!(fx.run(&backend_tcp(b, 46300, SYN | ACK)).0, XDP_REDIRECT);
    assert_eq!(fx.run(&refusal(b, 46300, 78)).0, XDP_REDIRECT);
    assert_eq!(fx.backend_traffic(bid).refused, before);
}

/// A backend's RST|ACK to client port `port`, acknowledging `ack`.
/// Issue 20: a NAT connection this node did not see open (its first packet
/// here carries no SYN: at a failover its SYN went through the peer) goes
/// to a guessed backend, and the guess must be proven by that backend's
/// first reply: a sequence number at or just past what the client
/// acknowledged. A reply of another connection (a TIME_WAIT socket of the
/// same 4-tuple answers with its own numbers) or a RST without ACK (no such
/// connection) is withheld, not counted against the backend, and the
/// client's next packet (its retransmission) goes to the other backend.
/// Once proven, the flow is like any other.
#[test]
fn a_connection_picked_up_mid_stream_is_proven_by_its_backend() {
    if !require_root("a_connection_picked_up_mid_stream_is_proven_by_its_backend") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    let client_ack = 900_000u32;
    let request = |port: u16| {
        tcp_with(
            (CLIENT_MAC, LB_CLIENT_MAC),
            CLIENT,
            vip,
            (port, 80),
            5000,
            client_ack,
            ACK | PSH,
            None,
            b"GET /",
        )
    };
    let reply = |b: [u8; 4], port: u16, seq: u32, flags: u8| {
        tcp_with(
            (backend_mac(b[3]), LB_BACKEND_MAC),
            b,
            CLIENT,
            (8080, port),
            seq,
            5005,
            flags,
            None,
            b"",
        )
    };
    // 1. Picked up: round robin's first slot, x.
    let (action, out) = fx.run(&request(47000));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, x));
    // x holds an older connection of this 4-tuple (TIME_WAIT): it answers
    // with that one's numbers. Withheld.
    let stale = reply(x, 47000, 123, ACK);
    assert_eq!(fx.run(&stale), (XDP_DROP, stale.clone()));
    assert_eq!(fx.reason(Reason::DropPickupRefused), 1);
    assert_eq!(
        fx.backend_traffic(fx.backend_id("nat-tcp", x)).refused,
        0,
        "no health signal"
    );
    // The client's retransmission goes to y, which has the connection: its
    // answer (at the acknowledged number) reaches the client.
    let (action, out) = fx.run(&request(47000));
    assert_eq!(
        (action, dst_of(&out)),
        (XDP_REDIRECT, y),
        "the other backend"
    );
    let (action, _) = fx.run(&reply(y, 47000, client_ack, ACK));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(fx.reason(Reason::FwdReverseNat), 1);
    // Proven: later replies pass whatever their numbers, and the flow stays
    // on y.
    assert_eq!(
        fx.run(&reply(y, 47000, client_ack + (1 << 25), ACK)).0,
        XDP_REDIRECT
    );
    let (action, out) = fx.run(&request(47000));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, y));
    assert_eq!(fx.reason(Reason::DropPickupRefused), 1);

    // 2. A RST without ACK from the guess (no such connection there):
    // withheld, and the retransmission goes to the other backend. (Round
    // robin's cursor is at y now.)
    let (action, out) = fx.run(&request(47001));
    assert_eq!(action, XDP_REDIRECT);
    let guess = dst_of(&out);
    let other = if guess == x { y } else { x };
    let rst = reply(guess, 47001, client_ack, RST);
    assert_eq!(fx.run(&rst), (XDP_DROP, rst.clone()));
    assert_eq!(fx.reason(Reason::DropPickupRefused), 2);
    let (action, out) = fx.run(&request(47001));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, other));
    // Data from the right backend, a little past the acknowledgement (its
    // own data in flight), proves it.
    assert_eq!(
        fx.run(&reply(other, 47001, client_ack + 1400, ACK | PSH)).0,
        XDP_REDIRECT
    );

    // 3. A connection this node saw open (SYN) is never questioned.
    let (_, out) = fx.run(&client_tcp(vip, 47002, 10, SYN));
    let b = dst_of(&out);
    assert_eq!(fx.run(&reply(b, 47002, 77, SYN | ACK)).0, XDP_REDIRECT);
    assert_eq!(fx.run(&reply(b, 47002, 5, ACK)).0, XDP_REDIRECT);
    assert_eq!(fx.reason(Reason::DropPickupRefused), 2);
}

fn refusal(backend: [u8; 4], port: u16, ack: u32) -> Vec<u8> {
    tcp_with(
        (backend_mac(backend[3]), LB_BACKEND_MAC),
        backend,
        CLIENT,
        (8080, port),
        0,
        ack,
        RST | ACK,
        None,
        b"",
    )
}

/// [`refusal`] as the client must get it from `vip`:80 (before the hop's
/// TTL decrement: see [`routed`]).
fn refusal_to_client(vip: [u8; 4], port: u16, ack: u32) -> Vec<u8> {
    tcp_with(
        (LB_CLIENT_MAC, CLIENT_MAC),
        vip,
        CLIENT,
        (80, port),
        0,
        ack,
        RST | ACK,
        None,
        b"",
    )
}

#[test]
fn a_held_backend_keeps_established_flows_and_loses_handshakes() {
    if !require_root("a_held_backend_keeps_established_flows_and_loses_handshakes") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    let xid = fx.backend_id("nat-tcp", x);
    let dst = |fx: &mut Lab, f: Vec<u8>| {
        let (action, out) = fx.run(&f);
        assert_eq!(action, XDP_REDIRECT);
        dst_of(&out)
    };
    // An established connection on x, one on y, and one still in its
    // handshake on x (round robin alternates).
    assert_eq!(dst(&mut fx, client_tcp(vip, 46400, 1, SYN)), x);
    assert_eq!(dst(&mut fx, client_tcp(vip, 46400, 2, ACK)), x);
    assert_eq!(dst(&mut fx, client_tcp(vip, 46401, 1, SYN)), y);
    assert_eq!(dst(&mut fx, client_tcp(vip, 46402, 1, SYN)), x);
    // Passive health holds x: no new connections, established flows stay.
    let key = service_key([192, 0, 2, 20].into(), 80, Protocol::Tcp);
    let held = BackendRef::new(key, x.into(), 8080);
    fx.replan_with(
        CONFIG,
        &Availability {
            down: Default::default(),
            held: [held].into(),
        },
    );
    assert_eq!(
        dst(&mut fx, client_tcp(vip, 46400, 2, ACK)),
        x,
        "established stays"
    );
    // The handshake on x is retried: it moves, and is no retransmission to x.
    assert_eq!(
        dst(&mut fx, client_tcp(vip, 46402, 1, SYN)),
        y,
        "handshake moves"
    );
    assert_eq!(fx.backend_traffic(xid).syn_retransmits, 0);
    // New connections go to y only.
    for port in 46403..46406 {
        assert_eq!(dst(&mut fx, client_tcp(vip, port, 1, SYN)), y);
    }
    // Down (the active check failed): even the established flow moves.
    fx.replan_with(CONFIG, &Availability::down([held].into()));
    assert_eq!(
        dst(&mut fx, client_tcp(vip, 46400, 2, ACK)),
        y,
        "moved when down"
    );
}

/// A ring change is atomic for the data path: while one thread sends new
/// flows (SYNs from ever new clients) to a Maglev service on CPU 0, another
/// on CPU 1 alternates between two plans as fast as it can: weights 1:1:1,
/// then 3:1 with the third backend down. No new flow may be dropped (no slot
/// ever names a backend that is out) and every one must be forwarded.
///
/// Driven by counts, not by how fast this machine is: traffic goes on until
/// at least [`RING_CHANGES`] ring changes each saw frames go through while
/// they were being applied, and at least [`RING_FRAMES`] frames were sent
/// (bounded by [`RING_LIMIT`], after which the test fails saying so).
#[test]
fn no_new_flow_is_dropped_while_rings_change_under_traffic() {
    if !require_root("no_new_flow_is_dropped_while_rings_change_under_traffic") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
    pin_to_cpu0();
    let ns = fib_lab("xdplb-fx");
    let _in = ns.enter();
    let config = Config::parse(Path::new("fixtures.toml"), CONFIG).unwrap();
    let mut ebpf = bpf::load(bpf::TableSizes::of(&config.dataplane), None)
        .unwrap()
        .ebpf;
    let mut dp = BpfDataplane::new(&mut ebpf).unwrap();
    let counters = Counters::new(&mut ebpf).unwrap();
    let mut planner = Planner::default();
    let mut programmer = Programmer::default();
    programmer
        .apply(&mut dp, planner.plan(&config, &Default::default()).unwrap())
        .unwrap();
    let reweighted = Config::parse(
        Path::new("fixtures.toml"),
        &CONFIG.replacen(
            "{ address = \"203.0.113.11\", port = 443 }",
            "{ address = \"203.0.113.11\", port = 443, weight = 3 }",
            1,
        ),
    )
    .unwrap();
    let key = service_key([192, 0, 2, 10].into(), 443, Protocol::Tcp);
    let third_down =
        Availability::down([BackendRef::new(key, [203, 0, 113, 13].into(), 443)].into());
    let done = AtomicBool::new(false);
    // Frames sent so far, and ring changes during which some were sent.
    let sent = AtomicU32::new(0);
    let (applies, under_traffic) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let mut verdicts = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            xdplb_tests::pin_to_cpu(1);
            let avail = Availability::default();
            while !done.load(Ordering::Relaxed) {
                for (c, a) in [(&reweighted, &third_down), (&config, &avail)] {
                    let plan = planner.plan(c, a).unwrap();
                    let before = sent.load(Ordering::Relaxed);
                    programmer.apply(&mut dp, plan).unwrap();
                    applies.fetch_add(1, Ordering::Relaxed);
                    if sent.load(Ordering::Relaxed) != before {
                        under_traffic.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        let prog = bpf::xdp_program(&mut ebpf, lb_common::names::PROGRAM).unwrap();
        let mut out = vec![0u8; 512];
        let mut i = 0u32;
        while (i < RING_FRAMES || under_traffic.load(Ordering::Relaxed) < RING_CHANGES)
            && started.elapsed() < RING_LIMIT
        {
            let client = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
            let mut f = frame(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                client,
                [192, 0, 2, 10],
                1024 + (i % 60000) as u16,
                443,
                L4::TcpSyn,
                b"",
            );
            wire::fix_ipv4_checksum(&mut f);
            let r = prog
                .test_run(TestRunOptions {
                    data_in: Some(&f),
                    data_out: Some(&mut out),
                    ..Default::default()
                })
                .unwrap();
            *verdicts.entry(r.return_value).or_insert(0u32) += 1;
            i += 1;
            sent.store(i, Ordering::Relaxed);
        }
        done.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let frames = sent.load(Ordering::Relaxed);
    let snap = counters.snapshot(&[], &[]).unwrap();
    let (applies, under_traffic) = (
        applies.load(Ordering::Relaxed),
        under_traffic.load(Ordering::Relaxed),
    );
    eprintln!(
        "{frames} new flows in {:.1?} while the rings changed {applies} times ({under_traffic} with frames going through): verdicts {verdicts:?}, drop_no_backend {}",
        started.elapsed(),
        snap.reason(Reason::DropNoBackend)
    );
    assert!(
        under_traffic >= RING_CHANGES,
        "only {under_traffic} ring changes under traffic within {RING_LIMIT:?}"
    );
    assert_eq!(snap.reason(Reason::DropNoBackend), 0, "new flows dropped");
    assert_eq!(verdicts.get(&XDP_REDIRECT), Some(&frames), "{verdicts:?}");
}

/// Ring changes the test above needs, each with frames going through it.
const RING_CHANGES: usize = 30;
/// New flows it sends at least.
const RING_FRAMES: u32 = 200_000;
/// Its bound in time (a 2-core machine here: about 5 s).
const RING_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A flood of SYNs from spoofed sources goes to the embryonic table once
/// the half-open budget is spent (at most the budget enters `FLOWS`):
/// connections that completed their handshake keep their flow and
/// reverse-NAT entries (the tables here hold 1024 entries each, 700 of
/// them established and idle during the flood, which sends 20 times as many
/// SYNs: the kernel's LRU demotes idle entries once they are the majority,
/// so without the embryonic table most would be evicted), and a client
/// completing its handshake during the flood stays on the backend its SYN
/// was sent to. Round robin, so a lost
/// entry would show: the flow's next packet would be scheduled afresh and
/// the backend's reply would pass untranslated.
#[test]
fn a_syn_flood_evicts_no_established_flow() {
    use lb_common::{FlowValue, NatReverse, names};
    if !require_root("a_syn_flood_evicts_no_established_flow") {
        return;
    }
    let config = CONFIG.replace(
        "flow_table_size = 4096",
        "flow_table_size = 1024\nembryonic_table_size = 1024",
    );
    let mut fx = Lab::new("xdplb-fxflood", &config, None);
    let vip = [192, 0, 2, 20];
    let go = |fx: &mut Lab, f: Vec<u8>, why: &str| {
        let (action, out) = fx.run(&f);
        assert_eq!(action, XDP_REDIRECT, "{why}");
        out
    };
    // One whole handshake; returns the backend the SYN went to.
    let handshake = |fx: &mut Lab, sport: u16| {
        let key = cases::flow_key(CLIENT, vip, sport, 80);
        let backend = dst_of(&go(fx, client_tcp(vip, sport, 100, SYN), "SYN"));
        assert!(fx.half_open(key), "SYN: half-open");
        // In `FLOWS` while the half-open budget lasts (its reply entry in
        // `NAT_REVERSE`), else in the embryonic tables.
        let reply = cases::flow_key(backend, CLIENT, 8080, sport);
        let table = if fx.holds::<FlowValue>(names::FLOWS, key) {
            names::NAT_REVERSE
        } else {
            names::EMBRYO_REVERSE
        };
        assert!(fx.holds::<NatReverse>(table, reply), "SYN: reply entry");
        let synack = go(fx, backend_tcp(backend, sport, SYN | ACK), "SYN-ACK");
        assert_eq!(
            synack[26..30],
            vip,
            "the SYN-ACK is translated before the ACK"
        );
        let ack = go(fx, client_tcp(vip, sport, 101, ACK), "ACK");
        assert_eq!(dst_of(&ack), backend, "the ACK follows the SYN");
        assert!(fx.established(key), "ACK: established");
        assert!(fx.holds::<NatReverse>(names::NAT_REVERSE, reply));
        assert!(!fx.holds::<NatReverse>(names::EMBRYO_REVERSE, reply));
        backend
    };
    let established: Vec<(u16, [u8; 4])> = (47000..47700)
        .map(|sport| (sport, handshake(&mut fx, sport)))
        .collect();
    let flood = client_tcp(vip, 1, 7, SYN);
    let mut sent = 0u32;
    for i in 0..20_480u32 {
        let src = [198, 18, (i >> 8) as u8, i as u8];
        let mut f = with_src(&flood, src);
        f[wire::IP_OFF + 20..wire::IP_OFF + 22].copy_from_slice(&(1024 + i as u16).to_be_bytes());
        fix_l4_checksum(&mut f);
        go(&mut fx, f, "flood SYN");
        sent += 1;
        if i % 2048 == 0 {
            // A real client during the flood.
            handshake(&mut fx, 48000 + (i / 2048) as u16);
        }
    }
    assert!(fx.service_traffic("nat-tcp").connections >= u64::from(sent));
    // The flood took at most the half-open budget of `FLOWS`, and what the
    // clients' completed handshakes gave back (no refill: no daemon here).
    let in_flows = (0..20_480u32)
        .filter(|i| {
            let src = [198, 18, (i >> 8) as u8, *i as u8];
            fx.holds::<FlowValue>(
                names::FLOWS,
                cases::flow_key(src, vip, 1024 + *i as u16, 80),
            )
        })
        .count();
    let bound = lb_common::half_open_budget(1024) as usize + 10;
    assert!(
        in_flows <= bound,
        "{in_flows} flood SYNs in FLOWS (budget {bound})"
    );
    let midstream = fx.service_traffic("nat-tcp").midstream;
    for (sport, backend) in established {
        let key = cases::flow_key(CLIENT, vip, sport, 80);
        assert!(
            fx.holds::<FlowValue>(names::FLOWS, key),
            "flow {sport} kept"
        );
        let out = go(&mut fx, client_tcp(vip, sport, 101, ACK), "established");
        assert_eq!(dst_of(&out), backend, "flow {sport} kept its backend");
        let reply = go(&mut fx, backend_tcp(backend, sport, ACK), "reply");
        assert_eq!(reply[26..30], vip, "flow {sport}: reply still translated");
    }
    // (Round robin might pick the same backend again by luck: an evicted
    // flow would show here as a pick-up in mid-connection.)
    assert_eq!(fx.service_traffic("nat-tcp").midstream, midstream);
}

/// Issue 21: a new connection is inserted once. Its SYN starts it in
/// `FLOWS` (half-open) and the client's ACK completes it there in place,
/// with `EMBRYOS` never touched, while the half-open budget lasts.
/// SYNs that go unanswered spend the budget; the next SYN starts in
/// `EMBRYOS` (as every one did before), its retry is found there (the
/// gate it opened) and its ACK moves it to `FLOWS`; the daemon's refill
/// gives the budget back.
#[test]
fn a_new_connection_is_inserted_once_and_completed_in_place() {
    use lb_common::{FlowValue, names};
    if !require_root("a_new_connection_is_inserted_once_and_completed_in_place") {
        return;
    }
    let mut fx = Lab::new("xdplb-fxonce", CONFIG, None);
    let vip = [192, 0, 2, 20];
    let go = |fx: &mut Lab, f: Vec<u8>, why: &str| {
        let (action, out) = fx.run(&f);
        assert_eq!(action, XDP_REDIRECT, "{why}");
        dst_of(&out)
    };
    let key = |sport| cases::flow_key(CLIENT, vip, sport, 80);
    // 1. Within the budget: one entry, in FLOWS, completed in place.
    let backend = go(&mut fx, client_tcp(vip, 42000, 100, SYN), "SYN");
    assert!(fx.half_open(key(42000)), "SYN: half-open");
    assert!(
        fx.holds::<FlowValue>(names::FLOWS, key(42000)),
        "SYN: in FLOWS"
    );
    assert!(!fx.holds::<FlowValue>(names::EMBRYOS, key(42000)));
    let before = fx.get::<FlowValue>(names::FLOWS, key(42000)).unwrap();
    assert_eq!(
        go(&mut fx, client_tcp(vip, 42000, 101, ACK), "ACK"),
        backend
    );
    assert!(fx.established(key(42000)), "ACK: established");
    let after = fx.get::<FlowValue>(names::FLOWS, key(42000)).unwrap();
    assert_eq!(
        (
            after.backend_id,
            after.syn_seq_be,
            after.flags & !lb_common::FLOW_F_ESTABLISHED
        ),
        (before.backend_id, before.syn_seq_be, before.flags),
        "the entry the SYN made, with the ACK's flag"
    );
    // 2. Unanswered SYNs spend the budget, each still in FLOWS.
    let budget = lb_common::half_open_budget(4096) as u16;
    for sport in 43000..43000 + budget {
        go(&mut fx, client_tcp(vip, sport, 100, SYN), "unanswered SYN");
        assert!(
            fx.holds::<FlowValue>(names::FLOWS, key(sport)),
            "SYN {sport} within the budget"
        );
    }
    // 3. Beyond it: EMBRYOS; the retried SYN is found there (same backend,
    // counted as a retransmission); the ACK moves it to FLOWS.
    let backend = go(&mut fx, client_tcp(vip, 44000, 100, SYN), "SYN beyond");
    let embryo = fx.get::<FlowValue>(names::EMBRYOS, key(44000));
    assert!(embryo.is_some(), "SYN beyond the budget: in EMBRYOS");
    assert!(!fx.holds::<FlowValue>(names::FLOWS, key(44000)));
    for _ in 0..3 {
        // (Round robin would give the next backend to a new connection.)
        assert_eq!(
            go(&mut fx, client_tcp(vip, 44000, 100, SYN), "retried SYN"),
            backend
        );
    }
    let id = embryo.unwrap().backend_id;
    assert_eq!(fx.backend_traffic(id).syn_retransmits, 3);
    assert_eq!(
        go(&mut fx, client_tcp(vip, 44000, 101, ACK), "ACK"),
        backend
    );
    assert!(fx.established(key(44000)), "promoted");
    // 4. The daemon's refill: SYNs start in FLOWS again.
    bpf::HalfOpen::new(&fx.ebpf).unwrap().tick();
    go(
        &mut fx,
        client_tcp(vip, 45000, 100, SYN),
        "SYN after the refill",
    );
    assert!(fx.holds::<FlowValue>(names::FLOWS, key(45000)));
    assert!(!fx.holds::<FlowValue>(names::EMBRYOS, key(45000)));
}

/// The TCP fields of an option-less IPv4 frame the program emitted.
#[derive(Debug)]
struct Tcp {
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    /// Options, as bytes.
    options: Vec<u8>,
    /// Bytes after the TCP header within the IPv4 datagram.
    payload: usize,
    ttl: u8,
}

fn tcp_of(f: &[u8]) -> Tcp {
    let ip = wire::IP_OFF;
    let tot = u16::from_be_bytes([f[ip + 2], f[ip + 3]]) as usize;
    assert_eq!(
        f.len(),
        wire::IP_OFF + tot,
        "the frame ends with the datagram"
    );
    let t = ip + 20;
    let doff = (f[t + 12] >> 4) as usize * 4;
    let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    assert_checksums(f);
    Tcp {
        src: f[ip + 12..ip + 16].try_into().unwrap(),
        dst: f[ip + 16..ip + 20].try_into().unwrap(),
        sport: u16::from_be_bytes([f[t], f[t + 1]]),
        dport: u16::from_be_bytes([f[t + 2], f[t + 3]]),
        seq: be32(t + 4),
        ack: be32(t + 8),
        flags: f[t + 13],
        options: f[t + 20..t + doff].to_vec(),
        payload: tot - 20 - doff,
        ttl: f[ip + 8],
    }
}

/// Issue 11's SYN cookies, packet by packet (service `nat-cookie`, cookies
/// always): the LB answers the SYN itself and keeps nothing; a valid cookie
/// ACK opens the connection with a SYN to the backend carrying the client's
/// ISN and MSS, a forged one is dropped; the backend's SYN-ACK is answered
/// with the ACK that completes its side; then both directions are
/// translated, sequence numbers shifted by the ISN difference. A backend
/// refusal reaches the client as a RST it accepts. With a threshold
/// (`nat-cookie-meter`, 1000/s: a burst of 100 ahead), SYNs go the stateful
/// way until the burst is spent, then get cookies.
#[test]
fn syn_cookies_open_translate_and_refuse_connections() {
    use lb_common::{FlowValue, NatReverse, names};
    if !require_root("syn_cookies_open_translate_and_refuse_connections") {
        return;
    }
    let mut fx = lab();
    let vip = [192, 0, 2, 26];
    let to_lb = (CLIENT_MAC, LB_CLIENT_MAC);
    // Client -> VIP:80 and backend:8080 -> client frames: port, sequence and
    // acknowledgement numbers, flags, MSS option, payload.
    let client = |sport: u16, seq, ack, flags, mss, payload: &[u8]| {
        tcp_with(
            to_lb,
            CLIENT,
            vip,
            (sport, 80),
            seq,
            ack,
            flags,
            mss,
            payload,
        )
    };
    let backend = |b: [u8; 4], sport: u16, seq, ack, flags, mss, payload: &[u8]| {
        tcp_with(
            (backend_mac(b[3]), LB_BACKEND_MAC),
            b,
            CLIENT,
            (8080, sport),
            seq,
            ack,
            flags,
            mss,
            payload,
        )
    };
    let isn = 0x1000_0000u32;
    // Arriving from the client's side, as SYNs do (the SYN-ACK is routed
    // back out of the same interface).
    let fxa = Some(wire::ifindex("fxa"));
    let key = cases::flow_key(CLIENT, vip, 41000, 80);

    // 1. The SYN is answered by the LB: a SYN-ACK from the VIP, MSS only.
    let syn = client(41000, isn, 0, SYN, Some(1460), b"");
    let (action, out) = fx.run_on(&syn, fxa);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[0..6], CLIENT_MAC, "back to the client's MAC");
    assert_eq!(out[6..12], LB_CLIENT_MAC);
    let sa = tcp_of(&out);
    assert_eq!(
        (sa.src, sa.dst, sa.sport, sa.dport),
        (vip, CLIENT, 80, 41000)
    );
    assert_eq!(
        (sa.flags, sa.ack, sa.ttl, sa.payload),
        (SYN | ACK, isn + 1, 64, 0)
    );
    assert_eq!(sa.options, [2, 4, 0x05, 0xb4], "MSS 1460 and nothing else");
    assert_eq!(fx.reason(Reason::TxSynCookie), 1);
    assert!(
        !fx.holds::<FlowValue>(names::EMBRYOS, key),
        "no state for a SYN"
    );
    assert!(!fx.holds::<FlowValue>(names::FLOWS, key));
    let cookie = sa.seq;
    // The same SYN again gets the same cookie (stateless).
    assert_eq!(tcp_of(&fx.run_on(&syn, fxa).1).seq, cookie);
    // A SYN from a source the LB has no route back to gets no answer.
    let bogon = with_src(&syn, [198, 18, 0, 1]);
    assert_eq!(fx.run_on(&bogon, fxa), (XDP_DROP, bogon.clone()));
    assert_eq!(fx.reason(Reason::DropNoRoute), 1);

    // 2. A forged ACK (wrong cookie) is dropped; the right one opens the
    // connection: the backend gets a SYN with the client's ISN and MSS.
    let forged = client(41000, isn + 1, cookie + 2, ACK, None, b"");
    assert_eq!(fx.run(&forged).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropBadCookie), 1);
    let ack = client(41000, isn + 1, cookie + 1, ACK, None, b"");
    let (action, out) = fx.run(&ack);
    assert_eq!(action, XDP_REDIRECT);
    let s = tcp_of(&out);
    let b = s.dst;
    assert!(b == [203, 0, 113, 11] || b == [203, 0, 113, 12], "{b:?}");
    assert_eq!(out[0..6], backend_mac(b[3]));
    assert_eq!((s.src, s.sport, s.dport), (CLIENT, 41000, 8080));
    assert_eq!((s.flags, s.seq, s.ack, s.payload), (SYN, isn, 0, 0));
    assert_eq!(
        s.options,
        [2, 4, 0x05, 0xb4],
        "the client's MSS, from its cookie"
    );
    assert_eq!(s.ttl, 63, "NAT routes: TTL decremented");
    assert_eq!(fx.reason(Reason::FwdCookieSyn), 1);
    assert!(fx.holds::<FlowValue>(names::EMBRYOS, key), "half-open");
    assert_eq!(fx.service_traffic("nat-cookie").connections, 1);

    // 3. The client's request arrives before the backend answered: the SYN
    // goes again (the request is the client's to resend).
    let request = client(41000, isn + 1, cookie + 1, ACK, None, b"GET /");
    let (action, out) = fx.run(&request);
    assert_eq!(action, XDP_REDIRECT);
    let again = tcp_of(&out);
    assert_eq!((again.flags, again.seq, again.payload), (SYN, isn, 0));

    // 4. The backend's SYN-ACK is answered by the LB with the ACK; the
    // connection leaves the half-open tables.
    let bisn = 0x7000_0000u32;
    let synack = backend(b, 41000, bisn, isn + 1, SYN | ACK, Some(1460), b"");
    let (action, out) = fx.run(&synack);
    assert_eq!(action, XDP_TX);
    assert_eq!(out[0..6], backend_mac(b[3]));
    let a = tcp_of(&out);
    assert_eq!((a.src, a.dst, a.sport, a.dport), (CLIENT, b, 41000, 8080));
    assert_eq!(
        (a.flags, a.seq, a.ack, a.payload),
        (ACK, isn + 1, bisn + 1, 0)
    );
    assert!(a.options.is_empty());
    assert_eq!(fx.reason(Reason::TxCookieAck), 1);
    let reply_key = cases::flow_key(b, CLIENT, 8080, 41000);
    assert!(fx.holds::<FlowValue>(names::FLOWS, key), "promoted");
    assert!(!fx.holds::<FlowValue>(names::EMBRYOS, key));
    assert!(fx.holds::<NatReverse>(names::NAT_REVERSE, reply_key));
    assert!(!fx.holds::<NatReverse>(names::EMBRYO_REVERSE, reply_key));
    // A retransmitted SYN-ACK (the ACK was lost) is answered again.
    assert_eq!(fx.run(&synack).0, XDP_TX);

    // 5. Established: the request reaches the backend with its
    // acknowledgement in the backend's numbers, the answer reaches the
    // client in the cookie's.
    let (action, out) = fx.run(&request);
    assert_eq!(action, XDP_REDIRECT);
    let r = tcp_of(&out);
    assert_eq!(
        (r.dst, r.dport, r.seq, r.ack, r.payload),
        (b, 8080, isn + 1, bisn + 1, 5)
    );
    let answer = backend(b, 41000, bisn + 1, isn + 6, ACK, None, b"200 OK");
    let (action, out) = fx.run(&answer);
    assert_eq!(action, XDP_REDIRECT);
    let r = tcp_of(&out);
    assert_eq!(
        (r.src, r.sport, r.seq, r.ack, r.payload),
        (vip, 80, cookie + 1, isn + 6, 6)
    );

    // Both sides close.
    let fin = backend(b, 41000, bisn + 7, isn + 6, FIN | ACK, None, b"");
    assert_eq!(fx.run(&fin).0, XDP_REDIRECT);
    let cfin = client(41000, isn + 6, cookie + 9, FIN | ACK, None, b"");
    assert_eq!(tcp_of(&fx.run(&cfin).1).ack, bisn + 9);

    // 5b. A new connection on the same 4-tuple (a new ISN; one on a
    // known 4-tuple goes the stateful way) to the same backend: its
    // SYN-ACK is the client's, not the closed cookie connection's.
    let isn3 = 0x3000_0000u32;
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries <= 4, "round robin never came back to {b:?}");
        let resyn = client(41000, isn3 + tries, 0, SYN, Some(1460), b"");
        let (action, out) = fx.run(&resyn);
        assert_eq!(action, XDP_REDIRECT);
        if tcp_of(&out).dst == b {
            let synack3 = backend(b, 41000, 9, isn3 + tries + 1, SYN | ACK, Some(1460), b"");
            let (action, out) = fx.run(&synack3);
            assert_eq!(action, XDP_REDIRECT, "the SYN-ACK goes to the client");
            let r = tcp_of(&out);
            assert_eq!(
                (r.src, r.flags, r.seq),
                (vip, SYN | ACK, 9),
                "untranslated numbers"
            );
            break;
        }
    }

    // 6. A backend that refuses (RST to the SYN): the client, whose side is
    // open, gets the RST at the sequence number it expects.
    let isn2 = 0x2000_0000u32;
    let syn2 = client(41001, isn2, 0, SYN, Some(1400), b"");
    let cookie2 = tcp_of(&fx.run_on(&syn2, fxa).1).seq;
    let ack2 = client(41001, isn2 + 1, cookie2 + 1, ACK, None, b"");
    let (_, out) = fx.run(&ack2);
    let s2 = tcp_of(&out);
    assert_eq!(
        s2.options,
        [2, 4, 0x05, 0x14],
        "MSS 1400 is encoded as 1300"
    );
    // Before its SYN-ACK, nothing else from the backend can belong to the
    // connection: dropped.
    let stray = backend(s2.dst, 41001, 5, isn2 + 1, ACK, None, b"x");
    assert_eq!(fx.run(&stray), (XDP_DROP, stray.clone()));
    assert_eq!(fx.reason(Reason::DropCookiePending), 1);
    let rst = backend(s2.dst, 41001, 0, isn2 + 1, RST | ACK, None, b"");
    let (action, out) = fx.run(&rst);
    assert_eq!(action, XDP_REDIRECT);
    let r = tcp_of(&out);
    assert_eq!(
        (r.src, r.sport, r.flags & RST, r.seq),
        (vip, 80, RST, cookie2 + 1)
    );

    // 7. With a threshold: a burst goes the stateful way until it runs
    // 100 SYNs ahead of 1000/s, then cookies answer.
    let (mut forwarded, mut cookies) = (0, 0);
    let started = std::time::Instant::now();
    for sport in 42000u16..42300 {
        let syn = tcp_with(
            to_lb,
            CLIENT,
            vip,
            (sport, 81),
            isn,
            0,
            SYN,
            Some(1460),
            b"",
        );
        match fx.run_on(&syn, fxa).0 {
            XDP_REDIRECT => forwarded += 1,
            XDP_TX => cookies += 1,
            v => panic!("verdict {v}"),
        }
    }
    let took = started.elapsed();
    // Burst: a tenth of a second's worth (100, +1 for the first), plus
    // what the rate (1000/s) refilled while the loop ran, +1 for rounding.
    let most = 101 + (1000.0 * took.as_secs_f64()).ceil() as u32 + 1;
    eprintln!(
        "threshold: {forwarded} forwarded, {cookies} answered with cookies in {took:?} (at most {most} forwarded)"
    );
    assert!(
        (101..=most).contains(&forwarded),
        "{forwarded} forwarded, want 101..={most}"
    );
    assert_eq!(forwarded + cookies, 300);
}

/// Two NAT services share backends, and one client address and port talks
/// to both (issue 20: the newer connection's reply entry took over the
/// older one's key, and the older connection hung). While the older one
/// is live, the newer goes to another backend, or, with every backend
/// taken, is refused (`drop_nat_tuple_in_use`); each connection's replies
/// come from its own VIP. Once the older one closes, its backend takes the
/// client port again through the other VIP.
#[test]
fn a_client_port_live_through_one_vip_is_not_given_the_same_backend_through_another() {
    if !require_root(
        "a_client_port_live_through_one_vip_is_not_given_the_same_backend_through_another",
    ) {
        return;
    }
    let mut fx = lab();
    let (rr, maglev, third) = ([192, 0, 2, 20], [192, 0, 2, 22], [192, 0, 2, 21]);
    let sport = 43000;
    let b = fx.maglev_backend("nat-maglev", CLIENT, maglev, sport, 80, 6);
    let other = if b == [203, 0, 113, 11] {
        [203, 0, 113, 12]
    } else {
        [203, 0, 113, 11]
    };
    // Through nat-tcp (round robin) until it lands on Maglev's backend,
    // established (the client's ACK moves its entries out of the
    // half-open tables).
    let mut landed = false;
    for seq in 0..4u32 {
        let (action, out) = fx.run(&client_tcp(rr, sport, 100 + seq, SYN));
        assert_eq!(action, XDP_REDIRECT);
        if dst_of(&out) == b {
            let (action, _) = fx.run(&client_tcp(rr, sport, 101 + seq, ACK));
            assert_eq!(action, XDP_REDIRECT);
            landed = true;
            break;
        }
    }
    assert!(landed, "round robin never chose {b:?}");
    // Through nat-maglev, same client port: Maglev's own choice is taken,
    // so the other backend; established too.
    let (action, out) = fx.run(&client_tcp(maglev, sport, 500, SYN));
    assert_eq!(
        (action, dst_of(&out)),
        (XDP_REDIRECT, other),
        "not the taken backend"
    );
    let (action, out) = fx.run(&backend_tcp(other, sport, SYN | ACK));
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        &out,
        &to_client(maglev, sport, 0, SYN | ACK),
        "the SYN-ACK comes from the VIP it was sent to",
    );
    let (action, _) = fx.run(&client_tcp(maglev, sport, 501, ACK));
    assert_eq!(action, XDP_REDIRECT);
    // The first connection's replies are still its own.
    let (action, out) = fx.run(&backend_tcp(b, sport, ACK));
    assert_eq!(action, XDP_REDIRECT);
    assert_frame(
        &out,
        &to_client(rr, sport, 0, ACK),
        "the older connection's reply",
    );
    // A third VIP over the same two backends: both are taken.
    assert_eq!(fx.reason(Reason::DropNatTupleInUse), 0);
    let (action, _) = fx.run(&client_tcp(third, sport, 900, SYN));
    assert_eq!(action, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropNatTupleInUse), 1);
    // Neither connection lost its translation.
    let (_, out) = fx.run(&backend_tcp(other, sport, ACK));
    assert_frame(&out, &to_client(maglev, sport, 0, ACK), "maglev's reply");
    let (_, out) = fx.run(&backend_tcp(b, sport, ACK));
    assert_frame(&out, &to_client(rr, sport, 0, ACK), "round robin's reply");
    // The round-robin connection closes: its backend is free for the
    // client port again, and the new connection's replies are its own.
    let (action, _) = fx.run(&client_tcp(rr, sport, 200, FIN | ACK));
    assert_eq!(action, XDP_REDIRECT);
    let (action, out) = fx.run(&client_tcp(third, sport, 901, SYN));
    assert_eq!(
        (action, dst_of(&out)),
        (XDP_REDIRECT, b),
        "the freed backend"
    );
    let (_, out) = fx.run(&backend_tcp(b, sport, SYN | ACK));
    assert_frame(
        &out,
        &to_client(third, sport, 0, SYN | ACK),
        "the SYN-ACK comes from the VIP it was sent to",
    );
    assert_eq!(fx.reason(Reason::DropNatTupleInUse), 1);
}

/// A backend's TCP frame (`backend_tcp`: seq 0) as the client must get it
/// after reverse NAT: from `vip`:80, one hop further (TTL − 1), to the
/// client's MAC; built from scratch, so a byte match proves the checksums.
fn to_client(vip: [u8; 4], client_port: u16, seq: u32, flags: u8) -> Vec<u8> {
    routed(tcp_frame(
        (LB_CLIENT_MAC, CLIENT_MAC),
        vip,
        CLIENT,
        80,
        client_port,
        seq,
        flags,
    ))
}

/// `f` one router hop on: TTL − 1, its header checksum computed afresh.
fn routed(mut f: Vec<u8>) -> Vec<u8> {
    f[wire::IP_OFF + 8] -= 1;
    wire::fix_ipv4_checksum(&mut f);
    f
}

/// `got` is `want` byte for byte (the first difference named).
fn assert_frame(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {}-byte output differs from the expected {}-byte frame at byte {:?}",
        got.len(),
        want.len(),
        first_difference(got, want)
    );
}

/// The global deny list never cuts the LB off its own backends: a denied
/// range that covers them still lets their replies through (each backend
/// address has an allow entry the longest-prefix match finds first), while
/// any other source in it is dropped first thing.
#[test]
fn a_denied_range_never_covers_the_backends() {
    if !require_root("a_denied_range_never_covers_the_backends") {
        return;
    }
    let mut fx = lab();
    let wide = CONFIG.replace(
        "deny = [\"100.64.0.0/10\"]",
        "deny = [\"100.64.0.0/10\", \"203.0.113.0/24\"]",
    );
    assert_ne!(wide, CONFIG);
    fx.replan(&wide, &[]);
    let vip = [192, 0, 2, 22];
    let (action, out) = fx.run(&client_tcp(vip, 44000, 100, SYN));
    assert_eq!(action, XDP_REDIRECT, "the client is not denied");
    let b = dst_of(&out);
    let denied = fx.reason(Reason::DropDeniedGlobal);
    let (action, out) = fx.run(&backend_tcp(b, 44000, SYN | ACK));
    assert_eq!(action, XDP_REDIRECT, "the backend's reply gets through");
    assert_frame(
        &out,
        &to_client(vip, 44000, 0, SYN | ACK),
        "the backend's SYN-ACK, translated",
    );
    // Another address of the denied range is dropped.
    let stranger = with_src(&from_client(vip, 44001, 80, L4::TcpSyn), [203, 0, 113, 77]);
    assert_eq!(fx.run(&stranger).0, XDP_DROP);
    assert_eq!(fx.reason(Reason::DropDeniedGlobal), denied + 1);
}

/// The census and HA bulk sync walk the flow table in batches
/// (`BPF_MAP_LOOKUP_BATCH`): every entry once, across several batches, and
/// entries deleted under the walk neither fail it nor make it start over
/// (which would visit an entry twice). The entry-by-entry walk finds the
/// same entries on a still table.
#[test]
fn the_flow_table_walk_finds_every_entry_once_also_while_entries_vanish() {
    if !require_root("the_flow_table_walk_finds_every_entry_once_also_while_entries_vanish") {
        return;
    }
    use aya::maps::{HashMap, Map};
    use lb_common::{FlowKey, FlowValue, names};
    use std::{collections::HashSet, os::fd::AsFd as _};
    use xdplb::dataplane::bpf::walk;

    // Several of the walk's 4,096-entry batches.
    const N: u32 = 20_000;
    let mut lab = Lab::new("xdplb-fx", CONFIG, Some(1 << 16));
    let key = |i: u32| FlowKey {
        src_be: u32::to_be(0x0a00_0000 | i),
        dst_be: u32::to_be(0xc000_020a),
        sport_be: 40000u16.to_be(),
        dport_be: 80u16.to_be(),
        proto: 6,
        _pad: [0; 3],
    };
    let index = |k: &FlowKey| u32::from_be(k.src_be) & 0x00ff_ffff;
    {
        let mut flows: HashMap<_, FlowKey, FlowValue> =
            HashMap::try_from(lab.ebpf.map_mut(names::FLOWS).unwrap()).unwrap();
        for i in 0..N {
            let value = FlowValue {
                backend_id: i,
                ..FlowValue::default()
            };
            flows.insert(key(i), value, 0).unwrap();
        }
    }
    let Some(Map::LruHashMap(data)) = lab.ebpf.map(names::FLOWS) else {
        panic!("FLOWS is not an LRU hash map");
    };
    let fd = data.fd().as_fd();

    // A still table: both walks see every entry exactly once, each with its
    // own value.
    for (how, batched) in [("batched", true), ("one by one", false)] {
        let mut seen = HashSet::new();
        let mut check = |k: FlowKey, v: FlowValue| {
            assert_eq!(v.backend_id, index(&k), "{how}: a key with another's value");
            assert!(seen.insert(index(&k)), "{how}: entry {} twice", index(&k));
            true
        };
        let visited = if batched {
            walk::walk(fd, 1 << 20, &mut check)
        } else {
            walk::walk_each(fd, 1 << 20, &mut check)
        }
        .unwrap();
        assert_eq!(visited, N as usize, "{how}: entries visited");
        assert_eq!(seen.len(), N as usize, "{how}: distinct entries");
    }
    // A walk stops when told to, and at its bound.
    let mut n = 0;
    assert_eq!(
        walk::walk(fd, 1 << 20, |_: FlowKey, _: FlowValue| {
            n += 1;
            n < 5000
        })
        .unwrap(),
        5000
    );
    assert_eq!(
        walk::walk(fd, 4097, |_: FlowKey, _: FlowValue| true).unwrap(),
        4097
    );

    // Entries vanishing under the walk: at its 5,000th entry (past its first
    // batch), that entry and every odd one are deleted (through a second descriptor, as the data
    // path would). No error, no entry twice (an entry-by-entry walk whose
    // key vanishes starts over: it fails here), every other even entry seen.
    let dup = fd.try_clone_to_owned().unwrap();
    let delete = |i: u32| {
        let k = key(i);
        let mut attr = [0u64; 4];
        attr[0] = u64::from(std::os::fd::AsRawFd::as_raw_fd(&dup) as u32);
        attr[1] = &k as *const FlowKey as u64;
        // SAFETY: BPF_MAP_DELETE_ELEM with a valid map fd and key.
        unsafe { libc::syscall(libc::SYS_bpf, 3, attr.as_mut_ptr(), 32u32) }
    };
    let mut first = None;
    let mut seen = HashSet::new();
    let visited = walk::walk(fd, 1 << 20, |k: FlowKey, _: FlowValue| {
        assert!(seen.insert(index(&k)), "entry {} twice", index(&k));
        if first.is_none() && seen.len() == 5000 {
            first = Some(index(&k));
            assert_eq!(delete(index(&k)), 0, "delete the walk's entry");
            for i in (1..N).step_by(2) {
                delete(i);
            }
        }
        true
    })
    .unwrap();
    assert_eq!(visited, seen.len());
    assert!(first.is_some(), "the walk ended before its 5,000th entry");
    for i in (0..N).step_by(2).filter(|i| Some(*i) != first) {
        assert!(seen.contains(&i), "even entry {i} missed by the walk");
    }
    // The first batches were read before the deletions; the rest were not.
    assert!(
        visited < N as usize,
        "the walk saw {visited} entries: the deletions under it went unseen"
    );
}

/// Issue 21: a NAT backend used by one service alone (`BACKEND_F_SOLE_REPLY`)
/// answers without reply entries. Its connection writes only its flow entry
/// (half-open, then established); the backend's SYN-ACK, data, FIN and a
/// refusal are translated from the flow entry, byte for byte as a shared
/// backend's replies are from their reply entries (the same frames through
/// a lab where a second VIP shares the backends); a reply from the client
/// side is still dropped, and one to a client port with no connection
/// passes untranslated.
#[test]
fn replies_of_a_backend_of_one_service_are_translated_from_the_flow_entry() {
    use lb_common::{FLOW_F_CLOSING, FlowValue, NatReverse, names};
    if !require_root("replies_of_a_backend_of_one_service_are_translated_from_the_flow_entry") {
        return;
    }
    const SOLE: &str = r#"
[dataplane]
flow_table_size = 4096
manage_neighbours = false

[[service]]
name = "www"
vip = "192.0.2.20"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]
"#;
    let shared = format!(
        "{SOLE}\n[[service]]\nname = \"www2\"\nvip = \"192.0.2.21\"\nport = 80\nprotocol = \"tcp\"\n\
         scheduler = \"round_robin\"\nforwarding = \"nat\"\n\
         backend = [{{ address = \"203.0.113.11\", port = 8080 }}, {{ address = \"203.0.113.12\", port = 8080 }}]\n"
    );
    let vip = [192, 0, 2, 20];
    let sport = 41000;
    let key = cases::flow_key(CLIENT, vip, sport, 80);
    // The same conversation through either lab: (outputs, reply entries
    // seen at each step, the flow's flags at the end).
    let talk = |config: &str| {
        let mut fx = Lab::new("xdplb-fxsole", config, None);
        let mut outs = Vec::new();
        let mut entries = Vec::new();
        let mut go = |fx: &mut Lab, f: Vec<u8>, want: u32, why: &str| {
            let (action, out) = fx.run(&f);
            assert_eq!(action, want, "{why}");
            outs.push(out[..f.len()].to_vec());
            out
        };
        let backend = dst_of(&go(
            &mut fx,
            client_tcp(vip, sport, 100, SYN),
            XDP_REDIRECT,
            "SYN",
        ));
        let reply = cases::flow_key(backend, CLIENT, 8080, sport);
        let held = |fx: &Lab| {
            fx.holds::<NatReverse>(names::NAT_REVERSE, reply)
                || fx.holds::<NatReverse>(names::EMBRYO_REVERSE, reply)
        };
        assert!(fx.half_open(key), "SYN: half-open");
        entries.push(held(&fx));
        go(
            &mut fx,
            backend_tcp(backend, sport, SYN | ACK),
            XDP_REDIRECT,
            "SYN-ACK",
        );
        go(
            &mut fx,
            client_tcp(vip, sport, 101, ACK),
            XDP_REDIRECT,
            "ACK",
        );
        assert!(fx.holds::<FlowValue>(names::FLOWS, key), "ACK: established");
        entries.push(held(&fx));
        go(
            &mut fx,
            backend_tcp(backend, sport, ACK | PSH),
            XDP_REDIRECT,
            "data",
        );
        // The same reply from the client side: forged.
        let (action, _) = fx.run_on(
            &backend_tcp(backend, sport, ACK | RST),
            Some(wire::ifindex("fxa")),
        );
        assert_eq!(action, XDP_DROP, "a reply from the client side");
        // To a client port with no connection: not translated.
        let (action, out) = fx.run(&backend_tcp(backend, sport + 1, ACK));
        assert_eq!(action, XDP_PASS, "a reply of no connection");
        assert_eq!(out[26..30], backend, "passed as it came");
        go(
            &mut fx,
            backend_tcp(backend, sport, FIN | ACK),
            XDP_REDIRECT,
            "FIN",
        );
        let flags = fx.get::<FlowValue>(names::FLOWS, key).map(|f| f.flags);
        (backend, outs, entries, flags)
    };
    let (b1, sole_out, sole_entries, sole_flags) = talk(SOLE);
    let (b2, shared_out, shared_entries, shared_flags) = talk(&shared);
    assert_eq!(b1, b2, "both labs' first SYN goes to the same backend");
    assert_eq!(
        sole_entries,
        [false, false],
        "a sole backend's connection wrote a reply entry"
    );
    assert_eq!(
        shared_entries,
        [true, true],
        "a shared backend's connection has reply entries"
    );
    for (i, (a, b)) in sole_out.iter().zip(&shared_out).enumerate() {
        assert_eq!(a, b, "step {i}: translated differently");
    }
    assert_eq!(sole_out[1][26..30], vip, "the SYN-ACK comes from the VIP");
    for flags in [sole_flags, shared_flags] {
        assert!(
            flags.is_some_and(|f| f & FLOW_F_CLOSING != 0),
            "the backend's FIN closes the flow: {flags:?}"
        );
    }
}
