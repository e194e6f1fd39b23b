//! The probe tasks: one per (service, backend), each probing on its own
//! interval and bounded by its own timeout, reporting every result.
//!
//! A reload keeps the task of every target it leaves unchanged (same
//! backend, address, mark and check): its rhythm goes on, and so do the
//! rise/fall counts its reports feed. Only changed or new targets start
//! afresh; removed ones stop. At most `control.max_concurrent_checks` probes
//! are under way at once (each holds a socket); a probe that finds no free
//! slot within its timeout, or whose socket this host cannot make (no
//! descriptors, no memory), is reported as not run: that says nothing about
//! the backend.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};

use super::{
    check::Check, error::ProbeError, http::HttpCheck, https::HttpsCheck, mysql::MysqlCheck, tcp,
    tcp::TcpCheck,
};
use crate::{
    config::{CheckConfig, CheckKind},
    plan::BackendRef,
};

/// One backend to probe.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub backend: BackendRef,
    /// Where to connect: the backend (NAT) or the VIP (DSR).
    pub connect: SocketAddr,
    /// `SO_MARK` for the probe socket: DSR probes are policy-routed to the
    /// backend while addressed to the VIP (see [`super::dsr_route`]).
    pub mark: Option<u32>,
    pub spec: CheckConfig,
}

/// What one probe found.
#[derive(Debug)]
pub enum Outcome {
    Passed,
    Failed(ProbeError),
    /// Not run, for a reason of this host's: never a backend failure.
    NotRun(String),
}

/// One probe's outcome, sent to the control loop.
#[derive(Debug)]
pub struct Report {
    pub backend: BackendRef,
    /// The task that sent it: a report of a task a reload replaced is
    /// ignored (see [`Probes::current`]).
    pub task: u64,
    pub outcome: Outcome,
    pub latency: Duration,
}

/// What [`Probes::update`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    pub kept: usize,
    pub started: usize,
    pub stopped: usize,
}

/// The running probe tasks, by backend; dropping them stops them.
pub struct Probes {
    tasks: HashMap<BackendRef, (Target, u64, JoinHandle<()>)>,
    next_task: u64,
    slots: Arc<Semaphore>,
}

impl Probes {
    /// No probes yet; at most `max_concurrent` under way at once.
    pub fn new(max_concurrent: usize) -> Probes {
        Probes {
            tasks: HashMap::new(),
            next_task: 0,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Make the running probes these targets: unchanged ones keep running,
    /// changed and new ones start, the rest stop.
    pub fn update(&mut self, targets: Vec<Target>, tx: &mpsc::UnboundedSender<Report>) -> Updated {
        let mut done = Updated::default();
        let mut next: HashMap<BackendRef, (Target, u64, JoinHandle<()>)> = HashMap::new();
        for t in targets {
            match self.tasks.remove(&t.backend) {
                Some((old, id, task)) if old == t => {
                    done.kept += 1;
                    next.insert(t.backend, (old, id, task));
                }
                other => {
                    if let Some((_, _, task)) = other {
                        task.abort();
                        done.stopped += 1;
                    }
                    self.next_task += 1;
                    let id = self.next_task;
                    let task = self.spawn(t.clone(), id, tx.clone());
                    next.insert(t.backend, (t, id, task));
                    done.started += 1;
                }
            }
        }
        for (_, _, task) in std::mem::take(&mut self.tasks).into_values() {
            task.abort();
            done.stopped += 1;
        }
        self.tasks = next;
        done
    }

    /// Whether `task` is the running probe of `backend` (its reports count).
    pub fn current(&self, backend: &BackendRef, task: u64) -> bool {
        self.tasks
            .get(backend)
            .is_some_and(|(_, id, _)| *id == task)
    }

    fn spawn(&self, t: Target, id: u64, tx: mpsc::UnboundedSender<Report>) -> JoinHandle<()> {
        let slots = self.slots.clone();
        match t.spec.kind {
            CheckKind::Tcp => tokio::spawn(run(t, TcpCheck, id, slots, tx)),
            CheckKind::Http => {
                let check = HttpCheck(t.spec.clone());
                tokio::spawn(run(t, check, id, slots, tx))
            }
            CheckKind::Https => {
                let check = HttpsCheck::new(t.spec.clone());
                tokio::spawn(run(t, check, id, slots, tx))
            }
            CheckKind::Mysql => {
                let check = MysqlCheck(t.spec.clone());
                tokio::spawn(run(t, check, id, slots, tx))
            }
        }
    }

    pub fn stop(&mut self) {
        for (_, _, task) in std::mem::take(&mut self.tasks).into_values() {
            task.abort();
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
async fn run<C: Check>(
    t: Target,
    check: C,
    task: u64,
    slots: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Report>,
) where
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
        let outcome = probe(&t, &check, &slots).await;
        let report = Report {
            backend: t.backend,
            task,
            outcome,
            latency: start.elapsed(),
        };
        if tx.send(report).is_err() {
            return;
        }
    }
}

/// Take a probe slot, connect and run the check once, all within the
/// target's timeout.
async fn probe<C: Check>(t: &Target, check: &C, slots: &Semaphore) -> Outcome
where
    ProbeError: From<C::Error>,
{
    let timeout = Duration::from_millis(t.spec.timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, slots.acquire()).await else {
        return Outcome::NotRun(format!(
            "no probe slot free within {} ms (control.max_concurrent_checks under way)",
            t.spec.timeout_ms
        ));
    };
    let once = async {
        let stream = tcp::connect(t.connect, t.mark).await?;
        Ok::<(), ProbeError>(check.run(stream, t.connect).await?)
    };
    match tokio::time::timeout_at(deadline, once).await {
        Ok(Ok(())) => Outcome::Passed,
        Ok(Err(e)) if e.is_local() => Outcome::NotRun(e.to_string()),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed(ProbeError::Timeout(t.spec.timeout_ms)),
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
            let mut probes = Probes::new(16);
            probes.update(vec![target(hang_addr, 1), target(good_addr, 2)], &tx);
            let mut ok_before_hung = 0;
            // Bounded: the hung one reports within its timeout (3 s) + 20 s.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(23);
            let hung = loop {
                let r = tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .expect("the hung target reports by its timeout")
                    .unwrap();
                assert!(probes.current(&r.backend, r.task));
                if r.backend.port == 1 {
                    match r.outcome {
                        Outcome::Failed(e) => break e.to_string(),
                        o => panic!("the hung target: {o:?}"),
                    }
                }
                assert!(matches!(r.outcome, Outcome::Passed), "{:?}", r.outcome);
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
