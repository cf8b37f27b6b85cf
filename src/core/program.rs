//! A loaded XDP program, the interfaces it is attached to (through BPF
//! links), and (when pinned) its pin directory. Every
//! [`Pinned`](crate::core::pinned::Pinned) program holds one.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::Flock;

use crate::core::attach::{self, Attachment, Interface, Link};
use crate::core::pin::PinDir;
use crate::core::sys;
use crate::core::testrun::{TestRun, XdpAction};
use crate::error::{AttachError, Error, LoadError, PinError};
use crate::AttachMode;

pub(crate) struct XdpProgram {
    fds: Mutex<ProgramFds>,
    /// The program's pin name, e.g. `xdpg_filter`.
    name: &'static str,
    links: Mutex<Vec<Link>>,
    /// Attachments whose interface is gone (deleted, or otherwise taken
    /// from under the link by the kernel): their link pins are kept, as the
    /// record of where the program ran, until it is attached there again,
    /// detached from there, or unpinned.
    lost: Mutex<Vec<Attachment>>,
    pin: Option<PinDir>,
    /// The kernel ids of the maps its pin directory held when the handle
    /// opened (or pinned) it: links whose program uses one of them are this
    /// handle's program's, whatever upgrade replaced it since (an upgrade
    /// keeps at least the config map); a directory emptied and made again
    /// holds another program's, over maps of its own.
    owner: Vec<u32>,
}

/// The handle's program fd, and those it held before it followed an
/// upgrade to a newer program ([`XdpProgram::follow_pin`]): kept open until
/// the handle drops, so a [`BorrowedFd`] handed out earlier never names a
/// closed (or reused) descriptor.
struct ProgramFds {
    now: OwnedFd,
    #[allow(dead_code)] // Held, never read: it keeps the fds open.
    before: Vec<OwnedFd>,
}

impl XdpProgram {
    pub(crate) fn new(fd: OwnedFd, name: &'static str) -> Self {
        Self {
            fds: Mutex::new(ProgramFds { now: fd, before: Vec::new() }),
            name,
            links: Mutex::new(Vec::new()),
            lost: Mutex::new(Vec::new()),
            pin: None,
            owner: Vec::new(),
        }
    }

    /// Reopens a pinned program and its links. Links whose interface is gone
    /// are lost ([`XdpProgram::lost`]); their pins stay.
    pub(crate) fn open_pinned(dir: PinDir, name: &'static str) -> Result<Self, Error> {
        let fd =
            sys::obj_get(&dir.join(name)).map_err(|source| dir.open_error("opening pinned program", name, source))?;
        let mut program = Self::new(fd, name);
        program.owner = owner_of(&dir);
        let (links, lost) = scan_links(&dir, &program.owner)?;
        program.links = Mutex::new(links);
        program.lost = Mutex::new(lost);
        program.pin = Some(dir);
        Ok(program)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        let raw = self.fds().now.as_raw_fd();
        // SAFETY: `raw` belongs to an OwnedFd in `self.fds`, which never
        // closes one before `self` drops (a replaced fd moves to `before`),
        // so it stays open for the borrow of `self`.
        unsafe { BorrowedFd::borrow_raw(raw) }
    }

    fn fds(&self) -> std::sync::MutexGuard<'_, ProgramFds> {
        self.fds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the pinned program when it is not this handle's: an upgrade
    /// (by any process) pinned a newer one over the same maps, and the
    /// handle must not hand out the old one ([`fd`](Self::fd) for
    /// `set_next`, [`id`](Self::id), test runs). The caller checks that the
    /// directory still holds this handle's maps
    /// ([`holds_own_maps`](Self::holds_own_maps)). Unpinned, or the pin
    /// unreadable: the handle's own stays.
    pub(crate) fn follow_pin(&self) {
        let Some(dir) = &self.pin else { return };
        let Ok(pinned) = sys::obj_get(&dir.join(self.name)) else { return };
        let mut fds = self.fds();
        if let (Ok(pinned_id), Ok(own_id)) = (sys::prog_id(pinned.as_fd()), sys::prog_id(fds.now.as_fd())) {
            if pinned_id != own_id {
                let old = std::mem::replace(&mut fds.now, pinned);
                fds.before.push(old);
            }
        }
    }

    /// Whether the pin directory's config map is still the one it held when
    /// the handle opened (or pinned) it: emptied and made again, it holds
    /// another program's.
    pub(crate) fn holds_own_maps(&self) -> bool {
        let Some(dir) = &self.pin else { return false };
        let Ok(map) = sys::obj_get(&dir.join(dir.kind().marker())) else { return false };
        sys::map_id(map.as_fd()).is_ok_and(|id| self.owner.contains(&id))
    }

    /// The program that runs now: when pinned, the pinned one (an upgrade,
    /// by another process too, replaces the pin with its program, and a
    /// handle opened before must not put the old one back), else this
    /// handle's own.
    pub(crate) fn current(&self) -> Result<OwnedFd, Error> {
        match &self.pin {
            Some(dir) => sys::obj_get(&dir.join(self.name))
                .map_err(|source| dir.open_error("opening pinned program", self.name, source).into()),
            None => self.fds().now.try_clone().map_err(|source| {
                LoadError::Bpf { op: format!("duplicating program {}'s fd", self.name), error: source }.into()
            }),
        }
    }

    /// The program's kernel id.
    pub(crate) fn id(&self) -> Result<u32, Error> {
        sys::prog_id(self.fd()).map_err(|source| {
            LoadError::Bpf { op: format!("reading program {}'s id", self.name), error: source }.into()
        })
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins the program and its links in `dir`, and pins later links there too.
    pub(crate) fn pin_to(&mut self, dir: PinDir) -> Result<(), PinError> {
        dir.pin(self.name, self.fd())?;
        for link in self.links().iter() {
            dir.pin(&PinDir::link_name(&link.attachment), link.fd.as_fd())?;
        }
        self.owner = owner_of(&dir);
        self.pin = Some(dir);
        Ok(())
    }

    pub(crate) fn pin_path(&self) -> Option<&Path> {
        self.pin.as_ref().map(|d| d.path())
    }

    /// Takes the pin directory's edit lock (none when not pinned).
    pub(crate) fn lock(&self) -> Result<Option<Flock<File>>, PinError> {
        self.pin.as_ref().map(|d| d.lock()).transpose()
    }

    /// Attaches [the program that runs now](Self::current) to one more
    /// interface, pinning the link if pinned: under the pin directory's
    /// lock, so an upgrade (which swaps the pinned links under it) sees the
    /// new link, or this attach sees its program.
    pub(crate) fn attach(&self, iface: &Interface, mode: AttachMode) -> Result<Attachment, Error> {
        let _lock = self.lock()?;
        // Attached there already (by this handle or another of the same
        // pins): nothing to do in that mode; another is a clear error, not
        // "detach the program there first", which names this one.
        // The links and lost records read once, under the lock: the attach
        // below changes neither.
        self.sync_links();
        let prog = self.current()?;
        let (ifindex, name) = iface.resolve()?;
        let here = self.links().iter().find(|l| l.attachment.ifindex == ifindex).map(|l| l.attachment.clone());
        if let Some(here) = here {
            if attach::runs_on(sys::prog_id(prog.as_fd()).unwrap_or(0), &name, ifindex) {
                if mode == AttachMode::Auto || mode == here.mode {
                    return Ok(here);
                }
                return Err(AttachError::AttachedInAnotherMode { interface: name, mode: here.mode, asked: mode }.into());
            }
            // Not here: an interface of the same index in another namespace
            // (a container's `eth0` and another's are both index 2 often).
            // Of the same name too, its link pin's name would be this one's.
            if let (Some(dir), true) = (&self.pin, here.interface == name) {
                return Err(AttachError::SameInterfaceElsewhere {
                    interface: name,
                    ifindex,
                    pin: dir.path().to_owned(),
                }
                .into());
            }
        }
        let link = attach::attach(prog.as_fd(), iface, mode)?;
        let attachment = link.attachment.clone();
        // Attached there again: the record of the attachment it lost there
        // has served its purpose, and goes first (its pin may have the new
        // link's name: an interface made again with the same index, in a
        // namespace made again).
        self.forget_lost(|l| l.interface == attachment.interface)?;
        if let Some(dir) = &self.pin {
            dir.pin(&PinDir::link_name(&attachment), link.fd.as_fd())?;
        }
        self.links().push(link);
        Ok(attachment)
    }

    /// Detaches from one interface, by the name or index it was attached
    /// with; an attachment [lost](Self::lost) there is forgotten (its pin
    /// removed), so detaching by name after an interface was deleted, or
    /// deleted and made again, leaves nothing of the program there.
    pub(crate) fn detach(&self, iface: &Interface) -> Result<(), Error> {
        let matches = |a: &Attachment| match iface {
            Interface::Name(n) => &a.interface == n,
            Interface::Index(i) => a.ifindex == *i,
        };
        // Under the directory's lock, as attach: the links read are those
        // pinned now (a directory removed under the handle: the links it
        // knows).
        let _lock = match self.lock() {
            Err(PinError::Removed { .. }) => None,
            lock => lock?,
        };
        self.sync_links();
        let link = {
            let mut links = self.links();
            links.iter().position(|l| matches(&l.attachment)).map(|pos| links.remove(pos))
        };
        let forgotten = self.forget_lost(matches)?;
        match link {
            Some(link) => self.drop_link(link),
            None if forgotten > 0 => Ok(()),
            None => {
                let attached: Vec<String> = self.links().iter().map(|l| l.attachment.interface.clone()).collect();
                Err(AttachError::NotAttached { interface: iface.to_string(), attached: attached.join(", ") }.into())
            }
        }
    }

    fn drop_link(&self, link: Link) -> Result<(), Error> {
        sys::link_detach(link.fd.as_fd())
            .map_err(|source| AttachError::Bpf { interface: link.attachment.interface.clone(), error: source })?;
        if let Some(dir) = &self.pin {
            dir.unpin(&PinDir::link_name(&link.attachment))?;
        }
        Ok(())
    }

    /// Brings the links and the lost attachments up to date: for a pinned
    /// program, from its pin directory (where every process pins the links
    /// it makes and removes those it detaches, so one process sees
    /// another's); else by asking the kernel which of its links' interfaces
    /// are gone. One `BPF_OBJ_GET_INFO_BY_FD` per link. When the directory
    /// cannot be read, what the handle knew stays.
    fn sync_links(&self) {
        if let Some(dir) = &self.pin {
            match scan_links(dir, &self.owner) {
                Ok((links, lost)) => {
                    *self.links() = links;
                    *self.lost_records() = lost;
                }
                // The directory removed under this handle (another handle's
                // unpin detached its links): what this one holds that still
                // runs stays, the rest goes, and nothing is "lost" that the
                // removal took on purpose.
                Err(_) if !dir.path().exists() => {
                    self.links().retain(|l| !matches!(attach::link_attachment(&l.fd), Ok(None)));
                    self.lost_records().clear();
                }
                Err(_) => {}
            }
            return;
        }
        let mut links = self.links();
        let mut lost = self.lost_records();
        links.retain(|l| {
            // An error reading the info is not proof of death: kept.
            let dead = matches!(attach::link_attachment(&l.fd), Ok(None));
            if dead {
                lost.push(l.attachment.clone());
            }
            !dead
        });
    }

    /// Forgets the lost attachments `which` selects, removing their pins;
    /// returns how many.
    fn forget_lost(&self, which: impl Fn(&Attachment) -> bool) -> Result<usize, PinError> {
        let mut lost = self.lost_records();
        let before = lost.len();
        let mut kept = Vec::new();
        for a in lost.drain(..) {
            if !which(&a) {
                kept.push(a);
            } else if let Some(dir) = &self.pin {
                dir.unpin(&PinDir::link_name(&a))?;
            }
        }
        *lost = kept;
        Ok(before - lost.len())
    }

    fn lost_records(&self) -> std::sync::MutexGuard<'_, Vec<Attachment>> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The interfaces the program runs on now.
    pub(crate) fn attachments(&self) -> Vec<Attachment> {
        self.sync_links();
        self.links().iter().map(|l| l.attachment.clone()).collect()
    }

    /// The attachments whose interface has gone (deleted, or taken from
    /// under the program by the kernel) since the program was attached
    /// there, as they were recorded: kept until the program is attached to
    /// an interface of that name again, detached from it, or unpinned.
    pub(crate) fn lost(&self) -> Vec<Attachment> {
        self.sync_links();
        self.lost_records().clone()
    }

    /// Detaches everywhere and removes every pin of the object, and its
    /// directory when that empties it.
    pub(crate) fn unpin(&self) -> Result<(), Error> {
        self.unpin_then(PinDir::remove_all)
    }

    fn unpin_then(&self, remove: fn(&PinDir) -> Result<(), PinError>) -> Result<(), Error> {
        // The links pinned now, another process's too: each detached, not
        // only unpinned (a handle holding one would keep it attached).
        self.sync_links();
        let links = std::mem::take(&mut *self.links());
        for link in links {
            self.drop_link(link)?;
        }
        self.lost_records().clear();
        // A directory already removed (another handle's unpin, or `detach`
        // from another process) has nothing left to remove: done.
        if let Some(dir) = self.pin.as_ref().filter(|d| d.path().exists()) {
            remove(dir)?;
        }
        Ok(())
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN`, as if
    /// received on `ingress` (an interface of the calling thread's network
    /// namespace) when given.
    pub(crate) fn test_run(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error> {
        let out = match ingress {
            None => sys::prog_test_run(self.fd(), frame, None, 1, 0),
            Some(ifindex) => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
                let mut ctx = [0u32; 6];
                ctx[1] = frame.len() as u32;
                ctx[3] = ifindex;
                sys::prog_test_run(self.fd(), frame, Some(bytemuck::cast_slice_mut(&mut ctx)), 1, 0)
            }
        }
        .map_err(|source| LoadError::Bpf { op: "BPF_PROG_TEST_RUN".into(), error: source })?;
        Ok(TestRun {
            action: XdpAction::from(out.retval),
            frame: out.data_out,
            duration: Duration::from_nanos(u64::from(out.duration_ns)),
        })
    }
}

/// The kernel ids of the maps pinned in `dir` (see `XdpProgram::owner`).
fn owner_of(dir: &PinDir) -> Vec<u32> {
    let pinned = dir.kind().maps.iter().filter_map(|name| sys::obj_get(&dir.join(name)).ok());
    pinned.filter_map(|map| sys::map_id(map.as_fd()).ok()).collect()
}

/// The links pinned in `dir` whose program uses one of the maps `owner`
/// (all of them when it is empty): those attached to a live interface,
/// with the interface's name and mode as the pin recorded them (this
/// process may be in another network namespace than the one that
/// attached), and the attachments whose interface is gone, as recorded.
/// Links of another program (the directory emptied and a new program
/// created there since the handle was opened) are not this handle's; an
/// upgrade's program, over the same maps, is. An error reading a link is an
/// error, never a dead link: its pin may be the last reference, and
/// removing it would detach a live program.
pub(crate) fn scan_links(dir: &PinDir, owner: &[u32]) -> Result<(Vec<Link>, Vec<Attachment>), Error> {
    let mut links = Vec::new();
    let mut lost = Vec::new();
    // Whether each program seen uses one of `owner` (unknown: counted as ours).
    let mut ours: Vec<(u32, bool)> = Vec::new();
    for (pin_name, path, link) in dir.open_links()? {
        if let (false, Ok(prog)) = (owner.is_empty(), sys::link_prog_id(link.as_fd())) {
            let mine = match ours.iter().find(|(id, _)| *id == prog) {
                Some(&(_, mine)) => mine,
                None => {
                    let maps = sys::prog_by_id(prog).and_then(|fd| sys::prog_map_ids(fd.as_fd()));
                    let mine = maps.map_or(true, |ids| ids.iter().any(|id| owner.contains(id)));
                    ours.push((prog, mine));
                    mine
                }
            };
            if !mine {
                continue;
            }
        }
        let recorded = PinDir::link_recorded(&pin_name);
        let live = attach::link_attachment(&link).map_err(|source| PinError::Io {
            op: "reading pinned link's info",
            path,
            error: source,
        })?;
        match (live, recorded) {
            (Some(mut attachment), recorded) => {
                if let Some(r) = recorded {
                    attachment.mode = r.mode;
                    attachment.interface = r.interface;
                }
                links.push(Link { fd: link, attachment });
            }
            (None, Some(r)) => lost.push(r),
            // Dead, under a name this crate does not give: nothing to report.
            (None, None) => {}
        }
    }
    Ok((links, lost))
}
