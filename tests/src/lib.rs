//! Helpers for xdplb's BPF-level tests and benchmark. The namespace and
//! process guards live in `xdplb-testsupport` (re-exported here).

pub use xdplb_testsupport::*;

pub mod capture;
pub mod cases;
pub mod flood;
pub mod frames;
pub mod inject;
pub mod lab;
pub mod model;
pub mod oracle;
pub mod programs;
pub mod wire;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xc1];
pub const LB_CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0a];
pub const LB_BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 0x0c];
pub const CLIENT: [u8; 4] = [198, 51, 100, 2];

/// MAC given to backend 203.0.113.<last_octet> in [`fib_lab`].
pub fn backend_mac(last_octet: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0xbb, last_octet]
}

pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Route MTU towards [`SMALL_MTU_BACKEND`].
pub const SMALL_MTU: u16 = 1280;
/// A backend behind a route with a small MTU ([`SMALL_MTU`]).
pub const SMALL_MTU_BACKEND: [u8; 4] = [203, 0, 113, 14];
/// A backend whose route is a blackhole.
pub const BLACKHOLED_BACKEND: [u8; 4] = [203, 0, 113, 50];

/// A namespace whose FIB gives known answers to the program's
/// `bpf_fib_lookup`: client 198.51.100.2 behind `fxa`, backends
/// 203.0.113.11–14 behind `fxc`, all with permanent neighbour entries
/// (203.0.113.99 is routable but has none). 203.0.113.14 is reached over a
/// route with MTU [`SMALL_MTU`]; 203.0.113.50 is blackholed; nothing outside
/// 198.51.100.0/24 and 203.0.113.0/24 has a route.
pub fn fib_lab(prefix: &str) -> Netns {
    let ns = Netns::new(prefix);
    ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    for (dev, mac, addr) in [
        ("fxa", LB_CLIENT_MAC, "198.51.100.1/24"),
        ("fxc", LB_BACKEND_MAC, "203.0.113.1/24"),
    ] {
        let mac = fmt_mac(mac);
        ns.sh(&[
            "ip",
            "link",
            "add",
            dev,
            "address",
            &mac,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{dev}p"),
        ]);
        ns.sh(&["ip", "addr", "add", addr, "dev", dev]);
        ns.sh(&["ip", "link", "set", dev, "up"]);
        ns.sh(&["ip", "link", "set", &format!("{dev}p"), "up"]);
    }
    ns.sh(&[
        "ip",
        "neigh",
        "replace",
        "198.51.100.2",
        "lladdr",
        &fmt_mac(CLIENT_MAC),
        "dev",
        "fxa",
        "nud",
        "permanent",
    ]);
    for last in [11u8, 12, 13, 14] {
        let addr = format!("203.0.113.{last}");
        ns.sh(&[
            "ip",
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &fmt_mac(backend_mac(last)),
            "dev",
            "fxc",
            "nud",
            "permanent",
        ]);
    }
    ns.sh(&[
        "ip",
        "route",
        "add",
        "203.0.113.14/32",
        "dev",
        "fxc",
        "mtu",
        "lock",
        &SMALL_MTU.to_string(),
    ]);
    ns.sh(&["ip", "route", "add", "blackhole", "203.0.113.50/32"]);
    ns
}

/// Keep this thread on CPU 0 (round robin keeps one cursor per CPU).
pub fn pin_to_cpu0() {
    pin_to_cpu(0);
}

/// Keep this thread on CPU `n`.
pub fn pin_to_cpu(n: usize) {
    // SAFETY: plain affinity syscall for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
