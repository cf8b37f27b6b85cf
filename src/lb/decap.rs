//! [`Decap`]: the backend side of IPIP mode, for hosts that cannot (or
//! would rather not) run the kernel's ipip/ip6_tunnel modules.

use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use super::hash::{addr_words, family_code};
use super::layout::decap_skel::DecapSkelBuilder;
use super::layout::{decap, xdpg_decap_config, xdpg_decap_key};
use super::maps::map_err;
use super::state::ip_from_words;
use crate::core::attach::{Attachment, Interface};
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::{program_maps, Hash, Mmapped, PerCpu, ProgramMaps};
use crate::core::pinned::{facade, placement_methods, Kind, LoadPlan, Pinned, Placement, ProgramKind};
use crate::core::testrun::TestRun;
use crate::error::{Error, LbError};
use crate::{AttachMode, Counter};

program_maps! {
    /// The decapsulator's maps.
    pub(crate) struct DecapMaps {
        config cfg: Mmapped<xdpg_decap_config> = names::XDPG_DECAP_CFG,
        locals: Hash<xdpg_decap_key, u32> = names::XDPG_DECAP_ADDR,
        counters: PerCpu<decap::xdpg_counter> = names::XDPG_DECAP_CNT,
    }
}

/// The decapsulator, as the core drives it: no model, nothing to repair.
pub(crate) struct DecapKind;

impl ProgramKind for DecapKind {
    const KIND: &'static Kind = &Kind {
        name: "decapsulator",
        program: names::XDPG_DECAP,
        maps: DecapMaps::NAMES,
        magic: XDPG_LB_DECAP_MAGIC,
        layout_version: XDPG_LB_DECAP_LAYOUT_VERSION,
        cli: "xdpguard-lb decap",
        needs: "a BPF feature the decapsulator needs (BPF links for XDP)",
        min_kernel: "5.9 or later",
        within: None,
    };
    type Maps = DecapMaps;
    type Model = ();
    type Error = LbError;

    const REHEARSAL: &'static [&'static str] = &[names::XDPG_DECAP_ADDR, names::XDPG_DECAP_CNT];

    fn load_model(_maps: &DecapMaps) -> Result<(), LbError> {
        Ok(())
    }
}

/// An XDP decapsulator: IPv4-in-IPv4, IPv6-in-IPv6 and IPv4-in-IPv6
/// packets addressed to one of its local addresses lose their outer header
/// and reach the stack as the inner packet (whose destination, the VIP, the
/// host holds on a loopback interface), when the outer packet holds a whole
/// inner one (its header, and its own length, within the outer payload).
/// Everything else passes untouched.
/// Dropping an unpinned one detaches it; a pinned one (see
/// [`DecapBuilder::pin`]) keeps running after its process exits, so a
/// backend needs no resident agent.
///
/// Requires Linux 5.9 or later (BPF links for XDP; tested on 6.18), and
/// CAP_BPF plus CAP_NET_ADMIN (or root).
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
    core: Pinned<DecapKind>,
}

facade!(Decap, DecapKind, public);

/// Builds a [`Decap`].
#[derive(Debug, Clone, Default)]
pub struct DecapBuilder {
    place: Placement,
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
    placement_methods!("decapsulator", "Decap::open_pinned");

    /// Adds a local tunnel endpoint: outer destinations to decapsulate for.
    pub fn local(mut self, addr: IpAddr) -> Self {
        self.locals.push(addr);
        self
    }

    /// Loads without attaching (for [`Decap::test_run`]).
    ///
    /// # Errors
    ///
    /// [`LoadError`](crate::LoadError)s when the kernel refuses the program
    /// or its maps (missing privileges first); [`PinError`](crate::PinError)s
    /// for the pin directory; [`LbError::Map`] when a local address cannot
    /// be added.
    pub fn load(self) -> Result<Decap, Error> {
        self.build(false)
    }

    /// Loads and attaches to every interface given. If any step fails,
    /// nothing is left attached or pinned.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), and [`AttachError`](crate::AttachError)s:
    /// no interface given, an interface not found, another XDP program
    /// there, a mode the driver cannot do.
    pub fn attach(self) -> Result<Decap, Error> {
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<Decap, Error> {
        let targets = self.place.targets(attach)?;
        Pinned::create(&self.place, targets, || {
            let core = Pinned::load(DecapSkelBuilder::default(), &LoadPlan::default(), |_| {})?;
            let decap = Decap { core };
            decap.add_locals(&self.locals)?;
            Ok(decap)
        })
    }
}

/// Refuses a local tunnel endpoint no outer packet is addressed to: an
/// address `types::unusable` names, or an IPv4-mapped IPv6 one (the LB
/// sends IPv4 outer headers to the IPv4 address, so the mapped key never
/// matches). Also what a configuration file is checked with.
pub(crate) fn check_local(addr: IpAddr) -> Result<(), LbError> {
    if let Some(why) = super::types::unusable(addr) {
        return Err(LbError::Unsupported {
            what: format!("decapsulating for local endpoint {addr}, {why}"),
            fix: "give the backend host's address the LB sends tunnel packets to",
        });
    }
    if let Some(v4) = super::types::ipv4_mapped(addr) {
        return Err(LbError::Ipv4Mapped { what: format!("local endpoint {addr}"), as_ipv4: v4.to_string() });
    }
    Ok(())
}

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
    ///
    /// # Errors
    ///
    /// [`PinError`](crate::PinError)s: nothing pinned there, not a
    /// decapsulator, pinned by an xdpguard with another layout (one from
    /// before decapsulators had a config map too), bpffs not mounted;
    /// [`LoadError::MissingPrivileges`](crate::LoadError::MissingPrivileges).
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<Decap, Error> {
        Ok(Decap { core: Pinned::open_pinned(dir.as_ref())? })
    }

    /// Takes over the decapsulator pinned under `dir` by another xdpguard
    /// build, as [`LoadBalancer::upgrade_pinned`](crate::LoadBalancer::upgrade_pinned)
    /// does: its local addresses and counters stay, its program is replaced
    /// on every interface at once.
    ///
    /// # Errors
    ///
    /// As [`Filter::upgrade_pinned`](crate::Filter::upgrade_pinned).
    pub fn upgrade_pinned(dir: impl AsRef<Path>) -> Result<(Decap, crate::UpgradeReport), Error> {
        let (core, report) = Pinned::upgrade(dir.as_ref(), DecapSkelBuilder::default())?;
        Ok((Decap { core }, report))
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.core.program.pin_path()
    }

    /// Detaches from every interface and removes every pin.
    ///
    /// # Errors
    ///
    /// [`AttachError::Bpf`](crate::AttachError::Bpf) or
    /// [`PinError`](crate::PinError) when the kernel or bpffs refuse, for
    /// the first interface that fails.
    pub fn unpin(self) -> Result<(), Error> {
        self.core.running().unpin()
    }

    /// The local tunnel endpoints it decapsulates for.
    pub fn locals(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> =
            self.core.maps.locals.keys().filter_map(|k| ip_from_words(k.family, k.addr)).collect();
        out.sort();
        out
    }

    /// Decapsulates tunnel packets addressed to `addr` from the next packet on.
    ///
    /// # Errors
    ///
    /// [`LbError::Unsupported`] for an address no tunnel packet is sent to
    /// (unspecified, loopback, multicast, broadcast), [`LbError::Ipv4Mapped`]
    /// for an IPv4-mapped IPv6 one (tunnels to it are IPv4 packets: give
    /// the IPv4 address); [`LbError::DecapFull`] when it holds 64 addresses
    /// already (adding one it holds changes nothing); [`LbError::Map`] when
    /// the address map cannot be written.
    pub fn add_local(&self, addr: IpAddr) -> Result<(), LbError> {
        check_local(addr)?;
        let locals = &self.core.maps.locals;
        let capacity = locals.capacity() as usize;
        let held = self.locals();
        if !held.contains(&addr) && held.len() >= capacity {
            return Err(LbError::DecapFull { capacity });
        }
        locals.insert(&key(addr), &1, libbpf_rs::MapFlags::ANY).map_err(map_err(format!("adding decap address {addr}")))
    }

    /// Decapsulates for every address of `addrs` (those it holds already
    /// are kept as they are), or for none of them: each is checked, and the
    /// room for them, before the first is added, and a write that fails
    /// takes back those added before it. Returns the addresses added.
    ///
    /// # Errors
    ///
    /// As [`add_local`](Self::add_local), for the first address refused;
    /// nothing was changed.
    pub fn add_locals(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, LbError> {
        for &a in addrs {
            check_local(a)?;
        }
        let held = self.locals();
        let mut new: Vec<IpAddr> = addrs.iter().copied().filter(|a| !held.contains(a)).collect();
        new.sort();
        new.dedup();
        let locals = &self.core.maps.locals;
        let capacity = locals.capacity() as usize;
        if held.len() + new.len() > capacity {
            return Err(LbError::DecapFull { capacity });
        }
        for (n, &a) in new.iter().enumerate() {
            if let Err(e) = locals.insert(&key(a), &1, libbpf_rs::MapFlags::ANY) {
                for &done in &new[..n] {
                    // Best effort: the write that failed is the error reported.
                    let _ = locals.remove(&key(done));
                }
                return Err(map_err(format!("adding decap address {a}"))(e));
            }
        }
        Ok(new)
    }

    /// Stops decapsulating for `addr`.
    ///
    /// # Errors
    ///
    /// [`LbError::DecapLocalNotFound`] when it does not decapsulate for
    /// `addr` (nothing changed), as removing an unknown VIP or backend is
    /// refused; [`LbError::Map`] when the address map cannot be written.
    pub fn remove_local(&self, addr: IpAddr) -> Result<(), LbError> {
        match self.core.maps.locals.remove(&key(addr)).map_err(map_err("removing a decap address"))? {
            true => Ok(()),
            false => Err(LbError::DecapLocalNotFound { addr, locals: self.locals() }),
        }
    }

    /// Counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// [`LbError::Map`] when the counters cannot be read.
    pub fn stats(&self) -> Result<DecapStats, LbError> {
        let get = |i: u32| self.core.maps.counters.sum(i).map(Counter::from).map_err(map_err("reading decap counters"));
        Ok(DecapStats { decapsulated: get(XDPG_LB_DECAP_DONE)?, passed: get(XDPG_LB_DECAP_PASSED)? })
    }

    /// The interfaces it is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.core.running().attachments()
    }

    /// The attachments lost since the decapsulator was attached: their interface
    /// was deleted (or the kernel otherwise took the program off it), as
    /// the pins recorded them (name, mode, the old index). Kept, so an
    /// agent or `status` can say where the decapsulator no longer runs, until it
    /// is attached to an interface of that name again (the usual repair
    /// after an interface is made again), detached from that name, or
    /// unpinned. Reading them costs one `bpf()` call per attachment.
    pub fn lost_attachments(&self) -> Vec<Attachment> {
        self.core.running().lost()
    }

    /// Attaches to one more interface (pinning the link if pinned).
    ///
    /// # Errors
    ///
    /// [`AttachError`](crate::AttachError)s: the interface not found,
    /// another XDP program there, a mode the driver cannot do;
    /// [`PinError`](crate::PinError) when the link cannot be pinned.
    pub fn attach(&self, iface: impl Into<Interface>, mode: AttachMode) -> Result<Attachment, Error> {
        self.core.running().attach(&iface.into(), mode)
    }

    /// Detaches from one interface.
    /// An attachment [lost](Self::lost_attachments) on an interface of
    /// that name (or index) is forgotten too: detaching by name after the
    /// interface was deleted leaves nothing of the program there.
    ///
    /// # Errors
    ///
    /// [`AttachError::NotAttached`](crate::AttachError::NotAttached)
    /// when not attached there; [`AttachError::Bpf`](crate::AttachError::Bpf),
    /// [`PinError`](crate::PinError) when the kernel or bpffs refuse.
    pub fn detach(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        self.core.running().detach(&iface.into())
    }

    /// The program's fd.
    ///
    /// The program that runs now: after an upgrade (`upgrade_pinned`, by
    /// this or any process) of a pinned one, the new program, also through
    /// a handle opened before it. An fd handed out earlier stays open (and
    /// names the old program) while the handle lives.
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.core.running().fd()
    }

    /// The program's kernel id (as `bpftool prog` shows it).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`](crate::LoadError::Bpf) when the kernel does not
    /// answer about the program.
    pub fn program_id(&self) -> Result<u32, Error> {
        self.core.running().id()
    }

    /// Runs the program on one frame through `BPF_PROG_TEST_RUN`.
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`](crate::LoadError::Bpf) when the kernel refuses
    /// the run.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.core.running().test_run(frame, None)
    }
}
