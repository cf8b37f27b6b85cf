//! A bpffs directory holding one xdpguard program's pins: its maps and its
//! program (by their stable names, from `src/bpf/`), and one
//! `link_<ifindex>_<mode>_<ifname>` per interface. Its config map marks the
//! directory as that kind of program's. Edits from several processes are
//! serialised with `flock` on the directory.

use std::cell::Cell;
use std::fs::{self, File};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::core::attach::Attachment;
use crate::core::layout::names;
use crate::core::pinned::Kind;
use crate::core::sys;
use crate::error::PinError;

const LINK_PREFIX: &str = "link_";

/// A dot of an interface's name in its link pin's name
/// ([`PinDir::link_name`]). Checked by experiment: bpffs refuses only `.`
/// of `. : , % @ - + =`, and `ip link add a:b` is refused (EINVAL).
const DOT_IN_PIN: &str = ":";

/// A subdirectory that exists while a program is being created in the
/// directory, whose creator holds the directory's lock meanwhile. Found
/// with the lock free, it marks the leftovers of a creator that died
/// half-way (bpffs holds only pins and directories, so the mark is one;
/// and it refuses names with a dot).
const CREATING: &str = "xdpg_creating";

/// The xdpguard program pinned as `file` (`xdpg_filter`, `xdpg_lb`,
/// `xdpg_decap`): its kind's name and the command that manages it.
pub(crate) fn program_named(file: &str) -> Option<(&'static str, &'static str)> {
    match file {
        names::XDPG_FILTER => Some(("filter", "xdpguard")),
        names::XDPG_LB => Some(("load balancer", "xdpguard-lb")),
        names::XDPG_DECAP => Some(("decapsulator", "xdpguard-lb decap")),
        _ => None,
    }
}

/// `NotOurs` for a directory holding `entries` (not a `kind`): names the
/// xdpguard program of another kind it holds, and its command.
fn not_ours(path: &Path, kind: &'static Kind, entries: &[String]) -> PinError {
    let other = entries.iter().find_map(|e| program_named(e));
    PinError::NotOurs {
        path: path.to_owned(),
        kind: kind.name,
        found: entries.first().cloned().unwrap_or_default(),
        hint: match other {
            Some((name, cli)) => {
                format!("it holds an xdpguard {name}: use `{cli}` (with `--pin {}`)", path.display())
            }
            None => "choose another directory".to_owned(),
        },
    }
}

#[derive(Debug, Clone)]
pub(crate) struct PinDir {
    path: PathBuf,
    kind: &'static Kind,
    /// Made by [`PinDir::create`] in this process: a creation that fails
    /// removes the directory only then (an empty directory that was there
    /// before may be another tool's, such as libxdp's `/sys/fs/bpf/xdp`).
    made: bool,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io { op, path: path.to_owned(), error: source }
}

impl PinDir {
    /// Prepares `path` for a new program of `kind`. It must be on bpffs and
    /// either not exist, be empty, or hold the leftovers of a creation
    /// whose process died (they are removed: a leftover link pin would keep
    /// a half-made program attached). Returns it locked and marked as being
    /// created until [`PinDir::created`]; the lock guard is the second value.
    pub(crate) fn create(path: &Path, kind: &'static Kind) -> Result<(Self, Flock<File>), PinError> {
        if !sys::is_on_bpffs(path) {
            return Err(PinError::BpffsNotMounted { path: path.to_owned() });
        }
        let made = !path.exists();
        if made {
            fs::create_dir_all(path).map_err(io_err("creating", path))?;
        }
        let dir = Self { path: path.to_owned(), kind, made };
        let lock = dir.lock()?;
        let mut entries = list(path)?;
        if entries.iter().any(|e| e == CREATING) {
            // We hold the lock, so its creator is gone.
            dir.remove_ours()?;
            dir.remove_nested()?;
            entries = list(path)?;
        }
        if entries.iter().any(|e| e == kind.marker()) {
            return Err(PinError::InUse { path: path.to_owned(), kind: kind.name, cli: kind.cli });
        }
        if !entries.is_empty() {
            return Err(not_ours(path, kind, &entries));
        }
        let mark = dir.join(CREATING);
        fs::create_dir(&mark).map_err(io_err("creating", &mark))?;
        Ok((dir, lock))
    }

    /// Marks the creation begun by [`PinDir::create`] finished: every pin
    /// is in place.
    pub(crate) fn created(&self) -> Result<(), PinError> {
        let mark = self.join(CREATING);
        fs::remove_dir(&mark).map_err(io_err("removing", &mark))
    }

    /// Opens a directory that must hold a program of `kind`: its config map
    /// marks it. A directory holding the program but no config map was
    /// pinned before that program had one (layout 0).
    pub(crate) fn open(path: &Path, kind: &'static Kind) -> Result<Self, PinError> {
        // bpffs first: an unmounted bpffs takes the directory with it, and
        // "not found" would hide why.
        if !sys::is_on_bpffs(path) {
            return Err(PinError::BpffsNotMounted { path: path.to_owned() });
        }
        if !path.exists() {
            return Err(PinError::NotFound { path: path.to_owned(), kind: kind.name, cli: kind.cli });
        }
        let mut entries = list(path)?;
        if entries.iter().any(|e| e == CREATING) {
            // Being created (wait for it), or its creator died.
            let _lock = Self { path: path.to_owned(), kind, made: false }.lock()?;
            entries = list(path)?;
            if entries.iter().any(|e| e == CREATING) {
                return Err(PinError::Interrupted { path: path.to_owned(), kind: kind.name, cli: kind.cli });
            }
        }
        if !entries.iter().any(|e| e == kind.marker()) {
            if entries.iter().any(|e| e == kind.program) {
                return Err(PinError::Incompatible {
                    path: path.to_owned(),
                    kind: kind.name,
                    cli: kind.cli,
                    found: 0,
                    expected: kind.layout_version,
                });
            }
            return Err(if entries.is_empty() {
                PinError::NotFound { path: path.to_owned(), kind: kind.name, cli: kind.cli }
            } else {
                not_ours(path, kind, &entries)
            });
        }
        Ok(Self { path: path.to_owned(), kind, made: false })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn kind(&self) -> &'static Kind {
        self.kind
    }

    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub(crate) fn pin(&self, name: &str, fd: BorrowedFd<'_>) -> Result<(), PinError> {
        let p = self.join(name);
        sys::obj_pin(fd, &p).map_err(io_err("pinning", &p))
    }

    /// `link_<ifindex>_<mode>_<ifname>`: the mode and name are recorded
    /// because another process may reopen the pins from another network
    /// namespace, where the index means nothing. bpffs refuses a name with
    /// a dot (EPERM), which interface names allow (VLANs: `eth0.100`), so
    /// each dot is written as [`DOT_IN_PIN`], which no interface name holds
    /// (the kernel refuses `:` in one, EINVAL) and bpffs takes; a name
    /// without dots is written as it is, as before.
    pub(crate) fn link_name(attachment: &Attachment) -> String {
        let name = attachment.interface.replace('.', DOT_IN_PIN);
        format!("{LINK_PREFIX}{}_{}_{name}", attachment.ifindex, attachment.mode)
    }

    /// The attachment recorded in a link pin's name: the interface's index,
    /// the mode and the interface's name when it was attached.
    pub(crate) fn link_recorded(pin_name: &str) -> Option<Attachment> {
        let (ifindex, rest) = pin_name.strip_prefix(LINK_PREFIX)?.split_once('_')?;
        let (mode, name) = rest.split_once('_')?;
        let interface = name.replace(DOT_IN_PIN, ".");
        Some(Attachment { ifindex: ifindex.parse().ok()?, interface, mode: mode.parse().ok()? })
    }

    /// The pinned links, as (file name, path).
    pub(crate) fn links(&self) -> Result<Vec<(String, PathBuf)>, PinError> {
        Ok(list(&self.path)?
            .into_iter()
            .filter(|n| n.starts_with(LINK_PREFIX))
            .map(|n| (n.clone(), self.join(&n)))
            .collect())
    }

    /// The pinned links, opened: (file name, path, fd).
    pub(crate) fn open_links(&self) -> Result<Vec<(String, PathBuf, OwnedFd)>, PinError> {
        self.links()?
            .into_iter()
            .map(|(name, path)| {
                let fd = sys::obj_get(&path).map_err(io_err("opening pinned link", &path))?;
                Ok((name, path, fd))
            })
            .collect()
    }

    pub(crate) fn unpin(&self, name: &str) -> Result<(), PinError> {
        let p = self.join(name);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("unpinning", &p)(e)),
            _ => Ok(()),
        }
    }

    /// The error for a pin of this directory that could not be opened: a
    /// missing one means the directory was damaged by hand.
    pub(crate) fn open_error(&self, op: &'static str, name: &str, source: io::Error) -> PinError {
        if source.kind() == io::ErrorKind::NotFound {
            let kind = self.kind;
            return PinError::Incomplete {
                path: self.path.clone(),
                missing: name.into(),
                kind: kind.name,
                cli: kind.cli,
            };
        }
        PinError::Io { op, path: self.join(name), error: source }
    }

    /// Takes the directory's edit lock until the returned guard drops.
    ///
    /// A directory gone while a handle is open (removed by hand, or its
    /// bpffs unmounted) is [`PinError::Removed`]: the handle's fds keep the
    /// program alive, but no other process can reach it any more.
    ///
    /// Within [`without_waiting`], a lock another holds is not waited for:
    /// [`PinError::Io`] with an error of kind `WouldBlock` ([`is_busy`]).
    pub(crate) fn lock(&self) -> Result<Flock<File>, PinError> {
        let dir = File::open(&self.path).map_err(|source| match source.kind() {
            // The guard stage's directory gone with its filter's: the
            // filter's is the one to attach again.
            io::ErrorKind::NotFound => match (self.kind.within, self.path.parent()) {
                (Some(outer), Some(parent)) if !parent.exists() => {
                    PinError::Removed { path: parent.to_owned(), kind: outer.name, cli: outer.cli }
                }
                _ => PinError::Removed { path: self.path.clone(), kind: self.kind.name, cli: self.kind.cli },
            },
            _ => io_err("opening", &self.path)(source),
        })?;
        let arg = if NO_WAIT.get() { FlockArg::LockExclusiveNonblock } else { FlockArg::LockExclusive };
        Flock::lock(dir, arg).map_err(|(_, errno)| {
            let error = match errno {
                nix::errno::Errno::EWOULDBLOCK => io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "an edit holds its lock (an `apply` or another command changing it), and this reader does not \
                     wait for edits",
                ),
                errno => io::Error::from(errno),
            };
            io_err("locking", &self.path)(error)
        })
    }

    /// Removes every pin of ours (the kind's maps, its program, links) and
    /// the creation mark, then the directory if that leaves it empty.
    pub(crate) fn remove_all(&self) -> Result<(), PinError> {
        self.remove_ours()?;
        if list(&self.path)?.is_empty() {
            fs::remove_dir(&self.path).map_err(io_err("removing", &self.path))?;
        }
        Ok(())
    }

    /// Undoes a creation begun by [`PinDir::create`] that failed: the
    /// subdirectories it made (a guard pinned within its filter's creation,
    /// before a later step failed), every pin of ours and the creation
    /// mark, then the directory if this creation made it. A directory that
    /// was there before, empty, is left as it was.
    pub(crate) fn undo_create(&self) -> Result<(), PinError> {
        self.remove_nested()?;
        if self.made {
            self.remove_all()
        } else {
            self.remove_ours()
        }
    }
}

impl PinDir {
    /// Removes the subdirectories a creation that died made in this one
    /// (the guard stage's, in its filter's: `Pinned::create_within`), with
    /// the pins they hold, link pins first. Everything in a directory
    /// marked [`CREATING`] is its creator's: a creation starts only in an
    /// empty directory (or one whose leftovers it cleared) and holds the
    /// lock throughout; and bpffs holds only pins and directories.
    fn remove_nested(&self) -> Result<(), PinError> {
        fn remove_tree(path: &Path) -> Result<(), PinError> {
            let mut names = list(path)?;
            names.sort_by_key(|n| !n.starts_with(LINK_PREFIX));
            for name in names {
                let p = path.join(&name);
                if p.is_dir() {
                    remove_tree(&p)?;
                } else {
                    fs::remove_file(&p).map_err(io_err("unpinning", &p))?;
                }
            }
            fs::remove_dir(path).map_err(io_err("removing", path))
        }
        for name in list(&self.path)? {
            let p = self.join(&name);
            if p.is_dir() && name != CREATING {
                remove_tree(&p)?;
            }
        }
        Ok(())
    }

    /// Removes every pin of ours and the creation mark (links first, so the
    /// program they hold on an interface leaves it).
    fn remove_ours(&self) -> Result<(), PinError> {
        let kind = self.kind;
        let mut names = list(&self.path)?;
        names.sort_by_key(|n| !n.starts_with(LINK_PREFIX));
        for name in names {
            if name.starts_with(LINK_PREFIX) || name == kind.program || kind.maps.contains(&name.as_str()) {
                self.unpin(&name)?;
            } else if name == CREATING {
                let mark = self.join(CREATING);
                fs::remove_dir(&mark).map_err(io_err("removing", &mark))?;
            }
        }
        Ok(())
    }
}

thread_local! {
    /// Set within [`without_waiting`].
    static NO_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's pin directory locks tried, not waited for:
/// a metrics scrape must not stall behind a long edit (an `apply` of a
/// large list holds the lock for seconds; Prometheus times out at 10 s by
/// default), so [`Pinned::read`](crate::core::pinned::Pinned::read) falls
/// back on the model it has, and opening or editing fails ([`is_busy`]).
/// A thread-local rather than a flag on each handle: opening a filter also
/// opens its guard stage, and both must not wait.
pub(crate) fn without_waiting<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_WAIT.set(self.0);
        }
    }
    let _restore = Restore(NO_WAIT.replace(true));
    f()
}

/// Whether `e` is a lock found held within [`without_waiting`].
pub(crate) fn is_busy(e: &PinError) -> bool {
    matches!(e, PinError::Io { op: "locking", error, .. } if error.kind() == io::ErrorKind::WouldBlock)
}

fn list(path: &Path) -> Result<Vec<String>, PinError> {
    let mut names: Vec<String> = fs::read_dir(path)
        .map_err(io_err("reading", path))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AttachMode;

    #[test]
    fn link_pins_record_mode_and_name() {
        for (mode, name) in
            [(AttachMode::Generic, "eth0"), (AttachMode::Native, "veth_lb_1"), (AttachMode::Offload, "x")]
        {
            let a = Attachment { ifindex: 42, interface: name.into(), mode };
            let pin = PinDir::link_name(&a);
            assert!(pin.starts_with("link_42_"), "{pin}");
            assert_eq!(PinDir::link_recorded(&pin), Some(a));
        }
        // A dot (VLANs) is written so bpffs takes it, and read back.
        let a = Attachment { ifindex: 7, interface: "eth0.100".into(), mode: AttachMode::Native };
        let pin = PinDir::link_name(&a);
        assert_eq!(pin, "link_7_native_eth0:100");
        assert_eq!(PinDir::link_recorded(&pin), Some(a));
        // Pins written before read the same.
        let old = PinDir::link_recorded("link_5_generic_veth_lb_1").unwrap();
        assert_eq!((old.ifindex, old.interface.as_str(), old.mode), (5, "veth_lb_1", AttachMode::Generic));
        assert_eq!(PinDir::link_recorded("link_3"), None);
        assert_eq!(PinDir::link_recorded(crate::core::layout::names::XDPG_FILTER_CFG), None);
    }
}
