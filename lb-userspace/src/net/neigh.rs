//! Managed neighbour entries for backends (Linux ≥ 5.16, `NTF_EXT_MANAGED`):
//! the kernel keeps them resolved, so the XDP program's FIB lookups find
//! backends' MACs. (An unresolved next hop still works, through the tc
//! program's `redirect_neigh`; managed entries keep it off that slow path.)
//!
//! Host safety: an entry xdplb creates carries [`NEIGH_PROTOCOL`] as its
//! protocol. Only such entries, and entries the kernel learned from traffic
//! (no mark, not static, not managed: a cache, nobody's configuration), are
//! ever changed or deleted; a static entry, someone else's managed one or
//! one marked by another program is left exactly as it is. A daemon
//! restarted after a crash recognises the entries its predecessor made by
//! the same mark. A link going down flushes every entry on it, managed ones
//! too, so the daemon looks again every second (`Host::keep_neighbours`).

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::{
    AddressFamily,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourHeader, NeighbourMessage,
        NeighbourState,
    },
    route::RouteProtocol,
};

use super::{client::Netlink, error::NetError};

/// Protocol mark of the neighbour entries xdplb creates ('X').
pub const NEIGH_PROTOCOL: u8 = 0x58;

/// What `ensure_managed` found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Created now, managed and marked as ours.
    Created,
    /// A learned entry (the kernel's cache, nobody's configuration) made
    /// managed and ours: after a link flap flushed ours, traffic makes one
    /// of these before we look again.
    Replaced,
    /// Ours already (an earlier daemon made it).
    Ours,
    /// Someone else's entry (described): left untouched.
    Theirs(String),
}

/// An entry found in the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    ours: bool,
    protocol: Option<RouteProtocol>,
    state: NeighbourState,
    managed: bool,
}

impl Neighbour {
    /// Ours (made by xdplb).
    pub fn is_ours(&self) -> bool {
        self.ours
    }

    /// Learned by the kernel from traffic: no protocol mark, not static,
    /// not managed. Replacing it changes nobody's configuration.
    pub fn is_learned(&self) -> bool {
        self.protocol.is_none()
            && !self.managed
            && !matches!(
                self.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            )
    }

    /// Has a link-layer address the data path can use.
    pub fn is_resolved(&self) -> bool {
        matches!(
            self.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        )
    }

    fn describe(&self) -> String {
        format!(
            "{:?}{}{}",
            self.state,
            if self.managed { ", managed" } else { "" },
            match self.protocol {
                Some(p) => format!(", protocol {}", u8::from(p)),
                None => String::new(),
            }
        )
    }
}

impl Netlink {
    /// The kernel's IPv4 neighbour table, by (interface, address).
    pub async fn neighbour_table(
        &self,
    ) -> Result<std::collections::HashMap<(u32, Ipv4Addr), Neighbour>, NetError> {
        let mut out = std::collections::HashMap::new();
        let mut dump = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(m) = dump
            .try_next()
            .await
            .map_err(Self::request_error("list neighbours"))?
        {
            let mut dst = None;
            let mut protocol = None;
            let mut ext = NeighbourExtFlags::empty();
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some(*d),
                    NeighbourAttribute::Protocol(p) => protocol = Some(*p),
                    NeighbourAttribute::ExtFlags(f) => ext = *f,
                    _ => {}
                }
            }
            if let Some(d) = dst {
                out.insert(
                    (m.header.ifindex, d),
                    Neighbour {
                        ours: protocol == Some(RouteProtocol::Other(NEIGH_PROTOCOL)),
                        protocol,
                        state: m.header.state,
                        managed: ext.contains(NeighbourExtFlags::Managed),
                    },
                );
            }
        }
        Ok(out)
    }

    async fn find_neighbour(
        &self,
        ifindex: u32,
        addr: Ipv4Addr,
    ) -> Result<Option<Neighbour>, NetError> {
        Ok(self.neighbour_table().await?.remove(&(ifindex, addr)))
    }

    /// Make sure `addr` on `ifindex` has a managed entry: create one (marked
    /// ours) if there is none, make a learned one ours; never change an
    /// entry someone configured (static, managed or marked by another).
    pub async fn ensure_managed(&self, ifindex: u32, addr: Ipv4Addr) -> Result<Ensured, NetError> {
        let replace = match self.find_neighbour(ifindex, addr).await? {
            Some(f) if f.ours => return Ok(Ensured::Ours),
            Some(f) if f.is_learned() => true,
            Some(f) => return Ok(Ensured::Theirs(f.describe())),
            None => false,
        };
        let mut add = self.handle.neighbours().add(ifindex, IpAddr::V4(addr));
        if replace {
            add = add.replace();
        }
        {
            let m = add.message_mut();
            m.header.state = NeighbourState::None;
            m.attributes
                .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            m.attributes
                .push(NeighbourAttribute::Protocol(RouteProtocol::Other(
                    NEIGH_PROTOCOL,
                )));
        }
        // A new entry without NLM_F_REPLACE: one that appeared meanwhile is
        // kept (and looked at again next time).
        match add.execute().await {
            Ok(()) if replace => Ok(Ensured::Replaced),
            Ok(()) => Ok(Ensured::Created),
            Err(e) => {
                let e = Self::request_error(format!("managed neighbour {addr}"))(e);
                if e.errno() == Some(libc::EEXIST) {
                    Ok(Ensured::Theirs("created meanwhile".into()))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Delete the entry for `addr` on `ifindex` if (and only if) it is ours.
    /// Returns whether one was deleted.
    pub async fn release_managed(&self, ifindex: u32, addr: Ipv4Addr) -> Result<bool, NetError> {
        match self.find_neighbour(ifindex, addr).await? {
            Some(f) if f.ours => {}
            _ => return Ok(false),
        }
        let mut m = NeighbourMessage::default();
        m.header = NeighbourHeader {
            family: AddressFamily::Inet,
            ifindex,
            ..NeighbourHeader::default()
        };
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        match self.handle.neighbours().del(m).execute().await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = Self::request_error(format!("delete neighbour {addr}"))(e);
                if e.errno() == Some(libc::ENOENT) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }
}
