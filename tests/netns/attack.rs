//! Packets an attacker on the client side can send, sent: nothing of them
//! may change a backend's health or the LB's state.

use std::{net::SocketAddr, time::Duration};

use xdplb_tests::{
    frames::{ACK, RST, SYN, tcp_with},
    inject, require_root,
};

use crate::lab::*;

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Issue 20's forged resets: a client sends SYNs to the NAT VIP and, right
/// behind each, RSTs with both backends' addresses and ports as source,
/// acknowledging its own SYN as a real refusal would. Passive health
/// (refused = 3 within a second) sees none of them: no backend is held, no
/// refusal counted, every forged RST dropped as `drop_spoofed_reply`. The
/// control case: the backend's own refusals (its server killed) hold it.
#[test]
fn forged_resets_from_the_client_side_hold_no_backend() {
    let test = "forged_resets_from_the_client_side_hold_no_backend";
    if !require_root(test) {
        return;
    }
    let passive = "[service.check]\nkind = \"tcp\"\ninterval_ms = 5000\ntimeout_ms = 1000\nfall = 3\n[service.passive]\nrefused = 3\nwindow_ms = 1000\n";
    let mut lab = lab_with(Mode::Native, &service_config("nat", passive));
    lab.daemon
        .wait_for("health checks running", Duration::from_secs(10));
    let macs = (
        mac(&mac_of(&lab.client, "eth0")),
        mac(&mac_of(&lab.lb, "cli")),
    );
    let (client, vip) = ([198, 51, 100, 2], [192, 0, 2, 10]);
    let backends = [[203, 0, 113, 11], [203, 0, 113, 21]];
    let rounds = 30u16;
    let mut frames = Vec::new();
    for i in 0..rounds {
        let (port, isn) = (41000 + i, 7000 + u32::from(i));
        frames.push(tcp_with(
            macs,
            client,
            vip,
            (port, 80),
            isn,
            0,
            SYN,
            None,
            b"",
        ));
        for b in backends {
            frames.push(tcp_with(
                macs,
                b,
                client,
                (8080, port),
                0,
                isn + 1,
                RST | ACK,
                None,
                b"",
            ));
        }
    }
    let spoofed = |lab: &Lab| {
        sample(
            &scrape(lab),
            "xdplb_packets_total",
            "reason=\"drop_spoofed_reply\"",
        )
        .unwrap_or(0.0)
    };
    // The backends' SYN-ACKs are held back (blackholed towards the
    // clients), so every connection is still in its handshake when its
    // RSTs come: as if they came right behind the SYN, ahead of the answer.
    for b in &lab.backends {
        b.sh(&["ip", "route", "add", "blackhole", "198.51.100.0/24"]);
    }
    let before = spoofed(&lab);
    inject::send(&lab.client, "eth0", &frames).expect("inject");
    // A passive window and two ticks: long enough for a hold to show.
    std::thread::sleep(Duration::from_millis(1000) + 2 * xdplb::daemon::PASSIVE_TICK);
    let m = scrape(&lab);
    let dropped = spoofed(&lab) - before;
    let refused: f64 = backends
        .iter()
        .map(|b| {
            let b = std::net::Ipv4Addr::from(*b).to_string();
            sample(&m, "xdplb_backend_refused_total", &b).unwrap_or(0.0)
        })
        .sum();
    eprintln!(
        "{test}: {} forged RSTs sent; {dropped} dropped as spoofed; {refused} refusals counted",
        2 * rounds
    );
    let log = lab.daemon.log().join("\n");
    assert!(
        !log.contains("HELD"),
        "{test}: a forged RST held a backend:\n{log}"
    );
    assert_eq!(refused, 0.0, "{test}: forged refusals counted");
    // The RST naming the backend each SYN went to meets its flow's reply
    // entry and is dropped there; the other names no flow (the kernel's).
    assert_eq!(
        dropped,
        f64::from(rounds),
        "{test}: every forged RST that named a flow dropped"
    );

    // The control case: the backend's own refusals hold it.
    for b in &lab.backends {
        b.sh(&["ip", "route", "del", "blackhole", "198.51.100.0/24"]);
    }
    // (Several clients at once: a refused connection waits a second for its
    // redispatched SYN, and 3 refusals must come within one.)
    lab.servers[0].stop();
    let vip_addr: SocketAddr = format!("{VIP}:80").parse().unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let _in = lab.client.enter();
                for _ in 0..3 {
                    let _ = http_get(vip_addr);
                }
            });
        }
    });
    lab.daemon
        .wait_for("backend HELD (passive)", Duration::from_secs(5));
}
