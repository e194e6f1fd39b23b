//! The control core: configuration and backend health in, map contents out.
//!
//! [`Control`] owns the ids ([`Planner`]), what the maps hold
//! ([`Programmer`]) and the health of every checked backend. Anything that
//! changes which backends may take flows (a reload, a check result, a passive
//! failure) ends in one re-plan whose difference is written to the maps. No
//! sockets, no clocks: the daemon feeds it, tests drive it with a fake data
//! path.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::{
    config::{CheckConfig, Config, ForwardingKind},
    dataplane::{ApplyStats, Dataplane, DataplaneError, Programmer},
    health::{Health, Transition},
    plan::{BackendRef, Plan, PlanError, Planner, service_key},
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("programming the maps: {0}")]
    Dataplane(#[from] DataplaneError),
}

/// What the daemon knows about one checked backend.
#[derive(Debug, Clone)]
pub struct BackendState {
    pub health: Health,
    /// Error of the last probe, `None` after a success or before any.
    pub last_error: Option<String>,
    pub last_latency: Option<Duration>,
    pub checks: u64,
    pub failures: u64,
}

impl BackendState {
    fn new(health: Health) -> Self {
        Self {
            health,
            last_error: None,
            last_latency: None,
            checks: 0,
            failures: 0,
        }
    }
}

/// A backend to probe, with what the probe needs to know.
#[derive(Debug, Clone)]
pub struct CheckTarget {
    pub backend: BackendRef,
    pub backend_id: u32,
    pub service: String,
    /// The service's virtual IP (DSR probes are addressed to it).
    pub vip: std::net::Ipv4Addr,
    pub forwarding: ForwardingKind,
    pub check: CheckConfig,
}

pub struct Control {
    config: Config,
    planner: Planner,
    programmer: Programmer,
    health: HashMap<BackendRef, BackendState>,
    /// Health changed since the maps were last written.
    dirty: bool,
}

impl Control {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            planner: Planner::default(),
            programmer: Programmer::default(),
            health: HashMap::new(),
            dirty: false,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn applied(&self) -> &Plan {
        self.programmer.applied()
    }

    pub fn state(&self, b: &BackendRef) -> Option<&BackendState> {
        self.health.get(b)
    }

    /// Take over maps a previous daemon left pinned: its ids, its contents,
    /// and its verdicts (a backend it had taken out starts down here too and
    /// must pass `rise` checks).
    pub fn adopt(&mut self, found: Plan) {
        self.planner.adopt(&found);
        for (r, id) in found.backend_ids() {
            if found.backends[&id].flags & lb_common::BACKEND_F_ACTIVE == 0 {
                self.health.insert(r, BackendState::new(Health::new_down()));
            }
        }
        self.programmer.adopt(found);
    }

    /// Backends currently out of their scheduler.
    pub fn down(&self) -> HashSet<BackendRef> {
        self.health
            .iter()
            .filter(|(_, s)| !s.health.is_up())
            .map(|(r, _)| *r)
            .collect()
    }

    /// Make the maps serve `config`. Health of backends that stay (and keep a
    /// check) is kept; new ones start up. On error nothing changes and the
    /// maps keep serving the previous configuration.
    pub fn apply(
        &mut self,
        dp: &mut dyn Dataplane,
        config: Config,
    ) -> Result<ApplyStats, ControlError> {
        let mut health = HashMap::new();
        for s in config.services.iter().filter(|s| s.check.is_some()) {
            let key = service_key(s.vip, s.port, s.protocol);
            for b in &s.backends {
                let r = (key, b.address, b.port);
                let st = self
                    .health
                    .get(&r)
                    .cloned()
                    .unwrap_or_else(|| BackendState::new(Health::new()));
                health.insert(r, st);
            }
        }
        let down = health
            .iter()
            .filter(|(_, s)| !s.health.is_up())
            .map(|(r, _)| *r)
            .collect();
        let plan = self.planner.plan(&config, &down)?;
        let st = self.programmer.apply(dp, plan)?;
        self.config = config;
        self.health = health;
        self.dirty = false;
        Ok(st)
    }

    /// Record one probe result. A state change is written by [`Self::sync`].
    pub fn record(
        &mut self,
        b: &BackendRef,
        result: Result<(), String>,
        latency: Duration,
    ) -> Transition {
        let Some(cfg) = self.check_of(b) else {
            return Transition::Unchanged;
        };
        let (rise, fall) = (cfg.rise, cfg.fall);
        let Some(st) = self.health.get_mut(b) else {
            return Transition::Unchanged;
        };
        st.checks += 1;
        st.last_latency = Some(latency);
        st.failures += result.is_err() as u64;
        let t = st.health.record(result.is_ok(), rise, fall);
        st.last_error = result.err();
        if t != Transition::Unchanged {
            self.dirty = true;
        }
        t
    }

    /// Take a backend out now (passive failure). Returns whether it was up.
    pub fn force_down(&mut self, b: &BackendRef) -> bool {
        let Some(st) = self.health.get_mut(b) else {
            return false;
        };
        let was_up = st.health.force_down();
        self.dirty |= was_up;
        was_up
    }

    /// Write pending health changes to the maps. A failed write stays
    /// pending and is retried by the next call.
    pub fn sync(&mut self, dp: &mut dyn Dataplane) -> Result<Option<ApplyStats>, ControlError> {
        if !self.dirty {
            return Ok(None);
        }
        let plan = self.planner.plan(&self.config, &self.down())?;
        let st = self.programmer.apply(dp, plan)?;
        self.dirty = false;
        Ok(Some(st))
    }

    fn check_of(&self, b: &BackendRef) -> Option<&CheckConfig> {
        self.config
            .services
            .iter()
            .find(|s| service_key(s.vip, s.port, s.protocol) == b.0)?
            .check
            .as_ref()
    }

    /// Every checked backend with its id in the maps.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        let ids = self.programmer.applied().backend_ids();
        let mut out = Vec::new();
        for s in &self.config.services {
            let Some(check) = &s.check else { continue };
            let key = service_key(s.vip, s.port, s.protocol);
            for b in &s.backends {
                let r = (key, b.address, b.port);
                if let Some(&backend_id) = ids.get(&r) {
                    out.push(CheckTarget {
                        backend: r,
                        backend_id,
                        service: s.name.clone(),
                        vip: s.vip,
                        forwarding: s.forwarding,
                        check: check.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use lb_common::BACKEND_F_ACTIVE;

    use super::*;
    use crate::{config::Protocol, dataplane::fake::FakeDataplane};

    const CFG: &str = r#"
[[service]]
name = "www"
vip = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "round_robin"
forwarding = "nat"
[service.check]
kind = "tcp"
rise = 2
fall = 3
[[service.backend]]
address = "203.0.113.11"
port = 80
[[service.backend]]
address = "203.0.113.21"
port = 80
"#;

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    fn web(n: u8) -> BackendRef {
        (
            service_key(Ipv4Addr::new(192, 0, 2, 10), 80, Protocol::Tcp),
            Ipv4Addr::new(203, 0, 113, n),
            80,
        )
    }

    /// Backend ids the fake would hand new flows, in ring order.
    fn ring(dp: &FakeDataplane, c: &Control) -> Vec<Ipv4Addr> {
        let s = &c.applied().services[0];
        (0..s.info.ring_len)
            .map(|slot| {
                let id = dp.pick(&s.key, slot).unwrap();
                Ipv4Addr::from(u32::from_be(dp.backends[&id].addr_be))
            })
            .collect()
    }

    fn fail(c: &mut Control, b: &BackendRef, n: usize) -> Vec<Transition> {
        (0..n)
            .map(|_| c.record(b, Err("refused".into()), Duration::from_millis(1)))
            .collect()
    }

    #[test]
    fn a_backend_failing_fall_checks_leaves_the_ring_and_comes_back_after_rise() {
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(CFG));
        c.apply(&mut dp, cfg(CFG)).unwrap();
        assert_eq!(ring(&dp, &c).len(), 2);
        let t = fail(&mut c, &web(11), 3);
        assert_eq!(t.last(), Some(&Transition::WentDown));
        // Not written until synced; then only .21 takes new flows and .11's
        // entry is inactive, so its pinned flows re-schedule.
        assert_eq!(ring(&dp, &c).len(), 2);
        c.sync(&mut dp).unwrap().unwrap();
        assert_eq!(ring(&dp, &c), vec![Ipv4Addr::new(203, 0, 113, 21)]);
        let inactive = dp
            .backends
            .values()
            .filter(|b| b.flags & BACKEND_F_ACTIVE == 0)
            .count();
        assert_eq!(inactive, 1);
        assert!(c.sync(&mut dp).unwrap().is_none(), "nothing pending");
        c.record(&web(11), Ok(()), Duration::ZERO);
        assert_eq!(
            c.record(&web(11), Ok(()), Duration::ZERO),
            Transition::WentUp
        );
        c.sync(&mut dp).unwrap();
        assert_eq!(ring(&dp, &c).len(), 2);
        assert_eq!(c.state(&web(11)).unwrap().failures, 3);
    }

    #[test]
    fn all_down_empties_the_ring_and_a_failed_write_is_retried() {
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(CFG));
        c.apply(&mut dp, cfg(CFG)).unwrap();
        fail(&mut c, &web(11), 3);
        fail(&mut c, &web(21), 3);
        dp.fail_at = Some(0);
        assert!(c.sync(&mut dp).is_err());
        c.sync(&mut dp).unwrap().expect("retried");
        assert_eq!(c.applied().services[0].info.ring_len, 0);
    }

    #[test]
    fn reload_keeps_health_of_backends_that_stay() {
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(CFG));
        c.apply(&mut dp, cfg(CFG)).unwrap();
        fail(&mut c, &web(11), 3);
        c.sync(&mut dp).unwrap();
        let more = CFG.to_string() + "[[service.backend]]\naddress = \"203.0.113.31\"\nport = 80\n";
        c.apply(&mut dp, cfg(&more)).unwrap();
        assert_eq!(c.down(), HashSet::from([web(11)]));
        assert!(
            c.state(&web(31)).unwrap().health.is_up(),
            "new backends start up"
        );
        assert_eq!(ring(&dp, &c).len(), 2);
        // Without a check, nothing is tracked and everything serves.
        let unchecked = CFG.replace("[service.check]\nkind = \"tcp\"\nrise = 2\nfall = 3\n", "");
        c.apply(&mut dp, cfg(&unchecked)).unwrap();
        assert!(c.down().is_empty());
        assert_eq!(ring(&dp, &c).len(), 2);
    }

    #[test]
    fn passive_failure_takes_it_down_at_once_and_adoption_keeps_verdicts() {
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(CFG));
        c.apply(&mut dp, cfg(CFG)).unwrap();
        assert!(c.force_down(&web(21)));
        assert!(!c.force_down(&web(21)));
        c.sync(&mut dp).unwrap();
        assert_eq!(ring(&dp, &c), vec![Ipv4Addr::new(203, 0, 113, 11)]);
        // A new daemon adopting these maps keeps .21 down and rewrites nothing.
        let found = c.applied().clone();
        let mut next = Control::new(cfg(CFG));
        next.adopt(found);
        let writes = dp.writes;
        let st = next.apply(&mut dp, cfg(CFG)).unwrap();
        assert_eq!(st, ApplyStats::default());
        assert_eq!(dp.writes, writes);
        assert_eq!(next.down(), HashSet::from([web(21)]));
    }
}
