//! [`LoadBalancerBuilder`]: capacities, policies, interfaces and pinning
//! of a new [`LoadBalancer`].

use std::time::Duration;

use ipnetwork::IpNetwork;

use super::conntrack;
use super::layout::lb_skel::LbSkelBuilder;
use super::layout::xdpg_lb_config;
use super::maps::{ns_per_jiffy, to_jiffies, udp_timeout_jiffies, Capacity, LbMaps};
use super::{
    neigh, LoadBalancer, DEFAULT_CONNECTIONS, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_VIPS, DEFAULT_NEXT_HOP_CACHE,
    DEFAULT_UDP_TIMEOUT,
};
use super::{EchoPolicy, FragmentPolicy, NewFlowLimit, OptionsPolicy};
use crate::core::attach::Interface;
use crate::core::layout::consts::XDPG_LB_DEFAULT_DEVICES;
use crate::core::pinned::{placement_methods, LoadPlan, Pinned, Placement};
use crate::error::{AttachError, Error, LoadError};
use crate::AttachMode;

/// Builds and attaches a [`LoadBalancer`].
#[derive(Debug, Clone)]
pub struct LoadBalancerBuilder {
    place: Placement,
    redirect: Vec<Interface>,
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
            place: Placement::default(),
            redirect: Vec::new(),
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
    placement_methods!("load balancer", "LoadBalancer::open_pinned", "It is also a redirect target.");

    /// Adds an interface the LB may send packets out of (`XDP_REDIRECT`)
    /// without attaching to it, e.g. when the LB is tail-called by a filter
    /// attached there. Interfaces it attaches to are added anyway.
    pub fn redirect_interface(mut self, iface: impl Into<Interface>) -> Self {
        self.redirect.push(iface.into());
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
    /// Preallocated: IPv4 64 bytes each (two 32-byte slots per connection,
    /// rounded up to a power of two: a flow has four slots to choose from,
    /// and at the number asked for, half the slots are taken); IPv6 about
    /// 120 bytes each (a kernel LRU hash).
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

    /// How long a UDP flow may be idle before it chooses afresh (default 30
    /// s; at most about 49 days, as
    /// [`set_udp_timeout`](LoadBalancer::set_udp_timeout)).
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
    ///
    /// # Errors
    ///
    /// [`LoadError::InvalidCapacity`]; [`LoadError::MissingPrivileges`] and
    /// the other [`LoadError`]s when the kernel refuses the program or its
    /// maps; [`PinError`](crate::PinError)s for the pin directory;
    /// [`LbError`](crate::LbError)s for the IPIP sources and redirect
    /// interfaces given.
    pub fn load(self) -> Result<LoadBalancer, Error> {
        self.build(false)
    }

    /// Loads the LB and attaches it to every interface given. If any step
    /// fails, nothing is left attached or pinned.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), and [`AttachError`]s: no interface given,
    /// offload asked for, an interface not found, another XDP program
    /// there, a mode the driver cannot do.
    pub fn attach(self) -> Result<LoadBalancer, Error> {
        self.build(true)
    }

    fn build(self, attach: bool) -> Result<LoadBalancer, Error> {
        let targets = self.place.targets(attach)?;
        for (what, value, max, hint) in [
            ("max_vips", self.max_vips, 1 << 16, "give 1 to 65,536"),
            ("max_backends", self.max_backends, 1 << 20, "give 1 to 1,048,576"),
            ("connections", self.connections, 1 << 26, "give 1 to 67,108,864 connection-table entries"),
            (
                "nat_connections",
                self.nat_connections.unwrap_or(self.connections),
                1 << 26,
                "give 1 to 67,108,864 NAT entries",
            ),
            ("max_interfaces", self.max_interfaces, 1 << 12, "give 1 to 4,096"),
        ] {
            if value == 0 || value > max {
                return Err(LoadError::InvalidCapacity { what, value: value as usize, hint }.into());
            }
        }
        if attach && self.place.mode == AttachMode::Offload {
            return Err(AttachError::ModeUnsupported {
                interface: self.place.names(),
                mode: AttachMode::Offload,
                hint: "the load balancer uses map-in-map, LRU maps and the FIB, which NICs cannot offload; use \
                       native or auto mode",
            }
            .into());
        }
        Pinned::create(&self.place, targets, || {
            let (interval, burst) = self.new_flow_limit.gcra();
            let tick = ns_per_jiffy();
            let (netns, ns) = neigh::current().map_err(|source| LoadError::Bpf {
                op: "opening this thread's network namespace (/proc/thread-self/ns/net)".into(),
                error: source,
            })?;
            let cfg = xdpg_lb_config {
                hash_seed: self.hash_seed,
                echo_policy: self.echo.code(),
                frag_policy: self.fragments.code(),
                options_policy: self.options.code(),
                udp_timeout: udp_timeout_jiffies(self.udp_timeout, tick),
                new_flow_interval: interval,
                new_flow_burst: burst,
                nexthop_ttl: to_jiffies(self.next_hop_cache, tick),
                ns_per_jiffy: tick,
                ct4_mask: conntrack::lines_for(self.connections) - 1,
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
            let plan = LoadPlan { sizes: &cap.map_sizes(), offload_ifindex: None };
            let core = Pinned::load(LbSkelBuilder::default(), &plan, |maps: &LbMaps| maps.cfg.set(0, cfg))?;
            let lb = LoadBalancer { core, netns: Some(netns), probe: Default::default() };
            for prefix in &self.ipip_sources {
                lb.set_ipip_source(*prefix)?;
            }
            // Every interface it runs on can also be an egress.
            for iface in self.redirect.iter().chain(&self.place.interfaces) {
                lb.add_redirect_interface(iface.clone())?;
            }
            Ok(lb)
        })
    }
}
