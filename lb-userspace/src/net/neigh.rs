//! Managed neighbour entries for backends (Linux ≥ 5.16, `NTF_EXT_MANAGED`):
//! the kernel keeps them resolved, so the XDP program's FIB lookups find
//! backends' MACs. (An unresolved next hop still works, through the tc
//! program's `redirect_neigh`; managed entries keep it off that slow path.)
//!
//! Host safety: an entry xdplb creates carries [`NEIGH_PROTOCOL`] as its
//! protocol. Only such entries are ever changed or deleted; an entry that
//! was there before (a gateway's, a static one, a dynamic one) is left
//! exactly as it is. A daemon restarted after a crash recognises the
//! entries its predecessor made by the same mark.

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
    /// Ours already (an earlier daemon made it).
    Ours,
    /// Someone else's entry (described): left untouched.
    Theirs(String),
}

/// An entry found in the kernel's table.
struct Found {
    ours: bool,
    state: NeighbourState,
    managed: bool,
}

impl Netlink {
    async fn find_neighbour(
        &self,
        ifindex: u32,
        addr: Ipv4Addr,
    ) -> Result<Option<Found>, NetError> {
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
            if m.header.ifindex != ifindex {
                continue;
            }
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
            if dst == Some(addr) {
                return Ok(Some(Found {
                    ours: protocol == Some(RouteProtocol::Other(NEIGH_PROTOCOL)),
                    state: m.header.state,
                    managed: ext.contains(NeighbourExtFlags::Managed),
                }));
            }
        }
        Ok(None)
    }

    /// Make sure `addr` on `ifindex` has a managed entry: create one (marked
    /// ours) if there is none; never change an entry someone else made.
    pub async fn ensure_managed(&self, ifindex: u32, addr: Ipv4Addr) -> Result<Ensured, NetError> {
        match self.find_neighbour(ifindex, addr).await? {
            Some(f) if f.ours => return Ok(Ensured::Ours),
            Some(f) => {
                return Ok(Ensured::Theirs(format!(
                    "{:?}{}",
                    f.state,
                    if f.managed { ", managed" } else { "" }
                )));
            }
            None => {}
        }
        let mut add = self.handle.neighbours().add(ifindex, IpAddr::V4(addr));
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
        // Without NLM_F_REPLACE: an entry that appeared meanwhile is kept.
        match add.execute().await {
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
