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
    health::{Health, State, Transition},
    plan::{Availability, BackendRef, Plan, PlanError, Planner},
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

/// What a passive failure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The backend takes no new connections now; its flows stay.
    Held,
    /// It was not up (already held, or down) or is not checked.
    NotUp,
    /// Holding it would take more of the service out than `max_out_percent`
    /// allows (or the last backend): it stays in, the refusal is logged.
    TooManyOut { out: usize, of: usize },
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
    /// must pass `rise` checks; one it held stays held). A backend found
    /// without new connections may also just have weight 0: `apply` keeps
    /// health only for checked backends, and `rise` checks clear it.
    pub fn adopt(&mut self, found: Plan) {
        use lb_common::{BACKEND_F_ACTIVE, BACKEND_F_NEW_CONNECTIONS};
        self.planner.adopt(&found);
        for (r, id) in found.backend_ids() {
            let (r, id) = (*r, *id);
            let flags = found.backends[&id].flags;
            let health = if flags & BACKEND_F_ACTIVE == 0 {
                Health::new_down()
            } else if flags & BACKEND_F_NEW_CONNECTIONS == 0 {
                Health::new_held()
            } else {
                continue;
            };
            self.health.insert(r, BackendState::new(health));
        }
        self.programmer.adopt(found);
    }

    /// Backends not fully up, by why.
    pub fn availability(&self) -> Availability {
        let mut a = Availability::default();
        for (r, s) in &self.health {
            match s.health.state() {
                State::Up => {}
                State::Held => {
                    a.held.insert(*r);
                }
                State::Down => {
                    a.down.insert(*r);
                }
            }
        }
        a
    }

    /// Backends out of their scheduler (held or down).
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
            for b in &s.backends {
                let r = s.backend_ref(b);
                let st = self
                    .health
                    .get(&r)
                    .cloned()
                    .unwrap_or_else(|| BackendState::new(Health::new()));
                health.insert(r, st);
            }
        }
        let old = std::mem::replace(&mut self.health, health);
        let applied = self
            .planner
            .plan(&config, &self.availability())
            .map_err(ControlError::from)
            .and_then(|plan| self.programmer.apply(dp, plan).map_err(ControlError::from));
        let st = match applied {
            Ok(st) => st,
            Err(e) => {
                self.health = old;
                return Err(e);
            }
        };
        self.config = config;
        self.dirty = false;
        Ok(st)
    }

    /// Start with this run-time deny list (read from its file), before the
    /// first apply.
    pub fn preset_runtime_deny(&mut self, list: Vec<ipnet::Ipv4Net>) {
        self.planner.runtime_deny = list;
    }

    /// The run-time global deny list (beside the config's).
    pub fn runtime_deny(&self) -> &[ipnet::Ipv4Net] {
        &self.planner.runtime_deny
    }

    /// Replace the run-time global deny list and write the result; on error
    /// the list and the maps stay as they were.
    pub fn set_runtime_deny(
        &mut self,
        dp: &mut dyn Dataplane,
        list: Vec<ipnet::Ipv4Net>,
    ) -> Result<(), ControlError> {
        let old = std::mem::replace(&mut self.planner.runtime_deny, list);
        let applied = self
            .planner
            .plan(&self.config, &self.availability())
            .map_err(ControlError::from)
            .and_then(|plan| self.programmer.apply(dp, plan).map_err(ControlError::from));
        if let Err(e) = applied {
            self.planner.runtime_deny = old;
            return Err(e);
        }
        self.dirty = false;
        Ok(())
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

    /// A passive failure: stop new connections to `b` now (its flows stay)
    /// unless that would take more than `max_out_percent` of its service's
    /// weighted backends out of new connections, or the last one.
    pub fn hold(&mut self, b: &BackendRef, max_out_percent: u32) -> Hold {
        if !self.health.get(b).is_some_and(|s| s.health.is_up()) {
            return Hold::NotUp;
        }
        let Some(svc) = self.config.services.iter().find(|s| s.key() == b.service) else {
            return Hold::NotUp;
        };
        let weighted: Vec<BackendRef> = svc
            .backends
            .iter()
            .filter(|x| x.weight > 0)
            .map(|x| svc.backend_ref(x))
            .collect();
        let out = weighted
            .iter()
            .filter(|r| self.health.get(r).is_some_and(|s| !s.health.is_up()))
            .count();
        let of = weighted.len();
        // Never the last one, and never beyond the allowed share.
        if out + 1 >= of || (out + 1) * 100 > max_out_percent as usize * of {
            return Hold::TooManyOut { out, of };
        }
        if let Some(st) = self.health.get_mut(b)
            && st.health.hold()
        {
            self.dirty = true;
        }
        Hold::Held
    }

    /// Write pending health changes to the maps. A failed write stays
    /// pending and is retried by the next call.
    pub fn sync(&mut self, dp: &mut dyn Dataplane) -> Result<Option<ApplyStats>, ControlError> {
        if !self.dirty {
            return Ok(None);
        }
        let plan = self.planner.plan(&self.config, &self.availability())?;
        let st = self.programmer.apply(dp, plan)?;
        self.dirty = false;
        Ok(Some(st))
    }

    fn check_of(&self, b: &BackendRef) -> Option<&CheckConfig> {
        self.config
            .services
            .iter()
            .find(|s| s.key() == b.service)?
            .check
            .as_ref()
    }

    /// Every checked backend with its id in the maps.
    pub fn check_targets(&self) -> Vec<CheckTarget> {
        let ids = self.programmer.applied().backend_ids();
        let mut out = Vec::new();
        for s in &self.config.services {
            let Some(check) = &s.check else { continue };
            for b in &s.backends {
                let r = s.backend_ref(b);
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
    use crate::{config::Protocol, dataplane::fake::FakeDataplane, plan::service_key};

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
        BackendRef::new(
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
    fn passive_failure_stops_new_connections_keeps_flows_and_adoption_keeps_verdicts() {
        use lb_common::{BACKEND_F_NEW_CONNECTIONS, BACKEND_F_SOLE_REPLY};
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(CFG));
        c.apply(&mut dp, cfg(CFG)).unwrap();
        assert_eq!(c.hold(&web(21), 50), Hold::Held);
        assert_eq!(c.hold(&web(21), 50), Hold::NotUp);
        // The other one would be the last: refused.
        assert_eq!(c.hold(&web(11), 100), Hold::TooManyOut { out: 1, of: 2 });
        c.sync(&mut dp).unwrap();
        assert_eq!(ring(&dp, &c), vec![Ipv4Addr::new(203, 0, 113, 11)]);
        // Held, not down: its entry stays active (pinned flows stay) but
        // takes no new connections.
        let id = c.applied().backend_id(&web(21)).unwrap();
        assert_eq!(
            dp.backends[&id].flags,
            BACKEND_F_ACTIVE | BACKEND_F_SOLE_REPLY
        );
        assert_eq!(
            c.availability().held,
            HashSet::from([web(21)]),
            "held, not down"
        );
        // Rise good checks bring it back.
        c.record(&web(21), Ok(()), Duration::ZERO);
        assert_eq!(
            c.record(&web(21), Ok(()), Duration::ZERO),
            Transition::WentUp
        );
        c.sync(&mut dp).unwrap();
        assert_eq!(
            dp.backends[&id].flags,
            BACKEND_F_ACTIVE | BACKEND_F_NEW_CONNECTIONS | BACKEND_F_SOLE_REPLY
        );
        // Held again, then a new daemon adopting these maps keeps it held and
        // rewrites nothing.
        assert_eq!(c.hold(&web(21), 50), Hold::Held);
        c.sync(&mut dp).unwrap();
        let found = c.applied().clone();
        let mut next = Control::new(cfg(CFG));
        next.adopt(found);
        let writes = dp.writes;
        let st = next.apply(&mut dp, cfg(CFG)).unwrap();
        assert_eq!(st, ApplyStats::default());
        assert_eq!(dp.writes, writes);
        assert_eq!(next.availability().held, HashSet::from([web(21)]));
        // An active failure (down) is adopted as down.
        fail(&mut c, &web(11), 3);
        c.sync(&mut dp).unwrap();
        let mut third = Control::new(cfg(CFG));
        third.adopt(c.applied().clone());
        assert_eq!(third.availability().down, HashSet::from([web(11)]));
    }

    #[test]
    fn passive_health_never_empties_a_service() {
        let four = CFG.to_string()
            + "[[service.backend]]\naddress = \"203.0.113.31\"\nport = 80\n[[service.backend]]\naddress = \"203.0.113.41\"\nport = 80\n";
        let mut dp = FakeDataplane::default();
        let mut c = Control::new(cfg(&four));
        c.apply(&mut dp, cfg(&four)).unwrap();
        let b = |n| BackendRef::new(web(11).service, Ipv4Addr::new(203, 0, 113, n), 80);
        // At most half of four: two held, the third refused.
        assert_eq!(c.hold(&b(11), 50), Hold::Held);
        assert_eq!(c.hold(&b(21), 50), Hold::Held);
        assert_eq!(c.hold(&b(31), 50), Hold::TooManyOut { out: 2, of: 4 });
        // Even at 100 %, never the last one.
        assert_eq!(c.hold(&b(31), 100), Hold::Held);
        assert_eq!(c.hold(&b(41), 100), Hold::TooManyOut { out: 3, of: 4 });
        c.sync(&mut dp).unwrap();
        assert_eq!(ring(&dp, &c), vec![Ipv4Addr::new(203, 0, 113, 41)]);
    }
}
