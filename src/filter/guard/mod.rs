//! The guard stage (`src/bpf/guard.bpf.c`): a second XDP program of the
//! filter, tail-called by it (the filter's `xdpg_stages` slot) for packets
//! neither list decided, while it has work (a rule set, timed blocks, a
//! SYN-guarded port). In order: timed blocks (`limits.rs`,
//! `src/bpf/guard_limit.h`), the rules with their rate limits, the SYN
//! guard (`syn.rs`, `src/bpf/guard_syn.h`); every drop decision goes
//! through `decided()`, which sends drop events.
//!
//! It is a program of its own for the core ([`GuardKind`]): loaded with the
//! filter's config, counter and next-program maps and its drop-event maps
//! (their fds reused, so it counts in the filter's counters, passes to the
//! filter's next program and sends its drop events into the filter's
//! ring), pinned in the filter's pin directory under `guard/`, reopened and
//! crash-repaired with it. The public API is the filter's
//! ([`Filter::rules`](crate::Filter::rules), [`Filter::sets`](crate::Filter::sets),
//! [`Filter::timed_blocks`](crate::Filter::timed_blocks),
//! [`Filter::syn_guard`](crate::Filter::syn_guard)).
//!
//! Measured (`benches/rules.rs`, BENCHMARKS.md): with nothing to do the
//! filter's stage slot is empty and its tail call is patched to a jump the
//! filter does not take (the filter's own path costs the same as before the
//! guard existed); with rules, the tail call, the guard's own parse and the
//! index read cost about 13 ns a packet before the first rule (34–49 ns per
//! cache-cold packet), so the filter leaves the guard out for packets whose
//! key has nothing in it: the gate (`gate.rs`). A single
//! program (rules inlined in the filter) would save the tail call and the
//! second parse; it was not taken: the filter alone keeps its 5.15 floor
//! and its verification, and the guard's stages (rate limits, the SYN guard
//! with SYN cookies, which need 6.0) stay out of the filter's object.
//!
//! Each stage keeps its config in a one-entry map of its own (the rule
//! engine's and the shared clock's are in `xdpg_guard_config`), so stages
//! change apart; any change of a shared layout bumps
//! `XDPG_GUARD_LAYOUT_VERSION`.

pub(crate) mod gate;
pub(crate) mod layout;
pub(crate) mod limits;
pub(crate) mod maps;
pub(crate) mod state;
pub(crate) mod syn;

use std::os::fd::{AsFd, BorrowedFd};

use libbpf_rs::MapHandle;
use std::path::Path;

use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::{io_from_libbpf, ProgramMaps};
use crate::core::pinned::{facade, same_size, Kind, LoadPlan, Migration, Pinned, Placement, ProgramKind};
use crate::core::upgrade::{Takeover, UpgradeReport};
use crate::error::{Error, LoadError, PinError, RuleError};
use crate::filter::maps::FilterMaps;
use layout::guard_skel::GuardSkelBuilder;
use maps::{GuardCapacity, GuardMaps};
use state::GuardState;

/// The subdirectory of the filter's pin directory the guard is pinned in.
pub(crate) const PIN_SUBDIR: &str = "guard";

/// The guard stage, as the core drives it.
pub(crate) struct GuardKind;

impl ProgramKind for GuardKind {
    const KIND: &'static Kind = &Kind {
        name: "guard stage",
        program: names::XDPG_GUARD,
        maps: GuardMaps::NAMES,
        magic: XDPG_GUARD_MAGIC,
        layout_version: XDPG_GUARD_LAYOUT_VERSION,
        cli: "xdpguard",
        needs: "bpf_loop and the SYN cookie helpers, which the guard stage (rules, SYN guard) needs",
        min_kernel: "6.0 or later with BTF (or load the filter without rules: FilterBuilder::guard(false))",
        within: Some(<crate::filter::FilterKind as ProgramKind>::KIND),
    };
    type Maps = GuardMaps;
    type Model = GuardState;
    type Error = RuleError;

    fn load_model(maps: &GuardMaps) -> Result<GuardState, RuleError> {
        GuardState::load(maps)
    }

    fn repair(maps: &GuardMaps, st: &mut GuardState) -> Result<(), RuleError> {
        st.repair(maps)
    }

    fn repair_after(err: &RuleError) -> bool {
        matches!(err, RuleError::Bpf { .. })
    }

    /// Layout 3 (before the fragment condition): the same maps, reused as
    /// they are; only the program changes, so that no record's fragment
    /// bit is written where a program ignores it.
    fn migration(from: u32) -> Option<Migration<GuardMaps>> {
        (from == 3).then_some(Migration { changed: &[], added: &[], size: same_size, copy: |_, _, _| Ok(()) })
    }
}

/// The loaded guard stage.
pub(crate) struct Guard {
    pub(crate) core: Pinned<GuardKind>,
}

facade!(Guard, GuardKind);

impl Guard {
    /// Loads the guard with the filter's shared maps (`xdpg_filter_cfg`,
    /// `xdpg_filter_cnt`, `xdpg_next`, by fd).
    pub(crate) fn load(cap: GuardCapacity, shared: &[(&'static str, BorrowedFd<'_>)]) -> Result<Guard, Error> {
        let plan = LoadPlan { sizes: &cap.map_sizes(), offload_ifindex: None };
        let groups = cap.groups as u32;
        let core = Pinned::load_sharing(GuardSkelBuilder::default(), &plan, shared, |maps: &GuardMaps| {
            maps.groups_per_half().store(groups, std::sync::atomic::Ordering::Release);
            limits::init(maps);
            syn::init(maps);
        })?;
        Ok(Guard { core })
    }

    /// Pins it under `dir` (the filter's pin directory).
    pub(crate) fn pin(self, dir: &Path) -> Result<Guard, Error> {
        let place = Placement { pin: Some(dir.join(PIN_SUBDIR)), ..Default::default() };
        Pinned::create(&place, &[], || Ok(self))
    }

    /// Removes what a creation of the guard that died left under the
    /// filter's pin directory `dir`; whether there was any.
    pub(crate) fn clear_interrupted(dir: &Path) -> Result<bool, Error> {
        let sub = dir.join(PIN_SUBDIR);
        if !sub.exists() {
            return Ok(false);
        }
        match Pinned::<GuardKind>::open_pinned(&sub) {
            Err(Error::Pin(PinError::Interrupted { .. })) => {
                Pinned::<GuardKind>::clear_interrupted(&sub).map(|()| true)
            }
            _ => Ok(false),
        }
    }

    /// Reopens the guard pinned under the filter's pin directory `dir`, if
    /// there is one.
    pub(crate) fn open_pinned(dir: &Path) -> Result<Option<Guard>, Error> {
        let sub = dir.join(PIN_SUBDIR);
        if !sub.exists() {
            return Ok(None);
        }
        match Pinned::open_pinned(&sub) {
            Ok(core) => Ok(Some(Guard { core })),
            // Upgraded with the filter: the command names the filter's
            // directory; the layouts are the guard's, and the text says so
            // (`upgrade` reports the filter's and the guard's apart).
            Err(Error::Pin(PinError::Incompatible { found, expected, .. })) => {
                use crate::core::pinned::ProgramKind;
                let cli = crate::filter::FilterKind::KIND.cli;
                let kind = "filter's guard stage";
                Err(PinError::Incompatible { path: dir.to_path_buf(), kind, cli, found, expected }.into())
            }
            // Pinned last in the filter's creation: that creation was cut
            // short (`Filter::remove_interrupted` clears both).
            Err(Error::Pin(PinError::Interrupted { .. })) => {
                Err(PinError::Interrupted { path: dir.to_path_buf(), kind: "filter", cli: "xdpguard" }.into())
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the guard has work: the filter should tail-call it (a rule
    /// set, or timed blocks that were live at the last edit or list).
    pub(crate) fn active(st: &GuardState) -> bool {
        !st.rules.is_empty() || st.timed_blocks > 0 || st.syn.active()
    }

    /// Runs an edit of the guard under its lock, then puts the guard in the
    /// filter's stage slot (`filter`'s) or takes it out, as its new state
    /// needs, and opens the gate (`gate.rs`) with the new state's bits.
    /// Every edit of the guard goes through here: the gate is closed first,
    /// so no packet skips the guard on bits of another state. A refused
    /// edit changed nothing: the gate opens again as it was. After a failed
    /// map update it stays closed (every packet goes to the guard) until the
    /// next edit: the repair that follows may change the state.
    pub(crate) fn edit<R>(
        &self,
        filter: &FilterMaps,
        f: impl FnOnce(&mut GuardState, &GuardMaps) -> Result<R, RuleError>,
    ) -> Result<R, RuleError> {
        self.core.edit(|st, maps| {
            gate::close(filter);
            let r = match f(st, maps) {
                Ok(r) => r,
                Err(e) => {
                    if !GuardKind::repair_after(&e) && Guard::active(st) {
                        gate::open(filter, maps, st);
                    }
                    return Err(e);
                }
            };
            let active = Guard::active(st);
            let installed = if active {
                // The pinned program: an upgrade since this handle opened
                // replaced it (`upgrade`).
                let program = self.core.program.current().map_err(|e| RuleError::Bpf {
                    op: "opening the guard stage's program".into(),
                    error: std::io::Error::other(e),
                })?;
                filter.stages.set(XDPG_STAGE_GUARD, program.as_fd())
            } else {
                filter.stages.clear(XDPG_STAGE_GUARD).map(drop)
            };
            installed.map_err(|source| RuleError::Bpf {
                op: "installing the guard stage in the filter".into(),
                error: source,
            })?;
            if active {
                gate::open(filter, maps, st);
            }
            Ok(r)
        })
    }

    /// Replaces the guard program pinned under the filter's pin directory
    /// `dir` (if any) by this build's, over the same maps (the filter's
    /// shared ones from `filter`, already this build's), and puts it in the
    /// filter's stage slot where the old one was: `Filter::upgrade_pinned`
    /// does this after the filter's own swap, so an upgrade reaches the
    /// rules' and the SYN guard's code too. Its layout must be this build's
    /// or one it migrates (rehearsed first: [`Guard::rehearse_upgrade`]).
    ///
    /// # Errors
    ///
    /// As [`Pinned::upgrade`]; [`LoadError::Bpf`] when the stage slot
    /// cannot be read or written.
    pub(crate) fn upgrade(dir: &Path, filter: &FilterMaps) -> Result<Option<UpgradeReport>, Error> {
        let sub = dir.join(PIN_SUBDIR);
        if !sub.exists() {
            return Ok(None);
        }
        let shared = Guard::shared_maps(filter);
        let install = |old: u32, new: BorrowedFd<'_>| -> Result<(), Error> {
            let bpf = |source| LoadError::Bpf {
                op: "installing the upgraded guard stage in the filter".into(),
                error: source,
            };
            // Only where the old one runs: a guard with no work is out of
            // the slot, and its next edit installs the pinned program.
            match filter.stages.get(XDPG_STAGE_GUARD).map_err(bpf)? {
                Some(id) if id == old => filter.stages.set(XDPG_STAGE_GUARD, new).map_err(|e| bpf(e).into()),
                _ => Ok(()),
            }
        };
        let takeover = Takeover { shared: &shared, install: Some(&install) };
        let (_, report) = Pinned::<GuardKind>::upgrade_with(&sub, GuardSkelBuilder::default(), &takeover)?;
        Ok(Some(report))
    }

    /// Rehearses [`upgrade`](Self::upgrade) of the guard pinned under the
    /// filter's pin directory `dir` (if any) against the maps pinned now:
    /// its layout taken over, its maps matched, this build's guard program
    /// loaded over them and verified, then dropped. `Filter::upgrade_pinned`
    /// runs it before the filter's own swap, so what would refuse the
    /// guard refuses the upgrade before anything changes.
    ///
    /// # Errors
    ///
    /// As [`Pinned::upgrade`] before its swap; [`PinError::Io`] when a
    /// shared map is not pinned.
    pub(crate) fn rehearse_upgrade(dir: &Path) -> Result<(), Error> {
        let sub = dir.join(PIN_SUBDIR);
        if !sub.exists() {
            return Ok(());
        }
        let mut pinned = Vec::new();
        for name in SHARED {
            let path = dir.join(name);
            let map = MapHandle::from_pinned_path(&path).map_err(|e| PinError::Io {
                op: "opening pinned map",
                path,
                error: io_from_libbpf(e),
            })?;
            pinned.push((name, map));
        }
        let shared: Vec<_> = pinned.iter().map(|(n, m)| (*n, m.as_fd())).collect();
        let takeover = Takeover { shared: &shared, install: None };
        Pinned::<GuardKind>::rehearse_upgrade(&sub, GuardSkelBuilder::default(), &takeover)
    }

    pub(crate) fn unpin(self) -> Result<(), Error> {
        self.core.program.unpin()
    }

    pub(crate) fn memlock_by_map(&self) -> Vec<(&'static str, u64)> {
        self.core.maps.memlock_by_map()
    }

    /// The shared maps' fds, from the filter's maps, by name ([`SHARED`]).
    pub(crate) fn shared_maps(maps: &FilterMaps) -> Vec<(&'static str, BorrowedFd<'_>)> {
        maps.handles().into_iter().filter(|(n, _)| SHARED.contains(n)).map(|(n, h)| (n, h.as_fd())).collect()
    }
}

/// The filter's maps the guard uses as its own (their fds reused): its
/// config, counters and next-program slot, and the drop events (one ring,
/// one rate limit for both programs).
const SHARED: [&str; 6] = [
    names::XDPG_FILTER_CFG,
    names::XDPG_FILTER_CNT,
    names::XDPG_NEXT,
    names::XDPG_EVENTS,
    names::XDPG_EV_CFG,
    names::XDPG_EV_CPU,
];
