//! A seeded differential fuzzer for the load balancer: random and mutated
//! frames through the real program (BPF_PROG_TEST_RUN with its live maps,
//! in a VerdictNet namespace whose permanent neighbours let
//! `bpf_fib_lookup` resolve next hops), each compared with a Rust model of
//! the documented behaviour (src/lb/mod.rs, src/lb/types.rs, src/lb/stats.rs).
//!
//! Frames: TCP and UDP to single-port and all-ports VIPs of every mode and
//! family, VLAN tags, IPv4 options and fragments, IPv6 extension headers
//! and fragments, ICMP echo, ICMP errors quoting VIP flows (from the
//! client side) and NAT flows (from the backend side), NAT replies, other
//! protocols, non-IP frames, garbage; then truncations, byte flips, field
//! mutations and padding. Between epochs the backend sets and the policies
//! change, so tracked flows, drained and removed backends are exercised.
//!
//! Checks, per frame:
//! - never `XDP_ABORTED`; a passed frame is byte-identical (unless it goes
//!   to the stack rewritten, or as a probe, for a next hop without a
//!   resolved neighbour, as documented);
//! - the verdict and the whole output frame are what the model predicts:
//!   mode, backend, IPIP outer header, NAT rewrite with checksums, ICMP
//!   answers, MACs of the next hop (VerdictNet's permanent neighbours) and
//!   of the egress interface, `XDP_TX` or `XDP_REDIRECT` by egress;
//! - independently of the model: a forwarded frame leaves with the egress
//!   interface's MAC as source and a known neighbour's (or, for answers,
//!   the sender's) as destination, every checksum etherparse can verify is
//!   valid (when the input's were), and the backend the kernel picked is
//!   one of the VIP's, active for a new flow;
//! - `LoadBalancer::vip_for` and `backend_for`, asked about the flow as
//!   `xdpguard-lb which` asks (the real destination port, also for
//!   all-ports VIPs), name the VIP and backend the kernel used;
//!
//! and per epoch the global counters match the model's.
//!
//! The model is written from the documentation; where the program disagrees
//! the fuzzer reports it. So does a NAT reply entry that replaces another
//! flow's (two flows from one client address and port reaching one backend
//! address and port from different VIP ports or addresses): the library
//! refuses the configurations that allow it, so it must never happen.
//!
//! CI runs 100,000 frames (about 3 s here; seed below). A larger run:
//! `XDPG_FUZZ_FRAMES=2000000 XDPG_FUZZ_SEED=7 cargo test --release --test lb_fuzz -- --nocapture`
//! (about 30 s). A disagreement prints the seed, frame index, the frame and
//! how it was made, the model's reasoning, the frame hex, expected and got.
//! To dig in: `XDPG_FUZZ_SHOW=N` prints N disagreements, `XDPG_FUZZ_TRACE=I`
//! prints frame I whatever happens to it, `XDPG_FUZZ_COUNTERS_EVERY=1`
//! checks the counters after every frame.
//!
//! Besides the run itself: `injected_faults_are_caught` proves the checks
//! catch faults injected into the kernel's answers, and
//! `all_ports_vips_hash_the_port_each_flow_carries` pins issue 14's second
//! bug down.
//!
//! Needs root; fails (does not skip) without it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::etherparse::{
    Icmpv4Header, Icmpv6Header, IpNumber, Ipv4Header, Ipv6Header, TcpHeader, UdpHeader,
};
use xdpguard::testing::frame::{insert_vlan_tags, Ext, Frame, FrameBuilder, Icmp, VlanTag, TPID_8021AD, TPID_8021Q};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{
    BackendAddr, EchoPolicy, Flow, ForwardingMode, FragmentPolicy, HashInput, LbError, LbStats, LoadBalancer,
    NewFlowLimit, OptionsPolicy, Protocol, Vip, VipConfig, XdpAction,
};

/// Frames in the CI-sized run.
const CI_FRAMES: usize = 100_000;
/// The CI run's seed.
const CI_SEED: u64 = 0x14;
/// Frames between configuration changes.
const EPOCH: usize = 4_000;
/// Failures printed in full (all are counted).
const SHOWN: usize = 8;

/// The egress MTU of both interfaces (VerdictNet leaves the default).
const MTU: usize = 1500;

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: not a number ({e})")))
}

// ---------------------------------------------------------------------------
// Incremental checksum updates (RFC 1624, eqn. 3), as the program makes
// them: the model rewrites frames the way the program does; the test kit
// builds every frame whole.

fn fold(mut s: u64) -> u16 {
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// HC' = ~(~HC + ~m + m') over every changed 16-bit word.
fn csum_update(old: u16, changes: &[(u16, u16)]) -> u16 {
    let mut s = u64::from(!old);
    for &(from, to) in changes {
        s += u64::from(!from) + u64::from(to);
    }
    !fold(s)
}

fn words(b: &[u8]) -> Vec<u16> {
    b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect()
}

/// (old, new) word pairs of a field that changed from `old` to `new`.
fn word_changes(old: &[u8], new: &[u8]) -> Vec<(u16, u16)> {
    words(old).into_iter().zip(words(new)).collect()
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

// ---------------------------------------------------------------------------
// The network: VerdictNet's interfaces, routes and permanent neighbours.

const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0x0c, 0x99];
/// Backends 1..=6 have neighbour entries; backend 7 has none.
const BACKENDS: usize = 6;
const NO_NEIGH_BACKEND: usize = 7;

#[derive(Clone, Copy, Debug)]
struct Net {
    eth0: u32,
    eth1: u32,
    eth0_mac: [u8; 6],
    eth1_mac: [u8; 6],
}

/// The FIB's answer for a destination.
#[derive(Clone, Copy, Debug)]
enum Hop {
    Via { ifindex: u32, mac: [u8; 6] },
    NoNeighbour,
    NoRoute,
}

impl Net {
    fn mac(&self, ifindex: u32) -> [u8; 6] {
        if ifindex == self.eth0 {
            self.eth0_mac
        } else {
            self.eth1_mac
        }
    }

    /// The connected subnets (the LB namespace has no other routes) and
    /// the permanent neighbours. The local table's addresses are not
    /// forwarded to: the LB's own, the subnets' IPv4 broadcast and IPv6
    /// subnet-router anycast addresses.
    fn hop(&self, dst: IpAddr) -> Hop {
        let local: [IpAddr; 8] = [
            IpAddr::V4(LB_FRONT_V4),
            IpAddr::V6(LB_FRONT_V6),
            IpAddr::V4(LB_BACK_V4),
            IpAddr::V6(LB_BACK_V6),
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255)),
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 255)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0)),
        ];
        if local.contains(&dst) {
            return Hop::NoRoute;
        }
        let ifindex = match dst {
            IpAddr::V4(a) if a.octets()[..3] == [192, 0, 2] => self.eth0,
            IpAddr::V4(a) if a.octets()[..3] == [198, 51, 100] => self.eth1,
            IpAddr::V6(a) if a.segments()[..4] == [0x2001, 0xdb8, 0xc, 0] => self.eth0,
            IpAddr::V6(a) if a.segments()[..4] == [0x2001, 0xdb8, 0xb, 0] => self.eth1,
            _ => return Hop::NoRoute,
        };
        let mac = if dst == IpAddr::V4(CLIENT_V4) || dst == IpAddr::V6(CLIENT_V6) {
            Some(CLIENT_MAC)
        } else if dst == IpAddr::V4(ROUTER_V4) || dst == IpAddr::V6(ROUTER_V6) {
            Some(ROUTER_MAC)
        } else {
            (1..=BACKENDS)
                .find(|&i| dst == IpAddr::V4(backend_v4(i)) || dst == IpAddr::V6(backend_v6(i)))
                .map(backend_mac)
        };
        match mac {
            Some(mac) => Hop::Via { ifindex, mac },
            None => Hop::NoNeighbour,
        }
    }

    /// Every MAC a forwarded frame may be sent to.
    fn neighbour_macs(&self) -> Vec<[u8; 6]> {
        let mut v = vec![CLIENT_MAC, ROUTER_MAC];
        v.extend((1..=BACKENDS).map(backend_mac));
        v
    }
}

// ---------------------------------------------------------------------------
// Parsing, by the documented rules: Ethernet with up to two VLAN tags,
// IPv4 (options honoured, total length within the frame), IPv6 (payload
// length within the frame, up to 8 extension headers walked).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fam {
    V4,
    V6,
}

#[derive(Clone, Debug)]
struct Ip {
    fam: Fam,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4 total length; IPv6 40 + payload length.
    l3_len: usize,
    /// How far headers after the IP header may be read: the end of the IP
    /// packet, not of the frame (whose trailing bytes, such as Ethernet
    /// padding, are not part of the packet).
    bound: usize,
    /// The IPv4 header's length (IPv6: 40).
    hdr_len: usize,
    /// The transport protocol (IPv6: after extension headers).
    proto: u8,
    /// The transport header's offset; None for later fragments and cut chains.
    l4: Option<usize>,
    fragment: bool,
    options: bool,
    ttl: u8,
    df: bool,
}

#[derive(Clone, Debug)]
enum Parsed {
    NonIp,
    Malformed,
    Ip(Ip),
}

const MAX_EXT_HDRS: usize = 8;

fn parse(f: &[u8]) -> (usize, Parsed) {
    let mut et = be16(f, 12);
    let mut off = 14;
    let mut tags = 0;
    while et == 0x8100 || et == 0x88A8 {
        if tags == 2 || f.len() < off + 4 {
            return (tags, Parsed::Malformed);
        }
        et = be16(f, off + 2);
        off += 4;
        tags += 1;
    }
    let parsed = match et {
        0x0800 => parse_v4(f, off),
        0x86DD => parse_v6(f, off),
        _ => Parsed::NonIp,
    };
    (tags, parsed)
}

fn parse_v4(f: &[u8], off: usize) -> Parsed {
    if f.len() < off + 20 || f[off] >> 4 != 4 || f[off] & 0xF < 5 {
        return Parsed::Malformed;
    }
    let hdr = usize::from(f[off] & 0xF) * 4;
    let tot = usize::from(be16(f, off + 2));
    if off + hdr > f.len() || tot < hdr || off + tot > f.len() {
        return Parsed::Malformed;
    }
    let frag = be16(f, off + 6);
    let later = frag & 0x1FFF != 0;
    Parsed::Ip(Ip {
        fam: Fam::V4,
        src: IpAddr::V4(Ipv4Addr::new(f[off + 12], f[off + 13], f[off + 14], f[off + 15])),
        dst: IpAddr::V4(Ipv4Addr::new(f[off + 16], f[off + 17], f[off + 18], f[off + 19])),
        l3_len: tot,
        bound: off + tot,
        hdr_len: hdr,
        proto: f[off + 9],
        l4: (!later).then_some(off + hdr),
        fragment: frag & 0x3FFF != 0,
        options: hdr > 20,
        ttl: f[off + 8],
        df: frag & 0x4000 != 0,
    })
}

fn parse_v6(f: &[u8], off: usize) -> Parsed {
    if f.len() < off + 40 || f[off] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let plen = usize::from(be16(f, off + 4));
    if off + 40 + plen > f.len() {
        return Parsed::Malformed;
    }
    // Payload length 0 is a 40-byte packet. With a hop-by-hop header it
    // claims a jumbogram (RFC 2675), whose length lives in a hop-by-hop
    // option: no frame XDP sees can be one, and the LB passes it as
    // malformed (here: its hop-by-hop header lies past the 40 bytes).
    let end = off + 40 + plen;
    let mut next = f[off + 6];
    let mut at = off + 40;
    let (mut fragment, mut later) = (false, false);
    let mut l4 = None;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            0 | 43 | 60 => {
                if at + 2 > end {
                    return Parsed::Malformed;
                }
                let len = (usize::from(f[at + 1]) + 1) * 8;
                if at + len > end {
                    return Parsed::Malformed;
                }
                next = f[at];
                at += len;
            }
            44 => {
                if at + 8 > end {
                    return Parsed::Malformed;
                }
                // Offset 0 without more fragments: an atomic fragment, whole.
                fragment |= be16(f, at + 2) & 0xFFF9 != 0;
                later |= be16(f, at + 2) & 0xFFF8 != 0;
                next = f[at];
                at += 8;
                // A later fragment's payload holds no header: the walk
                // stops, its next header the protocol.
                if later {
                    break;
                }
            }
            _ => {
                l4 = Some(at);
                break;
            }
        }
    }
    // The walk's last header may lead to the transport header (read as such).
    if l4.is_none() && !matches!(next, 0 | 43 | 60 | 44) && at <= 4096 {
        l4 = Some(at);
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&f[off + 8..off + 24]);
    let src = IpAddr::V6(Ipv6Addr::from(a));
    a.copy_from_slice(&f[off + 24..off + 40]);
    let dst = IpAddr::V6(Ipv6Addr::from(a));
    Parsed::Ip(Ip {
        fam: Fam::V6,
        src,
        dst,
        l3_len: 40 + plen,
        bound: end,
        hdr_len: 40,
        proto: next,
        l4: if later { None } else { l4 },
        fragment,
        options: false,
        ttl: f[off + 7],
        df: false,
    })
}

/// What the program does with a frame, as the model predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    /// Passed to the stack rewritten (a next hop without a resolved neighbour).
    PassRewritten(Vec<u8>),
    Drop,
    Tx(Vec<u8>),
    Redirect(Vec<u8>),
}

impl Verdict {
    fn action(&self) -> XdpAction {
        match self {
            Verdict::Pass | Verdict::PassRewritten(_) => XdpAction::Pass,
            Verdict::Drop => XdpAction::Drop,
            Verdict::Tx(_) => XdpAction::Tx,
            Verdict::Redirect(_) => XdpAction::Redirect,
        }
    }

    fn frame(&self) -> Option<&[u8]> {
        match self {
            Verdict::Tx(f) | Verdict::Redirect(f) | Verdict::PassRewritten(f) => Some(f),
            _ => None,
        }
    }
}

/// Which VIP and backend a frame was for, to check the kernel's pick.
#[derive(Clone, Copy, Debug)]
struct Pick {
    vip: Vip,
    backend: BackendAddr,
    /// Chosen afresh (Maglev): must be an active backend.
    fresh: bool,
}

#[derive(Clone, Debug)]
struct Prediction {
    verdict: Verdict,
    /// The path through the documented behaviour, for failure reports.
    why: String,
    /// Counter rows (LbStats::rows names) this frame adds one packet to.
    counters: Vec<&'static str>,
    pick: Option<Pick>,
    /// Offsets of checksums the program updates incrementally: when the
    /// input's checksums were wrong, +0 and -0 (0x0000, 0xFFFF) are equal.
    soft_csums: Vec<usize>,
    /// The frame could not be predicted (a flow the library refuses to
    /// answer for); only the model-free checks apply.
    unpredictable: Option<String>,
    /// The library answered a question about the frame's flow wrongly.
    library: Option<String>,
    /// What the frame leaves in the connection and NAT tables.
    effects: Vec<Effect>,
}

/// A connection-table entry (flow, backend, its incarnation) or a NAT
/// reply entry (reply flow, VIP address and port) the frame creates.
#[derive(Clone, Debug)]
enum Effect {
    Track(Key, BackendAddr, u64),
    Nat(Key, IpAddr, u16),
    /// A flow the model could not predict: the kernel may have tracked it
    /// and made NAT entries towards its client; later frames that depend on
    /// them are unpredictable too.
    Taint(Key),
}

impl Prediction {
    fn new(verdict: Verdict, why: impl Into<String>, counters: &[&'static str]) -> Self {
        Prediction {
            verdict,
            why: why.into(),
            counters: counters.to_vec(),
            pick: None,
            soft_csums: Vec::new(),
            unpredictable: None,
            library: None,
            effects: Vec::new(),
        }
    }

    /// Whether it goes on towards its next hop: out (XDP_TX or
    /// XDP_REDIRECT), or rewritten through the stack.
    fn forwarded(&self) -> bool {
        self.counters.contains(&"tx")
            || self.counters.contains(&"redirected")
            || matches!(self.verdict, Verdict::PassRewritten(_))
    }

    fn pass(why: impl Into<String>, counter: &'static str) -> Self {
        Prediction::new(Verdict::Pass, why, &[counter])
    }

    fn drop(why: impl Into<String>, counter: &'static str) -> Self {
        Prediction::new(Verdict::Drop, why, &[counter])
    }

    fn count(mut self, counter: &'static str) -> Self {
        self.counters.push(counter);
        self
    }

    fn because(mut self, why: impl std::fmt::Display) -> Self {
        self.why = format!("{why}; {}", self.why);
        self
    }
}

// ---------------------------------------------------------------------------
// The model.

/// A flow key as connection and NAT tables hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
}

impl Key {
    fn flow(&self) -> Flow {
        let proto = if self.proto == 6 { Protocol::Tcp } else { Protocol::Udp };
        Flow::new(SocketAddr::new(self.src, self.sport), SocketAddr::new(self.dst, self.dport), proto)
    }
}

#[derive(Clone, Debug)]
struct VipModel {
    config: VipConfig,
    /// Backend -> (weight, incarnation): a removed and re-added backend is a
    /// new incarnation, which tracked flows of the old one do not follow.
    backends: BTreeMap<BackendAddr, (u32, u64)>,
    /// Backends this VIP may be given (by mode and family).
    pool: Vec<BackendAddr>,
}

struct Model {
    net: Net,
    vips: BTreeMap<Vip, VipModel>,
    conns: HashMap<Key, (BackendAddr, u64)>,
    /// NAT reply key (backend -> client) -> (VIP address, VIP port).
    nat: HashMap<Key, (IpAddr, u16)>,
    nat_keys: Vec<Key>,
    tainted: std::collections::HashSet<Key>,
    /// (client address, port, protocol) of tainted flows: NAT replies to them.
    tainted_clients: std::collections::HashSet<(IpAddr, u16, u8)>,
    /// NAT reply entries that replaced another flow's (see the summary).
    nat_overwrites: usize,
    echo: EchoPolicy,
    fragments: FragmentPolicy,
    options: OptionsPolicy,
    incarnations: u64,
}

fn proto_of(p: Protocol) -> u8 {
    p.number()
}

fn emit(ingress: u32, egress: u32, frame: Vec<u8>) -> (Verdict, &'static str) {
    if egress == ingress {
        (Verdict::Tx(frame), "tx")
    } else {
        (Verdict::Redirect(frame), "redirected")
    }
}

fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

impl Model {
    fn any_nat(&self) -> bool {
        self.vips.values().any(|v| v.config.mode == ForwardingMode::Nat)
    }

    fn is_vip_addr(&self, a: IpAddr) -> bool {
        self.vips.keys().any(|v| v.addr == a)
    }

    /// The VIP of (address, port, protocol), else the all-ports VIP.
    fn vip_of(&self, dst: IpAddr, port: u16, proto: u8) -> Option<Vip> {
        let protocol = match proto {
            6 => Protocol::Tcp,
            17 => Protocol::Udp,
            _ => return None,
        };
        let exact = Vip { addr: dst, port: Some(port), protocol };
        let any = Vip { port: None, ..exact };
        [exact, any].into_iter().find(|v| self.vips.contains_key(v))
    }

    fn alive(&self, vip: &Vip, b: &BackendAddr, inc: u64) -> bool {
        self.vips[vip].backends.get(b).is_some_and(|&(_, i)| i == inc)
    }

    /// Whether a NAT reply entry still belongs to a configured backend: the
    /// VIP it names still reaches the reply's source address and port.
    fn nat_entry_live(&self, key: &Key, (addr, port): (IpAddr, u16)) -> bool {
        let Some(vip) = self.vip_of(addr, port, key.proto) else { return false };
        let vm = &self.vips[&vip];
        vm.config.mode == ForwardingMode::Nat
            && vm.backends.keys().any(|b| b.ip == key.src && b.port.or(vip.port).unwrap_or(port) == key.sport)
    }

    /// Records what a frame left in the connection and NAT tables.
    fn apply(&mut self, effects: &[Effect]) {
        for e in effects {
            match *e {
                Effect::Track(key, b, inc) => {
                    self.conns.insert(key, (b, inc));
                }
                Effect::Nat(key, addr, port) => match self.nat.insert(key, (addr, port)) {
                    None => self.nat_keys.push(key),
                    Some(old) if old != (addr, port) && self.nat_entry_live(&key, old) => self.nat_overwrites += 1,
                    // A stale entry (its VIP no longer has that backend, so
                    // that flow moved on) is fair game.
                    Some(_) => {}
                },
                Effect::Taint(key) => {
                    self.tainted.insert(key);
                    self.tainted_clients.insert((key.src, key.sport, key.proto));
                }
            }
        }
    }

    /// The whole frame's fate.
    fn predict(&self, lb: &LoadBalancer, f: &[u8], ingress: u32) -> Prediction {
        let (tags, parsed) = parse(f);
        let ip = match parsed {
            Parsed::Malformed => return Prediction::pass("malformed L2/L3 headers", "passed_malformed"),
            Parsed::NonIp => return Prediction::pass("not IP", "passed_non_vip"),
            Parsed::Ip(_) if tags > 0 => return Prediction::pass("VLAN-tagged", "passed_non_vip"),
            Parsed::Ip(ip) => ip,
        };
        if ip.fragment {
            return self.fragment(lb, f, &ip, ingress);
        }
        let Some(l4) = ip.l4 else {
            // 8 extension headers walked and the transport header not
            // reached: a transport the LB reads counts as malformed.
            let counter = if matches!(ip.proto, 6 | 17 | 58) { "passed_malformed" } else { "passed_non_vip" };
            return Prediction::pass("IPv6 extension chain longer than the 8 headers walked", counter);
        };
        match (ip.fam, ip.proto) {
            (_, 6) | (_, 17) => {
                let need = if ip.proto == 6 { 20 } else { 8 };
                if l4 + need > ip.bound {
                    return Prediction::pass("TCP/UDP header cut", "passed_malformed");
                }
                let key = Key { src: ip.src, dst: ip.dst, sport: be16(f, l4), dport: be16(f, l4 + 2), proto: ip.proto };
                match self.vip_of(ip.dst, key.dport, ip.proto) {
                    Some(vip) => {
                        if ip.options && self.options == OptionsPolicy::Drop {
                            return Prediction::drop("IPv4 options to a VIP, options policy drop", "drop_ip_options");
                        }
                        let syn = ip.proto == 6 && f[l4 + 13] & 0x12 == 0x02;
                        let p = self.to_vip(lb, f, &ip, ingress, vip, key, syn);
                        if ip.options {
                            p.count("options_forwarded")
                        } else {
                            p
                        }
                    }
                    None if self.any_nat() => self.nat_reply(f, &ip, ingress, key),
                    None => Prediction::pass("TCP/UDP to no VIP", "passed_non_vip"),
                }
            }
            (Fam::V4, 1) | (Fam::V6, 58) => {
                if l4 + 8 > ip.bound {
                    return Prediction::pass("ICMP header cut", "passed_malformed");
                }
                let ty = f[l4];
                match (ip.fam, ty) {
                    (Fam::V4, 8) | (Fam::V6, 128) => self.echo(f, &ip, l4),
                    (Fam::V4, 3) | (Fam::V6, 1) | (Fam::V6, 2) => self.icmp_error(lb, f, &ip, ingress, l4),
                    _ => Prediction::pass(format!("ICMP type {ty}: not delivered to backends"), "passed_non_vip"),
                }
            }
            _ => Prediction::pass(format!("protocol {} is not load balanced", ip.proto), "passed_non_vip"),
        }
    }

    /// A TCP/UDP packet of `vip`: the tracked backend, else Maglev's.
    #[allow(clippy::too_many_arguments)]
    fn to_vip(&self, lb: &LoadBalancer, f: &[u8], ip: &Ip, ingress: u32, vip: Vip, key: Key, syn: bool) -> Prediction {
        let flow = key.flow();
        let vm = self.vips[&vip].clone();
        let track = vm.config.conntrack;
        let tracked = if track && !syn { self.conns.get(&key).copied() } else { None };
        let mut effects = Vec::new();
        if self.tainted.contains(&key) {
            return unpredictable(format!("{flow} followed a flow the model could not predict"));
        }
        let (backend, fresh) = match tracked {
            Some((b, inc)) if self.alive(&vip, &b, inc) => (b, false),
            _ => match self.ask(lb, &vip, &flow) {
                Err(mut p) => {
                    if p.unpredictable.is_some() {
                        p.effects.push(Effect::Taint(key));
                    }
                    return *p;
                }
                Ok(None) => return Prediction::drop(format!("{vip}: no usable backend"), "drop_no_backend"),
                Ok(Some(b)) => {
                    // Tracked as soon as chosen, whatever happens to the packet next.
                    if track {
                        effects.push(Effect::Track(key, b, vm.backends[&b].1)); // ask() checked it is there
                        if vm.config.mode == ForwardingMode::Nat {
                            let reply = Key {
                                src: b.ip,
                                dst: key.src,
                                sport: b.port.unwrap_or(key.dport),
                                dport: key.sport,
                                proto: key.proto,
                            };
                            effects.push(Effect::Nat(reply, vip.addr, key.dport));
                        }
                    }
                    (b, true)
                }
            },
        };
        let mut p = self.deliver(lb, f, ip, ingress, vip, &flow, backend, true);
        p.pick = Some(Pick { vip, backend, fresh });
        p.effects = effects;
        p.because(format!(
            "{flow} to {vip} ({}), {} backend {backend}",
            vm.config.mode,
            if fresh { "new:" } else { "tracked:" }
        ))
    }

    /// `vip_for` then `backend_for`, as `xdpguard-lb which` asks: the
    /// flow's real destination port, also for all-ports VIPs.
    fn ask(&self, lb: &LoadBalancer, vip: &Vip, flow: &Flow) -> Result<Option<BackendAddr>, Box<Prediction>> {
        let refused = |why: String| Box::new(unpredictable(why));
        let wrong = |why: String| {
            let mut p = Prediction::new(Verdict::Pass, why.clone(), &[]);
            p.library = Some(why);
            Box::new(p)
        };
        match lb.vip_for(flow) {
            Ok(Some(v)) if v == *vip => {}
            Ok(other) => return Err(wrong(format!("vip_for({flow}) = {other:?}, but {vip} takes it"))),
            Err(e) => return Err(wrong(format!("vip_for({flow}) failed: {e}"))),
        }
        match lb.backend_for(vip, flow) {
            Ok(Some(b)) if !self.vips[vip].backends.contains_key(&b) => {
                Err(wrong(format!("backend_for({vip}, {flow}) = {b}, not one of the VIP's backends")))
            }
            Ok(b) => Ok(b),
            // Port 0 to an all-ports VIP: the library refuses to guess.
            Err(e @ LbError::DestinationPortRequired { .. }) => Err(refused(format!("{e}"))),
            Err(e) => Err(wrong(format!("backend_for({vip}, {flow}) failed: {e}"))),
        }
    }

    /// Sends a packet to `backend` by the VIP's mode (deliver() in the
    /// program). `flow` is the hash input (IPIP outer source).
    #[allow(clippy::too_many_arguments)]
    fn deliver(
        &self,
        lb: &LoadBalancer,
        f: &[u8],
        ip: &Ip,
        ingress: u32,
        vip: Vip,
        flow: &Flow,
        backend: BackendAddr,
        may_reply: bool,
    ) -> Prediction {
        let mode = self.vips[&vip].config.mode;
        match mode {
            ForwardingMode::L2Dsr => self.via(
                f,
                ip,
                ingress,
                FibSrc::Cached(ip.src),
                backend.ip,
                0,
                may_reply,
                Unresolved::Probe,
                |out, _| out,
            ),
            ForwardingMode::Ipip => {
                let src = lb
                    .ipip_source_for(&vip, flow, backend.ip)
                    .unwrap_or_else(|e| panic!("ipip_source_for({vip}, {flow}): {e}"))
                    .expect("IPIP VIPs have sources of both families");
                let overhead = if backend.ip.is_ipv4() { 20 } else { 40 };
                let unresolved = Unresolved::Rewritten { nat: false };
                self.via(f, ip, ingress, FibSrc::Cached(src), backend.ip, overhead, may_reply, unresolved, |out, _| {
                    encapsulate(&out, ip, src, backend.ip)
                })
            }
            ForwardingMode::Nat => {
                // TCP/UDP only: fragments never reach NAT VIPs, and ICMP
                // errors about NAT flows are rewritten by icmp_to_nat_backend.
                if ip.ttl <= 1 {
                    return Prediction::pass("NAT: the TTL would expire", "passed_ttl");
                }
                let mut soft = Vec::new();
                let unresolved = Unresolved::Rewritten { nat: true };
                let from = FibSrc::Cached(ip.src);
                let mut p = self.via(f, ip, ingress, from, backend.ip, 0, may_reply, unresolved, |mut out, _| {
                    soft = nat_rewrite(&mut out, ip, Dir::Dst, backend.ip, backend.port);
                    out
                });
                p.soft_csums = soft;
                p
            }
            // ForwardingMode is #[non_exhaustive]: a mode the model does
            // not know yet fails here, naming what to add.
            other => unimplemented!("the model has no forwarding mode {other:?}: add it to predict"),
        }
    }

    /// The next hop towards `to`, asked from `src`: the route, the MTU,
    /// then the neighbour (as the FIB answers); then `rewrite` and the MACs.
    /// `overhead` is the encapsulation's. Too big: an ICMP answer when
    /// `may_reply`, else a drop. No resolved neighbour: `unresolved` says
    /// what goes to the stack.
    #[allow(clippy::too_many_arguments)]
    fn via(
        &self,
        f: &[u8],
        ip: &Ip,
        ingress: u32,
        src: FibSrc,
        to: IpAddr,
        overhead: usize,
        may_reply: bool,
        unresolved: Unresolved,
        rewrite: impl FnOnce(Vec<u8>, u32) -> Vec<u8>,
    ) -> Prediction {
        let hop = self.net.hop(to);
        if let Hop::NoRoute = hop {
            return Prediction::pass(format!("no route to {to}"), "passed_no_route");
        }
        // The FIB forwards nothing from or to an IPv6 multicast, link-local
        // or loopback address (rt6_need_strict).
        let strict = |a: IpAddr| match a {
            IpAddr::V6(a) => a.is_multicast() || a.is_loopback() || a.segments()[0] & 0xFFC0 == 0xFE80,
            IpAddr::V4(_) => false,
        };
        match src {
            FibSrc::Asked(from) if strict(from) || strict(to) => {
                return Prediction::pass(format!("the FIB does not forward from {from}"), "passed_no_route");
            }
            // Asked only when this CPU's cached answer for the backend expired.
            FibSrc::Cached(from) if strict(from) || strict(to) => {
                return unpredictable(format!(
                    "towards {to} from {from}: the cached next hop, or no route once it expired"
                ));
            }
            _ => {}
        }
        if ip.l3_len + overhead > MTU {
            return too_big(f, ip, MTU, ip.l3_len + overhead, may_reply);
        }
        let Hop::Via { ifindex, mac } = hop else {
            let why = format!("no neighbour for {to}: through the stack");
            return match unresolved {
                Unresolved::Probe => Prediction::new(
                    Verdict::PassRewritten(dsr_probe(f, ip, to)),
                    format!("{why}, as a probe"),
                    &["passed_no_neighbour"],
                ),
                Unresolved::Rewritten { nat } => {
                    let mut out = rewrite(f.to_vec(), 0);
                    if nat {
                        undo_ttl(&mut out, ip);
                    }
                    Prediction::new(Verdict::PassRewritten(out), format!("{why}, rewritten"), &["passed_no_neighbour"])
                }
            };
        };
        let mut out = rewrite(f.to_vec(), ifindex);
        set_macs(&mut out, mac, self.net.mac(ifindex));
        let (verdict, counter) = emit(ingress, ifindex, out);
        Prediction::new(verdict, format!("to {to} via #{ifindex}"), &[counter])
    }

    fn fragment(&self, lb: &LoadBalancer, f: &[u8], ip: &Ip, ingress: u32) -> Prediction {
        if self.fragments == FragmentPolicy::ForwardAllPorts && (ip.proto == 6 || ip.proto == 17) {
            let protocol = if ip.proto == 6 { Protocol::Tcp } else { Protocol::Udp };
            let any = Vip { addr: ip.dst, port: None, protocol };
            if let Some(vm) = self.vips.get(&any) {
                if vm.config.mode != ForwardingMode::Nat {
                    let flow = Flow::new(SocketAddr::new(ip.src, 0), SocketAddr::new(ip.dst, 0), protocol).fragment();
                    let backend = match self.ask(lb, &any, &flow) {
                        Err(p) => return *p,
                        Ok(None) => {
                            return Prediction::drop(format!("fragment to {any}: no usable backend"), "drop_no_backend")
                        }
                        Ok(Some(b)) => b,
                    };
                    let mut p =
                        self.deliver(lb, f, ip, ingress, any, &flow, backend, true).count("fragments_forwarded");
                    p.pick = Some(Pick { vip: any, backend, fresh: true });
                    return p.because(format!("fragment to {any}, backend {backend}"));
                }
            }
        }
        if self.is_vip_addr(ip.dst) {
            return Prediction::drop("fragment to a VIP address, by the fragment policy", "drop_fragment");
        }
        Prediction::pass("fragment to no VIP", "passed_non_vip")
    }

    fn echo(&self, f: &[u8], ip: &Ip, l4: usize) -> Prediction {
        if !self.is_vip_addr(ip.dst) {
            return Prediction::pass("echo to no VIP", "passed_non_vip");
        }
        match self.echo {
            EchoPolicy::Pass => Prediction::pass("echo to a VIP, policy pass", "passed_echo"),
            EchoPolicy::Drop => Prediction::drop("echo to a VIP, policy drop", "drop_echo"),
            _ if group_macs(f) => Prediction::drop("echo to a VIP from or to a group MAC: not answered", "drop_echo"),
            _ => {
                let mut out = f.to_vec();
                let reply = if ip.fam == Fam::V4 { 0 } else { 129 };
                let old = be16(&out, l4);
                out[l4] = reply;
                let c = csum_update(be16(&out, l4 + 2), &[(old, be16(&out, l4))]);
                put16(&mut out, l4 + 2, c);
                let (s, d, n) = if ip.fam == Fam::V4 { (26, 30, 4) } else { (22, 38, 16) };
                let src = out[s..s + n].to_vec();
                out.copy_within(d..d + n, s);
                out[d..d + n].copy_from_slice(&src);
                let (dmac, smac): ([u8; 6], [u8; 6]) = (f[6..12].try_into().unwrap(), f[0..6].try_into().unwrap());
                set_macs(&mut out, dmac, smac);
                let mut p = Prediction::new(Verdict::Tx(out), "echo to a VIP, answered", &["echo_answered"]);
                p.soft_csums.push(l4 + 2);
                p
            }
        }
    }

    fn icmp_error(&self, lb: &LoadBalancer, f: &[u8], ip: &Ip, ingress: u32, l4: usize) -> Prediction {
        let Some(q) = quoted(f, ip, l4) else {
            return Prediction::pass("ICMP error quoting no TCP/UDP packet we can read", "passed_non_vip");
        };
        // The quoted packet read as the client's flow: it was sent to the client.
        let qkey = Key { src: q.dst, dst: q.src, sport: q.dport, dport: q.sport, proto: q.proto };
        let vip = if ip.dst == q.src { self.vip_of(qkey.dst, qkey.dport, qkey.proto) } else { None };
        let Some(vip) = vip else {
            if self.any_nat() {
                return self.icmp_to_nat_client(f, ip, ingress, l4, &q, qkey);
            }
            return Prediction::pass("ICMP error about no VIP flow", "passed_non_vip");
        };
        let vm = self.vips[&vip].clone();
        let flow = qkey.flow();
        if self.tainted.contains(&qkey) {
            return unpredictable(format!("an ICMP error about {flow}, which the model could not predict"));
        }
        let tracked = if vm.config.conntrack { self.conns.get(&qkey).copied() } else { None };
        let (backend, fresh) = match tracked {
            Some((b, inc)) if self.alive(&vip, &b, inc) => (b, false),
            _ => match self.ask(lb, &vip, &flow) {
                Err(p) => return *p,
                Ok(None) => {
                    return Prediction::drop(format!("ICMP error about {flow}: {vip} has no backend"), "drop_icmp")
                }
                Ok(Some(b)) => (b, true),
            },
        };
        let mut p = if vm.config.mode == ForwardingMode::Nat {
            self.icmp_to_nat_backend(f, ip, ingress, l4, &q, backend)
        } else {
            self.deliver(lb, f, ip, ingress, vip, &flow, backend, false)
        };
        p = p.count("icmp_forwarded");
        p.pick = Some(Pick { vip, backend, fresh });
        p.because(format!("ICMP error about {flow} of {vip} ({}), backend {backend}", vm.config.mode))
    }

    /// An ICMP error about a NAT VIP's flow: outer destination, quoted
    /// source address and port become the backend's.
    #[allow(clippy::too_many_arguments)]
    fn icmp_to_nat_backend(
        &self,
        f: &[u8],
        ip: &Ip,
        ingress: u32,
        l4: usize,
        q: &Quoted,
        b: BackendAddr,
    ) -> Prediction {
        if ip.ttl <= 1 {
            return Prediction::pass("NAT: the TTL would expire", "passed_ttl");
        }
        let mut soft = Vec::new();
        let unresolved = Unresolved::Rewritten { nat: true };
        let mut p = self.via(f, ip, ingress, FibSrc::Cached(ip.src), b.ip, 0, false, unresolved, |mut out, _| {
            soft = icmp_rewrite(&mut out, ip, l4, q, Dir::Dst, true, b.ip, b.port);
            out
        });
        p.soft_csums = soft;
        p
    }

    /// An ICMP error about a packet a NAT backend got, on its way to the
    /// client: the quoted destination becomes the VIP, and so does the
    /// outer source when the backend itself sent it.
    fn icmp_to_nat_client(&self, f: &[u8], ip: &Ip, ingress: u32, l4: usize, q: &Quoted, qkey: Key) -> Prediction {
        if ip.dst != qkey.dst {
            return Prediction::pass("ICMP error not addressed to the quoted packet's sender", "passed_non_vip");
        }
        if self.tainted_clients.contains(&(qkey.dst, qkey.dport, qkey.proto)) {
            return unpredictable(format!("an ICMP error about {qkey:?}, a client of an unpredicted flow"));
        }
        let Some(&(vip_addr, vip_port)) = self.nat.get(&qkey) else {
            return Prediction::pass("ICMP error about no NAT flow", "passed_non_vip");
        };
        let from_backend = ip.src == qkey.src;
        if ip.ttl <= 1 {
            return Prediction::pass("NAT: the TTL would expire", "passed_ttl");
        }
        let mut soft = Vec::new();
        let from = FibSrc::Asked(if from_backend { vip_addr } else { ip.src });
        let mut p =
            self.via(f, ip, ingress, from, ip.dst, 0, false, Unresolved::Rewritten { nat: true }, |mut out, _| {
                soft = icmp_rewrite(&mut out, ip, l4, q, Dir::Src, from_backend, vip_addr, Some(vip_port));
                out
            });
        if p.forwarded() {
            p = p.count("nat_replies");
        }
        p.soft_csums = soft;
        p.because(format!("ICMP error about NAT flow {qkey:?} to the client"))
    }

    /// A TCP/UDP packet for no VIP: a NAT backend's reply, if NAT knows it.
    fn nat_reply(&self, f: &[u8], ip: &Ip, ingress: u32, key: Key) -> Prediction {
        if self.tainted_clients.contains(&(key.dst, key.dport, key.proto)) {
            return unpredictable(format!("a reply {key:?} to a client of an unpredicted flow"));
        }
        let Some(&(vip_addr, vip_port)) = self.nat.get(&key) else {
            return Prediction::pass("TCP/UDP to no VIP (and no NAT reply)", "passed_non_vip");
        };
        if ip.ttl <= 1 {
            return Prediction::pass("NAT: the TTL would expire", "passed_ttl");
        }
        let mut soft = Vec::new();
        let unresolved = Unresolved::Rewritten { nat: true };
        let mut p = self.via(f, ip, ingress, FibSrc::Asked(vip_addr), ip.dst, 0, true, unresolved, |mut out, _| {
            soft = nat_rewrite(&mut out, ip, Dir::Src, vip_addr, Some(vip_port));
            out
        });
        if p.forwarded() {
            p = p.count("nat_replies");
        }
        p.soft_csums = soft;
        p.because(format!("NAT reply {key:?} from {vip_addr}:{vip_port}"))
    }
}

/// The source of the program's FIB question for a next hop.
#[derive(Clone, Copy)]
enum FibSrc {
    /// Towards a backend: answered from this CPU's next-hop cache, and asked
    /// (with this source) only when the cached answer expired.
    Cached(IpAddr),
    /// Towards a NAT client: asked for every packet.
    Asked(IpAddr),
}

/// What goes to the stack when a next hop has no resolved neighbour.
#[derive(Clone, Copy)]
enum Unresolved {
    /// L2 DSR: the packet, addressed to the VIP, becomes a probe towards
    /// the backend (the stack could not route the packet itself).
    Probe,
    /// IPIP, NAT: the packet already rewritten, MACs as received; NAT
    /// gives the TTL back (the stack takes it when it forwards).
    Rewritten { nat: bool },
}

/// L2 DSR's probe: an ICMP echo reply (id and sequence 0) from the
/// packet's source to the backend, with its TTL (and IPv4 TOS), in the
/// received Ethernet header; the frame is cut, or grown, to its length.
fn dsr_probe(f: &[u8], ip: &Ip, backend: IpAddr) -> Vec<u8> {
    let b = Frame::builder().macs(f[6..12].try_into().unwrap(), f[0..6].try_into().unwrap());
    let b = match ip.fam {
        Fam::V4 => b.ip(ip.src, backend).tos(f[15]).id(0).df(false).ttl(f[22]),
        Fam::V6 => b.ip(ip.src, backend).ttl(f[21]),
    };
    b.icmp(Icmp::EchoReply { id: 0, seq: 0 }).build().to_vec()
}

/// Whether either MAC of a frame is a group (multicast or broadcast)
/// address: the LB answers neither (an answer goes back to the source MAC,
/// from the destination MAC).
fn group_macs(f: &[u8]) -> bool {
    (f[0] | f[6]) & 1 != 0
}

/// Gives back the TTL (hop limit) a NAT rewrite took.
fn undo_ttl(out: &mut [u8], ip: &Ip) {
    if ip.fam == Fam::V4 {
        let old = be16(out, 22);
        out[22] = out[22].wrapping_add(1);
        let c = csum_update(be16(out, 24), &[(old, be16(out, 22))]);
        put16(out, 24, c);
    } else {
        out[21] = out[21].wrapping_add(1);
    }
}

/// A frame the model cannot predict (see Effect::Taint).
fn unpredictable(why: String) -> Prediction {
    let mut p = Prediction::new(Verdict::Pass, why.clone(), &[]);
    p.unpredictable = Some(why);
    p
}

/// The answer to a packet too big for its next hop: an ICMP
/// "fragmentation needed" (IPv4 with DF, not ICMP) or "packet too big"
/// (IPv6, not ICMPv6) back to the sender, from the address it was sent to,
/// with the MTU left after encapsulation; else a drop.
fn too_big(f: &[u8], ip: &Ip, mtu: usize, tot_len: usize, may_reply: bool) -> Prediction {
    let drop = Prediction::drop(format!("too big: {tot_len} > MTU {mtu}"), "drop_mtu");
    // Answers go to unicast senders only.
    if !may_reply || group_macs(f) {
        return drop;
    }
    let overhead = tot_len.saturating_sub(ip.l3_len);
    let b = Frame::builder().macs(f[0..6].try_into().unwrap(), f[6..12].try_into().unwrap());
    let out = match ip.fam {
        Fam::V4 => {
            let qlen = ip.hdr_len + 8;
            if !ip.df || f[14 + 9] == 1 || 14 + qlen > f.len() {
                return drop;
            }
            let report = if mtu > overhead + 68 { mtu - overhead } else { 68 };
            b.ip(ip.dst, ip.src)
                .tos(f[15])
                .id(0)
                .df(false)
                .ttl(64)
                .icmp(Icmp::TooBig { mtu: report as u16 })
                .payload(&f[14..14 + qlen])
        }
        Fam::V6 => {
            if f.len() < 14 + 48 || f[14 + 6] == 58 {
                return drop;
            }
            let report = if mtu > overhead + 1280 { mtu - overhead } else { 1280 };
            b.ip(ip.dst, ip.src).ttl(64).icmp(Icmp::TooBig { mtu: report as u16 }).payload(&f[14..14 + 48])
        }
    }
    .build()
    .to_vec();
    let mut p =
        Prediction::new(Verdict::Tx(out), format!("too big: {tot_len} > MTU {mtu}, sender told"), &["drop_mtu"]);
    p.counters.push("too_big_sent");
    p
}

/// IPIP: an outer IPv4 (TOS copied from the IPv4 inner header, no DF, TTL
/// 64, identification from the inner packet: `ipip_outer_id`) or IPv6
/// header (traffic class the inner's TOS or traffic class, flow label from
/// the flow hash, hop limit 64) in front of the whole received packet.
fn encapsulate(frame: &[u8], ip: &Ip, src: IpAddr, dst: IpAddr) -> Vec<u8> {
    // The IP packet, and what the frame carries after it (Ethernet padding).
    let (inner, trailer) = frame[14..].split_at(ip.l3_len.min(frame.len() - 14));
    let tos = match ip.fam {
        Fam::V4 => frame[15],
        Fam::V6 => (frame[14] << 4) | (frame[15] >> 4),
    };
    let b = Frame::builder()
        .macs(frame[6..12].try_into().unwrap(), frame[0..6].try_into().unwrap())
        .ip(src, dst)
        .ttl(64)
        .tos(tos);
    let b = match src {
        IpAddr::V4(_) => b.id(ipip_outer_id(&frame[14..])).df(false),
        // With a /64 prefix the source's low 32 bits are the flow hash.
        IpAddr::V6(s) => b.flow_label(u32::from_be_bytes(s.octets()[12..16].try_into().unwrap()) & 0xFFFFF),
    };
    b.ip_payload(inner).trailer(trailer).build().to_vec()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Towards a backend: destination (outer) / quoted source become the backend's.
    Dst,
    /// Towards a client: source (outer) / quoted destination become the VIP's.
    Src,
}

fn addr_range(fam: Fam, base: usize, which_dst: bool) -> std::ops::Range<usize> {
    match fam {
        Fam::V4 => {
            let s = base + if which_dst { 16 } else { 12 };
            s..s + 4
        }
        Fam::V6 => {
            let s = base + if which_dst { 24 } else { 8 };
            s..s + 16
        }
    }
}

/// NAT of a TCP/UDP packet: one address and port, the TTL, and the IPv4
/// header and L4 checksums (incrementally; IPv4 UDP without checksum keeps
/// none). Returns the offsets of the updated checksums.
fn nat_rewrite(out: &mut [u8], ip: &Ip, dir: Dir, addr: IpAddr, port: Option<u16>) -> Vec<usize> {
    let l4 = ip.l4.unwrap();
    let r = addr_range(ip.fam, 14, dir == Dir::Dst);
    let new = ip_octets(addr);
    let mut addr_changes = word_changes(&out[r.clone()], &new);
    let mut soft = Vec::new();
    if ip.fam == Fam::V4 {
        let old_ttl = be16(out, 22);
        out[22] -= 1;
        let mut ch = addr_changes.clone();
        ch.push((old_ttl, be16(out, 22)));
        let c = csum_update(be16(out, 24), &ch);
        put16(out, 24, c);
        soft.push(24);
    } else {
        out[21] -= 1;
    }
    out[r].copy_from_slice(&new);
    let port_at = l4 + if dir == Dir::Dst { 2 } else { 0 };
    if let Some(p) = port.filter(|&p| p != 0 && p != be16(out, port_at)) {
        addr_changes.push((be16(out, port_at), p));
        put16(out, port_at, p);
    }
    let sum_at = l4 + if ip.proto == 6 { 16 } else { 6 };
    if !(ip.proto == 17 && ip.fam == Fam::V4 && be16(out, sum_at) == 0) {
        let mut c = csum_update(be16(out, sum_at), &addr_changes);
        if ip.proto == 17 && c == 0 {
            c = 0xFFFF;
        }
        put16(out, sum_at, c);
        soft.push(sum_at);
    }
    soft
}

/// The quoted packet of an ICMP error: TCP or UDP, not a later fragment,
/// its ports present (IPv6: no extension headers).
#[derive(Clone, Copy, Debug)]
struct Quoted {
    l3: usize,
    l4: usize,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
}

fn quoted(f: &[u8], ip: &Ip, l4: usize) -> Option<Quoted> {
    let off = l4 + 8;
    match ip.fam {
        Fam::V4 => {
            if off + 20 > ip.bound || f[off] >> 4 != 4 || f[off] & 0xF < 5 {
                return None;
            }
            let proto = f[off + 9];
            if (proto != 6 && proto != 17) || be16(f, off + 6) & 0x1FFF != 0 {
                return None;
            }
            let ql4 = off + usize::from(f[off] & 0xF) * 4;
            if ql4 + 8 > ip.bound {
                return None;
            }
            Some(Quoted {
                l3: off,
                l4: ql4,
                src: IpAddr::V4(Ipv4Addr::new(f[off + 12], f[off + 13], f[off + 14], f[off + 15])),
                dst: IpAddr::V4(Ipv4Addr::new(f[off + 16], f[off + 17], f[off + 18], f[off + 19])),
                sport: be16(f, ql4),
                dport: be16(f, ql4 + 2),
                proto,
            })
        }
        Fam::V6 => {
            if off + 48 > ip.bound || f[off] >> 4 != 6 {
                return None;
            }
            let proto = f[off + 6];
            if proto != 6 && proto != 17 {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&f[off + 8..off + 24]);
            let src = IpAddr::V6(Ipv6Addr::from(a));
            a.copy_from_slice(&f[off + 24..off + 40]);
            let dst = IpAddr::V6(Ipv6Addr::from(a));
            Some(Quoted { l3: off, l4: off + 40, src, dst, sport: be16(f, off + 40), dport: be16(f, off + 42), proto })
        }
    }
}

/// NAT of an ICMP error (see nat_icmp_rewrite in the program's docs): the
/// outer address (when `outer_too`) and TTL, the quoted address, its IPv4
/// header checksum, the quoted UDP checksum (IPv4: when it has one), the
/// quoted port, and the ICMP checksum over all of it (ICMPv6: with its
/// pseudo-header). The quoted TCP checksum is left alone.
#[allow(clippy::too_many_arguments)]
fn icmp_rewrite(
    out: &mut [u8],
    ip: &Ip,
    l4: usize,
    q: &Quoted,
    dir: Dir,
    outer_too: bool,
    addr: IpAddr,
    port: Option<u16>,
) -> Vec<usize> {
    let new = ip_octets(addr);
    let mut icmp = Vec::new();
    let mut soft = vec![l4 + 2];
    // Outer header.
    let oaddr = addr_range(ip.fam, 14, dir == Dir::Dst);
    if ip.fam == Fam::V4 {
        let mut ch = Vec::new();
        if outer_too {
            ch = word_changes(&out[oaddr.clone()], &new);
            out[oaddr].copy_from_slice(&new);
        }
        let old_ttl = be16(out, 22);
        out[22] -= 1;
        ch.push((old_ttl, be16(out, 22)));
        let c = csum_update(be16(out, 24), &ch);
        put16(out, 24, c);
        soft.push(24);
    } else {
        if outer_too {
            icmp.extend(word_changes(&out[oaddr.clone()], &new));
            out[oaddr].copy_from_slice(&new);
        }
        out[21] -= 1;
    }
    // Quoted header: the request's source (towards a backend) or destination.
    let qaddr = addr_range(ip.fam, q.l3, dir == Dir::Src);
    let addr_ch = word_changes(&out[qaddr.clone()], &new);
    icmp.extend(addr_ch.iter().copied());
    out[qaddr].copy_from_slice(&new);
    if ip.fam == Fam::V4 {
        let at = q.l3 + 10;
        let old = be16(out, at);
        let c = csum_update(old, &addr_ch);
        put16(out, at, c);
        icmp.push((old, c));
        soft.push(at);
    }
    let qport = q.l4 + if dir == Dir::Dst { 0 } else { 2 };
    let port = port.filter(|&p| p != 0);
    if q.proto == 17 && (ip.fam == Fam::V6 || be16(out, q.l4 + 6) != 0) {
        let at = q.l4 + 6;
        let old = be16(out, at);
        let mut ch = addr_ch.clone();
        if let Some(p) = port {
            ch.push((be16(out, qport), p));
        }
        let mut c = csum_update(old, &ch);
        if c == 0 {
            c = 0xFFFF;
        }
        put16(out, at, c);
        icmp.push((old, c));
        soft.push(at);
    }
    if let Some(p) = port.filter(|&p| p != be16(out, qport)) {
        icmp.push((be16(out, qport), p));
        put16(out, qport, p);
    }
    let c = csum_update(be16(out, l4 + 2), &icmp);
    put16(out, l4 + 2, c);
    soft
}

// ---------------------------------------------------------------------------
// Frames.

/// What a generated frame is, for reports.
#[derive(Clone, Debug)]
struct Gen {
    frame: Vec<u8>,
    ingress: u32,
    what: String,
}

struct Pools {
    clients4: Vec<Ipv4Addr>,
    clients6: Vec<Ipv6Addr>,
    sports: Vec<u16>,
    /// Destination ports for all-ports VIPs (never 0).
    dports: Vec<u16>,
}

/// A port with no zero byte, so one byte flip cannot make it 0.
fn nonzero_port(rng: &mut StdRng) -> u16 {
    u16::from_be_bytes([rng.random_range(1..=255), rng.random_range(1..=255)])
}

fn payload(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = match rng.random_range(0..100) {
        0..=54 => rng.random_range(0..=200),
        55..=79 => rng.random_range(200..=1400),
        80..=93 => rng.random_range(1400..=1500),
        _ => rng.random_range(1500..=2900),
    }
    .min(max);
    (0..len).map(|_| rng.random()).collect()
}

/// The transport part of a packet the test kit builds (`name`: its span).
fn segment(b: FrameBuilder, name: &str) -> Vec<u8> {
    let f = b.build();
    f[f.span(name).start..].to_vec()
}

/// A TCP segment from `src` to `dst` with these flags and `opts` words of
/// NOP options (checksum over the pseudo-header).
fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8, opts: usize, data: &[u8]) -> Vec<u8> {
    let ack = if flags & 0x10 != 0 { 0x2000_0001 } else { 0 };
    let b = Frame::builder().ip(src, dst).tcp(sport, dport).seq(0x1000_0001).tcp_flags(flags).ack_number(ack);
    segment(b.window(0xFAF0).tcp_options(&vec![1; opts * 4]).payload(data), "tcp")
}

/// A UDP datagram from `src` to `dst`; IPv4 without a checksum when asked.
fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, no_checksum: bool, data: &[u8]) -> Vec<u8> {
    let b = Frame::builder().ip(src, dst).udp(sport, dport);
    let b = if no_checksum { b.no_udp_checksum() } else { b };
    segment(b.payload(data), "udp")
}

/// An ICMP message of any type.
fn icmp4(ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let b = Frame::builder().ipv4(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED);
    segment(b.icmp(Icmp::Raw { kind: ty, code, rest }).payload(body), "icmpv4")
}

/// An ICMPv6 message of any type, from `src` to `dst`.
fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    segment(Frame::builder().ipv6(src, dst).icmp(Icmp::Raw { kind: ty, code, rest }).payload(body), "icmpv6")
}

#[derive(Clone, Debug)]
struct V4Hdr {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    ttl: u8,
    tos: u8,
    df: bool,
    mf: bool,
    offset: u16,
    options: Vec<u8>,
}

impl V4Hdr {
    fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8) -> Self {
        V4Hdr { src, dst, proto, ttl: 64, tos: 0, df: true, mf: false, offset: 0, options: Vec::new() }
    }

    /// The IPv4 packet of this header and `payload` (identification 0x4242).
    fn packet(&self, payload: &[u8]) -> Vec<u8> {
        let b = Frame::builder().ipv4(self.src, self.dst).ttl(self.ttl).tos(self.tos).id(0x4242).df(self.df);
        let b = b.fragment(self.offset & 0x1FFF, self.mf).options(&self.options);
        b.protocol(self.proto).payload(payload).build().ip_packet().to_vec()
    }
}

/// An IPv6 packet: extension headers (type, body after the next-header
/// byte; bodies sized to a multiple of 8 with the two leading bytes), then
/// the payload.
fn v6_packet(src: Ipv6Addr, dst: Ipv6Addr, hop: u8, exts: &[(u8, Vec<u8>)], proto: u8, payload: &[u8]) -> Vec<u8> {
    let exts: Vec<Ext> = exts
        .iter()
        .map(|(ty, body)| match ty {
            44 => Ext::Fragment {
                offset: be16(body, 1) >> 3,
                more: body[2] & 1 != 0,
                id: u32::from_be_bytes(body[3..7].try_into().unwrap()),
            },
            _ => Ext::Raw { number: *ty, body: body[1..].to_vec() },
        })
        .collect();
    let b = Frame::builder().ipv6(src, dst).ttl(hop).exts(&exts);
    b.protocol(proto).payload(payload).build().ip_packet().to_vec()
}

/// One extension header's body (after its next-header byte).
fn ext_body(rng: &mut StdRng, ty: u8) -> Vec<u8> {
    match ty {
        44 => {
            // Fragment header: reserved, offset/M, identification.
            let off: u16 = if rng.random_bool(0.5) { 0 } else { rng.random_range(1..200) };
            let m = u16::from(rng.random_bool(0.6));
            let mut b = vec![0];
            b.extend_from_slice(&((off << 3) | m).to_be_bytes());
            b.extend_from_slice(&rng.random::<u32>().to_be_bytes());
            b
        }
        _ => {
            // Hop-by-hop / destination options (PadN) or routing (segments left 0).
            let units: u8 = rng.random_range(0..3);
            let mut b = vec![units];
            let len = (usize::from(units) + 1) * 8 - 2;
            if ty == 43 {
                b.extend_from_slice(&[rng.random_range(0..5), 0]);
                b.extend(std::iter::repeat_n(0u8, len - 2));
            } else {
                b.extend_from_slice(&[1, (len - 2) as u8]);
                b.extend(std::iter::repeat_n(0u8, len - 2));
            }
            b
        }
    }
}

/// An Ethernet frame of any EtherType around `payload`.
fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    Frame::builder().macs(src, dst).ether_type(ethertype).payload(payload).build().to_vec()
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

struct Generator {
    rng: StdRng,
    net: Net,
    pools: Pools,
    /// Recently sent VIP flows (client, VIP:port, proto), to quote in ICMP errors.
    recent: Vec<(SocketAddr, SocketAddr, u8)>,
}

impl Generator {
    fn new(seed: u64, net: Net) -> Generator {
        let mut rng = StdRng::seed_from_u64(seed);
        let pools = Pools {
            clients4: vec![
                CLIENT_V4,
                CLIENT_V4,
                ROUTER_V4,
                Ipv4Addr::new(192, 0, 2, 77),
                Ipv4Addr::new(203, 0, 113, 99),
            ],
            clients6: vec![
                CLIENT_V6,
                CLIENT_V6,
                ROUTER_V6,
                "2001:db8:c::77".parse().unwrap(),
                "2001:db8:dead::1".parse().unwrap(),
            ],
            sports: (0..256).map(|_| nonzero_port(&mut rng)).collect(),
            dports: (0..32).map(|_| nonzero_port(&mut rng)).collect(),
        };
        Generator { rng, net, pools, recent: Vec::new() }
    }

    fn client(&mut self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.pools.clients6[self.rng.random_range(0..self.pools.clients6.len())])
        } else {
            IpAddr::V4(self.pools.clients4[self.rng.random_range(0..self.pools.clients4.len())])
        }
    }

    fn sport(&mut self) -> u16 {
        self.pools.sports[self.rng.random_range(0..self.pools.sports.len())]
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.random_range(0..100) {
            0..=39 => 0x02,
            40..=69 => 0x10,
            70..=79 => 0x18,
            80..=84 => 0x12,
            85..=89 => 0x04,
            90..=94 => 0x11,
            _ => self.rng.random(),
        }
    }

    fn ttl(&mut self) -> u8 {
        match self.rng.random_range(0..100) {
            0..=1 => 0,
            2..=5 => 1,
            6..=8 => 2,
            _ => 64,
        }
    }

    fn v4_options(&mut self) -> Vec<u8> {
        let words = self.rng.random_range(1..=10);
        match self.rng.random_range(0..3) {
            0 => vec![1; words * 4],
            1 => {
                let mut o = vec![1; words * 4];
                o[words * 4 - 1] = 0;
                o
            }
            _ => (0..words * 4).map(|_| self.rng.random()).collect(),
        }
    }

    fn v6_exts(&mut self) -> Vec<(u8, Vec<u8>)> {
        let n = if self.rng.random_bool(0.1) { self.rng.random_range(8..=10) } else { self.rng.random_range(1..=3) };
        (0..n)
            .map(|i| {
                let ty =
                    if i == 0 && self.rng.random_bool(0.4) { 0 } else { [60, 43, 60][self.rng.random_range(0..3)] };
                (ty, ext_body(&mut self.rng, ty))
            })
            .collect()
    }

    /// A TCP/UDP packet (IP header on), with options/extension headers at times.
    #[allow(clippy::too_many_arguments)]
    fn l4_packet(&mut self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16, proto: u8, max: usize) -> Vec<u8> {
        let data = payload(&mut self.rng, max);
        let seg = if proto == 6 {
            let flags = self.tcp_flags();
            let opts = if self.rng.random_bool(0.1) { self.rng.random_range(1..=10) } else { 0 };
            tcp(src, dst, sport, dport, flags, opts, &data)
        } else {
            let no_sum = self.rng.random_bool(0.1);
            udp(src, dst, sport, dport, no_sum, &data)
        };
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = V4Hdr::new(s, d, proto);
                h.ttl = self.ttl();
                h.df = self.rng.random_bool(0.7);
                if self.rng.random_bool(0.2) {
                    h.tos = self.rng.random();
                }
                if self.rng.random_bool(0.08) {
                    h.options = self.v4_options();
                }
                h.packet(&seg)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let exts = if self.rng.random_bool(0.1) { self.v6_exts() } else { Vec::new() };
                let ttl = self.ttl();
                v6_packet(s, d, ttl, &exts, proto, &seg)
            }
            _ => unreachable!(),
        }
    }

    fn eth_ip(&mut self, ingress: u32, src_mac: [u8; 6], packet: &[u8]) -> Vec<u8> {
        let et = if packet[0] >> 4 == 4 { 0x0800 } else { 0x86DD };
        let dst = if self.rng.random_bool(0.97) { self.net.mac(ingress) } else { [0xFF; 6] };
        ether(dst, src_mac, et, packet)
    }

    fn pick_vip<'a>(&mut self, vips: &'a [Vip]) -> &'a Vip {
        &vips[self.rng.random_range(0..vips.len())]
    }

    fn dport_for(&mut self, vip: &Vip, all: &[Vip]) -> u16 {
        match vip.port {
            Some(p) => p,
            None => {
                // At times a port a single-port VIP of the same address takes first.
                let shadow: Vec<u16> = all
                    .iter()
                    .filter(|v| v.addr == vip.addr && v.protocol == vip.protocol)
                    .filter_map(|v| v.port)
                    .collect();
                if !shadow.is_empty() && self.rng.random_bool(0.1) {
                    shadow[self.rng.random_range(0..shadow.len())]
                } else {
                    self.pools.dports[self.rng.random_range(0..self.pools.dports.len())]
                }
            }
        }
    }

    /// Client -> VIP TCP/UDP.
    fn client_to_vip(&mut self, vips: &[Vip]) -> Gen {
        let vip = *self.pick_vip(vips);
        let src = sock(self.client(vip.addr.is_ipv6()), self.sport());
        let dst = sock(vip.addr, self.dport_for(&vip, vips));
        let proto = proto_of(vip.protocol);
        let pkt = self.l4_packet(src.ip(), dst.ip(), src.port(), dst.port(), proto, 2900);
        self.recent.push((src, dst, proto));
        if self.recent.len() > 4096 {
            let i = self.rng.random_range(0..self.recent.len());
            self.recent.swap_remove(i);
        }
        let ingress = if self.rng.random_bool(0.92) { self.net.eth0 } else { self.net.eth1 };
        let src_mac = if ingress == self.net.eth0 { CLIENT_MAC } else { backend_mac(1) };
        Gen {
            frame: self.eth_ip(ingress, src_mac, &pkt),
            ingress,
            what: format!("{proto} {src} -> {vip} port {}", dst.port()),
        }
    }

    /// Fragments to VIP addresses (and a few elsewhere).
    fn fragment(&mut self, vips: &[Vip]) -> Gen {
        let dst = if self.rng.random_bool(0.9) {
            self.pick_vip(vips).addr
        } else {
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99))
        };
        let proto = [6u8, 17, 17, 6, 1, 58, 47][self.rng.random_range(0..7)];
        let data = payload(&mut self.rng, 2800);
        let pkt = match dst {
            IpAddr::V4(d) => {
                let IpAddr::V4(s) = self.client(false) else { unreachable!() };
                let mut h = V4Hdr::new(s, d, if proto == 58 { 1 } else { proto });
                h.df = self.rng.random_bool(0.2);
                match self.rng.random_range(0..3) {
                    0 => h.mf = true,
                    1 => h.offset = self.rng.random_range(1..400),
                    _ => {
                        h.mf = true;
                        h.offset = self.rng.random_range(1..400);
                    }
                }
                if self.rng.random_bool(0.1) {
                    h.options = self.v4_options();
                }
                h.packet(&data)
            }
            IpAddr::V6(d) => {
                let IpAddr::V6(s) = self.client(true) else { unreachable!() };
                let mut exts = if self.rng.random_bool(0.2) { self.v6_exts() } else { Vec::new() };
                exts.truncate(3);
                let at = self.rng.random_range(0..=exts.len());
                let body = ext_body(&mut self.rng, 44);
                exts.insert(at, (44, body));
                let proto = if proto == 1 { 58 } else { proto };
                v6_packet(s, d, 64, &exts, proto, &data)
            }
        };
        let ingress = self.net.eth0;
        Gen {
            frame: self.eth_ip(ingress, CLIENT_MAC, &pkt),
            ingress,
            what: format!("fragment (proto {proto}) to {dst}"),
        }
    }

    /// An ICMP error from the client side about a packet a VIP sent.
    fn icmp_to_vip(&mut self, vips: &[Vip]) -> Gen {
        let (client, vip_end, proto) = if !self.recent.is_empty() && self.rng.random_bool(0.8) {
            self.recent[self.rng.random_range(0..self.recent.len())]
        } else {
            let vip = *self.pick_vip(vips);
            (
                sock(self.client(vip.addr.is_ipv6()), self.sport()),
                sock(vip.addr, self.dport_for(&vip, vips)),
                proto_of(vip.protocol),
            )
        };
        // What the VIP (its backend) sent: VIP:port -> client.
        let data = payload(&mut self.rng, 1400);
        let seg = if proto == 6 {
            tcp(vip_end.ip(), client.ip(), vip_end.port(), client.port(), 0x18, 0, &data)
        } else {
            udp(vip_end.ip(), client.ip(), vip_end.port(), client.port(), self.rng.random_bool(0.1), &data)
        };
        let from_router = self.rng.random_bool(0.6);
        let outer_dst = if self.rng.random_bool(0.92) { vip_end.ip() } else { self.client(vip_end.is_ipv6()) };
        let pkt = match (vip_end.ip(), client.ip()) {
            (IpAddr::V4(v), IpAddr::V4(c)) => {
                let mut qh = V4Hdr::new(v, c, proto);
                qh.ttl = 63;
                if self.rng.random_bool(0.05) {
                    qh.options = self.v4_options();
                }
                if self.rng.random_bool(0.05) {
                    qh.offset = self.rng.random_range(0..3);
                    qh.mf = true;
                }
                let mut q = qh.packet(&seg);
                let keep = (20 + qh.options.len() + self.rng.random_range(0..60)).min(q.len());
                q.truncate(if self.rng.random_bool(0.1) {
                    self.rng.random_range(0..=keep)
                } else {
                    keep.max(20 + qh.options.len() + 8).min(q.len())
                });
                let (ty, code, rest) = match self.rng.random_range(0..10) {
                    0..=4 => (3, 4, [0, 0, 0x05, self.rng.random()]),
                    5..=6 => (3, self.rng.random_range(0..16), [0; 4]),
                    7 => (11, 0, [0; 4]),
                    8 => (12, 0, [0x14, 0, 0, 0]),
                    _ => (self.rng.random_range(4..=5), 0, [0; 4]),
                };
                let src = if from_router {
                    ROUTER_V4
                } else {
                    match self.client(false) {
                        IpAddr::V4(a) => a,
                        _ => unreachable!(),
                    }
                };
                let IpAddr::V4(od) = outer_dst else { unreachable!() };
                let mut h = V4Hdr::new(src, od, 1);
                h.ttl = self.ttl();
                h.packet(&icmp4(ty, code, rest, &q))
            }
            (IpAddr::V6(v), IpAddr::V6(c)) => {
                let exts = if self.rng.random_bool(0.05) { self.v6_exts() } else { Vec::new() };
                let mut q = v6_packet(v, c, 63, &exts, proto, &seg);
                let keep = (48 + self.rng.random_range(0..60)).min(q.len());
                q.truncate(if self.rng.random_bool(0.1) { self.rng.random_range(0..=keep) } else { keep });
                let (ty, code, rest) = match self.rng.random_range(0..10) {
                    0..=4 => (2, 0, [0, 0, 0x05, self.rng.random()]),
                    5..=6 => (1, self.rng.random_range(0..7), [0; 4]),
                    7 => (3, 0, [0; 4]),
                    _ => (4, 0, [0, 0, 0, 8]),
                };
                let src = if from_router {
                    ROUTER_V6
                } else {
                    match self.client(true) {
                        IpAddr::V6(a) => a,
                        _ => unreachable!(),
                    }
                };
                let IpAddr::V6(od) = outer_dst else { unreachable!() };
                let ttl = self.ttl();
                v6_packet(src, od, ttl, &[], 58, &icmp6(src, od, ty, code, rest, &q))
            }
            _ => unreachable!(),
        };
        let ingress = self.net.eth0;
        let mac = if from_router { ROUTER_MAC } else { CLIENT_MAC };
        Gen {
            frame: self.eth_ip(ingress, mac, &pkt),
            ingress,
            what: format!("ICMP error about {proto} {client} <- {vip_end}"),
        }
    }

    /// A NAT backend's reply (or a stray backend packet).
    fn nat_reply(&mut self, nat: &[Key]) -> Gen {
        let key = if !nat.is_empty() && self.rng.random_bool(0.85) {
            nat[self.rng.random_range(0..nat.len())]
        } else {
            let v6 = self.rng.random_bool(0.5);
            let b = self.rng.random_range(1..=BACKENDS);
            let src = if v6 { IpAddr::V6(backend_v6(b)) } else { IpAddr::V4(backend_v4(b)) };
            Key {
                src,
                dst: self.client(v6),
                sport: 8443,
                dport: self.sport(),
                proto: if self.rng.random_bool(0.5) { 6 } else { 17 },
            }
        };
        let pkt = self.l4_packet(key.src, key.dst, key.sport, key.dport, key.proto, 2900);
        let ingress = if self.rng.random_bool(0.9) { self.net.eth1 } else { self.net.eth0 };
        let b = (1..=BACKENDS)
            .find(|&i| key.src == IpAddr::V4(backend_v4(i)) || key.src == IpAddr::V6(backend_v6(i)))
            .unwrap_or(1);
        Gen { frame: self.eth_ip(ingress, backend_mac(b), &pkt), ingress, what: format!("backend reply {key:?}") }
    }

    /// An ICMP error from the backends' side about a packet a NAT backend got.
    fn icmp_from_backend(&mut self, nat: &[Key]) -> Gen {
        let Some(&key) = (!nat.is_empty()).then(|| &nat[self.rng.random_range(0..nat.len())]) else {
            return self.nat_reply(nat);
        };
        // What the backend got: client:cport -> backend:bport.
        let data = payload(&mut self.rng, 600);
        let seg = if key.proto == 6 {
            tcp(key.dst, key.src, key.dport, key.sport, 0x02, 0, &data)
        } else {
            udp(key.dst, key.src, key.dport, key.sport, self.rng.random_bool(0.1), &data)
        };
        let from_backend = self.rng.random_bool(0.6);
        let pkt = match (key.src, key.dst) {
            (IpAddr::V4(b), IpAddr::V4(c)) => {
                let mut qh = V4Hdr::new(c, b, key.proto);
                qh.ttl = 62;
                let mut q = qh.packet(&seg);
                q.truncate(48.min(q.len()));
                let src = if from_backend { b } else { backend_v4(200) };
                let (code, rest) = if self.rng.random_bool(0.5) { (3, [0; 4]) } else { (4, [0, 0, 0x05, 0x00]) };
                let mut h = V4Hdr::new(src, c, 1);
                h.ttl = self.ttl();
                h.packet(&icmp4(3, code, rest, &q))
            }
            (IpAddr::V6(b), IpAddr::V6(c)) => {
                let mut q = v6_packet(c, b, 62, &[], key.proto, &seg);
                q.truncate(68.min(q.len()));
                let src = if from_backend { b } else { backend_v6(200) };
                let (ty, code, rest) =
                    if self.rng.random_bool(0.5) { (1, 4, [0; 4]) } else { (2, 0, [0, 0, 0x05, 0x00]) };
                let ttl = self.ttl();
                v6_packet(src, c, ttl, &[], 58, &icmp6(src, c, ty, code, rest, &q))
            }
            _ => unreachable!(),
        };
        let ingress = self.net.eth1;
        Gen {
            frame: self.eth_ip(ingress, backend_mac(1), &pkt),
            ingress,
            what: format!("ICMP error from the backend side about {key:?}"),
        }
    }

    fn echo(&mut self, vips: &[Vip]) -> Gen {
        let dst = if self.rng.random_bool(0.8) {
            self.pick_vip(vips).addr
        } else {
            [IpAddr::V4(LB_FRONT_V4), IpAddr::V6(LB_FRONT_V6)][self.rng.random_range(0..2)]
        };
        let src = self.client(dst.is_ipv6());
        let data = payload(&mut self.rng, 1400);
        let pkt = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = V4Hdr::new(s, d, 1);
                if self.rng.random_bool(0.1) {
                    h.options = self.v4_options();
                }
                h.packet(&icmp4(8, 0, [0, 7, 0, 1], &data))
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let exts = if self.rng.random_bool(0.1) { self.v6_exts() } else { Vec::new() };
                v6_packet(s, d, 64, &exts, 58, &icmp6(s, d, 128, 0, [0, 7, 0, 1], &data))
            }
            _ => unreachable!(),
        };
        let ingress = self.net.eth0;
        Gen { frame: self.eth_ip(ingress, CLIENT_MAC, &pkt), ingress, what: format!("echo to {dst}") }
    }

    /// IP traffic not for any VIP: the LB itself, backends, other
    /// addresses, other protocols to VIP addresses, unserved ports.
    fn non_vip(&mut self, vips: &[Vip]) -> Gen {
        let v6 = self.rng.random_bool(0.4);
        let dst: IpAddr = match self.rng.random_range(0..5) {
            0 => {
                if v6 {
                    IpAddr::V6(LB_FRONT_V6)
                } else {
                    IpAddr::V4(LB_FRONT_V4)
                }
            }
            1 => {
                if v6 {
                    IpAddr::V6(backend_v6(1))
                } else {
                    IpAddr::V4(backend_v4(1))
                }
            }
            2 => {
                if v6 {
                    "2001:db8:f::99".parse().unwrap()
                } else {
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99))
                }
            }
            _ => {
                let candidates: Vec<IpAddr> = vips.iter().map(|v| v.addr).filter(|a| a.is_ipv6() == v6).collect();
                candidates[self.rng.random_range(0..candidates.len())]
            }
        };
        let src = self.client(v6);
        let proto = [6u8, 17, 47, 132, 50, 6, 17][self.rng.random_range(0..7)];
        let pkt = if proto == 6 || proto == 17 {
            let dport = self.rng.random_range(1..=65535u16);
            let sport = self.sport();
            self.l4_packet(src, dst, sport, dport, proto, 1500)
        } else {
            let data = payload(&mut self.rng, 1500);
            match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => V4Hdr::new(s, d, proto).packet(&data),
                (IpAddr::V6(s), IpAddr::V6(d)) => v6_packet(s, d, 64, &[], proto, &data),
                _ => unreachable!(),
            }
        };
        let ingress = self.net.eth0;
        Gen { frame: self.eth_ip(ingress, CLIENT_MAC, &pkt), ingress, what: format!("IP proto {proto} to {dst}") }
    }

    fn non_ip(&mut self) -> Gen {
        let et: u16 =
            [0x0806, 0x88CC, 0x8847, 0x0842, 0x05DC, 0x0060, 0x9000, self.rng.random()][self.rng.random_range(0..8)];
        let len = self.rng.random_range(0..120);
        let data: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
        let ingress = if self.rng.random_bool(0.5) { self.net.eth0 } else { self.net.eth1 };
        Gen {
            frame: ether(self.net.mac(ingress), CLIENT_MAC, et, &data),
            ingress,
            what: format!("ethertype {et:#06x}"),
        }
    }

    fn garbage(&mut self) -> Gen {
        let len = self.rng.random_range(14..160);
        let mut f: Vec<u8> = (0..len).map(|_| self.rng.random()).collect();
        if self.rng.random_bool(0.7) {
            let et: u16 = if self.rng.random_bool(0.5) { 0x0800 } else { 0x86DD };
            put16(&mut f, 12, et);
            if len > 15 && self.rng.random_bool(0.5) {
                f[14] = if et == 0x0800 { 0x45 } else { 0x60 };
            }
        }
        let ingress = self.net.eth0;
        Gen { frame: f, ingress, what: "random bytes".into() }
    }

    fn vlan(&mut self, g: &mut Gen) {
        let tags = [1usize, 1, 2, 3][self.rng.random_range(0..4)];
        let tags: Vec<VlanTag> = (0..tags)
            .map(|i| {
                let tpid = if i == 0 && self.rng.random_bool(0.3) { TPID_8021AD } else { TPID_8021Q };
                VlanTag { tpid, id: self.rng.random_range(1..4095u16) }
            })
            .collect();
        g.frame = insert_vlan_tags(&g.frame, &tags);
        let tags = tags.len();
        g.what = format!("{tags} VLAN tag(s), {}", g.what);
    }

    fn mutate(&mut self, g: &mut Gen) {
        let n = self.rng.random_range(1..=3);
        let mut done = Vec::new();
        for _ in 0..n {
            let f = &mut g.frame;
            let v4 = be16(f, 12) == 0x0800;
            let v6 = be16(f, 12) == 0x86DD;
            match self.rng.random_range(0..9) {
                0 => {
                    let len = self.rng.random_range(14..f.len().max(15));
                    f.truncate(len);
                    done.push(format!("cut to {len}"));
                }
                1 | 2 => {
                    let span = if self.rng.random_bool(0.8) { f.len().min(14 + 80) } else { f.len() };
                    let at = self.rng.random_range(0..span);
                    let x = self.rng.random_range(1..=255u8);
                    f[at] ^= x;
                    done.push(format!("byte {at} ^= {x:#04x}"));
                }
                3 if v4 && f.len() >= 34 => {
                    let (at, what) = [
                        (14usize, "version/IHL"),
                        (16, "total length hi"),
                        (17, "total length lo"),
                        (20, "flags/offset"),
                        (22, "TTL"),
                        (23, "protocol"),
                    ][self.rng.random_range(0..6)];
                    f[at] = match at {
                        14 => [0x45, 0x46, 0x4f, 0x44, 0x55, 0x65][self.rng.random_range(0..6)],
                        23 => [1u8, 6, 17, 58, 47, 0][self.rng.random_range(0..6)],
                        _ => self.rng.random(),
                    };
                    done.push(format!("IPv4 {what} = {:#04x}", f[at]));
                }
                4 if v6 && f.len() >= 54 => match self.rng.random_range(0..4) {
                    0 => {
                        let pl = [0u16, 1, 7, 8, self.rng.random()][self.rng.random_range(0..5)];
                        put16(f, 18, pl);
                        done.push(format!("IPv6 payload length = {pl}"));
                    }
                    1 => {
                        f[20] = [0u8, 6, 17, 43, 44, 58, 59, 60][self.rng.random_range(0..8)];
                        done.push(format!("IPv6 next header = {}", f[20]));
                    }
                    2 => {
                        f[21] = self.rng.random_range(0..3);
                        done.push(format!("IPv6 hop limit = {}", f[21]));
                    }
                    _ => {
                        f[14] = self.rng.random();
                        done.push(format!("IPv6 version byte = {:#04x}", f[14]));
                    }
                },
                5 => {
                    let et: u16 = [0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806][self.rng.random_range(0..5)];
                    put16(f, 12, et);
                    done.push(format!("ethertype = {et:#06x}"));
                }
                6 | 7 => {
                    let pad = if f.len() < 60 && self.rng.random_bool(0.5) {
                        60 - f.len()
                    } else {
                        self.rng.random_range(1..64)
                    };
                    f.extend(std::iter::repeat_n(0u8, pad));
                    done.push(format!("{pad} bytes of padding"));
                }
                _ => {
                    // Shrink the IP length so the frame carries trailing bytes.
                    if v4 && f.len() >= 34 {
                        let tot = be16(f, 16);
                        let new = tot.saturating_sub(self.rng.random_range(1..40));
                        put16(f, 16, new);
                        done.push(format!("IPv4 total length {tot} -> {new}"));
                    } else if v6 && f.len() >= 54 {
                        let pl = be16(f, 18);
                        let new = pl.saturating_sub(self.rng.random_range(1..40));
                        put16(f, 18, new);
                        done.push(format!("IPv6 payload length {pl} -> {new}"));
                    }
                }
            }
        }
        g.what = format!("{} [{}]", g.what, done.join(", "));
    }

    fn next(&mut self, vips: &[Vip], nat: &[Key]) -> Gen {
        let mut g = match self.rng.random_range(0..100) {
            0..=35 => self.client_to_vip(vips),
            36..=42 => self.fragment(vips),
            43..=53 => self.icmp_to_vip(vips),
            54..=61 => self.nat_reply(nat),
            62..=66 => self.icmp_from_backend(nat),
            67..=72 => self.echo(vips),
            73..=86 => self.non_vip(vips),
            87..=92 => self.non_ip(),
            _ => self.garbage(),
        };
        if self.rng.random_bool(0.04) {
            self.vlan(&mut g);
        }
        if self.rng.random_bool(0.25) {
            self.mutate(&mut g);
        }
        g
    }
}

// ---------------------------------------------------------------------------
// The LB under test and the model's copy of its configuration.

fn b4(i: usize) -> BackendAddr {
    BackendAddr::new(IpAddr::V4(backend_v4(i)))
}

fn b6(i: usize) -> BackendAddr {
    BackendAddr::new(IpAddr::V6(backend_v6(i)))
}

fn with_port(b: BackendAddr, port: u16) -> BackendAddr {
    BackendAddr { port: Some(port), ..b }
}

/// VIPs of every mode, family and kind, their initial backends (weights)
/// and the backends each may be given later.
/// A VIP, its configuration, its first backends (with weights) and the
/// backends it may be given later.
type VipSpec = (Vip, VipConfig, Vec<(BackendAddr, u32)>, Vec<BackendAddr>);

fn vip_table() -> Vec<VipSpec> {
    let v4: Vec<BackendAddr> = (1..=BACKENDS).map(b4).collect();
    let v6: Vec<BackendAddr> = (1..=BACKENDS).map(b6).collect();
    // Ports 443 and 8080 are the two TCP NAT VIPs' own: a backend given one
    // may collide with the other VIP's backend that keeps its port.
    let nat4: Vec<BackendAddr> = v4
        .iter()
        .flat_map(|b| [*b, with_port(*b, 8443), with_port(*b, 9000), with_port(*b, 443), with_port(*b, 8080)])
        .collect();
    let nat6: Vec<BackendAddr> = v6.iter().flat_map(|b| [*b, with_port(*b, 5353)]).collect();
    let vip4 = |last: u8, port: Option<u16>, p: Protocol| Vip {
        addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)),
        port,
        protocol: p,
    };
    let vip6 = |last: u16, port: Option<u16>, p: Protocol| Vip {
        addr: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, last)),
        port,
        protocol: p,
    };
    let cfg = |mode| VipConfig::new(mode).table_size(1021);
    let (tcp, udp) = (Protocol::Tcp, Protocol::Udp);
    use ForwardingMode::{Ipip, L2Dsr, Nat};
    vec![
        (vip4(10, Some(80), tcp), cfg(L2Dsr), vec![(b4(1), 1), (b4(2), 2), (b4(3), 1)], v4.clone()),
        (
            vip4(10, Some(53), udp),
            cfg(Ipip),
            vec![(b4(1), 1), (b4(2), 1), (b4(3), 1), (b4(4), 1)],
            v4.iter().chain(&v6).copied().collect(),
        ),
        (
            vip4(10, Some(443), tcp),
            cfg(Nat),
            vec![(with_port(b4(1), 8443), 1), (b4(2), 1), (with_port(b4(3), 8443), 2)],
            nat4.clone(),
        ),
        (
            vip4(20, None, tcp),
            cfg(Ipip),
            vec![(b6(1), 1), (b6(2), 1), (b6(3), 1)],
            v4.iter().chain(&v6).copied().collect(),
        ),
        (
            vip4(20, None, udp),
            cfg(L2Dsr).hash(HashInput::SourceAddress),
            vec![(b4(2), 1), (b4(3), 1), (b4(4), 1), (b4(5), 1), (b4(NO_NEIGH_BACKEND), 1)],
            v4.iter().copied().chain([b4(NO_NEIGH_BACKEND)]).collect(),
        ),
        (vip4(20, Some(8080), tcp), cfg(Nat), vec![(b4(4), 1), (with_port(b4(5), 9000), 1)], nat4),
        // All-ports NAT: backends keep each packet's port (none of their own).
        (vip4(30, None, udp), cfg(Nat), vec![(b4(1), 1), (b4(6), 1)], v4.clone()),
        (
            vip4(40, Some(80), tcp),
            cfg(Ipip).conntrack(false),
            vec![(b4(1), 1), (b4(2), 1), (b4(NO_NEIGH_BACKEND), 1)],
            v4.iter().copied().chain([b4(NO_NEIGH_BACKEND)]).collect(),
        ),
        (vip4(50, Some(5000), udp), cfg(L2Dsr), vec![], v4.clone()),
        (vip6(0x10, Some(80), tcp), cfg(Ipip), vec![(b6(1), 1), (b6(2), 1), (b6(3), 1), (b6(4), 1)], v6.clone()),
        (vip6(0x10, Some(53), udp), cfg(Nat), vec![(with_port(b6(1), 5353), 1), (b6(2), 1), (b6(3), 1)], nat6),
        (
            vip6(0x20, None, tcp),
            cfg(L2Dsr),
            vec![(b6(1), 1), (b6(2), 1), (b6(3), 1), (b6(4), 1), (b6(5), 1), (b6(NO_NEIGH_BACKEND), 1)],
            v6.iter().copied().chain([b6(NO_NEIGH_BACKEND)]).collect(),
        ),
        (
            vip6(0x20, None, udp),
            cfg(Ipip).hash(HashInput::SourceAddress),
            vec![(b6(2), 1), (b6(3), 1), (b6(4), 1)],
            v6.clone(),
        ),
        (vip6(0x30, None, tcp), cfg(Nat), vec![(b6(2), 1), (b6(3), 1)], v6.clone()),
    ]
}

fn load_lb() -> LoadBalancer {
    LoadBalancer::builder()
        .redirect_interface("eth0")
        .redirect_interface("eth1")
        .max_vips(32)
        .max_backends(256)
        .connections(1 << 17)
        .new_flow_limit(NewFlowLimit::Unlimited)
        // Longer than any run: an idle UDP flow never chooses afresh.
        .udp_timeout(std::time::Duration::from_secs(24 * 3600))
        .ipip_source(IPIP_SRC_V4.parse().unwrap())
        .ipip_source(IPIP_SRC_V6.parse().unwrap())
        .load()
        .expect("load the LB (needs root)")
}

fn configure(lb: &LoadBalancer, net: Net) -> Model {
    assert!(IPIP_SRC_V6.ends_with("/64"), "the model reads the flow hash from a /64 IPIP source");
    let mut m = Model {
        net,
        vips: BTreeMap::new(),
        conns: HashMap::new(),
        nat: HashMap::new(),
        nat_keys: Vec::new(),
        tainted: Default::default(),
        tainted_clients: Default::default(),
        nat_overwrites: 0,
        echo: EchoPolicy::Answer,
        fragments: FragmentPolicy::ForwardAllPorts,
        options: OptionsPolicy::Forward,
        incarnations: 0,
    };
    for (vip, config, backends, pool) in vip_table() {
        lb.add_vip(vip, config).unwrap();
        let mut batch = lb.batch(&vip);
        let mut bs = BTreeMap::new();
        for (b, w) in backends {
            batch = batch.add(b, w);
            m.incarnations += 1;
            bs.insert(b, (w, m.incarnations));
        }
        batch.apply().unwrap();
        m.vips.insert(vip, VipModel { config, backends: bs, pool });
    }
    // Every backend a NAT VIP may be given that would collide with another
    // NAT VIP's is refused, naming that VIP (change() checks the others are
    // accepted as they come).
    let mut refused = 0;
    for (vip, vm) in &m.vips {
        for b in vm.pool.iter().filter(|b| !vm.backends.keys().any(|p| p.ip == b.ip)) {
            if let Some(other) = m.nat_conflict(vip, b) {
                let e = lb.add_backend(vip, *b, 1).unwrap_err();
                assert!(matches!(e, LbError::NatBackendConflict { other: o, .. } if o == other), "{vip} + {b}: {e}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 2, "only {refused} colliding NAT backends in the pools");
    m
}

impl Model {
    /// The NAT VIP (of the protocol, another address or port) that already
    /// reaches `b`'s address and port, if any: adding `b` to `vip` is then
    /// refused (ForwardingMode::Nat's docs: a backend address and port
    /// serve one VIP address and port; an all-ports VIP's backend address
    /// serves no other NAT VIP of the protocol but a single-port VIP of the
    /// same address whose backend keeps that port).
    fn nat_conflict(&self, vip: &Vip, b: &BackendAddr) -> Option<Vip> {
        if self.vips[vip].config.mode != ForwardingMode::Nat {
            return None;
        }
        // A single-port VIP of `all`'s address whose backend keeps its port.
        let carved = |all: &Vip, v: &Vip, ob: &BackendAddr| {
            v.addr == all.addr && v.port.is_some() && (ob.port.is_none() || ob.port == v.port)
        };
        let clash = |v: &Vip, ob: &BackendAddr| match (vip.port, v.port) {
            (None, None) => true,
            (None, Some(_)) => !carved(vip, v, ob),
            (Some(_), None) => !carved(v, vip, b),
            (Some(p), Some(q)) => b.port.unwrap_or(p) == ob.port.unwrap_or(q),
        };
        self.vips
            .iter()
            .filter(|(v, vm)| *v != vip && v.protocol == vip.protocol && vm.config.mode == ForwardingMode::Nat)
            .find(|(v, vm)| vm.backends.keys().any(|ob| ob.ip == b.ip && clash(v, ob)))
            .map(|(v, _)| *v)
    }
}

/// One change to the LB and the model alike: a backend added, removed or
/// reweighted (0 drains), or a policy changed.
fn change(lb: &LoadBalancer, m: &mut Model, rng: &mut StdRng) -> String {
    if rng.random_bool(0.3) {
        m.echo = [EchoPolicy::Answer, EchoPolicy::Answer, EchoPolicy::Pass, EchoPolicy::Drop][rng.random_range(0..4)];
        m.fragments = if rng.random_bool(0.8) { FragmentPolicy::ForwardAllPorts } else { FragmentPolicy::Drop };
        m.options = if rng.random_bool(0.75) { OptionsPolicy::Forward } else { OptionsPolicy::Drop };
        lb.set_echo_policy(m.echo);
        lb.set_fragment_policy(m.fragments);
        lb.set_options_policy(m.options);
        return format!("policies: echo {:?}, fragments {:?}, options {:?}", m.echo, m.fragments, m.options);
    }
    let vips: Vec<Vip> = m.vips.keys().copied().collect();
    let vip = vips[rng.random_range(0..vips.len())];
    let vm = m.vips.get_mut(&vip).unwrap();
    let present: Vec<BackendAddr> = vm.backends.keys().copied().collect();
    // One backend per address: NAT pools list an address with several ports.
    let absent: Vec<BackendAddr> = vm.pool.iter().filter(|b| !present.iter().any(|p| p.ip == b.ip)).copied().collect();
    match rng.random_range(0..3) {
        0 if !absent.is_empty() => {
            let b = absent[rng.random_range(0..absent.len())];
            let w = rng.random_range(0..=3);
            if let Some(other) = m.nat_conflict(&vip, &b) {
                // Refused, nothing changed: replies of two VIPs' flows would share an entry.
                let e = lb.add_backend(&vip, b, w).unwrap_err();
                assert!(matches!(e, LbError::NatBackendConflict { other: o, .. } if o == other), "{vip} + {b}: {e}");
                return format!("{vip}: add {b} refused (NAT conflict with {other})");
            }
            let vm = m.vips.get_mut(&vip).unwrap();
            lb.add_backend(&vip, b, w).unwrap();
            m.incarnations += 1;
            vm.backends.insert(b, (w, m.incarnations));
            format!("{vip}: add {b} weight {w}")
        }
        1 if !present.is_empty() => {
            let b = present[rng.random_range(0..present.len())];
            lb.remove_backend(&vip, b).unwrap();
            vm.backends.remove(&b);
            format!("{vip}: remove {b}")
        }
        _ if !present.is_empty() => {
            let b = present[rng.random_range(0..present.len())];
            let w = rng.random_range(0..=3);
            lb.set_weight(&vip, b, w).unwrap();
            vm.backends.get_mut(&b).unwrap().0 = w;
            format!("{vip}: {b} weight {w}")
        }
        _ => "nothing".into(),
    }
}

// ---------------------------------------------------------------------------
// Checks.

/// A disagreement, with everything needed to replay it.
#[derive(Clone, Debug)]
struct Failure {
    index: usize,
    category: String,
    report: String,
}

fn action_name(a: XdpAction) -> &'static str {
    match a {
        XdpAction::Aborted => "XDP_ABORTED",
        XdpAction::Drop => "XDP_DROP",
        XdpAction::Pass => "XDP_PASS",
        XdpAction::Tx => "XDP_TX",
        XdpAction::Redirect => "XDP_REDIRECT",
        XdpAction::Other(_) => "XDP_?",
    }
}

/// Whether every checksum of the input that the program could carry over
/// is right (IPv4 header, TCP/UDP, ICMP), as etherparse computes them.
fn checksums_ok(frame: &[u8]) -> bool {
    checksum_problems(frame).is_empty()
}

/// Every checksum etherparse can verify in an Ethernet frame (IP in IP
/// too), as a list of problems.
fn checksum_problems(frame: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if frame.len() < 14 {
        return problems;
    }
    let et = be16(frame, 12);
    let pkt = &frame[14..];
    check_ip(et, pkt, &mut problems, 0);
    problems
}

fn check_ip(et: u16, pkt: &[u8], problems: &mut Vec<String>, depth: usize) {
    match et {
        0x0800 => {
            let Ok((ip, rest)) = Ipv4Header::from_slice(pkt) else { return };
            if ip.header_checksum != ip.calc_header_checksum() {
                problems.push(format!(
                    "IPv4 header checksum {:#06x}, should be {:#06x}",
                    ip.header_checksum,
                    ip.calc_header_checksum()
                ));
            }
            let len = usize::from(ip.total_len).saturating_sub(ip.header_len());
            if rest.len() < len || ip.is_fragmenting_payload() {
                return;
            }
            let payload = &rest[..len];
            match ip.protocol {
                IpNumber::TCP => {
                    if let Ok((h, data)) = TcpHeader::from_slice(payload) {
                        let want = h.calc_checksum_ipv4(&ip, data).unwrap();
                        if h.checksum != want {
                            problems.push(format!("TCP checksum {:#06x}, should be {want:#06x}", h.checksum));
                        }
                    }
                }
                IpNumber::UDP => {
                    if let Ok((h, data)) = UdpHeader::from_slice(payload) {
                        if h.checksum != 0 && usize::from(h.length) == payload.len() {
                            let want = h.calc_checksum_ipv4(&ip, data).unwrap();
                            if h.checksum != want {
                                problems.push(format!("UDP checksum {:#06x}, should be {want:#06x}", h.checksum));
                            }
                        }
                    }
                }
                IpNumber::ICMP => {
                    if let Ok((h, data)) = Icmpv4Header::from_slice(payload) {
                        let want = Icmpv4Header::with_checksum(h.icmp_type.clone(), data).checksum;
                        if h.checksum != want {
                            problems.push(format!("ICMP checksum {:#06x}, should be {want:#06x}", h.checksum));
                        }
                        // The quoted header of an error, when whole.
                        if matches!(payload[0], 3 | 11 | 12) && data.len() >= 20 && data[0] >> 4 == 4 {
                            if let Ok((q, _)) = Ipv4Header::from_slice(data) {
                                if q.header_checksum != q.calc_header_checksum() {
                                    problems.push("quoted IPv4 header checksum".into());
                                }
                            }
                        }
                    }
                }
                IpNumber::IPV4 if depth == 0 => check_ip(0x0800, payload, problems, 1),
                IpNumber::IPV6 if depth == 0 => check_ip(0x86DD, payload, problems, 1),
                _ => {}
            }
        }
        0x86DD => {
            let Ok((ip, rest)) = Ipv6Header::from_slice(pkt) else { return };
            let len = usize::from(ip.payload_length);
            if len == 0 || rest.len() < len {
                return;
            }
            let payload = &rest[..len];
            match ip.next_header {
                IpNumber::TCP => {
                    if let Ok((h, data)) = TcpHeader::from_slice(payload) {
                        let want = h.calc_checksum_ipv6(&ip, data).unwrap();
                        if h.checksum != want {
                            problems.push(format!("TCP checksum {:#06x}, should be {want:#06x}", h.checksum));
                        }
                    }
                }
                IpNumber::UDP => {
                    if let Ok((h, data)) = UdpHeader::from_slice(payload) {
                        if usize::from(h.length) == payload.len() {
                            let want = h.calc_checksum_ipv6(&ip, data).unwrap();
                            if h.checksum != want {
                                problems.push(format!("UDP checksum {:#06x}, should be {want:#06x}", h.checksum));
                            }
                        }
                    }
                }
                IpNumber::IPV6_ICMP => {
                    if let Ok((h, data)) = Icmpv6Header::from_slice(payload) {
                        let want =
                            Icmpv6Header::with_checksum(h.icmp_type, ip.source, ip.destination, data).unwrap().checksum;
                        if h.checksum != want {
                            problems.push(format!("ICMPv6 checksum {:#06x}, should be {want:#06x}", h.checksum));
                        }
                    }
                }
                IpNumber::IPV4 if depth == 0 => check_ip(0x0800, payload, problems, 1),
                IpNumber::IPV6 if depth == 0 => check_ip(0x86DD, payload, problems, 1),
                _ => {}
            }
        }
        _ => {}
    }
}

/// Frames equal, where checksum fields the program updates incrementally
/// may differ by the sign of zero when the input's checksums were wrong.
fn same_frame(want: &[u8], got: &[u8], soft: &[usize], input_ok: bool) -> bool {
    if want.len() != got.len() {
        return false;
    }
    want.iter().zip(got).enumerate().all(|(i, (a, b))| {
        a == b || {
            let at = soft.iter().find(|&&s| i == s || i == s + 1);
            match at {
                Some(&s) if !input_ok => {
                    let (x, y) = (be16(want, s), be16(got, s));
                    (x == 0 || x == 0xFFFF) && (y == 0 || y == 0xFFFF)
                }
                _ => false,
            }
        }
    })
}

/// The backend the kernel sent a forwarded frame to, read from the frame:
/// IPIP's outer destination, NAT's new destination, or (DSR) the
/// neighbour owning the destination MAC.
fn kernel_backend(out: &[u8], mode: ForwardingMode) -> Option<IpAddr> {
    let ip = match parse(out).1 {
        Parsed::Ip(ip) => ip,
        _ => return None,
    };
    match mode {
        ForwardingMode::Ipip | ForwardingMode::Nat => Some(ip.dst),
        ForwardingMode::L2Dsr => {
            let mac: [u8; 6] = out[0..6].try_into().unwrap();
            (1..=BACKENDS).find(|&i| backend_mac(i) == mac).map(|i| {
                if ip.fam == Fam::V4 {
                    IpAddr::V4(backend_v4(i))
                } else {
                    IpAddr::V6(backend_v6(i))
                }
            })
        }
        other => unimplemented!("the model has no forwarding mode {other:?}: add it to kernel_backend"),
    }
}

/// The checks that need no model: what any output of the program must
/// satisfy. Returns (category, detail) pairs.
fn invariants(
    m: &Model,
    input: &[u8],
    ingress: u32,
    action: XdpAction,
    out: &[u8],
    prediction: &Prediction,
) -> Vec<(String, String)> {
    let pick = prediction.pick;
    let mut v = Vec::new();
    match action {
        XdpAction::Aborted | XdpAction::Other(_) => {
            v.push(("XDP_ABORTED or unknown action".into(), format!("{action:?}")))
        }
        XdpAction::Pass => {
            // Only a packet whose next hop has no resolved neighbour goes
            // to the stack rewritten (then with valid checksums and the
            // MACs it came with).
            if out != input {
                // (A frame the model cannot predict may be one.)
                if !matches!(prediction.verdict, Verdict::PassRewritten(_)) && prediction.unpredictable.is_none() {
                    v.push(("passed frame changed".into(), "XDP_PASS must leave the frame untouched here".into()));
                } else if out[..12] != input[..12] {
                    v.push(("passed frame changed".into(), "a frame for the stack keeps its MACs".into()));
                } else if checksums_ok(input) {
                    let problems = checksum_problems(out);
                    if !problems.is_empty() {
                        v.push(("invalid checksum in a frame for the stack".into(), problems.join("; ")));
                    }
                }
            }
        }
        XdpAction::Drop => {}
        XdpAction::Tx | XdpAction::Redirect => {
            let dmac: [u8; 6] = out[0..6].try_into().unwrap();
            let smac: [u8; 6] = out[6..12].try_into().unwrap();
            let sender: [u8; 6] = input[6..12].try_into().unwrap();
            let ingress_mac = m.net.mac(ingress);
            // Neither forwarded frames nor answers (which go back to the
            // sender's MAC, only when it and the one it used are unicast)
            // leave with a group MAC; forwarded ones not with a zero MAC.
            if (dmac[0] | smac[0]) & 1 != 0 || (!answer_frame(out, input) && (dmac == [0; 6] || smac == [0; 6])) {
                v.push((
                    "forwarded with zero or multicast MAC addresses".into(),
                    format!("dst {dmac:02x?} src {smac:02x?}"),
                ));
            } else if action == XdpAction::Tx {
                let answer = dmac == sender && smac == input[0..6];
                let on_link = smac == ingress_mac && m.net.neighbour_macs().contains(&dmac);
                if !answer && !on_link {
                    v.push((
                        "XDP_TX with MACs of neither an answer nor a neighbour".into(),
                        format!("dst {dmac:02x?} src {smac:02x?}"),
                    ));
                }
            } else {
                let other = if ingress == m.net.eth0 { m.net.eth1_mac } else { m.net.eth0_mac };
                if smac != other || !m.net.neighbour_macs().contains(&dmac) {
                    v.push((
                        "XDP_REDIRECT without the egress MAC and a neighbour's".into(),
                        format!("dst {dmac:02x?} src {smac:02x?}"),
                    ));
                }
            }
            if checksums_ok(input) {
                let problems = checksum_problems(out);
                if !problems.is_empty() {
                    v.push(("invalid checksum in a forwarded frame".into(), problems.join("; ")));
                }
            }
            if let Some(pick) = pick {
                let vm = &m.vips[&pick.vip];
                if let Some(got) = kernel_backend(out, vm.config.mode) {
                    if !answer_frame(out, input) {
                        match vm.backends.iter().find(|(b, _)| b.ip == got) {
                            None => v.push((
                                "sent to an address that is not one of the VIP's backends".into(),
                                format!("{got} for {}", pick.vip),
                            )),
                            Some((_, (w, _))) if pick.fresh && *w == 0 => v.push((
                                "a new flow sent to a drained backend".into(),
                                format!("{got} for {}", pick.vip),
                            )),
                            _ => {}
                        }
                        if got != pick.backend.ip {
                            v.push((
                                "backend_for/vip_for disagree with the kernel".into(),
                                format!("the library says {} ({}), the kernel chose {got}", pick.backend, pick.vip),
                            ));
                        }
                    }
                }
            }
        }
    }
    v
}

/// Whether an output is an answer to the sender (echo reply, too big).
fn answer_frame(out: &[u8], input: &[u8]) -> bool {
    out[0..6] == input[6..12] && out[6..12] == input[0..6]
}

// ---------------------------------------------------------------------------
// The run.

struct Outcome {
    seed: u64,
    frames: usize,
    failures: Vec<Failure>,
    unpredictable: usize,
    /// Frames whose answer the test's tamper hook changed.
    tampered: Vec<usize>,
    /// Every counter row the model predicted, over the run: what the
    /// frames exercised.
    coverage: BTreeMap<&'static str, u64>,
    nat_overwrites: usize,
    by_action: BTreeMap<&'static str, usize>,
    elapsed: std::time::Duration,
}

impl Outcome {
    fn summary(&self) -> String {
        let mut cats: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.failures {
            *cats.entry(&f.category).or_default() += 1;
        }
        let mut s = format!(
            "seed {:#x}: {} frames in {:.1?} ({:?}); {} unpredictable; {} disagreement(s)",
            self.seed,
            self.frames,
            self.elapsed,
            self.by_action,
            self.unpredictable,
            self.failures.len(),
        );
        let _ = write!(s, "\n  paths: {:?}", self.coverage);
        for (c, n) in cats {
            let _ = write!(s, "\n  {n:>6} x {c}");
        }
        if self.nat_overwrites > 0 {
            let _ = write!(
                s,
                "\n  (NAT: {} reply entries replaced another flow's: flows from one client address and port to \
                 two VIP addresses or ports that reach the same backend address and port share a reply entry)",
                self.nat_overwrites
            );
        }
        s
    }

    fn assert_clean(&self) {
        // The first of each kind, then the next ones up to SHOWN.
        let mut seen = std::collections::BTreeSet::new();
        let firsts: Vec<&Failure> = self.failures.iter().filter(|f| seen.insert(f.category.clone())).collect();
        let more = env_number("XDPG_FUZZ_SHOW").map_or(SHOWN, |n| n as usize).saturating_sub(firsts.len());
        let rest = self.failures.iter().filter(|f| !firsts.iter().any(|g| std::ptr::eq(*g, *f))).take(more);
        for f in firsts.iter().copied().chain(rest) {
            eprintln!("{}", f.report);
        }
        eprintln!("{}", self.summary());
        assert!(self.failures.is_empty(), "the LB disagrees with its documented behaviour:\n{}", self.summary());
    }
}

/// Runs the fuzzer in a fresh VerdictNet. `tamper` changes the kernel's
/// answers before they are checked (to prove the checks catch faults).
fn run_fuzz(seed: u64, frames: usize, tamper: Option<Tamper>) -> Outcome {
    ensure_bpffs();
    let vn = VerdictNet::new("fz", BACKENDS);
    let net = Net { eth0: vn.eth0, eth1: vn.eth1, eth0_mac: vn.eth0_mac, eth1_mac: vn.eth1_mac };
    let outcome = vn.lb.run(move || fuzz_in_namespace(seed, frames, net, tamper));
    drop(vn);
    outcome
}

/// Changes the kernel's answer to a frame before it is checked; true when
/// it changed something.
type Tamper = fn(&mut xdpguard::TestRun) -> bool;

fn fuzz_in_namespace(seed: u64, frames: usize, net: Net, tamper: Option<Tamper>) -> Outcome {
    let started = Instant::now();
    let lb = load_lb();
    let mut model = configure(&lb, net);
    let mut gen = Generator::new(seed, net);
    // Configuration changes draw from their own stream, so a failing frame
    // replays with the same changes before it.
    let mut cfg_rng = StdRng::seed_from_u64(seed ^ 0x5eed_c0f1_6000_0000);
    let vips: Vec<Vip> = model.vips.keys().copied().collect();
    let mut out = Outcome {
        seed,
        frames,
        failures: Vec::new(),
        unpredictable: 0,
        tampered: Vec::new(),
        coverage: BTreeMap::new(),
        nat_overwrites: 0,
        by_action: BTreeMap::new(),
        elapsed: Default::default(),
    };
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut counts_known = true;
    let mut stats_before = lb.stats().unwrap();
    let mut changes = Vec::new();
    // Counters are checked per epoch; XDPG_FUZZ_COUNTERS_EVERY=1 checks
    // them after every frame, to find the frame a disagreement comes from.
    // XDPG_FUZZ_TRACE=N prints frame N with the model's prediction.
    let trace = env_number("XDPG_FUZZ_TRACE");
    let counters_every = env_number("XDPG_FUZZ_COUNTERS_EVERY").map_or(EPOCH, |n| n.max(1) as usize);
    for index in 0..frames {
        if index > 0 && (index % EPOCH == 0 || index % counters_every == 0) {
            if counts_known {
                check_counters(&lb, &stats_before, &counts, index, seed, &changes, &mut out.failures);
            }
            stats_before = lb.stats().unwrap();
            counts.clear();
            counts_known = true;
        }
        if index > 0 && index % EPOCH == 0 {
            changes.clear();
            for _ in 0..cfg_rng.random_range(1..=3) {
                changes.push(change(&lb, &mut model, &mut cfg_rng));
            }
        }
        let g = gen.next(&vips, &model.nat_keys);
        let mut prediction = model.predict(&lb, &g.frame, g.ingress);
        let mut got = lb.test_run_on(&g.frame, g.ingress).expect("BPF_PROG_TEST_RUN");
        if let Some(t) = tamper {
            if t(&mut got) {
                out.tampered.push(index);
            }
        }
        if trace == Some(index as u64) {
            eprintln!(
                "{}",
                report(&prediction, &g, &got, index, seed, &changes, &[("traced".into(), String::new())]).report
            );
        }
        *out.by_action.entry(action_name(got.action)).or_default() += 1;
        let overwrites = model.nat_overwrites;
        model.apply(&prediction.effects);
        if model.nat_overwrites > overwrites {
            // The configurations that allow it are refused (ForwardingMode::Nat).
            let why = "the library refuses configurations where two VIP flows share a backend address and port";
            let problem = ("a NAT reply entry replaced another flow's".to_string(), why.to_string());
            out.failures.push(report(&prediction, &g, &got, index, seed, &changes, &[problem]));
        }
        prediction.effects.clear();
        if prediction.unpredictable.is_some() {
            out.unpredictable += 1;
            counts_known = false;
        }
        for c in &prediction.counters {
            *counts.entry(c).or_default() += 1;
            *out.coverage.entry(c).or_default() += 1;
        }
        if let Some(f) = check_frame(&model, &g, &prediction, &got, index, seed, &changes) {
            out.failures.push(f);
        }
    }
    if counts_known && frames % EPOCH != 0 {
        check_counters(&lb, &stats_before, &counts, frames, seed, &changes, &mut out.failures);
    }
    out.elapsed = started.elapsed();
    out.nat_overwrites = model.nat_overwrites;
    out
}

/// Whether the kernel did what the prediction says: the same action, and
/// the same frame (a passed one untouched).
fn agrees(p: &Prediction, input: &[u8], got: &xdpguard::TestRun) -> bool {
    if p.unpredictable.is_some() || p.library.is_some() {
        return false;
    }
    let frame_ok = match p.verdict.frame() {
        Some(w) => same_frame(w, &got.frame, &p.soft_csums, checksums_ok(input)),
        None => p.verdict.action() != XdpAction::Pass || got.frame == input,
    };
    p.verdict.action() == got.action && frame_ok
}

/// One frame's checks: the model's prediction, the model-free invariants,
/// the library's answers. A failure carries a full report.
fn check_frame(
    model: &Model,
    g: &Gen,
    prediction: &Prediction,
    got: &xdpguard::TestRun,
    index: usize,
    seed: u64,
    changes: &[String],
) -> Option<Failure> {
    let mut problems = invariants(model, &g.frame, g.ingress, got.action, &got.frame, prediction);
    if let Some(why) = &prediction.library {
        problems.insert(0, ("vip_for/backend_for answer wrongly".into(), why.clone()));
    } else if prediction.unpredictable.is_none() && !agrees(prediction, &g.frame, got) {
        let want = prediction.verdict.action();
        // The model-free check that explains it best names it.
        let category = match problems.first() {
            Some((c, _)) => c.clone(),
            None if want == got.action => format!("{}: output frame differs from the model's", action_name(got.action)),
            None => format!("expected {}, got {}", action_name(want), action_name(got.action)),
        };
        problems.insert(0, (category, String::new()));
    }
    if problems.is_empty() {
        return None;
    }
    Some(report(prediction, g, got, index, seed, changes, &problems))
}

fn report(
    prediction: &Prediction,
    g: &Gen,
    got: &xdpguard::TestRun,
    index: usize,
    seed: u64,
    changes: &[String],
    problems: &[(String, String)],
) -> Failure {
    let category = problems.first().map_or_else(
        || format!("expected {}, got {}", action_name(prediction.verdict.action()), action_name(got.action)),
        |(c, _)| c.clone(),
    );
    let mut r = String::new();
    let _ = writeln!(r, "--- disagreement: seed {seed:#x}, frame {index}: {category}");
    let _ = writeln!(r, "frame:    {} on ifindex {} ({} bytes)", g.what, g.ingress, g.frame.len());
    let _ = writeln!(r, "model:    {}", prediction.why);
    for (c, d) in problems {
        if !d.is_empty() {
            let _ = writeln!(r, "check:    {c}: {d}");
        }
    }
    let _ = writeln!(r, "input:    {}", hex(&g.frame));
    let shown = |a: XdpAction, f: &[u8]| match a {
        XdpAction::Tx | XdpAction::Redirect => format!("{} {}", action_name(a), hex(f)),
        _ => action_name(a).to_string(),
    };
    let want_frame = prediction.verdict.frame().unwrap_or(&[]);
    let _ = writeln!(r, "expected: {}", shown(prediction.verdict.action(), want_frame));
    let _ = writeln!(r, "got:      {}", shown(got.action, &got.frame));
    if let Some(at) = want_frame.iter().zip(&got.frame).position(|(a, b)| a != b) {
        let _ = writeln!(r, "first difference at byte {at} (lengths {} and {})", want_frame.len(), got.frame.len());
    }
    let _ = write!(r, "configuration changes before this epoch: {changes:?}");
    Failure { index, category, report: r }
}

/// The global counters since the epoch began, against the model's.
fn check_counters(
    lb: &LoadBalancer,
    before: &LbStats,
    want: &BTreeMap<&'static str, u64>,
    index: usize,
    seed: u64,
    changes: &[String],
    failures: &mut Vec<Failure>,
) {
    let got = lb.stats().unwrap().since(before);
    let mut diffs = Vec::new();
    for (name, c) in got.rows() {
        let w = want.get(name).copied().unwrap_or(0);
        if c.packets != w {
            diffs.push(format!("{name}: model {w}, kernel {}", c.packets));
        }
    }
    if !diffs.is_empty() {
        failures.push(Failure {
            index,
            category: "counters disagree with the model".into(),
            report: format!(
                "--- counters: seed {seed:#x}, in the frames before frame {index}: {}\nconfiguration changes before \
                 this epoch: {changes:?}",
                diffs.join(", ")
            ),
        });
    }
}

// ---------------------------------------------------------------------------
// Tests.

/// The CI-sized run (or XDPG_FUZZ_FRAMES frames from XDPG_FUZZ_SEED):
/// zero disagreements with the model. Issue 14's first bug (a too-big FIB
/// answer cached as a next hop) fails it with thousands of forwarded frames
/// with zero MACs.
#[test]
fn differential_fuzz() {
    let frames = env_number("XDPG_FUZZ_FRAMES").map_or(CI_FRAMES, |n| n as usize);
    let seed = env_number("XDPG_FUZZ_SEED").unwrap_or(CI_SEED);
    run_fuzz(seed, frames, None).assert_clean();
}

/// The checks have teeth: faults injected into the kernel's answers are
/// each reported, among them issue 14's first bug's signature (a forwarded
/// frame with zero MACs, sent back out of the receiving interface) and a
/// backend other than the one `backend_for` names.
#[test]
fn injected_faults_are_caught() {
    const FRAMES: usize = 3_000;
    fn zero_macs(r: &mut xdpguard::TestRun) -> bool {
        let hit = r.action == XdpAction::Redirect;
        if hit {
            r.frame[..12].fill(0);
            r.action = XdpAction::Tx;
        }
        hit
    }
    fn other_backend(r: &mut xdpguard::TestRun) -> bool {
        let i = (1..=BACKENDS).find(|&i| r.action == XdpAction::Redirect && r.frame[..6] == backend_mac(i));
        if let Some(i) = i {
            r.frame[..6].copy_from_slice(&backend_mac(i % BACKENDS + 1));
        }
        i.is_some()
    }
    fn last_byte_flipped(r: &mut xdpguard::TestRun) -> bool {
        let hit = matches!(r.action, XdpAction::Redirect | XdpAction::Tx);
        if hit {
            *r.frame.last_mut().unwrap() ^= 0x20;
        }
        hit
    }
    fn passed_changed(r: &mut xdpguard::TestRun) -> bool {
        let hit = r.action == XdpAction::Pass && r.frame.len() > 20;
        if hit {
            r.frame[20] ^= 1;
        }
        hit
    }
    fn dropped_instead(r: &mut xdpguard::TestRun) -> bool {
        let hit = r.action == XdpAction::Redirect;
        if hit {
            r.action = XdpAction::Drop;
        }
        hit
    }
    fn aborted(r: &mut xdpguard::TestRun) -> bool {
        let hit = r.action == XdpAction::Drop;
        if hit {
            r.action = XdpAction::Aborted;
        }
        hit
    }
    // What fails without a fault (issue 14's first bug, until it is fixed)
    // cannot show that a fault is caught.
    let baseline: std::collections::BTreeSet<usize> =
        run_fuzz(CI_SEED, FRAMES, None).failures.iter().map(|f| f.index).collect();
    let cases: [(&str, Tamper); 6] = [
        ("zero MACs, back out of the receiving interface", zero_macs),
        ("another backend's MAC", other_backend),
        ("a byte of a forwarded frame changed", last_byte_flipped),
        ("a byte of a passed frame changed", passed_changed),
        ("dropped instead of forwarded", dropped_instead),
        ("XDP_ABORTED", aborted),
    ];
    for (name, tamper) in cases {
        let o = run_fuzz(CI_SEED, FRAMES, Some(tamper));
        eprintln!("{name}: {}", o.summary());
        let reported: std::collections::BTreeSet<usize> = o.failures.iter().map(|f| f.index).collect();
        let tampered: Vec<usize> = o.tampered.iter().copied().filter(|i| !baseline.contains(i)).collect();
        assert!(tampered.len() >= 20, "{name}: only {} frames tampered with", tampered.len());
        let missed: Vec<usize> = tampered.iter().copied().filter(|i| !reported.contains(i)).collect();
        assert!(
            missed.is_empty(),
            "{name}: {} of {} faults not reported, e.g. frame {:?}",
            missed.len(),
            tampered.len(),
            missed.first()
        );
    }
}

/// Issue 14's second bug: an all-ports VIP's backend depends on the
/// destination port each flow carries, so `vip_for` and `backend_for` must
/// be (and are) asked with it; asked without it they refuse. For one client
/// address and port, the kernel spreads destination ports over several
/// backends, so no answer that ignores the port (the old `which`'s, which
/// hashed port 0) can agree with it.
#[test]
fn all_ports_vips_hash_the_port_each_flow_carries() {
    ensure_bpffs();
    let vn = VerdictNet::new("fzap", BACKENDS);
    let net = Net { eth0: vn.eth0, eth1: vn.eth1, eth0_mac: vn.eth0_mac, eth1_mac: vn.eth1_mac };
    vn.lb.run(move || {
        let lb = load_lb();
        let model = configure(&lb, net);
        let mut rng = StdRng::seed_from_u64(0x14_02);
        let all_ports: Vec<Vip> = model.vips.keys().filter(|v| v.port.is_none()).copied().collect();
        assert!(all_ports.len() >= 4);
        let started = Instant::now();
        let mut failures = Vec::new();
        let mut by_action: BTreeMap<&'static str, usize> = BTreeMap::new();
        let mut spread: BTreeMap<(Vip, SocketAddr), std::collections::BTreeSet<IpAddr>> = BTreeMap::new();
        for index in 0..3000 {
            let vip = all_ports[index % all_ports.len()];
            let client = if vip.addr.is_ipv4() { IpAddr::V4(CLIENT_V4) } else { IpAddr::V6(CLIENT_V6) };
            // A few client ports, many destination ports (some a single-port VIP's).
            let src = SocketAddr::new(client, [40000, 40001, 51515][index % 3]);
            let shadowing: Vec<u16> = model
                .vips
                .keys()
                .filter(|v| v.addr == vip.addr && v.protocol == vip.protocol)
                .filter_map(|v| v.port)
                .collect();
            let dport = if !shadowing.is_empty() && index % 10 == 0 { shadowing[0] } else { nonzero_port(&mut rng) };
            let proto = proto_of(vip.protocol);
            let seg = if proto == 6 {
                tcp(src.ip(), vip.addr, src.port(), dport, 0x02, 0, b"which")
            } else {
                udp(src.ip(), vip.addr, src.port(), dport, false, b"which")
            };
            let pkt = match (src.ip(), vip.addr) {
                (IpAddr::V4(s), IpAddr::V4(d)) => V4Hdr::new(s, d, proto).packet(&seg),
                (IpAddr::V6(s), IpAddr::V6(d)) => v6_packet(s, d, 64, &[], proto, &seg),
                _ => unreachable!(),
            };
            let et = if vip.addr.is_ipv4() { 0x0800 } else { 0x86DD };
            let g = Gen {
                frame: ether(net.eth0_mac, CLIENT_MAC, et, &pkt),
                ingress: net.eth0,
                what: format!("to {vip} port {dport}"),
            };
            let prediction = model.predict(&lb, &g.frame, g.ingress);
            let got = lb.test_run_on(&g.frame, g.ingress).unwrap();
            *by_action.entry(action_name(got.action)).or_default() += 1;
            if let Some(f) = check_frame(&model, &g, &prediction, &got, index, 0x14_02, &[]) {
                failures.push(f);
            }
            let flow = Flow::new(src, SocketAddr::new(vip.addr, dport), vip.protocol);
            let taker = lb.vip_for(&flow).unwrap().unwrap();
            if shadowing.contains(&dport) {
                assert_ne!(taker, vip, "{flow}: the single-port VIP takes it");
                assert!(matches!(lb.backend_for(&vip, &flow), Err(LbError::FlowMismatch { .. })), "{flow}");
                continue;
            }
            assert_eq!(taker, vip);
            if let Some(pick) = prediction.pick {
                if matches!(got.action, XdpAction::Redirect | XdpAction::Tx) {
                    spread.entry((vip, src)).or_default().insert(pick.backend.ip);
                }
            }
            // The old question (port 0 for "any port") is refused, not answered wrongly.
            let port0 = Flow::new(src, SocketAddr::new(vip.addr, 0), vip.protocol);
            let e = lb.backend_for(&vip, &port0).unwrap_err();
            assert!(matches!(e, LbError::DestinationPortRequired { .. }), "{e}");
            assert!(e.to_string().contains("give the port"), "{e}");
        }
        Outcome {
            seed: 0x14_02,
            frames: 3000,
            failures,
            unpredictable: 0,
            tampered: Vec::new(),
            coverage: BTreeMap::new(),
            nat_overwrites: 0,
            by_action,
            elapsed: started.elapsed(),
        }
        .assert_clean();
        for ((vip, src), backends) in &spread {
            let config = model.vips[vip].config;
            if config.hash == HashInput::FiveTuple {
                assert!(backends.len() >= 2, "{src} to {vip}: every port went to {backends:?}");
            } else {
                assert_eq!(backends.len(), 1, "{src} to {vip} hashes the source address only");
            }
        }
    });
}
