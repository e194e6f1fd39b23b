//! Interface addresses the HA MASTER owns (VIPs, floating gateways).

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};

use super::{client::Netlink, error::NetError};

/// An address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfAddress {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Netlink {
    /// The IPv4 addresses on `ifindex`, as the kernel lists them.
    async fn addresses(&self, ifindex: u32) -> Result<Vec<AddressMessage>, NetError> {
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        while let Some(m) = stream
            .try_next()
            .await
            .map_err(Self::request_error(format!(
                "addresses of interface {ifindex}"
            )))?
        {
            out.push(m);
        }
        Ok(out)
    }

    fn ipv4_of(m: &AddressMessage) -> Option<Ipv4Addr> {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
            _ => None,
        })
    }

    /// The first IPv4 address of `ifindex`.
    pub async fn first_ipv4(&self, ifindex: u32) -> Result<Option<Ipv4Addr>, NetError> {
        Ok(self
            .addresses(ifindex)
            .await?
            .iter()
            .find_map(Self::ipv4_of))
    }

    /// Add `a` unless it is there already. Whether it was added.
    pub async fn add_address(&self, a: IfAddress) -> Result<bool, NetError> {
        if self.has_address(a).await? {
            return Ok(false);
        }
        match self
            .handle
            .address()
            .add(a.ifindex, IpAddr::V4(a.addr), a.prefix_len)
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = Self::request_error(format!("add {}/{}", a.addr, a.prefix_len))(e);
                if e.errno() == Some(libc::EEXIST) {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    pub async fn has_address(&self, a: IfAddress) -> Result<bool, NetError> {
        Ok(self
            .addresses(a.ifindex)
            .await?
            .iter()
            .any(|m| Self::ipv4_of(m) == Some(a.addr)))
    }

    /// Remove `a` (any prefix length) if it is there. Whether it was.
    pub async fn remove_address(&self, a: IfAddress) -> Result<bool, NetError> {
        let mut removed = false;
        for m in self.addresses(a.ifindex).await? {
            if Self::ipv4_of(&m) == Some(a.addr) {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(Self::request_error(format!("remove {}", a.addr)))?;
                removed = true;
            }
        }
        Ok(removed)
    }
}
