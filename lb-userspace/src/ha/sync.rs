//! Flow sync records: what the MASTER's data path reported (a flow and the
//! backend it was pinned to) in a form the peer can apply. Ids are per node
//! (each planner hands out its own), so a record names the backend by
//! address and port, and the service by the flow's own destination; each
//! side translates with its own plan. Pure.

use std::{collections::HashMap, net::Ipv4Addr};

use lb_common::{
    FLOW_F_UNVERIFIED, FlowEvent, FlowKey, FlowValue, Forwarding, NatReverse, PROTO_TCP,
    REPLY_F_UNVERIFIED, ServiceKey,
};

use super::wire::{MAX_PAYLOAD, Reject};
use crate::plan::{BackendRef, Plan};

pub const RECORD_LEN: usize = 36;
/// Records per datagram.
pub const MAX_RECORDS: usize = MAX_PAYLOAD / RECORD_LEN;

/// One flow as synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    /// `FLOW_F_*` bits.
    pub flags: u8,
    pub syn_seq_be: u32,
    /// `COOKIE_F_*` bits and the sequence-number offset of a connection
    /// opened with a SYN cookie (the peer must translate it the same way).
    pub cookie: u8,
    pub seq_delta: u32,
    /// Microseconds between the data path creating the flow and the record
    /// leaving the sender (the sender's part of the sync lag).
    pub age_us: u32,
}

pub fn encode(records: &[FlowRecord]) -> Vec<u8> {
    let mut v = Vec::with_capacity(records.len() * RECORD_LEN);
    for r in records {
        v.extend_from_slice(&r.key.src_be.to_ne_bytes());
        v.extend_from_slice(&r.key.dst_be.to_ne_bytes());
        v.extend_from_slice(&r.key.sport_be.to_ne_bytes());
        v.extend_from_slice(&r.key.dport_be.to_ne_bytes());
        v.push(r.key.proto);
        v.push(r.flags);
        v.extend_from_slice(&[r.cookie, 0]);
        v.extend_from_slice(&r.backend.octets());
        v.extend_from_slice(&r.backend_port.to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&r.syn_seq_be.to_ne_bytes());
        v.extend_from_slice(&r.age_us.to_be_bytes());
        v.extend_from_slice(&r.seq_delta.to_be_bytes());
    }
    v
}

pub fn decode(payload: &[u8]) -> Result<Vec<FlowRecord>, Reject> {
    if !payload.len().is_multiple_of(RECORD_LEN) {
        return Err(Reject::Malformed);
    }
    Ok(payload
        .chunks(RECORD_LEN)
        .map(|c| {
            let b4 = |i: usize| [c[i], c[i + 1], c[i + 2], c[i + 3]];
            FlowRecord {
                key: FlowKey {
                    src_be: u32::from_ne_bytes(b4(0)),
                    dst_be: u32::from_ne_bytes(b4(4)),
                    sport_be: u16::from_ne_bytes([c[8], c[9]]),
                    dport_be: u16::from_ne_bytes([c[10], c[11]]),
                    proto: c[12],
                    _pad: [0; 3],
                },
                flags: c[13],
                cookie: c[14],
                seq_delta: u32::from_be_bytes(b4(32)),
                backend: Ipv4Addr::from(b4(16)),
                backend_port: u16::from_be_bytes([c[20], c[21]]),
                syn_seq_be: u32::from_ne_bytes(b4(24)),
                age_us: u32::from_be_bytes(b4(28)),
            }
        })
        .collect())
}

#[derive(Debug, Clone, Copy)]
struct ServiceEntry {
    id: u32,
    forwarding: u8,
    flags: u8,
}

/// A plan's ids, both ways, for translating records.
#[derive(Debug, Default, Clone)]
pub struct SyncIndex {
    backend_of_id: HashMap<u32, (Ipv4Addr, u16)>,
    services: HashMap<ServiceKey, ServiceEntry>,
    ids: HashMap<BackendRef, u32>,
}

impl SyncIndex {
    pub fn new(plan: &Plan) -> SyncIndex {
        SyncIndex {
            backend_of_id: plan
                .backends
                .iter()
                .map(|(id, b)| {
                    (
                        *id,
                        (
                            Ipv4Addr::from(u32::from_be(b.addr_be)),
                            u16::from_be(b.port_be),
                        ),
                    )
                })
                .collect(),
            services: plan
                .services
                .iter()
                .map(|s| {
                    (
                        s.key,
                        ServiceEntry {
                            id: s.info.id,
                            forwarding: s.info.forwarding,
                            flags: s.info.flags,
                        },
                    )
                })
                .collect(),
            ids: plan.backend_ids().clone(),
        }
    }

    /// The record for a flow this node's data path reported.
    pub fn record(&self, ev: &FlowEvent, age_us: u32) -> Option<FlowRecord> {
        let (backend, backend_port) = *self.backend_of_id.get(&ev.value.backend_id)?;
        Some(FlowRecord {
            key: ev.key,
            backend,
            backend_port,
            flags: ev.value.flags,
            syn_seq_be: ev.value.syn_seq_be,
            cookie: ev.value.cookie,
            seq_delta: ev.value.seq_delta,
            age_us,
        })
    }

    /// What to write into this node's maps for a peer's record: the flow
    /// entry and, for NAT, the reverse entry its replies need. `None` if
    /// this node has no such service or backend (configs differ).
    pub fn entries(&self, r: &FlowRecord) -> Option<LocalEntries> {
        let skey = ServiceKey {
            vip_be: r.key.dst_be,
            port_be: r.key.dport_be,
            proto: r.key.proto,
            _pad: 0,
        };
        let svc = self.services.get(&skey)?;
        let backend_id = *self
            .ids
            .get(&BackendRef::new(skey, r.backend, r.backend_port))?;
        // A NAT connection this node did not see open: its first reply here
        // must prove the backend (a 4-tuple reused through the peer since
        // this record was sent would otherwise follow a stale entry).
        // Cookie connections keep their offset in `seq_delta` and are not
        // checked.
        let nat = svc.forwarding == Forwarding::Nat as u8;
        let unverified = nat && r.key.proto == PROTO_TCP && r.cookie == 0;
        let value = FlowValue {
            backend_id,
            service_id: svc.id,
            syn_seq_be: r.syn_seq_be,
            flags: r.flags | if unverified { FLOW_F_UNVERIFIED } else { 0 },
            cookie: r.cookie,
            acl_generation: 0,
            seq_delta: if unverified { 0 } else { r.seq_delta },
        };
        let reverse = nat.then(|| {
            (
                FlowKey {
                    src_be: u32::from(r.backend).to_be(),
                    dst_be: r.key.src_be,
                    sport_be: r.backend_port.to_be(),
                    dport_be: r.key.sport_be,
                    proto: r.key.proto,
                    _pad: [0; 3],
                },
                NatReverse {
                    vip_be: r.key.dst_be,
                    vport_be: r.key.dport_be,
                    service_flags: svc.flags,
                    cookie: r.cookie | if unverified { REPLY_F_UNVERIFIED } else { 0 },
                    service_id: svc.id,
                    backend_id,
                    hop: Default::default(),
                    seq_delta: value.seq_delta,
                },
            )
        });
        Some(LocalEntries {
            key: r.key,
            value,
            reverse,
        })
    }
}

/// A synced flow in this node's terms: its `FLOWS` entry and, for NAT, the
/// `NAT_REVERSE` entry its replies need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEntries {
    pub key: FlowKey,
    pub value: FlowValue,
    pub reverse: Option<(FlowKey, NatReverse)>,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{config::Config, plan::Planner};

    const CONFIG: &str = r#"
[[service]]
name = "nat"
vip = "192.0.2.20"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
backend = [{ address = "203.0.113.11", port = 8080 }, { address = "203.0.113.12", port = 8080 }]
"#;

    #[test]
    fn records_round_trip_and_translate_between_differently_numbered_nodes() {
        let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let a = Planner::default()
            .plan(&config, &Default::default())
            .unwrap();
        // Node B had another backend before, so its ids differ.
        let mut pb = Planner::default();
        let other = Config::parse(
            Path::new("t.toml"),
            &CONFIG.replace(
                "{ address = \"203.0.113.11\"",
                "{ address = \"203.0.113.9\", port = 8080 }, { address = \"203.0.113.11\"",
            ),
        )
        .unwrap();
        pb.plan(&other, &Default::default()).unwrap();
        let b = pb.plan(&config, &Default::default()).unwrap();
        let key = FlowKey {
            src_be: u32::from(Ipv4Addr::new(198, 51, 100, 2)).to_be(),
            dst_be: u32::from(Ipv4Addr::new(192, 0, 2, 20)).to_be(),
            sport_be: 40000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        };
        let skey = config.services[0].key();
        let target = BackendRef::new(skey, Ipv4Addr::new(203, 0, 113, 12), 8080);
        let (ida, idb) = (
            a.backend_id(&target).unwrap(),
            b.backend_id(&target).unwrap(),
        );
        assert_ne!(ida, idb, "the test wants different ids on the two nodes");
        let ev = FlowEvent {
            key,
            value: FlowValue {
                backend_id: ida,
                service_id: a.services[0].info.id,
                syn_seq_be: 77u32.to_be(),
                flags: 1,
                // Opened with a SYN cookie: the offset travels with it.
                cookie: lb_common::COOKIE_F_ON,
                acl_generation: 0,
                seq_delta: 0x8000_0001,
            },
        };
        let rec = SyncIndex::new(&a).record(&ev, 123).unwrap();
        let wire = encode(&[rec, rec]);
        assert_eq!(wire.len(), 2 * RECORD_LEN);
        let back = decode(&wire).unwrap();
        assert_eq!(back, vec![rec, rec]);
        let LocalEntries {
            key: k,
            value: v,
            reverse: rev,
        } = SyncIndex::new(&b).entries(&back[0]).unwrap();
        assert_eq!(k, key);
        assert_eq!((v.backend_id, v.service_id), (idb, b.services[0].info.id));
        assert_eq!((v.syn_seq_be, v.flags), (77u32.to_be(), 1));
        assert_eq!(
            (v.cookie, v.seq_delta),
            (lb_common::COOKIE_F_ON, 0x8000_0001)
        );
        let (rk, rv) = rev.unwrap();
        assert_eq!(rk.src_be, u32::from(Ipv4Addr::new(203, 0, 113, 12)).to_be());
        assert_eq!(
            (rk.sport_be, rk.dport_be),
            (8080u16.to_be(), 40000u16.to_be())
        );
        assert_eq!((rv.vip_be, rv.backend_id), (key.dst_be, idb));
        assert_eq!(
            (rv.cookie, rv.seq_delta),
            (lb_common::COOKIE_F_ON, 0x8000_0001),
            "the reply entry translates sequence numbers the same way"
        );
        assert_eq!(decode(&wire[..31]), Err(Reject::Malformed));
        // A service the peer does not have: nothing to write.
        let mut stray = back[0];
        stray.key.dport_be = 81u16.to_be();
        assert!(SyncIndex::new(&b).entries(&stray).is_none());
    }
}
