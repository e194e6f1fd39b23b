//! Watching the kernel's forwarding state for the data path's next-hop
//! caches: any change to links, addresses, IPv4 routes, policy rules or
//! neighbours bumps the generation the caches must carry (`HOP_GENERATION`),
//! so every cached next hop is looked up again on its next packet.
//!
//! Coarse on purpose: a generation bump costs each CPU one FIB lookup per
//! backend (and per NAT flow that sends a reply), so telling which change
//! touches which hop is not worth the code. Events can be lost (a full
//! netlink socket buffer), so the generation is also bumped periodically
//! (`dataplane.next_hop_refresh_ms`): a stale next hop can outlive a lost
//! event by that much.

use std::time::Duration;

use aya::maps::{Array, MapData};
use futures_util::{FutureExt as _, StreamExt as _};
use rtnetlink::{
    constants::{
        RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV4_RULE, RTMGRP_LINK, RTMGRP_NEIGH,
    },
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::error::NetError;

/// The netlink groups whose messages change where a packet goes.
const GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV4_RULE;

/// Bumps `HOP_GENERATION`; stops when dropped.
pub struct HopInvalidator {
    task: JoinHandle<()>,
    connection: JoinHandle<()>,
}

impl HopInvalidator {
    /// Subscribe and start (inside a tokio runtime). `map`: the data path's
    /// one-entry generation array; `refresh`: the longest a cached next hop
    /// lives without an event.
    pub fn start(mut map: Array<MapData, u32>, refresh: Duration) -> Result<Self, NetError> {
        let (mut connection, _handle, mut messages) =
            rtnetlink::new_connection().map_err(NetError::Socket)?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, GROUPS))
            .map_err(NetError::Socket)?;
        let connection = tokio::spawn(connection);
        let mut generation = map.get(&0, 0).unwrap_or(0);
        let task = tokio::spawn(async move {
            let mut refresh =
                tokio::time::interval_at(tokio::time::Instant::now() + refresh, refresh);
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    m = messages.next() => {
                        if m.is_none() {
                            warn!("the netlink event stream ended; next hops refresh on the timer only");
                            std::future::pending::<()>().await;
                        }
                        // One bump for a burst: take what is already queued.
                        while let Some(Some(_)) = messages.next().now_or_never() {}
                        debug!("routing state changed: cached next hops dropped");
                    }
                    _ = refresh.tick() => {}
                }
                generation = generation.wrapping_add(1);
                if let Err(e) = map.set(0, generation, 0) {
                    warn!(error = %e, "cannot bump the next-hop generation");
                }
            }
        });
        Ok(Self { task, connection })
    }
}

impl Drop for HopInvalidator {
    fn drop(&mut self) {
        self.task.abort();
        self.connection.abort();
    }
}
