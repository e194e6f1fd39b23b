//! Fuzz test of the data path: seeded, mutated frames through the real XDP
//! program (BPF_PROG_TEST_RUN), each checked against the reference model in
//! `xdplb_tests::model`.
//!
//! Per frame: never XDP_ABORTED; verdict and reason as the model predicts;
//! PASS and DROP leave the frame byte for byte as it came, except the one
//! named case: a packet handed to the kernel for neighbour resolution
//! carries its next hop in XDP metadata and, for NAT, is already translated; TX/REDIRECT output differs from the input only in the MACs and
//! the addresses and ports the forwarding mode may rewrite, its checksums
//! carry exactly the damage the input carried (valid stays valid). Every
//! batch of 10,000 frames, every reason counter and the per-service and
//! per-backend counters must equal the model's.
//!
//! `XDPLB_FUZZ_SEED` replays a run (the seed is printed), `XDPLB_FUZZ_FRAMES`
//! sets its length (default 1,000,000).

use std::{collections::BTreeMap, path::Path, time::Instant};

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use lb_common::Reason;
use xdplb::{
    config::Config,
    dataplane::Programmer,
    dataplane::bpf::{self, BpfDataplane, Counters, TestFault},
    plan::{Availability, BackendRef, Plan, Planner, service_key},
};
use xdplb_tests::{
    CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, backend_mac, fib_lab,
    model::{Action, LabLinks, Model, Tuple, check_output},
    pin_to_cpu0, require_root, wire,
};

const BATCH: u64 = 10_000;
const DEFAULT_FRAMES: u64 = 1_000_000;
/// A re-plan (one backend down, or back) every this many frames, so flows
/// pinned to a backend that went away are exercised too.
const REPLAN_EVERY: u64 = 100_000;

const CONFIG: &str = r#"
[dataplane]
flow_table_size = 1048576
manage_neighbours = false

[firewall]
deny = ["100.64.0.0/10"]

[[service]]
name = "dsr-acl"
vip = "192.0.2.10"
port = 9090
protocol = "tcp"
scheduler = "round_robin"
forwarding = "dsr"
allow = ["198.51.100.0/24"]
deny = ["198.51.100.3"]
backend = [{ address = "203.0.113.11", port = 9090 }, { address = "203.0.113.12", port = 9090 }]

[[service]]
name = "dsr-rr-tcp"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 80 }, { address = "203.0.113.12", port = 80, weight = 2 }]

[[service]]
name = "dsr-maglev-tcp"
vip = "192.0.2.10"
port = 443
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 443 }, { address = "203.0.113.12", port = 443 }, { address = "203.0.113.13", port = 443 }]

[[service]]
name = "dsr-rr-udp"
vip = "192.0.2.10"
port = 53
protocol = "udp"
scheduler = "round_robin"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 53 }, { address = "203.0.113.13", port = 53 }]

[[service]]
name = "dsr-maglev-udp"
vip = "192.0.2.10"
port = 123
protocol = "udp"
scheduler = "maglev"
forwarding = "dsr"
backend = [{ address = "203.0.113.12", port = 123 }, { address = "203.0.113.13", port = 123 }]

[[service]]
name = "nat-rr-tcp"
vip = "192.0.2.20"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "nat-maglev-tcp"
vip = "192.0.2.20"
port = 443
protocol = "tcp"
scheduler = "maglev"
forwarding = "nat"
backend = [{ address = "203.0.113.12", port = 8443 }, { address = "203.0.113.13", port = 8443 }]

[[service]]
name = "nat-maglev-udp"
vip = "192.0.2.20"
port = 53
protocol = "udp"
scheduler = "maglev"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 5353 }, { address = "203.0.113.12", port = 5353 }]

[[service]]
name = "nat-rr-udp"
vip = "192.0.2.20"
port = 514
protocol = "udp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.13", port = 5514 }]

[[service]]
name = "dsr-source-tcp"
vip = "192.0.2.10"
port = 8000
protocol = "tcp"
scheduler = "source_hash"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 8000 }, { address = "203.0.113.12", port = 8000, weight = 3 }]

[[service]]
name = "nat-lc-tcp"
vip = "192.0.2.20"
port = 8081
protocol = "tcp"
scheduler = "least_conn"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080, weight = 2 }, { address = "203.0.113.13", port = 8080 }]

[[service]]
name = "dsr-lc-tcp"
vip = "192.0.2.10"
port = 8081
protocol = "tcp"
scheduler = "least_conn"
forwarding = "dsr"
backend = [{ address = "203.0.113.11", port = 8081, weight = 3 }, { address = "203.0.113.13", port = 8081 }]

[[service]]
name = "nat-source-udp"
vip = "192.0.2.20"
port = 5000
protocol = "udp"
scheduler = "source_hash"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 5050 }, { address = "203.0.113.13", port = 5050 }]

[[service]]
name = "nat-small-mtu"
vip = "192.0.2.40"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.14", port = 8080 }]

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
scheduler = "maglev"
forwarding = "nat"
backend = [{ address = "203.0.113.99", port = 8080 }]

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
name = "nat-cookie"
vip = "192.0.2.60"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
syn_cookie_threshold = 0
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]

[[service]]
name = "empty-drop"
vip = "192.0.2.50"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
when_empty = "drop"
backend = [{ address = "203.0.113.11", port = 8080 }]

[[service]]
name = "empty-pass"
vip = "192.0.2.51"
port = 80
protocol = "tcp"
scheduler = "maglev"
forwarding = "dsr"
when_empty = "pass"
backend = [{ address = "203.0.113.12", port = 80 }]
"#;

/// SplitMix64: small, fast, and the same sequence for the same seed anywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Addresses clients send from: resolved, unresolved (same subnet), unrouted,
/// globally denied.
const CLIENTS: [[u8; 4]; 4] = [CLIENT, [198, 51, 100, 3], [10, 9, 9, 9], [100, 64, 1, 1]];
/// A small pool of client ports, so flows repeat.
const CLIENT_PORTS: u16 = 48;
/// (VIP, port, protocol) a client frame may target: every service and some
/// ports nobody serves.
const TARGETS: &[([u8; 4], u16, u8)] = &[
    ([192, 0, 2, 10], 80, 6),
    ([192, 0, 2, 10], 9090, 6),
    ([192, 0, 2, 10], 443, 6),
    ([192, 0, 2, 10], 53, 17),
    ([192, 0, 2, 10], 123, 17),
    ([192, 0, 2, 20], 80, 6),
    ([192, 0, 2, 20], 443, 6),
    ([192, 0, 2, 20], 53, 17),
    ([192, 0, 2, 20], 514, 17),
    ([192, 0, 2, 10], 8000, 6),
    ([192, 0, 2, 20], 5000, 17),
    ([192, 0, 2, 20], 8081, 6),
    ([192, 0, 2, 10], 8081, 6),
    ([192, 0, 2, 40], 80, 6),
    ([192, 0, 2, 30], 80, 6),
    ([192, 0, 2, 31], 80, 6),
    ([192, 0, 2, 41], 80, 6),
    ([192, 0, 2, 42], 80, 6),
    ([192, 0, 2, 50], 80, 6),
    ([192, 0, 2, 51], 80, 6),
    ([192, 0, 2, 60], 80, 6),
    ([192, 0, 2, 10], 22, 6),
    ([192, 0, 2, 20], 80, 17),
    ([192, 0, 2, 99], 80, 6),
];
const TCP_FLAGS: &[u8] = &[0x02, 0x10, 0x18, 0x11, 0x04, 0x14, 0x12, 0x01];

/// The MAC of an HA peer the node declares dead every fourth churn step
/// (frames to it are forwarded then, and passed otherwise).
const DEAD_PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0d, 0xad];

struct Gen {
    rng: Rng,
    /// Client ports drawn from (few: flows repeat; many: tables overflow).
    ports: u16,
}

impl Gen {
    fn payload_len(&mut self) -> usize {
        match self.rng.below(100) {
            0..70 => self.rng.below(40) as usize,
            70..90 => 40 + self.rng.below(600) as usize,
            _ => 1200 + self.rng.below(360) as usize,
        }
    }

    /// A well-formed IPv4 TCP or UDP frame with right checksums; `seq`
    /// (TCP) is random unless given.
    #[allow(clippy::too_many_arguments)]
    fn frame(
        &mut self,
        macs: ([u8; 6], [u8; 6]),
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
        flags: u8,
        seq: Option<u32>,
    ) -> Vec<u8> {
        let payload: Vec<u8> = (0..self.payload_len()).map(|_| self.rng.byte()).collect();
        let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src, dst, 1 + self.rng.byte() % 128);
        let mut v = Vec::new();
        if proto == wire::PROTO_TCP {
            let seq = seq.unwrap_or_else(|| self.rng.next() as u32);
            let mut t = ip.tcp(sport, dport, seq, 64240);
            if flags & 0x01 != 0 {
                t = t.fin();
            }
            if flags & 0x02 != 0 {
                t = t.syn();
            }
            if flags & 0x04 != 0 {
                t = t.rst();
            }
            if flags & 0x08 != 0 {
                t = t.psh();
            }
            if flags & 0x10 != 0 {
                t = t.ack(self.rng.next() as u32);
            }
            t.write(&mut v, &payload).unwrap();
        } else {
            ip.udp(sport, dport).write(&mut v, &payload).unwrap();
            if self.rng.chance(10) {
                v[wire::L4_OFF + 6..wire::L4_OFF + 8].copy_from_slice(&[0, 0]);
            }
        }
        // Vary the IPv4 header a little: DF mostly set, some TOS, an id.
        if self.rng.chance(10) {
            v[wire::IP_OFF + 6] &= !0x40;
        }
        if self.rng.chance(10) {
            v[wire::IP_OFF + 1] = self.rng.byte();
        }
        v[wire::IP_OFF + 4] = self.rng.byte();
        wire::fix_ipv4_checksum(&mut v);
        v
    }

    /// A client address and port and a target: a small pool, so flows
    /// repeat.
    fn client_flow(&mut self) -> ([u8; 4], u16, ([u8; 4], u16, u8)) {
        let target = *self.rng.pick(TARGETS);
        let client = if self.rng.chance(80) {
            CLIENT
        } else {
            *self.rng.pick(&CLIENTS)
        };
        let sport = 20000 + self.rng.below(self.ports as u64) as u16;
        (client, sport, target)
    }

    /// A client's packet to a target; a SYN on a known 4-tuple often
    /// re-sends the ISN the flow was opened with (a retransmission).
    fn client_frame(&mut self, model: &Model) -> Vec<u8> {
        let (client, sport, (vip, port, proto)) = self.client_flow();
        let flags = *self.rng.pick(TCP_FLAGS);
        let tuple = Tuple {
            src: client,
            dst: vip,
            sport,
            dport: port,
            proto,
        };
        let seq = model
            .syn_seq(&tuple)
            .filter(|_| self.rng.chance(50))
            .map(|wire_seq| u32::from_be_bytes(wire_seq.to_ne_bytes()));
        self.frame(
            (CLIENT_MAC, LB_CLIENT_MAC),
            client,
            vip,
            sport,
            port,
            proto,
            flags,
            seq,
        )
    }

    /// A backend's reply: mostly to a NAT flow the model knows, else to a
    /// client and port that may or may not have one.
    fn reply_frame(&mut self, model: &Model) -> Vec<u8> {
        let all = model.nat_replies();
        let known: Vec<Tuple> = all[all.len().saturating_sub(512)..]
            .iter()
            .filter(|t| CLIENTS.contains(&t.dst))
            .copied()
            .collect();
        let t = if !known.is_empty() && self.rng.chance(80) {
            *self.rng.pick(&known)
        } else {
            Tuple {
                src: [203, 0, 113, 11 + self.rng.below(4) as u8],
                dst: *self.rng.pick(&CLIENTS),
                sport: *self.rng.pick(&[8080u16, 8443, 5353, 5514]),
                dport: 20000 + self.rng.below(self.ports as u64) as u16,
                proto: *self.rng.pick(&[6u8, 17]),
            }
        };
        let flags = *self.rng.pick(TCP_FLAGS);
        let mut v = self.frame(
            (backend_mac(t.src[3]), LB_BACKEND_MAC),
            t.src,
            t.dst,
            t.sport,
            t.dport,
            t.proto,
            flags,
            None,
        );
        // A picked-up flow's backend answering at (or a little past) the
        // client's acknowledgement: it proves the flow.
        if let Some(ack) = model.pickup_ack(&t).filter(|_| self.rng.chance(40)) {
            let seq = ack.wrapping_add(self.rng.below(3000) as u32);
            v[wire::L4_OFF + 4..wire::L4_OFF + 8].copy_from_slice(&seq.to_be_bytes());
            xdplb_tests::frames::fix_l4_checksum(&mut v);
        }
        // A refusal acknowledging the client's SYN, as a backend's stack
        // sends it (else the ACK number is random: not a refusal).
        if flags & 0x14 == 0x14
            && let Some(ack) = model.refusal_ack(&t).filter(|_| self.rng.chance(70))
        {
            let at = wire::L4_OFF + 8;
            v[at..at + 4].copy_from_slice(&ack.to_be_bytes());
            xdplb_tests::frames::fix_l4_checksum(&mut v);
        }
        v
    }

    /// An ICMP error (unreachable, fragmentation needed, time exceeded) a
    /// router on the client side sends about a packet from a target to a
    /// client: often about a flow the model knows, sometimes to another
    /// address, with TTLs down to 1.
    fn icmp_error(&mut self) -> Vec<u8> {
        let (client, sport, (vip, port, proto)) = self.client_flow();
        let flags = *self.rng.pick(TCP_FLAGS);
        let original = self.frame(
            (LB_CLIENT_MAC, CLIENT_MAC),
            vip,
            client,
            port,
            sport,
            proto,
            flags,
            None,
        );
        let ip = &original[wire::IP_OFF..];
        let quote = &ip[..ip.len().min(28 + self.rng.below(80) as usize)];
        let (t, code, rest) =
            *self
                .rng
                .pick(&[(3u8, 4u8, 1280u32), (3, 1, 0), (3, 3, 0), (11, 0, 0)]);
        let src = *self.rng.pick(&[[198, 51, 100, 1], CLIENT, [10, 9, 9, 9]]);
        let dst = if self.rng.chance(90) {
            vip
        } else {
            [192, 0, 2, self.rng.byte()]
        };
        let mut v =
            wire::icmp_error_frame((CLIENT_MAC, LB_CLIENT_MAC), src, dst, t, code, rest, quote);
        v[wire::IP_OFF + 8] = 1 + self.rng.byte() % 64;
        if self.rng.chance(50) {
            v[wire::IP_OFF + 6] |= 0x40;
        }
        wire::fix_ipv4_checksum(&mut v);
        v
    }

    /// An ICMP error a router between the LB and a backend sends about a
    /// packet of a NAT flow (client -> backend): mostly from the backend's
    /// side (its next hop's MAC), sometimes from the client side, mostly to
    /// the flow's client.
    fn icmp_error_backend_side(&mut self, model: &Model) -> Vec<u8> {
        let all = model.nat_replies();
        let known: Vec<Tuple> = all[all.len().saturating_sub(512)..].to_vec();
        let t = if !known.is_empty() && self.rng.chance(85) {
            *self.rng.pick(&known)
        } else {
            Tuple {
                src: [203, 0, 113, 11 + self.rng.below(4) as u8],
                dst: *self.rng.pick(&CLIENTS),
                sport: *self.rng.pick(&[8080u16, 8443, 5353]),
                dport: 20000 + self.rng.below(self.ports as u64) as u16,
                proto: *self.rng.pick(&[6u8, 17]),
            }
        };
        let flags = *self.rng.pick(TCP_FLAGS);
        let sent = self.frame(
            (LB_BACKEND_MAC, backend_mac(t.src[3])),
            t.dst,
            t.src,
            t.dport,
            t.sport,
            t.proto,
            flags,
            None,
        );
        let ip = &sent[wire::IP_OFF..];
        let quote = &ip[..ip.len().min(28 + self.rng.below(80) as usize)];
        let (ty, code, rest) =
            *self
                .rng
                .pick(&[(3u8, 4u8, 1280u32), (3, 1, 0), (3, 3, 0), (11, 0, 0)]);
        let src = *self.rng.pick(&[[203, 0, 113, 254], t.src, [10, 9, 9, 9]]);
        let dst = if self.rng.chance(90) {
            t.dst
        } else {
            *self.rng.pick(&CLIENTS)
        };
        let macs = if self.rng.chance(90) {
            (backend_mac(t.src[3]), LB_BACKEND_MAC)
        } else {
            (CLIENT_MAC, LB_CLIENT_MAC)
        };
        let mut v = wire::icmp_error_frame(macs, src, dst, ty, code, rest, quote);
        v[wire::IP_OFF + 8] = 1 + self.rng.byte() % 64;
        wire::fix_ipv4_checksum(&mut v);
        v
    }

    /// Traffic for the LB host itself or elsewhere: other addresses, ICMP.
    fn other_frame(&mut self) -> Vec<u8> {
        if self.rng.chance(15) {
            let any = [192, 0, 2, self.rng.byte()];
            let target = *self.rng.pick(&[[192, 0, 2, 10], [192, 0, 2, 20], any]);
            return xdplb_tests::cases::arp_request(target);
        }
        if self.rng.chance(30) {
            let mut v = Vec::new();
            PacketBuilder::ethernet2(CLIENT_MAC, LB_CLIENT_MAC)
                .ipv4(CLIENT, [192, 0, 2, 10], 64)
                .icmpv4_echo_request(1, self.rng.byte() as u16)
                .write(&mut v, b"ping")
                .unwrap();
            return v;
        }
        let dst = [
            self.rng.byte(),
            self.rng.byte(),
            self.rng.byte(),
            self.rng.byte(),
        ];
        let proto = *self.rng.pick(&[6u8, 17]);
        let (sport, dport) = (self.rng.next() as u16, self.rng.next() as u16);
        self.frame(
            (CLIENT_MAC, LB_CLIENT_MAC),
            CLIENT,
            dst,
            sport,
            dport,
            proto,
            0x10,
            None,
        )
    }

    /// Damage a frame in 1 to 3 ways, then (usually) make its IPv4 header
    /// checksum right again so the damage reaches past the checksum test.
    fn mutate(&mut self, mut v: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + self.rng.below(3) {
            let n = v.len();
            match self.rng.below(17) {
                0 if n > 14 => v.truncate(14 + self.rng.below((n - 14) as u64) as usize),
                1 => {
                    let i = self.rng.below(n.min(64) as u64) as usize;
                    v[i] ^= 1 << self.rng.below(8);
                }
                2 if n > 14 => v[14] = (v[14] & 0xf0) | self.rng.below(16) as u8,
                3 if n > 14 => v[14] = (v[14] & 0x0f) | (self.rng.below(16) as u8) << 4,
                4 if n > 17 => {
                    let len = self.rng.below(n as u64 + 24) as u16;
                    v[16..18].copy_from_slice(&len.to_be_bytes());
                }
                5 if n > 21 => {
                    let frag = match self.rng.below(3) {
                        0 => 0x2000,
                        1 => self.rng.below(0x2000) as u16,
                        _ => 0x4000 | self.rng.below(0x4000) as u16,
                    };
                    v[20..22].copy_from_slice(&frag.to_be_bytes());
                }
                6 if n >= 34 => {
                    let words = 1 + self.rng.below(10) as usize;
                    let opts: Vec<u8> = (0..words * 4).map(|_| self.rng.byte() % 4).collect();
                    v.splice(34..34, opts);
                    v[14] = 0x40 | (5 + words as u8);
                    let len = u16::from_be_bytes([v[16], v[17]]).wrapping_add(words as u16 * 4);
                    v[16..18].copy_from_slice(&len.to_be_bytes());
                }
                7 if n > 23 => {
                    let any = self.rng.byte();
                    v[23] = *self.rng.pick(&[6u8, 17, 1, 47, any]);
                }
                8 if n > 46 => v[46] = (self.rng.below(16) as u8) << 4 | (v[46] & 0x0f),
                9 if n > 25 => v[24 + self.rng.below(2) as usize] ^= 1 + self.rng.byte() % 255,
                10 if n > 51 => {
                    let i = if v[23] == 6 { 50 } else { 40 };
                    v[i] ^= 1 + self.rng.byte() % 255;
                }
                11 if n > 39 => {
                    let len = self.rng.below(n as u64) as u16;
                    v[38..40].copy_from_slice(&len.to_be_bytes());
                }
                12 => {
                    let any = self.rng.next() as u16;
                    let et: u16 = *self.rng.pick(&[0x8100, 0x86dd, 0x0806, 0x88a8, any]);
                    if et == 0x8100 && self.rng.chance(50) {
                        v.splice(12..12, [0x81, 0x00, 0x00, self.rng.byte()]);
                    } else {
                        v[12..14].copy_from_slice(&et.to_be_bytes());
                    }
                }
                13 => {
                    let trailer = 1 + self.rng.below(32) as usize;
                    for _ in 0..trailer {
                        let b = self.rng.byte();
                        v.push(b);
                    }
                }
                14 if n > 47 => v[47] = self.rng.byte(),
                15 if n > 37 => {
                    let i = 34 + self.rng.below(4) as usize;
                    v[i] = self.rng.byte();
                }
                16 if n > 33 => {
                    let i = 26 + self.rng.below(8) as usize;
                    v[i] ^= 1 << self.rng.below(8);
                }
                _ => {}
            }
        }
        if v.len() >= 34 && self.rng.chance(75) {
            wire::fix_ipv4_checksum(&mut v);
        }
        v
    }

    /// A client's ACK carrying a cookie the program sent (its ISN + 1, the
    /// cookie + 1), sometimes with data; else a client frame.
    fn cookie_ack(&mut self, model: &Model) -> Vec<u8> {
        let recent = model.recent_cookies(64);
        if recent.is_empty() {
            return self.client_frame(model);
        }
        let (t, isn, cookie) = *self.rng.pick(&recent);
        let flags = if self.rng.chance(70) { 0x10 } else { 0x18 };
        let mut v = self.frame(
            (CLIENT_MAC, LB_CLIENT_MAC),
            t.src,
            t.dst,
            t.sport,
            t.dport,
            t.proto,
            flags,
            Some(isn.wrapping_add(1)),
        );
        let ack = wire::L4_OFF + 8;
        v[ack..ack + 4].copy_from_slice(&cookie.wrapping_add(1).to_be_bytes());
        xdplb_tests::frames::fix_l4_checksum(&mut v);
        v
    }

    fn next(&mut self, model: &Model) -> Vec<u8> {
        let mut v = self.next_frame(model);
        // Now and then to another host: a dead peer, or anyone.
        if v.len() >= 6 && self.rng.chance(3) {
            let other = if self.rng.chance(50) {
                DEAD_PEER_MAC
            } else {
                [0x02, 0, 0, 0, self.rng.byte(), self.rng.byte()]
            };
            v[0..6].copy_from_slice(&other);
        }
        v
    }

    fn next_frame(&mut self, model: &Model) -> Vec<u8> {
        match self.rng.below(100) {
            0..36 => self.client_frame(model),
            36..40 => self.cookie_ack(model),
            40..55 => self.reply_frame(model),
            55..57 => self.other_frame(),
            57..59 => self.icmp_error(),
            59..60 => self.icmp_error_backend_side(model),
            60..90 => {
                let base = match self.rng.below(6) {
                    0 => self.client_frame(model),
                    1 => self.reply_frame(model),
                    2 => self.icmp_error(),
                    3 => self.cookie_ack(model),
                    4 => self.icmp_error_backend_side(model),
                    _ => self.other_frame(),
                };
                self.mutate(base)
            }
            90..95 => {
                let len = 14 + self.rng.below(200) as usize;
                (0..len).map(|_| self.rng.byte()).collect()
            }
            _ => {
                let mut v = self.client_frame(model);
                v.truncate(14 + self.rng.below(28) as usize);
                v
            }
        }
    }
}

struct Harness {
    ebpf: Ebpf,
    counters: Counters,
    dp: BpfDataplane,
    planner: Planner,
    programmer: Programmer,
    config: Config,
    _entered: xdplb_tests::NetnsEntered,
    _ns: xdplb_tests::Netns,
}

impl Harness {
    fn new(fault: TestFault, tables: Tables) -> Harness {
        pin_to_cpu0();
        let ns = fib_lab("xdplb-fuzz");
        let entered = ns.enter();
        let text = match tables {
            Tables::Roomy => CONFIG.to_string(),
            Tables::Overflowing => CONFIG.replace(
                "flow_table_size = 1048576",
                "flow_table_size = 1024\nembryonic_table_size = 1024",
            ),
        };
        let config = Config::parse(Path::new("fuzz.toml"), &text).expect("fuzz config");
        let mut ebpf = bpf::load_with(bpf::TableSizes::of(&config.dataplane), None, fault)
            .expect("load XDP program")
            .ebpf;
        let dp = BpfDataplane::new(&mut ebpf).expect("maps");
        let counters = Counters::new(&mut ebpf).expect("counter maps");
        Harness {
            ebpf,
            counters,
            dp,
            planner: Planner::default(),
            programmer: Programmer::default(),
            config,
            _entered: entered,
            _ns: ns,
        }
    }

    /// Program the maps with `avail`'s backends down or held (the two
    /// "empty" services always have their only backend down); the plan
    /// and the availability it was made for.
    fn program(&mut self, mut avail: Availability) -> (Plan, Availability) {
        let down = &mut avail.down;
        for (vip, addr, port) in [
            ([192, 0, 2, 50], [203, 0, 113, 11], 8080),
            ([192, 0, 2, 51], [203, 0, 113, 12], 80),
        ] {
            let key = service_key(vip.into(), 80, xdplb::config::Protocol::Tcp);
            down.insert(BackendRef::new(key, addr.into(), port));
        }
        let plan = self.planner.plan(&self.config, &avail).expect("plan");
        self.programmer
            .apply(&mut self.dp, plan)
            .expect("program maps");
        (self.programmer.applied().clone(), avail)
    }

    /// HA switches for churn step `step`, written to the maps and the model:
    /// both service VIPs become HA addresses; the lease is off, expired or
    /// endless in turn; flow reports are on every other step (the ring
    /// buffer fills and counts losses, which must not change any verdict).
    fn ha_step(&mut self, step: u64, model: &mut Model) {
        use xdplb::dataplane::Dataplane as _;
        for vip in [[192, 0, 2, 10], [192, 0, 2, 20]] {
            let flags = lb_common::VIP_F_DROP_UNSERVED | lb_common::VIP_F_HA;
            self.dp
                .set_vip(u32::from_ne_bytes(vip), lb_common::VipInfo { flags })
                .expect("write VIPS");
            model.set_vip(vip, flags);
        }
        let settings = lb_common::Settings {
            flags: match step % 3 {
                0 => 0,
                _ => lb_common::SETTINGS_F_HA,
            } | if step % 2 == 1 {
                lb_common::SETTINGS_F_SYNC_FLOWS
            } else {
                0
            },
            lease_until_ns: if step % 3 == 1 { 0 } else { u64::MAX },
            // A declared-dead peer's MAC accepted every fourth step.
            accept_macs: [DEAD_PEER_MAC; lb_common::MAX_ACCEPT_MACS],
            accept_count: u32::from(step % 4 == 3),
            ..Default::default()
        };
        let map = self
            .ebpf
            .map_mut(lb_common::names::SETTINGS)
            .expect("SETTINGS map");
        let mut a: aya::maps::Array<&mut aya::maps::MapData, lb_common::Settings> =
            aya::maps::Array::try_from(map).expect("SETTINGS is an array");
        a.set(0, settings, 0).expect("write settings");
        model.set_settings(settings);
    }

    /// Whether the program's tables hold `t`'s entry: a flow (`FLOWS` or
    /// `EMBRYOS`) or a reply entry (`NAT_REVERSE` or `EMBRYO_REVERSE`).
    fn holds(&self, t: &Tuple, flow: bool) -> bool {
        use lb_common::{FlowKey, names};
        let key = FlowKey {
            src_be: u32::from_ne_bytes(t.src),
            dst_be: u32::from_ne_bytes(t.dst),
            sport_be: t.sport.to_be(),
            dport_be: t.dport.to_be(),
            proto: t.proto,
            _pad: [0; 3],
        };
        fn held<V: aya::Pod>(ebpf: &Ebpf, name: &str, key: &FlowKey) -> bool {
            let map = ebpf.map(name).expect("table");
            let m: aya::maps::HashMap<_, FlowKey, V> =
                aya::maps::HashMap::try_from(map).expect("a hash map of this value");
            m.get(key, 0).is_ok()
        }
        if flow {
            held::<lb_common::FlowValue>(&self.ebpf, names::FLOWS, &key)
                || held::<lb_common::FlowValue>(&self.ebpf, names::EMBRYOS, &key)
        } else {
            held::<lb_common::NatReverse>(&self.ebpf, names::NAT_REVERSE, &key)
                || held::<lb_common::NatReverse>(&self.ebpf, names::EMBRYO_REVERSE, &key)
        }
    }

    fn run(&mut self, frame: &[u8], ingress: u32) -> (u32, Vec<u8>) {
        let prog = bpf::xdp_program(&mut self.ebpf, lb_common::names::PROGRAM).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let ctx = xdplb_tests::lab::xdp_md(frame.len(), ingress);
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN on {} bytes: {e}", frame.len()));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join("")
}

/// Backends a re-plan takes down or holds (passive) in turn, then brings back.
fn churn(step: u64) -> Availability {
    let tcp = xdplb::config::Protocol::Tcp;
    let udp = xdplb::config::Protocol::Udp;
    let nat_tcp = BackendRef::new(
        service_key([192, 0, 2, 20].into(), 80, tcp),
        [203, 0, 113, 11].into(),
        8080,
    );
    let dsr_tcp = BackendRef::new(
        service_key([192, 0, 2, 10].into(), 443, tcp),
        [203, 0, 113, 12].into(),
        443,
    );
    let nat_udp = BackendRef::new(
        service_key([192, 0, 2, 20].into(), 53, udp),
        [203, 0, 113, 12].into(),
        5353,
    );
    let set = |v: &[BackendRef]| v.iter().copied().collect();
    match step % 6 {
        1 => Availability::down(set(&[nat_tcp])),
        2 => Availability::down(set(&[dsr_tcp])),
        3 => Availability::down(set(&[nat_udp])),
        4 => Availability {
            down: set(&[]),
            held: set(&[nat_tcp, dsr_tcp]),
        },
        5 => Availability {
            down: set(&[dsr_tcp]),
            held: set(&[nat_tcp]),
        },
        _ => Availability::default(),
    }
}

/// How big the program's flow tables are for a run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tables {
    /// Far larger than the flows a run makes: nothing is evicted, every
    /// entry is the model's to predict.
    Roomy,
    /// 1024 entries each, far fewer than the flows a run makes: the kernel's
    /// LRU evicts, which no model predicts; before each frame the model
    /// forgets what the program's tables no longer hold of what the frame
    /// consults, and predicts the rest (mid-connection pickups, reply
    /// entries gone, counts of evicted connections left standing).
    Overflowing,
}

/// Frames run on one CPU before the next frames move to the other (round
/// robin's cursor and the counters are per CPU).
const CPU_TURN: u64 = 25_000;
/// Frames between two refills of the half-open budget.
const HALF_OPEN_REFILL: u64 = 5_000;

/// Run `frames` frames from `seed`. Returns the verdict tally, or the first
/// broken invariant with everything needed to replay it.
fn fuzz(
    seed: u64,
    frames: u64,
    fault: TestFault,
    tables: Tables,
) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut h = Harness::new(fault, tables);
    let (plan, avail) = h.program(Availability::default());
    let links = LabLinks {
        fxa: wire::ifindex("fxa"),
        fxc: wire::ifindex("fxc"),
    };
    // The lab interfaces' MACs, as the daemon sets them for its own: the
    // program then leaves other hosts' frames to the kernel.
    for (ifindex, mac) in [(links.fxa, LB_CLIENT_MAC), (links.fxc, LB_BACKEND_MAC)] {
        let map = h
            .ebpf
            .map_mut(lb_common::names::IFACE_MACS)
            .expect("IFACE_MACS map");
        let mut a: aya::maps::Array<&mut aya::maps::MapData, lb_common::IfaceMac> =
            aya::maps::Array::try_from(map).expect("IFACE_MACS is an array");
        let v = lb_common::IfaceMac {
            mac,
            set: 1,
            _pad: 0,
        };
        a.set(ifindex, v, 0).expect("write IFACE_MACS");
    }
    let mut model = Model::new(&plan, &h.config, &avail, links);
    same_rings(&plan, &model)?;
    h.ha_step(0, &mut model);
    let service_ids: Vec<u32> = plan.services.iter().map(|s| s.info.id).collect();
    let backend_ids: Vec<u32> = plan.backends.keys().copied().collect();
    let cpus = online_cpus().min(2);
    let mut generator = Gen {
        rng: Rng(seed),
        ports: match tables {
            Tables::Roomy => CLIENT_PORTS,
            Tables::Overflowing => 8 * 1024,
        },
    };
    let mut evictions = 0u64;
    for i in 0..frames {
        if i > 0 && i % REPLAN_EVERY == 0 {
            let (plan, avail) = h.program(churn(i / REPLAN_EVERY));
            model.program(&plan, &h.config, &avail);
            same_rings(&plan, &model)?;
            h.ha_step(i / REPLAN_EVERY, &mut model);
        }
        if i % CPU_TURN == 0 {
            model.cpu = (i / CPU_TURN) as usize % cpus;
            xdplb_tests::pin_to_cpu(model.cpu);
        }
        // The daemon's refill of the half-open budget (every second): new
        // connections start in `FLOWS` for a while after each, then (the
        // generator's SYNs mostly go unanswered) in `EMBRYOS`. The model
        // predicts the same either way.
        if i % HALF_OPEN_REFILL == 0 {
            bpf::HalfOpen::new(&h.ebpf).unwrap().tick();
        }
        let frame = generator.next(&model);
        if tables == Tables::Overflowing {
            for (t, flow) in model.consulted(&frame) {
                if model.holds(&t, flow) && !h.holds(&t, flow) {
                    model.evicted(&t, flow);
                    evictions += 1;
                }
            }
        }
        // Frames come in where their senders are (a backend's MAC on the
        // backends' link), now and then on the other link (a forged reply).
        let from_backend = frame.len() >= 12 && frame[6..11] == backend_mac(0)[..5];
        let wrong_link = generator.rng.chance(3);
        let ingress = if from_backend != wrong_link {
            links.fxc
        } else {
            links.fxa
        };
        // A forger on the other link addresses the LB's MAC there.
        let mut frame = frame;
        if wrong_link
            && frame.len() >= 6
            && [LB_CLIENT_MAC, LB_BACKEND_MAC].contains(&frame[0..6].try_into().unwrap())
        {
            let own = if ingress == links.fxc {
                LB_BACKEND_MAC
            } else {
                LB_CLIENT_MAC
            };
            frame[0..6].copy_from_slice(&own);
        }
        let before = model.explain_claim(&frame);
        let want = model.predict(&frame, ingress);
        let (code, out) = h.run(&frame, ingress);
        let fail = |why: String| {
            Err(format!(
                "frame {i} (seed {seed:#x}): {why}\n  input  {}\n  output {}\n  expected {want:?}\n  the model's entries before:{before}",
                hex(&frame),
                hex(&out)
            ))
        };
        let Some(action) = Action::from_code(code) else {
            return fail(format!("verdict {code} (XDP_ABORTED or unknown)"));
        };
        if action != want.action {
            return fail(format!("verdict {action:?}, want {:?}", want.action));
        }
        if let Some(why) = check_output(&frame, &want.output, &out) {
            return fail(why);
        }
        model.learn_cookie(&want.output, &out);
        if (i + 1) % BATCH == 0 || i + 1 == frames {
            let snap = h.counters.snapshot(&service_ids, &backend_ids).unwrap();
            for r in Reason::ALL {
                let want = model.counts.reasons.get(r.label()).copied().unwrap_or(0);
                if snap.reason(*r) != want {
                    return Err(format!(
                        "after frame {i} (seed {seed:#x}): counter {} is {}, the model says {want}",
                        r.label(),
                        snap.reason(*r)
                    ));
                }
            }
            for (kind, got, want) in [
                ("service", &snap.services, &model.counts.services),
                ("backend", &snap.backends, &model.counts.backends),
            ] {
                for (id, t) in got {
                    let w = want.get(id).copied().unwrap_or_default();
                    // Which table a connection started in (the half-open
                    // budget) is not the model's to say (the fixtures
                    // check it); only that spills are new connections.
                    if t.half_open_spilled > t.connections {
                        return Err(format!(
                            "after frame {i} (seed {seed:#x}): {kind} {id}: {} connections spilled of {}",
                            t.half_open_spilled, t.connections
                        ));
                    }
                    let t = &lb_common::Traffic {
                        half_open_spilled: 0,
                        ..*t
                    };
                    if *t != w {
                        return Err(format!(
                            "after frame {i} (seed {seed:#x}): {kind} {id} counters {t:?}, the model says {w:?}"
                        ));
                    }
                }
            }
        }
    }
    let mut tally = model.counts.reasons.clone();
    tally.insert("(evictions)", evictions);
    tally.insert("(least_conn_second)", model.counts.least_conn_second);
    // The CPUs that forwarded (each keeps its own cursor and counters).
    let per_cpu = h.counters.reason_by_cpu(Reason::FwdNat).unwrap();
    tally.insert("(cpus)", per_cpu.iter().filter(|n| **n > 0).count() as u64);
    // The connection signals the counters carry, summed over backends.
    let sum = |f: fn(&lb_common::Traffic) -> u64| model.counts.backends.values().map(f).sum();
    tally.insert("(connections)", sum(|t| t.connections));
    tally.insert("(syn_retransmits)", sum(|t| t.syn_retransmits));
    tally.insert("(refused)", sum(|t| t.refused));
    tally.insert("(redispatched)", sum(|t| t.redispatched));
    tally.insert("(midstream)", sum(|t| t.midstream));
    Ok(tally)
}

/// CPUs online (not this thread's affinity: the harness pins it).
fn online_cpus() -> usize {
    // SAFETY: no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize
}

/// The planner's rings are the oracle's (the model schedules with the
/// oracle's).
fn same_rings(plan: &Plan, model: &Model) -> Result<(), String> {
    let rings = model.rings();
    for s in &plan.services {
        if rings.get(&s.info.id) != Some(&s.ring) {
            let differ = rings
                .get(&s.info.id)
                .map(|r| (0..r.len().max(s.ring.len())).find(|i| r.get(*i) != s.ring.get(*i)));
            return Err(format!(
                "service {}: the planner's ring ({} slots) is not the oracle's ({:?} slots), first difference at slot {differ:?}",
                s.name,
                s.ring.len(),
                rings.get(&s.info.id).map(Vec::len)
            ));
        }
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

#[test]
fn fuzz_data_path_against_the_model() {
    if !require_root("fuzz_data_path_against_the_model") {
        return;
    }
    let seed = env_u64("XDPLB_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let frames = env_u64("XDPLB_FUZZ_FRAMES").unwrap_or(DEFAULT_FRAMES);
    eprintln!(
        "fuzz: seed {seed:#x}, {frames} frames (replay: XDPLB_FUZZ_SEED={seed:#x} cargo xtask test -- --test fuzz)"
    );
    let began = Instant::now();
    let tally =
        fuzz(seed, frames, TestFault::None, Tables::Roomy).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "fuzz: {frames} frames in {:.1?}, all as the model predicted: {tally:?}",
        began.elapsed()
    );
    let cpus = online_cpus().min(2) as u64;
    assert!(
        tally["(cpus)"] == cpus || frames < 2 * CPU_TURN,
        "frames ran on {} of {cpus} CPUs",
        tally["(cpus)"]
    );
    // The generator reached every verdict the program has, and every
    // connection signal.
    let signals = [
        "(least_conn_second)",
        "(connections)",
        "(syn_retransmits)",
        "(refused)",
        "(redispatched)",
        "(midstream)",
    ];
    // Rate limits depend on the clock, which the model does not have: the
    // fuzz config has none, and the fixture rows cover both verdicts.
    let untimed = [
        Reason::DropRateClient.label(),
        Reason::DropRateService.label(),
    ];
    let reasons = Reason::ALL
        .iter()
        .map(|r| r.label())
        .filter(|l| !untimed.contains(l));
    for label in reasons.chain(signals) {
        assert!(
            tally.get(label).copied().unwrap_or(0) > 0 || frames < 100_000,
            "no frame ended as {label} in {frames} frames (seed {seed:#x})"
        );
    }
}

/// The test can fail: with NAT's port checksum update planted out of the
/// program, the checksum invariant trips.
#[test]
fn fuzz_catches_a_planted_checksum_bug() {
    if !require_root("fuzz_catches_a_planted_checksum_bug") {
        return;
    }
    let err = fuzz(0x5eed, 50_000, TestFault::NatPortChecksum, Tables::Roomy)
        .expect_err("a program that skips part of the NAT checksum update passed the fuzz test");
    eprintln!(
        "fuzz (planted bug): caught as expected: {}",
        err.lines().next().unwrap()
    );
    assert!(err.contains("L4 checksum residual"), "{err}");
}

/// Tables far smaller than the flows a run makes: the kernel evicts, the
/// model forgets what was evicted (read from the maps) and predicts the
/// rest exactly; evictions must have happened, and the verdicts of a full
/// table (mid-connection pickups, replies with no entry) with them.
#[test]
fn fuzz_with_overflowing_tables() {
    if !require_root("fuzz_with_overflowing_tables") {
        return;
    }
    let seed = env_u64("XDPLB_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let frames = env_u64("XDPLB_FUZZ_FRAMES").map_or(OVERFLOW_FRAMES, |f| f.min(OVERFLOW_FRAMES));
    eprintln!(
        "fuzz (overflowing tables): seed {seed:#x}, {frames} frames (replay: XDPLB_FUZZ_SEED={seed:#x} cargo xtask test -- --test fuzz fuzz_with_overflowing_tables)"
    );
    let tally =
        fuzz(seed, frames, TestFault::None, Tables::Overflowing).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("fuzz (overflowing tables): all as the model predicted: {tally:?}");
    assert!(
        tally.get("(evictions)").copied().unwrap_or(0) > 100,
        "the tables never overflowed: {tally:?}"
    );
    assert!(
        tally.get("(midstream)").copied().unwrap_or(0) > 0,
        "{tally:?}"
    );
}

/// Frames of the overflowing-tables run (it reads the maps for every
/// frame, so it is shorter).
const OVERFLOW_FRAMES: u64 = 200_000;
