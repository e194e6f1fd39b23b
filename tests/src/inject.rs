//! Frames put on a wire as they are, from inside a namespace: what an
//! attacker with a raw socket sends (another host's source address, any
//! flags and numbers), through `AF_PACKET`.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

use crate::Netns;

/// Send `frames` out of `dev` in `ns`, unchanged.
pub fn send(ns: &Netns, dev: &str, frames: &[Vec<u8>]) -> std::io::Result<()> {
    let _in = ns.enter();
    let ifindex = crate::wire::ifindex(dev);
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            (libc::ETH_P_ALL as u16).to_be() as i32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor of our own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_ll is valid; the fields that matter are set.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    for f in frames {
        addr.sll_addr[..6].copy_from_slice(&f[..6]);
        // SAFETY: `f` and `addr` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
