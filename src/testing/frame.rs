//! Ethernet frames for tests, built with [`etherparse`].
//!
//! [`FrameBuilder`] writes a frame layer by layer: Ethernet, VLAN tags, one
//! or more IP headers (IPv4 with options and fragmentation, IPv6 with
//! extension headers; several make an IP-in-IP tunnel, outermost first),
//! then TCP, UDP, ICMP/ICMPv6 (echo, errors quoting a packet, any
//! type/code) or any other protocol, a payload and trailing bytes. Lengths,
//! next-header fields and checksums come from etherparse, and every built
//! frame is parsed back (etherparse's parsers, header by header) before it
//! is returned, so a test never feeds a program a frame whose shape it got
//! wrong. Non-IP frames: ARP, LLDP and any EtherType with raw bytes.
//!
//! Deliberately broken frames are made from good ones: a [`Frame`] records
//! where each header starts ([`Span`]), so tests cut it at every header
//! boundary ([`Frame::cut_points`], [`Frame::cut`],
//! [`Frame::cut_consistent`]) or break one field ([`Frame::with_ipv4_ihl`],
//! [`Frame::with_ipv4_total_len`], ...); [`insert_vlan_tags`] tags any frame.
//!
//! ```
//! use std::net::Ipv4Addr;
//! use xdpguard::testing::frame::{Frame, Vlan};
//!
//! // A TCP SYN from 192.0.2.1:40000 to 203.0.113.10:80, in an 802.1Q tag.
//! let syn = Frame::builder()
//!     .vlan(Vlan::Dot1Q(7))
//!     .ipv4(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(203, 0, 113, 10))
//!     .tcp(40000, 80)
//!     .syn()
//!     .payload(b"hello")
//!     .build();
//! assert_eq!(syn.span("tcp").start, 14 + 4 + 20);
//! // The same packet inside an IPv4 tunnel (4in4).
//! let tunnelled = Frame::builder()
//!     .ipv4(Ipv4Addr::new(203, 0, 113, 129), Ipv4Addr::new(198, 51, 100, 11))
//!     .ttl(64)
//!     .ip_payload(syn.ip_packet())
//!     .build();
//! assert_eq!(&tunnelled[34..], syn.ip_packet());
//! ```
//!
//! Builder methods panic on values that cannot be written (a VLAN id over
//! 4095, IPv4 options not a multiple of 4 bytes, a header setter with no
//! such header): they are meant for tests, where a panic is a failed test
//! that names the mistake.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;

pub use super::builder::FrameBuilder;

use etherparse::{IpFragOffset, IpNumber, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader};

/// Source MAC of frames built without [`FrameBuilder::macs`].
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of frames built without [`FrameBuilder::macs`].
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// The broadcast MAC (ARP requests go there).
pub const BROADCAST_MAC: [u8; 6] = [0xFF; 6];
/// Where LLDP frames go (nearest bridge).
pub const LLDP_MAC: [u8; 6] = [0x01, 0x80, 0xC2, 0x00, 0x00, 0x0E];
/// The LLDP EtherType (etherparse has no LLDP support).
pub const ETHERTYPE_LLDP: u16 = 0x88CC;
/// The 802.1Q TPID.
pub const TPID_8021Q: u16 = 0x8100;
/// The 802.1ad (QinQ outer tag) TPID.
pub const TPID_8021AD: u16 = 0x88A8;

/// Destination of the frames [`packet_from`] builds (IPv4).
pub const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Destination of the frames [`packet_from`] builds (IPv6).
pub const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// The payload [`packet_from`] carries after the transport header.
pub const PAYLOAD: &[u8] = b"xdpguard verdict matrix";

/// One VLAN tag: its TPID (the EtherType in front of it) and VLAN id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VlanTag {
    /// [`TPID_8021Q`], [`TPID_8021AD`], or anything else a test wants.
    pub tpid: u16,
    /// The VLAN id (0..=4095).
    pub id: u16,
}

/// VLAN tagging of a frame (the usual shapes; [`FrameBuilder::vlan_tags`]
/// takes any list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vlan {
    /// Untagged.
    None,
    /// One 802.1Q tag (TPID 0x8100).
    Dot1Q(u16),
    /// 802.1ad outer tag (TPID 0x88A8), then an 802.1Q inner tag (QinQ).
    Dot1AdDot1Q(u16, u16),
    /// Two 802.1Q tags (TPID 0x8100 twice, as some switches send).
    Dot1QDot1Q(u16, u16),
    /// Three 802.1Q tags.
    Triple(u16, u16, u16),
}

impl Vlan {
    /// Its tags, outermost first.
    pub fn tags(self) -> Vec<VlanTag> {
        let q = |id| VlanTag { tpid: TPID_8021Q, id };
        match self {
            Vlan::None => vec![],
            Vlan::Dot1Q(a) => vec![q(a)],
            Vlan::Dot1AdDot1Q(a, b) => vec![VlanTag { tpid: TPID_8021AD, id: a }, q(b)],
            Vlan::Dot1QDot1Q(a, b) => vec![q(a), q(b)],
            Vlan::Triple(a, b, c) => vec![q(a), q(b), q(c)],
        }
    }

    /// Number of tags.
    pub fn count(self) -> usize {
        self.tags().len()
    }
}

/// The transport of [`packet_from`] frames, for loops over the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum L4 {
    /// UDP, 40000 → 53.
    Udp,
    /// TCP SYN, 40000 → 80.
    Tcp,
    /// ICMP echo request (ICMPv4 or ICMPv6 by family), id 7, sequence 1.
    Icmp,
}

/// All three transports.
pub const ALL_L4: [L4; 3] = [L4::Udp, L4::Tcp, L4::Icmp];

/// An IPv6 extension header.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ext {
    /// Hop-by-hop options, 8 bytes (one PadN option).
    HopByHop,
    /// Routing header type 2, 24 bytes (a multi-unit length).
    Routing,
    /// Destination options, 16 bytes (one PadN option).
    DestOpts,
    /// Fragment header: `offset` in 8-byte units (0: first fragment), the
    /// more-fragments flag and the identification.
    Fragment {
        /// Offset in 8-byte units.
        offset: u16,
        /// More fragments follow.
        more: bool,
        /// Identification.
        id: u32,
    },
    /// Any header of the options/routing format (hop-by-hop, routing,
    /// destination options, ...): its protocol number and its bytes after
    /// the next-header and length bytes (6 + 8n bytes).
    Raw {
        /// Its protocol number (0, 43, 60, ...).
        number: u8,
        /// Its bytes from the third on.
        body: Vec<u8>,
    },
}

impl Ext {
    /// A fragment header with identification 0x12345678.
    pub fn fragment(offset: u16, more: bool) -> Ext {
        Ext::Fragment { offset, more, id: 0x1234_5678 }
    }

    /// Its IP protocol number.
    pub fn number(&self) -> IpNumber {
        match self {
            Ext::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            Ext::Routing => IpNumber::IPV6_ROUTE_HEADER,
            Ext::DestOpts => IpNumber::IPV6_DESTINATION_OPTIONS,
            Ext::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
            Ext::Raw { number, .. } => IpNumber(*number),
        }
    }

    /// Its name in [`Span`]s.
    pub fn name(&self) -> &'static str {
        match self.number() {
            IpNumber::IPV6_HEADER_HOP_BY_HOP => "hop-by-hop",
            IpNumber::IPV6_ROUTE_HEADER => "routing",
            IpNumber::IPV6_DESTINATION_OPTIONS => "destination-options",
            IpNumber::IPV6_FRAGMENTATION_HEADER => "fragment",
            _ => "extension",
        }
    }

    pub(super) fn bytes(&self, next: IpNumber) -> Vec<u8> {
        match self {
            // PadN (type 1) of 4 bytes fills the 8-byte header.
            Ext::HopByHop => raw_ext(next, &[1, 4, 0, 0, 0, 0]),
            Ext::DestOpts => raw_ext(next, &[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Ext::Routing => {
                // Type 2 (RFC 6275): type, segments left, 4 reserved, home address.
                let mut p = vec![2, 1, 0, 0, 0, 0];
                p.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 9).octets());
                raw_ext(next, &p)
            }
            Ext::Fragment { offset, more, id } => {
                let off = IpFragOffset::try_new(*offset).expect("fragment offset fits 13 bits");
                Ipv6FragmentHeader::new(next, off, *more, *id).to_bytes().to_vec()
            }
            Ext::Raw { body, .. } => raw_ext(next, body),
        }
    }

    /// Whether this header makes the packet a later fragment (no L4 header).
    pub(super) fn later_fragment(&self) -> bool {
        matches!(self, Ext::Fragment { offset, .. } if *offset != 0)
    }
}

fn raw_ext(next: IpNumber, payload: &[u8]) -> Vec<u8> {
    Ipv6RawExtHeader::new_raw(next, payload)
        .expect("extension header body: 6 + 8n bytes, at most 2046")
        .to_bytes()
        .to_vec()
}

/// IPv4 fragmentation (for [`packet_from`]-style matrices;
/// [`FrameBuilder::fragment`] takes any offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frag {
    /// Not fragmented.
    None,
    /// First fragment: offset 0, more-fragments set, L4 header present.
    First,
    /// A later fragment: offset (8-byte units) > 0, no L4 header.
    Later {
        /// Offset in 8-byte units.
        offset: u16,
        /// More fragments follow.
        more: bool,
    },
}

/// ICMP messages, by meaning; the family comes from the IP header around
/// them (IPv4: ICMP, IPv6: ICMPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Icmp {
    /// Echo request (IPv4 type 8, IPv6 type 128).
    EchoRequest {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// Echo reply (IPv4 type 0, IPv6 type 129).
    EchoReply {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// IPv4 "fragmentation needed" (3/4) with the next hop's MTU, IPv6
    /// "packet too big" (2/0) with the MTU.
    TooBig {
        /// The MTU reported.
        mtu: u16,
    },
    /// Destination unreachable (IPv4 type 3, IPv6 type 1) with this code
    /// (IPv4 3: port unreachable; IPv6 4: port unreachable).
    Unreachable {
        /// The code.
        code: u8,
    },
    /// Time exceeded in transit (IPv4 11/0, IPv6 3/0).
    TimeExceeded,
    /// Any type and code with these bytes 5 to 8.
    Raw {
        /// The type.
        kind: u8,
        /// The code.
        code: u8,
        /// Bytes 5 to 8 (the "rest of header").
        rest: [u8; 4],
    },
}

impl Icmp {
    pub(super) fn raw(self, v6: bool) -> (u8, u8, [u8; 4]) {
        let echo = |id: u16, seq: u16| {
            let (a, b) = (id.to_be_bytes(), seq.to_be_bytes());
            [a[0], a[1], b[0], b[1]]
        };
        match (self, v6) {
            (Icmp::EchoRequest { id, seq }, false) => (8, 0, echo(id, seq)),
            (Icmp::EchoRequest { id, seq }, true) => (128, 0, echo(id, seq)),
            (Icmp::EchoReply { id, seq }, false) => (0, 0, echo(id, seq)),
            (Icmp::EchoReply { id, seq }, true) => (129, 0, echo(id, seq)),
            (Icmp::TooBig { mtu }, false) => {
                let m = mtu.to_be_bytes();
                (3, 4, [0, 0, m[0], m[1]])
            }
            (Icmp::TooBig { mtu }, true) => (2, 0, u32::from(mtu).to_be_bytes()),
            (Icmp::Unreachable { code }, false) => (3, code, [0; 4]),
            (Icmp::Unreachable { code }, true) => (1, code, [0; 4]),
            (Icmp::TimeExceeded, false) => (11, 0, [0; 4]),
            (Icmp::TimeExceeded, true) => (3, 0, [0; 4]),
            (Icmp::Raw { kind, code, rest }, _) => (kind, code, rest),
        }
    }
}

/// One header's place in a frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    /// "ethernet", "vlan0", "ipv4", "ipv4-options", "ipv6",
    /// "ext0:fragment", "udp", "tcp", "icmpv4", "icmpv6", "payload",
    /// "trailer", "arp", "lldp", "ether-payload"; headers of an inner
    /// (tunnelled) IP packet carry an "inner-" prefix ("inner2-" for the
    /// next level, ...).
    pub name: String,
    /// Offset of its first byte.
    pub start: usize,
    /// Its length.
    pub len: usize,
}

impl Span {
    /// Offset just past it.
    pub fn end(&self) -> usize {
        self.start + self.len
    }

    /// Whether this is an L2 or outer L3 header (Ethernet, VLAN, the outer
    /// IPv4 header and its options, the outer IPv6 header and its extension
    /// headers): what a parser must read completely before it can judge a
    /// packet by its addresses.
    pub fn is_l2_or_l3(&self) -> bool {
        let n = self.name.as_str();
        n == "ethernet" || n.starts_with("vlan") || n.starts_with("ipv4") || n == "ipv6" || n.starts_with("ext")
    }
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A built frame, and where each of its headers is. Dereferences to its
/// bytes, so it goes wherever a `&[u8]` frame does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    pub(super) bytes: Vec<u8>,
    pub(super) spans: Vec<Span>,
    pub(super) l3: usize,
    pub(super) family: Option<Family>,
    pub(super) trailer: usize,
}

impl Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl From<Frame> for Vec<u8> {
    fn from(f: Frame) -> Vec<u8> {
        f.bytes
    }
}

impl Frame {
    /// A builder for a frame from [`SRC_MAC`] to [`DST_MAC`].
    pub fn builder() -> FrameBuilder {
        FrameBuilder::new()
    }

    /// The frame, from the destination MAC on (no FCS).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's bytes, owned.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// Its headers, in order.
    pub fn spans(&self) -> &[Span] {
        &self.spans
    }

    /// Offset of the (outer) IP header, or of a non-IP payload.
    pub fn l3(&self) -> usize {
        self.l3
    }

    /// Address family of the outer IP header, if any.
    pub fn family(&self) -> Option<Family> {
        self.family
    }

    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame is empty (never, for a built one).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The IP packet (or non-IP payload): from [`Frame::l3`] to the end,
    /// trailing bytes ([`FrameBuilder::trailer`]) excluded. What an ICMP
    /// error quotes, or an IP-in-IP tunnel carries.
    pub fn ip_packet(&self) -> &[u8] {
        &self.bytes[self.l3..self.bytes.len() - self.trailer]
    }

    /// The span called `name`.
    ///
    /// # Panics
    /// When there is none (the message lists the frame's spans).
    pub fn span(&self, name: &str) -> &Span {
        self.spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name} in {:?}", self.spans))
    }

    /// The span called `name`, if there is one.
    pub fn find_span(&self, name: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.name == name)
    }

    /// Where the L2 and outer L3 headers end (the first L4 or payload byte).
    pub fn l3_end(&self) -> usize {
        self.spans.iter().filter(|s| s.is_l2_or_l3()).map(Span::end).max().unwrap_or(0)
    }

    /// The first `len` bytes, IP length fields left as they were (so they
    /// claim more than the frame holds).
    pub fn cut(&self, len: usize) -> Vec<u8> {
        self.bytes[..len.min(self.bytes.len())].to_vec()
    }

    /// The first `len` bytes, with the outer IPv4 total length or IPv6
    /// payload length rewritten to match the cut, where the cut leaves that
    /// field in place: a consistent IP packet whose headers are cut short.
    pub fn cut_consistent(&self, len: usize) -> Vec<u8> {
        let mut b = self.cut(len);
        let l3 = self.l3;
        match self.family {
            Some(Family::V4) if b.len() >= l3 + 4 => {
                let total = (b.len() - l3) as u16;
                b[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
            }
            Some(Family::V6) if b.len() >= l3 + 6 => {
                let payload = b.len().saturating_sub(l3 + Ipv6Header::LEN) as u16;
                b[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
            }
            _ => {}
        }
        b
    }

    /// Every interesting cut length below the full length, each with the
    /// header it falls in (or starts): each header's start and, for headers
    /// longer than one byte, one byte in and its middle.
    pub fn cut_points(&self) -> Vec<(usize, String)> {
        let mut points = Vec::new();
        for s in &self.spans {
            for (at, what) in [(s.start, "start of"), (s.start + 1, "1 byte into"), (s.start + s.len / 2, "middle of")]
            {
                if at < s.end() && at < self.len() && !points.iter().any(|&(p, _)| p == at) {
                    points.push((at, format!("{what} {}", s.name)));
                }
            }
        }
        points.sort();
        points
    }

    /// A copy with the outer IPv4 header's IHL field set (the header itself
    /// is not resized).
    ///
    /// # Panics
    /// When the outer header is not IPv4.
    pub fn with_ipv4_ihl(&self, ihl: u8) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V4), "with_ipv4_ihl on a frame without IPv4");
        let mut b = self.bytes.clone();
        b[self.l3] = (b[self.l3] & 0xF0) | (ihl & 0x0F);
        b
    }

    /// A copy with the outer IP header's version nibble set.
    pub fn with_ip_version(&self, version: u8) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[self.l3] = (b[self.l3] & 0x0F) | (version << 4);
        b
    }

    /// A copy with the outer IPv4 total length field set (the header
    /// checksum is left as it was).
    ///
    /// # Panics
    /// When the outer header is not IPv4.
    pub fn with_ipv4_total_len(&self, total: u16) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V4), "with_ipv4_total_len on a frame without IPv4");
        let mut b = self.bytes.clone();
        b[self.l3 + 2..self.l3 + 4].copy_from_slice(&total.to_be_bytes());
        b
    }

    /// A copy with the outer IPv6 payload length field set.
    ///
    /// # Panics
    /// When the outer header is not IPv6.
    pub fn with_ipv6_payload_len(&self, payload: u16) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V6), "with_ipv6_payload_len on a frame without IPv6");
        let mut b = self.bytes.clone();
        b[self.l3 + 4..self.l3 + 6].copy_from_slice(&payload.to_be_bytes());
        b
    }

    /// A copy with `n` zero bytes appended (Ethernet padding after the IP packet).
    pub fn padded(&self, n: usize) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b.resize(b.len() + n, 0);
        b
    }

    /// A copy with both MAC addresses replaced (what a program forwarding
    /// the frame at L2 does).
    pub fn with_macs(&self, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[0..6].copy_from_slice(&dst);
        b[6..12].copy_from_slice(&src);
        b
    }
}

/// Any frame (whatever its content, at least 12 bytes) with VLAN tags
/// inserted after the MAC addresses, outermost first, in front of its
/// EtherType.
///
/// # Panics
/// When the frame is shorter than the two MAC addresses.
pub fn insert_vlan_tags(frame: &[u8], tags: &[VlanTag]) -> Vec<u8> {
    assert!(frame.len() >= 12, "a frame of {} bytes has no room for tags", frame.len());
    let mut f = frame[..12].to_vec();
    for t in tags {
        f.extend_from_slice(&t.tpid.to_be_bytes());
        f.extend_from_slice(&t.id.to_be_bytes());
    }
    f.extend_from_slice(&frame[12..]);
    f
}

/// A packet from `src` (either family) to [`DST_V4`] / [`DST_V6`] with this
/// transport and tagging, carrying [`PAYLOAD`].
pub fn packet_from(src: IpAddr, l4: L4, vlan: Vlan) -> Frame {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(DST_V4),
        IpAddr::V6(_) => IpAddr::V6(DST_V6),
    };
    Frame::builder().vlan(vlan).ip(src, dst).l4(l4).payload(PAYLOAD).build()
}

/// A UDP packet from `src` (either family), untagged (see [`packet_from`]).
pub fn udp_from(src: IpAddr) -> Frame {
    packet_from(src, L4::Udp, Vlan::None)
}
