//! Reload (SIGHUP, or `xdplb reload` on the status socket, which waits for
//! the verdict): re-read the config and apply the difference. A bad config
//! is rejected (logged, and told to whoever asked) and the running one
//! keeps serving.

use std::path::Path;

use tracing::{error, info, warn};

use super::{
    event_loop::Daemon,
    options::{Overrides, log_services, read_config},
};

impl Daemon {
    /// The verdict: what changed, or why the new config was rejected.
    pub async fn reload(&mut self, path: &Path, overrides: &Overrides) -> Result<String, String> {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let verdict = self.reload_inner(path, overrides).await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        verdict
    }

    async fn reload_inner(&mut self, path: &Path, overrides: &Overrides) -> Result<String, String> {
        let mut new = match read_config(path, overrides) {
            Ok(c) => c,
            Err(e) => {
                let e = format!("{e:#}");
                error!(error = %e, "reload rejected; still serving the previous configuration");
                return Err(format!(
                    "rejected: {e}; still serving the previous configuration"
                ));
            }
        };
        let mut kept = Vec::new();
        // These are fixed at load/attach/bind time.
        let old = self.control.config();
        if new.dataplane.interfaces != old.dataplane.interfaces
            || new.dataplane.xdp_mode != old.dataplane.xdp_mode
            || new.dataplane.flow_table_size != old.dataplane.flow_table_size
            || new.dataplane.embryonic_table_size != old.dataplane.embryonic_table_size
            || new.dataplane.pin_path != old.dataplane.pin_path
            || new.control != old.control
        {
            warn!(
                "dataplane.interfaces, xdp_mode, flow_table_size, embryonic_table_size, pin_path and [control] take effect on restart; keeping the running values"
            );
            kept.push("dataplane.interfaces/xdp_mode/table sizes/pin_path, [control]");
            new.dataplane.interfaces = old.dataplane.interfaces.clone();
            new.dataplane.xdp_mode = old.dataplane.xdp_mode;
            new.dataplane.flow_table_size = old.dataplane.flow_table_size;
            new.dataplane.embryonic_table_size = old.dataplane.embryonic_table_size;
            new.dataplane.pin_path = old.dataplane.pin_path.clone();
            new.control = old.control.clone();
        }
        if new.ha != old.ha {
            warn!("[ha] takes effect on restart; keeping the running values");
            new.ha = old.ha.clone();
            kept.push("[ha]");
        }
        let sync_of = |c: &crate::config::Config| c.cluster.as_ref().and_then(|c| c.sync.clone());
        let old_sync = sync_of(old);
        if sync_of(&new) != old_sync {
            warn!("[cluster.sync] takes effect on restart; keeping the running values");
            if let Some(c) = &mut new.cluster {
                c.sync = old_sync;
            }
            kept.push("[cluster.sync]");
        }
        let mut summary = super::changes::summary(old, &new);
        if !kept.is_empty() {
            summary += &format!(
                "; kept until restart: {} (changed in the file)",
                kept.join(", ")
            );
        }
        match self.apply(new).await {
            Ok(()) => {
                log_services(self.control.config());
                info!(changes = %summary, "reload applied");
                Ok(format!("applied: {summary}"))
            }
            Err(e) => {
                let e = format!("{e:#}");
                error!(error = %e, "reload failed; the maps still hold the previous configuration");
                Err(format!(
                    "failed: {e}; the maps still hold the previous configuration"
                ))
            }
        }
    }
}
