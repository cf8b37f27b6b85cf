//! The load balancer's public vocabulary: VIPs, backends, modes and flows
//! (policies are in `policies.rs`). Everything is typed; nothing here is
//! raw bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::core::layout::consts::*;
use crate::core::names::named_values;
use crate::error::ParseError;

/// A transport protocol a VIP serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub(crate) fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

named_values! { Protocol, "protocol", {
    Tcp => "tcp",
    Udp => "udp",
} }

/// A virtual service: the packets with this destination address, port (or
/// any port) and protocol are load balanced.
///
/// ```
/// use xdpguard::{Protocol, Vip};
/// let web = Vip::tcp("203.0.113.10:80".parse().unwrap());
/// let dns = Vip::udp("[2001:db8::53]:53".parse().unwrap());
/// let any = Vip::all_ports("203.0.113.11".parse().unwrap(), Protocol::Udp);
/// assert_eq!(web.to_string(), "tcp 203.0.113.10:80");
/// assert_eq!(any.to_string(), "udp 203.0.113.11:*");
/// assert_eq!("udp [2001:db8::53]:53".parse::<Vip>().unwrap(), dns);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    /// The destination address.
    pub addr: IpAddr,
    /// The destination port; `None` takes every port of the protocol.
    pub port: Option<u16>,
    /// The protocol.
    pub protocol: Protocol,
}

impl Vip {
    /// A VIP for one address, port and protocol.
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        Vip { addr: addr.ip(), port: Some(addr.port()), protocol }
    }

    /// A TCP VIP.
    pub fn tcp(addr: SocketAddr) -> Self {
        Vip::new(addr, Protocol::Tcp)
    }

    /// A UDP VIP.
    pub fn udp(addr: SocketAddr) -> Self {
        Vip::new(addr, Protocol::Udp)
    }

    /// A VIP taking every port of `protocol` on `addr`. A VIP for a single
    /// port on the same address takes precedence over it.
    pub fn all_ports(addr: IpAddr, protocol: Protocol) -> Self {
        Vip { addr, port: None, protocol }
    }

    /// Whether it is an IPv6 VIP.
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Parses a VIP's address and port, the protocol given apart (as the
    /// CLI's `--proto` gives it): `203.0.113.10:80`, `[2001:db8::1]:80`,
    /// or every port with `203.0.113.10:*` or `[2001:db8::1]:*` (a bare
    /// address is refused: it would take every port unasked).
    ///
    /// ```
    /// use xdpguard::{Protocol, Vip};
    /// let dns = Vip::parse_with("[2001:db8::53]:53", Protocol::Udp)?;
    /// assert_eq!(dns, Vip::udp("[2001:db8::53]:53".parse()?));
    /// assert_eq!(Vip::parse_with("203.0.113.11:*", Protocol::Tcp)?.port, None);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`ParseError::Invalid`] naming the accepted forms;
    /// [`ParseError::VipWithoutPort`] for a bare address (every port is
    /// `ADDR:*`).
    pub fn parse_with(s: &str, protocol: Protocol) -> Result<Vip, ParseError> {
        if s.trim().parse::<IpAddr>().is_ok() {
            return Err(ParseError::VipWithoutPort { input: s.trim().to_owned() });
        }
        let (addr, port) = parse_addr_port(s, "VIP address", "203.0.113.10:80, [2001:db8::1]:80 or 203.0.113.10:*")?;
        Ok(Vip { addr, port, protocol })
    }
}

impl Vip {
    /// Its address and port as `Display` writes them: `203.0.113.10:80`,
    /// `[2001:db8::1]:53`, `203.0.113.10:*` for every port.
    pub(crate) fn endpoint(&self) -> String {
        let port = self.port.map(|p| p.to_string()).unwrap_or_else(|| "*".into());
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        }
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.protocol, self.endpoint())
    }
}

impl FromStr for Vip {
    type Err = ParseError;
    /// Parses `tcp 203.0.113.10:80`, `udp [2001:db8::1]:53` or
    /// `tcp 203.0.113.10:*` (what `Display` shows), also with `/` instead
    /// of the space, and with the protocol last (`203.0.113.10:80/tcp`).
    /// The address part is read as by [`Vip::parse_with`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let invalid = || ParseError::Invalid {
            what: "VIP",
            input: s.to_owned(),
            example: "`tcp 203.0.113.10:80`, `udp [2001:db8::53]:53`, `tcp 203.0.113.10:*` or `203.0.113.10:80/tcp`",
        };
        let (first, rest) = t.split_once([' ', '/']).ok_or_else(invalid)?;
        let (before, last) = t.rsplit_once([' ', '/']).ok_or_else(invalid)?;
        if let Ok(protocol) = first.parse() {
            return Vip::parse_with(rest, protocol);
        }
        if let Ok(protocol) = last.parse() {
            return Vip::parse_with(before, protocol);
        }
        // No protocol at either end: name the one that is not, when the
        // other end is an address.
        let is_addr = |a: &str| parse_addr_port(a, "", "").is_ok();
        Err(if is_addr(before) {
            last.parse::<Protocol>().unwrap_err()
        } else if is_addr(rest) {
            first.parse::<Protocol>().unwrap_err()
        } else {
            invalid()
        })
    }
}

/// Why no packet from another host reaches `addr` as a VIP or a backend
/// (unspecified, loopback, multicast or broadcast); `None` when it can be
/// one. (An IPv4-mapped IPv6 address is [`ipv4_mapped`]'s.)
pub(crate) fn unusable(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_loopback() => Some("a loopback address"),
        IpAddr::V4(a) if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_loopback() => Some("the loopback address"),
        IpAddr::V6(a) if a.is_multicast() => Some("a multicast address"),
        _ => None,
    }
}

/// The IPv4 address an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) stands
/// for: its packets are IPv4 packets, so as a VIP or backend it is refused
/// with this address as the fix ([`LbError::Ipv4Mapped`](crate::LbError::Ipv4Mapped)).
pub(crate) fn ipv4_mapped(addr: IpAddr) -> Option<std::net::Ipv4Addr> {
    match addr {
        IpAddr::V6(a) => a.to_ipv4_mapped(),
        IpAddr::V4(_) => None,
    }
}

/// A link-local address (169.254.0.0/16, fe80::/10): reached only on its
/// own link, never through a router, so no client off that link reaches a
/// VIP there.
pub(crate) fn link_local(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xFFC0 == 0xFE80,
    }
}

/// Parses `203.0.113.10:80`, `[2001:db8::1]:80`, `203.0.113.10:*` (port
/// `None`) or a bare address (port `None`); an error names `what` and
/// gives `example`.
fn parse_addr_port(s: &str, what: &'static str, example: &'static str) -> Result<(IpAddr, Option<u16>), ParseError> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Some(host) = t.strip_suffix(":*") {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((ip, None));
        }
    }
    Err(ParseError::Invalid { what, input: s.to_owned(), example })
}

/// How packets reach a VIP's backends. Modes are added (NAT was): match
/// with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardingMode {
    /// Layer-2 direct server return: only the Ethernet header changes (the
    /// destination MAC becomes the backend's, the FIB's next hop for the
    /// backend address, and the source MAC the egress interface's); the IP
    /// packet goes on byte for byte, TTL included. So backends must be on a
    /// link the LB reaches and hold the VIP on a loopback interface. They
    /// answer clients directly. Same address family only; no port change.
    /// A packet that finds the backend's next hop unresolved (rare: the
    /// library keeps it resolved) is replaced by a probe that makes the
    /// kernel resolve it, so that packet itself is lost and the client
    /// retransmits it (see [`LoadBalancer`](crate::LoadBalancer), "Next hops and
    /// neighbours").
    L2Dsr,
    /// IP-in-IP encapsulation (IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6):
    /// backends may be any number of hops away, decapsulate (see
    /// [`Decap`](crate::Decap)) and answer clients directly. The outer
    /// source comes from the flow hash inside the prefix set with
    /// [`LoadBalancer::set_ipip_source`](crate::LoadBalancer::set_ipip_source).
    #[default]
    Ipip,
    /// Destination NAT: the destination address (and port, if the backend
    /// has one) become the backend's, with checksums fixed, and the TTL or
    /// hop limit drops by one as in any router (a packet it would expire is
    /// passed to the stack, which answers "time exceeded"). Replies must
    /// come back through the LB (e.g. it is the backends' gateway), where
    /// their source becomes the VIP again. Same address family only.
    ///
    /// A backend address and port serve one VIP address and port. The
    /// backend knows a connection by the client's address and port and its
    /// own, and so does the LB's translation of its replies (which holds no
    /// VIP): two connections from one client address and port (Linux reuses
    /// a source port towards different destinations) to two VIPs that reach
    /// the same backend address and port would be one connection there, and
    /// one's replies would leave from the other VIP. So
    /// [`LoadBalancer::add_backend`](crate::LoadBalancer::add_backend)
    /// refuses a backend that another NAT VIP of the protocol (another
    /// address or port) already reaches on the same address and port
    /// ([`LbError::NatBackendConflict`](crate::LbError::NatBackendConflict)):
    /// give the two VIPs distinct backend ports (`198.51.100.11:8443` and
    /// `198.51.100.11:9443`) or addresses. The backends of an all-ports NAT
    /// VIP keep each packet's destination port: they take no port of their
    /// own ([`LbError::NatPortOnAllPortsVip`](crate::LbError::NatPortOnAllPortsVip)),
    /// and their address serves no other NAT VIP of the protocol, except a
    /// single-port VIP of the same address whose backend keeps that port
    /// (`203.0.113.10:443` next to `203.0.113.10:*`, both to `198.51.100.11`:
    /// the single-port VIP takes port 443 first).
    Nat,
}

impl ForwardingMode {
    pub(crate) fn code(self) -> u8 {
        (match self {
            ForwardingMode::L2Dsr => XDPG_LB_MODE_DSR,
            ForwardingMode::Ipip => XDPG_LB_MODE_IPIP,
            ForwardingMode::Nat => XDPG_LB_MODE_NAT,
        }) as u8
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        match u32::from(c) {
            XDPG_LB_MODE_DSR => Some(ForwardingMode::L2Dsr),
            XDPG_LB_MODE_IPIP => Some(ForwardingMode::Ipip),
            XDPG_LB_MODE_NAT => Some(ForwardingMode::Nat),
            _ => None,
        }
    }
}

named_values! { ForwardingMode, "forwarding mode", {
    L2Dsr => "dsr" | "l2dsr" | "l2-dsr",
    Ipip => "ipip" | "tunnel",
    Nat => "nat",
} }

/// What a VIP's flow hash covers.
///
/// Fragments carry no ports (after the first one), so the data plane hashes
/// them without: under [`FiveTuple`](Self::FiveTuple), a datagram's
/// fragments and the same flow's whole packets land on different backends
/// (as a rule), while under [`SourceAddress`](Self::SourceAddress) they
/// agree. Only all-ports VIPs take fragments
/// ([`FragmentPolicy`](crate::FragmentPolicy)), so an all-ports VIP
/// defaults to `SourceAddress` ([`VipConfig::for_vip`]; CLI: `vip add`
/// without `--hash`; a configuration's `[[lb.vip]]` without `hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashInput {
    /// Source and destination address, ports and protocol (ports left out
    /// for fragments: on an all-ports VIP a flow's fragments then go to
    /// another backend than its whole packets, as a rule). The default for
    /// a single-port VIP, which takes no fragments.
    #[default]
    FiveTuple,
    /// The source address only: a client sticks to one backend whatever
    /// its source port, and a flow's fragments go where its whole packets
    /// go. The default for an all-ports VIP ([`VipConfig::for_vip`]).
    SourceAddress,
}

impl HashInput {
    /// The hash a VIP gets unless told otherwise: the source address for an
    /// all-ports VIP (which takes fragments: see [`HashInput`]), the five
    /// tuple for a single-port one.
    pub fn default_for(vip: &Vip) -> HashInput {
        if vip.port.is_none() {
            HashInput::SourceAddress
        } else {
            HashInput::FiveTuple
        }
    }
}

named_values! { HashInput, "hash input", {
    FiveTuple => "five-tuple" | "5-tuple",
    SourceAddress => "source" | "src" | "source-address",
} }

/// A VIP's settings. Fixed while the VIP exists: remove and re-add it to
/// change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VipConfig {
    /// How packets reach the backends (for NAT, which backends a VIP may
    /// share with others: see [`ForwardingMode::Nat`]).
    pub mode: ForwardingMode,
    /// Maglev table size: a prime (default 65537). Backends share it in
    /// proportion to their weights, so more slots per backend mean fairer
    /// shares: 100 or more (Maglev's recommendation) keep each backend
    /// within about 1% of its share, 65537 does that for up to 655
    /// backends. Fewer than 10 slots per backend is refused
    /// ([`LbError::TableTooSmall`](crate::LbError::TableTooSmall)): a slot
    /// would then be over a tenth of a backend's share.
    pub table_size: u32,
    /// What the flow hash covers.
    pub hash: HashInput,
    /// Whether flows are tracked in the connection table (default true).
    /// Without it, changing the backend set moves some live flows; only
    /// benchmarks and stateless UDP services want that off. NAT needs it.
    pub conntrack: bool,
}

impl Default for VipConfig {
    fn default() -> Self {
        VipConfig {
            mode: ForwardingMode::default(),
            table_size: DEFAULT_TABLE_SIZE,
            hash: HashInput::FiveTuple,
            conntrack: true,
        }
    }
}

impl VipConfig {
    /// The defaults, with this mode: a five-tuple hash, which suits a
    /// single-port VIP; for an all-ports one, see [`VipConfig::for_vip`].
    pub fn new(mode: ForwardingMode) -> Self {
        VipConfig { mode, ..Default::default() }
    }

    /// The defaults for `vip`, with this mode: as [`VipConfig::new`], with
    /// the hash [`HashInput::default_for`] gives (the source address for an
    /// all-ports VIP, so a flow's fragments reach the backend its whole
    /// packets do). What the CLI and configuration files use.
    pub fn for_vip(vip: &Vip, mode: ForwardingMode) -> Self {
        VipConfig::new(mode).hash(HashInput::default_for(vip))
    }

    /// Sets the Maglev table size: a prime, at least 10 and preferably 100
    /// times the number of backends (see [`VipConfig::table_size`]).
    pub fn table_size(mut self, size: u32) -> Self {
        self.table_size = size;
        self
    }

    /// Sets what the flow hash covers.
    pub fn hash(mut self, hash: HashInput) -> Self {
        self.hash = hash;
        self
    }

    /// Turns connection tracking on or off.
    pub fn conntrack(mut self, on: bool) -> Self {
        self.conntrack = on;
        self
    }

    pub(crate) fn flags(&self) -> u8 {
        let mut f = 0;
        if self.hash == HashInput::SourceAddress {
            f |= XDPG_LB_VIP_HASH_SRC_ONLY;
        }
        if !self.conntrack {
            f |= XDPG_LB_VIP_NO_CONNTRACK;
        }
        f as u8
    }
}

impl fmt::Display for VipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mode {}, table size {}", self.mode, self.table_size)?;
        if self.hash == HashInput::SourceAddress {
            f.write_str(", source-address hash")?;
        }
        if !self.conntrack {
            f.write_str(", no conntrack")?;
        }
        Ok(())
    }
}

/// The default Maglev table size (a prime).
pub const DEFAULT_TABLE_SIZE: u32 = XDPG_LB_DEFAULT_TABLE_SIZE;
/// The largest Maglev table size accepted.
pub const MAX_TABLE_SIZE: u32 = XDPG_LB_MAX_TABLE_SIZE;
/// The smallest Maglev table size accepted.
pub const MIN_TABLE_SIZE: u32 = 7;
/// The largest backend weight.
pub const MAX_WEIGHT: u32 = 65535;

/// A backend: an address, and for NAT optionally a port (otherwise the
/// client's destination port is kept). Ordered canonically (family,
/// address, port): Maglev tables are built in this order, so every LB node
/// with the same backends builds the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    /// The backend's address.
    pub ip: IpAddr,
    /// NAT only: the destination port on the backend.
    pub port: Option<u16>,
}

impl BackendAddr {
    /// A backend by address, keeping the destination port.
    pub fn new(ip: IpAddr) -> Self {
        BackendAddr { ip, port: None }
    }

    /// The bytes the Maglev permutation of this backend is derived from:
    /// family, address, port. Identity only, nothing about insertion order.
    pub(crate) fn identity(&self) -> [u8; 19] {
        let mut id = [0u8; 19];
        match self.ip {
            IpAddr::V4(a) => {
                id[0] = 4;
                id[1..5].copy_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                id[0] = 6;
                id[1..17].copy_from_slice(&a.octets());
            }
        }
        id[17..19].copy_from_slice(&self.port.unwrap_or(0).to_be_bytes());
        id
    }
}

impl From<IpAddr> for BackendAddr {
    fn from(ip: IpAddr) -> Self {
        BackendAddr::new(ip)
    }
}

impl From<Ipv4Addr> for BackendAddr {
    fn from(ip: Ipv4Addr) -> Self {
        BackendAddr::new(ip.into())
    }
}

impl From<Ipv6Addr> for BackendAddr {
    fn from(ip: Ipv6Addr) -> Self {
        BackendAddr::new(ip.into())
    }
}

impl From<SocketAddr> for BackendAddr {
    fn from(sa: SocketAddr) -> Self {
        BackendAddr { ip: sa.ip(), port: Some(sa.port()) }
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ip, self.port) {
            (ip, None) => write!(f, "{ip}"),
            (IpAddr::V4(a), Some(p)) => write!(f, "{a}:{p}"),
            (IpAddr::V6(a), Some(p)) => write!(f, "[{a}]:{p}"),
        }
    }
}

impl FromStr for BackendAddr {
    type Err = ParseError;
    /// Parses an address (`198.51.100.11`, `2001:db8::11`), or for NAT an
    /// address and port (`198.51.100.11:8080`, `[2001:db8::11]:8080`):
    /// what `Display` shows. `ADDR:*` is the address alone (the client's
    /// port kept).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, port) =
            parse_addr_port(s, "backend", "198.51.100.11, 198.51.100.11:8080 (NAT) or [2001:db8::11]:8080")?;
        Ok(BackendAddr { ip, port })
    }
}

/// A backend of a VIP, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Its address.
    pub addr: BackendAddr,
    /// Its weight; 0 means draining.
    pub weight: u32,
}

impl Backend {
    /// Whether it gets new flows.
    pub fn state(&self) -> BackendState {
        if self.weight == 0 {
            BackendState::Draining
        } else {
            BackendState::Active
        }
    }
}

/// Whether a backend takes new flows. Exhaustive: a backend's weight is 0
/// or not, and code that acts on each case should be told of a third.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendState {
    /// In the Maglev table: gets new flows.
    Active,
    /// Weight 0: no new flows; tracked flows keep going to it.
    Draining,
}

named_values! { BackendState, "backend state", {
    Active => "active",
    Draining => "draining",
} }

/// Whether the kernel has resolved a backend's next hop (the backend on its
/// link, or the gateway towards it): the data plane forwards in XDP only
/// to a resolved one. Read from the kernel's neighbour table, whose states
/// this may come to tell further apart: match with a `_` arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NeighbourState {
    /// Resolved (reachable, or stale but usable, or a permanent entry):
    /// packets to the backend are forwarded in XDP.
    Resolved,
    /// Being resolved (or about to be): packets go through the LB host's
    /// stack meanwhile (see [`BackendStats::no_neighbour`](crate::BackendStats::no_neighbour)).
    Resolving,
    /// The kernel's last attempt got no answer: the host (or its gateway)
    /// is down or absent. Its packets are counted in
    /// [`BackendStats::no_neighbour`](crate::BackendStats::no_neighbour)
    /// and dropped by the stack; a managed entry keeps being retried
    /// (every 5 s by default), so this alternates with `Resolving` while
    /// the host stays away.
    Unreachable,
    /// No unicast route to the backend: its packets go to the stack
    /// (counted as `passed_no_route`).
    NoRoute,
    /// Not known: the load balancer's network namespace cannot be reached
    /// from this thread (see [`LbError::ForeignNamespace`](crate::LbError::ForeignNamespace)).
    Unknown,
}

named_values! { NeighbourState, "neighbour state", {
    Resolved => "resolved",
    Resolving => "resolving",
    Unreachable => "unreachable",
    NoRoute => "no-route",
    Unknown => "unknown",
} }

/// Where the LB sends a backend's packets next, as the data plane's route
/// lookup (`bpf_fib_lookup`) finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// The neighbour: the backend itself when on-link, else the gateway
    /// towards it (None: no route).
    pub via: Option<IpAddr>,
    /// The egress interface's index (0: no route).
    pub ifindex: u32,
    /// Whether the kernel has resolved that neighbour.
    pub state: NeighbourState,
}

impl NextHop {
    pub(crate) const UNKNOWN: NextHop = NextHop { via: None, ifindex: 0, state: NeighbourState::Unknown };
}

/// A client's flow to a VIP, for [`LoadBalancer::vip_for`](crate::LoadBalancer::vip_for)
/// and [`LoadBalancer::backend_for`](crate::LoadBalancer::backend_for).
///
/// `dst` holds the port the client connects to, also for a flow to an
/// all-ports VIP: the kernel hashes the port each packet carries, so the
/// backend depends on it (`backend_for` refuses port 0 there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The client's address and port.
    pub src: SocketAddr,
    /// The VIP address and the destination port the client connects to.
    pub dst: SocketAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// An IP fragment: hashed without ports (so under a five-tuple hash
    /// it may go to another backend than the flow's whole packets: see
    /// [`HashInput`]).
    pub fragment: bool,
}

impl Flow {
    /// A flow from `src` to `dst`.
    pub fn new(src: SocketAddr, dst: SocketAddr, protocol: Protocol) -> Self {
        Flow { src, dst, protocol, fragment: false }
    }

    /// The same flow's fragments, hashed without ports: only an all-ports
    /// VIP takes them, and they reach the backend the whole packets do
    /// only under its default source-address hash ([`HashInput`]), not
    /// under a five-tuple one.
    pub fn fragment(mut self) -> Self {
        self.fragment = true;
        self
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.protocol, self.src, self.dst)?;
        if self.fragment {
            f.write_str(" (fragment)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vip_parse_and_print() {
        for s in ["tcp 203.0.113.10:80", "udp [2001:db8::53]:53", "tcp 203.0.113.11:*", "udp [2001:db8::1]:*"] {
            let v: Vip = s.parse().unwrap();
            assert_eq!(v.to_string(), s);
        }
        // A bare address would take every port (SSH's too): refused, as is
        // an IPv6 address with a port but no brackets (another address).
        for bare in ["tcp/203.0.113.10", "tcp 203.0.113.20", "udp 2001:db8:10::10:53", "203.0.113.10 tcp"] {
            let e = bare.parse::<Vip>().unwrap_err();
            assert!(matches!(e, ParseError::VipWithoutPort { .. }), "{bare}: {e:?}");
            assert!(e.to_string().contains("has no port") && e.to_string().contains("ADDR:*"), "{e}");
        }
        assert_eq!("tcp/203.0.113.10:*".parse::<Vip>().unwrap().port, None);
        assert_eq!("203.0.113.10:80/tcp".parse::<Vip>(), Ok(Vip::tcp("203.0.113.10:80".parse().unwrap())));
        assert_eq!("[2001:db8::53]:53 UDP".parse::<Vip>(), Ok(Vip::udp("[2001:db8::53]:53".parse().unwrap())));
        for bad in ["sctp 203.0.113.10:80", "203.0.113.10:80/sctp", "sctp/[2001:db8::1]:*"] {
            assert_eq!(bad.parse::<Vip>().unwrap_err().to_string(), "unknown protocol `sctp` (expected tcp or udp)");
        }
        assert!(matches!("web tcp".parse::<Vip>(), Err(ParseError::Invalid { what: "VIP address", .. })));
        assert!(matches!("web server".parse::<Vip>(), Err(ParseError::Invalid { what: "VIP", .. })));
        let e = "tcp nowhere:80".parse::<Vip>().unwrap_err();
        assert!(matches!(&e, ParseError::Invalid { what: "VIP address", input, .. } if input == "nowhere:80"), "{e:?}");
        let e = "203.0.113.10:80".parse::<Vip>().unwrap_err();
        assert!(e.to_string().starts_with("invalid VIP `203.0.113.10:80`: expected e.g. `tcp 203.0.113.10:80`"), "{e}");
        for (s, port) in [("203.0.113.10:80", Some(80)), ("[2001:db8::1]:*", None), (" 203.0.113.10:* ", None)] {
            let v = Vip::parse_with(s, Protocol::Udp).unwrap();
            assert_eq!((v.port, v.protocol), (port, Protocol::Udp), "{s}");
            assert_eq!(v.to_string().parse::<Vip>(), Ok(v), "{s}");
        }
        for bad in ["203.0.113.10:", "203.0.113.10:65536", "[2001:db8::1:*", "[203.0.113.10]:80", ""] {
            assert!(Vip::parse_with(bad, Protocol::Tcp).is_err(), "{bad}");
        }
    }

    #[test]
    fn backend_parse_and_print() {
        for s in ["198.51.100.11", "198.51.100.11:8080", "2001:db8::11", "[2001:db8::11]:8080"] {
            let b: BackendAddr = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
        assert_eq!("198.51.100.11:*".parse::<BackendAddr>(), Ok(BackendAddr::new("198.51.100.11".parse().unwrap())));
        let e = "backend-1".parse::<BackendAddr>().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid backend `backend-1`: expected e.g. 198.51.100.11, 198.51.100.11:8080 (NAT) or [2001:db8::11]:8080"
        );
    }

    #[test]
    fn backend_order_is_canonical() {
        let mut v: Vec<BackendAddr> = ["198.51.100.3", "2001:db8::1", "198.51.100.1:8080", "198.51.100.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        v.sort();
        let shown: Vec<String> = v.iter().map(|b| b.to_string()).collect();
        assert_eq!(shown, ["198.51.100.1", "198.51.100.1:8080", "198.51.100.3", "2001:db8::1"]);
        assert_ne!(v[0].identity(), v[1].identity());
    }
}
