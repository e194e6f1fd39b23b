//! Packet fixtures: frames in, verdict and frame out, through the real XDP
//! program via BPF_PROG_TEST_RUN.
//!
//! Each test runs in its own network namespace holding veths with fixed MACs
//! and permanent neighbour entries, so the kernel FIB lookup the program does
//! gives known next hops. Expected frames are built from scratch with
//! etherparse (which computes checksums), so a byte-for-byte match proves the
//! program's incremental checksum updates right.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use lb_common::{RING_SIZE, Reason, hash::flow_hash};
use xdplb::{
    config::{Config, Protocol},
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane, Counters},
    plan::{Availability, BackendRef, Plan, Planner, service_key},
};
use xdplb_tests::{
    CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, Netns, NetnsEntered, SMALL_MTU, backend_mac,
    fib_lab, pin_to_cpu0, require_root, wire,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const CONFIG: &str = r#"
[dataplane]
flow_table_size = 4096
manage_neighbours = false

[[service]]
name = "dsr-rr"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80 }]

[[service]]
name = "dsr-maglev"
vip = "192.0.2.10"
port = 443
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 443 }, { address = "203.0.113.12", port = 443 }, { address = "203.0.113.13", port = 443 }]

[[service]]
name = "nat-tcp"
vip = "192.0.2.20"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "nat-noredispatch"
vip = "192.0.2.21"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
redispatch = false
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "nat-udp"
vip = "192.0.2.20"
port = 53
protocol = "udp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 5353 }]

[[service]]
name = "dsr-unresolved"
vip = "192.0.2.30"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "dsr"
backend = [{ address = "203.0.113.99", port = 80 }]

[[service]]
name = "nat-unresolved"
vip = "192.0.2.31"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.99", port = 8080 }]

[[service]]
name = "nat-small-mtu"
vip = "192.0.2.40"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.14", port = 8080 }]

[[service]]
name = "dsr-small-mtu"
vip = "192.0.2.40"
port = 53
protocol = "udp"
scheduler = "round_robin"
forwarding = "dsr"
backend = [{ address = "203.0.113.14", port = 53 }]

[[service]]
name = "nat-no-route"
vip = "192.0.2.41"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "10.99.0.1", port = 8080 }]

[[service]]
name = "nat-blackhole"
vip = "192.0.2.42"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.50", port = 8080 }]
"#;

struct Fixture {
    ebpf: Ebpf,
    counters: Counters,
    plan: Plan,
    dp: BpfDataplane,
    planner: Planner,
    programmer: Programmer,
    _entered: NetnsEntered,
    _ns: Netns,
}

impl Fixture {
    fn new() -> Fixture {
        pin_to_cpu0();
        let ns = fib_lab("xdplb-fx");
        let entered = ns.enter();
        let config = Config::parse(Path::new("fixtures.toml"), CONFIG).expect("fixture config");
        let mut ebpf = bpf::load(config.dataplane.flow_table_size, None)
            .expect("load XDP program")
            .ebpf;
        let mut dp = BpfDataplane::new(&mut ebpf).expect("maps");
        let counters = Counters::new(&mut ebpf).expect("counter maps");
        let mut programmer = Programmer::default();
        let mut planner = Planner::default();
        programmer
            .apply(&mut dp, planner.plan(&config, &Default::default()).unwrap())
            .expect("program maps");
        let plan = programmer.applied().clone();
        Fixture {
            ebpf,
            counters,
            plan,
            dp,
            planner,
            programmer,
            _entered: entered,
            _ns: ns,
        }
    }

    /// Re-program the maps from `config` with the `down` backends out.
    fn replan(&mut self, config: &str, down: &[BackendRef]) {
        let config = Config::parse(Path::new("fixtures.toml"), config).expect("config");
        let plan = self
            .planner
            .plan(&config, &Availability::down(down.iter().copied().collect()))
            .unwrap();
        self.programmer
            .apply(&mut self.dp, plan)
            .expect("program maps");
        self.plan = self.programmer.applied().clone();
    }

    /// Re-program the maps from `config` with these backends down or held.
    fn replan_with(&mut self, config: &str, avail: &Availability) {
        let config = Config::parse(Path::new("fixtures.toml"), config).expect("config");
        let plan = self.planner.plan(&config, avail).unwrap();
        self.programmer
            .apply(&mut self.dp, plan)
            .expect("program maps");
        self.plan = self.programmer.applied().clone();
    }

    fn service_traffic(&self, name: &str) -> lb_common::Traffic {
        let id = self.service(name).info.id;
        self.counters.snapshot(&[id], &[]).unwrap().services[&id]
    }

    fn service(&self, name: &str) -> &xdplb::plan::PlannedService {
        self.plan.services.iter().find(|s| s.name == name).unwrap()
    }

    /// Backend id of `addr` in `service`.
    fn backend_id(&self, service: &str, addr: [u8; 4]) -> u32 {
        let sid = self.service(service).info.id;
        *self
            .plan
            .backends
            .iter()
            .find(|(_, b)| b.service_id == sid && b.addr_be == u32::from_ne_bytes(addr))
            .unwrap()
            .0
    }

    fn backend_traffic(&self, id: u32) -> lb_common::Traffic {
        self.counters.snapshot(&[], &[id]).unwrap().backends[&id]
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let prog = bpf::xdp_program(&mut self.ebpf, lb_common::names::PROGRAM).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..Default::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn reason(&self, r: Reason) -> u64 {
        self.counters.snapshot(&[], &[]).unwrap().reason(r)
    }

    /// Address of the backend `service`'s ring holds at `slot`.
    fn ring_backend(&self, service: &str, slot: u32) -> [u8; 4] {
        let s = self
            .plan
            .services
            .iter()
            .find(|s| s.name == service)
            .unwrap();
        let id = s.ring[slot as usize];
        u32::from_be(self.plan.backends[&id].addr_be).to_be_bytes()
    }
}

#[derive(Clone, Copy)]
enum L4 {
    TcpSyn,
    TcpAck,
    TcpRst,
    Udp,
}

/// Arguments mirror the header fields they set, in wire order.
#[allow(clippy::too_many_arguments)]
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
    let mut v = Vec::new();
    match l4 {
        L4::TcpSyn => ip
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut v, payload),
        L4::TcpAck => ip
            .tcp(sport, dport, 1001, 64240)
            .ack(5000)
            .write(&mut v, payload),
        L4::TcpRst => ip.tcp(sport, dport, 5000, 0).rst().write(&mut v, payload),
        L4::Udp => ip.udp(sport, dport).write(&mut v, payload),
    }
    .unwrap();
    v
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// A TCP frame with this sequence number and these flags (ACK acknowledges 1).
#[allow(clippy::too_many_arguments)]
fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
) -> Vec<u8> {
    let mut t = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 64240);
    for (bit, set) in [(FIN, 0), (SYN, 1), (RST, 2)] {
        if flags & bit != 0 {
            t = match set {
                0 => t.fin(),
                1 => t.syn(),
                _ => t.rst(),
            };
        }
    }
    if flags & ACK != 0 {
        t = t.ack(1);
    }
    let mut v = Vec::new();
    t.write(&mut v, b"").unwrap();
    v
}

/// Client -> VIP, TCP with `seq` and `flags`.
fn client_tcp(vip: [u8; 4], sport: u16, seq: u32, flags: u8) -> Vec<u8> {
    tcp_frame(
        (CLIENT_MAC, LB_CLIENT_MAC),
        CLIENT,
        vip,
        sport,
        80,
        seq,
        flags,
    )
}

/// Backend (port 8080) -> client, TCP with `flags`.
fn backend_tcp(backend: [u8; 4], client_port: u16, flags: u8) -> Vec<u8> {
    tcp_frame(
        (backend_mac(backend[3]), LB_BACKEND_MAC),
        backend,
        CLIENT,
        8080,
        client_port,
        0,
        flags,
    )
}

/// Client -> VIP frame as it arrives at the LB.
fn from_client(vip: [u8; 4], sport: u16, dport: u16, l4: L4) -> Vec<u8> {
    frame(
        CLIENT_MAC,
        LB_CLIENT_MAC,
        CLIENT,
        vip,
        sport,
        dport,
        l4,
        b"hello",
    )
}

/// Recompute IPv4 and L4 checksums of `f` and compare with what it carries.
fn assert_checksums(f: &[u8]) {
    let p = SlicedPacket::from_ethernet(f).expect("output parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "IPv4 header checksum"
    );
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(want, t.checksum(), "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) if u.checksum() != 0 => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(want, u.checksum(), "UDP checksum");
        }
        _ => {}
    }
}

#[test]
fn dsr_rewrites_only_macs_and_pins_flows() {
    if !require_root("dsr_rewrites_only_macs_and_pins_flows") {
        return;
    }
    let mut fx = Fixture::new();
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
    let mut fx = Fixture::new();
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
fn nat_rewrites_destination_and_translates_replies() {
    if !require_root("nat_rewrites_destination_and_translates_replies") {
        return;
    }
    let mut fx = Fixture::new();
    let vip = [192, 0, 2, 20];
    for (sport, l4, port, backend_port, svc) in [
        (41000u16, L4::TcpSyn, 80u16, 8080u16, "nat-tcp"),
        (41001, L4::TcpSyn, 80, 8080, "nat-tcp"),
        (41002, L4::Udp, 53, 5353, "nat-udp"),
    ] {
        let slot = if svc == "nat-tcp" {
            (sport - 41000) as u32
        } else {
            0
        };
        let backend = fx.ring_backend(svc, slot);
        let input = from_client(vip, sport, port, l4);
        let (action, out) = fx.run(&input);
        assert_eq!(action, XDP_REDIRECT, "{svc} {sport}");
        let want = frame(
            LB_BACKEND_MAC,
            backend_mac(backend[3]),
            CLIENT,
            backend,
            sport,
            backend_port,
            l4,
            b"hello",
        );
        assert_checksums(&out);
        assert_eq!(
            out, want,
            "{svc} {sport}: destination rewritten to {backend:?}:{backend_port}"
        );

        // The backend's reply goes back out from the VIP to the client.
        let reply_l4 = if matches!(l4, L4::Udp) {
            L4::Udp
        } else {
            L4::TcpAck
        };
        let reply = frame(
            backend_mac(backend[3]),
            LB_BACKEND_MAC,
            backend,
            CLIENT,
            backend_port,
            sport,
            reply_l4,
            b"world",
        );
        let before = fx.reason(Reason::FwdReverseNat);
        let (action, out) = fx.run(&reply);
        assert_eq!(action, XDP_REDIRECT);
        let want = frame(
            LB_CLIENT_MAC,
            CLIENT_MAC,
            vip,
            CLIENT,
            port,
            sport,
            reply_l4,
            b"world",
        );
        assert_checksums(&out);
        assert_eq!(out, want, "{svc} reply translated back to the VIP");
        assert_eq!(fx.reason(Reason::FwdReverseNat), before + 1);
    }

    // A UDP datagram without checksum keeps "no checksum".
    let mut input = from_client(vip, 41003, 53, L4::Udp);
    input[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let (action, out) = fx.run(&input);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "zero UDP checksum must stay zero"
    );
    assert_checksums(&out);

    // A reply nobody asked for (unknown client port) is not translated.
    let stray = frame(
        backend_mac(11),
        LB_BACKEND_MAC,
        [203, 0, 113, 11],
        CLIENT,
        8080,
        1,
        L4::TcpAck,
        b"x",
    );
    let (action, out) = fx.run(&stray);
    assert_eq!((action, out), (XDP_PASS, stray));
}

#[test]
fn unresolved_neighbour_hands_packet_to_kernel() {
    if !require_root("unresolved_neighbour_hands_packet_to_kernel") {
        return;
    }
    let mut fx = Fixture::new();
    let (fxa, fxc) = (wire::ifindex("fxa"), wire::ifindex("fxc"));
    let unresolved = [203, 0, 113, 99];
    // DSR: the frame goes to the kernel unchanged, with its next hop in XDP
    // metadata for the tc program's redirect_neigh.
    let input = from_client([192, 0, 2, 30], 42000, 80, L4::TcpSyn);
    let (action, out) = fx.run(&input);
    assert_eq!(action, XDP_PASS);
    let (meta, frame) = out.split_at(12);
    assert_eq!(meta, wire::neigh_meta(fxc, unresolved), "DSR metadata");
    assert_eq!(frame, input, "DSR frame unchanged");
    // NAT: translated first (a valid packet), then the same.
    let input = from_client([192, 0, 2, 31], 42001, 80, L4::TcpSyn);
    let (action, out) = fx.run(&input);
    assert_eq!(action, XDP_PASS);
    let (meta, frame) = out.split_at(12);
    assert_eq!(meta, wire::neigh_meta(fxc, unresolved), "NAT metadata");
    assert_eq!(frame[14 + 16..14 + 20], unresolved);
    assert_checksums(frame);
    // A NAT reply to a client the LB has no neighbour entry for: translated
    // (source: the VIP), next hop the client itself on fxa.
    let new_client = [198, 51, 100, 3];
    let syn = tcp_frame(
        (CLIENT_MAC, LB_CLIENT_MAC),
        new_client,
        [192, 0, 2, 20],
        42002,
        80,
        1,
        SYN,
    );
    let (action, out) = fx.run(&syn);
    assert_eq!(action, XDP_REDIRECT);
    let backend = dst_of(&out);
    let mut reply = backend_tcp(backend, 42002, SYN | ACK);
    reply[14 + 16..14 + 20].copy_from_slice(&new_client);
    wire::fix_ipv4_checksum(&mut reply);
    reply[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&[0, 0]);
    let c = wire::l4_residual(&reply).map(|r| !r).unwrap();
    reply[14 + 20 + 16..14 + 20 + 18].copy_from_slice(&c.to_be_bytes());
    assert_eq!(wire::l4_residual(&reply), Some(0xffff));
    let (action, out) = fx.run(&reply);
    assert_eq!(action, XDP_PASS);
    let (meta, frame) = out.split_at(12);
    assert_eq!(meta, wire::neigh_meta(fxa, new_client), "reply metadata");
    assert_eq!(frame[14 + 12..14 + 16], [192, 0, 2, 20], "source: the VIP");
    assert_eq!(frame[14 + 20..14 + 22], 80u16.to_be_bytes());
    assert_checksums(frame);
    assert_eq!(fx.reason(Reason::PassNoNeighbour), 3);
}

#[test]
fn odd_packets_have_defined_verdicts() {
    if !require_root("odd_packets_have_defined_verdicts") {
        return;
    }
    let mut fx = Fixture::new();
    let vip = [192, 0, 2, 10];
    let good = from_client(vip, 43000, 80, L4::TcpSyn);
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    // Rewrite IPv4 bytes and fix the header checksum so only the intended oddity remains.
    let ip_fixed = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        let ihl = ((v[14] & 0x0f) as usize * 4).max(20);
        let end = (14 + ihl).min(v.len());
        v[24..26].copy_from_slice(&[0, 0]);
        let mut sum: u32 = 0;
        for c in v[14..end].chunks(2) {
            sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        v[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        v
    };
    let mut arp = good[..42].to_vec();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(CLIENT, vip, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    // IPv4 header with 4 bytes of options (IHL 6): rebuild with a NOP option word.
    let mut options = good[..34].to_vec();
    options.extend_from_slice(&[1, 1, 1, 1]);
    options.extend_from_slice(&good[34..]);
    options[14] = 0x46;
    let opt_len = (u16::from_be_bytes([options[16], options[17]]) + 4).to_be_bytes();
    options[16..18].copy_from_slice(&opt_len);

    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        (
            "TCP to another address",
            from_client([192, 0, 2, 99], 43001, 80, L4::TcpSyn),
            XDP_PASS,
            Reason::PassNotService,
        ),
        (
            "TCP to the VIP on an unserved port",
            from_client(vip, 43002, 8081, L4::TcpSyn),
            XDP_PASS,
            Reason::PassNotService,
        ),
        (
            "UDP to the VIP on an unserved port",
            from_client(vip, 43003, 54, L4::Udp),
            XDP_PASS,
            Reason::PassNotService,
        ),
        (
            "ICMP echo to the VIP",
            icmp,
            XDP_PASS,
            Reason::PassNotService,
        ),
        ("ARP", arp, XDP_PASS, Reason::PassNotIpv4),
        ("IPv6 ethertype", ipv6, XDP_PASS, Reason::PassNotIpv4),
        // (BPF_PROG_TEST_RUN rejects frames under 14 bytes, as drivers never deliver them.)
        (
            "Ethernet header alone, IPv4 ethertype",
            good[..14].to_vec(),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "IPv4 header cut short",
            good[..14 + 12].to_vec(),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP header cut short (IP length says more)",
            good[..14 + 20 + 10].to_vec(),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP header cut short (IP length agrees)",
            ip_fixed(&|v| {
                v.truncate(14 + 20 + 10);
                v[16..18].copy_from_slice(&30u16.to_be_bytes());
            }),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "IHL below 5",
            ip_fixed(&|v| v[14] = 0x44),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "IP version 6 in an IPv4 ethertype",
            with(&|v| v[14] = 0x65),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "total length below header length",
            ip_fixed(&|v| v[16..18].copy_from_slice(&10u16.to_be_bytes())),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "first fragment (MF set)",
            ip_fixed(&|v| v[20] = 0x20),
            XDP_PASS,
            Reason::PassFragment,
        ),
        (
            "non-first fragment",
            ip_fixed(&|v| v[20..22].copy_from_slice(&[0x00, 0x10])),
            XDP_PASS,
            Reason::PassFragment,
        ),
        (
            "IPv4 options",
            ip_fixed(&|v| *v = options.clone()),
            XDP_PASS,
            Reason::PassIpOptions,
        ),
        (
            // The ports would come from the Ethernet trailer.
            "UDP datagram ending inside its own header (total length 23)",
            ip_fixed(&|v| {
                *v = from_client([192, 0, 2, 20], 43010, 53, L4::Udp);
                v[16..18].copy_from_slice(&23u16.to_be_bytes());
            }),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP header ending beyond the datagram (total length 32)",
            ip_fixed(&|v| v[16..18].copy_from_slice(&32u16.to_be_bytes())),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP data offset 4 (below the header's own 20 bytes)",
            with(&|v| v[14 + 20 + 12] = 0x40),
            XDP_DROP,
            Reason::DropBadL4Header,
        ),
        (
            "TCP data offset 15 (60 bytes) in a 25-byte segment",
            with(&|v| v[14 + 20 + 12] = 0xf0),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "UDP length 7",
            with(&|v| {
                *v = from_client([192, 0, 2, 20], 43011, 53, L4::Udp);
                v[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes());
            }),
            XDP_DROP,
            Reason::DropBadL4Header,
        ),
        (
            "UDP length beyond the datagram",
            with(&|v| {
                *v = from_client([192, 0, 2, 20], 43012, 53, L4::Udp);
                v[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&14u16.to_be_bytes());
            }),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "wrong IPv4 header checksum, to a VIP",
            with(&|v| v[24] ^= 0x55),
            XDP_DROP,
            Reason::DropBadIpChecksum,
        ),
        (
            "wrong IPv4 header checksum, to another address (the kernel decides)",
            with(&|v| {
                *v = from_client([192, 0, 2, 99], 43013, 80, L4::TcpSyn);
                v[24] ^= 0x55;
            }),
            XDP_PASS,
            Reason::PassNotService,
        ),
        (
            "VLAN-tagged frame",
            with(&|v| {
                let mut tagged = v[..12].to_vec();
                tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
                tagged.extend_from_slice(&v[12..]);
                *v = tagged;
            }),
            XDP_PASS,
            Reason::PassNotIpv4,
        ),
    ];
    for (what, input, action, reason) in cases {
        let before = fx.reason(reason);
        let (got, out) = fx.run(&input);
        assert_eq!(got, action, "{what}: verdict");
        assert_eq!(out, input, "{what}: frame must not change");
        assert_eq!(
            fx.reason(reason),
            before + 1,
            "{what}: counted as {}",
            reason.label()
        );
    }
    // None of these created a flow or NAT state.
    let ids: Vec<u32> = fx.plan.services.iter().map(|s| s.info.id).collect();
    let snap = fx.counters.snapshot(&ids, &[]).unwrap();
    for (id, t) in &snap.services {
        assert_eq!(t.connections, 0, "service {id}");
    }

    // UDP length shorter than the datagram: padding, which the kernel trims;
    // forwarded as it is.
    let mut padded = from_client([192, 0, 2, 20], 43014, 53, L4::Udp);
    padded[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&10u16.to_be_bytes());
    let (action, out) = fx.run(&padded);
    assert_eq!(action, XDP_REDIRECT, "padded UDP datagram");
    assert_eq!(out[14 + 16..14 + 20], [203, 0, 113, 11]);
}

/// A TCP frame of `payload` bytes with DF set or not.
fn big_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: usize,
    df: bool,
) -> Vec<u8> {
    let mut v = Vec::new();
    let (src_mac, dst_mac) = if src == CLIENT {
        (CLIENT_MAC, LB_CLIENT_MAC)
    } else {
        (backend_mac(src[3]), LB_BACKEND_MAC)
    };
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 7, 64240)
        .ack(1)
        .write(&mut v, &vec![0x5a; payload])
        .unwrap();
    if !df {
        v[14 + 6] &= !0x40;
        wire::fix_ipv4_checksum(&mut v);
    }
    v
}

#[test]
fn oversize_frames_get_an_icmp_quoting_what_was_sent() {
    if !require_root("oversize_frames_get_an_icmp_quoting_what_was_sent") {
        return;
    }
    let mut fx = Fixture::new();
    let small_mtu_vip = [192, 0, 2, 40];
    let mtu = SMALL_MTU as usize;
    // NAT towards a backend behind a 1280-byte route, DF set: the client gets
    // ICMP "fragmentation needed" about its own packet (to the VIP), from the VIP.
    let input = big_frame(CLIENT, small_mtu_vip, 44000, 80, mtu, true);
    let before = fx.reason(Reason::TxIcmpFragNeeded);
    let (action, out) = fx.run(&input);
    assert_eq!(
        action, XDP_TX,
        "ICMP goes back out of the ingress interface"
    );
    assert_eq!(out, wire::icmp_frag_needed(&input, SMALL_MTU), "NAT, DF");
    assert_eq!(fx.reason(Reason::TxIcmpFragNeeded), before + 1);
    // The same without DF cannot be fragmented here: dropped untouched.
    let input = big_frame(CLIENT, small_mtu_vip, 44001, 80, mtu, false);
    let (action, out) = fx.run(&input);
    assert_eq!((action, &out), (XDP_DROP, &input), "NAT, no DF");
    assert_eq!(fx.reason(Reason::DropTooBig), 1);
    // DSR (UDP) the same way.
    let mut input = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(CLIENT, small_mtu_vip, 64)
        .udp(44002, 53)
        .write(&mut input, &vec![1u8; mtu])
        .unwrap();
    let (action, out) = fx.run(&input);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, wire::icmp_frag_needed(&input, SMALL_MTU), "DSR, DF");
    // A backend's reply too big for the client's 1500-byte link: the backend
    // gets the ICMP about its own (untranslated) reply.
    let (action, _) = fx.run(&from_client([192, 0, 2, 20], 44003, 80, L4::TcpSyn));
    assert_eq!(action, XDP_REDIRECT);
    let backend = fx.ring_backend("nat-tcp", 0);
    let reply = big_frame(backend, CLIENT, 8080, 44003, 1500, true);
    let (action, out) = fx.run(&reply);
    assert_eq!(action, XDP_TX);
    assert_eq!(out, wire::icmp_frag_needed(&reply, 1500), "reverse NAT, DF");
    assert_eq!(fx.reason(Reason::TxIcmpFragNeeded), before + 3);
    assert_eq!(fx.reason(Reason::FwdReverseNat), 0);
}

#[test]
fn unroutable_backends_drop_the_packet_untouched() {
    if !require_root("unroutable_backends_drop_the_packet_untouched") {
        return;
    }
    let mut fx = Fixture::new();
    for vip in [[192, 0, 2, 41], [192, 0, 2, 42]] {
        let input = from_client(vip, 45000, 80, L4::TcpSyn);
        let (action, out) = fx.run(&input);
        assert_eq!((action, &out), (XDP_DROP, &input), "{vip:?}");
    }
    assert_eq!(fx.reason(Reason::DropNoRoute), 2);
    // A NAT reply to a client without a route: dropped, not translated.
    let far_client = [10, 98, 0, 1];
    let mut syn = frame(
        CLIENT_MAC,
        LB_CLIENT_MAC,
        far_client,
        [192, 0, 2, 20],
        45001,
        80,
        L4::TcpSyn,
        b"",
    );
    wire::fix_ipv4_checksum(&mut syn);
    assert_eq!(fx.run(&syn).0, XDP_REDIRECT);
    let backend = fx.ring_backend("nat-tcp", 0);
    let reply = frame(
        backend_mac(backend[3]),
        LB_BACKEND_MAC,
        backend,
        far_client,
        8080,
        45001,
        L4::TcpAck,
        b"x",
    );
    let (action, out) = fx.run(&reply);
    assert_eq!((action, &out), (XDP_DROP, &reply), "reply without a route");
    assert_eq!(fx.reason(Reason::DropNoRoute), 3);
}

#[test]
fn passive_signals_and_the_all_down_policy() {
    if !require_root("passive_signals_and_the_all_down_policy") {
        return;
    }
    let mut fx = Fixture::new();
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
    assert_eq!(out[26..30], vip, "RST source translated to the VIP");
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
        |fx: &Fixture| fx.counters.snapshot(&[svc_id], &[]).unwrap().services[&svc_id].no_backend;
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

/// Destination address of a forwarded (NAT) frame.
fn dst_of(frame: &[u8]) -> [u8; 4] {
    frame[14 + 16..14 + 20].try_into().unwrap()
}

#[test]
fn tcp_connections_follow_isn_fin_and_rst() {
    if !require_root("tcp_connections_follow_isn_fin_and_rst") {
        return;
    }
    let mut fx = Fixture::new();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    assert_ne!(x, y);
    let (xid, yid) = (fx.backend_id("nat-tcp", x), fx.backend_id("nat-tcp", y));
    let go = |fx: &mut Fixture, f: Vec<u8>| {
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
    let mut fx = Fixture::new();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    let (xid, yid) = (fx.backend_id("nat-tcp", x), fx.backend_id("nat-tcp", y));
    let (action, out) = fx.run(&client_tcp(vip, 46100, 500, SYN));
    assert_eq!((action, dst_of(&out)), (XDP_REDIRECT, x));
    // x refuses (RST to the SYN, no SYN-ACK before): the RST is withheld.
    let rst = backend_tcp(x, 46100, RST | ACK);
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
    assert_eq!(fx.backend_traffic(xid).syn_retransmits, 0);
    // y refuses too: redispatch happens once, so this RST reaches the client.
    let (action, out) = fx.run(&backend_tcp(y, 46100, RST | ACK));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out[26..30], vip, "RST translated to the client");
    let t = fx.backend_traffic(yid);
    assert_eq!((t.refused, t.redispatched), (1, 0));
    assert_eq!(fx.reason(Reason::DropRstRedispatch), 1);

    // With redispatch off, the first refusal reaches the client and is counted.
    let off = [192, 0, 2, 21];
    let (action, out) = fx.run(&client_tcp(off, 46200, 900, SYN));
    assert_eq!(action, XDP_REDIRECT);
    let b = dst_of(&out);
    let bid = fx.backend_id("nat-noredispatch", b);
    let (action, out) = fx.run(&backend_tcp(b, 46200, RST | ACK));
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(out[26..30], off);
    let t = fx.backend_traffic(bid);
    assert_eq!((t.refused, t.redispatched), (1, 0));

    // A reset after the backend answered (SYN-ACK) is not a refusal.
    let (_, out) = fx.run(&client_tcp(vip, 46300, 77, SYN));
    let b = dst_of(&out);
    let bid = fx.backend_id("nat-tcp", b);
    let before = fx.backend_traffic(bid).refused;
    assert_eq!(fx.run(&backend_tcp(b, 46300, SYN | ACK)).0, XDP_REDIRECT);
    assert_eq!(fx.run(&backend_tcp(b, 46300, RST | ACK)).0, XDP_REDIRECT);
    assert_eq!(fx.backend_traffic(bid).refused, before);
}

#[test]
fn a_held_backend_keeps_established_flows_and_loses_handshakes() {
    if !require_root("a_held_backend_keeps_established_flows_and_loses_handshakes") {
        return;
    }
    let mut fx = Fixture::new();
    let vip = [192, 0, 2, 20];
    let (x, y) = (fx.ring_backend("nat-tcp", 0), fx.ring_backend("nat-tcp", 1));
    let xid = fx.backend_id("nat-tcp", x);
    let dst = |fx: &mut Fixture, f: Vec<u8>| {
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
#[test]
fn no_new_flow_is_dropped_while_rings_change_under_traffic() {
    if !require_root("no_new_flow_is_dropped_while_rings_change_under_traffic") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    pin_to_cpu0();
    let ns = fib_lab("xdplb-fx");
    let _in = ns.enter();
    let config = Config::parse(Path::new("fixtures.toml"), CONFIG).unwrap();
    let mut ebpf = bpf::load(config.dataplane.flow_table_size, None)
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
    let applies = AtomicUsize::new(0);
    let frames = 200_000u32;
    let mut verdicts = std::collections::BTreeMap::new();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            xdplb_tests::pin_to_cpu(1);
            let avail = Availability::default();
            while !done.load(Ordering::Relaxed) {
                for (c, a) in [(&reweighted, &third_down), (&config, &avail)] {
                    let plan = planner.plan(c, a).unwrap();
                    programmer.apply(&mut dp, plan).unwrap();
                    applies.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let prog = bpf::xdp_program(&mut ebpf, lb_common::names::PROGRAM).unwrap();
        let mut out = vec![0u8; 512];
        for i in 0..frames {
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
        }
        done.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    });
    let snap = counters.snapshot(&[], &[]).unwrap();
    let applies = applies.load(Ordering::Relaxed);
    eprintln!(
        "{frames} new flows while the rings changed {applies} times: verdicts {verdicts:?}, drop_no_backend {}",
        snap.reason(Reason::DropNoBackend)
    );
    assert!(
        applies >= 20,
        "only {applies} ring changes during the traffic"
    );
    assert_eq!(snap.reason(Reason::DropNoBackend), 0, "new flows dropped");
    assert_eq!(verdicts.get(&XDP_REDIRECT), Some(&frames), "{verdicts:?}");
}
