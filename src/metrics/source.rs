//! A pinned program the metrics read, reopened only when its pins change.
//!
//! Reopening at every scrape would be simplest, but reopening a filter
//! loads its model (every list entry) under the pin directory's lock.
//! Measured with a 1M-entry blocklist (2 cores, `curl -w
//! '%{time_total}'`): a scrape 5-8 ms with the handle kept, ~0.5 s
//! reopening (`xdpguard status` takes 0.49 s). So a handle is kept, keyed
//! by the pin directory's entries (names and inodes): a program re-created
//! under the same directory (`detach` then `attach`, `apply`) or attached
//! to another interface (a new link pin) has other inodes, and is
//! reopened. The first scrape after a list edit still
//! reloads the model for the list sizes (0.6 s at 1M entries).
//!
//! No scrape waits for the lock ([`without_waiting`](crate::core::pin::without_waiting)):
//! with an edit holding it, the sizes, rules and SYN ports are the handle's
//! last read (its counters are read live: they need no lock), and a
//! program that must be (re)opened then keeps the handle held so far for
//! that scrape, or is down for it when there is none.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::family::{Id, Label, Samples};
use super::{MetricsError, Program};
use crate::{Attachment, Decap, Error, Filter, LoadBalancer};

/// An open program (boxed: a filter is 2.5 kB, a decapsulator 0.3 kB).
enum Handle {
    Filter(Box<Filter>),
    Lb(Box<LoadBalancer>),
    Decap(Box<Decap>),
}

impl Handle {
    fn open(program: Program, pin: &Path) -> Result<Handle, Error> {
        Ok(match program {
            Program::Filter => Handle::Filter(Box::new(Filter::open_pinned(pin)?)),
            Program::LoadBalancer => Handle::Lb(Box::new(LoadBalancer::open_pinned(pin)?)),
            Program::Decap => Handle::Decap(Box::new(Decap::open_pinned(pin)?)),
        })
    }

    fn attachments(&self) -> Vec<Attachment> {
        match self {
            Handle::Filter(f) => f.attachments(),
            Handle::Lb(lb) => lb.attachments(),
            Handle::Decap(d) => d.attachments(),
        }
    }

    fn lost_attachments(&self) -> Vec<Attachment> {
        match self {
            Handle::Filter(f) => f.lost_attachments(),
            Handle::Lb(lb) => lb.lost_attachments(),
            Handle::Decap(d) => d.lost_attachments(),
        }
    }

    fn read(&self, pin: Label, s: &mut Samples) -> Result<(), Error> {
        match self {
            Handle::Filter(f) => super::filter::read(f, pin, s),
            Handle::Lb(lb) => super::lb::read(lb, pin, s),
            Handle::Decap(d) => super::decap::read(d, pin, s),
        }
    }
}

/// A pin directory's entries: (name, inode), sorted.
type Identity = Vec<(String, u64)>;

/// The pin directory's entries, by name and inode; None if it cannot be
/// listed (opening then says why).
fn identity(pin: &Path) -> Option<Identity> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(pin).ok()? {
        let e = e.ok()?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.metadata().ok()?.ino()));
    }
    out.sort();
    Some(out)
}

/// Whether opening found the pin directory locked by an edit (and did not
/// wait for it).
fn busy(e: &Error) -> bool {
    matches!(e, Error::Pin(p) if crate::core::pin::is_busy(p))
}

/// One pinned program to read at each scrape.
pub(crate) struct Source {
    pub(crate) program: Program,
    pub(crate) pin: PathBuf,
    label: Label,
    /// The handle, and the pin directory's entries when it was opened
    /// (`None`: to be reopened at the next scrape).
    open: Mutex<Option<(Option<Identity>, Handle)>>,
}

impl Source {
    pub(crate) fn new(program: Program, pin: PathBuf) -> Source {
        let label = pin.display().to_string().into();
        Source { program, pin, label, open: Mutex::new(None) }
    }

    /// Adds its samples to `s`: `xdpguard_up` 1 and everything it counts,
    /// or `xdpguard_up` 0 alone when it cannot be read (the error says why).
    pub(crate) fn read(&self, s: &mut Samples) -> Result<(), MetricsError> {
        let up = [self.program.label().into(), self.label.clone()];
        match self.try_read() {
            Ok(mine) => {
                s.push(Id::UP, up, 1);
                s.extend(mine);
                Ok(())
            }
            Err(source) => {
                s.push(Id::UP, up, 0);
                Err(MetricsError::Read { program: self.program, pin: self.pin.clone(), error: Box::new(source) })
            }
        }
    }

    fn try_read(&self) -> Result<Samples, Error> {
        // A scrape never waits for the pin directory's lock: an `apply`
        // holds it for as long as its edits take (seconds for a large
        // list), past a scraper's timeout. Reading the counters needs no
        // lock; what the model says (list sizes, rules, SYN ports) comes
        // from the model this handle last read while an edit holds it.
        crate::core::pin::without_waiting(|| self.try_read_unlocked())
    }

    fn try_read_unlocked(&self) -> Result<Samples, Error> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let now = identity(&self.pin);
        let (known, handle) = match open.take() {
            Some((Some(known), handle)) if now.as_ref() == Some(&known) => (Some(known), handle),
            held => match (Handle::open(self.program, &self.pin), held) {
                // Listed after opening, so a change in between reopens next time.
                (Ok(handle), _) => (identity(&self.pin), handle),
                // Being created or edited (a re-create under way, a link
                // pinned by an attach): the handle held so far serves this
                // scrape, and the next one tries again. None held: down
                // for this scrape, without waiting.
                (Err(e), Some((_, handle))) if busy(&e) => (None, handle),
                // The handle held so far stays while it keeps the program
                // on an interface: its pins unmounted or removed (`rm -r`)
                // under it, the program's links are held by this process
                // alone, and dropping them would detach it. Reported down,
                // and reopened at the next scrape.
                (Err(e), held) => {
                    *open = held.filter(|(_, h)| !h.attachments().is_empty()).map(|(_, h)| (None, h));
                    return Err(e);
                }
            },
        };
        let mut mine = Samples::default();
        let live = handle.attachments();
        // A lost attachment (its interface deleted) is 0 rather than
        // absent: a series that just ends fires no alert, and `status`
        // says "lost:" for it. One the program runs on again under the
        // same name and mode is live, not lost (never both samples).
        let lost: Vec<Attachment> = handle
            .lost_attachments()
            .into_iter()
            .filter(|l| !live.iter().any(|a| a.interface == l.interface && a.mode == l.mode))
            .collect();
        for (a, value) in live.into_iter().map(|a| (a, 1)).chain(lost.into_iter().map(|a| (a, 0))) {
            let labels =
                [self.program.label().into(), self.label.clone(), a.interface.into(), a.mode.to_string().into()];
            mine.push(Id::ATTACHED, labels, value);
        }
        // Whatever went wrong, the next scrape reopens (the handle kept
        // until then, for the program's links it may hold).
        if let Err(e) = handle.read(self.label.clone(), &mut mine) {
            *open = Some((None, handle));
            return Err(e);
        }
        *open = Some((known, handle));
        Ok(mine)
    }
}
