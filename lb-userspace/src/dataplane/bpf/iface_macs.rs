//! The attached interfaces' MACs in `IFACE_MACS`: the data path leaves a
//! unicast frame addressed to another host to the kernel (`lb-ebpf`'s
//! `l2.rs`). Written at start and checked again every second (a changed
//! MAC, an interface that came back with another index).

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{IfaceMac, MAX_IFINDEX, names};
use tracing::{info, warn};

use super::{error::BpfError, handles::again};
use crate::net::link;

pub struct IfaceMacs {
    map: Array<MapData, IfaceMac>,
    /// What was written: (ifindex, MAC) per interface.
    written: Vec<(u32, [u8; 6])>,
}

impl IfaceMacs {
    pub fn new(ebpf: &Ebpf) -> Result<IfaceMacs, BpfError> {
        Ok(IfaceMacs {
            map: again(ebpf, names::IFACE_MACS)?,
            written: Vec::new(),
        })
    }

    /// Make the map say each of `ifaces`' current index and MAC; entries of
    /// indexes no longer theirs are cleared.
    pub fn sync(&mut self, ifaces: &[String]) {
        let now: Vec<(u32, [u8; 6])> = ifaces
            .iter()
            .filter_map(|i| Some((link::ifindex(i)?, link::mac(i)?)))
            .collect();
        if now == self.written {
            return;
        }
        for (ifindex, _) in &self.written {
            if !now.iter().any(|(i, _)| i == ifindex) {
                let _ = self.map.set(*ifindex, IfaceMac::default(), 0);
            }
        }
        for (ifindex, mac) in &now {
            if *ifindex >= MAX_IFINDEX {
                warn!(
                    ifindex,
                    max = MAX_IFINDEX,
                    "interface index too large: frames to other hosts' MACs are not told apart on it"
                );
                continue;
            }
            let v = IfaceMac {
                mac: *mac,
                set: 1,
                _pad: 0,
            };
            if let Err(e) = self.map.set(*ifindex, v, 0) {
                warn!(ifindex, error = %e, "writing IFACE_MACS");
            }
        }
        info!(
            interfaces = now.len(),
            "interface MACs written for the data path's destination check"
        );
        self.written = now;
    }
}
