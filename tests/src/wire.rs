//! Byte-level helpers for checking what the XDP program emits, written from
//! the RFCs and independent of the program's own (incremental) arithmetic:
//! full Internet checksums, header offsets, and the ICMP "fragmentation
//! needed" reply the program should build.

pub const ETH_LEN: usize = 14;
pub const IP_OFF: usize = ETH_LEN;
pub const L4_OFF: usize = ETH_LEN + 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// One's-complement sum of `bytes` as big-endian 16-bit words (an odd last
/// byte is padded with zero), folded to 16 bits, not inverted.
pub fn ones_sum(bytes: &[u8], mut sum: u32) -> u16 {
    for c in bytes.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The checksum field value that makes `bytes` (with a zero field) sum right.
pub fn checksum(bytes: &[u8]) -> u16 {
    !ones_sum(bytes, 0)
}

/// Sum of an IPv4 header including its checksum field: 0xffff when right.
/// The difference from 0xffff is the "damage" a header carries.
pub fn ipv4_residual(frame: &[u8]) -> u16 {
    ones_sum(&frame[IP_OFF..IP_OFF + 20], 0)
}

/// Sum over the L4 pseudo-header and segment (checksum field included) of an
/// option-less IPv4 frame: 0xffff when the L4 checksum is right. `None` for a
/// UDP datagram without checksum, or when the frame is shorter than its IPv4
/// total length says.
pub fn l4_residual(frame: &[u8]) -> Option<u16> {
    let proto = frame[IP_OFF + 9];
    let tot_len = u16::from_be_bytes([frame[IP_OFF + 2], frame[IP_OFF + 3]]) as usize;
    let end = ETH_LEN + tot_len;
    if frame.len() < end || tot_len < 20 {
        return None;
    }
    let segment = &frame[L4_OFF..end];
    if proto == PROTO_UDP && segment.len() >= 8 && segment[6..8] == [0, 0] {
        return None;
    }
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&frame[IP_OFF + 12..IP_OFF + 20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    let s = ones_sum(&pseudo, 0);
    Some(ones_sum(segment, s as u32))
}

/// Set the IPv4 header checksum of an option-less frame to the right value.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = ((frame[IP_OFF] & 0x0f) as usize * 4).max(20);
    let end = (IP_OFF + ihl).min(frame.len());
    frame[IP_OFF + 10..IP_OFF + 12].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[IP_OFF..end]);
    frame[IP_OFF + 10..IP_OFF + 12].copy_from_slice(&c.to_be_bytes());
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no interface {name}");
    i
}

/// The XDP metadata the program puts in front of a packet it hands to the
/// kernel for neighbour resolution (`lb_common::NeighMeta`, native order).
pub fn neigh_meta(ifindex: u32, next_hop: [u8; 4]) -> Vec<u8> {
    let mut v = lb_common::NEIGH_META_MAGIC.to_ne_bytes().to_vec();
    v.extend_from_slice(&ifindex.to_ne_bytes());
    v.extend_from_slice(&next_hop);
    v
}

/// The ICMP "fragmentation needed" (type 3, code 4) the program answers an
/// oversize DF `frame` with: back to the sender's MAC from the MAC it was
/// sent to, from its destination address to its source, IPv4 TOS 0xc0, TTL
/// 64, no DF, quoting its IPv4 header and the first 8 bytes of L4.
pub fn icmp_frag_needed(frame: &[u8], mtu: u16) -> Vec<u8> {
    icmp_error(frame, 3, 4, mtu)
}

/// ICMP "time exceeded in transit" for `frame`, shaped as
/// [`icmp_frag_needed`] (the last header field unused).
pub fn icmp_time_exceeded(frame: &[u8]) -> Vec<u8> {
    icmp_error(frame, 11, 0, 0)
}

/// RFC 1624 (eqn. 3): checksum `hc` after a 16-bit word changes from `m`
/// to `m2`.
pub fn csum_update(hc: u16, m: u16, m2: u16) -> u16 {
    let mut sum = (!hc) as u32 + (!m) as u32 + m2 as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 1624 (eqn. 3) for several 16-bit words at once (big-endian values),
/// folded as the program folds: checksum `hc` after `old` became `new`.
pub fn csum_replace(hc: u16, old: &[u16], new: &[u16]) -> u16 {
    let mut sum = (!hc) as u32;
    for w in old {
        sum += (!w) as u32;
    }
    for w in new {
        sum += *w as u32;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Big-endian 16-bit words of an IPv4 address.
pub fn addr_words(a: &[u8]) -> [u16; 2] {
    [
        u16::from_be_bytes([a[0], a[1]]),
        u16::from_be_bytes([a[2], a[3]]),
    ]
}

/// An ICMP error frame (type, code, the header's second word `rest`)
/// quoting `quote` (an IPv4 packet's start), all checksums right.
pub fn icmp_error_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    icmp_type: u8,
    code: u8,
    rest: u32,
    quote: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&macs.1);
    v.extend_from_slice(&macs.0);
    v.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + 8 + quote.len()) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&ip);
    let mut icmp = vec![icmp_type, code, 0, 0];
    icmp.extend_from_slice(&rest.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&icmp);
    v
}

/// The echo reply the program answers an ICMP echo request `frame` to a
/// VIP with: MACs and addresses swapped, TTL 64, type 0, both checksums
/// updated per RFC 1624 (so a request's checksum damage carries over).
pub fn icmp_echo_reply(frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[0..6].copy_from_slice(&frame[6..12]);
    v[6..12].copy_from_slice(&frame[0..6]);
    let ip = IP_OFF;
    v[ip + 12..ip + 16].copy_from_slice(&frame[ip + 16..ip + 20]);
    v[ip + 16..ip + 20].copy_from_slice(&frame[ip + 12..ip + 16]);
    let old_ttl = u16::from_be_bytes([frame[ip + 8], frame[ip + 9]]);
    v[ip + 8] = 64;
    let check = u16::from_be_bytes([frame[ip + 10], frame[ip + 11]]);
    let check = csum_update(check, old_ttl, u16::from_be_bytes([64, frame[ip + 9]]));
    v[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    let icmp = ip + 20;
    let old = u16::from_be_bytes([frame[icmp], frame[icmp + 1]]);
    v[icmp] = 0;
    let check = u16::from_be_bytes([frame[icmp + 2], frame[icmp + 3]]);
    let check = csum_update(check, old, u16::from_be_bytes([0, frame[icmp + 1]]));
    v[icmp + 2..icmp + 4].copy_from_slice(&check.to_be_bytes());
    v
}

fn icmp_error(frame: &[u8], icmp_type: u8, code: u8, mtu: u16) -> Vec<u8> {
    let quote = &frame[IP_OFF..IP_OFF + 28];
    let mut v = Vec::with_capacity(70);
    v.extend_from_slice(&frame[6..12]);
    v.extend_from_slice(&frame[0..6]);
    v.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[1] = 0xc0;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 28).to_be_bytes());
    ip[8] = 64;
    ip[9] = PROTO_ICMP;
    ip[12..16].copy_from_slice(&frame[IP_OFF + 16..IP_OFF + 20]);
    ip[16..20].copy_from_slice(&frame[IP_OFF + 12..IP_OFF + 16]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&ip);
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    v.extend_from_slice(&icmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residuals_of_a_right_and_a_damaged_frame() {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 2000)
            .write(&mut f, b"abc")
            .unwrap();
        assert_eq!(ipv4_residual(&f), 0xffff);
        assert_eq!(l4_residual(&f), Some(0xffff));
        f[IP_OFF + 10] ^= 1;
        f[L4_OFF + 6] ^= 1;
        assert_ne!(ipv4_residual(&f), 0xffff);
        assert_ne!(l4_residual(&f), Some(0xffff));
        fix_ipv4_checksum(&mut f);
        assert_eq!(ipv4_residual(&f), 0xffff);
    }
}
