//! Gratuitous ARP: tells the segment's hosts and routers that an address
//! now lives at this interface's MAC (an ARP request for the address, from
//! the address, broadcast; RFC 5227's announcement). Existing ARP cache
//! entries are overwritten by it; new ones are not created.

use std::net::Ipv4Addr;

use crate::net::link;

const ETH_P_ARP: u16 = 0x0806;

/// The 42-byte frame announcing `addr` at `mac`.
pub fn frame(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target MAC zero, target address = the announced one.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// Sends gratuitous ARPs through one packet socket, kept open for the
/// node's life: closing a packet socket waits for an RCU grace period,
/// which on a busy host took the HA thread off its adverts for tens of
/// milliseconds per frame (issue 20).
#[derive(Clone)]
pub struct Sender {
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl Sender {
    pub fn open() -> std::io::Result<Sender> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: a plain socket call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                // No protocol: it receives nothing, only sends.
                0,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Sender {
            // SAFETY: a fresh descriptor of our own.
            fd: std::sync::Arc::new(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }),
        })
    }

    /// Send one gratuitous ARP for `addr` out of `iface`.
    pub fn send(&self, iface: &str, addr: Ipv4Addr) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let err = || {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no interface {iface}"),
            )
        };
        let ifindex = link::ifindex(iface).ok_or_else(err)?;
        let mac = link::mac(iface).ok_or_else(err)?;
        let f = frame(mac, addr);
        // SAFETY: all-zero sockaddr_ll is valid; the fields sendto needs
        // are set.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = ETH_P_ARP.to_be();
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `f` and `sa` are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[192, 0, 2, 100], "sender address");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[192, 0, 2, 100], "target = sender");
    }
}
