//! Backend health as HAProxy counts it: `fall` consecutive failed checks take
//! an up backend down, `rise` consecutive successes bring a down one back.
//! Pure, so the rules are tested without sockets or clocks; the checker that
//! feeds it results comes with the active health checks.

/// Health of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Consecutive results against the current state (failures while up,
    /// successes while down).
    streak: u32,
}

/// What one check result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    WentDown,
    WentUp,
}

impl Health {
    /// A backend starts up, as in HAProxy: a freshly started LB serves at once
    /// and the first `fall` failures take a dead backend out.
    pub fn new() -> Self {
        Self {
            up: true,
            streak: 0,
        }
    }

    /// A backend that must prove itself (`rise` successes) before serving.
    pub fn new_down() -> Self {
        Self {
            up: false,
            streak: 0,
        }
    }

    /// Take the backend down now (a passive failure); it must then pass
    /// `rise` checks to come back. Returns whether it was up.
    pub fn force_down(&mut self) -> bool {
        let was_up = self.up;
        self.up = false;
        self.streak = 0;
        was_up
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Record one check result. `rise` and `fall` below 1 count as 1.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Transition {
        let against = ok != self.up;
        if !against {
            self.streak = 0;
            return Transition::Unchanged;
        }
        self.streak += 1;
        let needed = if self.up { fall.max(1) } else { rise.max(1) };
        if self.streak < needed {
            return Transition::Unchanged;
        }
        self.up = !self.up;
        self.streak = 0;
        if self.up {
            Transition::WentUp
        } else {
            Transition::WentDown
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(h: &mut Health, results: &str, rise: u32, fall: u32) -> Vec<Transition> {
        results
            .chars()
            .map(|c| h.record(c == '+', rise, fall))
            .filter(|t| *t != Transition::Unchanged)
            .collect()
    }

    #[test]
    fn fall_consecutive_failures_take_it_down() {
        let mut h = Health::new();
        assert_eq!(feed(&mut h, "--", 2, 3), vec![]);
        assert!(h.is_up());
        assert_eq!(feed(&mut h, "-", 2, 3), vec![Transition::WentDown]);
        assert!(!h.is_up());
    }

    #[test]
    fn intermittent_failures_do_not() {
        let mut h = Health::new();
        assert_eq!(feed(&mut h, "--+--+--+-", 2, 3), vec![]);
        assert!(h.is_up());
    }

    #[test]
    fn rise_consecutive_successes_bring_it_back_and_a_failure_resets_progress() {
        let mut h = Health::new_down();
        assert_eq!(feed(&mut h, "+-+-+", 2, 3), vec![]);
        assert!(!h.is_up());
        assert_eq!(feed(&mut h, "+", 2, 3), vec![Transition::WentUp]);
        assert_eq!(
            feed(&mut h, "---+++---", 2, 3),
            vec![
                Transition::WentDown,
                Transition::WentUp,
                Transition::WentDown
            ]
        );
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut h = Health::new();
        assert_eq!(
            feed(&mut h, "-+-", 1, 1),
            vec![
                Transition::WentDown,
                Transition::WentUp,
                Transition::WentDown
            ]
        );
        // Zero is treated as one rather than flapping on nothing.
        let mut h = Health::new();
        assert_eq!(feed(&mut h, "-", 0, 0), vec![Transition::WentDown]);
    }
}
