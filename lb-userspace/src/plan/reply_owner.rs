//! Which NAT backends answer without reply entries (issue 21: one table
//! insert per connection).
//!
//! A backend address, port and protocol used by one NAT service alone gets
//! `BACKEND_F_SOLE_REPLY`, and `REPLY_OWNERS` maps it to that backend's id:
//! the data path finds a reply's connection through the id's service (VIP
//! and port) and the client's flow entry, so a new connection writes no
//! reply entry. Used by two NAT services, the client's address and port
//! cannot name the connection: such backends keep reply entries (and the
//! one-client-port check).
//!
//! When a reload makes a sole backend shared, its owner entry stays (while
//! its id does): the connections it opened without reply entries keep
//! their replies, and the other service's connections, whose flow entries
//! the owner's service does not name, fall back to their reply entries.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::ReplyOwnerKey;

/// The owner entries for NAT backends `nat` ((address, port, protocol) and
/// backend id, one pair per service using it), given the entries the last
/// plan had: (owners, ids whose backends are sole).
pub fn owners(
    nat: &[(ReplyOwnerKey, u32)],
    previous: &BTreeMap<ReplyOwnerKey, u32>,
) -> (BTreeMap<ReplyOwnerKey, u32>, BTreeSet<u32>) {
    let mut users: BTreeMap<ReplyOwnerKey, Vec<u32>> = BTreeMap::new();
    for (key, id) in nat {
        users.entry(*key).or_default().push(*id);
    }
    let mut owners = BTreeMap::new();
    let mut sole = BTreeSet::new();
    for (key, ids) in users {
        match ids.as_slice() {
            [id] => {
                owners.insert(key, *id);
                sole.insert(*id);
            }
            _ => {
                if let Some(id) = previous.get(&key).filter(|id| ids.contains(id)) {
                    owners.insert(key, *id);
                }
            }
        }
    }
    (owners, sole)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, port: u16) -> ReplyOwnerKey {
        ReplyOwnerKey {
            addr_be: u32::from_be_bytes([10, 0, 0, last]).to_be(),
            port_be: port.to_be(),
            proto: 6,
            _pad: 0,
        }
    }

    #[test]
    fn a_backend_of_one_service_is_sole_and_owned() {
        let (o, sole) = owners(&[(key(1, 80), 3), (key(2, 80), 4)], &BTreeMap::new());
        assert_eq!(o, BTreeMap::from([(key(1, 80), 3), (key(2, 80), 4)]));
        assert_eq!(sole, BTreeSet::from([3, 4]));
    }

    #[test]
    fn a_shared_backend_is_not_sole_and_keeps_only_a_previous_owner_still_there() {
        let shared = [(key(1, 80), 3), (key(1, 80), 7)];
        // New: nobody owns it.
        let (o, sole) = owners(&shared, &BTreeMap::new());
        assert!(o.is_empty() && sole.is_empty());
        // It was service 1's alone (id 3): the entry stays, not sole.
        let (o, sole) = owners(&shared, &BTreeMap::from([(key(1, 80), 3)]));
        assert_eq!(o, BTreeMap::from([(key(1, 80), 3)]));
        assert!(sole.is_empty());
        // Its previous owner's id is gone.
        let (o, _) = owners(
            &[(key(1, 80), 7), (key(1, 80), 8)],
            &BTreeMap::from([(key(1, 80), 3)]),
        );
        assert!(o.is_empty());
    }

    #[test]
    fn another_port_or_protocol_is_another_backend() {
        let mut udp = key(1, 80);
        udp.proto = 17;
        let (o, sole) = owners(
            &[(key(1, 80), 3), (key(1, 81), 7), (udp, 9)],
            &BTreeMap::new(),
        );
        assert_eq!(o.len(), 3);
        assert_eq!(sole, BTreeSet::from([3, 7, 9]));
    }
}
