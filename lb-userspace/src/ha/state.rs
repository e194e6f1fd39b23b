//! The HA state machine (VRRPv3's, RFC 5798 §6.4, with this pair's
//! additions), pure: inputs and a clock in, actions out. No I/O, so every
//! path is unit-tested with simulated time.
//!
//! - INIT → BACKUP at start (or straight back to MASTER if the previous
//!   daemon held it and its lease still runs: a quick restart is no failover).
//! - BACKUP → MASTER when no MASTER advert came for the master-down
//!   interval: 3 × the MASTER's advert interval + a skew that is shorter for
//!   higher priorities, so the best BACKUP goes first. A priority-0 advert
//!   (a MASTER resigning) cuts the wait to the skew alone.
//! - MASTER → BACKUP on a MASTER advert with a higher priority, or an equal
//!   one from a higher address (split brain healing: the loser yields at the
//!   first advert it hears; the winner re-announces its addresses).
//! - Preemption: a BACKUP with preempt ignores a lower MASTER's adverts
//!   (after `preempt_delay`, counted from when this node is *ready*: it
//!   could forward, were it MASTER) and so takes over when the interval
//!   runs out. A node that is not ready never preempts (issue 20: a node
//!   back without its default route took MASTER and dropped traffic).
//! - FAULT while a weight-0 tracked interface or service fails; a MASTER
//!   entering it resigns (priority 0) and releases its addresses.
//!
//! Every node sends adverts each interval (BACKUP and FAULT too, so each
//! side sees the other and its epoch); only MASTER adverts move timers.

use std::{net::Ipv4Addr, time::Duration};

use super::wire::WireState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Init,
    Backup,
    Master,
    Fault,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Backup => "backup",
            State::Master => "master",
            State::Fault => "fault",
        }
    }
    /// The state a peer's advert names.
    pub fn from_wire(w: WireState) -> State {
        match w {
            WireState::Init => State::Init,
            WireState::Backup => State::Backup,
            // A cluster node forwards as a MASTER does (a pair never
            // hears one unless misconfigured with a cluster's key).
            WireState::Master | WireState::Active => State::Master,
            WireState::Fault => State::Fault,
        }
    }
    pub fn wire(self) -> WireState {
        match self {
            State::Init => WireState::Init,
            State::Backup => WireState::Backup,
            State::Master => WireState::Master,
            State::Fault => WireState::Fault,
        }
    }
    pub const ALL: [State; 4] = [State::Init, State::Backup, State::Master, State::Fault];
}

#[derive(Debug, Clone)]
pub struct Params {
    pub address: Ipv4Addr,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub preempt_delay: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The daemon started; `resume_master`: the previous daemon was MASTER
    /// and its lease has not run out.
    Start { resume_master: bool },
    /// An authenticated, fresh advert.
    Advert {
        from: Ipv4Addr,
        priority: u8,
        state: WireState,
        interval: Duration,
    },
    /// A deadline from [`Machine::next_deadline`] passed.
    Timer,
    /// Tracked interfaces and services changed the effective priority, or
    /// put the node in (or out of) FAULT.
    Track { priority: u8, fault: bool },
    /// Whether this node could forward now, were it MASTER (routes,
    /// neighbours, first health results): preemption waits for it.
    Ready(bool),
    /// Clean stop.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advert now with this priority (0 from a FAULT node).
    SendAdvert { priority: u8 },
    /// Send the resignation: an advert as MASTER with priority 0 (VRRP's
    /// way of saying "take over now"; the BACKUP waits its skew only). Sent
    /// when leaving MASTER, whatever state this node goes to.
    Resign,
    /// Take the addresses (add them, gratuitous ARPs).
    Acquire,
    /// Announce the addresses again (after a split brain healed).
    Announce,
    /// Drop the addresses.
    Release,
    /// The state changed, and why.
    Transition {
        from: State,
        to: State,
        cause: String,
    },
}

#[derive(Debug, Clone)]
pub struct Machine {
    p: Params,
    state: State,
    priority: u8,
    fault: bool,
    master_down_at: Option<Duration>,
    advert_at: Option<Duration>,
    /// When a BACKUP first saw the current lower-priority MASTER (preempt delay).
    lower_master_since: Option<Duration>,
    /// The MASTER's advert interval, learned from its adverts.
    master_interval: Duration,
    /// When the peer's last advert (any state) arrived.
    peer_heard: Option<Duration>,
    /// See [`Input::Ready`].
    ready: bool,
}

impl Machine {
    pub fn new(p: Params, priority: u8) -> Machine {
        let master_interval = p.advert_interval;
        Machine {
            p,
            state: State::Init,
            priority,
            fault: false,
            master_down_at: None,
            advert_at: None,
            lower_master_since: None,
            master_interval,
            peer_heard: None,
            ready: false,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Skew_Time: shorter for higher priorities.
    fn skew(&self) -> Duration {
        self.master_interval * (256 - self.priority as u32) / 256
    }

    /// Master_Down_Interval.
    pub fn master_down_interval(&self) -> Duration {
        self.master_interval * 3 + self.skew()
    }

    /// When [`Input::Timer`] is due next.
    pub fn next_deadline(&self) -> Option<Duration> {
        match (self.master_down_at, self.advert_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn go(&mut self, to: State, cause: String, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::Transition { from, to, cause });
    }

    fn become_master(&mut self, now: Duration, cause: String, out: &mut Vec<Action>) {
        self.go(State::Master, cause, out);
        self.master_down_at = None;
        self.lower_master_since = None;
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::Acquire);
        self.advert_at = Some(now + self.p.advert_interval);
    }

    fn become_backup(&mut self, now: Duration, cause: String, out: &mut Vec<Action>) {
        let was_master = self.state == State::Master;
        self.go(State::Backup, cause, out);
        if was_master {
            out.push(Action::Release);
        }
        self.lower_master_since = None;
        self.master_down_at = Some(now + self.master_down_interval());
        self.advert_at = Some(now + self.p.advert_interval);
    }

    /// Feed one input at time `now`; what to do, in order.
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Start { resume_master } => {
                if self.fault {
                    self.go(
                        State::Fault,
                        "started with a tracked fault".into(),
                        &mut out,
                    );
                    self.advert_at = Some(now + self.p.advert_interval);
                } else if resume_master {
                    self.become_master(
                        now,
                        "restarted while this node's MASTER lease was still running".into(),
                        &mut out,
                    );
                } else {
                    self.become_backup(now, "started".into(), &mut out);
                }
            }
            Input::Timer => self.timer(now, &mut out),
            Input::Advert {
                from,
                priority,
                state,
                interval,
            } => self.advert(now, from, priority, state, interval, &mut out),
            Input::Track { priority, fault } => self.track(now, priority, fault, &mut out),
            Input::Ready(ready) => {
                if ready != self.ready {
                    // The preempt delay counts from readiness.
                    self.lower_master_since = None;
                }
                self.ready = ready;
            }
            Input::Shutdown => {
                if self.state == State::Master {
                    out.push(Action::Resign);
                    out.push(Action::Release);
                }
                self.go(State::Init, "stopping".into(), &mut out);
                self.master_down_at = None;
                self.advert_at = None;
            }
        }
        out
    }

    fn timer(&mut self, now: Duration, out: &mut Vec<Action>) {
        if self.state == State::Backup && self.master_down_at.is_some_and(|t| now >= t) {
            let cause = format!(
                "no MASTER advert for {} ms (master-down interval){}",
                self.master_down_interval().as_millis(),
                self.peer_heard
                    .map(|t| format!("; the peer was last heard {} ms ago", (now - t).as_millis()))
                    .unwrap_or_default()
            );
            self.become_master(now, cause, out);
            return;
        }
        if let Some(t) = self.advert_at
            && now >= t
            && self.state != State::Init
        {
            out.push(Action::SendAdvert {
                priority: if self.state == State::Fault {
                    0
                } else {
                    self.priority
                },
            });
            // Catch up without bursting after a stall.
            let mut next = t + self.p.advert_interval;
            if next <= now {
                next = now + self.p.advert_interval;
            }
            self.advert_at = Some(next);
        }
    }

    fn advert(
        &mut self,
        now: Duration,
        from: Ipv4Addr,
        priority: u8,
        state: WireState,
        interval: Duration,
        out: &mut Vec<Action>,
    ) {
        // A peer heard again after a silence longer than a master-down
        // interval was cut off, and may have taken the addresses meanwhile
        // (a split brain): a MASTER re-announces them. Also when the peer
        // yields before this node hears it as MASTER (its first advert after
        // the link came back already says BACKUP), or neighbours would keep
        // sending to it. A peer never heard before counts as back: it may
        // have started cut off and been MASTER since (seen in a test: a
        // peer whose link was cut right after its start yielded to this
        // node before this node ever heard it, and the router kept sending
        // to it). The cost is one extra round of announcements per start of
        // the peer.
        let back = self
            .peer_heard
            .is_none_or(|t| now.saturating_sub(t) > self.p.advert_interval * 3 + self.skew());
        self.peer_heard = Some(now);
        if back && self.state == State::Master && self.priority > 0 {
            out.push(Action::Announce);
        }
        if state != WireState::Master {
            return; // only a MASTER's adverts move anything
        }
        match self.state {
            State::Backup => {
                self.master_interval = interval.max(Duration::from_millis(1));
                if priority == 0 {
                    self.master_down_at = Some(now + self.skew());
                    return;
                }
                let lower = priority < self.priority;
                if !self.p.preempt || !lower || !self.ready {
                    self.lower_master_since = None;
                    self.master_down_at = Some(now + self.master_down_interval());
                    return;
                }
                // A lower MASTER, and we are ready and preempt: after the
                // delay, stop listening to it (the master-down timer then
                // runs out).
                let since = *self.lower_master_since.get_or_insert(now);
                if now < since + self.p.preempt_delay {
                    self.master_down_at = Some(now + self.master_down_interval());
                }
            }
            State::Master => {
                if priority == 0 {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.advert_at = Some(now + self.p.advert_interval);
                    return;
                }
                let wins = (priority, u32::from(from)) > (self.priority, u32::from(self.p.address));
                if wins {
                    self.master_interval = interval.max(Duration::from_millis(1));
                    let cause = format!(
                        "{from} is MASTER with priority {priority} (this node: {})",
                        self.priority
                    );
                    self.become_backup(now, cause, out);
                } else {
                    // Two MASTERs (a healed split brain): say so at once, and
                    // fix the neighbours' caches.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    if !out.contains(&Action::Announce) {
                        out.push(Action::Announce);
                    }
                    self.advert_at = Some(now + self.p.advert_interval);
                }
            }
            State::Init | State::Fault => {}
        }
    }

    fn track(&mut self, now: Duration, priority: u8, fault: bool, out: &mut Vec<Action>) {
        self.priority = priority.clamp(1, 254);
        if fault == self.fault {
            return;
        }
        self.fault = fault;
        if self.state == State::Init {
            return;
        }
        if fault {
            if self.state == State::Master {
                out.push(Action::Resign);
                out.push(Action::Release);
            }
            self.go(
                State::Fault,
                "a tracked interface or service failed".into(),
                out,
            );
            self.master_down_at = None;
            self.advert_at = Some(now + self.p.advert_interval);
        } else {
            self.become_backup(now, "tracked interfaces and services recovered".into(), out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const A: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);

    fn machine(priority: u8, preempt: bool, delay_ms: u32) -> Machine {
        Machine::new(
            Params {
                address: A,
                advert_interval: 100 * MS,
                preempt,
                preempt_delay: delay_ms * MS,
            },
            priority,
        )
    }

    /// Start `m` at time zero (resuming MASTER or not), ready.
    fn start(m: &mut Machine, resume_master: bool) -> Vec<Action> {
        let out = m.handle(Duration::ZERO, Input::Start { resume_master });
        m.handle(Duration::ZERO, Input::Ready(true));
        out
    }

    fn master_advert(priority: u8) -> Input {
        Input::Advert {
            from: B,
            priority,
            state: WireState::Master,
            interval: 100 * MS,
        }
    }

    fn transitions(a: &[Action]) -> Vec<State> {
        a.iter()
            .filter_map(|x| match x {
                Action::Transition { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    /// Run the timers from `from` to `to` in 1 ms steps; the time of the
    /// first transition, if any.
    fn run(m: &mut Machine, from: Duration, to: Duration) -> Option<(Duration, State)> {
        let mut t = from;
        while t <= to {
            if m.next_deadline().is_some_and(|d| d <= t) {
                let a = m.handle(t, Input::Timer);
                if let Some(s) = transitions(&a).first() {
                    return Some((t, *s));
                }
            }
            t += MS;
        }
        None
    }

    #[test]
    fn a_lone_node_becomes_master_after_the_master_down_interval() {
        let mut m = machine(100, true, 0);
        let a = start(&mut m, false);
        assert_eq!(transitions(&a), vec![State::Backup]);
        // 3 x 100 ms + (256 - 100) x 100 / 256 ms = 360.9 ms.
        assert_eq!(m.master_down_interval(), Duration::from_nanos(360_937_500));
        let (t, s) = run(&mut m, Duration::ZERO, 1000 * MS).unwrap();
        assert_eq!((t, s), (361 * MS, State::Master));
        assert!(m.handle(t, Input::Timer).is_empty() || m.state() == State::Master);
    }

    #[test]
    fn a_master_advert_holds_a_backup_and_its_silence_does_not() {
        let mut m = machine(100, true, 0);
        start(&mut m, false);
        // A higher MASTER advertises every 100 ms until t = 1 s.
        let mut t = Duration::ZERO;
        while t < 1000 * MS {
            m.handle(t, master_advert(200));
            assert_eq!(run(&mut m, t, t + 99 * MS), None, "still BACKUP at {t:?}");
            t += 100 * MS;
        }
        // Silence: MASTER after 3 x 100 + skew after the last advert (900 ms).
        let (at, s) = run(&mut m, t, 2000 * MS).unwrap();
        assert_eq!(s, State::Master);
        assert_eq!(at, 1261 * MS, "900 ms + 360.9 ms");
    }

    #[test]
    fn a_resigning_master_is_replaced_after_the_skew_only() {
        let mut m = machine(200, true, 0);
        start(&mut m, false);
        m.handle(50 * MS, master_advert(250));
        m.handle(100 * MS, master_advert(0));
        // skew = (256 - 200) x 100 / 256 = 21.9 ms.
        let (at, s) = run(&mut m, 100 * MS, 1000 * MS).unwrap();
        assert_eq!((at, s), (122 * MS, State::Master));
    }

    #[test]
    fn higher_priority_then_higher_address_wins_between_two_masters() {
        for (theirs, from, yields) in [
            (150u8, B, true),                           // higher priority
            (50, B, false),                             // lower
            (100, B, true),                             // equal, B = .2 > A = .1
            (100, Ipv4Addr::new(10, 255, 0, 0), false), // equal, lower address
        ] {
            let mut m = machine(100, true, 0);
            start(&mut m, true);
            assert_eq!(m.state(), State::Master);
            let a = m.handle(
                10 * MS,
                Input::Advert {
                    from,
                    priority: theirs,
                    state: WireState::Master,
                    interval: 100 * MS,
                },
            );
            if yields {
                assert_eq!(transitions(&a), vec![State::Backup], "{theirs} {from}");
                assert!(a.contains(&Action::Release));
            } else {
                assert!(transitions(&a).is_empty(), "{theirs} {from}");
                assert!(a.contains(&Action::Announce), "the winner re-announces");
                assert!(a.contains(&Action::SendAdvert { priority: 100 }));
            }
        }
    }

    /// A healed split brain where the loser yields before the winner hears
    /// it as MASTER: its first advert after the silence says BACKUP, and
    /// the winner re-announces anyway; so does a peer heard for the first
    /// time; regular adverts announce nothing.
    #[test]
    fn a_peer_heard_again_after_a_silence_makes_a_master_re_announce() {
        let mut m = machine(150, true, 0);
        start(&mut m, true);
        assert_eq!(m.state(), State::Master);
        let backup = || Input::Advert {
            from: B,
            priority: 100,
            state: WireState::Backup,
            interval: 100 * MS,
        };
        // The first advert ever heard from the peer: it may have been
        // MASTER, cut off, all along.
        let a = m.handle(10 * MS, backup());
        assert_eq!(a.iter().filter(|x| **x == Action::Announce).count(), 1);
        let mut t = 110 * MS;
        for _ in 0..5 {
            assert!(!m.handle(t, backup()).contains(&Action::Announce));
            t += 100 * MS;
        }
        // The link is cut for a second, then the peer is back, already BACKUP.
        t += 1000 * MS;
        let a = m.handle(t, backup());
        assert_eq!(a.iter().filter(|x| **x == Action::Announce).count(), 1);
        assert!(transitions(&a).is_empty());
        assert!(!m.handle(t + 100 * MS, backup()).contains(&Action::Announce));
        // Back as a lower MASTER: one announcement, not two.
        let a = m.handle(
            t + 1500 * MS,
            Input::Advert {
                from: B,
                priority: 100,
                state: WireState::Master,
                interval: 100 * MS,
            },
        );
        assert_eq!(a.iter().filter(|x| **x == Action::Announce).count(), 1);
    }

    #[test]
    fn preemption_with_a_delay_and_without() {
        // preempt on, delay 0: a lower MASTER's adverts are ignored, so the
        // higher BACKUP takes over one master-down interval after start.
        let mut m = machine(200, true, 0);
        start(&mut m, false);
        let mut t = Duration::ZERO;
        let mut took = None;
        while t < 3000 * MS && took.is_none() {
            m.handle(t, master_advert(100));
            took = run(&mut m, t, t + 99 * MS);
            t += 100 * MS;
        }
        let (at, _) = took.unwrap();
        assert!(at < 400 * MS, "preempted at {at:?}");
        // preempt on, delay 1 s: not before 1 s of the lower MASTER.
        let mut m = machine(200, true, 1000);
        start(&mut m, false);
        let mut t = Duration::ZERO;
        let mut took = None;
        while t < 3000 * MS && took.is_none() {
            m.handle(t, master_advert(100));
            took = run(&mut m, t, t + 99 * MS);
            t += 100 * MS;
        }
        let (at, _) = took.unwrap();
        assert!(at >= 1000 * MS && at < 1400 * MS, "preempted at {at:?}");
        // Not ready (no default route, say): never preempts; ready at
        // 1.5 s, the 1 s delay counts from then.
        let mut m = machine(200, true, 1000);
        start(&mut m, false);
        m.handle(Duration::ZERO, Input::Ready(false));
        let mut t = Duration::ZERO;
        let mut took = None;
        while t < 4000 * MS && took.is_none() {
            if t == 1500 * MS {
                m.handle(t, Input::Ready(true));
            }
            m.handle(t, master_advert(100));
            took = run(&mut m, t, t + 99 * MS);
            t += 100 * MS;
        }
        let (at, _) = took.unwrap();
        assert!(at >= 2500 * MS && at < 2900 * MS, "preempted at {at:?}");
        // preempt off: never while the lower MASTER advertises.
        let mut m = machine(200, false, 0);
        start(&mut m, false);
        let mut t = Duration::ZERO;
        while t < 3000 * MS {
            m.handle(t, master_advert(100));
            assert_eq!(run(&mut m, t, t + 99 * MS), None);
            t += 100 * MS;
        }
    }

    #[test]
    fn fault_resigns_and_recovery_returns_to_backup() {
        let mut m = machine(100, true, 0);
        start(&mut m, true);
        let a = m.handle(
            5 * MS,
            Input::Track {
                priority: 100,
                fault: true,
            },
        );
        assert_eq!(transitions(&a), vec![State::Fault]);
        assert_eq!(a[0], Action::Resign);
        assert!(a.contains(&Action::Release));
        // In FAULT nothing takes it to MASTER, however long.
        assert_eq!(run(&mut m, 5 * MS, 2000 * MS), None);
        let a = m.handle(
            2000 * MS,
            Input::Track {
                priority: 100,
                fault: false,
            },
        );
        assert_eq!(transitions(&a), vec![State::Backup]);
        let (at, s) = run(&mut m, 2000 * MS, 3000 * MS).unwrap();
        assert_eq!(s, State::Master);
        assert_eq!(at, 2361 * MS);
    }

    #[test]
    fn a_lowered_priority_lets_a_preempting_peer_take_over() {
        // This node is BACKUP at 150 behind a MASTER at 120; tracking lowers
        // it to 100: it no longer preempts.
        let mut m = machine(150, true, 0);
        start(&mut m, false);
        m.handle(
            Duration::ZERO,
            Input::Track {
                priority: 100,
                fault: false,
            },
        );
        let mut t = Duration::ZERO;
        while t < 2000 * MS {
            m.handle(t, master_advert(120));
            assert_eq!(run(&mut m, t, t + 99 * MS), None);
            t += 100 * MS;
        }
    }

    #[test]
    fn adverts_go_out_every_interval_and_backup_adverts_move_nothing() {
        let mut m = machine(100, true, 0);
        start(&mut m, true);
        let mut sent = 0;
        let mut t = Duration::ZERO;
        while t <= 1000 * MS {
            if m.next_deadline().is_some_and(|d| d <= t) {
                sent += m
                    .handle(t, Input::Timer)
                    .iter()
                    .filter(|a| matches!(a, Action::SendAdvert { .. }))
                    .count();
            }
            let a = m.handle(
                t,
                Input::Advert {
                    from: B,
                    priority: 254,
                    state: WireState::Backup,
                    interval: 100 * MS,
                },
            );
            // Only the first advert ever heard announces (see
            // `a_peer_heard_again_after_a_silence_makes_a_master_re_announce`).
            let expected: &[Action] = if t.is_zero() {
                &[Action::Announce]
            } else {
                &[]
            };
            assert_eq!(a, expected, "at {t:?}");
            t += MS;
        }
        assert_eq!(sent, 10);
        assert_eq!(m.state(), State::Master);
        let a = m.handle(t, Input::Shutdown);
        assert_eq!(a[0], Action::Resign);
        assert!(a.contains(&Action::Release));
    }
}
