//! The packet-fixture table: one row per thing the data path does to one
//! frame: what comes before it, the frame and the interface it arrives on,
//! the verdict, the frame that must come out, and how every reason counter
//! and every service's connection counters must move. The fixture test runs
//! every row; the benchmark times rows picked by name, so what is timed is
//! what is tested.

use lb_common::{FLOW_F_ESTABLISHED, FLOW_F_SYN, FlowKey, FlowValue, Reason};
use xdplb::plan::BackendRef;

use crate::{
    BLACKHOLED_BACKEND, CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, SMALL_MTU, backend_mac,
    frames::{
        ACK, L4, big_frame, first_difference, frame, from_client, ip_fixed, tcp_frame, udp_padded,
        with_macs, with_src,
    },
    lab::{Lab, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, verdict_name},
    wire,
};

/// The services the table (and the scenario fixtures) run against. Each
/// row's client port is its own, so rows sharing one lab do not meet in the
/// flow table; rows use services whose choice is predictable (Maglev, or a
/// single backend), never round robin's per-CPU cursor.
pub const CONFIG: &str = r#"
[dataplane]
flow_table_size = 4096
manage_neighbours = false

[firewall]
deny = ["100.64.0.0/10"]

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
name = "nat-cookie"
vip = "192.0.2.26"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
syn_cookie_threshold = 0
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "nat-cookie-meter"
vip = "192.0.2.26"
port = 81
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
syn_cookie_threshold = 1000
backend = [{ address = "203.0.113.11", port = 8080 }]

[[service]]
name = "nat-maglev"
vip = "192.0.2.22"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "nat"
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

[[service]]
name = "dsr-source"
vip = "192.0.2.10"
port = 8000
protocol = "tcp"
scheduler = "source_hash"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 8000 }, { address = "203.0.113.12", port = 8000 }]

[[service]]
name = "dsr-lc"
vip = "192.0.2.10"
port = 9000
protocol = "tcp"
scheduler = "least_conn"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 9000, weight = 3 }, { address = "203.0.113.12", port = 9000 }]

[[service]]
name = "dsr-acl"
vip = "192.0.2.10"
port = 9090
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
allow = ["198.51.100.0/24"]
deny = ["198.51.100.3"]
backend = [{ address = "203.0.113.11", port = 9090 }]

[[service]]
name = "dsr-rate"
vip = "192.0.2.10"
port = 7070
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
rate_limit = { per_client = 1 }
backend = [{ address = "203.0.113.11", port = 7070 }]

[[service]]
name = "dsr-rate-total"
vip = "192.0.2.10"
port = 7071
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
rate_limit = { total = 1 }
backend = [{ address = "203.0.113.11", port = 7071 }]

[[service]]
name = "nat-lc"
vip = "192.0.2.24"
port = 80
protocol = "tcp"
scheduler = "least_conn"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "nat-source"
vip = "192.0.2.23"
port = 80
protocol = "tcp"
scheduler = "source_hash"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]
"#;

const DSR_VIP: [u8; 4] = [192, 0, 2, 10];
const NAT_VIP: [u8; 4] = [192, 0, 2, 20];
const NAT_MAGLEV_VIP: [u8; 4] = [192, 0, 2, 22];
const UNRESOLVED: [u8; 4] = [203, 0, 113, 99];
const TCP: u8 = 6;

/// Something done before a row's frame.
pub enum Step {
    /// Send this frame in on `ingress`; it must get `verdict`.
    Send {
        frame: Vec<u8>,
        ingress: u32,
        verdict: u32,
    },
    /// Take this backend of this service down (the lab is restored after the row).
    Down {
        service: &'static str,
        addr: [u8; 4],
    },
    /// Write this flow-table entry, as some earlier state would have left it.
    Flow(FlowKey, FlowValue),
    /// Set this backend's least_conn active-connection estimate (reset to 0
    /// after the row).
    Conns {
        service: &'static str,
        addr: [u8; 4],
        conns: u64,
    },
}

/// What must come out.
pub enum Output {
    /// The frame exactly as it came in (PASS and DROP).
    Same,
    /// This frame (its checksums, computed from scratch, right).
    Frame(Vec<u8>),
    /// XDP metadata, then this frame (handed to the kernel's neighbour
    /// resolution through the tc program).
    Meta(Vec<u8>, Vec<u8>),
}

pub struct Case {
    pub name: &'static str,
    pub before: Vec<Step>,
    pub ingress: u32,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Output,
    /// Reason counters that move, by how much; every other one must not.
    pub reasons: Vec<(Reason, u64)>,
    /// (service, connections, midstream) that move; every other service's
    /// stay put.
    pub connections: Vec<(&'static str, u64, u64)>,
}

impl Case {
    fn new(name: &'static str, ingress: u32, input: Vec<u8>, verdict: u32) -> Case {
        Case {
            name,
            before: Vec::new(),
            ingress,
            input,
            verdict,
            output: Output::Same,
            reasons: Vec::new(),
            connections: Vec::new(),
        }
    }
    fn before(mut self, step: Step) -> Case {
        self.before.push(step);
        self
    }
    fn output(mut self, output: Output) -> Case {
        self.output = output;
        self
    }
    /// The expected frame was routed by NAT: TTL one lower, and the IPv4
    /// checksum computed afresh (the program updates it incrementally).
    fn routed(mut self) -> Case {
        let f = match &mut self.output {
            Output::Frame(f) | Output::Meta(_, f) => f,
            Output::Same => panic!("routed() needs an output frame"),
        };
        f[wire::IP_OFF + 8] -= 1;
        wire::fix_ipv4_checksum(f);
        self
    }

    fn counts(mut self, reason: Reason) -> Case {
        self.reasons.push((reason, 1));
        self
    }
    fn opens(mut self, service: &'static str) -> Case {
        self.connections.push((service, 1, 0));
        self
    }
    fn midstream(mut self, service: &'static str) -> Case {
        self.connections.push((service, 0, 1));
        self
    }
}

/// A frame the row's `before` sends, which must be forwarded.
fn forwarded(frame: Vec<u8>, ingress: u32) -> Step {
    Step::Send {
        frame,
        ingress,
        verdict: XDP_REDIRECT,
    }
}

/// The table, for a lab programmed from [`CONFIG`] (expected backends come
/// from the lab's userspace plan, independent of the program).
pub fn table(lab: &Lab) -> Vec<Case> {
    let (fxa, fxc) = (wire::ifindex("fxa"), wire::ifindex("fxc"));
    let maglev = |svc: &str, src: [u8; 4], vip: [u8; 4], sport: u16, dport: u16| {
        lab.maglev_backend(svc, src, vip, sport, dport, TCP)
    };
    let mut rows = Vec::new();

    // Forwarding.
    let b = maglev("dsr-maglev", CLIENT, DSR_VIP, 50001, 443);
    let input = from_client(DSR_VIP, 50001, 443, L4::TcpSyn);
    rows.push(
        Case::new(
            "DSR: a new connection goes to its Maglev backend, only the MACs change",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .output(Output::Frame(with_macs(
            &input,
            LB_BACKEND_MAC,
            backend_mac(b[3]),
        )))
        .counts(Reason::FwdDsr)
        .opens("dsr-maglev"),
    );
    // least_conn (weights 3 and 1): the candidate with fewer connections
    // per weight wins, whichever the flow hash drew first.
    let lc = [203, 0, 113, 11];
    let lc2 = [203, 0, 113, 12];
    for (sport, name, c11, c12, to) in [
        (
            50100,
            "least_conn: a new connection avoids a backend holding many",
            1000,
            0,
            lc2,
        ),
        (
            50101,
            "least_conn: ... and the other way round",
            0,
            1000,
            lc,
        ),
        (
            50102,
            "least_conn: connections per weight decide (3 on weight 3 beats 2 on weight 1)",
            3,
            2,
            lc,
        ),
    ] {
        let input = from_client(DSR_VIP, sport, 9000, L4::TcpSyn);
        rows.push(
            Case::new(name, fxa, input.clone(), XDP_REDIRECT)
                .before(Step::Conns {
                    service: "dsr-lc",
                    addr: lc,
                    conns: c11,
                })
                .before(Step::Conns {
                    service: "dsr-lc",
                    addr: lc2,
                    conns: c12,
                })
                .output(Output::Frame(with_macs(
                    &input,
                    LB_BACKEND_MAC,
                    backend_mac(to[3]),
                )))
                .counts(Reason::FwdDsr)
                .opens("dsr-lc"),
        );
    }
    let b = maglev("dsr-maglev", CLIENT, DSR_VIP, 50002, 443);
    let input = from_client(DSR_VIP, 50002, 443, L4::TcpAck);
    rows.push(
        Case::new(
            "DSR: an established flow's packet follows its flow",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .before(forwarded(from_client(DSR_VIP, 50002, 443, L4::TcpSyn), fxa))
        .output(Output::Frame(with_macs(
            &input,
            LB_BACKEND_MAC,
            backend_mac(b[3]),
        )))
        .counts(Reason::FwdDsr),
    );
    // A host on the backends' network (the backends' own subnet) asks the VIP.
    let neighbour = [203, 0, 113, 20];
    let b = maglev("dsr-maglev", neighbour, DSR_VIP, 50003, 443);
    let input = frame(
        backend_mac(20),
        LB_BACKEND_MAC,
        neighbour,
        DSR_VIP,
        50003,
        443,
        L4::TcpSyn,
        b"hello",
    );
    rows.push(
        Case::new(
            "DSR: backend on the ingress interface goes back out of it (XDP_TX)",
            fxc,
            input.clone(),
            XDP_TX,
        )
        .output(Output::Frame(with_macs(
            &input,
            LB_BACKEND_MAC,
            backend_mac(b[3]),
        )))
        .counts(Reason::FwdDsr)
        .opens("dsr-maglev"),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50010, 80);
    let input = from_client(NAT_MAGLEV_VIP, 50010, 80, L4::TcpSyn);
    rows.push(
        Case::new(
            "NAT: a new connection's destination becomes its Maglev backend",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .output(Output::Frame(frame(
            LB_BACKEND_MAC,
            backend_mac(b[3]),
            CLIENT,
            b,
            50010,
            8080,
            L4::TcpSyn,
            b"hello",
        )))
        .routed()
        .counts(Reason::FwdNat)
        .opens("nat-maglev"),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50011, 80);
    let input = from_client(NAT_MAGLEV_VIP, 50011, 80, L4::TcpAck);
    rows.push(
        Case::new(
            "NAT: an established flow's packet is translated the same way",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50011, 80, L4::TcpSyn),
            fxa,
        ))
        .output(Output::Frame(frame(
            LB_BACKEND_MAC,
            backend_mac(b[3]),
            CLIENT,
            b,
            50011,
            8080,
            L4::TcpAck,
            b"hello",
        )))
        .routed()
        .counts(Reason::FwdNat),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50012, 80);
    let input = frame(
        backend_mac(b[3]),
        LB_BACKEND_MAC,
        b,
        CLIENT,
        8080,
        50012,
        L4::TcpAck,
        b"world",
    );
    rows.push(
        Case::new(
            "NAT: a backend's reply goes back to the client from the VIP",
            fxc,
            input,
            XDP_REDIRECT,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50012, 80, L4::TcpSyn),
            fxa,
        ))
        .output(Output::Frame(frame(
            LB_CLIENT_MAC,
            CLIENT_MAC,
            NAT_MAGLEV_VIP,
            CLIENT,
            80,
            50012,
            L4::TcpAck,
            b"world",
        )))
        .routed()
        .counts(Reason::FwdReverseNat),
    );
    // A reply tuple is taken only from where its backend is: the same RST
    // from the client's side (the client forging its backend's address to
    // "refuse" connections), or on the backends' link from another MAC than
    // the backend's, changes nothing and goes nowhere.
    for (sport, ingress, src_mac, name) in [
        (
            50016,
            fxa,
            CLIENT_MAC,
            "NAT: a backend's RST arriving from the client side is dropped as spoofed",
        ),
        (
            50017,
            fxc,
            [0x02, 0, 0, 0, 0xee, 0xee],
            "NAT: a backend's RST from another MAC than the backend's is dropped as spoofed",
        ),
    ] {
        let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, sport, 80);
        let input = tcp_frame(
            (src_mac, LB_BACKEND_MAC),
            b,
            CLIENT,
            8080,
            sport,
            0,
            crate::frames::RST | ACK,
        );
        rows.push(
            Case::new(name, ingress, input, XDP_DROP)
                .before(forwarded(
                    from_client(NAT_MAGLEV_VIP, sport, 80, L4::TcpSyn),
                    fxa,
                ))
                .counts(Reason::DropSpoofedReply),
        );
    }
    // TTL: NAT routes, so a packet whose TTL would reach 0 here is answered
    // with "time exceeded" (quoting it as sent), without a flow; DSR does
    // not decrement (the backend answers the client directly, as the VIP).
    let ttl1 = |mut f: Vec<u8>| {
        f[wire::IP_OFF + 8] = 1;
        wire::fix_ipv4_checksum(&mut f);
        f
    };
    let input = ttl1(from_client(NAT_MAGLEV_VIP, 50014, 80, L4::TcpSyn));
    rows.push(
        Case::new(
            "NAT: a client packet with TTL 1 is answered with time exceeded",
            fxa,
            input.clone(),
            XDP_TX,
        )
        .output(Output::Frame(wire::icmp_time_exceeded(&input)))
        .counts(Reason::TxIcmpTimeExceeded),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50015, 80);
    let input = ttl1(frame(
        backend_mac(b[3]),
        LB_BACKEND_MAC,
        b,
        CLIENT,
        8080,
        50015,
        L4::TcpAck,
        b"world",
    ));
    rows.push(
        Case::new(
            "NAT: a backend's reply with TTL 1 is answered with time exceeded",
            fxc,
            input.clone(),
            XDP_TX,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50015, 80, L4::TcpSyn),
            fxa,
        ))
        .output(Output::Frame(wire::icmp_time_exceeded(&input)))
        .counts(Reason::TxIcmpTimeExceeded),
    );
    let b = maglev("dsr-maglev", CLIENT, DSR_VIP, 50016, 443);
    let input = ttl1(from_client(DSR_VIP, 50016, 443, L4::TcpSyn));
    rows.push(
        Case::new(
            "DSR: TTL 1 is forwarded as it is (only MACs change)",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .output(Output::Frame(with_macs(
            &input,
            LB_BACKEND_MAC,
            backend_mac(b[3]),
        )))
        .counts(Reason::FwdDsr)
        .opens("dsr-maglev"),
    );
    let udp_backend = [203, 0, 113, 11];
    let input = from_client(NAT_VIP, 50013, 53, L4::Udp);
    rows.push(
        Case::new(
            "NAT: a UDP datagram opens a flow and is translated",
            fxa,
            input,
            XDP_REDIRECT,
        )
        .output(Output::Frame(frame(
            LB_BACKEND_MAC,
            backend_mac(11),
            CLIENT,
            udp_backend,
            50013,
            5353,
            L4::Udp,
            b"hello",
        )))
        .routed()
        .counts(Reason::FwdNat)
        .opens("nat-udp"),
    );
    let input = frame(
        backend_mac(11),
        LB_BACKEND_MAC,
        udp_backend,
        CLIENT,
        5353,
        50014,
        L4::Udp,
        b"world",
    );
    rows.push(
        Case::new(
            "NAT: a UDP reply goes back from the VIP",
            fxc,
            input,
            XDP_REDIRECT,
        )
        .before(forwarded(from_client(NAT_VIP, 50014, 53, L4::Udp), fxa))
        .output(Output::Frame(frame(
            LB_CLIENT_MAC,
            CLIENT_MAC,
            NAT_VIP,
            CLIENT,
            53,
            50014,
            L4::Udp,
            b"world",
        )))
        .routed()
        .counts(Reason::FwdReverseNat),
    );
    let zero = |mut f: Vec<u8>| {
        f[wire::L4_OFF + 6..wire::L4_OFF + 8].copy_from_slice(&[0, 0]);
        f
    };
    rows.push(
        Case::new(
            "NAT: a UDP datagram without checksum keeps none",
            fxa,
            zero(from_client(NAT_VIP, 50015, 53, L4::Udp)),
            XDP_REDIRECT,
        )
        .output(Output::Frame(zero(frame(
            LB_BACKEND_MAC,
            backend_mac(11),
            CLIENT,
            udp_backend,
            50015,
            5353,
            L4::Udp,
            b"hello",
        ))))
        .routed()
        .counts(Reason::FwdNat)
        .opens("nat-udp"),
    );
    // UDP length 10 (2 bytes of data) in a datagram with 3 more bytes:
    // padding the receiver's kernel trims; forwarded as it is.
    let input = udp_padded(
        &frame(
            CLIENT_MAC,
            LB_CLIENT_MAC,
            CLIENT,
            NAT_VIP,
            50016,
            53,
            L4::Udp,
            b"he",
        ),
        b"pad",
    );
    rows.push(
        Case::new(
            "NAT: UDP length shorter than the datagram is forwarded with its padding",
            fxa,
            input,
            XDP_REDIRECT,
        )
        .output(Output::Frame(udp_padded(
            &frame(
                LB_BACKEND_MAC,
                backend_mac(11),
                CLIENT,
                udp_backend,
                50016,
                5353,
                L4::Udp,
                b"he",
            ),
            b"pad",
        )))
        .routed()
        .counts(Reason::FwdNat)
        .opens("nat-udp"),
    );
    let input = frame(
        backend_mac(11),
        LB_BACKEND_MAC,
        udp_backend,
        CLIENT,
        8080,
        1,
        L4::TcpAck,
        b"x",
    );
    rows.push(
        Case::new(
            "NAT: a reply nobody asked for (unknown client port) is not translated",
            fxc,
            input,
            XDP_PASS,
        )
        .counts(Reason::PassNotService),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50017, 80);
    let mut input = frame(
        backend_mac(b[3]),
        LB_BACKEND_MAC,
        b,
        CLIENT,
        8080,
        50017,
        L4::TcpAck,
        b"world",
    );
    input[wire::IP_OFF + 10] ^= 0x55;
    rows.push(
        Case::new(
            "NAT: a reply with a wrong IPv4 header checksum is dropped untouched",
            fxc,
            input,
            XDP_DROP,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50017, 80, L4::TcpSyn),
            fxa,
        ))
        .counts(Reason::DropBadIpChecksum),
    );

    // Flow-table state the row must not trust.
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50020, 80);
    let stale = FlowValue {
        backend_id: lab.backend_id("dsr-rr", [203, 0, 113, 11]),
        service_id: lab.service("dsr-rr").info.id,
        syn_seq_be: 1000u32.to_be(),
        flags: FLOW_F_SYN | FLOW_F_ESTABLISHED,
        cookie: 0,
        acl_generation: 0,
        seq_delta: 0,
    };
    let input = from_client(NAT_MAGLEV_VIP, 50020, 80, L4::TcpAck);
    rows.push(
        Case::new(
            "A stale flow of another service is scheduled afresh in this one",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .before(Step::Flow(
            flow_key(CLIENT, NAT_MAGLEV_VIP, 50020, 80),
            stale,
        ))
        .output(Output::Frame(frame(
            LB_BACKEND_MAC,
            backend_mac(b[3]),
            CLIENT,
            b,
            50020,
            8080,
            L4::TcpAck,
            b"hello",
        )))
        .routed()
        .counts(Reason::FwdNat)
        .midstream("nat-maglev"),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50021, 80);
    let other = if b[3] == 11 {
        [203, 0, 113, 12]
    } else {
        [203, 0, 113, 11]
    };
    let input = from_client(NAT_MAGLEV_VIP, 50021, 80, L4::TcpAck);
    rows.push(
        Case::new(
            "One backend down: its pinned flow moves to the other",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50021, 80, L4::TcpSyn),
            fxa,
        ))
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50021, 80, L4::TcpAck),
            fxa,
        ))
        .before(Step::Down {
            service: "nat-maglev",
            addr: b,
        })
        .output(Output::Frame(frame(
            LB_BACKEND_MAC,
            backend_mac(other[3]),
            CLIENT,
            other,
            50021,
            8080,
            L4::TcpAck,
            b"hello",
        )))
        .routed()
        .counts(Reason::FwdNat)
        .midstream("nat-maglev"),
    );

    // Next hop not resolved: to the kernel with the next hop in metadata.
    let input = from_client([192, 0, 2, 30], 50030, 80, L4::TcpSyn);
    rows.push(
        Case::new(
            "DSR, neighbour unresolved: unchanged to the kernel, next hop in metadata",
            fxa,
            input.clone(),
            XDP_PASS,
        )
        .output(Output::Meta(wire::neigh_meta(fxc, UNRESOLVED), input))
        .counts(Reason::PassNoNeighbour)
        .opens("dsr-unresolved"),
    );
    let input = from_client([192, 0, 2, 31], 50031, 80, L4::TcpSyn);
    rows.push(
        Case::new(
            "NAT, neighbour unresolved: translated, to the kernel with the next hop",
            fxa,
            input,
            XDP_PASS,
        )
        .output(Output::Meta(
            wire::neigh_meta(fxc, UNRESOLVED),
            frame(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                CLIENT,
                UNRESOLVED,
                50031,
                8080,
                L4::TcpSyn,
                b"hello",
            ),
        ))
        .routed()
        .counts(Reason::PassNoNeighbour)
        .opens("nat-unresolved"),
    );
    let new_client = [198, 51, 100, 3];
    let b = maglev("nat-maglev", new_client, NAT_MAGLEV_VIP, 50032, 80);
    let input = frame(
        backend_mac(b[3]),
        LB_BACKEND_MAC,
        b,
        new_client,
        8080,
        50032,
        L4::TcpAck,
        b"world",
    );
    rows.push(
        Case::new(
            "NAT reply to a client not yet resolved: from the VIP, to the kernel",
            fxc,
            input,
            XDP_PASS,
        )
        .before(forwarded(
            frame(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                new_client,
                NAT_MAGLEV_VIP,
                50032,
                80,
                L4::TcpSyn,
                b"",
            ),
            fxa,
        ))
        .output(Output::Meta(
            wire::neigh_meta(fxa, new_client),
            frame(
                backend_mac(b[3]),
                LB_BACKEND_MAC,
                NAT_MAGLEV_VIP,
                new_client,
                80,
                50032,
                L4::TcpAck,
                b"world",
            ),
        ))
        .routed()
        .counts(Reason::PassNoNeighbour),
    );

    // FIB failures: dropped as sent.
    let input = from_client([192, 0, 2, 41], 50040, 80, L4::TcpSyn);
    rows.push(
        Case::new(
            "FIB failure: no route to the backend, dropped untouched",
            fxa,
            input,
            XDP_DROP,
        )
        // Nothing went to the backend: no connection counted (issue 20).
        .counts(Reason::DropNoRoute),
    );
    let input = from_client([192, 0, 2, 42], 50041, 80, L4::TcpSyn);
    assert_eq!(lab.ring_backend("nat-blackhole", 0), BLACKHOLED_BACKEND);
    rows.push(
        Case::new(
            "FIB failure: blackhole route to the backend, dropped untouched",
            fxa,
            input,
            XDP_DROP,
        )
        .counts(Reason::DropNoRoute),
    );
    let far_client = [10, 98, 0, 1];
    let b = maglev("nat-maglev", far_client, NAT_MAGLEV_VIP, 50042, 80);
    let input = frame(
        backend_mac(b[3]),
        LB_BACKEND_MAC,
        b,
        far_client,
        8080,
        50042,
        L4::TcpAck,
        b"x",
    );
    rows.push(
        Case::new(
            "FIB failure: NAT reply to a client without a route, dropped untranslated",
            fxc,
            input,
            XDP_DROP,
        )
        .before(forwarded(
            frame(
                CLIENT_MAC,
                LB_CLIENT_MAC,
                far_client,
                NAT_MAGLEV_VIP,
                50042,
                80,
                L4::TcpSyn,
                b"",
            ),
            fxa,
        ))
        .counts(Reason::DropNoRoute),
    );

    // Too big for the egress MTU.
    let mtu = SMALL_MTU as usize;
    let small_mtu_vip = [192, 0, 2, 40];
    let input = big_frame(CLIENT, small_mtu_vip, 50050, 80, mtu, true);
    rows.push(
        Case::new(
            "NAT, too big with DF: ICMP fragmentation-needed quoting what was sent",
            fxa,
            input.clone(),
            XDP_TX,
        )
        .output(Output::Frame(wire::icmp_frag_needed(&input, SMALL_MTU)))
        // Nothing reached the backend: no connection or pick-up counted.
        .counts(Reason::TxIcmpFragNeeded),
    );
    let input = big_frame(CLIENT, small_mtu_vip, 50051, 80, mtu, false);
    rows.push(
        Case::new(
            "NAT, too big without DF: cannot fragment, dropped untouched",
            fxa,
            input,
            XDP_DROP,
        )
        .counts(Reason::DropTooBig),
    );
    let mut input = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(CLIENT, small_mtu_vip, 64)
        .udp(50052, 53)
        .write(&mut input, &vec![1u8; mtu])
        .unwrap();
    rows.push(
        Case::new(
            "DSR (UDP), too big with DF: ICMP fragmentation-needed",
            fxa,
            input.clone(),
            XDP_TX,
        )
        .output(Output::Frame(wire::icmp_frag_needed(&input, SMALL_MTU)))
        .counts(Reason::TxIcmpFragNeeded),
    );
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50053, 80);
    let input = big_frame(b, CLIENT, 8080, 50053, 1500, true);
    rows.push(
        Case::new(
            "NAT reply too big for the client's link: ICMP to the backend, untranslated",
            fxc,
            input.clone(),
            XDP_TX,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50053, 80, L4::TcpSyn),
            fxa,
        ))
        .output(Output::Frame(wire::icmp_frag_needed(&input, 1500)))
        .counts(Reason::TxIcmpFragNeeded),
    );

    // ICMP errors about balanced flows, from a router on the client side,
    // relayed to the flow's backend.
    let router = [198, 51, 100, 1];
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50060, 80);
    // "Fragmentation needed" from the router about what a backend sent to
    // the client's `port`, as the client side saw it: from `vip`:`vport`.
    let frag_needed_about = |vip: [u8; 4], vport: u16, port: u16| {
        let sent = tcp_frame(
            (LB_CLIENT_MAC, CLIENT_MAC),
            vip,
            CLIENT,
            vport,
            port,
            7,
            ACK,
        );
        let quote = &sent[wire::IP_OFF..];
        wire::icmp_error_frame((CLIENT_MAC, LB_CLIENT_MAC), router, vip, 3, 4, 1200, quote)
    };
    let syn = from_client(NAT_MAGLEV_VIP, 50060, 80, L4::TcpSyn);
    let input = frag_needed_about(NAT_MAGLEV_VIP, 80, 50060);
    // Expected, built from scratch: the backend's own packet quoted, sent
    // to the backend, TTL one less (NAT routes).
    let as_sent_by_backend = tcp_frame((LB_CLIENT_MAC, CLIENT_MAC), b, CLIENT, 8080, 50060, 7, ACK);
    let mut want = wire::icmp_error_frame(
        (LB_BACKEND_MAC, backend_mac(b[3])),
        router,
        b,
        3,
        4,
        1200,
        &as_sent_by_backend[wire::IP_OFF..],
    );
    want[wire::IP_OFF + 8] -= 1;
    wire::fix_ipv4_checksum(&mut want);
    rows.push(
        Case::new(
            "NAT: fragmentation needed about a flow goes to its backend, translated",
            fxa,
            input,
            XDP_REDIRECT,
        )
        .before(forwarded(syn, fxa))
        .output(Output::Frame(want))
        .counts(Reason::FwdIcmpToBackend),
    );
    // The same error arriving with TTL 1: NAT routes, but no ICMP is sent
    // about an ICMP error; it is dropped, as a router drops it.
    let input = ip_fixed(&frag_needed_about(NAT_MAGLEV_VIP, 80, 50063), |f| {
        f[wire::IP_OFF + 8] = 1;
    });
    rows.push(
        Case::new(
            "NAT: an ICMP error about a flow whose TTL runs out here is dropped",
            fxa,
            input,
            XDP_DROP,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50063, 80, L4::TcpSyn),
            fxa,
        ))
        .counts(Reason::DropTtlExceeded),
    );
    let b = maglev("dsr-maglev", CLIENT, DSR_VIP, 50061, 443);
    let input = frag_needed_about(DSR_VIP, 443, 50061);
    rows.push(
        Case::new(
            "DSR: fragmentation needed about a flow goes to its backend as it is",
            fxa,
            input.clone(),
            XDP_REDIRECT,
        )
        .before(forwarded(from_client(DSR_VIP, 50061, 443, L4::TcpSyn), fxa))
        .output(Output::Frame(with_macs(
            &input,
            LB_BACKEND_MAC,
            backend_mac(b[3]),
        )))
        .counts(Reason::FwdIcmpToBackend),
    );
    let input = frag_needed_about(DSR_VIP, 443, 50062);
    rows.push(
        Case::new(
            "an ICMP error about no balanced flow goes to the kernel",
            fxa,
            input,
            XDP_PASS,
        )
        .counts(Reason::PassNotService),
    );

    // ICMP errors from the backend side (a router between the LB and a
    // backend) about a NAT flow go to the client, the quote translated back
    // to the VIP (issue 20), but only from where the backend is.
    let far_router = [203, 0, 113, 254];
    let about = |b: [u8; 4], to: [u8; 4], port: u16, sport: u16| {
        tcp_frame(
            (LB_BACKEND_MAC, backend_mac(b[3])),
            CLIENT,
            to,
            sport,
            port,
            7,
            ACK,
        )
    };
    // From the router (the backend's next hop: its MAC) about the flow
    // from the client's `sport`, as the LB sent it to its backend.
    let from_backend_side = |sport: u16| {
        let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, sport, 80);
        wire::icmp_error_frame(
            (backend_mac(b[3]), LB_BACKEND_MAC),
            far_router,
            CLIENT,
            3,
            4,
            1200,
            &about(b, b, 8080, sport)[wire::IP_OFF..],
        )
    };
    let b = maglev("nat-maglev", CLIENT, NAT_MAGLEV_VIP, 50064, 80);
    let mut want = wire::icmp_error_frame(
        (LB_CLIENT_MAC, CLIENT_MAC),
        far_router,
        CLIENT,
        3,
        4,
        1200,
        &about(b, NAT_MAGLEV_VIP, 80, 50064)[wire::IP_OFF..],
    );
    want[wire::IP_OFF + 8] -= 1;
    wire::fix_ipv4_checksum(&mut want);
    rows.push(
        Case::new(
            "NAT: fragmentation needed from a router behind the LB goes to the client, quote back to the VIP",
            fxc,
            from_backend_side(50064),
            XDP_REDIRECT,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50064, 80, L4::TcpSyn),
            fxa,
        ))
        .output(Output::Frame(want))
        .counts(Reason::FwdIcmpToClient),
    );
    let input = with_macs(&from_backend_side(50065), CLIENT_MAC, LB_CLIENT_MAC);
    rows.push(
        Case::new(
            "NAT: an ICMP error about a flow's backend side arriving from the client side is dropped",
            fxa,
            input,
            XDP_DROP,
        )
        .before(forwarded(
            from_client(NAT_MAGLEV_VIP, 50065, 80, L4::TcpSyn),
            fxa,
        ))
        .counts(Reason::DropSpoofedReply),
    );
    rows.push(
        Case::new(
            "an ICMP error from the backend side about no NAT flow goes to the kernel",
            fxc,
            from_backend_side(50066),
            XDP_PASS,
        )
        .counts(Reason::PassNotService),
    );

    // The firewall: the global deny list first, then the service's lists
    // (most specific entry decides; with an allow list, unlisted is refused).
    for (sport, src, verdict, reason, name) in [
        (
            50070,
            CLIENT,
            XDP_REDIRECT,
            Reason::FwdDsr,
            "firewall: an allowed source reaches a service with lists",
        ),
        (
            50071,
            [198, 51, 100, 3],
            XDP_DROP,
            Reason::DropDenied,
            "firewall: a source the service denies (inside its allowed /24) is dropped",
        ),
        (
            50072,
            [10, 9, 9, 9],
            XDP_DROP,
            Reason::DropNotAllowed,
            "firewall: a source outside the service's allow list is dropped",
        ),
        (
            50073,
            [100, 64, 1, 1],
            XDP_DROP,
            Reason::DropDeniedGlobal,
            "firewall: a globally denied source is dropped before anything else",
        ),
    ] {
        let input = with_src(&from_client(DSR_VIP, sport, 9090, L4::TcpSyn), src);
        let mut case = Case::new(name, fxa, input.clone(), verdict).counts(reason);
        if verdict == XDP_REDIRECT {
            case = case
                .output(Output::Frame(with_macs(
                    &input,
                    LB_BACKEND_MAC,
                    backend_mac(11),
                )))
                .opens("dsr-acl");
        }
        rows.push(case);
    }
    // New-connection rate limits (1 per second: the second comes within
    // microseconds): per client, in all; established flows never limited.
    let syn_from = |src: [u8; 4], sport: u16, port: u16| {
        with_src(&from_client(DSR_VIP, sport, port, L4::TcpSyn), src)
    };
    rows.push(
        Case::new(
            "rate limit: a client's second new connection within its interval is dropped",
            fxa,
            syn_from(CLIENT, 50081, 7070),
            XDP_DROP,
        )
        .before(forwarded(syn_from(CLIENT, 50080, 7070), fxa))
        .counts(Reason::DropRateClient),
    );
    let other = [198, 51, 100, 4];
    let ack = with_src(&from_client(DSR_VIP, 50082, 7070, L4::TcpAck), other);
    rows.push(
        Case::new(
            "rate limit: packets of an established flow are never limited",
            fxa,
            ack.clone(),
            XDP_REDIRECT,
        )
        .before(forwarded(syn_from(other, 50082, 7070), fxa))
        .output(Output::Frame(with_macs(
            &ack,
            LB_BACKEND_MAC,
            backend_mac(11),
        )))
        .counts(Reason::FwdDsr),
    );
    rows.push(
        Case::new(
            "rate limit: over the service's overall rate, another client is dropped too",
            fxa,
            syn_from([198, 51, 100, 5], 50084, 7071),
            XDP_DROP,
        )
        .before(forwarded(syn_from(other, 50083, 7071), fxa))
        .counts(Reason::DropRateService),
    );
    // The global list covers the host's own traffic too.
    rows.push(
        Case::new(
            "firewall: globally denied traffic to another address is dropped too",
            fxa,
            with_src(
                &from_client([192, 0, 2, 99], 50074, 22, L4::TcpSyn),
                [100, 64, 1, 1],
            ),
            XDP_DROP,
        )
        .counts(Reason::DropDeniedGlobal),
    );

    rows.extend(odd_frames(fxa));
    rows
}

/// Frames that are not for the LB, or not right: passed or dropped as they came.
fn odd_frames(fxa: u32) -> Vec<Case> {
    let good = from_client(DSR_VIP, 50100, 80, L4::TcpSyn);
    let udp = from_client(NAT_VIP, 50101, 53, L4::Udp);
    let with = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.to_vec();
        f(&mut v);
        v
    };
    let mut arp = good[..42].to_vec();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut icmp = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(CLIENT, DSR_VIP, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp, b"ping")
        .unwrap();
    let mut icmp_elsewhere = Vec::new();
    etherparse::PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
        .ipv4(CLIENT, [198, 51, 100, 99], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut icmp_elsewhere, b"ping")
        .unwrap();
    // The reply, checked against RFC 792 from scratch: both checksums verify.
    let reply = wire::icmp_echo_reply(&icmp);
    assert_eq!(wire::checksum(&reply[14..34]), 0, "reply IPv4 checksum");
    assert_eq!(wire::checksum(&reply[34..]), 0, "reply ICMP checksum");
    let echo = Case::new("ICMP echo to the VIP: answered", fxa, icmp.clone(), XDP_TX)
        .output(Output::Frame(reply))
        .counts(Reason::TxIcmpEchoReply);
    // IPv4 header with 4 bytes of options (IHL 6): a NOP option word.
    let with_options = |f: &[u8]| {
        ip_fixed(f, |v| {
            v.splice(34..34, [1, 1, 1, 1]);
            v[14] = 0x46;
            let len = (u16::from_be_bytes([v[16], v[17]]) + 4).to_be_bytes();
            v[16..18].copy_from_slice(&len);
        })
    };
    let other = from_client([192, 0, 2, 99], 50106, 80, L4::TcpSyn);
    let options = with_options(&good);
    let other_options = with_options(&other);
    let rows: Vec<(&'static str, Vec<u8>, u32, Reason)> = vec![
        (
            "TCP to another address",
            from_client([192, 0, 2, 99], 50102, 80, L4::TcpSyn),
            XDP_PASS,
            Reason::PassNotService,
        ),
        // A VIP is a local address of an HA MASTER: what no service
        // forwards must not reach the host's own services.
        (
            "TCP to the VIP on an unserved port: dropped",
            from_client(DSR_VIP, 50103, 8081, L4::TcpSyn),
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            "UDP to the VIP on an unserved port: dropped",
            from_client(DSR_VIP, 50104, 54, L4::Udp),
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            "another IP protocol (GRE) to the VIP: dropped",
            ip_fixed(&good, |v| v[14 + 9] = 47),
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            "ICMP echo to another address",
            icmp_elsewhere,
            XDP_PASS,
            Reason::PassNotService,
        ),
        ("ARP", arp, XDP_PASS, Reason::PassNotIpv4),
        ("IPv6 ethertype", ipv6, XDP_PASS, Reason::PassNotIpv4),
        (
            "VLAN-tagged frame",
            with(&good, &|v| {
                v.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
            }),
            XDP_PASS,
            Reason::PassNotIpv4,
        ),
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
            ip_fixed(&good, |v| {
                v.truncate(14 + 20 + 10);
                v[16..18].copy_from_slice(&30u16.to_be_bytes());
            }),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "IHL below 5",
            ip_fixed(&good, |v| v[14] = 0x44),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "IP version 6 in an IPv4 ethertype",
            with(&good, &|v| v[14] = 0x65),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "total length below header length",
            ip_fixed(&good, |v| v[16..18].copy_from_slice(&10u16.to_be_bytes())),
            XDP_DROP,
            Reason::DropBadIpHeader,
        ),
        (
            "first fragment (MF set), to another address",
            ip_fixed(&other, |v| v[20] = 0x20),
            XDP_PASS,
            Reason::PassFragment,
        ),
        (
            "non-first fragment, to another address",
            ip_fixed(&other, |v| v[20..22].copy_from_slice(&[0x00, 0x10])),
            XDP_PASS,
            Reason::PassFragment,
        ),
        (
            "IPv4 options, to another address",
            other_options,
            XDP_PASS,
            Reason::PassIpOptions,
        ),
        (
            "first fragment (MF set), to the VIP: dropped",
            ip_fixed(&good, |v| v[20] = 0x20),
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            "non-first fragment, to the VIP: dropped",
            ip_fixed(&good, |v| v[20..22].copy_from_slice(&[0x00, 0x10])),
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            "IPv4 options, to the VIP: dropped",
            options,
            XDP_DROP,
            Reason::DropUnservedVip,
        ),
        (
            // The ports would come from the Ethernet trailer.
            "UDP datagram ending inside its own header (total length 23)",
            ip_fixed(&udp, |v| v[16..18].copy_from_slice(&23u16.to_be_bytes())),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP header ending beyond the datagram (total length 32)",
            ip_fixed(&good, |v| v[16..18].copy_from_slice(&32u16.to_be_bytes())),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "TCP data offset 4 (below the header's own 20 bytes)",
            with(&good, &|v| v[14 + 20 + 12] = 0x40),
            XDP_DROP,
            Reason::DropBadL4Header,
        ),
        (
            "TCP data offset 15 (60 bytes) in a 25-byte segment",
            with(&good, &|v| v[14 + 20 + 12] = 0xf0),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "UDP length 7",
            with(&udp, &|v| {
                v[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&7u16.to_be_bytes())
            }),
            XDP_DROP,
            Reason::DropBadL4Header,
        ),
        (
            "UDP length beyond the datagram",
            with(&udp, &|v| {
                v[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&14u16.to_be_bytes())
            }),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "wrong IPv4 header checksum, to a VIP",
            with(&good, &|v| v[24] ^= 0x55),
            XDP_DROP,
            Reason::DropBadIpChecksum,
        ),
        (
            "wrong IPv4 header checksum, to another address (the kernel decides)",
            with(&from_client([192, 0, 2, 99], 50105, 80, L4::TcpSyn), &|v| {
                v[24] ^= 0x55
            }),
            XDP_PASS,
            Reason::PassNotService,
        ),
    ];
    rows.into_iter()
        .map(|(name, input, verdict, reason)| Case::new(name, fxa, input, verdict).counts(reason))
        .chain([echo])
        .collect()
}

/// An ARP request (who has `target`?) from the client.
pub fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut v = vec![0xff; 6];
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    v.extend_from_slice(&CLIENT_MAC);
    v.extend_from_slice(&CLIENT);
    v.extend_from_slice(&[0; 6]);
    v.extend_from_slice(&target);
    v
}

/// The row named `name`.
pub fn find<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no fixture row named {name:?}"))
}

/// The flow-table key of a client 4-tuple (TCP).
pub fn flow_key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src_be: u32::from_ne_bytes(src),
        dst_be: u32::from_ne_bytes(dst),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto: TCP,
        _pad: [0; 3],
    }
}

/// Do what comes before a row's frame. Whether the lab must be restored
/// afterwards (a backend was taken down).
pub fn prepare(lab: &mut Lab, case: &Case) -> Result<bool, String> {
    let mut replanned = false;
    for step in &case.before {
        match step {
            Step::Send {
                frame,
                ingress,
                verdict,
            } => {
                let (got, _) = lab.run_on(frame, Some(*ingress));
                if got != *verdict {
                    return Err(format!(
                        "a frame before it got {} instead of {}",
                        verdict_name(got),
                        verdict_name(*verdict)
                    ));
                }
            }
            Step::Down { service, addr } => {
                let key = lab.service(service).key;
                let port = lab.plan.backends[&lab.backend_id(service, *addr)].port_be;
                let down = BackendRef::new(key, (*addr).into(), u16::from_be(port));
                let config = CONFIG.to_string();
                lab.replan(&config, &[down]);
                replanned = true;
            }
            Step::Flow(key, value) => lab.put_flow(*key, *value),
            Step::Conns {
                service,
                addr,
                conns,
            } => {
                let id = lab.backend_id(service, *addr);
                lab.set_conns(id, *conns);
            }
        }
    }
    Ok(replanned)
}

/// Run one row; every way it differs from what the row says.
pub fn run(lab: &mut Lab, case: &Case) -> Vec<String> {
    let mut errors = Vec::new();
    let replanned = match prepare(lab, case) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let (reasons, traffic) = (lab.reasons(), lab.all_traffic());
    let (verdict, out) = lab.run_on(&case.input, Some(case.ingress));
    let (reasons_after, traffic_after) = (lab.reasons(), lab.all_traffic());
    if replanned {
        lab.restore();
    }
    for step in &case.before {
        if let Step::Conns { service, addr, .. } = step {
            let id = lab.backend_id(service, *addr);
            lab.set_conns(id, 0);
        }
    }
    if verdict != case.verdict {
        errors.push(format!(
            "verdict {} instead of {}",
            verdict_name(verdict),
            verdict_name(case.verdict)
        ));
    }
    let (meta, frame, want) = match &case.output {
        Output::Same => (None, &out[..], &case.input),
        Output::Frame(f) => (None, &out[..], f),
        Output::Meta(m, f) => {
            let (got_meta, rest) = out.split_at(m.len().min(out.len()));
            (Some((got_meta, m)), rest, f)
        }
    };
    if let Some((got, want)) = meta
        && got != &want[..]
    {
        errors.push(format!("metadata {got:02x?} instead of {want:02x?}"));
    }
    if frame != &want[..] {
        errors.push(format!(
            "output differs from the expected {}-byte frame at byte {:?} (got {} bytes)",
            want.len(),
            first_difference(frame, want),
            frame.len()
        ));
    }
    for (i, r) in Reason::ALL.iter().enumerate() {
        let moved = reasons_after[i] - reasons[i];
        let want = case
            .reasons
            .iter()
            .filter(|(x, _)| x == r)
            .map(|(_, n)| n)
            .sum::<u64>();
        if moved != want {
            errors.push(format!("{} moved by {moved}, not {want}", r.label()));
        }
    }
    for ((name, before), (_, after)) in traffic.iter().zip(&traffic_after) {
        let moved = (
            after.connections - before.connections,
            after.midstream - before.midstream,
        );
        let want = case
            .connections
            .iter()
            .find(|(s, _, _)| s == name)
            .map_or((0, 0), |(_, c, m)| (*c, *m));
        if moved != want {
            errors.push(format!(
                "service {name}: (connections, midstream) moved by {moved:?}, not {want:?}"
            ));
        }
    }
    errors
}
