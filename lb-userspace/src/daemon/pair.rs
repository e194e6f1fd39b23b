//! The daemon's side of the HA pair: starting the node with its maps and
//! key, and telling it what changed (the applied plan, for translating flow
//! records; whether each tracked service still has a backend).

use aya::Ebpf;
use tracing::{info, warn};

use super::event_loop::Daemon;
use crate::{
    config::Config,
    dataplane::bpf,
    ha::{Command, HaNode, owned::owned_addresses, sync::SyncIndex},
};

/// The pair's node and the cluster's sync node (at most one of the two):
/// started if the config has `[ha]` or `[cluster.sync]`.
pub type Nodes = (Option<HaNode>, Option<HaNode>);

/// Start the node if the config has `[ha]`, or the cluster's flow-sync
/// node if it has `[cluster.sync]`; without either, make sure a previous
/// daemon's HA switches are off in the (pinned) data path.
pub fn start(config: &Config, ebpf: &mut Ebpf, daemon: &Daemon) -> anyhow::Result<Nodes> {
    if let Some(s) = config.cluster.as_ref().and_then(|c| c.sync.as_ref()) {
        let h = s.membership();
        let key = h
            .read_key()
            .map_err(|e| anyhow::anyhow!("cluster.sync.key_file: {e}"))?;
        let node = HaNode::start(
            config,
            h.clone(),
            key,
            bpf::ha_maps(ebpf)?,
            SyncIndex::new(daemon.control.applied()),
            Vec::new(),
        )?;
        info!(group = h.group, peers = ?h.peers, port = h.port, "cluster flow sync started");
        return Ok((None, Some(node)));
    }
    let Some(h) = &config.ha else {
        bpf::clear_ha_settings(ebpf)?;
        return Ok((None, None));
    };
    let key = h
        .read_key()
        .map_err(|e| anyhow::anyhow!("ha.key_file: {e}"))?;
    let maps = bpf::ha_maps(ebpf)?;
    let node = HaNode::start(
        config,
        h.clone(),
        key,
        maps,
        SyncIndex::new(daemon.control.applied()),
        services_ok(daemon),
    )?;
    info!(
        group = h.group,
        priority = h.priority,
        peers = ?h.peers,
        interval_ms = h.advert_interval_ms,
        "HA node started"
    );
    Ok((Some(node), None))
}

/// Whether each tracked service has a backend to send new connections to.
pub fn services_ok(daemon: &Daemon) -> Vec<bool> {
    let config = daemon.control.config();
    let Some(h) = &config.ha else {
        return Vec::new();
    };
    let applied = daemon.control.applied();
    h.track_service
        .iter()
        .map(|t| {
            config
                .services
                .iter()
                .find(|s| s.name == t.name)
                .and_then(|s| applied.services.iter().find(|p| p.key == s.key()))
                .is_some_and(|p| p.info.ring_len > 0)
        })
        .collect()
}

impl Daemon {
    /// After the maps changed: the node's id translation and tracked
    /// services follow.
    pub fn tell_pair(&mut self) {
        if let Some(sync) = &self.sync {
            sync.send(Command::Index(SyncIndex::new(self.control.applied())));
        }
        let Some(node) = &self.ha else {
            return;
        };
        let ok = services_ok(self);
        if ok != self.ha_services {
            if !ok.iter().all(|x| *x) {
                warn!(services = ?ok, "a tracked service has no backend: HA priority follows");
            }
            node.send(Command::Services(ok.clone()));
            self.ha_services = ok;
        }
        node.send(Command::Index(SyncIndex::new(self.control.applied())));
        let config = self.control.config();
        if let Some(h) = &config.ha {
            node.send(Command::Addresses(owned_addresses(config, h)));
        }
    }
}
