//! Frames for the fixtures and the benchmark, built from scratch with
//! etherparse (which computes checksums), so a byte-for-byte match with what
//! the program emits proves its incremental checksum updates right.

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use crate::{CLIENT, CLIENT_MAC, LB_BACKEND_MAC, LB_CLIENT_MAC, backend_mac, wire};

#[derive(Clone, Copy)]
pub enum L4 {
    TcpSyn,
    TcpAck,
    TcpRst,
    Udp,
}

/// Arguments mirror the header fields they set, in wire order.
#[allow(clippy::too_many_arguments)]
pub fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src, dst, 64);
    let mut v = Vec::new();
    match l4 {
        L4::TcpSyn => ip
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut v, payload),
        L4::TcpAck => ip
            .tcp(sport, dport, 1001, 64240)
            .ack(5000)
            .write(&mut v, payload),
        L4::TcpRst => ip.tcp(sport, dport, 5000, 0).rst().write(&mut v, payload),
        L4::Udp => ip.udp(sport, dport).write(&mut v, payload),
    }
    .unwrap();
    v
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP frame with this sequence number and these flags (ACK acknowledges 1).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
) -> Vec<u8> {
    let mut t = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 64240);
    for (bit, set) in [(FIN, 0), (SYN, 1), (RST, 2)] {
        if flags & bit != 0 {
            t = match set {
                0 => t.fin(),
                1 => t.syn(),
                _ => t.rst(),
            };
        }
    }
    if flags & ACK != 0 {
        t = t.ack(1);
    }
    let mut v = Vec::new();
    t.write(&mut v, b"").unwrap();
    v
}

/// Client -> VIP, TCP with `seq` and `flags`.
pub fn client_tcp(vip: [u8; 4], sport: u16, seq: u32, flags: u8) -> Vec<u8> {
    tcp_frame(
        (CLIENT_MAC, LB_CLIENT_MAC),
        CLIENT,
        vip,
        sport,
        80,
        seq,
        flags,
    )
}

/// Backend (port 8080) -> client, TCP with `flags`.
pub fn backend_tcp(backend: [u8; 4], client_port: u16, flags: u8) -> Vec<u8> {
    tcp_frame(
        (backend_mac(backend[3]), LB_BACKEND_MAC),
        backend,
        CLIENT,
        8080,
        client_port,
        0,
        flags,
    )
}

/// Client -> VIP frame as it arrives at the LB.
pub fn from_client(vip: [u8; 4], sport: u16, dport: u16, l4: L4) -> Vec<u8> {
    frame(
        CLIENT_MAC,
        LB_CLIENT_MAC,
        CLIENT,
        vip,
        sport,
        dport,
        l4,
        b"hello",
    )
}

/// Recompute IPv4 and L4 checksums of `f` and compare with what it carries.
pub fn assert_checksums(f: &[u8]) {
    let p = SlicedPacket::from_ethernet(f).expect("output parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(
        h.calc_header_checksum(),
        h.header_checksum,
        "IPv4 header checksum"
    );
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(want, t.checksum(), "TCP checksum");
        }
        Some(TransportSlice::Udp(u)) if u.checksum() != 0 => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(want, u.checksum(), "UDP checksum");
        }
        _ => {}
    }
}

/// A TCP frame of `payload` bytes with DF set or not.
pub fn big_frame(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: usize,
    df: bool,
) -> Vec<u8> {
    let mut v = Vec::new();
    let (src_mac, dst_mac) = if src == CLIENT {
        (CLIENT_MAC, LB_CLIENT_MAC)
    } else {
        (backend_mac(src[3]), LB_BACKEND_MAC)
    };
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 7, 64240)
        .ack(1)
        .write(&mut v, &vec![0x5a; payload])
        .unwrap();
    if !df {
        v[14 + 6] &= !0x40;
        wire::fix_ipv4_checksum(&mut v);
    }
    v
}

/// Destination address of a forwarded (NAT) frame.
pub fn dst_of(frame: &[u8]) -> [u8; 4] {
    frame[14 + 16..14 + 20].try_into().unwrap()
}

/// `frame` with its Ethernet addresses replaced (what DSR does).
pub fn with_macs(frame: &[u8], src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[0..6].copy_from_slice(&dst_mac);
    v[6..12].copy_from_slice(&src_mac);
    v
}

/// `frame` changed by `f`, with its IPv4 header checksum made right again, so
/// only the intended oddity remains.
pub fn ip_fixed(frame: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut v = frame.to_vec();
    f(&mut v);
    if v.len() >= wire::IP_OFF + 12 {
        wire::fix_ipv4_checksum(&mut v);
    }
    v
}

/// Set the TCP/UDP checksum of an option-less frame to the right value (a
/// UDP datagram without checksum keeps none).
pub fn fix_l4_checksum(frame: &mut [u8]) {
    let field = match frame[wire::IP_OFF + 9] {
        wire::PROTO_TCP => wire::L4_OFF + 16,
        wire::PROTO_UDP => wire::L4_OFF + 6,
        _ => return,
    };
    if frame[field..field + 2] == [0, 0] && frame[wire::IP_OFF + 9] == wire::PROTO_UDP {
        return;
    }
    frame[field..field + 2].copy_from_slice(&[0, 0]);
    let sum = wire::l4_residual(frame).expect("a whole datagram");
    let mut c = !sum;
    if c == 0 && frame[wire::IP_OFF + 9] == wire::PROTO_UDP {
        c = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&c.to_be_bytes());
}

/// `frame` from another source address, all checksums right.
pub fn with_src(frame: &[u8], src: [u8; 4]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v[wire::IP_OFF + 12..wire::IP_OFF + 16].copy_from_slice(&src);
    wire::fix_ipv4_checksum(&mut v);
    fix_l4_checksum(&mut v);
    v
}

/// `frame` with `extra` bytes after its L4 payload that belong to the IPv4
/// datagram but not to the UDP datagram (UDP length < IPv4 payload).
pub fn udp_padded(frame: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    v.extend_from_slice(extra);
    let total = (v.len() - wire::ETH_LEN) as u16;
    v[wire::IP_OFF + 2..wire::IP_OFF + 4].copy_from_slice(&total.to_be_bytes());
    wire::fix_ipv4_checksum(&mut v);
    v
}

/// Byte offset of the first difference, for readable failures.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// A TCP frame with these numbers and flags (and the options a SYN of a
/// Linux client carries at least: MSS), checksums right.
#[allow(clippy::too_many_arguments)]
pub fn tcp_with(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    seq: u32,
    ack: u32,
    flags: u8,
    mss: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    use etherparse::TcpOptionElement;
    let mut t = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src, dst, 64)
        .tcp(ports.0, ports.1, seq, 64240);
    if flags & SYN != 0 {
        t = t.syn();
    }
    if flags & RST != 0 {
        t = t.rst();
    }
    if flags & FIN != 0 {
        t = t.fin();
    }
    if flags & PSH != 0 {
        t = t.psh();
    }
    if flags & ACK != 0 {
        t = t.ack(ack);
    }
    if let Some(m) = mss {
        t = t
            .options(&[TcpOptionElement::MaximumSegmentSize(m)])
            .unwrap();
    }
    let mut v = Vec::new();
    t.write(&mut v, payload).unwrap();
    v
}
