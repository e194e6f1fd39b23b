//! Frames seen in a namespace, as a switch port or a host would see them:
//! an `AF_PACKET` socket on every interface of the namespace, each frame
//! with the kernel's receive time, the interface and whether it was leaving
//! through it. Bounded: it runs until stopped and keeps at most
//! [`MAX_FRAMES`].

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use crate::Netns;

/// Frames kept at most (the rest are counted, not kept).
pub const MAX_FRAMES: usize = 200_000;

/// `SIOCGSTAMPNS`: the receive time of the last frame read.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

#[derive(Debug, Clone)]
pub struct Captured {
    /// When the kernel received (or sent) it.
    pub at: SystemTime,
    pub ifindex: u32,
    /// Leaving through `ifindex` (what the host on that port receives).
    pub outgoing: bool,
    pub frame: Vec<u8>,
}

pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Captured>>>,
}

impl Capture {
    /// Start capturing frames of Ethernet `protocol` (e.g. 0x0806 for ARP,
    /// 0x0800 for IPv4) on every interface of `ns`.
    pub fn start(ns: &Netns, protocol: u16) -> Capture {
        Capture::start_keeping(ns, protocol, MAX_FRAMES)
    }

    /// [`Capture::start`], keeping up to `limit` frames.
    pub fn start_keeping(ns: &Netns, protocol: u16, limit: usize) -> Capture {
        let fd = {
            let _in = ns.enter();
            // All protocols: only such a socket sees frames leaving an
            // interface. A classic BPF filter keeps `protocol`'s alone.
            // SAFETY: a plain socket call; the descriptor is owned below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    (libc::ETH_P_ALL as u16).to_be() as i32,
                )
            };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh descriptor of our own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let code = [
                // ldh [12]; jeq #protocol, 0, 1; ret #262144; ret #0
                libc::sock_filter {
                    code: 0x28,
                    jt: 0,
                    jf: 0,
                    k: 12,
                },
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: u32::from(protocol),
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0x40000,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
            ];
            let prog = libc::sock_fprog {
                len: code.len() as u16,
                filter: code.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: `prog` points at `code`, valid for the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ATTACH_FILTER,
                    (&prog as *const libc::sock_fprog).cast(),
                    std::mem::size_of::<libc::sock_fprog>() as u32,
                )
            };
            assert_eq!(rc, 0, "socket filter: {}", std::io::Error::last_os_error());
            // Room for bursts (a busy link): 64 MiB, as root may.
            let size: libc::c_int = 64 << 20;
            // SAFETY: an int option of the right size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            fd
        };
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 2048];
            while !halt.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 20) } <= 0 {
                    continue;
                }
                // SAFETY: all-zero sockaddr_ll is valid; the kernel fills it.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: `buf` and `from` are valid for the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&mut from as *mut libc::sockaddr_ll).cast(),
                        &mut len,
                    )
                };
                if n <= 0 {
                    continue;
                }
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY: SIOCGSTAMPNS fills one timespec.
                let at = if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts) } == 0 {
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
                } else {
                    SystemTime::now()
                };
                if out.len() < limit {
                    out.push(Captured {
                        at,
                        ifindex: from.sll_ifindex as u32,
                        outgoing: from.sll_pkttype == libc::PACKET_OUTGOING,
                        frame: buf[..n as usize].to_vec(),
                    });
                }
            }
            out
        });
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and return what was seen, in the order the kernel delivered it.
    pub fn stop(mut self) -> Vec<Captured> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The UDP payload of an IPv4 frame from `src` to `dst_port`, if it is one.
pub fn udp_payload(frame: &[u8], src: [u8; 4], dst_port: u16) -> Option<Vec<u8>> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [8, 0] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let ihl = (ip[0] & 0x0f) as usize * 4;
    if ip.get(12..16)? != src {
        return None;
    }
    let udp = ip.get(ihl..)?;
    if u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) != dst_port {
        return None;
    }
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    udp.get(8..len).map(<[u8]>::to_vec)
}
