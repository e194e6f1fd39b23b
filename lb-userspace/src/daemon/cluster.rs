//! The daemon's side of `[cluster]`: starting the announcer once the data
//! path is attached, telling it each new verdict after the maps change
//! (health, reload), and withdrawing before the data path is detached.
//! Also keeps every service's ring fingerprint, recomputed only when the
//! maps change.

use std::time::Duration;

use tracing::{error, info, warn};

use super::event_loop::Daemon;
use crate::cluster::{self, Announcer, fingerprint::ring_fingerprint};

impl Daemon {
    /// After the maps changed: fingerprints and announcements follow.
    pub fn tell_cluster(&mut self) {
        let plan = self.control.applied();
        self.fingerprints = plan
            .services
            .iter()
            .map(|s| (s.info.id, ring_fingerprint(plan, s)))
            .collect();
        if !self.attached {
            return; // started once attached (`start_cluster`)
        }
        let config = self.control.config();
        let decisions = cluster::decide(config, &self.control.down(), true);
        match (&config.cluster, self.cluster.take()) {
            (None, None) => {}
            (Some(c), Some(mut a))
                if c.announce_table == a.config.announce_table
                    && c.route_protocol == a.config.route_protocol =>
            {
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
