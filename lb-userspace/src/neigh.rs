//! Managed neighbour entries for backends (kernel ≥ 5.16, `NTF_EXT_MANAGED`).
//!
//! DSR sends a packet still addressed to the VIP to the backend's MAC, so if
//! the FIB lookup finds no neighbour entry, handing the packet to the kernel
//! would not make it resolve the backend. Instead the daemon asks the kernel
//! to keep an entry for each backend's next hop resolved at all times, which
//! is what managed entries were added for. NAT does not need this (the
//! rewritten packet makes the kernel resolve), but benefits from it too.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourHeader, NeighbourMessage,
        NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum NeighError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink: {0}")]
    Decode(String),
    #[error("{what}: kernel answered {err}")]
    Kernel { what: String, err: std::io::Error },
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
    #[error("rtnetlink unavailable: {0}")]
    Unavailable(String),
}

/// Where the kernel sends packets for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub ifindex: u32,
    /// The neighbour to resolve: the gateway, or the destination itself.
    pub next_hop: Ipv4Addr,
}

pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    pub fn open() -> Result<Self, NeighError> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NeighError::Socket)?;
        sock.bind_auto().map_err(NeighError::Socket)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NeighError::Socket)?;
        Ok(Self { sock, seq: 1 })
    }

    /// Send one request and collect the replies up to its ACK or error.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NeighError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.sock.send(&buf, 0).map_err(NeighError::Socket)?;

        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full().map_err(NeighError::Socket)?;
            let mut off = 0;
            while off < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                    .map_err(|e| NeighError::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                None => Ok(out),
                                Some(code) => Err(NeighError::Kernel {
                                    what: what.to_string(),
                                    err: std::io::Error::from_raw_os_error(-code.get()),
                                }),
                            };
                        }
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::InnerMessage(m) => out.push(m),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    /// The kernel's route to `dst` (RTM_GETROUTE for one address).
    pub fn route_to(&mut self, dst: Ipv4Addr) -> Result<Route, NeighError> {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: 32,
            ..RouteHeader::default()
        };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        let replies = self.request(
            RouteNetlinkMessage::GetRoute(msg),
            NLM_F_ACK,
            &format!("route to {dst}"),
        )?;
        for r in replies {
            if let RouteNetlinkMessage::NewRoute(r) = r {
                let mut ifindex = None;
                let mut gateway = None;
                for a in r.attributes {
                    match a {
                        RouteAttribute::Oif(i) => ifindex = Some(i),
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(g),
                        _ => {}
                    }
                }
                if let Some(ifindex) = ifindex {
                    return Ok(Route {
                        ifindex,
                        next_hop: gateway.unwrap_or(dst),
                    });
                }
            }
        }
        Err(NeighError::NoRoute(dst))
    }

    /// Create (or convert) a managed neighbour entry for `addr` on `ifindex`;
    /// the kernel then resolves it and keeps it resolved.
    pub fn ensure_managed(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<(), NeighError> {
        let mut msg = NeighbourMessage::default();
        msg.header = NeighbourHeader {
            family: AddressFamily::Inet,
            ifindex,
            state: NeighbourState::None,
            ..NeighbourHeader::default()
        };
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        self.request(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &format!("managed neighbour {addr}"),
        )
        .map(|_| ())
    }

    /// Remove the neighbour entry for `addr` on `ifindex` (the kernel
    /// re-resolves it on demand if anything else still needs it).
    pub fn remove(&mut self, ifindex: u32, addr: Ipv4Addr) -> Result<(), NeighError> {
        let mut msg = NeighbourMessage::default();
        msg.header = NeighbourHeader {
            family: AddressFamily::Inet,
            ifindex,
            ..NeighbourHeader::default()
        };
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                addr,
            )));
        self.request(
            RouteNetlinkMessage::DelNeighbour(msg),
            NLM_F_ACK,
            &format!("delete neighbour {addr}"),
        )
        .map(|_| ())
    }
}

/// Run `f` for each item over one netlink socket, one result per item, so
/// one failing item does not stop the others.
fn for_each<T: Copy, R>(
    items: &[T],
    mut f: impl FnMut(&mut Netlink, T) -> Result<R, NeighError>,
) -> Vec<(T, Result<R, NeighError>)> {
    match Netlink::open() {
        Ok(mut nl) => items.iter().map(|&i| (i, f(&mut nl, i))).collect(),
        Err(e) => {
            let msg = e.to_string();
            items
                .iter()
                .map(|&i| (i, Err(NeighError::Unavailable(msg.clone()))))
                .collect()
        }
    }
}

/// Make sure every backend's next hop has a managed neighbour entry.
pub fn manage_backends(addrs: &[Ipv4Addr]) -> Vec<(Ipv4Addr, Result<Route, NeighError>)> {
    for_each(addrs, |nl, a| {
        let route = nl.route_to(a)?;
        nl.ensure_managed(route.ifindex, route.next_hop)?;
        Ok(route)
    })
}

/// Remove the managed entries this process added (on clean shutdown).
pub fn release(routes: &[Route]) -> Vec<(Route, Result<(), NeighError>)> {
    let mut unique = routes.to_vec();
    unique.sort_by_key(|r| (r.ifindex, r.next_hop));
    unique.dedup();
    for_each(&unique, |nl, r| nl.remove(r.ifindex, r.next_hop))
}
