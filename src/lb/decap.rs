//! [`Decap`]: the backend side of IPIP mode, for hosts that cannot (or
//! would rather not) run the kernel's ipip/ip6_tunnel modules.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::hash::{addr_words, family_code};
use super::layout::decap_skel::DecapSkelBuilder;
use super::layout::{xdpg_counter, xdpg_decap_key};
use super::maps::map_err;
use crate::attach::{self, Attachment, Interface, Link};
use crate::error::{io_from_libbpf, missing_privileges, AttachError, Error, LbError, LoadError};
use crate::layout::consts::*;
use crate::stats::Counter;
use crate::testrun::TestRun;
use crate::{sys, AttachMode, XdpAction};

/// An XDP decapsulator: IPv4-in-IPv4, IPv6-in-IPv6 and IPv4-in-IPv6
/// packets addressed to one of its local addresses lose their outer header
/// and reach the stack as the inner packet (whose destination, the VIP, the
/// host holds on a loopback interface). Everything else passes untouched.
/// Dropping it detaches it.
///
/// ```no_run
/// use xdpguard::Decap;
/// let decap = Decap::builder()
///     .interface("eth0")
///     .local("198.51.100.11".parse()?)
///     .attach()?;
/// println!("{:?}", decap.stats()?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Decap {
    addrs: MapHandle,
    counters: MapHandle,
    program: OwnedFd,
    links: Mutex<Vec<Link>>,
}

impl std::fmt::Debug for Decap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decap").field("attachments", &self.attachments()).finish_non_exhaustive()
    }
}

/// Builds a [`Decap`].
#[derive(Debug, Clone, Default)]
pub struct DecapBuilder {
    interfaces: Vec<Interface>,
    mode: AttachMode,
    locals: Vec<IpAddr>,
}

/// The decapsulator's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DecapStats {
    /// Tunnel packets whose outer header was removed.
    pub decapsulated: Counter,
    /// Everything else (passed untouched).
    pub passed: Counter,
}

impl DecapBuilder {
    /// Adds an interface to attach to.
    pub fn interface(mut self, iface: impl Into<Interface>) -> Self {
        self.interfaces.push(iface.into());
        self
    }

    /// The attach mode (default auto).
    pub fn mode(mut self, mode: AttachMode) -> Self {
        self.mode = mode;
        self
    }

    /// Adds a local tunnel endpoint: outer destinations to decapsulate for.
    pub fn local(mut self, addr: IpAddr) -> Self {
        self.locals.push(addr);
        self
    }

    /// Loads without attaching (for [`Decap::test_run`]).
    pub fn load(self) -> Result<Decap, Error> {
        self.build(false)
    }

    /// Loads and attaches to every interface given.
    pub fn attach(self) -> Result<Decap, Error> {
        if self.interfaces.is_empty() {
            return Err(AttachError::NoInterface.into());
        }
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<Decap, Error> {
        if let Some(missing) = missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let err = |op: &str| {
            let op = op.to_owned();
            move |e: libbpf_rs::Error| LoadError::Bpf { op, source: io_from_libbpf(e) }
        };
        let mut storage = MaybeUninit::uninit();
        let open = DecapSkelBuilder::default().open(&mut storage).map_err(err("opening the decap object"))?;
        let skel = open.load().map_err(|e| LoadError::Rejected { program: "xdpg_decap", message: format!("{e:#}") })?;
        let addrs = MapHandle::try_from(&skel.maps.xdpg_decap_addr).map_err(err("duplicating map fds"))?;
        let counters = MapHandle::try_from(&skel.maps.xdpg_decap_cnt).map_err(err("duplicating map fds"))?;
        let program = skel
            .progs
            .xdpg_decap
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| LoadError::Bpf { op: "duplicating the program fd".into(), source })?;
        drop(skel);
        let decap = Decap { addrs, counters, program, links: Mutex::new(Vec::new()) };
        for a in &self.locals {
            decap.add_local(*a)?;
        }
        if attach {
            let mut links = Vec::new();
            for iface in &self.interfaces {
                links.push(attach::attach(decap.program.as_fd(), iface, self.mode)?);
            }
            *decap.links.lock().expect("not poisoned") = links;
        }
        Ok(decap)
    }
}

fn key(addr: IpAddr) -> xdpg_decap_key {
    xdpg_decap_key { addr: addr_words(addr), family: family_code(addr), pad: [0; 3] }
}

impl Decap {
    /// Starts building a decapsulator.
    pub fn builder() -> DecapBuilder {
        DecapBuilder::default()
    }

    /// Decapsulates tunnel packets addressed to `addr` from the next packet on.
    pub fn add_local(&self, addr: IpAddr) -> Result<(), LbError> {
        let k = key(addr);
        self.addrs
            .update(bytemuck::bytes_of(&k), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err(format!("adding decap address {addr}")))
    }

    /// Stops decapsulating for `addr`.
    pub fn remove_local(&self, addr: IpAddr) -> Result<(), LbError> {
        let k = key(addr);
        match self.addrs.delete(bytemuck::bytes_of(&k)) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(map_err("removing a decap address")(e)),
            _ => Ok(()),
        }
    }

    /// Counters, summed over CPUs.
    pub fn stats(&self) -> Result<DecapStats, LbError> {
        let get = |i: u32| -> Result<Counter, LbError> {
            let per_cpu = self
                .counters
                .lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("reading decap counters"))?
                .unwrap_or_default();
            Ok(per_cpu.iter().fold(Counter::default(), |acc, b| {
                let c: xdpg_counter = bytemuck::pod_read_unaligned(&b[..size_of::<xdpg_counter>()]);
                acc + Counter { packets: c.packets, bytes: c.bytes }
            }))
        };
        Ok(DecapStats { decapsulated: get(XDPG_LB_DECAP_DONE)?, passed: get(XDPG_LB_DECAP_PASSED)? })
    }

    /// The interfaces it is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.links.lock().expect("not poisoned").iter().map(|l| l.attachment.clone()).collect()
    }

    /// The program's fd.
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// Runs the program on one frame through `BPF_PROG_TEST_RUN`.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        let out = sys::prog_test_run(self.program.as_fd(), frame, None, 1, 0)
            .map_err(|source| LoadError::Bpf { op: "BPF_PROG_TEST_RUN".into(), source })?;
        Ok(TestRun {
            action: XdpAction::from(out.retval),
            frame: out.data_out,
            duration: std::time::Duration::from_nanos(u64::from(out.duration_ns)),
        })
    }
}
