//! [`LoadBalancer`]: the XDP L4 load balancer, and [`Decap`], the
//! backend-side IPIP decapsulator. Its rooms:
//!
//! - `builder.rs`: [`LoadBalancerBuilder`], which loads it through the core
//!   ([`Pinned`]); `maps.rs`: its maps and config; `layout.rs`: the shared
//!   structs and their compile-time checks; `types.rs`: the API's types.
//! - `state.rs`: the model (VIPs, backends, tables) read back from the
//!   maps; `vips.rs`: adding and removing VIPs; `batch.rs`: backend
//!   changes and the Maglev batch edit; `maglev.rs`: the tables.
//! - `flows.rs`: where a flow goes (`hash.rs`: the data plane's hash);
//!   `settings.rs` and `policies.rs`: policies and timeouts; `stats.rs`: counters;
//!   `hops.rs` and `neigh.rs`: backends' next hops; `health.rs`: whether it
//!   serves (the BGP health hook).
//! - `decap.rs`: [`Decap`], a second program over the same core.
//! - `health_check/`: backend health checks (feature `health`), on the public API.

mod batch;
mod builder;
mod conntrack;
mod decap;
pub(crate) mod digest;
mod flows;
pub(crate) mod hash;
mod health;
#[cfg(feature = "health")]
pub mod health_check;
mod hops;
pub(crate) mod layout;
pub(crate) mod maglev;
mod maps;
mod neigh;
mod policies;
mod route_probe;
mod settings;
mod state;
mod stats;
mod types;
mod vips;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::core::attach::{Attachment, Interface};
use crate::core::chain;
use crate::core::layout::consts::*;
use crate::core::layout::names;
use crate::core::maps::ProgramMaps;
use crate::core::pinned::{facade, CopyPass, Kind, Migration, Pinned, ProgramKind};
use crate::core::testrun::TestRun;
use crate::error::{Error, LbError};
use crate::AttachMode;

pub use crate::core::chain::ChainedFrom;
pub use batch::BackendBatch;
#[cfg_attr(not(feature = "config"), allow(unused_imports))]
pub(crate) use batch::{check_backend, check_nat_backend};
pub use builder::LoadBalancerBuilder;
#[cfg_attr(not(feature = "config"), allow(unused_imports))]
pub(crate) use decap::check_local as check_decap_local;
#[cfg_attr(not(feature = "config"), allow(unused_imports))]
pub use decap::{Decap, DecapBuilder, DecapStats};
pub use digest::{Digest, LbDigest};
pub use health::{ForwardingOff, Health, Unredirected, Unrouted};
pub use neigh::NEIGH_PROTOCOL;
pub use policies::{EchoPolicy, FragmentPolicy, NewFlowLimit, OptionsPolicy};
#[cfg_attr(not(feature = "config"), allow(unused_imports))]
pub(crate) use settings::check_ipip_source;
pub use stats::{BackendStats, LbDrops, LbStats, VipReport, VipStats};
pub use types::{
    Backend, BackendAddr, BackendState, Flow, ForwardingMode, HashInput, NeighbourState, NextHop, Protocol, Vip,
    VipConfig, DEFAULT_TABLE_SIZE, MAX_TABLE_SIZE, MAX_WEIGHT, MIN_TABLE_SIZE,
};
#[cfg_attr(not(feature = "config"), allow(unused_imports))]
pub(crate) use vips::check_vip;

use maps::{map_err, LbMaps};
use state::LbState;

/// Default number of VIPs.
pub const DEFAULT_MAX_VIPS: u32 = XDPG_LB_DEFAULT_MAX_VIPS;
/// Default number of backends, over all VIPs.
pub const DEFAULT_MAX_BACKENDS: u32 = XDPG_LB_DEFAULT_MAX_BACKENDS;
/// Default connection-table entries per address family (also the NAT reply tables').
pub const DEFAULT_CONNECTIONS: u32 = XDPG_LB_DEFAULT_CONNECTIONS;
/// Default UDP idle timeout.
pub const DEFAULT_UDP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a CPU reuses a backend's next hop from the FIB.
pub const DEFAULT_NEXT_HOP_CACHE: Duration = Duration::from_millis(100);

/// An XDP L4 load balancer: VIPs, weighted Maglev backend selection,
/// connection tracking, and L2 DSR, IPIP or NAT forwarding per VIP, with
/// next hops from the kernel FIB.
///
/// Attach it on its own with [`LoadBalancer::builder`], or chain it behind
/// a [`Filter`](crate::Filter) with `filter.set_next(lb.program_fd())`.
/// Pinned, it keeps balancing after the process exits and
/// [`LoadBalancer::open_pinned`] reopens it (the `xdpguard-lb` tool,
/// feature `cli`, does).
///
/// The LB host must forward (`net.ipv4.ip_forward=1`,
/// `net.ipv6.conf.all.forwarding=1`): the FIB lookup refuses otherwise, and
/// the packets go to the stack (counted as `passed_no_route`), and
/// [`LoadBalancer::health`] says it is not serving
/// ([`Health::forwarding_off`], exit code 7). A new network namespace
/// starts with forwarding off.
///
/// | mode | IPv4 VIP | IPv6 VIP | backend port |
/// |---|---|---|---|
/// | [`ForwardingMode::L2Dsr`] | IPv4 backends | IPv6 backends | the VIP's |
/// | [`ForwardingMode::Ipip`] | IPv4 (IPIP) or IPv6 (IPv4-in-IPv6) backends | IPv6 backends | the VIP's |
/// | [`ForwardingMode::Nat`] | IPv4 backends | IPv6 backends | any (or the VIP's; none on all-ports VIPs), see [`ForwardingMode::Nat`] |
///
/// What happens to every packet, and which counter ([`LbStats`]) says so:
/// - Not for a VIP: passed untouched (`passed_non_vip`). So are
///   VLAN-tagged frames (the egress may not carry the tag), non-IP frames,
///   IP protocols other than TCP, UDP and ICMP, and IPv6 packets whose
///   transport header lies beyond 8 extension headers.
/// - Bad or truncated L2/L3/L4 headers: passed untouched
///   (`passed_malformed`). Truncated by the frame's end or by the packet's
///   own IP length (IPv4 total length, IPv6 40 + payload length): headers
///   after the IP header are read up to the IP packet's end only. Bytes
///   after it (Ethernet padding of a short frame, or anything a sender
///   appended) are not part of the packet: a forwarded packet carries them
///   along untouched after it (an IPIP outer header's length comes from the
///   inner packet's, so they sit after the outer packet), which costs no
///   helper call, and receivers read the IP length (a NIC pads a short
///   frame again anyway). An IPv6 payload length of 0 is a 40-byte packet,
///   and with a hop-by-hop header it claims a jumbogram, which no link XDP
///   runs on can carry: malformed.
/// - A TCP/UDP packet is for the VIP of its destination address, port and
///   protocol, else for the all-ports VIP of its address and protocol,
///   whose backend then depends on the destination port too (it is
///   hashed; see [`LoadBalancer::vip_for`] and [`LoadBalancer::backend_for`]).
/// - A tracked flow keeps its backend while that backend exists (also
///   when it is drained or others come and go); a TCP SYN (without ACK)
///   chooses afresh; a UDP flow idle for longer than the UDP timeout too.
///   New entries per CPU are bounded ([`NewFlowLimit`]); flows over the
///   bound are forwarded by Maglev without an entry, except a NAT VIP's:
///   their replies could not be translated back without one, so their
///   packets are dropped ([`LbDrops::nat_untracked`]) and the client
///   retries; size the bound for NAT.
/// - Fragments, IPv4 options and ICMP echo follow [`FragmentPolicy`],
///   [`OptionsPolicy`] and [`EchoPolicy`]; the echo policy covers every
///   VIP address, whatever its VIPs' ports and protocols.
/// - ICMP errors: IPv4 destination unreachable (type 3, every code,
///   "fragmentation needed" among them), ICMPv6 destination unreachable
///   (type 1) and packet too big (type 2), sent to a VIP address about a
///   TCP or UDP packet that address sent (the quote must hold its ports,
///   within the error's own IP length: not a later fragment, no IPv6
///   extension headers), go to the backend of the
///   flow they quote (its tracked backend, else Maglev's), translated for
///   NAT (`icmp_forwarded`); and those about a packet a NAT backend
///   received go back to its client, translated (`nat_replies`). These are
///   the errors a sender's stack acts on for a flow: path MTU discovery
///   (without it a backend's large replies are black-holed) and
///   unreachable destinations (connection attempts fail at once instead of
///   timing out). Every other ICMP message is passed to the LB host's stack
///   (`passed_non_vip`): time exceeded (a routing loop, or traceroute's
///   answers) and parameter problem change nothing for an established TCP
///   connection (Linux keeps them as soft errors, reported only to sockets
///   that set `IP_RECVERR`), so delivering them would cost a connection
///   lookup, and for NAT a rewrite, per message for nothing; redirects and
///   source quench are not about a flow at all.
/// - Too big for the egress after encapsulation: dropped and counted, and
///   an ICMP "fragmentation needed" (IPv4 with DF, not ICMP) or "packet
///   too big" (IPv6, not ICMPv6) goes back to the sender, from the address
///   the packet was sent to, with the MTU left after encapsulation, so its
///   path MTU discovery adapts (`drop_mtu`, `too_big_sent`; ICMP errors the
///   LB forwards are dropped without an answer). No resolved neighbour
///   for the next hop: through the stack (see below, `passed_no_neighbour`).
/// - Answers (echo replies, "too big" messages) go back to the frame's
///   source MAC from its destination MAC, so only when both are unicast: a
///   frame from or to a multicast or broadcast MAC gets none (an echo is
///   dropped as `drop_echo`; a packet too big is dropped, `drop_mtu`).
/// - Forwarded out of the receiving interface (`XDP_TX`, `tx`) or another
///   one (`XDP_REDIRECT`, `redirected`), with the next hop's MAC as
///   destination and the egress interface's as source.
///
/// # Next hops and neighbours
///
/// The data plane forwards in XDP only to a next hop whose neighbour (MAC)
/// the kernel has resolved. So the library keeps every configured backend's
/// next hop (the backend on its link, or the gateway the kernel routes it
/// through) resolved with a *managed* neighbour entry, created when the
/// backend is added (or the LB reopened, attached or detached, or
/// [`LoadBalancer::refresh_neighbours`] called) and removed when no backend
/// uses that next hop any more. The next hops are the data plane's own
/// route lookup's, asked as for a packet received on each interface the LB
/// receives on (so `ip rule iif` policy routing and VRFs count); while it
/// receives nowhere, the main table's. The
/// kernel resolves a managed entry at once and re-probes it by itself, so a
/// VIP works from its first connection. Entries the library did not create
/// (a permanent one an operator made) are never changed or removed. This
/// happens in the network namespace the LB was loaded in, whichever thread
/// calls. Kernel: Linux 5.16 or later for managed entries (tested on
/// 6.18); older kernels do not know the flag (not tested here), and the
/// data path below then resolves next hops from traffic.
///
/// When a packet finds no resolved neighbour all the same (after `ip neigh
/// flush`, which also removes managed entries, or a route change) it goes
/// through the LB host's stack, which resolves the neighbour on the way:
/// IPIP and NAT packets already rewritten (the stack forwards them by the
/// backend address; the first packet waits in the neighbour's queue and is
/// not lost), L2 DSR packets as a small probe towards the backend (an ICMP
/// echo reply from the client, which the backend ignores; the client's
/// packet itself is lost, so a SYN is retransmitted after 1 s). Delivery is
/// back in XDP as soon as the neighbour is resolved, plus at most the
/// next-hop cache time; the managed entries themselves come back at the
/// next backend change, reopen or `refresh_neighbours`. Counted per backend
/// ([`BackendStats::no_neighbour`]) and globally (`passed_no_neighbour`);
/// [`BackendStats::next_hop`] shows the state. The stack's forwarding rules
/// apply to those packets: IPIP outer sources must pass the ingress
/// interface's `rp_filter` (0, or 2 with a route to the source prefix),
/// and a firewall must let them through (a conntrack `INVALID` drop would
/// stop the DSR probe).
///
/// # Requirements
///
/// Linux 5.15 or later with BTF (tested on 6.18), and CAP_BPF plus
/// CAP_NET_ADMIN (or root). Keeping backends' next hops resolved before
/// their first packet needs Linux 5.16 (managed neighbour entries; see
/// below); older kernels resolve them from traffic. Managing an LB loaded
/// in another network namespace than the calling thread's also needs
/// CAP_SYS_ADMIN, to enter it (`setns`): without it backend changes fail
/// with [`LbError::NamespaceNotEntered`](crate::LbError::NamespaceNotEntered),
/// [`add_vip`](LoadBalancer::add_vip) with
/// [`LbError::LocalAddressesUnknown`](crate::LbError::LocalAddressesUnknown)
/// (nothing changed), and next hops read as unknown.
///
/// ```no_run
/// use xdpguard::{ForwardingMode, LoadBalancer, Vip, VipConfig};
///
/// let lb = LoadBalancer::builder().interface("eth0").attach()?;
/// let vip = Vip::tcp("203.0.113.10:80".parse()?);
/// lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr))?;
/// lb.add_backend(&vip, "198.51.100.11".parse::<std::net::IpAddr>()?, 1)?;
/// lb.add_backend(&vip, "198.51.100.12".parse::<std::net::IpAddr>()?, 2)?;
/// println!("{:?}", lb.vip_stats(&vip)?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LoadBalancer {
    core: Pinned<LbKind>,
    /// The network namespace the LB was loaded in (None: reopened from a
    /// thread that can neither see nor find it).
    netns: Option<OwnedFd>,
    /// The data plane's route lookup, asked from user space.
    probe: route_probe::ProbeCache,
}

/// The load balancer, as the core drives it.
pub(crate) struct LbKind;

impl ProgramKind for LbKind {
    const KIND: &'static Kind = &Kind {
        name: "load balancer",
        program: names::XDPG_LB,
        maps: LbMaps::NAMES,
        magic: XDPG_LB_MAGIC,
        layout_version: XDPG_LB_LAYOUT_VERSION,
        cli: "xdpguard-lb",
        needs: "a BPF feature the load balancer needs (map-in-map with BPF_F_INNER_MAP, DEVMAP_HASH)",
        min_kernel: "5.15 or later with BTF",
        within: None,
    };
    type Maps = LbMaps;
    type Model = LbState;
    type Error = LbError;

    const REHEARSAL: &'static [&'static str] = &[names::XDPG_LB_CONNS4, names::XDPG_LB_CONNS6, names::XDPG_LB_CNT];

    /// Layout 3 kept IPv4 connections in a kernel LRU hash: the table is
    /// recreated as lines (`conntrack`) and filled from it.
    fn migration(from: u32) -> Option<Migration<LbMaps>> {
        (from == 3).then_some(Migration {
            added: &[],
            changed: &[names::XDPG_LB_CONNS4],
            size: |name, n| if name == names::XDPG_LB_CONNS4 { conntrack::lines_for(n) } else { n },
            copy: |old, maps, pass| match pass {
                CopyPass::BeforeSwap => conntrack::adopt_lru(old, maps),
                CopyPass::AfterSwap => Ok(()),
            },
        })
    }

    fn load_model(maps: &LbMaps) -> Result<LbState, LbError> {
        LbState::load(maps)
    }

    /// Every table is republished from the backend slots, which are written
    /// before tables reference them; backend slots of no VIP are freed (a
    /// `remove_vip` that died after removing the VIP but before freeing its
    /// backends left them, and a VIP added later in the same VIP slot would
    /// otherwise take them over: found by tests/config_apply.rs killing
    /// `xdpguard apply`).
    fn repair(maps: &LbMaps, st: &mut LbState) -> Result<(), LbError> {
        let used: std::collections::HashSet<u32> =
            st.vips.values().flat_map(|vs| vs.backends.values().map(|s| s.id)).collect();
        maps.free_backends(
            (0..maps.backends.len() as u32)
                .filter(|&id| maps.backends.get(id as usize).family != 0 && !used.contains(&id)),
        );
        for vs in st.vips.values_mut() {
            let table = vs.table();
            maps.publish_table(vs.index, table.as_deref().map(|t| t.as_slice()))?;
        }
        Ok(())
    }

    /// Only map operations fail after an edit's writes began.
    fn repair_after(err: &LbError) -> bool {
        matches!(err, LbError::Map { .. })
    }
}

facade!(LoadBalancer, LbKind, public);

impl LoadBalancer {
    /// Starts building a load balancer.
    pub fn builder() -> LoadBalancerBuilder {
        LoadBalancerBuilder::default()
    }

    /// Reopens a load balancer pinned under `dir`, with its VIPs, backends,
    /// connections and counters, still attached wherever it was.
    ///
    /// It finds the network namespace the LB was loaded in (the calling
    /// thread's, or one named under `/run/netns`) and re-creates the
    /// managed neighbour entries of its backends' next hops that are
    /// missing (e.g. after `ip neigh flush`), as
    /// [`LoadBalancer::refresh_neighbours`] does. A failure there is not an
    /// error here (the data path resolves next hops from traffic meanwhile):
    /// call `refresh_neighbours` to see it.
    ///
    /// # Errors
    ///
    /// [`PinError`](crate::PinError)s: nothing pinned there, not a load
    /// balancer, pinned by an xdpguard with another layout, bpffs not
    /// mounted; [`LoadError::MissingPrivileges`](crate::LoadError::MissingPrivileges);
    /// [`LbError::Map`] when its configuration cannot be read back or
    /// repaired.
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<LoadBalancer, Error> {
        let core: Pinned<LbKind> = Pinned::open_pinned(dir.as_ref())?;
        let netns = neigh::find(core.maps.netns());
        let lb = LoadBalancer { core, netns, probe: Default::default() };
        let _ = lb.refresh_neighbours();
        Ok(lb)
    }

    /// Takes over the load balancer pinned under `dir` by another xdpguard
    /// build (an older version): its VIPs, backends, Maglev tables,
    /// connection and NAT tables, next hops and counters stay, and its
    /// program is replaced by this build's on every interface at once
    /// (`BPF_LINK_UPDATE`), so no packet goes unbalanced and every tracked
    /// connection keeps its backend. Pins of the same layout are reused as
    /// they are; an older layout is migrated when this build knows how,
    /// else refused before anything changes. A filter that chains into it
    /// (`Filter::set_next`, found by [`chained_from`](Self::chained_from))
    /// is given the new program too, in its next-program slot
    /// ([`UpgradeReport::rechained`](crate::UpgradeReport::rechained); one
    /// whose slot refuses it is in
    /// [`UpgradeReport::not_rechained`](crate::UpgradeReport::not_rechained),
    /// not an error: the upgrade is done by then).
    ///
    /// Requires Linux 5.9 or later (the LB itself needs 5.15).
    ///
    /// # Errors
    ///
    /// As [`open_pinned`](Self::open_pinned), and
    /// [`PinError::NoMigration`](crate::PinError::NoMigration),
    /// [`PinError::UpgradeRefused`](crate::PinError::UpgradeRefused), the
    /// [`LoadError`](crate::LoadError)s of loading the new program: all
    /// before anything is changed. [`AttachError::Bpf`](crate::AttachError::Bpf)
    /// when an interface refuses the new program (the others are switched
    /// back).
    pub fn upgrade_pinned(dir: impl AsRef<Path>) -> Result<(LoadBalancer, crate::UpgradeReport), Error> {
        let (core, report): (Pinned<LbKind>, _) =
            Pinned::upgrade(dir.as_ref(), layout::lb_skel::LbSkelBuilder::default())?;
        let netns = neigh::find(core.maps.netns());
        let lb = LoadBalancer { core, netns, probe: Default::default() };
        // The upgrade is done: a filter whose slot refuses the new program
        // is reported, not an error that would lose the handle.
        let mut report = report;
        let chains = chain::chained_into(report.old_program_id);
        let failed = chain::rechain(&chains, lb.program_fd());
        report.rechained =
            chains.iter().map(|c| c.program_id).filter(|id| !failed.iter().any(|(f, _)| f == id)).collect();
        report.not_rechained = failed.into_iter().map(|(id, e)| (id, e.to_string())).collect();
        // After the rechaining: the filters chaining into the new program
        // are interfaces it receives on (hops.rs).
        let _ = lb.refresh_neighbours();
        Ok((lb, report))
    }

    pub(crate) fn maps(&self) -> &LbMaps {
        &self.core.maps
    }

    /// Runs `f` on the model, up to date (see [`Pinned::read`]).
    fn read<R>(&self, f: impl FnOnce(&mut LbState) -> R) -> Result<R, LbError> {
        self.core.read(|st, _| f(st))
    }

    /// Runs the edit `f` (see [`Pinned::edit`]).
    fn edit<R>(&self, f: impl FnOnce(&mut LbState, &LbMaps) -> Result<R, LbError>) -> Result<R, LbError> {
        self.core.edit(f)
    }

    /// Attaches to one more interface (pinning the link if the LB is
    /// pinned); it also becomes a redirect target. Already attached there
    /// in `mode` (or asked for auto): does nothing, and returns that
    /// attachment.
    ///
    /// # Errors
    ///
    /// As [`add_redirect_interface`](Self::add_redirect_interface), and
    /// [`AttachError`](crate::AttachError)s (another XDP program there,
    /// this one there in another mode, a mode the driver cannot do);
    /// [`PinError`](crate::PinError) when the link cannot be pinned.
    pub fn attach(&self, iface: impl Into<Interface>, mode: AttachMode) -> Result<Attachment, Error> {
        let iface = iface.into();
        self.add_redirect_interface(iface.clone())?;
        let attached = self.core.running().attach(&iface, mode)?;
        // The next hops now follow the data plane's lookup from there
        // (hops.rs); as on open, a failure is the data path's to live with.
        let _ = self.refresh_neighbours();
        Ok(attached)
    }

    /// Detaches from one interface (it stays a redirect target).
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
        self.core.running().detach(&iface.into())?;
        let _ = self.refresh_neighbours();
        Ok(())
    }

    /// The interfaces the LB is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.core.running().attachments()
    }

    /// The attachments lost since the load balancer was attached: their interface
    /// was deleted (or the kernel otherwise took the program off it), as
    /// the pins recorded them (name, mode, the old index). Kept, so an
    /// agent or `status` can say where the load balancer no longer runs, until it
    /// is attached to an interface of that name again (the usual repair
    /// after an interface is made again), detached from that name, or
    /// unpinned. Reading them costs one `bpf()` call per attachment.
    pub fn lost_attachments(&self) -> Vec<Attachment> {
        self.core.running().lost()
    }

    /// The named network namespace (under `/run/netns`) the LB was loaded
    /// in, when it is not the caller's: where its interfaces are (`status`
    /// shows it; `xdpguard-lb attach` on its pin directory enters it).
    /// `None` in the caller's namespace, or one without a name.
    pub fn netns_name(&self) -> Option<String> {
        neigh::name_of(self.core.maps.netns())
    }

    /// The filters that pass their packets on to this LB
    /// ([`Filter::set_next`](crate::Filter::set_next), a configuration's
    /// `next`), found in the kernel's own lists whoever chained them: each
    /// filter program's id and the interfaces it runs on. A chained LB
    /// serves through them without being attached itself, and would keep
    /// serving, unpinned and out of reach, if it were unpinned while one
    /// still chains it.
    ///
    /// A filter's pin directory ([`ChainedFrom::pin`]) is looked for under
    /// `/sys/fs/bpf` and next to the LB's own (the directories beside it:
    /// a bpffs mounted elsewhere); [`chained_from_near`](Self::chained_from_near)
    /// looks in more places.
    pub fn chained_from(&self) -> Vec<ChainedFrom> {
        self.chained_from_near(&[])
    }

    /// As [`chained_from`](Self::chained_from), also looking for the
    /// filters' pin directories in `near`: each a pin directory (a
    /// configuration's filter `pin`) or a directory holding pin
    /// directories, for filters pinned on a bpffs mounted elsewhere than
    /// `/sys/fs/bpf`, which the search does not reach.
    pub fn chained_from_near(&self, near: &[&Path]) -> Vec<ChainedFrom> {
        let beside = self.pin_path().and_then(Path::parent);
        let near: Vec<&Path> = near.iter().copied().chain(beside).collect();
        self.core.running().id().map(|id| chain::chained_into_near(id, &near)).unwrap_or_default()
    }

    /// The pin directory of the load balancer whose program is
    /// `program_id` (as [`Filter::next_program`](crate::Filter::next_program)
    /// names it): looked for in `near` (pin directories, or directories
    /// holding them) and then under `/sys/fs/bpf` (four levels deep);
    /// `None` when it is not found there, or the program is not an LB.
    pub fn pin_of_program(program_id: u32, near: &[&Path]) -> Option<PathBuf> {
        chain::pin_near(names::XDPG_LB, program_id, near)
    }

    /// Lets the LB send packets out of `iface` (`XDP_REDIRECT` through its
    /// devmap). The FIB decides the egress; an egress not added here makes
    /// the packet go to the stack instead (counted as `passed_no_devmap`).
    ///
    /// # Errors
    ///
    /// [`AttachError::InterfaceNotFound`](crate::AttachError::InterfaceNotFound);
    /// [`LbError::DevmapFull`]; [`LbError::Map`].
    pub fn add_redirect_interface(&self, iface: impl Into<Interface>) -> Result<u32, Error> {
        let (ifindex, _) = iface.into().resolve()?;
        let devmap = &self.maps().devmap;
        devmap.insert(ifindex).map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::E2BIG) {
                Error::from(LbError::DevmapFull { capacity: devmap.capacity() as usize })
            } else {
                map_err(format!("adding interface #{ifindex} to the devmap"))(e).into()
            }
        })?;
        Ok(ifindex)
    }

    /// Stops redirecting out of `iface`.
    ///
    /// # Errors
    ///
    /// [`AttachError::InterfaceNotFound`](crate::AttachError::InterfaceNotFound);
    /// [`LbError::Map`].
    pub fn remove_redirect_interface(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        let (ifindex, _) = iface.into().resolve()?;
        self.maps().devmap.remove(ifindex).map(drop).map_err(|e| map_err("removing a devmap interface")(e).into())
    }

    /// The backends of `vip` the health checker drained and will restore:
    /// at weight 0 with its mark (`XDPG_LB_BACKEND_CHECKER_DRAINED`, which
    /// the checker keeps in step with what it will restore every round).
    /// What a configuration's `keep_drained` holds at 0; a backend drained
    /// by an operator or by a configuration file is not among them.
    pub(crate) fn checker_drained(&self, vip: &Vip) -> Result<std::collections::BTreeSet<BackendAddr>, LbError> {
        let maps = self.maps();
        self.read(|st| {
            st.vip(vip).map(|s| {
                s.backends
                    .iter()
                    .filter(|(_, slot)| {
                        slot.weight == 0
                            && u32::from(maps.backend_flags(slot.id)) & XDPG_LB_BACKEND_CHECKER_DRAINED != 0
                    })
                    .map(|(a, _)| *a)
                    .collect()
            })
        })?
    }

    /// Sets or clears the checker-drained mark of `vip`'s `backend`. The
    /// checker marks a backend before the batch that drains it (a mark on
    /// a weight above 0 holds nothing: [`checker_drained`](Self::checker_drained)
    /// reads only those at 0), so an apply never sees its drain unmarked;
    /// it clears the marks of the backends it will not restore in its next
    /// round. A backend not there: nothing.
    pub(crate) fn mark_checker_drained(&self, vip: &Vip, backend: &BackendAddr, on: bool) -> Result<(), LbError> {
        self.edit(|st, maps| {
            if let Some(slot) = st.vip(vip)?.backends.get(backend) {
                maps.set_backend_flag(slot.id, XDPG_LB_BACKEND_CHECKER_DRAINED as u8, on);
            }
            Ok(())
        })
    }

    /// The redirect interfaces, by index.
    pub fn redirect_interfaces(&self) -> Vec<u32> {
        self.maps().devmap.ifindexes()
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.core.program.pin_path()
    }

    /// Detaches from every interface and removes every pin, and the
    /// managed neighbour entries it created for its backends' next hops.
    ///
    /// # Errors
    ///
    /// As [`detach`](Self::detach), for the first interface that fails;
    /// [`LbError::ForeignNamespace`], [`LbError::Neighbour`] when the
    /// neighbour entries cannot be removed, [`LbError::NetlinkSocket`] when
    /// no rtnetlink socket could be opened to remove them (the pins are gone
    /// all the same in both).
    pub fn unpin(self) -> Result<(), Error> {
        let released = self.release_neighbours();
        self.core.running().unpin()?;
        released.map_err(Error::from)
    }

    /// The LB program's fd: attach it elsewhere, or chain it behind a
    /// filter with [`Filter::set_next`](crate::Filter::set_next).
    ///
    /// The program that runs now: after an upgrade (`upgrade_pinned`, by
    /// this or any process) of a pinned one, the new program, also through
    /// a handle opened before it. An fd handed out earlier stays open (and
    /// names the old program) while the handle lives.
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.core.running().fd()
    }

    /// The LB program's kernel id (as `bpftool prog` shows it, and as
    /// [`Filter::next_program`](crate::Filter::next_program) names the
    /// program a filter passes packets on to).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`](crate::LoadError::Bpf) when the kernel does not
    /// answer about the program.
    pub fn program_id(&self) -> Result<u32, Error> {
        self.core.running().id()
    }

    /// The configuration's generation: every edit of VIPs and backends, by
    /// any process, advances it by one (policies, timeouts and interfaces
    /// are not counted). Unchanged, nothing was edited: `xdpguard apply`
    /// relies on it to show that a second run changes nothing.
    pub fn generation(&self) -> u64 {
        self.core.generation()
    }

    /// The capacities the LB was loaded with: (VIPs, backends, connections).
    pub fn capacity(&self) -> (u32, u32, u32) {
        let c = self.maps().capacity();
        (c.max_vips, c.max_backends, c.connections)
    }

    /// Kernel memory charged to the LB's maps, in bytes.
    pub fn map_memory_bytes(&self) -> u64 {
        self.maps().memlock_bytes()
    }

    /// Kernel memory charged to each of the LB's maps, in bytes, by map
    /// name (as `bpftool map` shows them; the connection tables are
    /// `xdpg_lb_conns4` and `xdpg_lb_conns6`). Preallocated: set by the
    /// capacities, not by how many flows are tracked.
    pub fn map_memory_by_map(&self) -> Vec<(&'static str, u64)> {
        self.maps().memlock_by_map()
    }

    /// Runs the real LB program, with its live maps, on one Ethernet frame
    /// through `BPF_PROG_TEST_RUN`, as if received without an interface
    /// (the FIB lookup then has no ingress; see [`LoadBalancer::test_run_on`]).
    ///
    /// # Errors
    ///
    /// [`LoadError::Bpf`](crate::LoadError::Bpf) when the kernel refuses
    /// the run (a frame shorter than an Ethernet header, say).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.run(frame, None)
    }

    /// Like [`LoadBalancer::test_run`], as if received on `ingress_ifindex`
    /// (an interface of the calling thread's network namespace), so FIB
    /// lookups, `XDP_TX` and redirects behave as on that interface. Nothing
    /// is sent.
    ///
    /// # Errors
    ///
    /// As [`LoadBalancer::test_run`].
    pub fn test_run_on(&self, frame: &[u8], ingress_ifindex: u32) -> Result<TestRun, Error> {
        self.run(frame, Some(ingress_ifindex))
    }

    fn run(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error> {
        self.core.running().test_run(frame, ingress)
    }
}

impl Drop for LoadBalancer {
    /// An LB that is not pinned goes away with its handle, and so do the
    /// managed neighbour entries it created (best effort). A pinned LB
    /// keeps them; [`LoadBalancer::unpin`] removes them.
    fn drop(&mut self) {
        if self.core.program.pin_path().is_none() {
            let _ = self.release_neighbours();
        }
    }
}

/// The interface (its name, or IPv4 address label) of the calling thread's
/// network namespace holding `ip` as one of its own addresses: what
/// [`LoadBalancer::add_vip`] refuses a VIP at, found without an LB (a
/// configuration file's plan, before the LB exists). `None` also when the
/// addresses cannot be read: `add_vip` then still checks.
#[cfg_attr(not(feature = "config"), allow(dead_code))]
pub(crate) fn local_address_holder(ip: std::net::IpAddr) -> Option<String> {
    let (ns, _) = neigh::current().ok()?;
    let mut rtnl = neigh::Rtnl::open_in(std::os::fd::AsFd::as_fd(&ns)).ok()?;
    rtnl.local_of(ip).ok().flatten()
}

// Handles are shared between threads (and tests move them into closures).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<LoadBalancer>();
    is_send_sync::<Decap>();
};
