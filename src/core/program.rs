//! A loaded XDP program, the interfaces it is attached to (through BPF
//! links), and (when pinned) its pin directory. Every
//! [`Pinned`](crate::core::pinned::Pinned) program holds one.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
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
    fd: OwnedFd,
    /// The program's pin name, e.g. `xdpg_filter`.
    name: &'static str,
    links: Mutex<Vec<Link>>,
    pin: Option<PinDir>,
}

impl XdpProgram {
    pub(crate) fn new(fd: OwnedFd, name: &'static str) -> Self {
        Self { fd, name, links: Mutex::new(Vec::new()), pin: None }
    }

    /// Reopens a pinned program and its links. Links whose interface is gone
    /// are dead: their pins are removed.
    pub(crate) fn open_pinned(dir: PinDir, name: &'static str) -> Result<Self, Error> {
        let fd =
            sys::obj_get(&dir.join(name)).map_err(|source| dir.open_error("opening pinned program", name, source))?;
        let mut links = Vec::new();
        for (pin_name, path) in dir.links()? {
            let link =
                sys::obj_get(&path).map_err(|source| PinError::Io { op: "opening pinned link", path, source })?;
            match attach::link_attachment(&link) {
                Ok(Some(mut attachment)) => {
                    // This process may be in another network namespace than
                    // the one that attached: what the pin recorded counts.
                    if let Some((mode, name)) = PinDir::link_recorded(&pin_name) {
                        attachment.mode = mode;
                        attachment.interface = name.to_owned();
                    }
                    links.push(Link { fd: link, attachment });
                }
                _ => dir.unpin(&pin_name)?,
            }
        }
        Ok(Self { fd, name, links: Mutex::new(links), pin: Some(dir) })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The program that runs now: when pinned, the pinned one (an upgrade,
    /// by another process too, replaces the pin with its program, and a
    /// handle opened before must not put the old one back), else this
    /// handle's own.
    pub(crate) fn current(&self) -> Result<OwnedFd, Error> {
        match &self.pin {
            Some(dir) => sys::obj_get(&dir.join(self.name))
                .map_err(|source| dir.open_error("opening pinned program", self.name, source).into()),
            None => self.fd.try_clone().map_err(|source| {
                LoadError::Bpf { op: format!("duplicating program {}'s fd", self.name), source }.into()
            }),
        }
    }

    /// The program's kernel id.
    pub(crate) fn id(&self) -> Result<u32, Error> {
        sys::prog_id(self.fd.as_fd())
            .map_err(|source| LoadError::Bpf { op: format!("reading program {}'s id", self.name), source }.into())
    }

    fn links(&self) -> std::sync::MutexGuard<'_, Vec<Link>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins the program and its links in `dir`, and pins later links there too.
    pub(crate) fn pin_to(&mut self, dir: PinDir) -> Result<(), PinError> {
        dir.pin(self.name, self.fd.as_fd())?;
        for link in self.links().iter() {
            dir.pin(&PinDir::link_name(&link.attachment), link.fd.as_fd())?;
        }
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
        let link = attach::attach(self.current()?.as_fd(), iface, mode)?;
        let attachment = link.attachment.clone();
        if let Some(dir) = &self.pin {
            dir.pin(&PinDir::link_name(&attachment), link.fd.as_fd())?;
        }
        self.links().push(link);
        Ok(attachment)
    }

    /// Detaches from one interface, by the name or index it was attached with.
    pub(crate) fn detach(&self, iface: &Interface) -> Result<(), Error> {
        let link = {
            let mut links = self.links();
            let pos = links.iter().position(|l| match iface {
                Interface::Name(n) => &l.attachment.interface == n,
                Interface::Index(i) => l.attachment.ifindex == *i,
            });
            let Some(pos) = pos else {
                return Err(
                    AttachError::InterfaceNotFound { interface: format!("{iface} (not attached to it)") }.into()
                );
            };
            links.remove(pos)
        };
        self.drop_link(link)
    }

    fn drop_link(&self, link: Link) -> Result<(), Error> {
        sys::link_detach(link.fd.as_fd())
            .map_err(|source| AttachError::Bpf { interface: link.attachment.interface.clone(), source })?;
        if let Some(dir) = &self.pin {
            dir.unpin(&PinDir::link_name(&link.attachment))?;
        }
        Ok(())
    }

    pub(crate) fn attachments(&self) -> Vec<Attachment> {
        self.links().iter().map(|l| l.attachment.clone()).collect()
    }

    /// Detaches everywhere and removes every pin of the object.
    pub(crate) fn unpin(&self) -> Result<(), Error> {
        let links = std::mem::take(&mut *self.links());
        for link in links {
            self.drop_link(link)?;
        }
        if let Some(dir) = &self.pin {
            dir.remove_all()?;
        }
        Ok(())
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN`, as if
    /// received on `ingress` (an interface of the calling thread's network
    /// namespace) when given.
    pub(crate) fn test_run(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error> {
        let out = match ingress {
            None => sys::prog_test_run(self.fd.as_fd(), frame, None, 1, 0),
            Some(ifindex) => {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
                let mut ctx = [0u32; 6];
                ctx[1] = frame.len() as u32;
                ctx[3] = ifindex;
                sys::prog_test_run(self.fd.as_fd(), frame, Some(bytemuck::cast_slice_mut(&mut ctx)), 1, 0)
            }
        }
        .map_err(|source| LoadError::Bpf { op: "BPF_PROG_TEST_RUN".into(), source })?;
        Ok(TestRun {
            action: XdpAction::from(out.retval),
            frame: out.data_out,
            duration: Duration::from_nanos(u64::from(out.duration_ns)),
        })
    }
}
