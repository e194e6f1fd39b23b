//! Backend health as HAProxy counts it: `fall` consecutive failed checks take
//! an up backend down, `rise` consecutive successes bring a down one back.
//! Pure, so the rules are tested without sockets or clocks; the checker that
//! feeds it results comes with the active health checks.

/// Where a backend stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes new connections and keeps its flows.
    Up,
    /// Passive health saw it failing: no new connections, but its
    /// established flows stay (its active check still passes). `rise` good
    /// checks bring it back, `fall` bad ones take it down.
    Held,
    /// Its active check failed `fall` times: out, its flows re-schedule.
    Down,
}

/// Health of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    state: State,
    /// Consecutive results equal to `last_ok`.
    streak: u32,
    last_ok: bool,
}

/// What one check result (or a passive failure) changed.
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
        Self::with_state(State::Up)
    }

    /// A backend that must prove itself (`rise` successes) before serving.
    pub fn new_down() -> Self {
        Self::with_state(State::Down)
    }

    /// A backend found held (a previous daemon's passive verdict).
    pub fn new_held() -> Self {
        Self::with_state(State::Held)
    }

    fn with_state(state: State) -> Self {
        Self {
            state,
            streak: 0,
            last_ok: state == State::Up,
        }
    }

    /// A passive failure: stop new connections now; `rise` good checks bring
    /// the backend back. Returns whether it was up.
    pub fn hold(&mut self) -> bool {
        if self.state != State::Up {
            return false;
        }
        self.state = State::Held;
        self.streak = 0;
        true
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Takes new connections.
    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Record one check result. `rise` and `fall` below 1 count as 1.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Transition {
        if ok == self.last_ok {
            self.streak += 1;
        } else {
            self.streak = 1;
            self.last_ok = ok;
        }
        let (rise, fall) = (rise.max(1), fall.max(1));
        let next = match (self.state, ok) {
            (State::Up, false) if self.streak >= fall => State::Down,
            (State::Held, false) if self.streak >= fall => State::Down,
            (State::Held | State::Down, true) if self.streak >= rise => State::Up,
            (s, _) => s,
        };
        if next == self.state {
            return Transition::Unchanged;
        }
        self.state = next;
        self.streak = 0;
        if next == State::Up {
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
    fn held_comes_back_after_rise_or_goes_down_after_fall() {
        let mut h = Health::new();
        assert!(h.hold());
        assert!(!h.hold(), "already held");
        assert_eq!(h.state(), State::Held);
        assert!(!h.is_up());
        // Good checks: back after `rise`, a failure in between restarts it.
        assert_eq!(feed(&mut h, "+-+", 2, 3), vec![]);
        assert_eq!(feed(&mut h, "+", 2, 3), vec![Transition::WentUp]);
        // Held again, and then the active check fails too: down.
        assert!(h.hold());
        assert_eq!(feed(&mut h, "--", 2, 3), vec![]);
        assert_eq!(h.state(), State::Held);
        assert_eq!(feed(&mut h, "-", 2, 3), vec![Transition::WentDown]);
        assert_eq!(h.state(), State::Down);
        assert!(!h.hold(), "a down backend is not held");
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
