//! The probe tasks: one per (service, backend), each probing on its own
//! interval and bounded by its own timeout, reporting every result.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    check::Check, error::ProbeError, http::HttpCheck, https::HttpsCheck, mysql::MysqlCheck, tcp,
    tcp::TcpCheck,
};
use crate::{
    config::{CheckConfig, CheckKind},
    plan::BackendRef,
};

/// One backend to probe.
#[derive(Debug, Clone)]
pub struct Target {
    pub backend: BackendRef,
    /// Where to connect: the backend (NAT) or the VIP (DSR).
    pub connect: SocketAddr,
    /// `SO_MARK` for the probe socket: DSR probes are policy-routed to the
    /// backend while addressed to the VIP (see [`super::dsr_route`]).
    pub mark: Option<u32>,
    pub spec: CheckConfig,
}

/// One probe's outcome, sent to the control loop.
#[derive(Debug)]
pub struct Report {
    pub backend: BackendRef,
    /// Which set of probe tasks sent it; older generations are ignored.
    pub generation: u64,
    pub result: Result<(), ProbeError>,
    pub latency: Duration,
}

/// The running probe tasks; dropping them stops them.
#[derive(Default)]
pub struct Probes {
    tasks: Vec<JoinHandle<()>>,
    pub generation: u64,
}

impl Probes {
    /// Stop the current probes and start one task per target.
    pub fn restart(&mut self, targets: Vec<Target>, tx: &mpsc::UnboundedSender<Report>) {
        self.stop();
        self.generation += 1;
        let generation = self.generation;
        for t in targets {
            let tx = tx.clone();
            let task = match t.spec.kind {
                CheckKind::Tcp => tokio::spawn(run(t, TcpCheck, generation, tx)),
                CheckKind::Http => {
                    let check = HttpCheck(t.spec.clone());
                    tokio::spawn(run(t, check, generation, tx))
                }
                CheckKind::Https => {
                    let check = HttpsCheck::new(t.spec.clone());
                    tokio::spawn(run(t, check, generation, tx))
                }
                CheckKind::Mysql => {
                    let check = MysqlCheck(t.spec.clone());
                    tokio::spawn(run(t, check, generation, tx))
                }
            };
            self.tasks.push(task);
        }
    }

    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A stable offset within the first tenth of the interval.
fn spread(t: &Target, interval: Duration) -> Duration {
    let h = xxhash_rust::xxh3::xxh3_64(format!("{:?}", t.backend).as_bytes());
    interval / 10 * (h % 100) as u32 / 100
}

/// Probe `t` with `check` every interval until the receiver is gone.
async fn run<C: Check>(t: Target, check: C, generation: u64, tx: mpsc::UnboundedSender<Report>)
where
    ProbeError: From<C::Error>,
{
    let interval = Duration::from_millis(t.spec.interval_ms);
    // Spread probes over the interval so they do not all fire at once.
    let offset = spread(&t, interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let start = Instant::now();
        let result = probe(&t, &check).await;
        let report = Report {
            backend: t.backend,
            generation,
            result,
            latency: start.elapsed(),
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

/// Connect and run the check once, within the target's timeout.
async fn probe<C: Check>(t: &Target, check: &C) -> Result<(), ProbeError>
where
    ProbeError: From<C::Error>,
{
    let timeout = Duration::from_millis(t.spec.timeout_ms);
    let once = async {
        let stream = tcp::connect(t.connect, t.mark).await?;
        Ok(check.run(stream, t.connect).await?)
    };
    match tokio::time::timeout(timeout, once).await {
        Ok(r) => r,
        Err(_) => Err(ProbeError::Timeout(t.spec.timeout_ms)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A target that accepts and never answers times out on its own; the
    /// healthy one beside it keeps its cadence. Loopback only. Told by the
    /// order of events, not by how fast this machine is: with a 100 ms
    /// interval and a 3 s timeout, the good target reports five times
    /// before the hung one's first report (its timeout); a hung probe that
    /// held up the other would make the good target's second report come
    /// after the hung one's first.
    #[test]
    fn a_hanging_target_never_delays_another() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let (hang_addr, good_addr) = (hang.local_addr().unwrap(), good.local_addr().unwrap());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = hang.accept().await {
                    held.push(s); // never read, never answered
                }
            });
            tokio::spawn(async move {
                while let Ok((mut s, _)) = good.accept().await {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 512];
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").await;
                    });
                }
            });
            let spec: CheckConfig =
                toml::from_str("kind = \"http\"\ninterval_ms = 100\ntimeout_ms = 3000").unwrap();
            let key = lb_common::ServiceKey::default();
            let target = |addr: SocketAddr, n: u16| Target {
                backend: crate::plan::BackendRef::new(key, std::net::Ipv4Addr::LOCALHOST, n),
                connect: addr,
                mark: None,
                spec: spec.clone(),
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let mut probes = Probes::default();
            probes.restart(vec![target(hang_addr, 1), target(good_addr, 2)], &tx);
            let mut ok_before_hung = 0;
            // Bounded: the hung one reports within its timeout (3 s) + 20 s.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(23);
            let hung = loop {
                let r = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .expect("the hung target reports by its timeout")
                    .unwrap();
                assert_eq!(r.generation, probes.generation);
                if r.backend.port == 1 {
                    break r.result.unwrap_err().to_string();
                }
                r.result.expect("the good target passes");
                ok_before_hung += 1;
            };
            assert!(
                ok_before_hung >= 5,
                "the good target reported {ok_before_hung} times before the hung one timed out"
            );
            assert!(hung.contains("no answer within 3000 ms"), "{hung}");
        });
    }
}
