//! The HA pair's messages on the wire (UDP): adverts, flow-sync batches and
//! the challenge and response that prove a peer's epoch is live, each
//! authenticated with HMAC-SHA256 over every byte before the tag.
//! `docs/ha.md` has the field table.

use std::net::Ipv4Addr;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// "XLHA".
pub const MAGIC: [u8; 4] = *b"XLHA";
/// 3: challenge and response (issue 20), the sender's MACs in adverts.
/// Nodes of different versions do not talk (`wrong_version`): upgrade a
/// pair one node at a time only with the old one stopped.
pub const VERSION: u8 = 3;
pub const HEADER_LEN: usize = 36;
pub const TAG_LEN: usize = 32;
/// Largest payload: keeps a datagram under 1400 bytes on any usual MTU.
pub const MAX_PAYLOAD: usize = 1280;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// I am here, with this priority and state.
    Advert = 1,
    /// Flows the sender's data path created (payload: flow records).
    Flows = 2,
    /// Prove your epoch: answer this nonce (payload: 16 bytes) from it.
    Challenge = 3,
    /// The answer (payload: the challenge's nonce), from the sender's
    /// current epoch and sequence.
    Response = 4,
    /// Cluster: part of the sender's whole flow table, sent to a peer it
    /// heard for the first time in that peer's life (payload: flow
    /// records). Written only where the receiver has no entry of its own.
    Bulk = 5,
    /// Cluster: the sender's whole table has been sent (payload: the number
    /// of records, 8 bytes).
    BulkEnd = 6,
}

/// Bytes of a challenge's nonce.
pub const NONCE_LEN: usize = 16;

/// Most MACs an advert carries (the sender's data-path interfaces).
pub const MAX_MACS: usize = 8;

/// An advert's payload: the sender's data-path MACs, 6 bytes each, so the
/// peer may accept frames sent to them once the sender is declared dead.
pub fn macs_payload(macs: &[[u8; 6]]) -> Vec<u8> {
    macs.iter().take(MAX_MACS).flatten().copied().collect()
}

/// The MACs an advert's payload names (a malformed payload names none).
pub fn payload_macs(payload: &[u8]) -> Vec<[u8; 6]> {
    if !payload.len().is_multiple_of(6) || payload.len() > 6 * MAX_MACS {
        return Vec::new();
    }
    payload
        .chunks(6)
        .map(|c| c.try_into().expect("6 bytes"))
        .collect()
}

/// A cluster advert's payload: the peers whose flow tables the sender still
/// wants, 4 bytes each.
pub fn addresses_payload(addresses: &[Ipv4Addr]) -> Vec<u8> {
    addresses
        .iter()
        .take(MAX_PAYLOAD / 4)
        .flat_map(|a| a.octets())
        .collect()
}

/// The addresses a cluster advert's payload names (a malformed one: none).
pub fn payload_addresses(payload: &[u8]) -> Vec<Ipv4Addr> {
    if !payload.len().is_multiple_of(4) {
        return Vec::new();
    }
    payload
        .chunks(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

/// A node's state as adverts carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WireState {
    Init = 0,
    Backup = 1,
    Master = 2,
    Fault = 3,
    /// A cluster node: forwarding, as every node of a cluster does.
    Active = 4,
}

impl WireState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Init,
            1 => Self::Backup,
            2 => Self::Master,
            3 => Self::Fault,
            4 => Self::Active,
            _ => return None,
        })
    }
}

/// The authenticated header (and payload) of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub group: u8,
    /// 0: the sender is giving up MASTER (the peer takes over at once).
    pub priority: u8,
    pub state: WireState,
    pub advert_interval_ms: u16,
    /// The sender's HA address (must be the datagram's source).
    pub sender: Ipv4Addr,
    /// The sender's boot epoch: larger after every restart.
    pub epoch: u64,
    /// Per-epoch sequence number, one per message sent.
    pub seq: u64,
    pub payload: Vec<u8>,
}

/// Why a datagram was not accepted (also the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum Reject {
    #[error("malformed")]
    Malformed,
    #[error("wrong_version")]
    WrongVersion,
    #[error("wrong_group")]
    WrongGroup,
    #[error("bad_tag")]
    BadTag,
    #[error("unknown_peer")]
    UnknownPeer,
    #[error("stale_epoch")]
    StaleEpoch,
    #[error("replay")]
    Replay,
    /// From an epoch this node has not verified (the peer restarted, or
    /// this node did): not acted on; the node challenges the peer.
    #[error("unverified_epoch")]
    UnverifiedEpoch,
    /// A response to no challenge of ours (or to an old one).
    #[error("unsolicited_response")]
    UnsolicitedResponse,
}

impl Reject {
    pub const ALL: [Reject; 9] = [
        Reject::Malformed,
        Reject::WrongVersion,
        Reject::WrongGroup,
        Reject::BadTag,
        Reject::UnknownPeer,
        Reject::StaleEpoch,
        Reject::Replay,
        Reject::UnverifiedEpoch,
        Reject::UnsolicitedResponse,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::WrongVersion => "wrong_version",
            Reject::WrongGroup => "wrong_group",
            Reject::BadTag => "bad_tag",
            Reject::UnknownPeer => "unknown_peer",
            Reject::StaleEpoch => "stale_epoch",
            Reject::Replay => "replay",
            Reject::UnverifiedEpoch => "unverified_epoch",
            Reject::UnsolicitedResponse => "unsolicited_response",
        }
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length")
}

impl Message {
    /// The datagram: header, payload, tag.
    pub fn encode(&self, key: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len() + TAG_LEN);
        v.extend_from_slice(&MAGIC);
        v.push(VERSION);
        v.push(self.kind as u8);
        v.push(self.group);
        v.push(self.priority);
        v.push(self.state as u8);
        v.push(0); // flags, reserved
        v.extend_from_slice(&self.advert_interval_ms.to_be_bytes());
        v.extend_from_slice(&self.sender.octets());
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&(self.payload.len() as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        debug_assert_eq!(v.len(), HEADER_LEN);
        v.extend_from_slice(&self.payload);
        let mut m = mac(key);
        m.update(&v);
        v.extend_from_slice(&m.finalize().into_bytes());
        v
    }

    /// Parse and authenticate a datagram for `group`. The group is checked
    /// before the tag, so another pair's adverts on the same segment are
    /// told apart from forgeries. Replay is the caller's (per peer) check.
    pub fn decode(bytes: &[u8], group: u8, key: &[u8]) -> Result<Message, Reject> {
        if bytes.len() < HEADER_LEN + TAG_LEN || bytes[..4] != MAGIC {
            return Err(Reject::Malformed);
        }
        if bytes[4] != VERSION {
            return Err(Reject::WrongVersion);
        }
        let payload_len = u16::from_be_bytes([bytes[32], bytes[33]]) as usize;
        if payload_len > MAX_PAYLOAD || bytes.len() != HEADER_LEN + payload_len + TAG_LEN {
            return Err(Reject::Malformed);
        }
        if bytes[6] != group {
            return Err(Reject::WrongGroup);
        }
        let (signed, tag) = bytes.split_at(HEADER_LEN + payload_len);
        let mut m = mac(key);
        m.update(signed);
        m.verify_slice(tag).map_err(|_| Reject::BadTag)?;
        let kind = match bytes[5] {
            1 => Kind::Advert,
            2 => Kind::Flows,
            3 => Kind::Challenge,
            4 => Kind::Response,
            5 => Kind::Bulk,
            6 => Kind::BulkEnd,
            _ => return Err(Reject::Malformed),
        };
        let state = WireState::from_u8(bytes[8]).ok_or(Reject::Malformed)?;
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().unwrap());
        Ok(Message {
            kind,
            group,
            priority: bytes[7],
            state,
            advert_interval_ms: u16::from_be_bytes([bytes[10], bytes[11]]),
            sender: Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]),
            epoch: u64_at(16),
            seq: u64_at(24),
            payload: bytes[HEADER_LEN..HEADER_LEN + payload_len].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123";

    #[test]
    fn a_cluster_advert_names_the_tables_it_wants() {
        let want = [Ipv4Addr::new(10, 1, 0, 12), Ipv4Addr::new(10, 1, 0, 14)];
        let p = addresses_payload(&want);
        assert_eq!(p.len(), 8);
        assert_eq!(payload_addresses(&p), want);
        assert!(payload_addresses(&p[..7]).is_empty(), "malformed: none");
        assert!(payload_addresses(&[]).is_empty());
    }

    fn advert() -> Message {
        Message {
            kind: Kind::Advert,
            group: 7,
            priority: 150,
            state: WireState::Master,
            advert_interval_ms: 100,
            sender: Ipv4Addr::new(10, 255, 0, 1),
            epoch: 1_700_000_000_000_000,
            seq: 42,
            payload: Vec::new(),
        }
    }

    #[test]
    fn round_trip() {
        let m = advert();
        let bytes = m.encode(KEY);
        assert_eq!(bytes.len(), HEADER_LEN + TAG_LEN);
        assert_eq!(Message::decode(&bytes, 7, KEY), Ok(m.clone()));
        let mut flows = m;
        flows.kind = Kind::Flows;
        flows.payload = vec![9; 64];
        let bytes = flows.encode(KEY);
        assert_eq!(Message::decode(&bytes, 7, KEY), Ok(flows.clone()));
        for kind in [Kind::Challenge, Kind::Response] {
            let mut m = flows.clone();
            m.kind = kind;
            m.payload = vec![7; NONCE_LEN];
            assert_eq!(Message::decode(&m.encode(KEY), 7, KEY), Ok(m));
        }
    }

    #[test]
    fn adverts_carry_the_senders_macs() {
        let macs = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
        assert_eq!(payload_macs(&macs_payload(&macs)), macs.to_vec());
        assert_eq!(payload_macs(&[1, 2, 3]), Vec::<[u8; 6]>::new());
        assert_eq!(payload_macs(&[]), Vec::<[u8; 6]>::new());
        let many = [[2, 0, 0, 0, 0, 9]; 12];
        assert_eq!(payload_macs(&macs_payload(&many)).len(), MAX_MACS);
    }

    #[test]
    fn any_changed_byte_or_another_key_fails_the_tag() {
        let bytes = advert().encode(KEY);
        assert_eq!(
            Message::decode(&bytes, 7, b"another key, 16+ bytes"),
            Err(Reject::BadTag)
        );
        for i in 7..bytes.len() {
            if (32..36).contains(&i) {
                continue; // length and reserved: malformed or tag, both refused
            }
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert_eq!(Message::decode(&b, 7, KEY), Err(Reject::BadTag), "byte {i}");
        }
    }

    #[test]
    fn group_version_and_shape_are_checked() {
        let bytes = advert().encode(KEY);
        assert_eq!(Message::decode(&bytes, 8, KEY), Err(Reject::WrongGroup));
        let mut b = bytes.clone();
        b[4] = VERSION + 1;
        assert_eq!(Message::decode(&b, 7, KEY), Err(Reject::WrongVersion));
        assert_eq!(
            Message::decode(&bytes[..bytes.len() - 1], 7, KEY),
            Err(Reject::Malformed)
        );
        assert_eq!(Message::decode(b"XLHA", 7, KEY), Err(Reject::Malformed));
        let mut b = bytes;
        b[0] = b'Y';
        assert_eq!(Message::decode(&b, 7, KEY), Err(Reject::Malformed));
    }
}
