//! [`HealthChecker`]: rounds of checks over a load balancer's backends,
//! their state ([`BackendHealth`]) and what changed ([`HealthEvent`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::super::neigh::{self, enter};
use super::machine::{self, HealthState, Machine, WeightAction};
use super::probe::{ProbeError, Prober};
use super::{HealthConfig, HealthError};
use crate::{BackendAddr, LbError, LoadBalancer, Protocol, Vip};

type Key = (Vip, BackendAddr);

/// One backend's health, as a metrics exporter or a status page reads it
/// ([`HealthChecker::status`]). Counters count from the checker's start
/// (or the backend's addition) and only grow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendHealth {
    /// The VIP.
    pub vip: Vip,
    /// The backend.
    pub backend: BackendAddr,
    /// The address checked.
    pub target: SocketAddr,
    /// Up or down.
    pub state: HealthState,
    /// Checks in a row that disagree with `state` (failures while up,
    /// passes while down): the progress towards the next change.
    pub pending: u32,
    /// Checks run.
    pub checks: u64,
    /// Checks failed.
    pub failed_checks: u64,
    /// Changes from up to down.
    pub went_down: u64,
    /// Changes from down to up.
    pub came_up: u64,
    /// While the checker holds the backend drained: the weight it will
    /// restore (the configured weight; see the module docs).
    pub drained_from: Option<u32>,
    /// The last failed check's error.
    pub last_error: Option<String>,
    /// The last passed check's duration.
    pub last_latency: Option<Duration>,
    /// When `state` last changed (or the backend was first seen).
    pub since: SystemTime,
}

/// Something the checker saw or did, one per line in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthEvent {
    /// The VIP.
    pub vip: Vip,
    /// The backend.
    pub backend: BackendAddr,
    /// What happened.
    pub kind: HealthEventKind,
}

/// What happened to a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthEventKind {
    /// It failed `checks` checks in a row: drained if it had a weight, and
    /// its tracked flows moved to other backends (they choose again from
    /// their next packet: a dead backend's flows are dead anyway, and a UDP
    /// flow that keeps sending would otherwise never leave it).
    Down {
        /// Failed checks in a row (`fall`).
        checks: u32,
        /// The last check's error.
        error: String,
        /// The weight it was drained from; `None`: it was at 0 already.
        drained_from: Option<u32>,
    },
    /// It passed `checks` checks in a row.
    Up {
        /// Passed checks in a row (`rise`).
        checks: u32,
        /// The weight restored; `None`: not the checker's to restore (an
        /// operator's weight, or an operator's 0).
        restored: Option<u32>,
    },
    /// An operator gave a backend that is down this weight (or removed it
    /// and added it again): it is held at 0 again while it fails its
    /// checks (the flows it took meanwhile move to other backends), and
    /// given this weight when it passes them.
    Overridden {
        /// The operator's weight.
        weight: u32,
    },
    /// It is not checked (reported once).
    Unchecked {
        /// Why.
        reason: &'static str,
    },
    /// The LB refused the weight change, or the journal refused to keep it
    /// ([`HealthChecker::round_journaled`]); the change is retried after
    /// the next check.
    EditFailed {
        /// The state the change was for.
        to: HealthState,
        /// The LB's error.
        error: String,
    },
}

impl fmt::Display for HealthEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} backend {}: ", self.vip, self.backend)?;
        match &self.kind {
            HealthEventKind::Down { checks, error, drained_from: Some(w) } => {
                write!(
                    f,
                    "down after {checks} failed checks ({error}); drained (weight {w} -> 0), its tracked flows \
                     moved to other backends"
                )
            }
            HealthEventKind::Down { checks, error, drained_from: None } => {
                write!(
                    f,
                    "down after {checks} failed checks ({error}); already at weight 0, left there, its tracked flows \
                     moved to other backends"
                )
            }
            HealthEventKind::Up { checks, restored: Some(w) } => {
                write!(f, "up after {checks} passed checks; restored (weight 0 -> {w})")
            }
            HealthEventKind::Up { checks, restored: None } => {
                write!(f, "up after {checks} passed checks; weight not the checker's to restore, left alone")
            }
            HealthEventKind::Overridden { weight } => {
                write!(
                    f,
                    "an operator set weight {weight} while it is down; held at 0 until it passes its checks, then \
                     given {weight}"
                )
            }
            HealthEventKind::Unchecked { reason } => write!(f, "not checked: {reason}"),
            HealthEventKind::EditFailed { to, error } => {
                write!(f, "{to}, but the weight change failed ({error}); retried after the next check")
            }
        }
    }
}

/// A backend under watch.
#[derive(Debug)]
struct Tracked {
    machine: Machine,
    health: BackendHealth,
}

#[derive(Debug, Default)]
struct Inner {
    tracked: BTreeMap<Key, Tracked>,
    /// Backends reported as unchecked (once each).
    unchecked: BTreeSet<Key>,
    /// Backends an earlier checker drained, with their configured weights.
    adopted: BTreeMap<Key, u32>,
    /// Backends removed from the LB while down, kept a while with when they
    /// went: one added again (`backend del` and `add`, a VIP made again)
    /// is still down, not a new backend assumed up.
    removed_down: BTreeMap<Key, (Tracked, Instant)>,
}

/// Why a backend is no longer checked when its VIP is removed.
const VIP_GONE: &str = "its VIP was removed from the load balancer; checked again if it is added back";

/// How long a backend removed while down is remembered as down.
const REMOVED_DOWN_KEPT: Duration = Duration::from_secs(300);

/// A change decided in a round, applied with its VIP's batch.
#[derive(Debug)]
struct Change {
    backend: BackendAddr,
    weight: u32,
    /// Whether `weight` is the checker's (else the current one, kept).
    set: bool,
    before: Machine,
    to: HealthState,
    remembered: Option<u32>,
    error: Option<String>,
    /// A down backend given a weight by an operator, held at 0 again (its
    /// `Overridden` event says so; no state changes).
    redrain: bool,
    /// Its tracked flows choose again ([`machine::repicks`]).
    repick: bool,
}

/// Checks a load balancer's backends and drains and restores them (see the
/// [module docs](super) for the rules and bounds).
///
/// [`run`](Self::run) checks until told to stop, from the calling thread's
/// network namespace (the LB's); [`round`](Self::round) runs one round;
/// [`status`](Self::status) can be called from another thread meanwhile
/// (share the checker in an `Arc`).
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use xdpguard::health_check::{Check, HealthChecker, HealthConfig};
/// use xdpguard::LoadBalancer;
///
/// let lb = LoadBalancer::open_pinned("/sys/fs/bpf/xdpguard-lb")?;
/// let checker = HealthChecker::new(HealthConfig::new(Check::Http { path: "/healthz".into() }))?;
/// let stop = AtomicBool::new(false);
/// checker.run(&lb, &stop, |event| eprintln!("{event}"))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HealthChecker {
    config: HealthConfig,
    prober: Prober,
    inner: Mutex<Inner>,
}

impl HealthChecker {
    /// A checker with `config`.
    ///
    /// # Errors
    ///
    /// [`HealthError::InvalidConfig`] naming the value and the fix.
    pub fn new(config: HealthConfig) -> Result<HealthChecker, HealthError> {
        config.validate()?;
        let prober = Prober::new(config.check.clone(), config.timeout);
        Ok(HealthChecker { config, prober, inner: Mutex::default() })
    }

    /// Its config.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere leaves counters, not broken invariants.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes over a backend an earlier checker drained (e.g. before a
    /// restart of the agent) from `configured_weight`: it starts down, and
    /// is restored to that weight when it passes `rise` checks in a row
    /// (while its weight is still 0). Without this, a restarted checker
    /// sees a 0 it did not set, and leaves it.
    pub fn adopt(&self, vip: Vip, backend: BackendAddr, configured_weight: u32) {
        self.inner().adopted.insert((vip, backend), configured_weight);
    }

    /// Every checked backend's state and counters, by VIP and backend.
    pub fn status(&self) -> Vec<BackendHealth> {
        self.inner().tracked.values().map(|t| t.health.clone()).collect()
    }

    /// One check of `target` now, as a round would do it; the time it took
    /// when it passed.
    ///
    /// # Errors
    ///
    /// [`ProbeError`]: why the check failed.
    pub fn probe(&self, target: SocketAddr) -> Result<Duration, ProbeError> {
        self.prober.probe(target)
    }

    /// The address a backend is checked at, or why it is not checked.
    fn target(&self, vip: &Vip, backend: &BackendAddr) -> Result<SocketAddr, &'static str> {
        if let Some(port) = self.config.port {
            return Ok(SocketAddr::new(backend.ip, port));
        }
        if vip.protocol != Protocol::Tcp {
            return Err("a UDP VIP's backends are checked only with a configured port (--port)");
        }
        match backend.port.or(vip.port) {
            Some(port) => Ok(SocketAddr::new(backend.ip, port)),
            None => Err("an all-ports VIP's backends are checked only with a configured port (--port)"),
        }
    }

    /// Runs one round: reads the LB's backends, checks each in parallel,
    /// applies the changes (one batch per VIP). Returns what happened.
    ///
    /// # Errors
    ///
    /// [`HealthError::Lb`] when the LB's VIPs or backends cannot be read
    /// (nothing changed). A failed weight change is not an error: it is an
    /// [`HealthEventKind::EditFailed`] event, retried after the next check.
    pub fn round(&self, lb: &LoadBalancer) -> Result<Vec<HealthEvent>, HealthError> {
        self.round_journaled(lb, &mut |_| Ok(()))
    }

    /// [`round`](Self::round), with a journal: before the round drains any
    /// backend, `journal` is given every checked backend's state as it will
    /// be once the round's changes are applied, the backends it drains
    /// already holding the weight they will be restored to
    /// ([`BackendHealth::drained_from`]), those it restores still holding
    /// theirs. A journal that keeps this (a state file, as `xdpguard-lb
    /// health --state`) lets a restarted checker restore what this one
    /// drained ([`adopt`](Self::adopt)) even when it died between the
    /// weight change and its events: a drain is never written to the LB
    /// before the journal has it. A journal's error applies none of the
    /// round's changes (each an [`HealthEventKind::EditFailed`] naming the
    /// journal, retried after the next check).
    ///
    /// # Errors
    ///
    /// As [`round`](Self::round).
    pub fn round_journaled(
        &self,
        lb: &LoadBalancer,
        journal: &mut dyn FnMut(&[BackendHealth]) -> Result<(), String>,
    ) -> Result<Vec<HealthEvent>, HealthError> {
        let mut events = Vec::new();
        // The backends now, with their weights.
        let mut current: BTreeMap<Key, (u32, Result<SocketAddr, &'static str>)> = BTreeMap::new();
        let vips = lb.vips()?;
        for (vip, _) in &vips {
            let vip = *vip;
            if !self.config.vips.is_empty() && !self.config.vips.contains(&vip) {
                continue;
            }
            let backends = match lb.backends(&vip) {
                Ok(b) => b,
                // Removed since vips() read it.
                Err(LbError::VipNotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for b in backends {
                current.insert((vip, b.addr), (b.weight, self.target(&vip, &b.addr)));
            }
        }

        let targets: Vec<(Key, SocketAddr)> = {
            let mut inner = self.inner();
            let Inner { tracked, unchecked, adopted, removed_down } = &mut *inner;
            removed_down.retain(|_, (_, at)| at.elapsed() < REMOVED_DOWN_KEPT);
            for key in tracked.keys().filter(|k| !current.contains_key(k)).copied().collect::<Vec<_>>() {
                // A whole VIP gone (`vip del`; a backend removed is what
                // an operator asked for, and says nothing): said once per
                // backend, so an agent left checking nothing says so.
                if !vips.iter().any(|(v, _)| *v == key.0) {
                    events.push(event(&key, HealthEventKind::Unchecked { reason: VIP_GONE }));
                }
                if let Some(t) = tracked.remove(&key).filter(|t| t.machine.state() == HealthState::Down) {
                    removed_down.insert(key, (t, Instant::now()));
                }
            }
            unchecked.retain(|k| current.contains_key(k));
            for (key, (_, target)) in &current {
                match target {
                    Err(reason) => {
                        if unchecked.insert(*key) {
                            events.push(event(key, HealthEventKind::Unchecked { reason }));
                        }
                    }
                    Ok(target) => {
                        tracked.entry(*key).or_insert_with(|| {
                            if let Some((t, _)) = removed_down.remove(key) {
                                return t;
                            }
                            let drained_from = adopted.remove(key);
                            let state = if drained_from.is_some() { HealthState::Down } else { HealthState::Up };
                            Tracked { machine: Machine::new(state), health: fresh(key, *target, state, drained_from) }
                        });
                    }
                }
            }
            tracked.iter().map(|(k, t)| (*k, t.health.target)).collect()
        };
        self.sync_marks(lb, &current)?;

        // From the LB's network namespace: its backends are reached from
        // there (checked from elsewhere, each would fail and be drained).
        // A check that could not enter it says nothing of its backend: the
        // round stops there, nothing recorded or changed.
        let mut results = self.check_all(&targets, lb.foreign_netns()?);
        if let Some(i) = results.iter().position(|r| matches!(r, Err(ProbeError::Namespace { .. }))) {
            if let Err(ProbeError::Namespace { error }) = results.swap_remove(i) {
                return Err(HealthError::Namespace { error });
            }
        }

        let mut inner = self.inner();
        let (rise, fall) = (self.config.rise, self.config.fall);
        let mut changes: BTreeMap<Vip, Vec<Change>> = BTreeMap::new();
        for ((key, _), result) in targets.iter().zip(results) {
            let Some(t) = inner.tracked.get_mut(key) else { continue };
            let weight = current[key].0;
            // A weight on a backend the checker drained is an operator's:
            // not restored over (held at 0 again below while it is down).
            if machine::overridden(weight, t.health.drained_from).is_some() {
                t.health.drained_from = None;
            }
            t.health.checks += 1;
            let error = match result {
                Ok(latency) => {
                    t.health.last_latency = Some(latency);
                    None
                }
                Err(e) => {
                    t.health.failed_checks += 1;
                    let text = e.to_string();
                    t.health.last_error = Some(text.clone());
                    Some(text)
                }
            };
            let before = t.machine;
            match t.machine.record(error.is_none(), rise, fall) {
                Some(to) => {
                    let (action, remembered) = machine::on_change(to, weight, t.health.drained_from);
                    let repick = machine::repicks(to);
                    match action {
                        WeightAction::Keep if !repick => {
                            events.push(changed(key, &mut t.health, to, remembered, None, error, rise, fall));
                        }
                        action => changes.entry(key.0).or_default().push(Change {
                            backend: key.1,
                            weight: match action {
                                WeightAction::Set(w) => w,
                                WeightAction::Keep => weight,
                            },
                            set: matches!(action, WeightAction::Set(_)),
                            before,
                            to,
                            remembered,
                            error,
                            redrain: false,
                            repick,
                        }),
                    }
                }
                // Still down, with a weight: an operator's (a reweighting,
                // or the backend removed and added again). A down backend
                // gets no new flow: held at 0 again, the operator's weight
                // the one it gets back when it passes its checks.
                // (Only while failing: a backend adopted as down whose
                // weight an operator restored, passing now, is left to
                // come up.)
                None if t.machine.state() == HealthState::Down && weight > 0 && error.is_some() => {
                    events.push(event(key, HealthEventKind::Overridden { weight }));
                    // The flows it took meanwhile choose again too.
                    changes.entry(key.0).or_default().push(Change {
                        backend: key.1,
                        weight: 0,
                        set: true,
                        before,
                        to: HealthState::Down,
                        remembered: Some(weight),
                        error: None,
                        redrain: true,
                        repick: true,
                    });
                }
                None => {}
            }
            t.health.pending = t.machine.pending();
        }

        // Write-ahead: what a restarted checker needs to restore a drain is
        // kept before the drain is made (a restore needs nothing first: the
        // journal already holds what it restores from).
        let drains = changes.iter().flat_map(|(vip, list)| list.iter().map(move |c| ((*vip, c.backend), c)));
        let drains: BTreeMap<Key, u32> = drains
            .filter_map(|(key, c)| c.remembered.filter(|_| c.to == HealthState::Down).map(|w| (key, w)))
            .collect();
        let journaled = if drains.is_empty() {
            Ok(())
        } else {
            let ahead: Vec<BackendHealth> = inner
                .tracked
                .iter()
                .map(|(key, t)| {
                    let mut h = t.health.clone();
                    if let Some(&w) = drains.get(key) {
                        h.drained_from = Some(w);
                    }
                    h
                })
                .collect();
            journal(&ahead).map_err(|e| format!("the journal refused the change: {e}"))
        };

        for (vip, list) in changes {
            let applied = match &journaled {
                Ok(()) => {
                    // Its drains marked as the checker's first: the only 0
                    // a configuration's keep_drained holds, so an apply
                    // between the two never sees the drain unmarked (a
                    // mark on a weight above 0 holds nothing; a failed
                    // batch's mark is cleared by the next round's sync).
                    let marked = list
                        .iter()
                        .filter(|c| c.set && c.weight == 0)
                        .try_for_each(|c| lb.mark_checker_drained(&vip, &c.backend, true));
                    let mut batch = lb.batch(&vip);
                    for c in &list {
                        batch = batch.set_weight(c.backend, c.weight);
                        if c.repick {
                            batch = batch.repick(c.backend);
                        }
                    }
                    match marked.and_then(|()| batch.apply()) {
                        // Weights changed; only the next hops' upkeep failed.
                        Ok(()) | Err(LbError::Neighbour { .. }) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.clone()),
            };
            for c in list {
                let key = (vip, c.backend);
                let Some(t) = inner.tracked.get_mut(&key) else { continue };
                match &applied {
                    Ok(()) if c.redrain => t.health.drained_from = c.remembered,
                    Ok(()) => {
                        let set = c.set.then_some(c.weight);
                        events.push(changed(&key, &mut t.health, c.to, c.remembered, set, c.error, rise, fall));
                    }
                    Err(error) => {
                        // Undone: the next check makes the change again.
                        t.machine = c.before;
                        t.health.pending = c.before.pending();
                        events.push(event(&key, HealthEventKind::EditFailed { to: c.to, error: error.clone() }));
                    }
                }
            }
        }
        Ok(events)
    }

    /// Makes the LB's checker-drained marks (set before each drain) say
    /// what this checker will restore: a backend it
    /// holds down at 0 with a weight to give back is marked, any other it
    /// checks is not. A configuration's `keep_drained` holds only marked
    /// backends, so a mark nobody will clear would hold a backend at 0 for
    /// ever (an earlier checker's, restarted without its `--state`
    /// journal), and one missing would let an apply restore a dead backend
    /// until the next round (its slot made again with its VIP, or
    /// adopted). One read of each VIP's slots a round; a write only where
    /// they differ.
    fn sync_marks(
        &self,
        lb: &LoadBalancer,
        current: &BTreeMap<Key, (u32, Result<SocketAddr, &'static str>)>,
    ) -> Result<(), HealthError> {
        let wanted: Vec<(Key, bool)> = {
            let inner = self.inner();
            inner
                .tracked
                .iter()
                .filter_map(|(key, t)| {
                    let weight = current.get(key)?.0;
                    let held = t.machine.state() == HealthState::Down && t.health.drained_from.is_some();
                    Some((*key, held && weight == 0))
                })
                .collect()
        };
        let mut marked: BTreeMap<Vip, BTreeSet<BackendAddr>> = BTreeMap::new();
        for ((vip, backend), want) in wanted {
            let have = match marked.entry(vip) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => match lb.checker_drained(&vip) {
                    Ok(m) => e.insert(m),
                    // Removed since read: the next round forgets it.
                    Err(LbError::VipNotFound { .. }) => continue,
                    Err(err) => return Err(err.into()),
                },
            };
            if have.contains(&backend) != want {
                lb.mark_checker_drained(&vip, &backend, want)?;
            }
        }
        Ok(())
    }

    /// Checks every target in parallel: a thread each (scoped, so joined
    /// before this returns), so a round lasts one timeout, not one per
    /// backend. A thread costs ~15 µs to start; a round of 1,000 backends
    /// ~15 ms of CPU. Each thread first enters `netns` (the LB's, when it
    /// is not the caller's); one that cannot says so
    /// ([`ProbeError::Namespace`]) and checks nothing.
    fn check_all(
        &self,
        targets: &[(Key, SocketAddr)],
        netns: Option<BorrowedFd<'_>>,
    ) -> Vec<Result<Duration, ProbeError>> {
        let check = move |t: SocketAddr| {
            if let Some(ns) = netns {
                enter(ns).map_err(|source| ProbeError::Namespace { error: source })?;
            }
            self.probe(t)
        };
        thread::scope(|s| {
            let handles: Vec<_> = targets
                .iter()
                .map(|(_, t)| {
                    let t = *t;
                    // Out of threads: this one checks it, in turn.
                    thread::Builder::new()
                        .name("xdpguard-health".into())
                        .spawn_scoped(s, move || check(t))
                        .map_err(|_| t)
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                    Err(t) => match netns {
                        None => self.probe(t),
                        Some(ns) => in_netns(ns, || self.probe(t)),
                    },
                })
                .collect()
        })
    }

    /// Whether the LB has every VIP of [`HealthConfig::vips`]: a VIP it
    /// does not have (a typo, or a UDP VIP given without its protocol)
    /// would silently be checked never. [`run`](Self::run) asks at its
    /// start.
    ///
    /// # Errors
    ///
    /// [`HealthError::VipsNotFound`] naming them (and a VIP at the same
    /// address and port with another protocol, probably the one meant);
    /// [`HealthError::Lb`] when the LB's VIPs cannot be read.
    pub fn check_vips(&self, lb: &LoadBalancer) -> Result<(), HealthError> {
        if self.config.vips.is_empty() {
            return Ok(());
        }
        let have: BTreeSet<Vip> = lb.vips()?.into_iter().map(|(v, _)| v).collect();
        let missing: Vec<Vip> = self.config.vips.iter().filter(|v| !have.contains(v)).copied().collect();
        if missing.is_empty() {
            return Ok(());
        }
        let other_protocol = have
            .iter()
            .filter(|h| missing.iter().any(|m| m.addr == h.addr && m.port == h.port))
            .filter(|h| !self.config.vips.contains(h))
            .copied()
            .collect();
        Err(HealthError::VipsNotFound { missing, other_protocol, pin: lb.pin_path().map(Into::into) })
    }

    /// Runs rounds every `interval` until `stop` is set (checked at least
    /// every 50 ms), calling `on_event` for each event. A round that
    /// overruns its interval delays the next one; none are run twice.
    ///
    /// # Errors
    ///
    /// [`HealthError::VipsNotFound`] at the start when [`HealthConfig::vips`]
    /// names a VIP the LB does not have (see [`check_vips`](Self::check_vips)):
    /// also an agent started before its VIPs were made (before `xdpguard
    /// apply`), which its supervisor restarts, or which is ordered after
    /// the configuration's unit.
    /// [`HealthError::Lb`] when the LB cannot be read any more (e.g. it
    /// was detached): an agent should exit and be restarted. A VIP removed
    /// later is not an error: its backends are reported once as
    /// [`HealthEventKind::Unchecked`], and checked again if it is added
    /// back.
    pub fn run(
        &self,
        lb: &LoadBalancer,
        stop: &AtomicBool,
        on_event: impl FnMut(&HealthEvent),
    ) -> Result<(), HealthError> {
        self.run_journaled(lb, stop, |_| Ok(()), on_event)
    }

    /// [`run`](Self::run), each round with `journal` (see
    /// [`round_journaled`](Self::round_journaled)).
    ///
    /// # Errors
    ///
    /// As [`run`](Self::run).
    pub fn run_journaled(
        &self,
        lb: &LoadBalancer,
        stop: &AtomicBool,
        mut journal: impl FnMut(&[BackendHealth]) -> Result<(), String>,
        mut on_event: impl FnMut(&HealthEvent),
    ) -> Result<(), HealthError> {
        self.check_vips(lb)?;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            for e in self.round_journaled(lb, &mut journal)? {
                on_event(&e);
            }
            next += self.config.interval;
            let now = Instant::now();
            if next < now {
                next = now;
            }
            while !stop.load(Ordering::Relaxed) {
                let left = next.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                thread::sleep(left.min(Duration::from_millis(50)));
            }
        }
        Ok(())
    }
}

fn event(key: &Key, kind: HealthEventKind) -> HealthEvent {
    HealthEvent { vip: key.0, backend: key.1, kind }
}

fn fresh(key: &Key, target: SocketAddr, state: HealthState, drained_from: Option<u32>) -> BackendHealth {
    BackendHealth {
        vip: key.0,
        backend: key.1,
        target,
        state,
        pending: 0,
        checks: 0,
        failed_checks: 0,
        went_down: 0,
        came_up: 0,
        drained_from,
        last_error: None,
        last_latency: None,
        since: SystemTime::now(),
    }
}

/// Records a change of state in `h` and returns its event. `set`: the
/// weight the checker wrote, if any.
#[allow(clippy::too_many_arguments)]
fn changed(
    key: &Key,
    h: &mut BackendHealth,
    to: HealthState,
    remembered: Option<u32>,
    set: Option<u32>,
    error: Option<String>,
    rise: u32,
    fall: u32,
) -> HealthEvent {
    h.state = to;
    h.since = SystemTime::now();
    h.pending = 0;
    let kind = match to {
        HealthState::Down => {
            h.went_down += 1;
            h.drained_from = remembered;
            HealthEventKind::Down { checks: fall, error: error.unwrap_or_default(), drained_from: remembered }
        }
        HealthState::Up => {
            h.came_up += 1;
            h.drained_from = None;
            HealthEventKind::Up { checks: rise, restored: set }
        }
    };
    event(key, kind)
}

/// Runs `f` on the calling thread inside `ns`, then moves the thread back,
/// also when `f` panics (for a check made when no thread could be
/// started).
fn in_netns<T>(ns: BorrowedFd<'_>, f: impl FnOnce() -> Result<T, ProbeError>) -> Result<T, ProbeError> {
    /// The thread's own namespace, entered again on drop.
    struct Home(std::os::fd::OwnedFd);
    impl Drop for Home {
        fn drop(&mut self) {
            use std::os::fd::AsFd;
            // Left in the LB's namespace, the caller's thread would do
            // everything after in the wrong one: better stopped.
            if enter(self.0.as_fd()).is_err() {
                if thread::panicking() {
                    std::process::abort();
                }
                panic!("moving the health checker's thread back to its network namespace failed");
            }
        }
    }
    let home = Home(neigh::current().map_err(|source| ProbeError::Namespace { error: source })?.0);
    enter(ns).map_err(|source| ProbeError::Namespace { error: source })?;
    let out = f();
    drop(home);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health_check::Check;

    fn key() -> Key {
        (Vip::tcp("203.0.113.10:80".parse().unwrap()), BackendAddr::new("198.51.100.11".parse().unwrap()))
    }

    #[test]
    fn events_read_as_one_line_each() {
        let k = key();
        let down = event(&k, HealthEventKind::Down { checks: 3, error: "refused".into(), drained_from: Some(2) });
        assert_eq!(
            down.to_string(),
            "tcp 203.0.113.10:80 backend 198.51.100.11: down after 3 failed checks (refused); drained (weight 2 -> 0), \
             its tracked flows moved to other backends"
        );
        let down0 = event(&k, HealthEventKind::Down { checks: 3, error: "refused".into(), drained_from: None });
        assert!(down0
            .to_string()
            .ends_with("already at weight 0, left there, its tracked flows moved to other backends"));
        let up = event(&k, HealthEventKind::Up { checks: 2, restored: Some(2) });
        assert!(up.to_string().ends_with("up after 2 passed checks; restored (weight 0 -> 2)"), "{up}");
        for e in [down, down0, up] {
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn targets_follow_the_port_rule() {
        let c = HealthChecker::new(HealthConfig::new(Check::Tcp)).unwrap();
        let (vip, b) = key();
        assert_eq!(c.target(&vip, &b).unwrap(), "198.51.100.11:80".parse().unwrap(), "the VIP's port");
        let nat: BackendAddr = "198.51.100.11:8080".parse().unwrap();
        assert_eq!(c.target(&vip, &nat).unwrap(), "198.51.100.11:8080".parse().unwrap(), "the backend's port");
        let all = Vip::all_ports(vip.addr, Protocol::Tcp);
        assert!(c.target(&all, &b).unwrap_err().contains("--port"));
        assert!(c.target(&Vip::udp("203.0.113.10:53".parse().unwrap()), &b).unwrap_err().contains("UDP"));
        let c = HealthChecker::new(HealthConfig::new(Check::Tcp).port(8081)).unwrap();
        assert_eq!(c.target(&all, &nat).unwrap(), "198.51.100.11:8081".parse().unwrap(), "the configured port");
    }

    #[test]
    fn changes_update_the_counters() {
        let k = key();
        let mut h = fresh(&k, "198.51.100.11:80".parse().unwrap(), HealthState::Up, None);
        let e = changed(&k, &mut h, HealthState::Down, Some(4), Some(0), Some("x".into()), 2, 3);
        assert_eq!((h.state, h.went_down, h.drained_from), (HealthState::Down, 1, Some(4)));
        assert!(matches!(e.kind, HealthEventKind::Down { checks: 3, drained_from: Some(4), .. }));
        changed(&k, &mut h, HealthState::Up, None, Some(4), None, 2, 3);
        assert_eq!((h.state, h.came_up, h.drained_from), (HealthState::Up, 1, None));
    }
}
