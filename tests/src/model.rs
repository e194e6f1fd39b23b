//! A reference model of the XDP program, for the fuzz test: given a frame and
//! the state the program has built so far (flows, NAT replies, round-robin
//! cursors), the verdict, the counted reason, and the frame it must emit.
//!
//! It is written from the README's verdict list and the RFCs, in plain Rust
//! over byte slices, sharing nothing with `lb-ebpf`, the planner or
//! `lb-common`'s hashes: the rings, hashes and firewall lists are the
//! oracles' ([`crate::oracle`], built from the config), only backend and
//! service ids and the backends' map entries come from the plan. The FIB is
//! the lab's ([`crate::fib_lab`]), written down here.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    rc::Rc,
};

use lb_common::{
    BACKEND_F_ACTIVE, BACKEND_F_NEW_CONNECTIONS, RING_SIZE, Reason, SETTINGS_F_HA, Settings,
    Traffic, VIP_F_DROP_UNSERVED, VIP_F_HA,
};
use xdplb::{
    config::{Config, ForwardingKind, SchedulerKind, ServiceConfig, WhenEmpty},
    plan::{Availability, BackendRef, Plan},
};

use crate::{
    CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, SMALL_MTU, backend_mac, oracle, wire,
};

/// XDP verdicts as the kernel numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Action {
    pub fn from_code(c: u32) -> Option<Action> {
        Some(match c {
            1 => Action::Drop,
            2 => Action::Pass,
            3 => Action::Tx,
            4 => Action::Redirect,
            _ => return None,
        })
    }
}

/// What the program must emit for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Byte for byte the input.
    Unchanged,
    /// Exactly these bytes (an ICMP the program built).
    Exact(Vec<u8>),
    /// A forwarded (or translated-then-passed) IPv4 TCP/UDP frame: equal to
    /// `frame` in every byte except the IPv4 and L4 checksum fields, whose
    /// "damage" (residual) must equal the input's; a zero UDP checksum stays
    /// zero.
    Rewritten(Vec<u8>),
    /// The named exception for PASS: a packet handed to the kernel for
    /// neighbour resolution carries this XDP metadata in front of it (the
    /// frame itself as the inner output says).
    Meta(Vec<u8>, Box<Output>),
    /// A SYN-cookie SYN-ACK: these bytes but the sequence number (the
    /// kernel's keyed hash) and the TCP checksum, which must be right.
    CookieSynAck(Vec<u8>),
    /// Any one of these (a cookie made in the previous minute is found by
    /// none of the MSS values tried, and the smallest is sent).
    OneOf(Vec<Output>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub action: Action,
    pub reason: Reason,
    pub output: Output,
}

impl Expect {
    fn same(action: Action, reason: Reason) -> Expect {
        Expect {
            action,
            reason,
            output: Output::Unchanged,
        }
    }
}

/// A flow as the program keys it: source, destination, ports, protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

#[derive(Debug, Clone)]
struct Service {
    id: u32,
    nat: bool,
    /// SYN cookies always on (the fuzz config's threshold is 0).
    cookies: bool,
    scheduler: SchedulerKind,
    pass_when_empty: bool,
    redispatch: bool,
    /// Its configuration (its lists, for the firewall oracle).
    config: Rc<ServiceConfig>,
    /// It has allow/deny entries; with an allow list, unlisted is refused.
    acl: bool,
    allow_only: bool,
    /// Backend ids per slot, as the oracle builds the ring.
    ring: Rc<Vec<u32>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct BackendEntry {
    addr: [u8; 4],
    port: u16,
    weight: u16,
    /// Its pinned flows stay.
    active: bool,
    /// It takes new connections.
    new: bool,
}

#[derive(Debug, Clone, Copy)]
struct NatReply {
    vip: [u8; 4],
    vport: u16,
    redispatch: bool,
    backend_id: u32,
    cookie: Option<Cookie>,
    /// Its flow was picked up mid-stream: replies prove or disown it.
    unverified: bool,
}

/// A connection opened by a SYN cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cookie {
    /// The backend has not answered the LB's SYN.
    pending: bool,
    /// The cookie while pending; then backend ISN minus cookie.
    value: u32,
    /// The client's MSS as its cookie encodes it.
    mss: u16,
}

/// A flow-table entry: where the flow is pinned and which TCP connection it
/// is (the README's connection rules).
#[derive(Debug, Clone, Copy)]
struct Flow {
    service_id: u32,
    backend_id: u32,
    /// ISN of the SYN that opened it, as read from the wire (with `syn`).
    syn_seq: u32,
    syn: bool,
    established: bool,
    replied: bool,
    closing: bool,
    refused: bool,
    redispatched: bool,
    /// least_conn counts it (its SYN opened it) until it closes.
    counted: bool,
    cookie: Option<Cookie>,
    /// NAT: picked up mid-stream, not yet proven by a reply; with the
    /// client's acknowledgement number (host order; 0: none seen).
    unverified: bool,
    pickup_ack: u32,
}

/// The lab FIB's answer for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    Found {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Out of this interface, to this next hop (on-link: the destination).
    NoNeighbour {
        ifindex: u32,
        next_hop: [u8; 4],
    },
    FragNeeded(u16),
    Failed,
}

/// Interface indexes of the lab's links, as the kernel numbered them.
#[derive(Debug, Clone, Copy)]
pub struct LabLinks {
    pub fxa: u32,
    pub fxc: u32,
}

/// [`crate::fib_lab`]: 198.51.100.0/24 on `fxa` (LB .1, client .2 resolved),
/// 203.0.113.0/24 on `fxc` (LB .1, backends .11-.14 resolved, .14 behind a
/// 1280-byte route, .50 blackholed); MTU 1500; no other routes. The kernel
/// checks route type, then MTU, then the neighbour.
fn fib(links: LabLinks, dst: [u8; 4], tot_len: u16) -> Hop {
    let (lb_mac, neighbour, mtu, ifindex) = match dst {
        [198, 51, 100, last] => {
            // Local and broadcast routes; the network address (.0) is an
            // ordinary on-link destination for the kernel.
            if last == 1 || last == 255 {
                return Hop::Failed;
            }
            (
                LB_CLIENT_MAC,
                (dst == CLIENT).then_some(CLIENT_MAC),
                1500,
                links.fxa,
            )
        }
        [203, 0, 113, last] => {
            if last == 1 || last == 255 || last == 50 {
                return Hop::Failed; // local, broadcast, blackhole
            }
            let mtu = if last == 14 { SMALL_MTU } else { 1500 };
            let resolved = (11..=14).contains(&last);
            (
                LB_BACKEND_MAC,
                resolved.then(|| backend_mac(last)),
                mtu,
                links.fxc,
            )
        }
        _ => return Hop::Failed,
    };
    if tot_len > mtu {
        return Hop::FragNeeded(mtu);
    }
    match neighbour {
        Some(dmac) => Hop::Found {
            ifindex,
            smac: lb_mac,
            dmac,
        },
        None => Hop::NoNeighbour {
            ifindex,
            next_hop: dst,
        },
    }
}

/// Counters the program keeps, as the model predicts them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub reasons: BTreeMap<&'static str, u64>,
    /// least_conn connections that went to their second candidate (it had
    /// fewer connections per weight): the counts decided.
    pub least_conn_second: u64,
    pub services: BTreeMap<u32, Traffic>,
    pub backends: BTreeMap<u32, Traffic>,
}

/// A NAT backend as its replies' source: address, port, protocol.
type BackendAddr = ([u8; 4], u16, u8);
/// The VIP, VIP port and backend id a backend's replies belong to.
type ReplyOwner = ([u8; 4], u16, u32);

pub struct Model {
    services: HashMap<([u8; 4], u16, u8), Service>,
    backends: BTreeMap<u32, BackendEntry>,
    flows: HashMap<Tuple, Flow>,
    nat: HashMap<Tuple, NatReply>,
    /// NAT reply tuples in the order their connections first made them
    /// (deterministic, unlike the map's iteration order), for the
    /// generator: with a reply entry or found by the flow entry.
    nat_order: Vec<Tuple>,
    nat_seen: HashSet<Tuple>,
    /// NAT backends (address, port, protocol) whose replies are found by
    /// the client's flow entry: -> (VIP, VIP port, backend id). From the
    /// config: one NAT service alone uses them (an owner stays, not sole,
    /// while a second one shares it and its id is still there).
    owners: HashMap<BackendAddr, ReplyOwner>,
    /// ... of which these are used by one NAT service alone (a new
    /// connection to them writes no reply entry, and is not checked for a
    /// client port in use).
    sole: HashSet<BackendAddr>,
    /// Round robin's cursors, one per (CPU, service).
    rr_cursor: HashMap<(usize, u32), u32>,
    /// least_conn's connection counts by backend id (`BACKEND_CONNS`).
    conns: HashMap<u32, u64>,
    /// The CPU the next frame runs on (round robin keeps a cursor per CPU).
    pub cpu: usize,
    /// The interface the frame being predicted arrived on.
    ingress: u32,
    /// Address -> `VIP_F_*`, as the `VIPS` map holds them.
    vips: HashMap<[u8; 4], u32>,
    /// The configuration, for the firewall oracle's global list.
    config: Rc<Config>,
    /// The `SETTINGS` the harness wrote (HA flag and lease).
    settings: Settings,
    links: LabLinks,
    pub counts: Counts,
    /// Cookies the program sent: (client flow, client ISN) -> cookie and
    /// the MSS it encodes, and the order they came in (for the generator).
    cookies: HashMap<(Tuple, u32), (u32, u16)>,
    /// The same by client flow: (ISN, cookie, MSS) of each SYN-ACK sent.
    cookies_by_flow: HashMap<Tuple, Vec<(u32, u32, u16)>>,
    cookie_order: Vec<(Tuple, u32)>,
    /// The SYN-ACK the last prediction expects: its flow, ISN, MSS.
    sent_syn_ack: Option<(Tuple, u32, u16)>,
}

/// Parsed fields of a frame the program acts on.
struct Pkt {
    t: Tuple,
    tcp_flags: u8,
    /// TCP sequence number as read from the wire (native-endian u32).
    seq: u32,
    df: bool,
    tot_len: u16,
}

impl Pkt {
    fn tcp(&self) -> bool {
        self.t.proto == wire::PROTO_TCP
    }
    /// A connection-opening SYN.
    fn syn(&self) -> bool {
        self.tcp() && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
    /// (established, closing) bits a client packet sets.
    fn client_bits(&self) -> (bool, bool) {
        let f = self.tcp_flags;
        (
            f & (TCP_ACK | TCP_SYN) == TCP_ACK,
            f & (TCP_FIN | TCP_RST) != 0,
        )
    }
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

impl Model {
    /// A model of a freshly loaded program serving `config` with the
    /// backends of `avail` out, whose maps hold `plan`, in the lab whose
    /// links are `links`.
    pub fn new(plan: &Plan, config: &Config, avail: &Availability, links: LabLinks) -> Model {
        let mut m = Model {
            services: HashMap::new(),
            backends: BTreeMap::new(),
            flows: HashMap::new(),
            nat: HashMap::new(),
            nat_order: Vec::new(),
            nat_seen: HashSet::new(),
            owners: HashMap::new(),
            sole: HashSet::new(),
            rr_cursor: HashMap::new(),
            conns: HashMap::new(),
            cpu: 0,
            ingress: 0,
            vips: HashMap::new(),
            config: Rc::new(config.clone()),
            settings: Settings::default(),
            links,
            counts: Counts::default(),
            cookies: HashMap::new(),
            cookies_by_flow: HashMap::new(),
            cookie_order: Vec::new(),
            sent_syn_ack: None,
        };
        m.program(plan, config, avail);
        m
    }

    /// New map contents (a re-plan of `config` with `avail`'s backends
    /// out); flows, NAT state, cursors and counts stay. Services and rings
    /// come from the config through the oracles; the plan gives ids.
    pub fn program(&mut self, plan: &Plan, config: &Config, avail: &Availability) {
        self.config = Rc::new(config.clone());
        self.services = config
            .services
            .iter()
            .map(|c| {
                let key = c.key();
                let id = plan
                    .services
                    .iter()
                    .find(|s| s.key == key)
                    .map(|s| s.info.id)
                    .expect("every configured service is planned");
                let out = |a: Ipv4Addr, p: u16| {
                    let r = BackendRef::new(key, a, p);
                    avail.down.contains(&r) || avail.held.contains(&r)
                };
                let ring: Vec<u32> = oracle::ring(c, out, RING_SIZE)
                    .into_iter()
                    .map(|i| {
                        let b = &c.backends[i as usize];
                        plan.backend_id(&BackendRef::new(key, b.address, b.port))
                            .expect("every configured backend has an id")
                    })
                    .collect();
                let nat = c.forwarding == ForwardingKind::Nat;
                let tcp = c.protocol == xdplb::config::Protocol::Tcp;
                // Cookies under a threshold depend on the clock, which the
                // model does not have: only "always" (0) is modelled.
                assert!(
                    c.syn_cookie_threshold.is_none_or(|t| t == 0),
                    "{}: the model knows only syn_cookie_threshold = 0",
                    c.name
                );
                assert!(
                    c.rate_limit.is_none(),
                    "{}: rate limits depend on the clock, which the model does not have",
                    c.name
                );
                let svc = Service {
                    id,
                    nat,
                    cookies: nat && tcp && c.syn_cookie_threshold.is_some(),
                    scheduler: c.scheduler,
                    pass_when_empty: c.when_empty == WhenEmpty::Pass,
                    redispatch: nat && tcp && c.redispatches(),
                    config: Rc::new(c.clone()),
                    acl: !c.allow.is_empty() || !c.deny.is_empty(),
                    allow_only: !c.allow.is_empty(),
                    ring: Rc::new(ring),
                };
                ((c.vip.octets(), c.port, c.protocol.number()), svc)
            })
            .collect();
        self.backends = plan
            .backends
            .iter()
            .map(|(id, b)| {
                (
                    *id,
                    BackendEntry {
                        addr: u32::from_be(b.addr_be).to_be_bytes(),
                        port: u16::from_be(b.port_be),
                        weight: b.weight,
                        active: b.flags & BACKEND_F_ACTIVE != 0,
                        new: b.flags & BACKEND_F_NEW_CONNECTIONS != 0,
                    },
                )
            })
            .collect();
        self.vips = plan
            .vips
            .iter()
            .map(|(a, v)| (u32::from_be(*a).to_be_bytes(), v.flags))
            .collect();
        // Reply owners: counted from the config, ids from the plan.
        let mut users: HashMap<BackendAddr, Vec<ReplyOwner>> = HashMap::new();
        for c in config
            .services
            .iter()
            .filter(|c| c.forwarding == ForwardingKind::Nat)
        {
            for b in &c.backends {
                let id = plan
                    .backend_id(&BackendRef::new(c.key(), b.address, b.port))
                    .expect("every configured backend has an id");
                users
                    .entry((b.address.octets(), b.port, c.protocol.number()))
                    .or_default()
                    .push((c.vip.octets(), c.port, id));
            }
        }
        let previous = std::mem::take(&mut self.owners);
        self.sole.clear();
        for (key, us) in users {
            if let [only] = us.as_slice() {
                self.owners.insert(key, *only);
                self.sole.insert(key);
            } else if let Some(prev) = previous.get(&key).filter(|p| us.contains(p)) {
                self.owners.insert(key, *prev);
            }
        }
    }

    /// How a reply `t` (backend -> client) is translated: by the client's
    /// flow entry when its backend has an owner and the flow is on it (not
    /// a SYN-cookie or unverified one), else by its reply entry.
    fn reply_of(&self, t: &Tuple) -> Option<NatReply> {
        self.by_flow(t).or_else(|| self.nat.get(t).copied())
    }

    fn by_flow(&self, t: &Tuple) -> Option<NatReply> {
        let (vip, vport, bid) = *self.owners.get(&(t.src, t.sport, t.proto))?;
        let svc = self.services.get(&(vip, vport, t.proto))?;
        let client = Tuple {
            src: t.dst,
            dst: vip,
            sport: t.dport,
            dport: vport,
            proto: t.proto,
        };
        let fl = self.flows.get(&client)?;
        (fl.backend_id == bid && fl.cookie.is_none() && !fl.unverified).then_some(NatReply {
            vip,
            vport,
            redispatch: svc.redispatch,
            backend_id: bid,
            cookie: None,
            unverified: false,
        })
    }

    /// Whether backend `b` of a NAT service with protocol `proto` is that
    /// service's alone.
    fn sole(&self, b: &BackendEntry, proto: u8) -> bool {
        self.sole.contains(&(b.addr, b.port, proto))
    }

    /// Note a NAT reply tuple for the generator.
    fn note_reply(&mut self, reply: Tuple) {
        if self.nat_seen.insert(reply) {
            self.nat_order.push(reply);
        }
    }

    /// The rings the model schedules with (the oracle's), by service id,
    /// for the harness to compare with the planner's.
    pub fn rings(&self) -> BTreeMap<u32, Vec<u32>> {
        self.services
            .values()
            .map(|s| (s.id, s.ring.to_vec()))
            .collect()
    }

    /// The firewall's verdict for `src`: the global list (`service` None),
    /// or the service's lists (the oracle's reading of the config).
    fn acl_match(&self, service: Option<&Service>, src: [u8; 4]) -> Option<u8> {
        oracle::acl(&self.config, service.map(|s| &*s.config), src)
    }

    /// An address's `VIP_F_*` flags, as the harness overwrote them after a
    /// plan (to add `VIP_F_HA`).
    pub fn set_vip(&mut self, addr: [u8; 4], flags: u32) {
        self.vips.insert(addr, flags);
    }

    /// `SETTINGS` as the harness wrote them. A lease of 0 has expired, one
    /// of `u64::MAX` never does: the model has no clock.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The ISN (as on the wire) of the SYN that opened `t`'s flow, if known:
    /// the generator re-sends it to exercise retransmissions.
    pub fn syn_seq(&self, t: &Tuple) -> Option<u32> {
        self.flows.get(t).filter(|f| f.syn).map(|f| f.syn_seq)
    }

    /// Entries `frame` may consult, as (tuple, is a flow entry): its own
    /// 5-tuple as a flow and as a reply, the client flow of the reply entry
    /// it finds, and the flow an ICMP error quotes. Read at fixed offsets,
    /// whatever the frame's damage: a tuple named needlessly costs a lookup.
    pub fn consulted(&self, frame: &[u8]) -> Vec<(Tuple, bool)> {
        let mut out = Vec::new();
        let at = |off: usize| -> Option<Tuple> {
            let ip = frame.get(off..off + 20)?;
            let l4 = frame.get(off + 20..off + 24)?;
            Some(Tuple {
                src: ip[12..16].try_into().ok()?,
                dst: ip[16..20].try_into().ok()?,
                sport: be16(l4, 0),
                dport: be16(l4, 2),
                proto: ip[9],
            })
        };
        if let Some(t) = at(wire::IP_OFF) {
            out.push((t, true));
            out.push((t, false));
            // A NAT SYN: every backend's reply entry towards this client
            // port, and the flow each names (`tuple_taken`).
            if self
                .services
                .get(&(t.dst, t.dport, t.proto))
                .is_some_and(|s| s.nat)
            {
                for b in self.backends.values() {
                    let reply = Tuple {
                        src: b.addr,
                        dst: t.src,
                        sport: b.port,
                        dport: t.sport,
                        proto: t.proto,
                    };
                    out.push((reply, false));
                    if let Some(rev) = self.nat.get(&reply) {
                        out.push((
                            Tuple {
                                src: t.src,
                                dst: rev.vip,
                                sport: t.sport,
                                dport: rev.vport,
                                proto: t.proto,
                            },
                            true,
                        ));
                    }
                }
            }
            if let Some(rev) = self.nat.get(&t) {
                let client = Tuple {
                    src: t.dst,
                    dst: rev.vip,
                    sport: t.dport,
                    dport: rev.vport,
                    proto: t.proto,
                };
                out.push((client, true));
            }
            // ... or the client flow its backend's owner names.
            if let Some((vip, vport, _)) = self.owners.get(&(t.src, t.sport, t.proto)) {
                out.push((
                    Tuple {
                        src: t.dst,
                        dst: *vip,
                        sport: t.dport,
                        dport: *vport,
                        proto: t.proto,
                    },
                    true,
                ));
            }
        }
        // An ICMP error's quote (from the VIP to the client), reversed: the
        // client's flow ...
        if let Some(q) = at(wire::L4_OFF + 8) {
            let key = Tuple {
                src: q.dst,
                dst: q.src,
                sport: q.dport,
                dport: q.sport,
                proto: q.proto,
            };
            out.push((key, true));
            // ... or (from the client to a backend) the reply entry it names,
            // or the client flow its backend's owner names.
            out.push((key, false));
            if let Some((vip, vport, _)) = self.owners.get(&(key.src, key.sport, key.proto)) {
                out.push((
                    Tuple {
                        src: key.dst,
                        dst: *vip,
                        sport: key.dport,
                        dport: *vport,
                        proto: key.proto,
                    },
                    true,
                ));
            }
        }
        out
    }

    /// For a failure message: the reply entries towards this frame's
    /// client port and the flows they name (what `tuple_taken` looks at).
    pub fn explain_claim(&self, frame: &[u8]) -> String {
        let mut out = String::new();
        for (reply, flow) in self.consulted(frame) {
            if flow {
                out += &format!("\n  flow {reply:?}: {:?}", self.flows.get(&reply));
            } else if let Some(r) = self.nat.get(&reply) {
                out += &format!("\n  reply {reply:?}: {r:?}");
            }
        }
        out
    }

    /// The table evicted `t`'s entry (a flow, or a reply entry): forget it
    /// as the program has. An evicted flow never closes, so it stays in
    /// least_conn's count, as in the program's.
    pub fn evicted(&mut self, t: &Tuple, flow: bool) {
        if flow {
            self.flows.remove(t);
        } else {
            self.nat.remove(t);
        }
    }

    /// Whether the model holds an entry for `t` (a flow, or a reply entry).
    pub fn holds(&self, t: &Tuple, flow: bool) -> bool {
        if flow {
            self.flows.contains_key(t)
        } else {
            self.nat.contains_key(t)
        }
    }

    /// Reply tuples of NAT flows, oldest first (a reply to one of them is
    /// translated), for the generator.
    pub fn nat_replies(&self) -> &[Tuple] {
        &self.nat_order
    }

    /// The verdict for `frame`, updating the model's state and counters as
    /// the program would.
    /// The verdict for `frame` arriving on interface `ingress`, updating
    /// the model's state and counters as the program would.
    pub fn predict(&mut self, frame: &[u8], ingress: u32) -> Expect {
        self.ingress = ingress;
        let e = self.decide(frame);
        *self.counts.reasons.entry(e.reason.label()).or_insert(0) += 1;
        e
    }

    fn decide(&mut self, f: &[u8]) -> Expect {
        use Action::*;
        if f.len() < 14 {
            return Expect::same(Drop, Reason::DropTruncated);
        }
        // Another host's unicast frame is the kernel's (the harness set
        // the lab interfaces' MACs), unless the HA node accepts its MAC.
        let dst: [u8; 6] = f[0..6].try_into().unwrap();
        let own = if self.ingress == self.links.fxc {
            LB_BACKEND_MAC
        } else {
            LB_CLIENT_MAC
        };
        let accepted = &self.settings.accept_macs
            [..(self.settings.accept_count as usize).min(lb_common::MAX_ACCEPT_MACS)];
        if dst[0] & 1 == 0 && dst != own && !accepted.contains(&dst) {
            return Expect::same(Pass, Reason::PassOtherHost);
        }
        if be16(f, 12) == 0x0806 && f.len() >= 14 + 28 && f[14..22] == [0, 1, 8, 0, 6, 4, 0, 1] {
            return self.arp_request(f[38..42].try_into().unwrap());
        }
        if be16(f, 12) != 0x0800 {
            return Expect::same(Pass, Reason::PassNotIpv4);
        }
        if f.len() < 34 {
            return Expect::same(Drop, Reason::DropTruncated);
        }
        let ip = &f[14..];
        let (version, ihl) = (ip[0] >> 4, (ip[0] & 0x0f) as usize);
        let tot_len = be16(ip, 2);
        if version != 4 || ihl < 5 || (tot_len as usize) < ihl * 4 {
            return Expect::same(Drop, Reason::DropBadIpHeader);
        }
        if 14 + tot_len as usize > f.len() {
            return Expect::same(Drop, Reason::DropTruncated);
        }
        // The global deny list, before anything else.
        if self
            .acl_match(None, ip[12..16].try_into().unwrap())
            .is_some()
        {
            return Expect::same(Drop, Reason::DropDeniedGlobal);
        }
        let frag = be16(ip, 6);
        let ip_dst: [u8; 4] = ip[16..20].try_into().unwrap();
        if frag & 0x3fff != 0 {
            return self.host(Reason::PassFragment, ip_dst, ip[9]);
        }
        if ihl != 5 {
            return self.host(Reason::PassIpOptions, ip_dst, ip[9]);
        }
        // The program's address filter: neither to a possible VIP nor from a
        // possible backend is the host's, whatever its L4 header says.
        let ip_src: [u8; 4] = ip[12..16].try_into().unwrap();
        if !self.may_be(lb_common::FILTER_VIPS, ip_dst)
            && !self.may_be(lb_common::FILTER_BACKENDS, ip_src)
            && !self.quotes_a_backend(f, tot_len)
        {
            return Expect::same(Pass, Reason::PassNotService);
        }
        let l4_len = tot_len as usize - 20;
        let proto = ip[9];
        let l4 = &f[34..];
        let mut seq = 0;
        let tcp_flags = match proto {
            wire::PROTO_TCP => {
                if l4_len < 20 {
                    return Expect::same(Drop, Reason::DropTruncated);
                }
                let doff = (l4[12] >> 4) as usize * 4;
                if doff < 20 {
                    return Expect::same(Drop, Reason::DropBadL4Header);
                }
                if doff > l4_len {
                    return Expect::same(Drop, Reason::DropTruncated);
                }
                seq = u32::from_ne_bytes(l4[4..8].try_into().unwrap());
                l4[13]
            }
            wire::PROTO_UDP => {
                if l4_len < 8 {
                    return Expect::same(Drop, Reason::DropTruncated);
                }
                let ulen = be16(l4, 4) as usize;
                if ulen < 8 {
                    return Expect::same(Drop, Reason::DropBadL4Header);
                }
                if ulen > l4_len {
                    return Expect::same(Drop, Reason::DropTruncated);
                }
                0
            }
            // An ICMP error quoting a TCP/UDP header: relayed to the backend
            // of the balanced flow it is about, if any.
            1 if l4_len >= 36
                && (l4[0] == 3 || l4[0] == 11)
                && l4[8] == 0x45
                && (l4[17] == 6 || l4[17] == 17) =>
            {
                if let Some(e) = self.relay(f, ip_dst, tot_len, frag & 0x4000 != 0) {
                    return e;
                }
                if let Some(e) = self.relay_to_client(f, ip_dst, tot_len, frag & 0x4000 != 0) {
                    return e;
                }
                return self.host(Reason::PassNotService, ip_dst, proto);
            }
            // An echo request to a VIP is answered.
            1 if l4_len >= 8 && l4[0] == 8 && l4[1] == 0 && self.vips.contains_key(&ip_dst) => {
                if wire::ipv4_residual(f) != 0xffff {
                    return Expect::same(Drop, Reason::DropBadIpChecksum);
                }
                return Expect {
                    action: Action::Tx,
                    reason: Reason::TxIcmpEchoReply,
                    output: Output::Exact(wire::icmp_echo_reply(f)),
                };
            }
            _ => return self.host(Reason::PassNotService, ip_dst, proto),
        };
        let p = Pkt {
            t: Tuple {
                src: ip[12..16].try_into().unwrap(),
                dst: ip[16..20].try_into().unwrap(),
                sport: be16(l4, 0),
                dport: be16(l4, 2),
                proto,
            },
            tcp_flags,
            seq,
            df: frag & 0x4000 != 0,
            tot_len,
        };
        let ip_ok = wire::ipv4_residual(f) == 0xffff;
        if let Some(svc) = self.services.get(&(p.t.dst, p.t.dport, proto)).cloned() {
            if !ip_ok {
                return Expect::same(Drop, Reason::DropBadIpChecksum);
            }
            if svc.acl {
                match self.acl_match(Some(&svc), p.t.src) {
                    Some(lb_common::ACL_DENY) => return Expect::same(Drop, Reason::DropDenied),
                    None if svc.allow_only => return Expect::same(Drop, Reason::DropNotAllowed),
                    _ => {}
                }
            }
            // NAT routes: TTL running out here is answered.
            if svc.nat && ip[8] <= 1 {
                return time_exceeded(f);
            }
            if svc.cookies
                && p.tcp()
                && let Some(e) = self.cookie_client(f, &p, &svc)
            {
                return e;
            }
            return self.client_packet(f, &p, &svc);
        }
        if let Some(rev) = self.reply_of(&p.t) {
            // A reply is taken only from where its backend is: in on the
            // interface the way to it goes out of, from its next hop's MAC.
            if !self.came_from_backend(f, p.t.src) {
                return Expect::same(Drop, Reason::DropSpoofedReply);
            }
            if !ip_ok {
                return Expect::same(Drop, Reason::DropBadIpChecksum);
            }
            if ip[8] <= 1 {
                return time_exceeded(f);
            }
            if rev.unverified && self.pickup_disowned(f, &p, &rev) {
                return Expect::same(Drop, Reason::DropPickupRefused);
            }
            if let Some(c) = rev.cookie
                && (c.pending || p.tcp_flags & TCP_SYN != 0)
            {
                return self.cookie_backend(f, &p, rev, c);
            }
            if self.track_reply(f, &p, &rev) {
                return Expect::same(Drop, Reason::DropRstRedispatch);
            }
            return self.reverse(f, &p, rev);
        }
        self.host(Reason::PassNotService, p.t.dst, proto)
    }

    /// A reply `p` (frame `f`) to a flow picked up mid-stream: whether its
    /// backend disowns the flow (a RST without ACK, or a sequence number
    /// outside the window after the client's acknowledgement); a reply that
    /// proves it clears the marks.
    fn pickup_disowned(&mut self, f: &[u8], p: &Pkt, rev: &NatReply) -> bool {
        if !p.tcp() || p.tcp_flags & TCP_SYN != 0 {
            return false;
        }
        let client = Tuple {
            src: p.t.dst,
            dst: rev.vip,
            sport: p.t.dport,
            dport: rev.vport,
            proto: p.t.proto,
        };
        let Some(fl) = self.flows.get(&client).copied() else {
            return false;
        };
        if fl.backend_id != rev.backend_id || !(fl.unverified && fl.cookie.is_none()) {
            self.nat.get_mut(&p.t).unwrap().unverified = false;
            return false;
        }
        let bare_rst = p.tcp_flags & (TCP_RST | TCP_ACK) == TCP_RST;
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        let far = fl.pickup_ack != 0 && seq.wrapping_sub(fl.pickup_ack) >= lb_common::PICKUP_WINDOW;
        if bare_rst || far {
            self.flows.get_mut(&client).unwrap().refused = true;
            return true;
        }
        if fl.pickup_ack == 0 && p.tcp_flags & TCP_RST != 0 {
            return false;
        }
        let e = self.flows.get_mut(&client).unwrap();
        e.unverified = false;
        e.pickup_ack = 0;
        self.nat.get_mut(&p.t).unwrap().unverified = false;
        false
    }

    /// An ICMP error `f` to `dst` about the flow its quote names: relayed
    /// to that flow's backend (NAT: translated), or `None` (the kernel's).
    fn relay(&mut self, f: &[u8], dst: [u8; 4], tot_len: u16, df: bool) -> Option<Expect> {
        if !self.vips.contains_key(&dst) {
            return None;
        }
        let q = &f[wire::L4_OFF + 8..];
        let key = Tuple {
            src: q[16..20].try_into().unwrap(),
            dst: q[12..16].try_into().unwrap(),
            sport: be16(q, 22),
            dport: be16(q, 20),
            proto: q[9],
        };
        let flow = *self.flows.get(&key)?;
        let svc = self.services.get(&(key.dst, key.dport, key.proto))?.clone();
        if svc.id != flow.service_id || key.dst != dst {
            return None;
        }
        let b = self.active(flow.backend_id)?;
        if wire::ipv4_residual(f) != 0xffff {
            return Some(Expect::same(Action::Drop, Reason::DropBadIpChecksum));
        }
        if svc.nat && f[wire::IP_OFF + 8] <= 1 {
            return Some(Expect::same(Action::Drop, Reason::DropTtlExceeded));
        }
        let p = Pkt {
            t: key,
            tcp_flags: 0,
            seq: 0,
            df,
            tot_len,
        };
        let hop = fib(self.links, b.addr, tot_len);
        if let Hop::FragNeeded(_) = hop {
            // No ICMP error about an ICMP error.
            return Some(Expect::same(Action::Drop, Reason::DropTooBig));
        }
        Some(
            self.deliver(f, &p, hop, Reason::FwdIcmpToBackend, |_, out| {
                if svc.nat {
                    relay_translate(out, &b);
                }
            }),
        )
    }

    /// Whether `f` (an IPv4 frame of `tot_len`) is an ICMP error quoting a
    /// packet to a possible backend: the address filter lets it in.
    fn quotes_a_backend(&self, f: &[u8], tot_len: u16) -> bool {
        let l4 = &f[wire::L4_OFF..];
        f[wire::IP_OFF + 9] == 1
            && tot_len as usize >= 20 + 8 + 28
            && (l4[0] == 3 || l4[0] == 11)
            && self.may_be(
                lb_common::FILTER_BACKENDS,
                l4[8 + 16..8 + 20].try_into().unwrap(),
            )
    }

    /// An ICMP error `f` to `dst` from the backend side about a NAT flow
    /// (its quote: client -> backend): relayed to the client with the quote
    /// translated back to the VIP, or `None` (the kernel's).
    fn relay_to_client(
        &mut self,
        f: &[u8],
        dst: [u8; 4],
        tot_len: u16,
        df: bool,
    ) -> Option<Expect> {
        let q = &f[wire::L4_OFF + 8..];
        let key = Tuple {
            src: q[16..20].try_into().unwrap(),
            dst: q[12..16].try_into().unwrap(),
            sport: be16(q, 22),
            dport: be16(q, 20),
            proto: q[9],
        };
        if key.dst != dst {
            return None;
        }
        let rev = self.reply_of(&key)?;
        if !self.came_from_backend(f, key.src) {
            return Some(Expect::same(Action::Drop, Reason::DropSpoofedReply));
        }
        if wire::ipv4_residual(f) != 0xffff {
            return Some(Expect::same(Action::Drop, Reason::DropBadIpChecksum));
        }
        if f[wire::IP_OFF + 8] <= 1 {
            return Some(Expect::same(Action::Drop, Reason::DropTtlExceeded));
        }
        let p = Pkt {
            t: key,
            tcp_flags: 0,
            seq: 0,
            df,
            tot_len,
        };
        let hop = fib(self.links, dst, tot_len);
        if let Hop::FragNeeded(_) = hop {
            return Some(Expect::same(Action::Drop, Reason::DropTooBig));
        }
        Some(self.deliver(f, &p, hop, Reason::FwdIcmpToClient, |_, out| {
            relay_to_client_translate(out, rev.vip, rev.vport);
        }))
    }

    /// Whether `addr`'s bit is set in the address filter's `set`, as the
    /// daemon fills it: every VIP (set 0), every backend address (set 1).
    fn may_be(&self, set: u32, addr: [u8; 4]) -> bool {
        let (word, bit) = lb_common::addr_filter_bit(set, u32::from_ne_bytes(addr));
        let addrs: Vec<[u8; 4]> = if set == lb_common::FILTER_VIPS {
            self.vips.keys().copied().collect()
        } else {
            self.backends
                .values()
                .map(|b| b.addr)
                .filter(|a| *a != [0; 4])
                .collect()
        };
        addrs
            .iter()
            .any(|a| lb_common::addr_filter_bit(set, u32::from_ne_bytes(*a)) == (word, bit))
    }

    /// IPv4 not forwarded: to the kernel, unless a VIP drops unserved
    /// traffic and it is not ICMP.
    fn host(&self, reason: Reason, dst: [u8; 4], proto: u8) -> Expect {
        let flags = self.vips.get(&dst).copied().unwrap_or(0);
        if proto != 1 && flags & VIP_F_DROP_UNSERVED != 0 {
            return Expect::same(Action::Drop, Reason::DropUnservedVip);
        }
        Expect::same(Action::Pass, reason)
    }

    /// An ARP request: dropped for an HA address while the lease has run
    /// out (HA switched on), else the kernel's.
    fn arp_request(&self, target: [u8; 4]) -> Expect {
        let flags = self.vips.get(&target).copied().unwrap_or(0);
        let s = self.settings;
        if flags & VIP_F_HA != 0 && s.flags & SETTINGS_F_HA != 0 && s.lease_until_ns != u64::MAX {
            return Expect::same(Action::Drop, Reason::DropArpNotMaster);
        }
        Expect::same(Action::Pass, Reason::PassNotIpv4)
    }

    /// Out of `ifindex`: back out of the link it came in on (`XDP_TX`), or
    /// to another (`XDP_REDIRECT`).
    fn out_of(&self, ifindex: u32) -> Action {
        if ifindex == self.ingress {
            Action::Tx
        } else {
            Action::Redirect
        }
    }

    /// Whether `frame` (from `backend`) came where the way to that backend
    /// goes: the lab FIB's interface, and its next hop's MAC if resolved.
    fn came_from_backend(&self, f: &[u8], backend: [u8; 4]) -> bool {
        let src_mac: [u8; 6] = f[6..12].try_into().unwrap();
        match fib(self.links, backend, 0) {
            Hop::Found { ifindex, dmac, .. } => self.ingress == ifindex && src_mac == dmac,
            Hop::NoNeighbour { ifindex, .. } => self.ingress == ifindex,
            _ => false,
        }
    }

    /// The client's acknowledgement a picked-up flow (by its reply tuple
    /// `t`) waits for its backend to answer at, if it waits (for the
    /// generator: replies that prove it).
    pub fn pickup_ack(&self, t: &Tuple) -> Option<u32> {
        let rev = self.nat.get(t)?;
        let client = Tuple {
            src: t.dst,
            dst: rev.vip,
            sport: t.dport,
            dport: rev.vport,
            proto: t.proto,
        };
        self.flows
            .get(&client)
            .filter(|f| f.unverified && f.pickup_ack != 0)
            .map(|f| f.pickup_ack)
    }

    /// The client ISN + 1 a refusal of the connection whose reply tuple is
    /// `t` acknowledges, if the model knows it (for the generator).
    pub fn refusal_ack(&self, t: &Tuple) -> Option<u32> {
        let rev = self.reply_of(t)?;
        let client = Tuple {
            src: t.dst,
            dst: rev.vip,
            sport: t.dport,
            dport: rev.vport,
            proto: t.proto,
        };
        let fl = self.flows.get(&client).filter(|f| f.syn)?;
        Some(u32::from_be(fl.syn_seq).wrapping_add(1))
    }

    /// A backend table slot as the program reads it: retired or never used
    /// slots are all zero (inactive).
    fn slot(&self, id: u32) -> BackendEntry {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    fn active(&self, id: u32) -> Option<BackendEntry> {
        Some(self.slot(id)).filter(|b| b.active)
    }

    /// A backend's TCP reply seen on a NAT flow: SYN-ACK answers the client's
    /// flow, FIN/RST close it, RST to a bare SYN is a refusal. Returns true
    /// when the RST is withheld for a redispatch.
    fn track_reply(&mut self, f: &[u8], p: &Pkt, rev: &NatReply) -> bool {
        if !p.tcp() || p.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
            return false;
        }
        let client = Tuple {
            src: p.t.dst,
            dst: rev.vip,
            sport: p.t.dport,
            dport: rev.vport,
            proto: p.t.proto,
        };
        let Some(fl) = self.flows.get(&client).copied() else {
            return false;
        };
        if fl.backend_id != rev.backend_id {
            return false;
        }
        let mut next = fl;
        let mut withheld = false;
        if p.tcp_flags & TCP_RST != 0 {
            let in_handshake = fl.syn && !fl.replied && !fl.established && !fl.closing;
            // RFC 793's acceptable RST in SYN-SENT: it acknowledges the SYN.
            let ack =
                u32::from_be_bytes(f[wire::L4_OFF + 8..wire::L4_OFF + 12].try_into().unwrap());
            let acknowledges =
                p.tcp_flags & TCP_ACK != 0 && ack == u32::from_be(fl.syn_seq).wrapping_add(1);
            if in_handshake && !acknowledges {
                return false;
            }
            if in_handshake {
                let redispatch = rev.redispatch && !fl.redispatched;
                if redispatch {
                    next.refused = true;
                } else {
                    next.closing = true;
                }
                let t = self.counts.backends.entry(rev.backend_id).or_default();
                t.refused += 1;
                t.redispatched += redispatch as u64;
                withheld = redispatch;
            } else {
                next.closing = true;
            }
        } else if p.tcp_flags & TCP_FIN != 0 {
            next.closing = true;
        } else {
            next.replied = true;
        }
        if next.closing {
            self.uncount(&fl);
        }
        self.flows.insert(client, next);
        withheld
    }

    fn client_packet(&mut self, f: &[u8], p: &Pkt, svc: &Service) -> Expect {
        let syn = p.syn();
        // (backend, entry, syn_retransmit) when the flow stays where it is.
        let mut stay = None;
        let mut moving: Option<Flow> = None;
        let mut exclude = None;
        // A cookie connection's acknowledgements, in the backend's numbers.
        let mut shift = None;
        if let Some(fl) = self
            .flows
            .get(&p.t)
            .copied()
            .filter(|fl| fl.service_id == svc.id)
        {
            let b = self.slot(fl.backend_id);
            if !syn && fl.unverified && fl.refused {
                // The guessed backend disowned it: another one.
                exclude = Some(fl.backend_id);
            } else if !syn {
                if b.active {
                    let (est, closing) = p.client_bits();
                    if closing {
                        self.uncount(&fl);
                    }
                    let e = self.flows.get_mut(&p.t).unwrap();
                    e.established |= est;
                    e.closing |= closing;
                    if e.unverified && e.cookie.is_none() && e.pickup_ack == 0 {
                        e.pickup_ack = client_ack(f, p);
                    }
                    stay = Some((fl.backend_id, b, false));
                    shift = fl.cookie.filter(|c| !c.pending).map(|c| c.value);
                }
            } else if fl.syn && fl.syn_seq == p.seq {
                if fl.refused {
                    exclude = Some(fl.backend_id);
                    moving = Some(fl);
                } else if !fl.closing {
                    if b.active && (b.new || fl.established) {
                        stay = Some((fl.backend_id, b, true));
                    } else {
                        moving = Some(fl);
                    }
                }
            }
        }
        let (bid, b, connection, syn_retransmit, midstream) = match stay {
            Some((bid, b, retry)) => (bid, b, false, retry, false),
            None => match self.schedule_claiming(p, svc, exclude, svc.nat && syn, true) {
                Err(refused) => return refused,
                Ok(Some((bid, b))) => {
                    // The entry this one replaces (closed, moved, or of
                    // another service) leaves its backend's count.
                    if let Some(old) = self.flows.get(&p.t).copied() {
                        self.uncount(&old);
                    }
                    let (est, closing) = p.client_bits();
                    let mut flow = match moving {
                        Some(old) => Flow {
                            service_id: svc.id,
                            backend_id: bid,
                            syn_seq: old.syn_seq,
                            syn: true,
                            established: false,
                            replied: false,
                            closing: false,
                            refused: false,
                            redispatched: old.refused || old.redispatched,
                            counted: false,
                            cookie: None,
                            unverified: false,
                            pickup_ack: 0,
                        },
                        None => Flow {
                            service_id: svc.id,
                            backend_id: bid,
                            syn_seq: if syn { p.seq } else { 0 },
                            syn,
                            established: !syn && est,
                            replied: false,
                            closing: !syn && closing,
                            refused: false,
                            redispatched: false,
                            counted: false,
                            cookie: None,
                            // NAT, a TCP packet without SYN opening an
                            // entry: not seen open here.
                            unverified: svc.nat && p.tcp() && !syn,
                            pickup_ack: if svc.nat && p.tcp() && !syn {
                                client_ack(f, p)
                            } else {
                                0
                            },
                        },
                    };
                    // least_conn counts TCP connections from their SYN until
                    // a FIN or RST either side sends.
                    if svc.scheduler == SchedulerKind::LeastConn && syn {
                        flow.counted = true;
                        let c = self.conns.entry(bid).or_insert(0);
                        *c = c.wrapping_add(1);
                    }
                    self.flows.insert(p.t, flow);
                    // NAT: how replies are translated is stored with the
                    // flow entry, whether or not this packet can go on.
                    // Not for a backend of this service alone (its replies
                    // are found by the flow entry), unless the connection
                    // was picked up mid-stream.
                    if svc.nat && (!self.sole(&b, p.t.proto) || (p.tcp() && !syn)) {
                        self.add_reply(p, svc, bid, b, None);
                    } else if svc.nat {
                        self.note_reply(Tuple {
                            src: b.addr,
                            dst: p.t.src,
                            sport: b.port,
                            dport: p.t.sport,
                            proto: p.t.proto,
                        });
                    }
                    let connection = moving.is_none() && (syn || !p.tcp());
                    (bid, b, connection, false, p.tcp() && !syn)
                }
                Ok(None) => {
                    self.counts.services.entry(svc.id).or_default().no_backend += 1;
                    return if svc.pass_when_empty {
                        Expect::same(Action::Pass, Reason::PassNoBackend)
                    } else {
                        Expect::same(Action::Drop, Reason::DropNoBackend)
                    };
                }
            },
        };
        let ok = if svc.nat {
            Reason::FwdNat
        } else {
            Reason::FwdDsr
        };
        let hop = fib(self.links, b.addr, p.tot_len);
        let e = self.deliver(f, p, hop, ok, |_, out| {
            if svc.nat {
                out[30..34].copy_from_slice(&b.addr);
                out[36..38].copy_from_slice(&b.port.to_be_bytes());
                out[22] -= 1; // TTL: NAT routes
                if let Some(delta) = shift
                    && p.tcp_flags & TCP_ACK != 0
                {
                    let ack = u32::from_be_bytes(out[42..46].try_into().unwrap());
                    out[42..46].copy_from_slice(&ack.wrapping_add(delta).to_be_bytes());
                }
            }
        });
        let sent = e.reason == ok;
        // Counted only when the packet went towards the backend (sent, or
        // left to the kernel to resolve the next hop).
        if !sent && e.reason != Reason::PassNoNeighbour {
            return e;
        }
        for (t, retry) in [
            (self.counts.services.entry(svc.id).or_default(), false),
            (self.counts.backends.entry(bid).or_default(), syn_retransmit),
        ] {
            if sent {
                t.packets += 1;
                t.bytes += f.len() as u64;
            }
            t.connections += connection as u64;
            t.midstream += midstream as u64;
            t.syn_retransmits += retry as u64;
        }
        e
    }

    /// The reply entry of client packet `p`'s flow to backend `bid` (the
    /// newest under its key wins).
    fn add_reply(
        &mut self,
        p: &Pkt,
        svc: &Service,
        bid: u32,
        b: BackendEntry,
        cookie: Option<Cookie>,
    ) {
        let reply = Tuple {
            src: b.addr,
            dst: p.t.src,
            sport: b.port,
            dport: p.t.sport,
            proto: p.t.proto,
        };
        let rev = NatReply {
            vip: p.t.dst,
            vport: p.t.dport,
            redispatch: svc.redispatch,
            backend_id: bid,
            cookie,
            unverified: p.tcp() && !p.syn() && cookie.is_none(),
        };
        self.nat.insert(reply, rev);
        self.note_reply(reply);
    }

    /// SYN cookies, client side (the main program's gate, then the cookie
    /// program): `None` for the ordinary path.
    fn cookie_client(&mut self, f: &[u8], p: &Pkt, svc: &Service) -> Option<Expect> {
        use Action::*;
        let flags = p.tcp_flags;
        match self.flows.get(&p.t).copied() {
            None if p.syn() => Some(self.cookie_syn_ack(f, p)),
            None if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_ACK => {
                let isn = u32::from_be(p.seq).wrapping_sub(1);
                let ack = u32::from_be_bytes(f[42..46].try_into().unwrap());
                let cookie = ack.wrapping_sub(1);
                match self.cookie_check(&p.t, isn, cookie) {
                    Some(mss) => Some(self.cookie_open(f, p, svc, isn, cookie, mss)),
                    None => Some(Expect::same(Drop, Reason::DropBadCookie)),
                }
            }
            None if flags & TCP_RST != 0 => Some(Expect::same(Drop, Reason::DropBadCookie)),
            Some(fl) if fl.service_id == svc.id && fl.cookie.is_some_and(|c| c.pending) => {
                if p.syn() {
                    return Some(self.cookie_syn_ack(f, p));
                }
                let c = fl.cookie.unwrap();
                let isn = u32::from_be(fl.syn_seq);
                Some(self.syn_to_backend(f, p, fl.backend_id, isn, c.mss))
            }
            _ => None,
        }
    }

    /// The SYN answered: routed back to the client, the SYN-ACK built in
    /// place (MSS option if the SYN had room for one), the tail cut.
    fn cookie_syn_ack(&mut self, f: &[u8], p: &Pkt) -> Expect {
        let doff = (f[wire::L4_OFF + 12] >> 4) as usize * 4;
        let th = if doff >= 24 { 24 } else { 20 };
        let mut out = f[..wire::L4_OFF + th].to_vec();
        let ip = wire::IP_OFF;
        out[ip + 2..ip + 4].copy_from_slice(&((20 + th) as u16).to_be_bytes());
        out[ip + 6..ip + 8].copy_from_slice(&[0x40, 0]);
        out[ip + 8] = 64;
        out[ip + 12..ip + 16].copy_from_slice(&f[ip + 16..ip + 20]);
        out[ip + 16..ip + 20].copy_from_slice(&f[ip + 12..ip + 16]);
        let t = wire::L4_OFF;
        out[t..t + 2].copy_from_slice(&f[t + 2..t + 4]);
        out[t + 2..t + 4].copy_from_slice(&f[t..t + 2]);
        let seq = u32::from_be(p.seq);
        out[t + 4..t + 8].copy_from_slice(&[0; 4]);
        out[t + 8..t + 12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
        out[t + 12] = ((th / 4) as u8) << 4;
        out[t + 13] = TCP_SYN | TCP_ACK;
        out[t + 14..t + 16].copy_from_slice(&[0xff, 0xff]);
        out[t + 18..t + 20].copy_from_slice(&[0, 0]);
        if th == 24 {
            out[t + 20..t + 24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        }
        fix_checksums(&mut out);
        self.sent_syn_ack = Some((p.t, seq, cookie_mss(f)));
        self.emit(
            f,
            p,
            fib(self.links, p.t.src, p.tot_len),
            Reason::TxSynCookie,
            out,
            Output::CookieSynAck,
        )
    }

    /// A valid cookie ACK: the connection opened, half-open, and the
    /// backend's SYN sent.
    fn cookie_open(
        &mut self,
        f: &[u8],
        p: &Pkt,
        svc: &Service,
        isn: u32,
        cookie: u32,
        mss: u16,
    ) -> Expect {
        let (bid, b) = match self.schedule_claiming(p, svc, None, true, false) {
            Ok(Some(pick)) => pick,
            Ok(None) => {
                self.counts.services.entry(svc.id).or_default().no_backend += 1;
                return Expect::same(Action::Drop, Reason::DropNoBackend);
            }
            Err(refused) => return refused,
        };
        let c = Cookie {
            pending: true,
            value: cookie,
            mss,
        };
        self.flows.insert(
            p.t,
            Flow {
                service_id: svc.id,
                backend_id: bid,
                syn_seq: isn.to_be(),
                syn: true,
                established: true,
                replied: false,
                closing: false,
                refused: false,
                redispatched: false,
                counted: false,
                cookie: Some(c),
                unverified: false,
                pickup_ack: 0,
            },
        );
        self.add_reply(p, svc, bid, b, Some(c));
        self.counts.services.entry(svc.id).or_default().connections += 1;
        self.counts.backends.entry(bid).or_default().connections += 1;
        self.syn_to_backend(f, p, bid, isn, mss)
    }

    /// The client's packet sent on as the backend's SYN: the client's ISN
    /// and MSS, exactly the headers (the frame grown or cut to them). A
    /// cookie of the previous minute is found by no MSS tried: then 536.
    fn syn_to_backend(&mut self, f: &[u8], p: &Pkt, bid: u32, isn: u32, mss: u16) -> Expect {
        let b = self.slot(bid);
        let build = |mss: u16| {
            let mut out = f[..f.len().min(wire::L4_OFF + 24)].to_vec();
            out.resize(wire::L4_OFF + 24, 0);
            let ip = wire::IP_OFF;
            out[ip + 2..ip + 4].copy_from_slice(&44u16.to_be_bytes());
            out[ip + 6..ip + 8].copy_from_slice(&[0x40, 0]);
            out[ip + 8] -= 1;
            out[ip + 16..ip + 20].copy_from_slice(&b.addr);
            let t = wire::L4_OFF;
            out[t + 2..t + 4].copy_from_slice(&b.port.to_be_bytes());
            out[t + 4..t + 8].copy_from_slice(&isn.to_be_bytes());
            out[t + 8..t + 12].copy_from_slice(&[0; 4]);
            out[t + 12] = 6 << 4;
            out[t + 13] = TCP_SYN;
            out[t + 18..t + 20].copy_from_slice(&[0, 0]);
            out[t + 20..t + 24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
            fix_checksums(&mut out);
            out
        };
        let hop = fib(self.links, b.addr, p.tot_len);
        let (a, fallback) = (build(mss), build(536));
        let e = self.emit(f, p, hop, Reason::FwdCookieSyn, a.clone(), Output::Exact);
        // Either MSS, with the same MACs as the first.
        let either = |o: Output| match o {
            Output::Exact(v) => {
                let mut w = fallback.clone();
                w[..12].copy_from_slice(&v[..12]);
                Output::OneOf(vec![Output::Exact(v), Output::Exact(w)])
            }
            other => other,
        };
        Expect {
            output: match e.output {
                Output::Meta(m, inner) => Output::Meta(m, Box::new(either(*inner))),
                o => either(o),
            },
            ..e
        }
    }

    /// SYN cookies, backend side: its SYN-ACK (completes the connection,
    /// answered with the ACK), a RST before it (to the client, at the
    /// sequence number it expects), anything else before it (dropped).
    fn cookie_backend(&mut self, f: &[u8], p: &Pkt, rev: NatReply, c: Cookie) -> Expect {
        use Action::*;
        let t = wire::L4_OFF;
        let seq = u32::from_be_bytes(f[t + 4..t + 8].try_into().unwrap());
        let ack = u32::from_be_bytes(f[t + 8..t + 12].try_into().unwrap());
        if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
            if c.pending {
                let done = Cookie {
                    pending: false,
                    value: seq.wrapping_sub(c.value),
                    mss: c.mss,
                };
                if let Some(r) = self.nat.get_mut(&p.t) {
                    r.cookie = Some(done);
                }
                let client = Tuple {
                    src: p.t.dst,
                    dst: rev.vip,
                    sport: p.t.dport,
                    dport: rev.vport,
                    proto: p.t.proto,
                };
                if let Some(fl) = self.flows.get_mut(&client) {
                    fl.cookie = Some(done);
                    fl.replied = true;
                }
            }
            let mut out = f[..t + 20].to_vec();
            out[0..6].copy_from_slice(&f[6..12]);
            out[6..12].copy_from_slice(&f[0..6]);
            let ip = wire::IP_OFF;
            out[ip + 2..ip + 4].copy_from_slice(&40u16.to_be_bytes());
            out[ip + 6..ip + 8].copy_from_slice(&[0x40, 0]);
            out[ip + 8] = 64;
            out[ip + 12..ip + 16].copy_from_slice(&f[ip + 16..ip + 20]);
            out[ip + 16..ip + 20].copy_from_slice(&f[ip + 12..ip + 16]);
            out[t..t + 2].copy_from_slice(&f[t + 2..t + 4]);
            out[t + 2..t + 4].copy_from_slice(&f[t..t + 2]);
            out[t + 4..t + 8].copy_from_slice(&ack.to_be_bytes());
            out[t + 8..t + 12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
            out[t + 12] = 5 << 4;
            out[t + 13] = TCP_ACK;
            out[t + 14..t + 16].copy_from_slice(&[0xff, 0xff]);
            out[t + 18..t + 20].copy_from_slice(&[0, 0]);
            fix_checksums(&mut out);
            return Expect {
                action: Tx,
                reason: Reason::TxCookieAck,
                output: Output::Exact(out),
            };
        }
        if !c.pending || p.tcp_flags & TCP_RST == 0 {
            return Expect::same(Drop, Reason::DropCookiePending);
        }
        // The refusal: translated as any reply (decided first, so one that
        // goes no further is left as it came), at the sequence number after
        // the cookie.
        self.track_reply(f, p, &rev);
        let e = self.reverse(f, p, rev);
        let at_cookie = |o: Output| match o {
            Output::Rewritten(mut v) => {
                v[t + 4..t + 8].copy_from_slice(&c.value.wrapping_add(1).to_be_bytes());
                Output::Rewritten(v)
            }
            other => other,
        };
        Expect {
            output: match e.output {
                Output::Meta(m, inner) => Output::Meta(m, Box::new(at_cookie(*inner))),
                o => at_cookie(o),
            },
            ..e
        }
    }

    /// A built frame's verdict by its next hop, as `deliver` decides it for
    /// a rewritten one; `wrap` says how the built frame is checked.
    fn emit(
        &mut self,
        f: &[u8],
        p: &Pkt,
        hop: Hop,
        ok: Reason,
        mut out: Vec<u8>,
        wrap: impl FnOnce(Vec<u8>) -> Output,
    ) -> Expect {
        match hop {
            Hop::Found {
                ifindex,
                smac,
                dmac,
            } => {
                out[0..6].copy_from_slice(&dmac);
                out[6..12].copy_from_slice(&smac);
                Expect {
                    action: self.out_of(ifindex),
                    reason: ok,
                    output: wrap(out),
                }
            }
            Hop::NoNeighbour { ifindex, next_hop } => Expect {
                action: Action::Pass,
                reason: Reason::PassNoNeighbour,
                output: Output::Meta(wire::neigh_meta(ifindex, next_hop), Box::new(wrap(out))),
            },
            other => self.deliver(f, p, other, ok, |_, _| {}),
        }
    }

    /// The cookie the program just sent in a SYN-ACK the model expected
    /// (read from its output), so ACKs carrying it can be made and judged.
    pub fn learn_cookie(&mut self, want: &Output, got: &[u8]) {
        let Some((t, isn, mss)) = self.sent_syn_ack.take() else {
            return;
        };
        if !cookie_syn_ack(want) {
            return;
        }
        let frame = match want {
            Output::Meta(m, _) => &got[m.len()..],
            _ => got,
        };
        let cookie = u32::from_be_bytes(frame[38..42].try_into().unwrap());
        self.cookies_by_flow
            .entry(t)
            .or_default()
            .push((isn, cookie, mss));
        if self.cookies.insert((t, isn), (cookie, mss)).is_none() {
            self.cookie_order.push((t, isn));
        }
    }

    /// The MSS an ACK of flow `t` (its ISN, its cookie: the sequence and
    /// acknowledgement numbers less one) opens a connection with, as the
    /// kernel's check (`__cookie_v4_check`) answers, given the cookies sent
    /// to that flow: the kernel subtracts the ISN and the flow's hashes from
    /// the cookie and takes the rest as the index into its MSS table, so an
    /// ACK whose two numbers moved by the same amount, or whose cookie moved
    /// to another index of the table, passes too.
    fn cookie_check(&self, t: &Tuple, isn: u32, cookie: u32) -> Option<u16> {
        const MSS: [u16; 4] = [536, 1300, 1440, 1460];
        self.cookies_by_flow
            .get(t)?
            .iter()
            .find_map(|&(isn0, cookie0, mss0)| {
                let index0 = MSS.iter().position(|m| *m == mss0)? as i64;
                let moved = cookie
                    .wrapping_sub(isn)
                    .wrapping_sub(cookie0.wrapping_sub(isn0)) as i32;
                let index = index0 + i64::from(moved);
                (0..4).contains(&index).then(|| MSS[index as usize])
            })
    }

    /// The last `n` cookies sent, for ACKs the generator makes: (client
    /// flow, ISN, cookie), newest last.
    pub fn recent_cookies(&self, n: usize) -> Vec<(Tuple, u32, u32)> {
        self.cookie_order[self.cookie_order.len().saturating_sub(n)..]
            .iter()
            .map(|k| (k.0, k.1, self.cookies[k].0))
            .collect()
    }

    /// [`Model::schedule`], and with `claim` (a new NAT connection: a SYN,
    /// or a SYN cookie's ACK) a backend that holds no live
    /// connection of this client address and port through another VIP
    /// (the program's `tuple_taken`): the scheduled one, else one more try
    /// avoiding it, else refused.
    fn schedule_claiming(
        &mut self,
        p: &Pkt,
        svc: &Service,
        exclude: Option<u32>,
        claim: bool,
        sole_free: bool,
    ) -> Result<Option<(u32, BackendEntry)>, Expect> {
        let Some((bid, b)) = self.schedule(p, svc, exclude) else {
            return Ok(None);
        };
        // A new connection's SYN to a backend of this service alone is not
        // checked (no other VIP reaches it); a cookie's ACK always is.
        let exempt = sole_free && self.sole(&b, p.t.proto);
        if !(claim && !exempt && self.tuple_taken(p, b)) {
            return Ok(Some((bid, b)));
        }
        match self.schedule(p, svc, Some(bid)) {
            Some((o, b2))
                if o != bid
                    && ((sole_free && self.sole(&b2, p.t.proto)) || !self.tuple_taken(p, b2)) =>
            {
                Ok(Some((o, b2)))
            }
            _ => Err(Expect::same(Action::Drop, Reason::DropNatTupleInUse)),
        }
    }

    /// Whether backend `b` has a live connection from `p`'s client address
    /// and port through another VIP or port: its reply entry names another
    /// VIP, and that VIP's flow (half-open or established) is on `b`, not
    /// closing and not refused.
    fn tuple_taken(&self, p: &Pkt, b: BackendEntry) -> bool {
        let reply = Tuple {
            src: b.addr,
            dst: p.t.src,
            sport: b.port,
            dport: p.t.sport,
            proto: p.t.proto,
        };
        let Some(rev) = self.nat.get(&reply) else {
            return false;
        };
        if rev.vip == p.t.dst && rev.vport == p.t.dport {
            return false;
        }
        let other = Tuple {
            src: p.t.src,
            dst: rev.vip,
            sport: p.t.sport,
            dport: rev.vport,
            proto: p.t.proto,
        };
        self.flows
            .get(&other)
            .is_some_and(|f| !f.closing && !f.refused && f.backend_id == rev.backend_id)
    }

    fn schedule(
        &mut self,
        p: &Pkt,
        svc: &Service,
        exclude: Option<u32>,
    ) -> Option<(u32, BackendEntry)> {
        let len = svc.ring.len() as u32;
        if len == 0 {
            return None;
        }
        let t = &p.t;
        let slot = match svc.scheduler {
            SchedulerKind::Maglev => {
                assert_eq!(len, RING_SIZE, "Maglev rings are full size");
                oracle::flow_hash(t.src, t.dst, t.sport, t.dport, t.proto) % len
            }
            SchedulerKind::SourceHash => {
                assert_eq!(len, RING_SIZE, "Maglev rings are full size");
                oracle::source_hash(t.src) % len
            }
            SchedulerKind::RoundRobin => {
                let c = self.rr_cursor.entry((self.cpu, svc.id)).or_insert(0);
                let slot = *c % len;
                *c = if slot + 1 >= len { 0 } else { slot + 1 };
                slot
            }
            SchedulerKind::LeastConn => self.least_conn_slot(p, svc),
        };
        let first = svc.ring[slot as usize];
        if Some(first) == exclude {
            // Redispatch: the next ring slots, up to 8, for another backend.
            for i in 1..=8 {
                let id = svc.ring[((slot + i) % len) as usize];
                if Some(id) != exclude
                    && let Some(b) = self.active(id)
                {
                    return Some((id, b));
                }
            }
        }
        Some((first, self.active(first)?))
    }

    /// least_conn's two choices (README): the first candidate is the ring
    /// slot of the flow hash, the second the slot of a second hash or one
    /// of the 3 after it, the first that names another backend; the one
    /// with fewer connections per weight wins, a tie (or a candidate not
    /// active) keeps the first.
    fn least_conn_slot(&mut self, p: &Pkt, svc: &Service) -> u32 {
        let len = svc.ring.len() as u32;
        let t = &p.t;
        let h = oracle::flow_hash(t.src, t.dst, t.sport, t.dport, t.proto);
        let first = h % len;
        let a = svc.ring[first as usize];
        let start = oracle::second_hash(h) % len;
        for i in 0..4 {
            let second = (start + i) % len;
            let b = svc.ring[second as usize];
            if b == a {
                continue;
            }
            let (Some(ba), Some(bb)) = (self.active(a), self.active(b)) else {
                return first;
            };
            let conns = |id: u32| self.conns.get(&id).copied().unwrap_or(0);
            let load_a = conns(a).wrapping_mul(bb.weight as u64);
            let load_b = conns(b).wrapping_mul(ba.weight as u64);
            if load_b < load_a {
                self.counts.least_conn_second += 1;
                return second;
            }
            return first;
        }
        first
    }

    /// A flow entry leaves its backend's least_conn count (it closed, moved
    /// or was replaced): only one counted and not yet closing did count.
    fn uncount(&mut self, fl: &Flow) {
        if fl.counted && !fl.closing {
            let c = self.conns.entry(fl.backend_id).or_insert(0);
            *c = c.wrapping_sub(1);
        }
    }

    fn reverse(&mut self, f: &[u8], p: &Pkt, rev: NatReply) -> Expect {
        self.deliver(
            f,
            p,
            fib(self.links, p.t.dst, p.tot_len),
            Reason::FwdReverseNat,
            |_, out| {
                out[26..30].copy_from_slice(&rev.vip);
                out[34..36].copy_from_slice(&rev.vport.to_be_bytes());
                out[22] -= 1; // TTL: NAT routes
                if let Some(c) = rev.cookie.filter(|c| !c.pending) {
                    let seq = u32::from_be_bytes(out[38..42].try_into().unwrap());
                    out[38..42].copy_from_slice(&seq.wrapping_sub(c.value).to_be_bytes());
                }
            },
        )
    }

    /// The next-hop decision, taken before any rewrite; `rewrite` edits the
    /// expected output's addresses and ports (and records NAT state) only for
    /// packets that go on.
    fn deliver(
        &mut self,
        f: &[u8],
        p: &Pkt,
        hop: Hop,
        ok: Reason,
        rewrite: impl FnOnce(&mut Model, &mut Vec<u8>),
    ) -> Expect {
        let mut out = f.to_vec();
        match hop {
            Hop::Found {
                ifindex,
                smac,
                dmac,
            } => {
                rewrite(self, &mut out);
                out[0..6].copy_from_slice(&dmac);
                out[6..12].copy_from_slice(&smac);
                Expect {
                    action: self.out_of(ifindex),
                    reason: ok,
                    output: Output::Rewritten(out),
                }
            }
            Hop::NoNeighbour { ifindex, next_hop } => {
                rewrite(self, &mut out);
                let frame = if out == f {
                    Output::Unchanged
                } else {
                    Output::Rewritten(out)
                };
                Expect {
                    action: Action::Pass,
                    reason: Reason::PassNoNeighbour,
                    output: Output::Meta(wire::neigh_meta(ifindex, next_hop), Box::new(frame)),
                }
            }
            Hop::FragNeeded(mtu) if p.df => Expect {
                action: Action::Tx,
                reason: Reason::TxIcmpFragNeeded,
                output: Output::Exact(wire::icmp_frag_needed(f, mtu)),
            },
            Hop::FragNeeded(_) => Expect::same(Action::Drop, Reason::DropTooBig),
            Hop::Failed => Expect::same(Action::Drop, Reason::DropNoRoute),
        }
    }
}

/// NAT's translation of a relayed ICMP error, from scratch: outer
/// destination and TTL (the outer IPv4 and the ICMP checksums are checked
/// by residual over the whole header and message), the quoted source
/// address and port. The quoted IPv4 checksum is computed over the whole
/// quoted header, keeping the residual the sender's header had (a damaged
/// quote stays exactly as damaged); the quoted TCP/UDP checksum (its
/// segment is not all quoted) moves by the sum of the words that changed.
fn relay_translate(out: &mut [u8], b: &BackendEntry) {
    let ip = wire::IP_OFF;
    out[ip + 16..ip + 20].copy_from_slice(&b.addr);
    out[ip + 8] -= 1;
    translate_quote(out, 12, 20, b.addr, b.port);
}

/// An ICMP error from the backend side relayed to the client: TTL down by
/// one, the quoted destination and its port back to the VIP's.
fn relay_to_client_translate(out: &mut [u8], vip: [u8; 4], vport: u16) {
    out[wire::IP_OFF + 8] -= 1;
    translate_quote(out, 16, 22, vip, vport);
}

/// Rewrite the quoted packet's address at `addr_at` (12: source, 16:
/// destination, in its IPv4 header) and port at `port_at` (20: source, 22:
/// destination), with its IPv4 and L4 checksums.
fn translate_quote(out: &mut [u8], addr_at: usize, port_at: usize, addr: [u8; 4], port: u16) {
    let ip = wire::IP_OFF;
    let q = wire::L4_OFF + 8;
    let before: Vec<u8> = out[q..q + 20].to_vec();
    let old_port = [out[q + port_at], out[q + port_at + 1]];
    out[q + addr_at..q + addr_at + 4].copy_from_slice(&addr);
    out[q + port_at..q + port_at + 2].copy_from_slice(&port.to_be_bytes());
    // The quoted IPv4 header: the checksum that gives the new header the
    // old one's residual (0xffff when it was right).
    let residual = wire::ones_sum(&before, 0);
    out[q + 10..q + 12].copy_from_slice(&[0, 0]);
    let rest = wire::ones_sum(&out[q..q + 20], 0);
    let check = ones_add(residual, !rest);
    out[q + 10..q + 12].copy_from_slice(&check.to_be_bytes());
    // The quoted L4 checksum covers the pseudo-header's addresses and the
    // ports: ~check moves by what they add now less what they added before.
    let moved_from: Vec<u8> = [&before[addr_at..addr_at + 4], &old_port[..]].concat();
    let moved_to: Vec<u8> = [&addr[..], &port.to_be_bytes()[..]].concat();
    let tot_len = be16(out, ip + 2) as usize;
    let at = match out[q + 9] {
        wire::PROTO_TCP if tot_len >= 20 + 8 + 20 + 18 => Some(q + 36),
        wire::PROTO_UDP => Some(q + 26),
        _ => None,
    };
    if let Some(at) = at {
        let old = be16(out, at);
        if out[q + 9] == wire::PROTO_UDP && old == 0 {
            return; // no checksum stays none
        }
        let sum = ones_add(
            ones_add(!old, wire::ones_sum(&moved_to, 0)),
            !wire::ones_sum(&moved_from, 0),
        );
        let mut new = !sum;
        if out[q + 9] == wire::PROTO_UDP && new == 0 {
            new = 0xffff;
        }
        out[at..at + 2].copy_from_slice(&new.to_be_bytes());
    }
}

/// The acknowledgement number of client TCP frame `f` (host order), or 0
/// without ACK.
fn client_ack(f: &[u8], p: &Pkt) -> u32 {
    if p.tcp_flags & TCP_ACK == 0 {
        return 0;
    }
    u32::from_be_bytes(f[42..46].try_into().unwrap())
}

/// One's-complement addition of two 16-bit words.
fn ones_add(a: u16, b: u16) -> u16 {
    let s = a as u32 + b as u32;
    ((s & 0xffff) + (s >> 16)) as u16
}

/// ICMP "time exceeded" back to the sender, quoting the frame as sent.
fn time_exceeded(f: &[u8]) -> Expect {
    Expect {
        action: Action::Tx,
        reason: Reason::TxIcmpTimeExceeded,
        output: Output::Exact(wire::icmp_time_exceeded(f)),
    }
}

/// Why an emitted frame breaks an invariant, or `None` if it holds.
pub fn check_output(input: &[u8], want: &Output, got: &[u8]) -> Option<String> {
    match want {
        Output::Unchanged if got != input => Some("frame changed".into()),
        Output::Unchanged => None,
        Output::Exact(v) if got != v.as_slice() => Some("not the expected frame".into()),
        Output::Exact(_) => None,
        Output::Rewritten(v) => check_rewritten(input, v, got),
        Output::Meta(meta, inner) => match got.strip_prefix(meta.as_slice()) {
            Some(frame) => check_output(input, inner, frame),
            None => Some(format!("no neighbour metadata {meta:02x?} in front")),
        },
        Output::CookieSynAck(v) => {
            if got.len() != v.len() {
                return Some(format!("length {} instead of {}", got.len(), v.len()));
            }
            let seq_or_check = |i: usize| (38..42).contains(&i) || (50..52).contains(&i);
            if let Some(i) = (0..got.len()).find(|&i| !seq_or_check(i) && got[i] != v[i]) {
                return Some(format!(
                    "byte {i} is {:#04x}, want {:#04x} (a SYN-ACK differs only in its cookie)",
                    got[i], v[i]
                ));
            }
            match wire::l4_residual(got) {
                Some(0xffff) => None,
                r => Some(format!(
                    "the SYN-ACK's TCP checksum is wrong (residual {r:?})"
                )),
            }
        }
        Output::OneOf(all) => {
            let why: Vec<String> = all
                .iter()
                .filter_map(|o| check_output(input, o, got))
                .collect();
            (why.len() == all.len()).then(|| why.join("; or "))
        }
    }
}

/// The SYN-ACK a cookie answer expects, if `want` is (or wraps) one.
fn cookie_syn_ack(want: &Output) -> bool {
    match want {
        Output::CookieSynAck(_) => true,
        Output::Meta(_, inner) => cookie_syn_ack(inner),
        _ => false,
    }
}

/// The MSS a SYN's options give the kernel's cookie (`tcp_parse_mss_option`,
/// 536 when none), as the cookie encodes it: the largest of the kernel's
/// table not above it.
fn cookie_mss(syn: &[u8]) -> u16 {
    let t = wire::L4_OFF;
    let end = t + (syn[t + 12] >> 4) as usize * 4;
    let mut i = t + 20;
    let mut mss = 0u16;
    while i < end {
        match syn[i] {
            0 => break,
            1 => i += 1,
            kind => {
                if i + 1 >= end {
                    break;
                }
                let size = syn[i + 1] as usize;
                if size < 2 || i + size > end {
                    break;
                }
                if kind == 2 && size == 4 {
                    let m = be16(syn, i + 2);
                    if m != 0 {
                        mss = m;
                    }
                }
                i += size;
            }
        }
    }
    let mss = if mss == 0 { 536 } else { mss };
    [1460u16, 1440, 1300, 536]
        .into_iter()
        .find(|m| *m <= mss)
        .unwrap_or(536)
}

/// Set both checksums of an option-less-IPv4 TCP frame.
fn fix_checksums(out: &mut [u8]) {
    wire::fix_ipv4_checksum(out);
    crate::frames::fix_l4_checksum(out);
}

fn check_rewritten(input: &[u8], want: &[u8], got: &[u8]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("length {} instead of {}", got.len(), want.len()));
    }
    let proto = input[wire::IP_OFF + 9];
    // A relayed ICMP error changes quoted fields too (exact in `want`); its
    // own checksum, like an L4 checksum, must keep the input's damage.
    let l4_check = match proto {
        wire::PROTO_TCP => wire::L4_OFF + 16,
        wire::PROTO_ICMP => wire::L4_OFF + 2,
        _ => wire::L4_OFF + 6,
    };
    // A relayed ICMP error's quoted IPv4 and TCP/UDP checksums are
    // compared as checksums (0x0000 and 0xffff are one value), not bytes.
    let q = wire::L4_OFF + 8;
    let quoted: Vec<usize> = if proto == wire::PROTO_ICMP && want.len() >= q + 20 {
        let l4 = match want[q + 9] {
            wire::PROTO_TCP => q + 36,
            _ => q + 26,
        };
        [q + 10, l4]
            .into_iter()
            .filter(|at| at + 2 <= want.len())
            .collect()
    } else {
        Vec::new()
    };
    let in_quoted = |i: usize| quoted.iter().any(|at| (*at..*at + 2).contains(&i));
    let checksum_byte =
        |i: usize| (24..26).contains(&i) || (l4_check..l4_check + 2).contains(&i) || in_quoted(i);
    if let Some(i) = (0..got.len()).find(|&i| !checksum_byte(i) && got[i] != want[i]) {
        return Some(format!(
            "byte {i} is {:#04x}, want {:#04x} (only what the mode rewrites may change)",
            got[i], want[i]
        ));
    }
    let norm = |r: u16| if r == 0 { 0xffff } else { r };
    for at in &quoted {
        let (g, w) = (be16(got, *at), be16(want, *at));
        let udp_zero = *at != q + 10 && want[q + 9] == wire::PROTO_UDP && (g == 0 || w == 0);
        if (udp_zero && g != w) || (!udp_zero && norm(g) != norm(w)) {
            return Some(format!(
                "quoted checksum at byte {at} is {g:#06x}, want {w:#06x}"
            ));
        }
    }
    let (ip_in, ip_out) = (wire::ipv4_residual(input), wire::ipv4_residual(got));
    if norm(ip_in) != norm(ip_out) {
        return Some(format!(
            "IPv4 checksum residual {ip_out:#06x}, input had {ip_in:#06x}"
        ));
    }
    if proto == wire::PROTO_UDP && input[l4_check..l4_check + 2] == [0, 0] {
        if got[l4_check..l4_check + 2] != [0, 0] {
            return Some("a zero UDP checksum must stay zero".into());
        }
        return None;
    }
    let residual = |f: &[u8]| {
        if proto != wire::PROTO_ICMP {
            return wire::l4_residual(f);
        }
        let tot_len = be16(f, wire::IP_OFF + 2) as usize;
        Some(wire::ones_sum(&f[wire::L4_OFF..wire::ETH_LEN + tot_len], 0))
    };
    match (residual(input), residual(got)) {
        (Some(a), Some(b)) if norm(a) == norm(b) => None,
        (a, b) => Some(format!(
            "L4 checksum residual {b:?}, input had {a:?} (valid is 0xffff)"
        )),
    }
}
