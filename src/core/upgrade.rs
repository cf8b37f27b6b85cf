//! Upgrades in place: this build takes over a program pinned by another
//! build (an older xdpguard), with its maps, and swaps its program on every
//! interface without a packet seeing no program.
//!
//! 1. Under the pin directory's lock (no edit runs meanwhile), the config
//!    header's magic and layout version are read. The same layout: every
//!    pinned map is reused. Another layout: the program's migration hook
//!    ([`ProgramKind::migration`]) says which maps are recreated and how
//!    they are copied; no hook: [`PinError::NoMigration`] before anything
//!    is touched.
//! 2. The new object is opened, every reused map handed the pinned map's fd
//!    (its type, key and value sizes and flags checked against this build's
//!    first: [`PinError::UpgradeRefused`] when they differ), and loaded:
//!    the verifier checks the new program against the very maps the old one
//!    uses. A refusal here leaves everything as it was.
//! 3. Migrations copy the old maps into the new ones while the old program
//!    still runs.
//! 4. Each pinned link is switched to the new program with
//!    `BPF_LINK_UPDATE`: the kernel swaps the program pointer the interface
//!    runs, so a packet runs the old program or the new one, never none
//!    (Linux 5.9 for XDP links, which xdpguard needs anyway). If one link
//!    refuses, the links already switched are switched back.
//! 5. Migrations copy again what the old program wrote after the first
//!    copy (new connections, counters); the header is stamped with this
//!    build's layout; the program's pin (and the recreated maps' pins) are
//!    replaced by a rename, so the directory always holds a full program.
//!
//! Rejected alternative: detach the old program and attach the new one (or
//! `bpf_xdp_attach` with `XDP_FLAGS_REPLACE` on a netlink attachment):
//! the first leaves a gap, and xdpguard attaches through BPF links, which
//! netlink cannot replace.

use std::fs;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::core::attach;
use crate::core::layout::header;
use crate::core::maps::{io_from_libbpf, ProgramMaps};
use crate::core::pin::PinDir;
use crate::core::pinned::{load_opened, same_size, CopyPass, Migration, Pinned, ProgramKind, REHEARSAL_LAYOUT};
use crate::core::sys;
use crate::error::{missing_privileges, AttachError, Error, LoadError, PinError};

/// What an upgrade did (returned by `upgrade_pinned`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeReport {
    /// The layout version of the pins taken over.
    pub from_layout: u32,
    /// This build's layout version, now stamped on them.
    pub to_layout: u32,
    /// The kernel id of the program that ran before.
    pub old_program_id: u32,
    /// The kernel id of the program that runs now.
    pub new_program_id: u32,
    /// The interfaces whose link now runs the new program.
    pub interfaces: Vec<String>,
    /// The maps recreated and copied by a migration (none for the same
    /// layout: every map was reused as it was).
    pub migrated_maps: Vec<&'static str>,
    /// The maps the new layout added, created (as the new program's load
    /// creates them) and pinned beside the others.
    pub created_maps: Vec<&'static str>,
    /// A filter's guard stage (rules, SYN guard), upgraded after the
    /// filter: its program replaced in the filter's stage slot, over its
    /// own maps (`interfaces` is empty: it runs where the filter calls it).
    /// `None` for a filter loaded without one, and for other programs.
    pub guard: Option<Box<UpgradeReport>>,
    /// A load balancer's: the filter programs (kernel ids) that passed
    /// their packets on to the old program, now passing them to the new
    /// one (each filter's next-program slot written once, atomically).
    pub rechained: Vec<u32>,
    /// A load balancer's: the filter programs whose next-program slot
    /// refused the new program, each with the kernel's reason; they still
    /// pass packets to the old one (`xdpguard next LB_PIN --pin FILTER`
    /// chains the new one once the cause is fixed). The upgrade itself is
    /// done.
    pub not_rechained: Vec<(u32, String)>,
}

/// What an upgrade of a program that is not attached by links of its own
/// needs besides its pins.
#[derive(Default)]
pub(crate) struct Takeover<'a> {
    /// Maps another program owns, by name: the new object uses these fds
    /// (as [`Pinned::load_sharing`] does).
    pub shared: &'a [(&'static str, std::os::fd::BorrowedFd<'a>)],
    /// Puts the new program where the old one (its id given) runs, after
    /// the links (if any) are switched, under the pin directory's lock.
    #[allow(clippy::type_complexity)]
    pub install: Option<&'a dyn Fn(u32, std::os::fd::BorrowedFd<'_>) -> Result<(), Error>>,
}

/// A pin name no program or map has, for a pin about to replace another.
const REPLACING: &str = "xdpg_upgrade_replacing";

impl<P: ProgramKind> Pinned<P> {
    /// Takes over the program pinned under `path` with the program of
    /// `builder` (this build's skeleton), as the module says.
    ///
    /// # Errors
    ///
    /// Before anything is touched: [`PinError`]s of [`Pinned::open_pinned`],
    /// [`PinError::NoMigration`], [`PinError::UpgradeRefused`],
    /// [`LoadError`]s (the new program refused). After: [`AttachError::Bpf`]
    /// when a link refuses the new program (the others are switched back),
    /// [`PinError::Io`] when a pin cannot be replaced (the new program runs;
    /// run the upgrade again).
    pub(crate) fn upgrade<B>(path: &Path, builder: B) -> Result<(Self, UpgradeReport), Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        Self::upgrade_with(path, builder, &Takeover::default())
    }

    /// [`upgrade`](Self::upgrade) of a program that shares maps of another
    /// one, and runs where that one's program array puts it, as
    /// `takeover` says.
    ///
    /// # Errors
    ///
    /// As [`upgrade`](Self::upgrade); after the swap, `takeover.install`'s
    /// (the links switched are switched back).
    pub(crate) fn upgrade_with<B>(
        path: &Path,
        builder: B,
        takeover: &Takeover<'_>,
    ) -> Result<(Self, UpgradeReport), Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        Self::prepare(path, builder, takeover)?.commit(path, takeover)
    }

    /// Steps 1 and 2 of an upgrade, and nothing else: the new program
    /// loaded over the pinned maps (every check and the verifier passed),
    /// neither swapped in nor pinned; dropped, it changes nothing. An
    /// upgrade that must not fail half-way (a filter's, then its guard
    /// stage's) rehearses the second part with this before the first.
    ///
    /// # Errors
    ///
    /// As [`upgrade`](Self::upgrade), before anything is touched.
    pub(crate) fn rehearse_upgrade<B>(path: &Path, builder: B, takeover: &Takeover<'_>) -> Result<(), Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        Self::prepare(path, builder, takeover).map(drop)
    }

    /// Steps 1 and 2: under the lock, the new program loaded over the
    /// pinned maps.
    fn prepare<B>(path: &Path, builder: B, takeover: &Takeover<'_>) -> Result<Prepared<P>, Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        let kind = P::KIND;
        let dir = PinDir::open(path, kind)?;
        if let Some(missing) = missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let mut lock = dir.lock()?;
        let mut found = read_header(&dir)?;
        if found.layout == kind.layout_version && found.dirty {
            // An edit died half-way: the reopen repairs it first.
            drop(lock);
            drop(Self::open_pinned(path)?);
            lock = dir.lock()?;
            found = read_header(&dir)?;
        }
        let migration = Self::migration_from(path, found.layout)?;
        let changed: &[&'static str] = migration.as_ref().map_or(&[], |m| m.changed);
        let added: &[&'static str] = migration.as_ref().map_or(&[], |m| m.added);
        let refused = |reason: String| PinError::UpgradeRefused { path: path.to_owned(), kind: kind.name, reason };

        let prog_path = dir.join(kind.program);
        let old_prog = sys::obj_get(&prog_path).map_err(|source| PinError::Io {
            op: "opening pinned program",
            path: prog_path.clone(),
            error: source,
        })?;
        let old_id = sys::prog_info(old_prog.as_fd())
            .map_err(|source| LoadError::Bpf { op: "reading the pinned program's id".into(), error: source })?
            .id;

        // The new object, over the pinned maps.
        let mut storage = MaybeUninit::uninit();
        let mut open = builder.open(&mut storage).map_err(|e| LoadError::Bpf {
            op: format!("opening the {} object", kind.name),
            error: io_from_libbpf(e),
        })?;
        let mut seen = Vec::new();
        for mut map in open.open_object_mut().maps_mut() {
            let name = map.name().to_string_lossy().into_owned();
            if let Some(&(shared, fd)) = takeover.shared.iter().find(|(n, _)| **n == name) {
                map.reuse_fd(fd).map_err(|e| LoadError::Bpf {
                    op: format!("sharing map {shared} with the {}", kind.name),
                    error: io_from_libbpf(e),
                })?;
                continue;
            }
            // Maps that are not pinned (per-CPU scratch space, caches) are the new program's own.
            let Some(&name) = kind.maps.iter().find(|n| **n == name) else { continue };
            seen.push(name);
            if added.contains(&name) {
                // New in this layout: created by the load, pinned after the swap.
                continue;
            }
            let pin = dir.join(name);
            let old = MapHandle::from_pinned_path(&pin).map_err(|e| match e.kind() {
                libbpf_rs::ErrorKind::NotFound => refused(format!("its map {name} is not pinned")),
                _ => PinError::Io { op: "opening pinned map", path: pin.clone(), error: io_from_libbpf(e) },
            })?;
            if changed.contains(&name) {
                // Recreated with the capacity it had (in the new map's terms).
                let pinned = old.max_entries();
                map.set_max_entries(migration.as_ref().map_or(pinned, |m| (m.size)(name, pinned)))
                    .map_err(|e| LoadError::Bpf { op: format!("sizing map {name}"), error: io_from_libbpf(e) })?;
                continue;
            }
            let flags = old
                .info()
                .map_err(|e| PinError::Io { op: "reading pinned map", path: pin.clone(), error: io_from_libbpf(e) })?
                .info
                .map_flags;
            // libbpf adds BPF_F_RDONLY_PROG to devmaps when it creates them.
            let set_by_loader = libbpf_sys::BPF_F_RDONLY_PROG | libbpf_sys::BPF_F_WRONLY_PROG;
            let pinned = (old.map_type(), old.key_size(), old.value_size(), flags & !set_by_loader);
            let ours = (map.map_type(), map.key_size(), map.value_size(), map.map_flags() & !set_by_loader);
            if pinned != ours {
                return Err(refused(format!(
                    "its map {name} is pinned as {} and this build defines it as {}, under the same layout {} \
                     (a layout change without a version bump or migration: a build error, please report it)",
                    describe(pinned),
                    describe(ours),
                    found.layout
                ))
                .into());
            }
            map.reuse_fd(old.as_fd())
                .map_err(|e| LoadError::Bpf { op: format!("reusing pinned map {name}"), error: io_from_libbpf(e) })?;
        }
        if let Some(missing) = kind.maps.iter().find(|n| !seen.contains(n)) {
            return Err(refused(format!("this build's object has no map {missing} (a build error)")).into());
        }
        let (maps, new_prog) = load_opened::<P, _>(kind, open, false)?;
        let new_id = sys::prog_info(new_prog.as_fd())
            .map_err(|source| LoadError::Bpf { op: "reading the new program's id".into(), error: source })?
            .id;
        Ok(Prepared { dir, lock, layout: found.layout, migration, old_prog, old_id, maps, new_prog, new_id })
    }
}

/// An upgrade loaded and checked, not yet swapped in (see
/// [`Pinned::rehearse_upgrade`]): the pin directory's lock held.
struct Prepared<P: ProgramKind> {
    dir: PinDir,
    lock: nix::fcntl::Flock<fs::File>,
    /// The layout version of the pins taken over.
    layout: u32,
    migration: Option<Migration<P::Maps>>,
    old_prog: OwnedFd,
    old_id: u32,
    maps: P::Maps,
    new_prog: OwnedFd,
    new_id: u32,
}

impl<P: ProgramKind> Prepared<P> {
    /// Steps 3 to 5: the copies, the swap, the pins.
    fn commit(self, path: &Path, takeover: &Takeover<'_>) -> Result<(Pinned<P>, UpgradeReport), Error> {
        let kind = P::KIND;
        let Prepared { dir, lock, layout, migration, old_prog, old_id, maps, new_prog, new_id } = self;
        let changed: &[&'static str] = migration.as_ref().map_or(&[], |m| m.changed);
        let added: &[&'static str] = migration.as_ref().map_or(&[], |m| m.added);
        if let Some(m) = &migration {
            (m.copy)(&dir, &maps, CopyPass::BeforeSwap)?;
        }

        // The swap, link by link.
        let mut swapped: Vec<(OwnedFd, String)> = Vec::new();
        for (pin_name, _, link) in dir.open_links()? {
            let Ok(Some(_)) = attach::link_attachment(&link) else {
                continue; // Its interface is gone: kept as a lost attachment.
            };
            let interface = PinDir::link_recorded(&pin_name).map_or(pin_name.clone(), |a| a.interface);
            if let Err(source) = sys::link_update(link.as_fd(), new_prog.as_fd()) {
                for (done, _) in &swapped {
                    let _ = sys::link_update(done.as_fd(), old_prog.as_fd());
                }
                return Err(AttachError::Bpf { interface, error: source }.into());
            }
            swapped.push((link, interface));
        }
        if let Some(install) = takeover.install {
            if let Err(err) = install(old_id, new_prog.as_fd()) {
                for (done, _) in &swapped {
                    let _ = sys::link_update(done.as_fd(), old_prog.as_fd());
                }
                return Err(err);
            }
        }

        if let Some(m) = &migration {
            // A packet the old program started before the swap still runs
            // it: what the pass rewrites for the new program, the old one
            // must no longer read.
            super::grace::wait();
            (m.copy)(&dir, &maps, CopyPass::AfterSwap)?;
        }
        let hdr = maps.header();
        hdr.magic.store(kind.magic, Ordering::Release);
        hdr.layout_version.store(kind.layout_version, Ordering::Release);
        // Handles open elsewhere reload their model (also if a pin below
        // cannot be replaced: the links run the new program already), and,
        // at the second step, once its program is pinned, take the new
        // program (`Pinned::running` reads the pin when the generation moved).
        hdr.generation.fetch_add(1, Ordering::AcqRel);
        for (name, handle) in maps.handles() {
            if changed.contains(&name) || added.contains(&name) {
                replace_pin(&dir, name, handle.as_fd())?;
            }
        }
        replace_pin(&dir, kind.program, new_prog.as_fd())?;
        hdr.generation.fetch_add(1, Ordering::AcqRel);
        drop(lock);

        let core = Pinned::open_pinned(path)?;
        let report = UpgradeReport {
            from_layout: layout,
            to_layout: kind.layout_version,
            old_program_id: old_id,
            new_program_id: new_id,
            interfaces: swapped.into_iter().map(|(_, i)| i).collect(),
            migrated_maps: changed.to_vec(),
            created_maps: added.to_vec(),
            guard: None,
            rechained: Vec::new(),
            not_rechained: Vec::new(),
        };
        Ok((core, report))
    }
}

impl<P: ProgramKind> Pinned<P> {
    /// How this build takes over pins of `layout`: `None` for its own.
    fn migration_from(path: &Path, layout: u32) -> Result<Option<Migration<P::Maps>>, PinError> {
        let kind = P::KIND;
        Ok(match layout {
            v if v == kind.layout_version => None,
            v if v == REHEARSAL_LAYOUT && cfg!(feature = "testing") => {
                Some(Migration { changed: P::REHEARSAL, added: &[], size: same_size, copy: rehearse::<P> })
            }
            v => Some(P::migration(v).ok_or_else(|| PinError::NoMigration {
                path: path.to_owned(),
                kind: kind.name,
                found: v,
                expected: kind.layout_version,
            })?),
        })
    }
}

/// What the pinned config header says.
struct Found {
    layout: u32,
    dirty: bool,
}

/// Reads the pinned config header (the magic must be the kind's).
fn read_header(dir: &PinDir) -> Result<Found, PinError> {
    let kind = dir.kind();
    let path = dir.join(kind.marker());
    let io = |source| PinError::Io { op: "reading the pinned config", path: path.clone(), error: source };
    let map = MapHandle::from_pinned_path(&path).map_err(|e| io(io_from_libbpf(e)))?;
    let value = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).map_err(|e| io(io_from_libbpf(e)))?;
    let word = |i: usize| value.as_deref().and_then(|v| v.get(i..i + 4)).map(bytemuck::pod_read_unaligned::<u32>);
    if word(header::MAGIC) != Some(kind.magic) {
        return Err(PinError::NotOurs {
            path: dir.path().to_owned(),
            kind: kind.name,
            found: kind.marker().into(),
            hint: "choose another directory".into(),
        });
    }
    Ok(Found { layout: word(header::LAYOUT_VERSION).unwrap_or(0), dirty: word(header::DIRTY).is_some_and(|d| d != 0) })
}

fn describe((ty, key, value, flags): (MapType, u32, u32, u32)) -> String {
    format!("{ty:?} with {key}-byte keys, {value}-byte values and flags {flags:#x}")
}

/// Replaces the pin `name` by `fd`: pinned under a spare name, then renamed
/// over it (bpffs renames atomically), so the name never goes missing.
fn replace_pin(dir: &PinDir, name: &str, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), PinError> {
    dir.unpin(REPLACING)?;
    dir.pin(REPLACING, fd)?;
    let (from, to) = (dir.join(REPLACING), dir.join(name));
    fs::rename(&from, &to).map_err(|source| PinError::Io { op: "replacing pin", path: to, error: source })
}

/// The rehearsal migration: the kind's [`ProgramKind::REHEARSAL`] maps
/// copied as they are.
fn rehearse<P: ProgramKind>(old: &PinDir, new: &P::Maps, pass: CopyPass) -> Result<(), Error> {
    for (name, handle) in new.handles() {
        if P::REHEARSAL.contains(&name) {
            copy_map(old, name, handle, pass)?;
        }
    }
    Ok(())
}

/// Copies the pinned map `name` into `new`, the way a migration whose
/// values did not change copies (or the base of one that converts them):
/// hash maps by key (before the swap every entry, after it the entries the
/// old program added meanwhile, without overwriting what the new one
/// wrote), arrays by index before the swap, per-CPU counters after it,
/// added to what the new program counted since (a packet counted between
/// the new program's read and write of a slot here can be lost).
///
/// # Errors
///
/// [`PinError::Io`] when a map cannot be read or written;
/// [`PinError::UpgradeRefused`] for a map type it cannot copy.
pub(crate) fn copy_map(old: &PinDir, name: &'static str, new: &MapHandle, pass: CopyPass) -> Result<(), Error> {
    let path = old.join(name);
    let io = |op: &'static str| {
        let path = path.clone();
        move |e: libbpf_rs::Error| PinError::Io { op, path, error: io_from_libbpf(e) }
    };
    let src = MapHandle::from_pinned_path(&path).map_err(io("opening pinned map"))?;
    match (src.map_type(), pass) {
        (MapType::Hash | MapType::LruHash, _) => {
            let flags = if pass == CopyPass::BeforeSwap { MapFlags::ANY } else { MapFlags::NO_EXIST };
            for key in src.keys() {
                // An LRU entry may go between the key and its lookup.
                let Some(value) = src.lookup(&key, MapFlags::ANY).map_err(io("reading map"))? else { continue };
                match new.update(&key, &value, flags) {
                    Err(e) if e.kind() == libbpf_rs::ErrorKind::AlreadyExists => {}
                    other => other.map_err(io("copying into the new map"))?,
                }
            }
        }
        (MapType::Array, CopyPass::BeforeSwap) => {
            for i in 0..src.max_entries() {
                let key = i.to_ne_bytes();
                if let Some(value) = src.lookup(&key, MapFlags::ANY).map_err(io("reading map"))? {
                    new.update(&key, &value, MapFlags::ANY).map_err(io("copying into the new map"))?;
                }
            }
        }
        (MapType::PercpuArray, CopyPass::AfterSwap) if src.value_size() % 8 == 0 => {
            for i in 0..src.max_entries() {
                let key = i.to_ne_bytes();
                let (Some(olds), Some(news)) = (
                    src.lookup_percpu(&key, MapFlags::ANY).map_err(io("reading map"))?,
                    new.lookup_percpu(&key, MapFlags::ANY).map_err(io("reading the new map"))?,
                ) else {
                    continue;
                };
                let sums: Vec<Vec<u8>> = olds.iter().zip(&news).map(|(o, n)| add_u64s(o, n)).collect();
                new.update_percpu(&key, &sums, MapFlags::ANY).map_err(io("copying into the new map"))?;
            }
        }
        (MapType::Array | MapType::PercpuArray, _) => {}
        (ty, _) => {
            return Err(PinError::UpgradeRefused {
                path: old.path().to_owned(),
                kind: old.kind().name,
                reason: format!("its map {name} is a {ty:?}, which a migration cannot copy"),
            }
            .into())
        }
    }
    Ok(())
}

/// Two per-CPU counter values (structs of u64s) added field by field.
fn add_u64s(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.chunks_exact(8)
        .zip(b.chunks_exact(8))
        .flat_map(|(x, y)| {
            let sum = bytemuck::pod_read_unaligned::<u64>(x).wrapping_add(bytemuck::pod_read_unaligned::<u64>(y));
            sum.to_ne_bytes()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_field_by_field() {
        let a: Vec<u8> = [1u64, 2].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let b: Vec<u8> = [10u64, u64::MAX].iter().flat_map(|v| v.to_ne_bytes()).collect();
        let sum = add_u64s(&a, &b);
        assert_eq!(bytemuck::pod_read_unaligned::<u64>(&sum[..8]), 11);
        assert_eq!(bytemuck::pod_read_unaligned::<u64>(&sum[8..]), 1);
    }
}
