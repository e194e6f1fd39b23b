//! The operator's `notify` command, run on every state change with the new
//! state as its argument; bounded in time and never waited for by the HA
//! loop (it runs as a task of its own and is killed at the deadline).

use std::{path::PathBuf, time::Duration};

use tracing::{info, warn};

pub fn spawn(command: PathBuf, state: &'static str, timeout: Duration) {
    tokio::spawn(async move {
        let child = tokio::process::Command::new(&command)
            .arg(state)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                warn!(command = %command.display(), error = %e, "HA notify command did not start");
                return;
            }
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) if s.success() => {
                info!(command = %command.display(), state, "HA notify command done")
            }
            Ok(Ok(s)) => {
                warn!(command = %command.display(), state, status = %s, "HA notify command failed")
            }
            Ok(Err(e)) => warn!(command = %command.display(), error = %e, "HA notify command"),
            Err(_) => {
                let _ = child.kill().await;
                warn!(command = %command.display(), state, timeout_ms = timeout.as_millis() as u64,
                    "HA notify command killed at its deadline");
            }
        }
    });
}
