//! Rehearsing upgrades: stamp a pinned program's config header with
//! another layout version, and read which program its pinned links run.
//!
//! Stamping [`REHEARSAL_LAYOUT`] makes the next `upgrade_pinned` run a
//! migration (with this feature, every program knows one from it): the
//! program's hardest maps (the LB's connection tables and counters, the
//! filter's counters and IPv4 entries, the decapsulator's addresses and
//! counters) are recreated and copied before and after the swap, and their
//! pins replaced, exactly as a migration from an older layout does, with
//! values that need no conversion. Stamping any other version no build
//! knows makes it refuse with [`PinError::NoMigration`](crate::PinError::NoMigration).

use std::path::Path;

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use crate::core::layout::{header, names};
use crate::core::sys;

/// The layout version every program migrates from with the `testing`
/// feature (an identity migration of some of its maps).
pub const REHEARSAL_LAYOUT: u32 = crate::core::pinned::REHEARSAL_LAYOUT;

/// The filter's layout version in this build (what its pins are stamped with).
pub const FILTER_LAYOUT: u32 = crate::core::layout::consts::XDPG_LAYOUT_VERSION;

/// The guard stage's layout version in this build.
pub const GUARD_LAYOUT: u32 = crate::core::layout::consts::XDPG_GUARD_LAYOUT_VERSION;

/// The config maps that mark a pin directory, one per program.
const CONFIGS: [&str; 4] = [names::XDPG_FILTER_CFG, names::XDPG_LB_CFG, names::XDPG_DECAP_CFG, names::XDPG_GUARD_CFG];

/// Writes `version` as the layout version of the program pinned in `dir`.
///
/// # Panics
/// When `dir` holds no xdpguard program, or its config cannot be written.
pub fn stamp_layout(dir: impl AsRef<Path>, version: u32) {
    let dir = dir.as_ref();
    let path = CONFIGS
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{} holds no pinned xdpguard program", dir.display()));
    let map = MapHandle::from_pinned_path(&path).expect("open the pinned config");
    let mut value = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).expect("read the config").expect("config entry");
    value[header::LAYOUT_VERSION..header::LAYOUT_VERSION + 4].copy_from_slice(&version.to_ne_bytes());
    map.update(&0u32.to_ne_bytes(), &value, MapFlags::ANY).expect("write the config");
}

/// The ids of the programs the links pinned in `dir` run, sorted.
///
/// # Panics
/// When a link pin cannot be read.
pub fn link_program_ids(dir: impl AsRef<Path>) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(dir.as_ref())
        .expect("read the pin directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_"))
        .map(|e| {
            let fd = sys::obj_get(&e.path()).expect("open the pinned link");
            sys::link_prog_id(std::os::fd::AsFd::as_fd(&fd)).expect("read the link's program")
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// The id of the XDP program attached to `ifindex` (in the calling
/// thread's network namespace), if any.
pub fn attached_program_id(ifindex: u32) -> Option<u32> {
    sys::xdp_query(ifindex).ok().map(|q| q.prog_id).filter(|&id| id != 0)
}

/// The id of the program in `filter`'s guard-stage slot (the guard the
/// filter tail-calls), if any.
///
/// # Panics
/// When the slot cannot be read.
pub fn guard_stage_program_id(filter: &crate::Filter) -> Option<u32> {
    let slot = crate::core::layout::consts::XDPG_STAGE_GUARD;
    super::filter_core(filter).maps.stages.get(slot).expect("read the filter's stage slot")
}

/// How many kfunc calls the program with id `id` makes, as the verifier
/// left it (the guard's are conntrack's, present only when `nf_conntrack`
/// was loaded before it).
///
/// # Panics
/// When the program cannot be opened or read.
pub fn kfunc_calls(id: u32) -> usize {
    let fd = sys::prog_by_id(id).expect("open the program by id");
    sys::prog_kfunc_calls(std::os::fd::AsFd::as_fd(&fd)).expect("read the program's instructions")
}

/// Stands in for a guard stage loaded before `nf_conntrack`, whose program
/// has no conntrack calls: replaces the guard's program pin in the filter
/// pinned at `dir` by the filter's own program (which calls no kfunc), as
/// `SynGuard::protect` reads the pinned program's calls; the filter's stage
/// slot keeps the real guard. Returns the pinned program's id.
///
/// # Panics
/// When the pins cannot be read or replaced.
pub fn pin_guard_without_kfuncs(dir: impl AsRef<Path>) -> u32 {
    let dir = dir.as_ref();
    let filter = sys::obj_get(&dir.join(names::XDPG_FILTER)).expect("open the pinned filter program");
    let pin = dir.join(crate::filter::guard::PIN_SUBDIR).join(names::XDPG_GUARD);
    std::fs::remove_file(&pin).expect("remove the guard's program pin");
    sys::obj_pin(std::os::fd::AsFd::as_fd(&filter), &pin).expect("pin the stand-in");
    sys::prog_id(std::os::fd::AsFd::as_fd(&filter)).expect("read its id")
}

/// The id of the guard program pinned in the filter pinned at `dir`.
///
/// # Panics
/// When the pin cannot be read.
pub fn pinned_guard_program_id(dir: impl AsRef<Path>) -> u32 {
    let pin = dir.as_ref().join(crate::filter::guard::PIN_SUBDIR).join(names::XDPG_GUARD);
    let fd = sys::obj_get(&pin).expect("open the guard's program pin");
    sys::prog_id(std::os::fd::AsFd::as_fd(&fd)).expect("read its id")
}

/// Rewrites both IPv6 tables of `filter` the way layouts 5–7 wrote them:
/// the /48s' chains under the murmur hash (`xdpg_v6_anchor_hash`), the
/// views' `anchor_hash` 0. With [`stamp_layout`]`(dir, 7)` it rehearses a
/// pin of layout 7, whose tables this build's program must read until the
/// migration has rebuilt them. Edit nothing after it but through an
/// upgrade: this build's edits write the multiply hash.
///
/// # Panics
/// When the tables cannot be rebuilt (full).
pub fn rebuild_v6_as_layout_7(filter: &crate::Filter) {
    use crate::filter::editor::Editor;
    use crate::filter::hash::AnchorHash;

    super::filter_core(filter)
        .edit(|st, maps| Editor::with_v6_anchor(st, maps, AnchorHash::Murmur).rebuild_v6())
        .expect("rebuilding the IPv6 tables in the murmur hash");
}

/// How the live IPv6 view of `filter` hashes the /48s' chains
/// (`XDPG_V6_ANCHOR_*`: 0 murmur, as layouts 5–7 wrote it; 1 multiply).
pub fn v6_anchor_hash(filter: &crate::Filter) -> u8 {
    super::filter_core(filter).maps.current_v6_view().anchor_hash
}
