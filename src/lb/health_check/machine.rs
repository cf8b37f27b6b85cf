//! The rise/fall state machine of one backend, and the weight rule: what
//! the checker does to a backend's weight when it goes down or comes back.
//! Both are pure (no I/O), so they are unit-tested here.

use std::fmt;

/// What the checker believes about a backend. Exhaustive: rise/fall
/// hysteresis has these two states by definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HealthState {
    /// Passing its checks (or not yet failed `fall` of them in a row).
    Up,
    /// Failed `fall` checks in a row and not yet passed `rise` in a row.
    Down,
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        })
    }
}

/// Rise/fall hysteresis: `fall` failed checks in a row take an up backend
/// down, `rise` passed checks in a row bring a down one back; a result that
/// agrees with the state resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Machine {
    state: HealthState,
    /// Results in a row that disagree with `state` (failures while up,
    /// passes while down): the progress towards a change.
    pending: u32,
}

impl Machine {
    /// A backend in `state` with no progress towards a change.
    pub(crate) fn new(state: HealthState) -> Machine {
        Machine { state, pending: 0 }
    }

    pub(crate) fn state(&self) -> HealthState {
        self.state
    }

    pub(crate) fn pending(&self) -> u32 {
        self.pending
    }

    /// Records one check's result; returns the new state when it changed.
    /// `rise` and `fall` are at least 1 (the config checks).
    pub(crate) fn record(&mut self, passed: bool, rise: u32, fall: u32) -> Option<HealthState> {
        let (agrees, needed, next) = match self.state {
            HealthState::Up => (passed, fall, HealthState::Down),
            HealthState::Down => (!passed, rise, HealthState::Up),
        };
        if agrees {
            self.pending = 0;
            return None;
        }
        self.pending += 1;
        if self.pending < needed {
            return None;
        }
        *self = Machine::new(next);
        Some(next)
    }
}

/// What to do to a backend's weight, given its current weight in the LB and
/// the weight the checker remembers having drained it from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WeightAction {
    /// Leave the weight alone.
    Keep,
    /// Set it (0 drains; else a restore).
    Set(u32),
}

/// The weight rule, on a change to `to`. The checker owns a weight only
/// while it holds it at 0 itself:
/// - going down with weight `w > 0`: drain (weight 0) and remember `w`,
///   the *configured weight*; already at 0 (an operator drained it): leave
///   it, remember nothing.
/// - coming up with a remembered weight: restore it, but only while the
///   weight is still the 0 the checker set; any other weight is an
///   operator's, and stays.
/// - coming up with nothing remembered: leave it (an operator's 0 stays 0).
///
/// Returns the action and what to remember from now on.
pub(crate) fn on_change(to: HealthState, current: u32, remembered: Option<u32>) -> (WeightAction, Option<u32>) {
    match to {
        HealthState::Down if current > 0 => (WeightAction::Set(0), Some(current)),
        HealthState::Down => (WeightAction::Keep, None),
        HealthState::Up => match remembered {
            Some(w) if current == 0 => (WeightAction::Set(w), None),
            _ => (WeightAction::Keep, None),
        },
    }
}

/// Whether a change to `to` moves the backend's tracked flows to other
/// backends (they choose again from their next packet, its slot's gen
/// renewed in the same batch as the drain): going down, whatever the weight
/// (an operator's drained backend that dies has only dead flows left).
/// Weight 0 alone is a graceful drain, which keeps tracked flows: right for
/// an operator's drain of a live backend, wrong for a dead one, where a UDP
/// flow that keeps sending never idles out of the connection table and is
/// lost for good. Renewing the gen rather than removing and adding the
/// backend again keeps its slot and counters; a "down" flag read on the
/// connection-table hit path would cost every packet a load for what the
/// gen compare already decides. Coming up moves nothing: flows moved away
/// stay where they went.
pub(crate) fn repicks(to: HealthState) -> bool {
    to == HealthState::Down
}

/// Between changes: a backend the checker drained whose weight is no longer
/// 0 was given a weight by an operator, which the checker leaves alone and
/// forgets its remembered weight for (it will not restore over it).
/// Returns the weight the operator set, if so.
pub(crate) fn overridden(current: u32, remembered: Option<u32>) -> Option<u32> {
    remembered.and(Some(current)).filter(|w| *w != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Down, Up};

    /// Feeds results ('+' passed, '-' failed) and returns the state after each.
    fn trace(start: HealthState, rise: u32, fall: u32, results: &str) -> String {
        let mut m = Machine::new(start);
        results
            .chars()
            .map(|c| {
                m.record(c == '+', rise, fall);
                match m.state() {
                    Up => 'U',
                    Down => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down() {
        assert_eq!(trace(Up, 2, 3, "--+---"), "UUUUUD");
        assert_eq!(trace(Up, 2, 3, "-+-+-+-+"), "UUUUUUUU", "alternating never adds up to 3 in a row");
        assert_eq!(trace(Up, 2, 1, "+-"), "UD", "fall 1: the first failure");
    }

    #[test]
    fn rise_passes_in_a_row_bring_it_back() {
        assert_eq!(trace(Down, 2, 3, "+-++"), "DDDU");
        assert_eq!(trace(Down, 3, 3, "++-+++"), "DDDDDU");
        assert_eq!(trace(Down, 1, 3, "-+"), "DU", "rise 1: the first pass");
    }

    #[test]
    fn a_change_resets_the_count() {
        let mut m = Machine::new(Up);
        assert_eq!(m.record(false, 2, 2), None);
        assert_eq!(m.pending(), 1);
        assert_eq!(m.record(false, 2, 2), Some(Down));
        assert_eq!(m.pending(), 0, "the failures that took it down count nothing towards rising");
        assert_eq!(m.record(true, 2, 2), None);
        assert_eq!(m.record(true, 2, 2), Some(Up));
        // A full cycle again: nothing carried over.
        assert_eq!(trace(Up, 2, 2, "--++--"), "UDDUUD");
    }

    #[test]
    fn going_down_drains_and_remembers_the_configured_weight() {
        assert_eq!(on_change(Down, 5, None), (WeightAction::Set(0), Some(5)));
        // An operator had drained it already: nothing to do, nothing to restore later.
        assert_eq!(on_change(Down, 0, None), (WeightAction::Keep, None));
    }

    #[test]
    fn only_going_down_moves_tracked_flows() {
        assert!(repicks(Down));
        assert!(!repicks(Up));
    }

    #[test]
    fn coming_up_restores_only_the_checkers_own_zero() {
        assert_eq!(on_change(Up, 0, Some(5)), (WeightAction::Set(5), None));
        // An operator set 7 while it was down: theirs stays.
        assert_eq!(on_change(Up, 7, Some(5)), (WeightAction::Keep, None));
        // Never drained by the checker: an operator's 0 stays 0.
        assert_eq!(on_change(Up, 0, None), (WeightAction::Keep, None));
        assert_eq!(on_change(Up, 3, None), (WeightAction::Keep, None));
    }

    #[test]
    fn an_operator_weight_on_a_drained_backend_wins() {
        assert_eq!(overridden(0, Some(5)), None, "still the checker's 0");
        assert_eq!(overridden(2, Some(5)), Some(2));
        assert_eq!(overridden(2, None), None, "the checker did not drain it");
    }

    /// A whole life: the weight restored is the one it had when drained.
    #[test]
    fn the_configured_weight_is_the_one_at_drain_time() {
        // Added at 4, reweighted to 6 by an operator while up, then down:
        let (action, remembered) = on_change(Down, 6, None);
        assert_eq!(action, WeightAction::Set(0));
        assert_eq!(overridden(0, remembered), None);
        let (action, _) = on_change(Up, 0, remembered);
        assert_eq!(action, WeightAction::Set(6));
    }
}
