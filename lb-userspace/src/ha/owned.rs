//! The addresses a MASTER owns on the host, in the order they are
//! announced. Its own file: the node and the address worker both use it.

use std::net::Ipv4Addr;

use crate::config::{Config, HaConfig};

/// What the node owns on the host when MASTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// The addresses a MASTER of `config` owns: the floating addresses (the
/// backends' way back) first, then every service VIP (on `vip_interface`):
/// gratuitous ARPs go in this order, so the return path has moved when
/// the first packets come in through the new MASTER (issue 20: a SYN let in
/// by the new MASTER had its SYN-ACK sent to the dead one).
pub fn owned_addresses(config: &Config, h: &HaConfig) -> Vec<Owned> {
    let mut out: Vec<Owned> = h
        .floating
        .iter()
        .map(|f| Owned {
            iface: f.interface.clone(),
            addr: f.address,
            prefix_len: f.prefix_len,
        })
        .collect();
    for s in &config.services {
        if !out.iter().any(|o| o.addr == s.vip) {
            out.push(Owned {
                iface: h.vip_interface.clone(),
                addr: s.vip,
                prefix_len: 32,
            });
        }
    }
    out
}
