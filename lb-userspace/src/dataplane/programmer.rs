//! Writing a [`Plan`] to a [`Dataplane`]: only what differs, in an order the
//! data path never sees half-done.

use super::{Backend, Dataplane, DataplaneError};
use crate::plan::Plan;

/// What one [`Programmer::apply`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub backends_written: usize,
    pub ring_slots_written: usize,
    pub services_written: usize,
    pub services_removed: usize,
    pub backends_retired: usize,
}

/// Keeps the data path equal to the last applied plan.
#[derive(Debug, Default)]
pub struct Programmer {
    applied: Plan,
}

impl Programmer {
    pub fn applied(&self) -> &Plan {
        &self.applied
    }

    /// Take what the maps already hold (pinned by an earlier daemon) as the
    /// applied plan, so the next apply writes only the difference.
    pub fn adopt(&mut self, found: Plan) {
        self.applied = found;
    }

    /// Write what differs between the applied plan and `plan`.
    /// On error the applied plan is left as it was, so a retry rewrites
    /// whatever may have been written partially.
    pub fn apply(
        &mut self,
        dp: &mut dyn Dataplane,
        plan: Plan,
    ) -> Result<ApplyStats, DataplaneError> {
        let mut st = ApplyStats::default();
        let old = &self.applied;
        // 1. Backends first: rings may point at them from now on.
        for (id, b) in &plan.backends {
            if old.backends.get(id) != Some(b) {
                dp.set_backend(*id, *b)?;
                st.backends_written += 1;
            }
        }
        // 2. Rings, only the slots that change.
        for s in &plan.services {
            let prev = old
                .services
                .iter()
                .find(|o| o.info.id == s.info.id)
                .map(|o| o.ring.as_slice());
            for (slot, backend_id) in s.ring.iter().enumerate() {
                if prev.and_then(|p| p.get(slot)) != Some(backend_id) {
                    dp.set_ring_slot(s.info.id, slot as u32, *backend_id)?;
                    st.ring_slots_written += 1;
                }
            }
        }
        // 3. Services, now that their rings are complete.
        for s in &plan.services {
            let prev = old.services.iter().find(|o| o.key == s.key);
            if prev.map(|p| p.info) != Some(s.info) {
                dp.set_service(s.key, s.info)?;
                st.services_written += 1;
            }
        }
        // 4. Services that are gone.
        for o in &old.services {
            if !plan.services.iter().any(|s| s.key == o.key) {
                dp.remove_service(o.key)?;
                st.services_removed += 1;
            }
        }
        // 5. Backends nobody uses any more: inactive, so pinned flows re-schedule.
        for id in old.backends.keys() {
            if !plan.backends.contains_key(id) {
                dp.set_backend(*id, Backend::default())?;
                st.backends_retired += 1;
            }
        }
        self.applied = plan;
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
    fn removing_a_maglev_backend_rewrites_only_its_slots_and_retires_it() {
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
        let gone_id = *dp
            .backends
            .iter()
            .find(|(_, b)| b.addr_be == u32::from_ne_bytes([203, 0, 113, 13]))
            .unwrap()
            .0;
        let gone_slots = dp.rings.values().filter(|&&b| b == gone_id).count();
        let two = cfg(&[("203.0.113.11", 1), ("203.0.113.12", 1)], "maglev");
        let st = prog
            .apply(&mut dp, planner.plan(&two, &Default::default()).unwrap())
            .unwrap();
        assert_eq!(st.backends_retired, 1);
        assert_eq!(dp.backends[&gone_id].flags & BACKEND_F_ACTIVE, 0);
        // Its slots all move; others move only a little (Maglev's promise).
        assert!(st.ring_slots_written >= gone_slots);
        assert!(
            st.ring_slots_written < gone_slots + (RING_SIZE as usize) / 50,
            "{st:?} {gone_slots}"
        );
        assert!(dp.rings.values().all(|&b| b != gone_id));
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
