//! SIGHUP (`xdplb reload`): re-read the config and apply the difference. A
//! bad config is logged and ignored; the running one keeps serving.

use std::path::Path;

use tracing::{error, info, warn};

use super::{
    event_loop::Daemon,
    options::{Overrides, log_services, read_config},
};

impl Daemon {
    pub async fn reload(&mut self, path: &Path, overrides: &Overrides) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
        let mut new = match read_config(path, overrides) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %format!("{e:#}"), "reload rejected; still serving the previous configuration");
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                return;
            }
        };
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
        }
        match self.apply(new).await {
            Ok(()) => {
                log_services(self.control.config());
                info!("reload applied");
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "reload failed; the maps still hold the previous configuration")
            }
        }
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
}
