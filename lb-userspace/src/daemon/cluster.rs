//! The daemon's side of `[cluster]`: starting the announcer once the data
//! path is attached, telling it each new verdict after the maps change
//! (health, reload), and withdrawing before the data path is detached.
//! `xdplb drain` (withdraw, forward until quiet, stop) lives here too.
//! Also keeps every service's ring fingerprint, recomputed only when the
//! maps change.

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::drain::{DRAIN_QUIET, Drain};
use super::event_loop::Daemon;
use crate::cluster::{self, Announcer};

impl Daemon {
    /// After the maps changed: fingerprints and announcements follow.
    pub fn tell_cluster(&mut self) {
        self.fingerprints.update(self.control.applied());
        if !self.attached {
            return; // started once attached (`start_cluster`)
        }
        let config = self.control.config();
        let mut decisions = cluster::decide(config, &self.control.down(), true);
        if self.drain.is_some() {
            decisions = cluster::drained(decisions);
        } else if !self.joined {
            decisions = cluster::joining(decisions);
        }
        match (&config.cluster, self.cluster.take()) {
            (None, None) => {}
            (Some(c), Some(mut a))
                if c.announce_table == a.config.announce_table
                    && c.route_protocol == a.config.route_protocol =>
            {
                if c.bird_socket != a.config.bird_socket {
                    // Another BIRD socket: a new task, the routes stay.
                    a.leave();
                    match Announcer::start(c, decisions) {
                        Ok(a) => self.cluster = Some(a),
                        Err(e) => error!(error = %e, "cluster: cannot start announcing"),
                    }
                    return;
                }
                a.config = c.clone();
                a.want(decisions);
                self.cluster = Some(a);
            }
            (wanted, old) => {
                // [cluster] added, removed, or moved to another table or
                // protocol: the old routes go, the new ones come.
                if let Some(old) = old {
                    tokio::spawn(async move {
                        match old.withdraw_all().await {
                            Ok(n) => info!(
                                withdrawn = n,
                                "cluster: the previous announcements withdrawn"
                            ),
                            Err(e) => {
                                error!(error = %e, "cluster: withdrawing the previous announcements failed")
                            }
                        }
                    });
                }
                if let Some(c) = wanted {
                    match Announcer::start(c, decisions) {
                        Ok(a) => self.cluster = Some(a),
                        Err(e) => error!(error = %e, "cluster: cannot start announcing"),
                    }
                }
            }
        }
    }

    /// The data path is attached: announcing may start.
    pub fn start_cluster(&mut self) {
        self.attached = true;
        self.tell_cluster();
    }

    /// Before the data path is detached on a clean stop: withdraw every
    /// VIP, then keep forwarding for the grace time while the routers move
    /// new connections elsewhere. Keep-running leaves the announcements to
    /// the next daemon.
    pub async fn stop_cluster(&mut self, keep_running: bool) {
        let Some(a) = self.cluster.take() else {
            return;
        };
        if keep_running {
            a.leave();
            return;
        }
        let grace = Duration::from_millis(u64::from(a.config.withdraw_grace_ms));
        match a.withdraw_all().await {
            Ok(n) => {
                info!(
                    withdrawn = n,
                    grace_ms = grace.as_millis() as u64,
                    "cluster: VIPs withdrawn; forwarding on for the grace time before detaching"
                );
                if n > 0 {
                    tokio::time::sleep(grace).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "cluster: withdrawing the VIPs failed; BIRD may announce them until it is stopped")
            }
        }
    }
}

impl Daemon {
    /// Packets the services have seen, in all.
    fn service_packets(&self) -> Option<u64> {
        self.snapshot()
            .map(|s| s.services.values().map(|t| t.packets).sum())
    }

    /// Start draining: withdraw every VIP now; the event loop stops the
    /// daemon when [`Self::drain_over`] says so.
    pub fn start_drain(&mut self, timeout: Duration) -> Result<String, String> {
        if self.control.config().cluster.is_none() {
            return Err("drain needs [cluster]: nothing announces this node's VIPs, so no traffic would leave it; use `xdplb stop`".into());
        }
        if self.drain.is_some() {
            return Ok("already draining\n".into());
        }
        let now = Instant::now();
        self.drain = Some(Drain {
            started: now,
            deadline: now + timeout,
            packets: self.service_packets().unwrap_or(0),
            quiet_since: now,
        });
        self.tell_cluster();
        let vips = self
            .control
            .config()
            .services
            .iter()
            .map(|s| s.vip)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        info!(
            vips,
            timeout_s = timeout.as_secs(),
            "DRAINING: every VIP withdrawn; established flows are forwarded until no packet reaches a service for {} s, then the daemon stops",
            DRAIN_QUIET.as_secs()
        );
        Ok(format!(
            "draining: {vips} VIPs withdrawn; xdplb forwards what still reaches it and stops once no packet has reached a service for {} s, or in {} s at the latest\n",
            DRAIN_QUIET.as_secs(),
            timeout.as_secs()
        ))
    }

    /// Called every second while draining: why the drain is over, if it is.
    pub fn drain_over(&mut self) -> Option<String> {
        let packets = self.service_packets();
        let d = self.drain.as_mut()?;
        let now = Instant::now();
        if let Some(p) = packets
            && p != d.packets
        {
            d.packets = p;
            d.quiet_since = now;
        }
        if now.duration_since(d.quiet_since) >= DRAIN_QUIET {
            return Some(format!(
                "no packet for {} s, {:.1} s after it started",
                DRAIN_QUIET.as_secs(),
                now.duration_since(d.started).as_secs_f64()
            ));
        }
        (now >= d.deadline).then(|| {
            format!(
                "timeout: packets still arrived {:.1} s after it started",
                now.duration_since(d.started).as_secs_f64()
            )
        })
    }
}
