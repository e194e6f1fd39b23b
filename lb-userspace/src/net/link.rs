//! Interface facts read with ioctls in the caller's network namespace
//! (not /sys, which shows the namespace that mounted it): index, MAC, and
//! whether the link is up with a carrier.

use std::ffi::CString;

/// Index of interface `name`, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn ifreq(name: &str) -> Option<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain-old-data struct.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Some(r)
}

/// Run `request` on a throwaway datagram socket.
fn ioctl(name: &str, request: libc::Ioctl) -> Option<libc::ifreq> {
    let mut r = ifreq(name)?;
    // SAFETY: a socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `r` is a valid ifreq for this request.
    let rc = unsafe { libc::ioctl(fd, request, &mut r) };
    // SAFETY: our fd.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(r)
}

/// The interface's MAC address.
pub fn mac(name: &str) -> Option<[u8; 6]> {
    let r = ioctl(name, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { r.ifr_ifru.ifru_hwaddr };
    let mut m = [0u8; 6];
    for (d, s) in m.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Some(m)
}

/// Administratively up and with a carrier (IFF_UP and IFF_RUNNING).
pub fn is_up(name: &str) -> bool {
    ioctl(name, libc::SIOCGIFFLAGS).is_some_and(|r| {
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        let f = unsafe { r.ifr_ifru.ifru_flags } as libc::c_int;
        f & libc::IFF_UP != 0 && f & libc::IFF_RUNNING != 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_a_missing_interface_is_not() {
        assert_eq!(ifindex("lo"), Some(1));
        assert!(is_up("lo"));
        assert!(!is_up("xdplb-nonexistent"));
        assert_eq!(mac("lo"), Some([0; 6]));
        assert_eq!(ifindex("xdplb-nonexistent"), None);
    }
}
