//! The pinned-program core, written once for every program: [`Pinned<P>`]
//! holds a program's [`XdpProgram`], its typed maps and its user-space
//! model, and does what every program needs the same way:
//!
//! - [`Pinned::load`]: privilege check, the skeleton opened, maps sized
//!   (and bound to a device for offload), the object loaded with its errors
//!   mapped to [`LoadError`]s that say what to do, the maps and program fd
//!   kept, the config header stamped with the program's magic and layout
//!   version.
//! - [`Pinned::create`]: load, attach and pin, leaving nothing attached or
//!   pinned when any step fails.
//! - [`Pinned::open_pinned`]: the pin directory recognised by its config
//!   map, privileges checked, the directory locked, magic and layout
//!   version checked before anything else is read, maps and program and
//!   links reopened, and an edit that died half-way repaired (its `dirty`
//!   flag is still set).
//! - [`Pinned::read`] and [`Pinned::edit`]: under the pin directory's lock,
//!   the model reloaded when another handle or process has edited (the
//!   header's generation moved); an edit marks the header dirty, repairs
//!   after a failure that may have left maps and model apart, and bumps the
//!   generation before clearing the flag (so a process that dies at any
//!   point leaves either a finished edit or a dirty one).
//!
//! A program plugs in by implementing [`ProgramKind`]: its [`Kind`] (names,
//! magic, CLI), its maps (declared with
//! [`program_maps!`](crate::core::maps::program_maps), the config map
//! first, starting with `struct xdpg_header`), its model, and how to load
//! the model from the maps and repair the data plane from it.

use std::borrow::BorrowMut;
use std::fmt;
use std::fs::File;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use nix::fcntl::Flock;

use crate::core::attach::Interface;
use crate::core::maps::{io_from_libbpf, Loaded, ProgramMaps};
use crate::core::pin::PinDir;
use crate::core::program::XdpProgram;
use crate::error::{missing_privileges, AttachError, Error, LoadError, PinError};
use crate::AttachMode;

/// What one kind of program is: its names, its layout identity, and what
/// messages say about it.
#[derive(Debug)]
pub(crate) struct Kind {
    /// What messages call it, e.g. `"load balancer"`.
    pub name: &'static str,
    /// The XDP program's name, also its pin name.
    pub program: &'static str,
    /// Every map's name, the config map's first: it marks a pin directory.
    pub maps: &'static [&'static str],
    /// The config header's magic.
    pub magic: u32,
    /// The config header's layout version: pins of another are refused.
    pub layout_version: u32,
    /// The command that manages a pinned one, e.g. `"xdpguard-lb decap"`.
    pub cli: &'static str,
    /// What the kernel must support, for load errors.
    pub needs: &'static str,
    /// The oldest kernel it runs on, e.g. `"5.15 or later with BTF"`.
    pub min_kernel: &'static str,
    /// The kind whose pin directory holds this one's, as a subdirectory
    /// (the guard stage's, in its filter's): a removed directory is
    /// reported as that one's, which is what a user re-creates.
    pub within: Option<&'static Kind>,
}

impl Kind {
    /// The config map's name, whose pin marks a directory as this kind's.
    pub(crate) fn marker(&self) -> &'static str {
        self.maps[0]
    }
}

/// A program the core drives. Adding a program costs an implementation of
/// this, its maps and its model.
pub(crate) trait ProgramKind: Sized + 'static {
    const KIND: &'static Kind;
    /// Its maps; `Maps::NAMES` is `KIND.maps`.
    type Maps: ProgramMaps + Send + Sync;
    /// What user space knows of its configuration, rebuilt from the maps
    /// whenever another handle has edited.
    type Model: Send;
    /// The error of its reads and edits.
    type Error: From<PinError> + Into<Error>;

    /// Reads the model back from the maps (the source of truth).
    fn load_model(maps: &Self::Maps) -> Result<Self::Model, Self::Error>;

    /// Makes the data plane agree with the model again after an edit that
    /// did not finish (its process died, or [`ProgramKind::repair_after`]).
    fn repair(_maps: &Self::Maps, _model: &mut Self::Model) -> Result<(), Self::Error> {
        Ok(())
    }

    /// Whether a failed edit may have left maps and model apart: the model
    /// is then reloaded from the maps and [`ProgramKind::repair`] runs.
    fn repair_after(_err: &Self::Error) -> bool {
        false
    }

    /// The upgrade hook: how this build takes over maps pinned by a build
    /// of the older layout `from` ([`Kind::layout_version`] differs). `None`
    /// (the default, and every layout no migration is written for): the
    /// upgrade is refused with [`PinError::NoMigration`] before anything is
    /// touched. A layout bump adds its migration here, so the versions this
    /// build takes over are listed in one place per program.
    fn migration(_from: u32) -> Option<Migration<Self::Maps>> {
        None
    }

    /// The maps an upgrade rehearsal recreates and copies (see
    /// [`REHEARSAL_LAYOUT`]): the ones whose migration is hardest to get
    /// right, those the data plane writes itself among them.
    const REHEARSAL: &'static [&'static str] = &[];
}

/// How a build takes over the maps of an older layout: the maps whose
/// layout changed are created anew (sized by `size` from the pinned ones'
/// capacities) and filled by `copy`; every other map is reused as pinned,
/// and must be unchanged (checked before anything is touched).
pub(crate) struct Migration<M> {
    /// The maps recreated, by name.
    pub changed: &'static [&'static str],
    /// The maps this layout added, by name: created, as a new program's
    /// load creates them, and pinned (a new map starts as the program's
    /// load leaves it: a copy may fill it).
    pub added: &'static [&'static str],
    /// A recreated map's `max_entries` from its pinned one's
    /// ([`same_size`] where the entry count means the same).
    pub size: fn(name: &'static str, pinned_max_entries: u32) -> u32,
    /// Copies what the old maps hold into the new ones: once before the
    /// programs are swapped (the old one still runs: lists, VIPs, backends,
    /// connections), and once after ([`CopyPass::AfterSwap`]: what the old
    /// program wrote meanwhile, counters). The pin directory is locked
    /// throughout, so no edit runs in between.
    pub copy: fn(old: &PinDir, new: &M, pass: CopyPass) -> Result<(), Error>,
}

/// A recreated map as large as the pinned one.
pub(crate) fn same_size(_name: &'static str, pinned_max_entries: u32) -> u32 {
    pinned_max_entries
}

/// When a [`Migration`]'s copy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyPass {
    /// Before the swap, while the old program still runs.
    BeforeSwap,
    /// After it: the old program no longer runs, its maps are frozen.
    AfterSwap,
}

/// A layout version no build writes. With the `testing` feature, every
/// program takes over pins stamped with it through a migration that
/// recreates its [`ProgramKind::REHEARSAL`] maps and copies them as they
/// are (`xdpguard::testing::upgrade`), so tests rehearse a migrating
/// upgrade under live traffic: new maps, both copy passes, the swap, the
/// pins replaced.
pub(crate) const REHEARSAL_LAYOUT: u32 = 0x5245_0000; // "RE"

/// Where a new program goes: what every builder collects besides its own
/// settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct Placement {
    pub interfaces: Vec<Interface>,
    pub mode: AttachMode,
    pub pin: Option<PathBuf>,
}

impl Placement {
    /// The interfaces to attach to: every one given to attach (there must
    /// be one), none to load only.
    pub(crate) fn targets(&self, attach: bool) -> Result<&[Interface], AttachError> {
        match (attach, self.interfaces.is_empty()) {
            (false, _) => Ok(&[]),
            (true, true) => Err(AttachError::NoInterface),
            (true, false) => Ok(&self.interfaces),
        }
    }

    /// The interfaces as messages name them: `eth0,eth1`.
    pub(crate) fn names(&self) -> String {
        self.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// The builder methods every program's builder has, over its `place:
/// Placement` field: `interface`, `mode`, `pin`. `$program` names the
/// program in the docs, `$reopen` the function that reopens a pinned one;
/// `$note` adds to `interface`'s doc.
macro_rules! placement_methods {
    ($program:literal, $reopen:literal $(, $note:literal)?) => {
        /// Adds an interface to attach to, by name (`"eth0"`) or index
        /// (`3u32`); one given twice is attached once.
        $(#[doc = $note])?
        pub fn interface(mut self, iface: impl Into<$crate::Interface>) -> Self {
            let iface = iface.into();
            if !self.place.interfaces.contains(&iface) {
                self.place.interfaces.push(iface);
            }
            self
        }

        /// The attach mode for every interface (default:
        /// [`AttachMode::Auto`](crate::AttachMode::Auto)).
        pub fn mode(mut self, mode: $crate::AttachMode) -> Self {
            self.place.mode = mode;
            self
        }

        #[doc = concat!(
            "Pins the program, its maps and its links under `dir` (on bpffs, e.g. `/sys/fs/bpf/xdpguard`; ",
            "the directory must not exist or be empty), so the ", $program, " outlives this process. [`",
            $reopen, "`] reopens it."
        )]
        pub fn pin(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
            self.place.pin = Some(dir.into());
            self
        }
    };
}
pub(crate) use placement_methods;

/// Implements what a public type over [`Pinned`] needs from it: `Debug`
/// (attachments and pin directory), and `Borrow`/`BorrowMut` for
/// [`Pinned::create`]. The type holds its core in a field `core`.
macro_rules! facade {
    ($ty:ident, $kind:ty) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.core.debug(stringify!($ty), f)
            }
        }

        impl std::borrow::Borrow<$crate::core::pinned::Pinned<$kind>> for $ty {
            fn borrow(&self) -> &$crate::core::pinned::Pinned<$kind> {
                &self.core
            }
        }

        impl std::borrow::BorrowMut<$crate::core::pinned::Pinned<$kind>> for $ty {
            fn borrow_mut(&mut self) -> &mut $crate::core::pinned::Pinned<$kind> {
                &mut self.core
            }
        }
    };
    // A public type (not the filter's guard stage): also what it offers on
    // its pin directory alone.
    ($ty:ident, $kind:ty, public) => {
        $crate::core::pinned::facade!($ty, $kind);

        impl $ty {
            /// Removes what a creation that died half-way left under `dir`
            /// (its process killed before every pin was in place, where
            /// `open_pinned` answers
            /// [`PinError::Interrupted`](crate::PinError::Interrupted)), and the
            /// directory when that empties it: nothing it pinned stays
            /// attached. A creation still running is waited for.
            ///
            /// # Errors
            ///
            /// [`PinError::InUse`](crate::PinError::InUse) when a whole program
            /// is pinned there (`open_pinned(dir)?.unpin()` removes it);
            /// [`PinError::NotOurs`](crate::PinError::NotOurs),
            /// [`PinError::BpffsNotMounted`](crate::PinError::BpffsNotMounted),
            /// [`PinError::Io`](crate::PinError::Io).
            pub fn remove_interrupted(dir: impl AsRef<std::path::Path>) -> Result<(), $crate::Error> {
                $crate::core::pinned::Pinned::<$kind>::clear_interrupted(dir.as_ref())
            }
        }
    };
}
pub(crate) use facade;

/// How to load a program's object.
#[derive(Debug, Default)]
pub(crate) struct LoadPlan<'a> {
    /// `max_entries` of the maps sized at load time.
    pub sizes: &'a [(&'static str, u32)],
    /// Offload: load the program and its maps for this device.
    pub offload_ifindex: Option<u32>,
}

/// The model and the generation of the maps it reflects (`None`: reload).
struct Synced<M> {
    generation: Option<u64>,
    model: M,
}

/// A loaded program: its XDP program, its maps and its model.
pub(crate) struct Pinned<P: ProgramKind> {
    pub(crate) maps: P::Maps,
    pub(crate) program: XdpProgram,
    state: Mutex<Synced<P::Model>>,
    /// The header's generation + 1 when [`running`](Self::running) last
    /// looked at the pinned program (0: never).
    followed: AtomicU64,
}

impl<P: ProgramKind> Pinned<P> {
    /// Loads the program from its skeleton, sized by `plan`. `init` writes
    /// the config before the core stamps its header.
    ///
    /// # Errors
    ///
    /// [`LoadError::MissingPrivileges`], [`LoadError::KernelFeature`] (also
    /// for offload a device cannot do), [`LoadError::Rejected`],
    /// [`LoadError::Bpf`].
    pub(crate) fn load<B>(builder: B, plan: &LoadPlan<'_>, init: impl FnOnce(&P::Maps)) -> Result<Self, Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        Self::load_sharing(builder, plan, &[], init)
    }

    /// [`load`](Self::load), with maps another loaded program owns: the
    /// object's maps named in `shared` use those fds (libbpf reuses them)
    /// rather than new maps, so both programs read and write the same ones.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load); [`LoadError::Bpf`] when a shared map cannot
    /// be reused (its type or sizes differ from the object's definition).
    pub(crate) fn load_sharing<B>(
        builder: B,
        plan: &LoadPlan<'_>,
        shared: &[(&'static str, BorrowedFd<'_>)],
        init: impl FnOnce(&P::Maps),
    ) -> Result<Self, Error>
    where
        B: for<'obj> SkelBuilder<'obj>,
    {
        let kind = P::KIND;
        if let Some(missing) = missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let mut storage = MaybeUninit::uninit();
        let mut open = builder.open(&mut storage).map_err(|e| LoadError::Bpf {
            op: format!("opening the {} object", kind.name),
            error: io_from_libbpf(e),
        })?;
        let object = open.open_object_mut();
        for mut map in object.maps_mut() {
            if let Some(&(_, entries)) = plan.sizes.iter().find(|(name, _)| map.name() == *name) {
                map.set_max_entries(entries)
                    .map_err(|e| LoadError::Bpf { op: "sizing maps".into(), error: io_from_libbpf(e) })?;
            }
            if let Some(ifindex) = plan.offload_ifindex {
                map.set_map_ifindex(ifindex);
            }
            if let Some(&(name, fd)) = shared.iter().find(|(name, _)| map.name() == *name) {
                map.reuse_fd(fd).map_err(|e| LoadError::Bpf {
                    op: format!("sharing map {name} with the {}", kind.name),
                    error: io_from_libbpf(e),
                })?;
            }
        }
        if let Some(ifindex) = plan.offload_ifindex {
            for mut prog in object.progs_mut() {
                prog.set_ifindex(ifindex);
            }
        }
        let (maps, fd) = load_opened::<P, _>(kind, open, plan.offload_ifindex.is_some())?;
        init(&maps);
        let header = maps.header();
        header.magic.store(kind.magic, Ordering::Release);
        header.layout_version.store(kind.layout_version, Ordering::Release);
        let generation = header.generation.load(Ordering::Acquire);
        let model = P::load_model(&maps).map_err(Into::into)?;
        Ok(Pinned::new(maps, XdpProgram::new(fd, kind.program), generation, model))
    }

    fn new(maps: P::Maps, program: XdpProgram, generation: u64, model: P::Model) -> Self {
        let state = Mutex::new(Synced { generation: Some(generation), model });
        Pinned { maps, program, state, followed: AtomicU64::new(generation + 1) }
    }

    /// Builds a program with `make` (which loads it and sets it up),
    /// attaches it to `targets` (from [`Placement::targets`]) and pins it
    /// as `place` says. If any step fails, nothing is left attached or
    /// pinned.
    ///
    /// # Errors
    ///
    /// [`PinError`]s for the pin directory (checked first), `make`'s, and
    /// [`AttachError`]s.
    pub(crate) fn create<T: BorrowMut<Self>>(
        place: &Placement,
        targets: &[Interface],
        make: impl FnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        Self::create_within(place, targets, make, |obj, _| Ok(obj))
    }

    /// [`create`](Self::create), with `within` pinning what belongs in a
    /// subdirectory of the pin directory (the guard stage, in its
    /// filter's) after this program's pins and before the creation is
    /// marked finished: a process that dies before `within` has done leaves
    /// the whole directory interrupted ([`PinError::Interrupted`], cleared
    /// whole by the next creation or `remove_interrupted`), never a program
    /// that opens without what it was created with. Not called when
    /// nothing is pinned.
    pub(crate) fn create_within<T: BorrowMut<Self>>(
        place: &Placement,
        targets: &[Interface],
        make: impl FnOnce() -> Result<T, Error>,
        within: impl FnOnce(T, &Path) -> Result<T, Error>,
    ) -> Result<T, Error> {
        // The directory stays locked, and marked as being created, until
        // every pin is in place: a process that dies half-way leaves the
        // mark, so the next creation removes what it pinned (its pinned
        // links would otherwise keep a half-made program attached) and
        // reopening says what happened.
        let creation = place.pin.as_deref().map(|p| PinDir::create(p, P::KIND)).transpose()?;
        let dir = creation.as_ref().map(|(dir, _lock)| dir);
        let built = make().and_then(|obj| {
            for iface in targets {
                obj.borrow().program.attach(iface, place.mode)?;
            }
            Ok(obj)
        });
        let pinned = built.and_then(|mut obj| {
            if let Some(dir) = dir {
                let core = obj.borrow_mut();
                for (name, handle) in core.maps.handles() {
                    dir.pin(name, handle.as_fd())?;
                }
                core.program.pin_to(dir.clone())?;
                obj = within(obj, dir.path())?;
                dir.created()?;
            }
            Ok(obj)
        });
        if pinned.is_err() {
            if let Some(dir) = dir {
                let _ = dir.undo_create();
            }
        }
        drop(creation);
        pinned
    }

    /// Reopens a program pinned under `path`, repairing an edit that died.
    ///
    /// # Errors
    ///
    /// [`PinError::NotFound`], [`PinError::NotOurs`],
    /// [`PinError::Incompatible`] (pinned by a build with another layout),
    /// [`PinError::Interrupted`] (its creator died before finishing),
    /// [`PinError::BpffsNotMounted`], [`PinError::Incomplete`] (pins removed
    /// by hand), [`PinError::AccessDenied`] (a pin of another user), [`PinError::Io`];
    /// [`LoadError::MissingPrivileges`]; the program's own errors when its
    /// model cannot be read back or repaired.
    pub(crate) fn open_pinned(path: &Path) -> Result<Self, Error> {
        let kind = P::KIND;
        let dir = PinDir::open(path, kind)?;
        if let Some(missing) = missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let _lock = dir.lock()?;
        check_header(&dir)?;
        let maps = P::Maps::open(&dir).map_err(|e| dir.open_error("opening pinned map", e.name, e.source))?;
        let program = XdpProgram::open_pinned(dir.clone(), kind.program)?;
        let header = maps.header();
        let mut generation = header.generation.load(Ordering::Acquire);
        let mut model = P::load_model(&maps).map_err(Into::into)?;
        if header.dirty.load(Ordering::Acquire) != 0 {
            // A process died mid-edit.
            generation = Self::repair_dead_edit(&maps, &mut model).map_err(Into::into)?;
        }
        Ok(Pinned::new(maps, program, generation, model))
    }

    /// Repairs what an edit that died left in the maps (the pin
    /// directory's lock held), clears its mark and returns the generation
    /// the repair moved to. The edit may have died just after a table
    /// switch, before its wait for the packets still on the old table: the
    /// repair rewrites that table only once they are done.
    fn repair_dead_edit(maps: &P::Maps, model: &mut P::Model) -> Result<u64, P::Error> {
        super::grace::wait();
        P::repair(maps, model)?;
        let header = maps.header();
        let generation = header.generation.fetch_add(1, Ordering::AcqRel) + 1;
        header.dirty.store(0, Ordering::Release);
        Ok(generation)
    }

    /// Removes what a creation that died left in `path` (a pin directory
    /// [`Pinned::open_pinned`] answers [`PinError::Interrupted`] for), and
    /// the directory when that empties it.
    ///
    /// # Errors
    ///
    /// The [`PinError`]s of creating: the directory holds a whole program
    /// (`InUse`) or something else (`NotOurs`); bpffs refuses.
    pub(crate) fn clear_interrupted(path: &Path) -> Result<(), Error> {
        let (dir, lock) = PinDir::create(path, P::KIND)?;
        dir.remove_all()?;
        drop(lock);
        Ok(())
    }

    fn lock(&self) -> Result<Option<Flock<File>>, P::Error> {
        self.program.lock().map_err(P::Error::from)
    }

    fn state(&self) -> MutexGuard<'_, Synced<P::Model>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads the model if another handle or process has edited; with the
    /// pin directory's lock held (`locked`), first repairs an edit that died.
    fn sync(&self, st: &mut Synced<P::Model>, locked: bool) -> Result<(), P::Error> {
        let header = self.maps.header();
        if locked && header.dirty.load(Ordering::Acquire) != 0 {
            // Under the lock no edit runs, so the mark is one that died (or
            // whose repair failed): repaired here, as a reopen does. Else a
            // long-lived handle (the health agent, the exporter) cleared it
            // at its own next edit with the dead one's half still in the
            // maps: a VIP's table half-published, black-holing it for good.
            let mut model = P::load_model(&self.maps)?;
            let generation = Self::repair_dead_edit(&self.maps, &mut model)?;
            st.model = model;
            st.generation = Some(generation);
            return Ok(());
        }
        let generation = header.generation.load(Ordering::Acquire);
        if st.generation != Some(generation) {
            st.model = P::load_model(&self.maps)?;
            st.generation = Some(generation);
        }
        Ok(())
    }

    /// Runs `f` on the model, up to date, under the pin directory's lock.
    /// `f` may refresh caches in the model, but changes no configuration
    /// (bringing it up to date may repair an edit that died: `sync`).
    ///
    /// Within [`pin::without_waiting`](crate::core::pin::without_waiting),
    /// with the lock held by an edit, `f` runs on the model as this handle
    /// last read it: the last good numbers, rather than a wait (or a model
    /// read from maps an edit is changing).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&mut P::Model, &P::Maps) -> R) -> Result<R, P::Error> {
        let flock = match self.program.lock() {
            Err(e) if crate::core::pin::is_busy(&e) => {
                let mut st = self.state();
                return Ok(f(&mut st.model, &self.maps));
            }
            locked => locked.map_err(P::Error::from)?,
        };
        let mut st = self.state();
        self.sync(&mut st, flock.is_some())?;
        Ok(f(&mut st.model, &self.maps))
    }

    /// Runs the edit `f` on the model and the maps, under the pin
    /// directory's lock, with the header marked dirty while it runs.
    pub(crate) fn edit<R>(
        &self,
        f: impl FnOnce(&mut P::Model, &P::Maps) -> Result<R, P::Error>,
    ) -> Result<R, P::Error> {
        let flock = self.lock()?;
        let mut st = self.state();
        self.sync(&mut st, flock.is_some())?;
        let header = self.maps.header();
        header.dirty.store(1, Ordering::Release);
        let result = f(&mut st.model, &self.maps);
        let mut in_sync = true;
        if let Err(e) = &result {
            if P::repair_after(e) {
                // Whatever reached the maps is the truth: reload the model
                // from them and make the data plane agree with it.
                in_sync = match P::load_model(&self.maps) {
                    Ok(mut model) => {
                        let repaired = P::repair(&self.maps, &mut model).is_ok();
                        st.model = model;
                        repaired
                    }
                    Err(_) => false,
                };
            }
        }
        let generation = header.generation.fetch_add(1, Ordering::AcqRel) + 1;
        st.generation = in_sync.then_some(generation);
        // Left set when the repair failed: the next reopen repairs again.
        if in_sync {
            header.dirty.store(0, Ordering::Release);
        }
        result
    }

    /// Whether the handle's pin directory holds another program of its kind
    /// now, or none: re-created there (its config map another), or removed.
    /// An upgrade keeps the maps, and is followed ([`running`](Self::running)).
    /// Not pinned: never.
    pub(crate) fn replaced(&self) -> bool {
        self.program.pin_path().is_some() && !self.program.holds_own_maps()
    }

    /// The header's generation: advanced by every edit.
    pub(crate) fn generation(&self) -> u64 {
        self.maps.header().generation.load(Ordering::Acquire)
    }

    /// The program, following an upgrade by any process to the program it
    /// pinned ([`XdpProgram::follow_pin`]): what the facades' attachments,
    /// `program_fd`, `program_id` and test runs use, so a handle opened
    /// before an upgrade neither chains nor names nor runs the old program,
    /// and sees the links the upgrade moved to the new one. Followed only
    /// over the same maps: the header's layout this build's (a migrating
    /// upgrade by a newer build recreates maps this handle does not have),
    /// and the directory's config map this handle's (a directory emptied
    /// and made again holds another program). An upgrade advances the
    /// header's generation after pinning its program, so the pin is read
    /// again only when the generation moved: one atomic load otherwise.
    pub(crate) fn running(&self) -> &XdpProgram {
        let header = self.maps.header();
        let seen = header.generation.load(Ordering::Acquire) + 1;
        if self.followed.swap(seen, Ordering::AcqRel) != seen
            && header.layout_version.load(Ordering::Acquire) == P::KIND.layout_version
            && self.program.holds_own_maps()
        {
            self.program.follow_pin();
        }
        &self.program
    }

    /// `Debug` for a facade over the core.
    pub(crate) fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("attachments", &self.running().attachments())
            .field("pin", &self.program.pin_path())
            .finish_non_exhaustive()
    }
}

/// Checks the config value's magic and layout version before the maps are
/// opened by type, so a directory pinned by another layout says so (rather
/// than failing on a value size).
fn check_header(dir: &PinDir) -> Result<(), PinError> {
    let kind = dir.kind();
    let path = dir.join(kind.marker());
    let io = |source: std::io::Error| {
        use std::os::unix::fs::MetadataExt;
        let denied = matches!(source.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES));
        match std::fs::metadata(&path) {
            Ok(m) if denied && m.uid() != nix::unistd::geteuid().as_raw() => PinError::AccessDenied {
                path: path.clone(),
                dir: dir.path().to_owned(),
                uid: nix::unistd::geteuid().as_raw(),
                owner: m.uid(),
                mode: m.mode() & 0o7777,
            },
            _ => PinError::Io { op: "reading the pinned config", path: path.clone(), error: source },
        }
    };
    let map = MapHandle::from_pinned_path(&path).map_err(|e| io(io_from_libbpf(e)))?;
    let value = map.lookup(&0u32.to_ne_bytes(), MapFlags::ANY).map_err(|e| io(io_from_libbpf(e)))?;
    let word = |i: usize| value.as_deref().and_then(|v| v.get(i..i + 4)).map(bytemuck::pod_read_unaligned::<u32>);
    if word(0) != Some(kind.magic) {
        return Err(PinError::NotOurs {
            path: dir.path().to_owned(),
            kind: kind.name,
            found: kind.marker().into(),
            hint: "choose another directory".into(),
        });
    }
    match word(4) {
        Some(v) if v == kind.layout_version => Ok(()),
        found => Err(PinError::Incompatible {
            path: dir.path().to_owned(),
            kind: kind.name,
            cli: kind.cli,
            found: found.unwrap_or(0),
            expected: kind.layout_version,
        }),
    }
}

/// What a failed load means, and what to do about it.
/// Loads an opened object: its typed maps and its program's fd, the two
/// things that outlive the skeleton (a fresh load and an upgrade both end
/// here).
pub(crate) fn load_opened<'obj, P: ProgramKind, O: OpenSkel<'obj>>(
    kind: &Kind,
    open: O,
    offload: bool,
) -> Result<(P::Maps, OwnedFd), LoadError> {
    let object = open.open_object();
    let needed = object.maps().count() + object.progs().count();
    let headroom = fd_headroom();
    // With few descriptors left, libbpf can hand the kernel a map fd it
    // could not set up, and the program load then fails with EINVAL ("fd N
    // is not pointing to valid bpf_map"), not EMFILE: found with
    // RLIMIT_NOFILE lowered step by step (tests/filter_errors.rs).
    // libbpf holds two descriptors a map while it creates them (measured:
    // the filter's 18 maps and program failed so up to 36 free).
    let scarce = headroom.filter(|free| *free < 2 * needed + 16);
    let skel = open.load().map_err(|e| load_error(kind, e, offload, scarce))?;
    let object = skel.object();
    let maps = P::Maps::open(&Loaded(object))
        .map_err(|e| LoadError::Bpf { op: format!("opening map {}", e.name), error: e.source })?;
    let prog = object.progs().find(|p| p.name() == kind.program).ok_or_else(|| LoadError::Rejected {
        program: kind.program,
        message: "the object has no such program (a build error)".into(),
    })?;
    let fd = prog
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| LoadError::Bpf { op: "duplicating the program fd".into(), error: source })?;
    Ok((maps, fd))
}

/// How many more file descriptors the process may open (its soft
/// RLIMIT_NOFILE less those open); `Some(0)` when even listing them fails
/// for lack of one, `None` when it cannot be told.
fn fd_headroom() -> Option<usize> {
    let mut lim = nix::libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: lim is a valid rlimit for getrlimit to fill; it outlives the call.
    if unsafe { nix::libc::getrlimit(nix::libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let limit = lim.rlim_cur;
    match std::fs::read_dir("/proc/self/fd") {
        // The listing's own descriptor is counted too: one less than open.
        Ok(dir) => Some((limit as usize).saturating_sub(dir.count().saturating_sub(1))),
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EMFILE | nix::libc::ENFILE)) => Some(0),
        Err(_) => None,
    }
}

/// What a failed load means, and what to do about it. `scarce`: the file
/// descriptors that were left before the load, when too few for it.
pub(crate) fn load_error(kind: &Kind, err: libbpf_rs::Error, offload: bool, scarce: Option<usize>) -> LoadError {
    let message = format!("{err:#}");
    let source = io_from_libbpf(err);
    if let Some(missing) = missing_privileges() {
        return LoadError::MissingPrivileges { missing };
    }
    let op = format!("loading program {}", kind.program);
    use nix::libc;
    match crate::core::maps::errno(&source) {
        // The capabilities are held (above): EACCES is the verifier's
        // refusal (a program past its limits, such as the 512-byte stack
        // of a call chain, is refused so), or a BPF LSM policy's. Named
        // as missing privileges, it sent a user who built with another
        // clang after capabilities they had.
        Some(libc::EACCES) => LoadError::Rejected {
            program: kind.program,
            message: format!(
                "{message} (with CAP_BPF held: the verifier refused it, its log printed above by libbpf names why, \
                 or a BPF LSM policy did)"
            ),
        },
        // Before, every errno but these fell through to `Rejected` ("a bug
        // in xdpguard"), though an open-file or memory limit is the host's:
        // found with RLIMIT_NOFILE lowered (EMFILE) and under a memcg limit.
        Some(e @ (libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::E2BIG | libc::ENOSPC)) => {
            let (resource, fix) = resource_of(e);
            LoadError::Resource { op, resource, fix, error: source }
        }
        Some(libc::EPERM) => LoadError::Bpf {
            op: format!(
                "{op} (refused with CAP_BPF held: before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK, \
                 raise it with `ulimit -l unlimited` or systemd's LimitMEMLOCK=infinity; else a BPF LSM policy \
                 or seccomp refused it)"
            ),
            error: source,
        },
        _ if offload => LoadError::KernelFeature {
            feature: "BPF offload for this device",
            hint: format!("the driver cannot offload this program and its maps ({message}); use native or auto mode"),
        },
        // 524: the kernel's internal ENOTSUPP, which some BPF paths return.
        Some(e) if e == 524 || std::io::Error::from_raw_os_error(e).kind() == std::io::ErrorKind::Unsupported => {
            LoadError::KernelFeature { feature: kind.needs, hint: format!("use Linux {} ({message})", kind.min_kernel) }
        }
        Some(libc::EINVAL) if scarce.is_some() => {
            let (resource, fix) = resource_of(libc::EMFILE);
            let free = scarce.unwrap_or(0);
            LoadError::Resource {
                op: format!(
                    "{op} (with {free} file descriptors left under RLIMIT_NOFILE, the kernel was handed a map \
                     descriptor libbpf could not set up)"
                ),
                resource,
                fix,
                error: source,
            }
        }
        // EINVAL: what the verifier answers a program it refuses with (its
        // log printed above by libbpf).
        Some(libc::EINVAL) => LoadError::Rejected { program: kind.program, message },
        _ => LoadError::Bpf { op, error: source },
    }
}

/// The resource an errno says ran out while loading, and how to get more.
pub(crate) fn resource_of(errno: i32) -> (&'static str, &'static str) {
    use nix::libc;
    match errno {
        libc::EMFILE => (
            "file descriptors (the process's RLIMIT_NOFILE)",
            "raise the open-file limit (`ulimit -n 4096`, systemd's LimitNOFILE=); each map and program takes one",
        ),
        libc::ENFILE => ("file descriptors (the system's file table)", "raise `sysctl fs.file-max`, or close files"),
        libc::ENOMEM => (
            "kernel memory (the cgroup's memory limit; before Linux 5.11, RLIMIT_MEMLOCK)",
            "raise the memory limit of the process's cgroup (systemd's MemoryMax=) or `ulimit -l unlimited`, or load \
             smaller tables (the builder's capacities; CLI: the attach options)",
        ),
        libc::E2BIG => (
            "a kernel size limit (a map or program larger than the kernel accepts)",
            "load smaller tables (the builder's capacities; CLI: the attach options)",
        ),
        _ => ("space (ENOSPC)", "free BPF programs and maps no longer used (`bpftool prog`, `bpftool map`)"),
    }
}
