//! [`LoadBalancer`]: the XDP L4 load balancer, its builder, VIPs, backends,
//! Maglev tables, connection tracking and counters; and [`Decap`], the
//! backend-side IPIP decapsulator.

mod decap;
pub(crate) mod hash;
pub(crate) mod layout;
pub(crate) mod maglev;
mod maps;
mod neigh;
mod state;
mod stats;
mod types;

use std::net::IpAddr;
use std::collections::BTreeSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::IpNetwork;
use libbpf_rs::{MapCore, MapFlags};

use crate::core::attach::{Attachment, Interface};
use crate::error::{AttachError, Error, LbError, LoadError};
use crate::core::layout::consts::*;
use crate::core::pin::PinDir;
use crate::core::program::{self, XdpProgram};
use crate::core::testrun::TestRun;
use crate::AttachMode;

pub use decap::{Decap, DecapBuilder, DecapStats};
pub use stats::{BackendStats, LbDrops, LbStats, VipStats};
pub use neigh::NEIGH_PROTOCOL;
pub use types::{
    Backend, BackendAddr, BackendState, EchoPolicy, Flow, ForwardingMode, FragmentPolicy, HashInput,
    NeighbourState, NewFlowLimit, NextHop, OptionsPolicy, Protocol, Vip, VipConfig, DEFAULT_TABLE_SIZE,
    MAX_TABLE_SIZE, MAX_WEIGHT, MIN_TABLE_SIZE,
};

use hash::{flow_hash, FlowKey};
use layout::xdpg_lb_config;
use maps::{map_err, Capacity, LbMaps};
use state::{LbState, Slot, VipState};

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
/// [`LoadBalancer::open_pinned`] reopens it (the `xdpguard-lb` CLI in
/// `examples/` does).
///
/// The LB host must forward (`net.ipv4.ip_forward=1`,
/// `net.ipv6.conf.all.forwarding=1`): the FIB lookup refuses otherwise, and
/// the packets go to the stack (counted as `passed_no_route`).
///
/// | mode | IPv4 VIP | IPv6 VIP | backend port |
/// |---|---|---|---|
/// | [`ForwardingMode::L2Dsr`] | IPv4 backends | IPv6 backends | the VIP's |
/// | [`ForwardingMode::Ipip`] | IPv4 (IPIP) or IPv6 (IPv4-in-IPv6) backends | IPv6 backends | the VIP's |
/// | [`ForwardingMode::Nat`] | IPv4 backends | IPv6 backends | any (or the VIP's) |
///
/// What happens to every packet, and which counter ([`LbStats`]) says so:
/// - Not for a VIP: passed untouched (`passed_non_vip`). So are
///   VLAN-tagged frames (the egress may not carry the tag), non-IP frames,
///   IP protocols other than TCP, UDP and ICMP, and IPv6 packets whose
///   transport header lies beyond 8 extension headers.
/// - Bad or truncated L2/L3/L4 headers: passed untouched
///   (`passed_malformed`).
/// - A TCP/UDP packet is for the VIP of its destination address, port and
///   protocol, else for the all-ports VIP of its address and protocol,
///   whose backend then depends on the destination port too (it is
///   hashed; see [`LoadBalancer::vip_for`] and [`LoadBalancer::backend_for`]).
/// - A tracked flow keeps its backend while that backend exists (also
///   when it is drained or others come and go); a TCP SYN (without ACK)
///   chooses afresh; a UDP flow idle for longer than the UDP timeout too.
///   New entries per CPU are bounded ([`NewFlowLimit`]); flows over the
///   bound are forwarded by Maglev without an entry (for NAT VIPs their
///   replies then reach the LB host untranslated: size the bound for NAT).
/// - Fragments, IPv4 options and ICMP echo follow [`FragmentPolicy`],
///   [`OptionsPolicy`] and [`EchoPolicy`]; the echo policy covers every
///   VIP address, whatever its VIPs' ports and protocols.
/// - ICMP errors: IPv4 destination unreachable (type 3, every code,
///   "fragmentation needed" among them), ICMPv6 destination unreachable
///   (type 1) and packet too big (type 2), sent to a VIP address about a
///   TCP or UDP packet that address sent (the quote must hold its ports: not
///   a later fragment, no IPv6 extension headers), go to the backend of the
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
/// backend is added (or the LB reopened, or [`LoadBalancer::refresh_neighbours`]
/// called) and removed when no backend uses that next hop any more. The
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
    maps: LbMaps,
    program: XdpProgram,
    state: Mutex<LbState>,
    /// The network namespace the LB was loaded in (None: reopened from a
    /// thread that can neither see nor find it).
    netns: Option<OwnedFd>,
}

program::impl_pinnable!(LoadBalancer, maps.set);

/// Builds and attaches a [`LoadBalancer`].
#[derive(Debug, Clone)]
pub struct LoadBalancerBuilder {
    interfaces: Vec<Interface>,
    redirect: Vec<Interface>,
    mode: AttachMode,
    pin: Option<PathBuf>,
    max_vips: u32,
    max_backends: u32,
    connections: u32,
    nat_connections: Option<u32>,
    max_interfaces: u32,
    hash_seed: u32,
    udp_timeout: Duration,
    next_hop_cache: Duration,
    new_flow_limit: NewFlowLimit,
    echo: EchoPolicy,
    fragments: FragmentPolicy,
    options: OptionsPolicy,
    ipip_sources: Vec<IpNetwork>,
}

impl Default for LoadBalancerBuilder {
    fn default() -> Self {
        LoadBalancerBuilder {
            interfaces: Vec::new(),
            redirect: Vec::new(),
            mode: AttachMode::Auto,
            pin: None,
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            connections: DEFAULT_CONNECTIONS,
            nat_connections: None,
            max_interfaces: XDPG_LB_DEFAULT_DEVICES,
            hash_seed: 0,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
            next_hop_cache: DEFAULT_NEXT_HOP_CACHE,
            new_flow_limit: NewFlowLimit::default(),
            echo: EchoPolicy::default(),
            fragments: FragmentPolicy::default(),
            options: OptionsPolicy::default(),
            ipip_sources: Vec::new(),
        }
    }
}

impl LoadBalancerBuilder {
    /// Adds an interface to attach to, by name (`"eth0"`) or index. It is
    /// also a redirect target.
    pub fn interface(mut self, iface: impl Into<Interface>) -> Self {
        self.interfaces.push(iface.into());
        self
    }

    /// Adds an interface the LB may send packets out of (`XDP_REDIRECT`)
    /// without attaching to it, e.g. when the LB is tail-called by a filter
    /// attached there. Interfaces it attaches to are added anyway.
    pub fn redirect_interface(mut self, iface: impl Into<Interface>) -> Self {
        self.redirect.push(iface.into());
        self
    }

    /// The attach mode for every interface (default: [`AttachMode::Auto`]).
    pub fn mode(mut self, mode: AttachMode) -> Self {
        self.mode = mode;
        self
    }

    /// Pins the program, maps and links under this bpffs directory, so the
    /// LB outlives the process.
    pub fn pin(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pin = Some(dir.into());
        self
    }

    /// Maximum number of VIPs (default 512).
    pub fn max_vips(mut self, n: u32) -> Self {
        self.max_vips = n;
        self
    }

    /// Maximum number of backends over all VIPs (default 4096).
    pub fn max_backends(mut self, n: u32) -> Self {
        self.max_backends = n;
        self
    }

    /// Connection-table entries, per address family (default 131,072).
    /// About 100 bytes of kernel memory each, preallocated.
    pub fn connections(mut self, n: u32) -> Self {
        self.connections = n;
        self
    }

    /// NAT reply-table entries, per address family (default: as many as
    /// connections). Only NAT VIPs use them; an LB without NAT VIPs can
    /// save the memory with a small number.
    pub fn nat_connections(mut self, n: u32) -> Self {
        self.nat_connections = Some(n);
        self
    }

    /// Maximum redirect interfaces (default 64).
    pub fn max_interfaces(mut self, n: u32) -> Self {
        self.max_interfaces = n;
        self
    }

    /// The flow hash seed (default 0). LB nodes sharing a service behind
    /// ECMP must use the same seed (and the same backends) to agree.
    pub fn hash_seed(mut self, seed: u32) -> Self {
        self.hash_seed = seed;
        self
    }

    /// How long a UDP flow may be idle before it chooses afresh (default 30 s).
    pub fn udp_timeout(mut self, timeout: Duration) -> Self {
        self.udp_timeout = timeout;
        self
    }

    /// How long each CPU reuses a backend's next hop (egress interface,
    /// MACs, route MTU) from the FIB before asking again (default 100 ms;
    /// zero asks on every packet). A FIB lookup costs about 65 ns a packet
    /// here; the price is that a changed route or neighbour is seen up to
    /// this late. Source-based policy routing is not applied to cached hops.
    pub fn next_hop_cache(mut self, ttl: Duration) -> Self {
        self.next_hop_cache = ttl;
        self
    }

    /// The per-CPU bound on new connection-table entries (default 200,000
    /// per second per CPU, bursts of 20,000).
    pub fn new_flow_limit(mut self, limit: NewFlowLimit) -> Self {
        self.new_flow_limit = limit;
        self
    }

    /// What to do with ICMP echo to a VIP address (default: answer).
    pub fn echo_policy(mut self, policy: EchoPolicy) -> Self {
        self.echo = policy;
        self
    }

    /// What to do with fragments to a VIP address (default: forward to
    /// all-ports DSR/IPIP VIPs, drop the rest).
    pub fn fragment_policy(mut self, policy: FragmentPolicy) -> Self {
        self.fragments = policy;
        self
    }

    /// What to do with IPv4 options to a VIP (default: forward).
    pub fn options_policy(mut self, policy: OptionsPolicy) -> Self {
        self.options = policy;
        self
    }

    /// The prefix IPIP outer source addresses are drawn from (one per
    /// family; host bits come from the flow hash, so backend NICs spread
    /// flows over their queues). Needed before adding IPIP backends of
    /// that family.
    pub fn ipip_source(mut self, prefix: IpNetwork) -> Self {
        self.ipip_sources.push(prefix);
        self
    }

    /// Loads the LB without attaching it anywhere (for chaining behind a
    /// filter, or for [`LoadBalancer::test_run`]).
    pub fn load(self) -> Result<LoadBalancer, Error> {
        self.build(false)
    }

    /// Loads the LB and attaches it to every interface given. If any step
    /// fails, nothing is left attached or pinned.
    pub fn attach(self) -> Result<LoadBalancer, Error> {
        if self.interfaces.is_empty() {
            return Err(AttachError::NoInterface.into());
        }
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<LoadBalancer, Error> {
        for (what, value, max) in [
            ("max_vips", self.max_vips, 1 << 16),
            ("max_backends", self.max_backends, 1 << 20),
            ("connections", self.connections, 1 << 26),
            ("nat_connections", self.nat_connections.unwrap_or(self.connections), 1 << 26),
            ("max_interfaces", self.max_interfaces, 1 << 12),
        ] {
            if value == 0 || value > max {
                return Err(LoadError::InvalidCapacity {
                    what,
                    value: value as usize,
                    hint: "between 1 and max_vips 65,536 / max_backends 1,048,576 / (nat_)connections \
                           67,108,864 / max_interfaces 4,096",
                }
                .into());
            }
        }
        if attach && self.mode == AttachMode::Offload {
            return Err(AttachError::ModeUnsupported {
                interface: self.interfaces.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(","),
                mode: AttachMode::Offload,
                hint: "the load balancer uses map-in-map, LRU maps and the FIB, which NICs cannot offload; use \
                       native or auto mode",
            }
            .into());
        }
        let interfaces: &[Interface] = if attach { &self.interfaces } else { &[] };
        program::create(self.pin.as_deref(), maps::KIND, maps::MARKER, interfaces, self.mode, || {
            let (interval, burst) = self.new_flow_limit.gcra();
            let tick = maps::ns_per_jiffy();
            let (netns, ns) = neigh::current().map_err(|source| LoadError::Bpf {
                op: "opening this thread's network namespace (/proc/thread-self/ns/net)".into(),
                source,
            })?;
            let cfg = xdpg_lb_config {
                hash_seed: self.hash_seed,
                echo_policy: self.echo.code(),
                frag_policy: self.fragments.code(),
                options_policy: self.options.code(),
                udp_timeout: maps::to_jiffies(self.udp_timeout, tick),
                new_flow_interval: interval,
                new_flow_burst: burst,
                nexthop_ttl: maps::to_jiffies(self.next_hop_cache, tick),
                netns_dev: ns.dev,
                netns_ino: ns.ino,
                ..Default::default()
            };
            let cap = Capacity {
                max_vips: self.max_vips,
                max_backends: self.max_backends,
                connections: self.connections,
                nat_connections: self.nat_connections.unwrap_or(self.connections),
                devices: self.max_interfaces,
            };
            let (maps, fd) = maps::load(cap, cfg)?;
            let lb = LoadBalancer {
                maps,
                program: XdpProgram::new(fd, maps::PROGRAM_NAME),
                state: Mutex::new(LbState::default()),
                netns: Some(netns),
            };
            for prefix in &self.ipip_sources {
                lb.set_ipip_source(*prefix)?;
            }
            // Every interface it runs on can also be an egress.
            for iface in self.redirect.iter().chain(&self.interfaces) {
                lb.add_redirect_interface(iface.clone())?;
            }
            Ok(lb)
        })
    }
}

/// A batch of backend changes to one VIP, applied as one Maglev table swap:
/// a packet sees the backend set before the batch or after it, never a mix.
///
/// ```no_run
/// # use xdpguard::{LoadBalancer, Vip};
/// # fn f(lb: &LoadBalancer, vip: Vip) -> Result<(), xdpguard::LbError> {
/// lb.batch(&vip)
///     .add("198.51.100.14".parse::<std::net::IpAddr>().unwrap(), 1)
///     .set_weight("198.51.100.11".parse::<std::net::IpAddr>().unwrap(), 0)
///     .remove("198.51.100.12".parse::<std::net::IpAddr>().unwrap())
///     .apply()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a batch does nothing until apply() is called"]
pub struct BackendBatch<'lb> {
    lb: &'lb LoadBalancer,
    vip: Vip,
    ops: Vec<BatchOp>,
}

#[derive(Debug, Clone, Copy)]
enum BatchOp {
    Add(BackendAddr, u32),
    SetWeight(BackendAddr, u32),
    Remove(BackendAddr),
}

impl BackendBatch<'_> {
    /// Adds a backend (an error at apply time if it is already there).
    pub fn add(mut self, backend: impl Into<BackendAddr>, weight: u32) -> Self {
        self.ops.push(BatchOp::Add(backend.into(), weight));
        self
    }

    /// Changes a backend's weight; 0 drains it.
    pub fn set_weight(mut self, backend: impl Into<BackendAddr>, weight: u32) -> Self {
        self.ops.push(BatchOp::SetWeight(backend.into(), weight));
        self
    }

    /// Removes a backend; its tracked flows choose afresh.
    pub fn remove(mut self, backend: impl Into<BackendAddr>) -> Self {
        self.ops.push(BatchOp::Remove(backend.into()));
        self
    }

    /// Applies every change, or none of them if one is invalid, then makes
    /// the backends' next hops match (managed neighbour entries; see
    /// [`LoadBalancer`]).
    ///
    /// # Errors
    ///
    /// A typed error for an invalid change (nothing applied);
    /// [`LbError::ForeignNamespace`] when the LB's network namespace cannot
    /// be reached from this thread (nothing applied); [`LbError::Map`] when
    /// a map update fails; [`LbError::Neighbour`] when the kernel refuses a
    /// neighbour request (the backend changes stay applied, and the data
    /// path resolves their next hops from traffic).
    pub fn apply(self) -> Result<(), LbError> {
        self.lb.apply_batch(&self.vip, &self.ops)
    }
}

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
    pub fn open_pinned(dir: impl AsRef<Path>) -> Result<LoadBalancer, Error> {
        let dir = PinDir::open(dir.as_ref(), maps::KIND, maps::MARKER)?;
        if let Some(missing) = crate::error::missing_privileges() {
            return Err(LoadError::MissingPrivileges { missing }.into());
        }
        let _lock = dir.lock()?;
        let maps = LbMaps::open_pinned(&dir)?;
        let program = XdpProgram::open_pinned(dir.clone(), maps::PROGRAM_NAME)?;
        let mut state = LbState::load(&maps)?;
        if maps.dirty().load(Ordering::Acquire) != 0 {
            // A process died mid-edit: republish every table from the
            // backend slots, which are written before tables reference them.
            for vs in state.vips.values_mut() {
                let table = vs.table();
                maps.publish_table(vs.index, table.as_deref().map(|t| t.as_slice()))?;
            }
            maps.dirty().store(0, Ordering::Release);
            // Data-plane caches (the per-CPU VIP cache) key on the generation.
            maps.generation().fetch_add(1, Ordering::AcqRel);
        }
        let netns = neigh::find(maps.netns());
        let lb = LoadBalancer { maps, program, state: Mutex::new(state), netns };
        drop(_lock);
        let _ = lb.refresh_neighbours();
        Ok(lb)
    }

    // ---- VIPs ---------------------------------------------------------

    /// Adds a VIP. Adding one that exists with the same configuration
    /// changes nothing; with another configuration it is an error. Until it
    /// has a backend, its packets are dropped (counted as `no_backend`).
    pub fn add_vip(&self, vip: Vip, config: VipConfig) -> Result<(), LbError> {
        maglev::check_size(config.table_size)?;
        if config.mode == ForwardingMode::Nat && !config.conntrack {
            return Err(LbError::Unsupported {
                what: format!("NAT without connection tracking for {vip}"),
                fix: "NAT replies are translated from connection state: keep conntrack on",
            });
        }
        self.edit(|st, maps| {
            if let Some(existing) = st.vips.get(&vip) {
                if existing.config == config {
                    return Ok(());
                }
                return Err(LbError::ConflictingVip { vip, existing: existing.config.to_string() });
            }
            let cap = maps.capacity().max_vips;
            let index = st.free_vip_index(cap).ok_or(LbError::VipTableFull { capacity: cap as usize })?;
            maps.zero_percpu("xdpg_lb_vipcnt", index)?;
            maps.publish_table(index, None)?;
            // Address bookkeeping and counts first, so the VIP is complete
            // when its key starts matching.
            let n = maps.vip_addr_users(vip.addr)?.unwrap_or(0);
            maps.set_vip_addr_users(vip.addr, n + 1)?;
            st.vips.insert(vip, VipState::new(index, config));
            Self::recount(st, maps);
            let (map, key) = state::vip_key(&vip);
            let value = state::vip_value(index, &config);
            maps.handle(map)
                .update(&key, bytemuck::bytes_of(&value), MapFlags::NO_EXIST)
                .map_err(map_err(format!("adding VIP {vip}")))?;
            Ok(())
        })
    }

    /// Removes a VIP and all its backends. Its packets pass untouched from
    /// the next one on.
    pub fn remove_vip(&self, vip: &Vip) -> Result<(), LbError> {
        // Its backends' next hops are released: check first that they can be.
        let has_backends = self.read(|st| st.vip(vip).map(|s| !s.backends.is_empty()))??;
        let mut rtnl = if has_backends { Some(self.rtnl()?) } else { None };
        self.edit(|st, maps| {
            let vs = st.vip(vip)?.clone();
            let (map, key) = state::vip_key(vip);
            match maps.handle(map).delete(&key) {
                Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                    return Err(map_err(format!("removing VIP {vip}"))(e))
                }
                _ => {}
            }
            maps.publish_table(vs.index, None)?;
            for slot in vs.backends.values() {
                maps.free_backend(slot.id);
            }
            let n = maps.vip_addr_users(vip.addr)?.unwrap_or(1);
            maps.set_vip_addr_users(vip.addr, n.saturating_sub(1))?;
            st.vips.remove(vip);
            Self::recount(st, maps);
            if let Some(rtnl) = rtnl.as_mut() {
                Self::sync_hops(st, maps, rtnl)?;
            }
            Ok(())
        })
    }

    fn recount(st: &LbState, maps: &LbMaps) {
        maps.nat_vips().store(st.count_where(|_, s| s.config.mode == ForwardingMode::Nat), Ordering::Release);
        maps.allport_vips().store(st.count_where(|v, _| v.port.is_none()), Ordering::Release);
    }

    /// Every VIP and its configuration.
    pub fn vips(&self) -> Result<Vec<(Vip, VipConfig)>, LbError> {
        self.read(|st| st.vips.iter().map(|(v, s)| (*v, s.config)).collect())
    }

    /// One VIP's configuration.
    pub fn vip_config(&self, vip: &Vip) -> Result<VipConfig, LbError> {
        self.read(|st| st.vip(vip).map(|s| s.config))?
    }

    // ---- backends -----------------------------------------------------

    /// Adds a backend with a weight (0 adds it drained). See
    /// [`ForwardingMode`] for which families and ports each mode takes.
    pub fn add_backend(&self, vip: &Vip, backend: impl Into<BackendAddr>, weight: u32) -> Result<(), LbError> {
        self.batch(vip).add(backend, weight).apply()
    }

    /// Changes a backend's weight. 0 drains it: no new flows, tracked flows
    /// keep going to it.
    pub fn set_weight(&self, vip: &Vip, backend: impl Into<BackendAddr>, weight: u32) -> Result<(), LbError> {
        self.batch(vip).set_weight(backend, weight).apply()
    }

    /// Removes a backend. Its tracked flows choose afresh from their next
    /// packet (to drain gracefully, set its weight to 0 first).
    pub fn remove_backend(&self, vip: &Vip, backend: impl Into<BackendAddr>) -> Result<(), LbError> {
        self.batch(vip).remove(backend).apply()
    }

    /// Starts a batch of backend changes to `vip`, applied as one table swap.
    pub fn batch(&self, vip: &Vip) -> BackendBatch<'_> {
        BackendBatch { lb: self, vip: *vip, ops: Vec::new() }
    }

    /// A VIP's backends, in canonical order.
    pub fn backends(&self, vip: &Vip) -> Result<Vec<Backend>, LbError> {
        self.read(|st| {
            st.vip(vip).map(|s| s.backends.iter().map(|(a, slot)| Backend { addr: *a, weight: slot.weight }).collect())
        })?
    }

    fn check_backend(&self, vip: &Vip, mode: ForwardingMode, b: &BackendAddr) -> Result<(), LbError> {
        let what = |s: &str| format!("{s} (VIP {vip}, backend {b})");
        match mode {
            ForwardingMode::L2Dsr | ForwardingMode::Nat if vip.addr.is_ipv4() != b.ip.is_ipv4() => {
                Err(LbError::Unsupported {
                    what: what(&format!("{mode} between address families")),
                    fix: "use a backend of the VIP's family, or IPIP mode (which carries IPv4 in IPv6)",
                })
            }
            ForwardingMode::L2Dsr | ForwardingMode::Ipip if b.port.is_some() => Err(LbError::Unsupported {
                what: what(&format!("a backend port in {mode} mode")),
                fix: "DSR and IPIP backends serve the VIP's own port; give the backend without a port, or use NAT",
            }),
            ForwardingMode::Ipip if vip.addr.is_ipv6() && b.ip.is_ipv4() => Err(LbError::Unsupported {
                what: what("IPv6 in IPv4 encapsulation"),
                fix: "give IPv6 VIPs IPv6 backends (IPv4 VIPs may have IPv4 or IPv6 backends)",
            }),
            ForwardingMode::Ipip => {
                let cfg = self.maps.config();
                let unset = if b.ip.is_ipv4() {
                    cfg.ipip_v4_src == 0 && cfg.ipip_v4_mask == 0
                } else {
                    cfg.ipip_v6_src.iter().chain(&cfg.ipip_v6_mask).all(|w| *w == 0)
                };
                if unset {
                    Err(LbError::IpipSourceUnset { family: if b.ip.is_ipv4() { 4 } else { 6 } })
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }

    fn apply_batch(&self, vip: &Vip, ops: &[BatchOp]) -> Result<(), LbError> {
        // Next hops are managed in the LB's namespace: fail before any
        // change when it cannot be reached.
        let mut rtnl = self.rtnl()?;
        self.edit(|st, maps| {
            let vs = st.vip(vip)?;
            let mode = vs.config.mode;
            let size = vs.config.table_size;
            let index = vs.index;
            // The desired set: Some(slot) for existing, None for new.
            let mut desired: std::collections::BTreeMap<BackendAddr, (Option<u32>, u32)> =
                vs.backends.iter().map(|(a, s)| (*a, (Some(s.id), s.weight))).collect();
            for op in ops {
                match *op {
                    BatchOp::Add(b, w) | BatchOp::SetWeight(b, w) if w > MAX_WEIGHT => {
                        let _ = b;
                        return Err(LbError::InvalidWeight { weight: w, max: MAX_WEIGHT });
                    }
                    BatchOp::Add(b, w) => {
                        self.check_backend(vip, mode, &b)?;
                        if let Some((_, weight)) = desired.get(&b) {
                            return Err(LbError::BackendExists { vip: *vip, backend: b, weight: *weight });
                        }
                        desired.insert(b, (None, w));
                    }
                    BatchOp::SetWeight(b, w) => match desired.get_mut(&b) {
                        Some(entry) => entry.1 = w,
                        None => return Err(LbError::BackendNotFound { vip: *vip, backend: b }),
                    },
                    BatchOp::Remove(b) => {
                        if desired.remove(&b).is_none() {
                            return Err(LbError::BackendNotFound { vip: *vip, backend: b });
                        }
                    }
                }
            }
            if desired.len() as u64 * 10 > u64::from(size) {
                return Err(LbError::TableTooSmall { vip: *vip, backends: desired.len(), size });
            }
            // Slots for new backends, searched from where the last search
            // stopped, so a freed slot is not reused at once (its stale
            // connection entries also carry the old gen, and miss).
            let capacity = maps.backends.len() as u32;
            let used: std::collections::BTreeSet<u32> =
                st.vips.values().flat_map(|s| s.backends.values().map(|slot| slot.id)).collect();
            let needed = desired.values().filter(|(id, _)| id.is_none()).count();
            let mut fresh = Vec::with_capacity(needed);
            let start = maps.next_backend().load(Ordering::Acquire) % capacity;
            for k in 0..capacity {
                if fresh.len() == needed {
                    break;
                }
                let id = (start + k) % capacity;
                if !used.contains(&id) && maps.backends.get(id as usize).family == 0 {
                    fresh.push(id);
                }
            }
            if fresh.len() < needed {
                return Err(LbError::BackendTableFull { capacity: capacity as usize });
            }
            if let Some(last) = fresh.last() {
                maps.next_backend().store((last + 1) % capacity, Ordering::Release);
            }
            // New slots go live before the table that references them.
            let mut fresh = fresh.into_iter();
            let mut new_backends = std::collections::BTreeMap::new();
            for (addr, (id, weight)) in &desired {
                let id = match id {
                    Some(id) => {
                        maps.set_backend_weight(*id, *weight);
                        *id
                    }
                    None => {
                        let id = fresh.next().expect("enough slots reserved");
                        maps.zero_percpu("xdpg_lb_becnt", id)?;
                        maps.write_backend(id, state::backend_value(addr, index, *weight));
                        id
                    }
                };
                new_backends.insert(*addr, Slot { id, weight: *weight });
            }
            let entries: Vec<maglev::Entry> =
                new_backends.iter().map(|(a, s)| maglev::Entry { addr: *a, weight: s.weight, id: s.id }).collect();
            let table = maglev::build(size, &entries);
            maps.publish_table(index, table.as_deref())?;
            // Removed backends go after the swap: no new flow picks them.
            let vs = st.vip_mut(vip)?;
            for (addr, slot) in &vs.backends {
                if !new_backends.contains_key(addr) {
                    maps.free_backend(slot.id);
                }
            }
            vs.backends = new_backends;
            vs.set_table(table);
            Self::sync_hops(st, maps, &mut rtnl)?;
            Ok(())
        })
    }

    // ---- next hops ----------------------------------------------------

    fn rtnl(&self) -> Result<neigh::Rtnl, LbError> {
        let ns = self.netns.as_ref().ok_or(LbError::ForeignNamespace { ino: self.maps.netns().ino })?;
        neigh::Rtnl::open_in(ns.as_fd()).map_err(neigh_err("opening an rtnetlink socket in the LB's network namespace"))
    }

    /// Makes the recorded managed neighbour entries match the next hops of
    /// every configured backend.
    fn sync_hops(st: &LbState, maps: &LbMaps, rtnl: &mut neigh::Rtnl) -> Result<neigh::Synced, LbError> {
        let backends: BTreeSet<IpAddr> = st.vips.values().flat_map(|v| v.backends.keys().map(|b| b.ip)).collect();
        let recorded = maps.recorded_hops();
        if backends.is_empty() && recorded.is_empty() {
            return Ok(neigh::Synced::default());
        }
        neigh::reconcile(rtnl, &backends, &recorded, |h| maps.record_hop(h), |h| maps.forget_hop(h))
            .map_err(neigh_err("keeping the backends' next hops resolved (managed neighbour entries)"))
    }

    /// Makes sure every configured backend's next hop has a managed
    /// neighbour entry (created if missing, e.g. after `ip neigh flush`, or
    /// after a route change moved it to another gateway) and removes the
    /// entries this LB created that no backend uses any more. Backend
    /// changes and [`LoadBalancer::open_pinned`] do this by themselves.
    /// Returns the number of entries created.
    ///
    /// Kernel: Linux 5.16 or later (`NTF_EXT_MANAGED`).
    ///
    /// # Errors
    ///
    /// [`LbError::ForeignNamespace`] when the LB's network namespace cannot
    /// be reached from this thread; [`LbError::Neighbour`] when the kernel
    /// refuses a request (e.g. without `CAP_NET_ADMIN` there).
    pub fn refresh_neighbours(&self) -> Result<usize, LbError> {
        let mut rtnl = self.rtnl()?;
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        st.sync(&self.maps)?;
        Ok(Self::sync_hops(&st, &self.maps, &mut rtnl)?.created)
    }

    /// Removes every managed neighbour entry this LB created (when it is
    /// going away).
    fn release_neighbours(&self) -> Result<(), LbError> {
        let recorded = self.maps.recorded_hops();
        if recorded.is_empty() {
            return Ok(());
        }
        let mut rtnl = self.rtnl()?;
        neigh::reconcile(&mut rtnl, &BTreeSet::new(), &recorded, |_| Ok(()), |h| self.maps.forget_hop(h))
            .map(drop)
            .map_err(neigh_err("removing the backends' managed neighbour entries"))
    }

    /// The VIP that takes a flow's packets, matched as the kernel matches
    /// them: the VIP of the flow's destination address, port and protocol,
    /// else the all-ports VIP of its address and protocol. A fragment
    /// ([`Flow::fragment`]) carries no ports, so only an all-ports VIP can
    /// take it ([`LoadBalancer::backend_for`] then says whether the fragment
    /// policy forwards it). `None`: no VIP takes the flow; its packets pass
    /// to the stack (a fragment to a VIP address is dropped).
    ///
    /// With [`LoadBalancer::backend_for`] this answers "where does a new
    /// flow from this client to this address and port go", which is what
    /// `xdpguard-lb which` prints.
    ///
    /// # Errors
    ///
    /// [`LbError::FlowMismatch`] when source and destination are of
    /// different families; [`LbError::Map`] when the configuration cannot
    /// be read back.
    pub fn vip_for(&self, flow: &Flow) -> Result<Option<Vip>, LbError> {
        if flow.src.is_ipv4() != flow.dst.is_ipv4() {
            let vip = Vip { addr: flow.dst.ip(), port: None, protocol: flow.protocol };
            return Err(LbError::FlowMismatch {
                flow: flow.to_string(),
                vip,
                reason: "source and destination are of different families",
            });
        }
        self.read(|st| {
            let exact = Vip { addr: flow.dst.ip(), port: Some(flow.dst.port()), protocol: flow.protocol };
            let any = Vip { port: None, ..exact };
            if !flow.fragment && st.vips.contains_key(&exact) {
                Some(exact)
            } else if st.vips.contains_key(&any) {
                Some(any)
            } else {
                None
            }
        })
    }

    /// Whether `flow` is one `vip` takes, for [`LoadBalancer::backend_for`]
    /// and [`LoadBalancer::ipip_source_for`]: the questions they answer
    /// depend on the flow's real destination port, also for all-ports VIPs.
    fn check_flow(st: &LbState, vip: &Vip, flow: &Flow) -> Result<(), LbError> {
        let mismatch = |reason| LbError::FlowMismatch { flow: flow.to_string(), vip: *vip, reason };
        if flow.dst.ip() != vip.addr {
            return Err(mismatch("its destination is not the VIP address"));
        }
        if flow.src.is_ipv4() != flow.dst.is_ipv4() {
            return Err(mismatch("source and destination are of different families"));
        }
        if flow.protocol != vip.protocol {
            return Err(mismatch("its protocol is not the VIP's"));
        }
        if flow.fragment {
            return Ok(());
        }
        match vip.port {
            Some(p) if p != flow.dst.port() => Err(mismatch("its destination port is not the VIP's")),
            Some(_) => Ok(()),
            // Port 0 is how a caller says "any port" by mistake: the kernel
            // hashes the port each packet carries.
            None if flow.dst.port() == 0 => {
                Err(LbError::DestinationPortRequired { flow: flow.to_string(), vip: *vip })
            }
            None if st.vips.contains_key(&Vip { port: Some(flow.dst.port()), ..*vip }) => Err(mismatch(
                "a VIP for its destination port takes it, before the all-ports VIP; ask about that VIP \
                 (LoadBalancer::vip_for finds it)",
            )),
            None => Ok(()),
        }
    }

    /// The backend the kernel will choose for a new flow of `vip` (same
    /// hash, same Maglev table), or `None` when it would not forward it to
    /// any (no usable backend; a fragment the fragment policy drops).
    ///
    /// The flow's destination port counts for all-ports VIPs too: the
    /// kernel hashes the port each packet carries. To ask about a client's
    /// flow to an address and port without knowing which VIP takes it,
    /// find the VIP with [`LoadBalancer::vip_for`] first.
    ///
    /// Tracked flows keep the backend they started with, which is this
    /// one unless the backend set changed since.
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::FlowMismatch`] when the flow is
    /// not one the VIP takes (another address, family, protocol or port, or
    /// a port a single-port VIP of the same address takes first);
    /// [`LbError::DestinationPortRequired`] for a flow to an all-ports VIP
    /// with destination port 0 (give the port the client connects to, or
    /// ask about a fragment with [`Flow::fragment`]).
    pub fn backend_for(&self, vip: &Vip, flow: &Flow) -> Result<Option<BackendAddr>, LbError> {
        let seed = self.maps.hash_seed().load(Ordering::Acquire);
        let frag_policy = FragmentPolicy::from_code(self.maps.config().frag_policy);
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        st.sync(&self.maps)?;
        st.vip(vip)?;
        Self::check_flow(&st, vip, flow)?;
        let vs = st.vip_mut(vip)?;
        if flow.fragment
            && (vip.port.is_some() || vs.config.mode == ForwardingMode::Nat || frag_policy == FragmentPolicy::Drop)
        {
            return Ok(None);
        }
        let h = flow_hash(&Self::flow_key(flow), seed, vs.config.hash == HashInput::SourceAddress);
        let Some(table) = vs.table() else {
            return Ok(None);
        };
        let id = table[(h % vs.config.table_size) as usize];
        Ok(vs.backend_by_id(id))
    }

    /// The hash input the kernel builds from a flow (fragments: no ports).
    fn flow_key(flow: &Flow) -> FlowKey {
        FlowKey {
            src: flow.src.ip(),
            dst: flow.dst.ip(),
            sport: if flow.fragment { 0 } else { flow.src.port() },
            dport: if flow.fragment { 0 } else { flow.dst.port() },
            proto: flow.protocol.number(),
        }
    }

    /// The IPIP outer source address the kernel uses for `flow` to `vip`
    /// when its backend is of the family of `backend` (None: not IPIP, or no
    /// source prefix for that family).
    ///
    /// # Errors
    ///
    /// As [`LoadBalancer::backend_for`], for the same flows.
    pub fn ipip_source_for(&self, vip: &Vip, flow: &Flow, backend: IpAddr) -> Result<Option<IpAddr>, LbError> {
        let config = self.read(|st| {
            let config = st.vip(vip)?.config;
            Self::check_flow(st, vip, flow).map(|()| config)
        })??;
        if config.mode != ForwardingMode::Ipip {
            return Ok(None);
        }
        let seed = self.maps.hash_seed().load(Ordering::Acquire);
        let h = flow_hash(&Self::flow_key(flow), seed, config.hash == HashInput::SourceAddress);
        let cfg = self.maps.config();
        Ok(match backend {
            IpAddr::V4(_) => {
                let base = std::net::Ipv4Addr::from(cfg.ipip_v4_src.to_ne_bytes());
                let mask = u32::from_be_bytes(cfg.ipip_v4_mask.to_ne_bytes());
                Some(IpAddr::V4(hash::ipip_source_v4(base, mask, h)))
            }
            IpAddr::V6(_) => {
                let mut b = [0u8; 16];
                for (i, w) in cfg.ipip_v6_src.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                let hi = u32::from_be_bytes(cfg.ipip_v6_mask[0].to_ne_bytes());
                let lo = u32::from_be_bytes(cfg.ipip_v6_mask[1].to_ne_bytes());
                let mask = (u64::from(hi) << 32) | u64::from(lo);
                Some(IpAddr::V6(hash::ipip_source_v6(std::net::Ipv6Addr::from(b), mask, h)))
            }
        })
    }

    /// The VIP's Maglev table as the kernel holds it, slot by slot (`None`:
    /// no usable backend). Reads every slot: for diagnostics and tests.
    pub fn kernel_table(&self, vip: &Vip) -> Result<Option<Vec<BackendAddr>>, LbError> {
        let (index, backends) = self.read(|st| st.vip(vip).map(|s| (s.index, s.backends.clone())))??;
        let Some(ids) = self.maps.read_table(index)? else {
            return Ok(None);
        };
        let by_id: std::collections::HashMap<u32, BackendAddr> =
            backends.iter().map(|(a, s)| (s.id, *a)).collect();
        ids.into_iter()
            .map(|id| {
                by_id.get(&id).copied().ok_or_else(|| LbError::Map {
                    op: format!("reading the table of {vip}"),
                    source: std::io::Error::other(format!("slot refers to unknown backend slot {id}")),
                    hint: "another process is editing this VIP; try again",
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    // ---- settings -----------------------------------------------------

    /// Sets the prefix IPIP outer sources of its family are drawn from.
    /// The host bits (up to the low 64 of an IPv6 prefix) come from the
    /// flow hash. Takes effect for the next packet.
    pub fn set_ipip_source(&self, prefix: IpNetwork) -> Result<(), LbError> {
        match prefix {
            IpNetwork::V4(p) => {
                let mask = if p.prefix() == 0 { u32::MAX } else { (1u64 << (32 - u32::from(p.prefix()))) as u32 - 1 };
                let base = u32::from(p.network());
                self.maps.ipip_v4_src().store(u32::from_ne_bytes(base.to_be_bytes()), Ordering::Release);
                self.maps.ipip_v4_mask().store(u32::from_ne_bytes(mask.to_be_bytes()), Ordering::Release);
            }
            IpNetwork::V6(p) => {
                let host_bits = 128 - u32::from(p.prefix());
                let mask: u64 = if host_bits >= 64 { u64::MAX } else { (1u64 << host_bits) - 1 };
                let base = u128::from(p.network()) & !u128::from(mask);
                let b = base.to_be_bytes();
                for i in 0..4 {
                    let w = u32::from_ne_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"));
                    self.maps.ipip_v6_word(i).store(w, Ordering::Release);
                }
                self.maps.ipip_v6_word(4).store(u32::from_ne_bytes(((mask >> 32) as u32).to_be_bytes()), Ordering::Release);
                self.maps.ipip_v6_word(5).store(u32::from_ne_bytes((mask as u32).to_be_bytes()), Ordering::Release);
            }
        }
        Ok(())
    }

    fn set_policy_byte(&self, byte: usize, value: u8) {
        let word = self.maps.policies();
        let mut cur = word.load(Ordering::Acquire);
        loop {
            let mut b = cur.to_ne_bytes();
            b[byte] = value;
            match word.compare_exchange(cur, u32::from_ne_bytes(b), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// The ICMP echo policy in force.
    pub fn echo_policy(&self) -> EchoPolicy {
        EchoPolicy::from_code(self.maps.config().echo_policy)
    }

    /// Changes the ICMP echo policy; takes effect for the next packet.
    pub fn set_echo_policy(&self, policy: EchoPolicy) {
        self.set_policy_byte(0, policy.code());
    }

    /// The fragment policy in force.
    pub fn fragment_policy(&self) -> FragmentPolicy {
        FragmentPolicy::from_code(self.maps.config().frag_policy)
    }

    /// Changes the fragment policy.
    pub fn set_fragment_policy(&self, policy: FragmentPolicy) {
        self.set_policy_byte(1, policy.code());
    }

    /// The IPv4 options policy in force.
    pub fn options_policy(&self) -> OptionsPolicy {
        OptionsPolicy::from_code(self.maps.config().options_policy)
    }

    /// Changes the IPv4 options policy.
    pub fn set_options_policy(&self, policy: OptionsPolicy) {
        self.set_policy_byte(2, policy.code());
    }

    /// The new-flow bound in force.
    pub fn new_flow_limit(&self) -> NewFlowLimit {
        let c = self.maps.config();
        NewFlowLimit::from_gcra(c.new_flow_interval, c.new_flow_burst)
    }

    /// Changes the per-CPU new-flow bound.
    pub fn set_new_flow_limit(&self, limit: NewFlowLimit) {
        let (interval, burst) = limit.gcra();
        // Burst first: a reader never sees a bound tighter than either.
        self.maps.new_flow_burst().store(burst, Ordering::Release);
        self.maps.new_flow_interval().store(interval, Ordering::Release);
    }

    /// The UDP idle timeout in force.
    pub fn udp_timeout(&self) -> Duration {
        self.maps.duration(self.maps.udp_timeout())
    }

    /// Changes the UDP idle timeout.
    pub fn set_udp_timeout(&self, timeout: Duration) {
        self.maps.set_duration(self.maps.udp_timeout(), timeout);
    }

    /// How long each CPU reuses a backend's next hop from the FIB.
    pub fn next_hop_cache(&self) -> Duration {
        self.maps.duration(self.maps.nexthop_ttl())
    }

    /// Changes how long each CPU reuses a backend's next hop (zero: a FIB
    /// lookup for every packet). Cached hops already made live out their time.
    pub fn set_next_hop_cache(&self, ttl: Duration) {
        self.maps.set_duration(self.maps.nexthop_ttl(), ttl);
    }

    /// The flow hash seed.
    pub fn hash_seed(&self) -> u32 {
        self.maps.hash_seed().load(Ordering::Acquire)
    }

    /// Empties the connection and NAT tables: every flow chooses afresh
    /// (by Maglev) from its next packet. NAT replies of live flows are no
    /// longer translated, so NAT connections break.
    pub fn flush_connections(&self) -> Result<usize, LbError> {
        let mut n = 0;
        for map in ["xdpg_lb_conns4", "xdpg_lb_conns6", "xdpg_lb_nat4", "xdpg_lb_nat6"] {
            let h = self.maps.handle(map);
            let keys: Vec<Vec<u8>> = h.keys().collect();
            for k in keys {
                if h.delete(&k).is_ok() && map.starts_with("xdpg_lb_conns") {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Number of entries in the connection table (walks it: diagnostics only).
    pub fn connection_count(&self) -> usize {
        self.maps.handle("xdpg_lb_conns4").keys().count() + self.maps.handle("xdpg_lb_conns6").keys().count()
    }

    // ---- counters -----------------------------------------------------

    /// A VIP's counters, summed over CPUs.
    pub fn vip_stats(&self, vip: &Vip) -> Result<VipStats, LbError> {
        let index = self.read(|st| st.vip(vip).map(|s| s.index))??;
        Ok(VipStats::from_raw(self.maps.vip_stats(index)?))
    }

    /// A VIP's backends with their counters and the state of their next
    /// hops (read from the kernel's route and neighbour tables in the LB's
    /// network namespace; [`NeighbourState::Unknown`] when that namespace
    /// cannot be reached from this thread).
    ///
    /// # Errors
    ///
    /// [`LbError::VipNotFound`]; [`LbError::Map`] or [`LbError::Neighbour`]
    /// when reading the counters or the kernel's tables fails.
    pub fn backend_stats(&self, vip: &Vip) -> Result<Vec<BackendStats>, LbError> {
        let slots: Vec<(BackendAddr, Slot)> =
            self.read(|st| st.vip(vip).map(|s| s.backends.iter().map(|(a, s)| (*a, *s)).collect()))??;
        let ips: Vec<IpAddr> = slots.iter().map(|(a, _)| a.ip).collect();
        let hops = match self.rtnl() {
            Ok(mut rtnl) => neigh::next_hops(&mut rtnl, &ips).map_err(neigh_err("reading the backends' next hops"))?,
            Err(LbError::ForeignNamespace { .. }) => vec![NextHop::UNKNOWN; ips.len()],
            Err(e) => return Err(e),
        };
        slots
            .into_iter()
            .zip(hops)
            .map(|((addr, slot), next_hop)| {
                let (traffic, no_neighbour) = self.maps.backend_stats(slot.id)?;
                Ok(BackendStats { backend: Backend { addr, weight: slot.weight }, traffic, no_neighbour, next_hop })
            })
            .collect()
    }

    /// The global counters: drops by reason, and events.
    pub fn stats(&self) -> Result<LbStats, LbError> {
        Ok(LbStats::from_raw(&self.maps.counters()?))
    }

    /// Zeroes every counter: global, per VIP, per backend.
    pub fn reset_stats(&self) -> Result<(), LbError> {
        let cap = self.maps.capacity();
        for i in 0..XDPG_LB_COUNTER_COUNT {
            self.maps.zero_percpu("xdpg_lb_cnt", i)?;
        }
        let (vips, backends): (Vec<u32>, Vec<u32>) = self.read(|st| {
            (
                st.vips.values().map(|s| s.index).collect(),
                st.vips.values().flat_map(|s| s.backends.values().map(|b| b.id)).collect(),
            )
        })?;
        for i in vips.into_iter().filter(|i| *i < cap.max_vips) {
            self.maps.zero_percpu("xdpg_lb_vipcnt", i)?;
        }
        for id in backends {
            self.maps.zero_percpu("xdpg_lb_becnt", id)?;
        }
        Ok(())
    }

    // ---- interfaces ---------------------------------------------------

    /// Attaches to one more interface (pinning the link if the LB is
    /// pinned); it also becomes a redirect target.
    pub fn attach(&self, iface: impl Into<Interface>, mode: AttachMode) -> Result<Attachment, Error> {
        let iface = iface.into();
        self.add_redirect_interface(iface.clone())?;
        self.program.attach(&iface, mode)
    }

    /// Detaches from one interface (it stays a redirect target).
    pub fn detach(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        self.program.detach(&iface.into())
    }

    /// The interfaces the LB is attached to.
    pub fn attachments(&self) -> Vec<Attachment> {
        self.program.attachments()
    }

    /// Lets the LB send packets out of `iface` (`XDP_REDIRECT` through its
    /// devmap). The FIB decides the egress; an egress not added here makes
    /// the packet go to the stack instead (counted as `passed_no_devmap`).
    pub fn add_redirect_interface(&self, iface: impl Into<Interface>) -> Result<u32, Error> {
        let (ifindex, _) = iface.into().resolve()?;
        let devmap = self.maps.handle("xdpg_lb_devmap");
        devmap.update(&ifindex.to_ne_bytes(), &ifindex.to_ne_bytes(), MapFlags::ANY).map_err(|e| {
            if e.kind() == libbpf_rs::ErrorKind::TooBig {
                Error::from(LbError::DevmapFull { capacity: devmap.max_entries() as usize })
            } else {
                map_err(format!("adding interface #{ifindex} to the devmap"))(e).into()
            }
        })?;
        Ok(ifindex)
    }

    /// Stops redirecting out of `iface`.
    pub fn remove_redirect_interface(&self, iface: impl Into<Interface>) -> Result<(), Error> {
        let (ifindex, _) = iface.into().resolve()?;
        match self.maps.handle("xdpg_lb_devmap").delete(&ifindex.to_ne_bytes()) {
            Err(e) if e.kind() != libbpf_rs::ErrorKind::NotFound => {
                Err(map_err("removing a devmap interface")(e).into())
            }
            _ => Ok(()),
        }
    }

    /// The redirect interfaces, by index.
    pub fn redirect_interfaces(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .maps
            .handle("xdpg_lb_devmap")
            .keys()
            .map(|k| u32::from_ne_bytes(k[..4].try_into().expect("4 bytes")))
            .collect();
        v.sort();
        v
    }

    /// The pin directory, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.program.pin_path()
    }

    /// Detaches from every interface and removes every pin, and the
    /// managed neighbour entries it created for its backends' next hops.
    pub fn unpin(self) -> Result<(), Error> {
        let released = self.release_neighbours();
        self.program.unpin()?;
        released.map_err(Error::from)
    }

    /// The LB program's fd: attach it elsewhere, or chain it behind a
    /// filter with [`Filter::set_next`](crate::Filter::set_next).
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        self.program.fd()
    }

    /// The capacities the LB was loaded with: (VIPs, backends, connections).
    pub fn capacity(&self) -> (u32, u32, u32) {
        let c = self.maps.capacity();
        (c.max_vips, c.max_backends, c.connections)
    }

    /// Kernel memory charged to the LB's maps, in bytes.
    pub fn map_memory_bytes(&self) -> u64 {
        self.maps.set.memlock_bytes()
    }

    /// Runs the real LB program, with its live maps, on one Ethernet frame
    /// through `BPF_PROG_TEST_RUN`, as if received without an interface
    /// (the FIB lookup then has no ingress; see [`LoadBalancer::test_run_on`]).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRun, Error> {
        self.run(frame, None)
    }

    /// Like [`LoadBalancer::test_run`], as if received on `ingress_ifindex`
    /// (an interface of the calling thread's network namespace), so FIB
    /// lookups, `XDP_TX` and redirects behave as on that interface. Nothing
    /// is sent.
    pub fn test_run_on(&self, frame: &[u8], ingress_ifindex: u32) -> Result<TestRun, Error> {
        self.run(frame, Some(ingress_ifindex))
    }

    fn run(&self, frame: &[u8], ingress: Option<u32>) -> Result<TestRun, Error> {
        self.program.test_run(frame, ingress)
    }

    // ---- locking ------------------------------------------------------

    fn lock_pin(&self) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, LbError> {
        self.program.lock().map_err(|e| LbError::Map {
            op: "locking the pin directory".into(),
            source: std::io::Error::other(e.to_string()),
            hint: "another process holds the lock; wait for it, or check the pin directory's permissions",
        })
    }

    fn state(&self) -> MutexGuard<'_, LbState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read<R>(&self, f: impl FnOnce(&LbState) -> R) -> Result<R, LbError> {
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        st.sync(&self.maps)?;
        Ok(f(&st))
    }

    fn edit<R>(&self, f: impl FnOnce(&mut LbState, &LbMaps) -> Result<R, LbError>) -> Result<R, LbError> {
        let _flock = self.lock_pin()?;
        let mut st = self.state();
        st.sync(&self.maps)?;
        self.maps.dirty().store(1, Ordering::Release);
        let result = f(&mut st, &self.maps);
        if matches!(result, Err(LbError::Map { .. })) {
            // Only map operations fail after writes began. Whatever reached the maps is the truth: rebuild the model
            // from them and republish every table from it, so tables and
            // backend slots agree again.
            if let Ok(reloaded) = LbState::load(&self.maps) {
                *st = reloaded;
                for vs in st.vips.values_mut() {
                    let table = vs.table();
                    let _ = self.maps.publish_table(vs.index, table.as_deref().map(|t| t.as_slice()));
                }
            }
        }
        self.maps.dirty().store(0, Ordering::Release);
        st.generation = self.maps.generation().fetch_add(1, Ordering::AcqRel) + 1;
        result
    }
}

impl Drop for LoadBalancer {
    /// An LB that is not pinned goes away with its handle, and so do the
    /// managed neighbour entries it created (best effort). A pinned LB
    /// keeps them; [`LoadBalancer::unpin`] removes them.
    fn drop(&mut self) {
        if self.program.pin_path().is_none() {
            let _ = self.release_neighbours();
        }
    }
}

fn neigh_err(op: &str) -> impl FnOnce(std::io::Error) -> LbError + '_ {
    move |source| LbError::Neighbour {
        op: op.to_owned(),
        source,
        hint: "check that the process has CAP_NET_ADMIN in the LB's network namespace; meanwhile the data path \
               resolves next hops from traffic",
    }
}

// Handles are shared between threads (and tests move them into closures).
const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<LoadBalancer>();
    is_send_sync::<Decap>();
};
