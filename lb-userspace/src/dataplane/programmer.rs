//! Writing a [`Plan`] to a [`Dataplane`]: only what differs, in an order the
//! data path never sees half-done.

use super::contract::{Dataplane, DataplaneError};
use crate::plan::Plan;
use lb_common::Backend;

/// What one [`Programmer::apply`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub backends_written: usize,
    /// Rings written whole into a spare half.
    pub rings_written: usize,
    /// Their slots (for the log).
    pub ring_slots_written: usize,
    pub services_written: usize,
    pub services_removed: usize,
    pub backends_retired: usize,
    /// From the start of the apply to the last service update that made a
    /// new ring live (what a ring change costs before packets use it).
    pub live_after: Option<std::time::Duration>,
}

/// Keeps the data path equal to the last applied plan.
#[derive(Debug, Default)]
pub struct Programmer {
    applied: Plan,
    /// A flip or removal happened without a grace period since: the halves
    /// it retired may still have readers.
    quiesce_pending: bool,
}

/// Whether `new` allows nothing `old` did not (flags only grow).
fn gains(old: Option<&Backend>, new: &Backend) -> bool {
    match old {
        None => true,
        Some(o) => {
            (o.addr_be, o.port_be, o.service_id) == (new.addr_be, new.port_be, new.service_id)
                && new.flags & o.flags == o.flags
        }
    }
}

impl Programmer {
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// Take what the maps already hold (pinned by an earlier daemon) as the
    /// applied plan, so the next apply writes only the difference. A
    /// previous daemon may have flipped rings just before it stopped.
    pub fn adopt(&mut self, found: Plan) {
        self.applied = found;
        self.quiesce_pending = true;
    }

    /// Write what differs between the applied plan and `plan`, so that no
    /// packet ever sees a half-written ring or a new connection scheduled to
    /// a backend that is not up:
    /// 1. backends that are new or gain rights;
    /// 2. each changed ring, whole, into the service's spare half;
    /// 3. service entries, each in one update (a changed ring goes live);
    /// 4. backends that lose rights (no live ring names them any more);
    /// 5. services that are gone, then backends nobody uses;
    /// 6. a grace period, so the halves just retired may be rewritten next.
    ///
    /// On error the applied plan is left as it was, so a retry rewrites
    /// whatever may have been written partially.
    pub fn apply(
        &mut self,
        dp: &mut dyn Dataplane,
        mut plan: Plan,
    ) -> Result<ApplyStats, DataplaneError> {
        let mut st = ApplyStats::default();
        let started = std::time::Instant::now();
        if self.quiesce_pending {
            dp.quiesce()?;
            self.quiesce_pending = false;
        }
        let old = &self.applied;
        // Which half each service's ring lives in: unchanged rings stay; a
        // changed ring goes to the half its service is not using; a new
        // service takes the half its id's previous owner (if any) is not using.
        let mut changed = Vec::new();
        for s in &mut plan.services {
            let by_key = old.services.iter().find(|o| o.key == s.key);
            let by_id = old.services.iter().find(|o| o.info.id == s.info.id);
            let (half, ring_changed) = match (by_key, by_id) {
                (Some(o), _) if o.info.id == s.info.id && o.ring == s.ring => (o.info.ring, false),
                (Some(o), _) if o.info.id == s.info.id => (o.info.ring ^ 1, true),
                (_, Some(o)) => (o.info.ring ^ 1, true),
                _ => (0, true),
            };
            s.info.ring = half;
            if ring_changed {
                changed.push(s.info.id);
            }
        }
        // Addresses first: a new service's VIP drops unserved traffic from
        // the moment the service exists.
        for (addr, v) in &plan.vips {
            if old.vips.get(addr) != Some(v) {
                dp.set_vip(*addr, *v)?;
            }
        }
        // Firewall entries, new and changed, before the service entries whose
        // flags start asking for them (an allow list in place before the
        // service refuses everyone else).
        let mut acl_changed = false;
        for (e, a) in &plan.acl {
            if old.acl.get(e) != Some(a) {
                dp.set_acl(*e, *a)?;
                acl_changed = true;
            }
        }
        // Reply owners before the backend entries that say new connections
        // rely on them (`BACKEND_F_SOLE_REPLY`).
        for (key, id) in &plan.reply_owners {
            if old.reply_owners.get(key) != Some(id) {
                dp.set_reply_owner(*key, *id)?;
            }
        }
        for (id, b) in &plan.backends {
            if old.backends.get(id) != Some(b) && gains(old.backends.get(id), b) {
                dp.set_backend(*id, *b)?;
                st.backends_written += 1;
            }
        }
        for s in plan
            .services
            .iter()
            .filter(|s| changed.contains(&s.info.id))
        {
            dp.write_ring(s.info.id, s.info.ring, &s.ring)?;
            st.rings_written += 1;
            st.ring_slots_written += s.ring.len();
        }
        // Limits before the service entry that turns them on.
        for s in &plan.services {
            let prev = old.services.iter().find(|o| o.info.id == s.info.id);
            if prev.map(|p| p.rate) != Some(s.rate) {
                dp.set_rate_limit(s.info.id, s.rate)?;
            }
        }
        let mut retired_halves = false;
        for s in &plan.services {
            let prev = old.services.iter().find(|o| o.key == s.key);
            if prev.map(|p| p.info) != Some(s.info) {
                dp.set_service(s.key, s.info)?;
                st.services_written += 1;
                retired_halves |= prev.is_some_and(|p| p.info.ring != s.info.ring);
                if changed.contains(&s.info.id) {
                    st.live_after = Some(started.elapsed());
                }
            }
        }
        for (id, b) in &plan.backends {
            if old.backends.get(id) != Some(b) && !gains(old.backends.get(id), b) {
                dp.set_backend(*id, *b)?;
                st.backends_written += 1;
            }
        }
        for o in &old.services {
            if !plan.services.iter().any(|s| s.key == o.key) {
                dp.remove_service(o.key)?;
                st.services_removed += 1;
                retired_halves = true;
            }
        }
        for addr in old.vips.keys() {
            if !plan.vips.contains_key(addr) {
                dp.remove_vip(*addr)?;
            }
        }
        for key in old.reply_owners.keys() {
            if !plan.reply_owners.contains_key(key) {
                dp.remove_reply_owner(*key)?;
            }
        }
        // Entries gone, after the services stopped asking for them; then a
        // new generation, so established flows are checked again against
        // the lists as they are now.
        for e in old.acl.keys() {
            if !plan.acl.contains_key(e) {
                dp.remove_acl(*e)?;
                acl_changed = true;
            }
        }
        plan.acl_generation = old.acl_generation;
        if acl_changed {
            plan.acl_generation = crate::plan::acl::next_generation(old.acl_generation);
            dp.set_firewall(lb_common::Firewall {
                global_entries: crate::plan::acl::global_entries(&plan.acl),
                generation: plan.acl_generation,
                _pad: 0,
            })?;
        }
        // Inactive, so flows still pinned to them re-schedule.
        for id in old.backends.keys() {
            if !plan.backends.contains_key(id) {
                dp.set_backend(*id, Backend::default())?;
                st.backends_retired += 1;
            }
        }
        self.applied = plan;
        if retired_halves {
            // Applied already; if the grace period fails, the next apply
            // waits for it before it writes a ring.
            self.quiesce_pending = true;
            dp.quiesce()?;
            self.quiesce_pending = false;
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use lb_common::{BACKEND_F_ACTIVE, RING_SIZE};

    use super::*;
    use crate::dataplane::fake::FakeDataplane;
    use crate::{config::Config, plan::Planner};

    fn cfg(backends: &[(&str, u32)], scheduler: &str) -> Config {
        let mut t = format!(
            "[[service]]\nname = \"www\"\nvip = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"{scheduler}\"\nforwarding = \"dsr\"\n"
        );
        for (a, w) in backends {
            t += &format!("[[service.backend]]\naddress = \"{a}\"\nport = 80\nweight = {w}\n");
        }
        Config::parse(Path::new("t.toml"), &t).unwrap()
    }

    /// Allow entries are written before the service entry that starts
    /// refusing everyone else, removed after the one that stops; every
    /// change (and only a change) moves the firewall generation.
    #[test]
    fn firewall_entries_bracket_the_service_flags() {
        let mut planner = Planner::default();
        let mut dp = FakeDataplane::default();
        let mut prog = Programmer::default();
        let plain = cfg(&[("203.0.113.11", 1)], "maglev");
        let listed = {
            let mut c = plain.clone();
            c.services[0].allow = vec!["198.51.100.0/24".parse().unwrap()];
            c
        };
        let mut planner_plan = |c: &Config| planner.plan(c, &Default::default()).unwrap();
        let pos = |log: &[String], what: &str| log.iter().position(|l| l.starts_with(what));
        let log = {
            dp.log.clear();
            prog.apply(&mut dp, planner_plan(&plain)).unwrap();
            dp.log.clone()
        };
        assert_eq!(pos(&log, "firewall"), None, "no lists, no generation");
        dp.log.clear();
        prog.apply(&mut dp, planner_plan(&listed)).unwrap();
        let log = dp.log.clone();
        assert!(
            pos(&log, "acl set").unwrap() < pos(&log, "service").unwrap(),
            "{log:?}"
        );
        assert_eq!(dp.firewall.generation, 1);
        dp.log.clear();
        prog.apply(&mut dp, planner_plan(&listed)).unwrap();
        assert_eq!(
            pos(&dp.log, "firewall"),
            None,
            "nothing changed: {:?}",
            dp.log
        );
        dp.log.clear();
        prog.apply(&mut dp, planner_plan(&plain)).unwrap();
        let log = dp.log.clone();
        assert!(
            pos(&log, "service").unwrap() < pos(&log, "acl remove").unwrap(),
            "{log:?}"
        );
        assert_eq!(dp.firewall.generation, 2);
        assert!(dp.acl.is_empty());
    }

    #[test]
    fn first_apply_writes_everything_second_nothing() {
        let mut planner = Planner::default();
        let mut dp = FakeDataplane::default();
        let mut prog = Programmer::default();
        let c = cfg(&[("203.0.113.11", 1), ("203.0.113.12", 1)], "maglev");
        let st = prog
            .apply(&mut dp, planner.plan(&c, &Default::default()).unwrap())
            .unwrap();
        assert_eq!(st.backends_written, 2);
        assert_eq!(st.rings_written, 1);
        assert_eq!(st.ring_slots_written, RING_SIZE as usize);
        assert_eq!(st.services_written, 1);
        assert!(
            dp.backends
                .values()
                .all(|b| b.flags & BACKEND_F_ACTIVE != 0)
        );
        let st = prog
            .apply(&mut dp, planner.plan(&c, &Default::default()).unwrap())
            .unwrap();
        assert_eq!(st, ApplyStats::default());
    }

    #[test]
    fn a_ring_change_goes_live_in_one_flip_after_its_spare_half_is_full() {
        let mut planner = Planner::default();
        let mut dp = FakeDataplane::default();
        let mut prog = Programmer::default();
        let three = cfg(
            &[
                ("203.0.113.11", 1),
                ("203.0.113.12", 1),
                ("203.0.113.13", 1),
            ],
            "maglev",
        );
        prog.apply(&mut dp, planner.plan(&three, &Default::default()).unwrap())
            .unwrap();
        let key = prog.applied().services[0].key;
        let gone_id = *dp
            .backends
            .iter()
            .find(|(_, b)| b.addr_be == u32::from_ne_bytes([203, 0, 113, 13]))
            .unwrap()
            .0;
        let before: Vec<u32> = (0..RING_SIZE).map(|s| dp.pick(&key, s).unwrap()).collect();
        dp.log.clear();
        let two = cfg(&[("203.0.113.11", 1), ("203.0.113.12", 1)], "maglev");
        let st = prog
            .apply(&mut dp, planner.plan(&two, &Default::default()).unwrap())
            .unwrap();
        // The whole ring into the other half, then one flip, then the removed
        // backend turned inactive, then a grace period.
        assert_eq!(
            dp.log,
            vec![
                "ring 0/1".to_string(),
                "service 0".into(),
                format!("backend {gone_id} flags 0"),
                "quiesce".into()
            ]
        );
        assert_eq!((st.rings_written, st.backends_retired), (1, 1));
        assert_eq!(dp.backends[&gone_id].flags & BACKEND_F_ACTIVE, 0);
        let after: Vec<u32> = (0..RING_SIZE).map(|s| dp.pick(&key, s).unwrap()).collect();
        assert!(after.iter().all(|&b| b != gone_id));
        // Maglev's promise: only the removed backend's slots moved.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **b != gone_id)
            .count();
        assert!(moved < RING_SIZE as usize / 50, "{moved} other slots moved");
        // The next change writes the half the first flip retired, which the
        // grace period has freed.
        let one = cfg(&[("203.0.113.11", 1)], "maglev");
        prog.apply(&mut dp, planner.plan(&one, &Default::default()).unwrap())
            .unwrap();
        assert_eq!(dp.services[&key].ring, 0);
        assert!(dp.unsafe_writes.is_empty(), "{:?}", dp.unsafe_writes);
    }

    #[test]
    fn a_backend_coming_back_is_active_before_any_ring_names_it() {
        let mut planner = Planner::default();
        let mut dp = FakeDataplane::default();
        let mut prog = Programmer::default();
        let c = cfg(&[("203.0.113.11", 1), ("203.0.113.12", 1)], "round_robin");
        let key =
            crate::plan::service_key([192, 0, 2, 10].into(), 80, crate::config::Protocol::Tcp);
        let b12 = crate::plan::BackendRef::new(key, [203, 0, 113, 12].into(), 80);
        let down = crate::plan::Availability::down([b12].into());
        prog.apply(&mut dp, planner.plan(&c, &down).unwrap())
            .unwrap();
        let id = prog.applied().backend_id(&b12).unwrap();
        dp.log.clear();
        prog.apply(&mut dp, planner.plan(&c, &Default::default()).unwrap())
            .unwrap();
        assert_eq!(dp.log[0], format!("backend {id} flags 3"), "{:?}", dp.log);
        assert!(dp.log[1].starts_with("ring"), "{:?}", dp.log);
        assert!(dp.unsafe_writes.is_empty());
    }

    #[test]
    fn failed_write_keeps_old_plan_so_retry_completes() {
        let mut planner = Planner::default();
        let mut dp = FakeDataplane::default();
        let mut prog = Programmer::default();
        let c = cfg(&[("203.0.113.11", 1), ("203.0.113.12", 2)], "round_robin");
        dp.fail_at = Some(3);
        assert!(
            prog.apply(&mut dp, planner.plan(&c, &Default::default()).unwrap())
                .is_err()
        );
        assert!(
            dp.services.is_empty(),
            "service must not appear before its ring"
        );
        assert!(dp.unsafe_writes.is_empty());
        prog.apply(&mut dp, planner.plan(&c, &Default::default()).unwrap())
            .unwrap();
        let key = prog.applied().services[0].key;
        assert_eq!(dp.services[&key].ring_len, 3);
        let heavy = *dp
            .backends
            .iter()
            .find(|(_, b)| b.addr_be == u32::from_ne_bytes([203, 0, 113, 12]))
            .unwrap()
            .0;
        let picks: Vec<u32> = (0..3).map(|s| dp.pick(&key, s).unwrap()).collect();
        assert_eq!(
            picks.iter().filter(|&&b| b == heavy).count(),
            2,
            "{picks:?}"
        );
    }
}
