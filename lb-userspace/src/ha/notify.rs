//! The operator's `notify` command, run on every state change with the new
//! state as its argument; bounded in time and never waited for by the HA
//! loop (it runs as a task of its own and is killed at the deadline).

use std::{path::PathBuf, time::Duration};

use tracing::{info, warn};

/// How a notify command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    NotStarted,
    Killed,
}

/// Run `command state` in the background; the handle is for tests (the node
/// does not wait for it).
pub fn spawn(
    command: PathBuf,
    state: &'static str,
    timeout: Duration,
) -> tokio::task::JoinHandle<Outcome> {
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
                return Outcome::NotStarted;
            }
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(s)) if s.success() => {
                info!(command = %command.display(), state, "HA notify command done");
                Outcome::Done
            }
            Ok(Ok(s)) => {
                warn!(command = %command.display(), state, status = %s, "HA notify command failed");
                Outcome::Failed
            }
            Ok(Err(e)) => {
                warn!(command = %command.display(), error = %e, "HA notify command");
                Outcome::Failed
            }
            Err(_) => {
                let _ = child.kill().await;
                warn!(command = %command.display(), state, timeout_ms = timeout.as_millis() as u64,
                    "HA notify command killed at its deadline");
                Outcome::Killed
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn script(name: &str, body: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("xdplb-notify-{}-{name}", std::process::id()));
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700)).unwrap();
        p
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_with_the_state_and_is_killed_at_its_deadline() {
        let out = std::env::temp_dir().join(format!("xdplb-notify-{}-out", std::process::id()));
        let ok = script("ok", &format!("echo \"$1\" > {}", out.display()));
        let h = spawn(ok.clone(), "master", Duration::from_secs(5));
        assert_eq!(h.await.unwrap(), Outcome::Done);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "master\n");

        let fails = script("fails", "exit 3");
        let h = spawn(fails.clone(), "backup", Duration::from_secs(5));
        assert_eq!(h.await.unwrap(), Outcome::Failed);

        // A hanging command: spawn returns while it runs; killed at the
        // deadline (200 ms; the bound below adds 2 s for a loaded machine).
        let hangs = script("hangs", "sleep 30");
        let t0 = std::time::Instant::now();
        let h = spawn(hangs.clone(), "fault", Duration::from_millis(200));
        assert!(!h.is_finished(), "spawn does not wait for the command");
        assert_eq!(h.await.unwrap(), Outcome::Killed);
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_millis(2200),
            "{took:?}"
        );

        let h = spawn(
            "/nonexistent/notify".into(),
            "master",
            Duration::from_secs(1),
        );
        assert_eq!(h.await.unwrap(), Outcome::NotStarted);
        for p in [out, ok, fails, hangs] {
            let _ = std::fs::remove_file(p);
        }
    }
}
