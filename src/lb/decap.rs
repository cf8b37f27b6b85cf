//! [`Decap`]: the backend side of IPIP mode, for hosts that cannot (or
//! would rather not) run the kernel's ipip/ip6_tunnel modules.

use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};

use super::hash::{addr_words, family_code};
use super::layout::decap_skel::DecapSkelBuilder;
use super::layout::xdpg_decap_key;
use super::maps::map_err;
use super::state::ip_from_words;
use crate::core::attach::{Attachment, Interface};
use crate::error::{missing_privileges, AttachError, Error, LbError, LoadError};
use crate::core::layout::consts::*;
use crate::core::maps::{load_err, program_fd, MapSet};
use crate::core::pin::PinDir;
use crate::core::program::{self, XdpProgram};
use crate::Counter;
use crate::core::testrun::TestRun;
use crate::AttachMode;

/// An XDP decapsulator: IPv4-in-IPv4, IPv6-in-IPv6 and IPv4-in-IPv6
/// packets addressed to one of its local addresses lose their outer header
/// and reach the stack as the inner packet (whose destination, the VIP, the
/// host holds on a loopback interface). Everything else passes untouched.
/// Dropping an unpinned one detaches it; a pinned one (see
/// [`DecapBuilder::pin`]) keeps running after its process exits, so a
/// backend needs no resident agent. Requires Linux 5.9 (BPF links for XDP).
///
/// ```no_run
/// use xdpguard::Decap;
/// let decap = Decap::builder()
///     .interface("eth0")
///     .local("198.51.100.11".parse()?)
///     .pin("/sys/fs/bpf/xdpguard-decap")
///     .attach()?;
/// println!("{:?}", decap.stats()?);
/// // Later, from any process:
/// let again = Decap::open_pinned("/sys/fs/bpf/xdpguard-decap")?;
/// again.unpin()?;                      // detach and remove the pins
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Decap {
    maps: MapSet,
    program: XdpProgram,
}

program::impl_pinnable!(Decap, maps);

/// Builds a [`Decap`].
#[derive(Debug, Clone, Default)]
pub struct DecapBuilder {
    interfaces: Vec<Interface>,
    mode: AttachMode,
    locals: Vec<IpAddr>,
    pin: Option<PathBuf>,
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

    /// Pins the program, its maps and its links under `dir` (on bpffs; the
    /// directory must not exist or be empty), so the decapsulator outlives
    /// this process. [`Decap::open_pinned`] reopens it.
    pub fn pin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pin = Some(dir.into());
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
        let interfaces: &[Interface] = if attach { &self.interfaces } else { &[] };
        program::create(self.pin.as_deref(), KIND, MARKER, interfaces, self.mode, || {
            let mut storage = MaybeUninit::uninit();
            let open = DecapSkelBuilder::default().open(&mut storage).map_err(load_err("opening the decap object"))?;
            let skel =
                open.load().map_err(|e| LoadError::Rejected { program: PROGRAM_NAME, message: format!("{e:#}") })?;
            let maps = MapSet::from_object(skel.object(), MAPS)?;
            let program = XdpProgram::new(program_fd(skel.object(), PROGRAM_NAME)?, PROGRAM_NAME);
            drop(skel);
            let decap = Decap { maps, program };
            for a in &self.locals {
                decap.add_local(*a)?;
            }
            Ok(decap)
        })
    }
}

const PROGRAM_NAME: &str = "xdpg_decap";
/// The maps, pinned under these names; the first marks a decap pin directory.
const MAPS: &[&str] = &["xdpg_decap_addr", "xdpg_decap_cnt"];
const MARKER: &str = "xdpg_decap_addr";
const KIND: &str = "decapsulator";

fn key(addr: IpAddr) -> xdpg_decap_key {
    xdpg_decap_key { addr: addr_words(addr), family: family_code(addr), pad: [0; 3] }
}

impl Decap {
    /// Starts building a decapsulator.
    pub fn builder() -> DecapBuilder {
        DecapBuilder::default()
    }

    /// Reopens a decapsulator pinned under `dir`, with its local addresses
    /// and counters, still attached wherever it was.
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<Decap, Error> {
        let dir = PinDir::open(dir.as_ref(), KIND, MARKER)?;
        if let Some(missing) = missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let maps = MapSet::open_pinned(&dir, MAPS)?;
        let program = XdpProgram::open_pinned(dir, PROGRAM_NAME)?;
        Ok(Decap { maps, program })
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.program.pin_path()
    }

    /// Detaches from every interface and removes every pin.
    pub fn unpin(self) -> Result<(), Error> {
        self.program.unpin()
    }

    /// The local tunnel endpoints it decapsulates for.
    pub fn locals(&self) -> Vec<IpAddr> {
        let map = self.maps.get("xdpg_decap_addr");
        let mut out = Vec::new();
        for k in map.keys() {
            let key: xdpg_decap_key = bytemuck::pod_read_unaligned(&k);
            out.extend(ip_from_words(key.family, key.addr));
        }
        out.sort();
        out
    }

    /// Decapsulates tunnel packets addressed to `addr` from the next packet on.
    pub fn add_local(&self, addr: IpAddr) -> Result<(), LbError> {
        let k = key(addr);
        self.maps
            .get("xdpg_decap_addr")
            .update(bytemuck::bytes_of(&k), &1u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err(format!("adding decap address {addr}")))
    }

    /// Stops decapsulating for `addr`.
    pub fn remove_local(&self, addr: IpAddr) -> Result<(), LbError> {
        let k = key(addr);
        match self.maps.get("xdpg_decap_addr").delete(bytemuck::bytes_of(&k)) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => Err(map_err("removing a decap address")(e)),
            _ => Ok(()),
        }
    }

    /// Counters, summed over CPUs.
    pub fn stats(&self) -> Result<DecapStats, LbError> {
        let get = |i: u32| {
            self.maps.counter("xdpg_decap_cnt", i).map_err(|source| LbError::Map {
                op: "reading decap counters".into(),
                source,
                hint: super::maps::MAP_HINT,
            })
        };
        Ok(DecapStats { decapsulated: get(XDPG_LB_DECAP_DONE)?, passed: get(XDPG_LB_DECAP_PASSED)? })
    }

    /// The interfaces it is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.program.attachments()
    }

    /// The program's fd.
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.program.fd()
    }

    /// Runs the program on one frame through `BPF_PROG_TEST_RUN`.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.program.test_run(frame, None)
    }
}
