//! Ethernet frames for the filter tests, built with etherparse.
//!
//! Well-formed frames are built from etherparse headers (lengths, next-header
//! fields and checksums computed by etherparse) and parsed back by etherparse
//! before they are returned, so a test never feeds the filter a frame whose
//! shape it got wrong. Deliberately broken frames are made from good ones by
//! editing bytes ([`Frame::with_ipv4_ihl`], [`Frame::cut`], ...), and every
//! built [`Frame`] records where each header starts, so truncation tests can
//! cut at every header boundary.
//!
//! Use it from tests with `mod common { pub mod packets; }`.

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type,
    Icmpv6Header, Icmpv6Type, IpFragOffset, IpNumber, Ipv4Header, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader,
    NetSlice, PacketBuilder, SingleVlanHeader, SlicedPacket, TcpHeader, TransportSlice, UdpHeader, VlanId, VlanPcp,
};

/// Source MAC of every frame.
pub const SRC_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Destination MAC of every unicast frame.
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// Where LLDP frames go (nearest bridge).
pub const LLDP_MAC: [u8; 6] = [0x01, 0x80, 0xC2, 0x00, 0x00, 0x0E];
/// The LLDP EtherType (etherparse has no LLDP support).
pub const ETHERTYPE_LLDP: u16 = 0x88CC;

/// Destination address of IPv4 frames (what it is does not matter to the filter).
pub const DST_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Destination address of IPv6 frames.
pub const DST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

/// VLAN tagging of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vlan {
    /// Untagged.
    None,
    /// One 802.1Q tag (TPID 0x8100).
    Dot1Q(u16),
    /// 802.1ad outer tag (TPID 0x88A8), then an 802.1Q inner tag (QinQ).
    Dot1AdDot1Q(u16, u16),
    /// Two 802.1Q tags (TPID 0x8100 twice, as some switches send).
    Dot1QDot1Q(u16, u16),
    /// Three 802.1Q tags: more than the filter walks.
    Triple(u16, u16, u16),
}

impl Vlan {
    /// (TPID, VLAN id) of each tag, outermost first.
    fn tags(self) -> Vec<(EtherType, u16)> {
        let q = EtherType::VLAN_TAGGED_FRAME;
        match self {
            Vlan::None => vec![],
            Vlan::Dot1Q(a) => vec![(q, a)],
            Vlan::Dot1AdDot1Q(a, b) => vec![(EtherType::PROVIDER_BRIDGING, a), (q, b)],
            Vlan::Dot1QDot1Q(a, b) => vec![(q, a), (q, b)],
            Vlan::Triple(a, b, c) => vec![(q, a), (q, b), (q, c)],
        }
    }

    /// Number of tags.
    pub fn count(self) -> usize {
        self.tags().len()
    }
}

/// The transport header after the IP header(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    /// UDP, 40000 → 53.
    Udp,
    /// TCP SYN, 40000 → 80.
    Tcp,
    /// ICMP echo request (ICMPv4 or ICMPv6 by family).
    Icmp,
}

/// All three transports, for loops over the matrix.
pub const ALL_L4: [L4; 3] = [L4::Udp, L4::Tcp, L4::Icmp];

/// An IPv6 extension header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options, 8 bytes (one PadN option).
    HopByHop,
    /// Routing header type 2, 24 bytes (a multi-unit length).
    Routing,
    /// Destination options, 16 bytes (one PadN option).
    DestOpts,
    /// Fragment header; `offset` in 8-byte units (0: first fragment).
    Fragment { offset: u16, more: bool },
}

impl Ext {
    /// Its IP protocol number.
    pub fn number(self) -> IpNumber {
        match self {
            Ext::HopByHop => IpNumber::IPV6_HEADER_HOP_BY_HOP,
            Ext::Routing => IpNumber::IPV6_ROUTE_HEADER,
            Ext::DestOpts => IpNumber::IPV6_DESTINATION_OPTIONS,
            Ext::Fragment { .. } => IpNumber::IPV6_FRAGMENTATION_HEADER,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Ext::HopByHop => "hop-by-hop",
            Ext::Routing => "routing",
            Ext::DestOpts => "destination-options",
            Ext::Fragment { .. } => "fragment",
        }
    }

    fn bytes(self, next: IpNumber) -> Vec<u8> {
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
            Ext::Fragment { offset, more } => {
                let off = IpFragOffset::try_new(offset).expect("fragment offset fits 13 bits");
                Ipv6FragmentHeader::new(next, off, more, 0x1234_5678).to_bytes().to_vec()
            }
        }
    }

    /// Whether this header makes the packet a later fragment (no L4 header).
    fn later_fragment(self) -> bool {
        matches!(self, Ext::Fragment { offset, .. } if offset != 0)
    }
}

fn raw_ext(next: IpNumber, payload: &[u8]) -> Vec<u8> {
    Ipv6RawExtHeader::new_raw(next, payload).expect("valid extension payload length").to_bytes().to_vec()
}

/// IPv4 fragmentation of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented.
    None,
    /// First fragment: offset 0, more-fragments set, L4 header present.
    First,
    /// A later fragment: offset (8-byte units) > 0, no L4 header.
    Later { offset: u16, more: bool },
}

/// One header's place in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// "ethernet", "vlan0", "ipv4", "ipv4-options", "ipv6", "ext0:fragment", "udp", "payload", ...
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
}

/// A built frame, and where each of its headers is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame, from the destination MAC on (no FCS).
    pub bytes: Vec<u8>,
    /// Headers in order; L2/L3 headers are followed by L4 and "payload".
    pub spans: Vec<Span>,
    /// Offset of the IP header (or of the non-IP payload).
    pub l3: usize,
    /// Address family of the IP header, if any.
    pub family: Option<Family>,
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Frame {
    /// The frame's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The span called `name`.
    pub fn span(&self, name: &str) -> &Span {
        self.spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name} in {:?}", self.spans))
    }

    /// Where the L2 and L3 headers end (the first L4 or payload byte).
    pub fn l3_end(&self) -> usize {
        self.spans.iter().filter(|s| s.is_l2_or_l3()).map(Span::end).max().unwrap_or(0)
    }

    /// The first `len` bytes, IP length fields left as they were (so they
    /// claim more than the frame holds).
    pub fn cut(&self, len: usize) -> Vec<u8> {
        self.bytes[..len.min(self.bytes.len())].to_vec()
    }

    /// The first `len` bytes, with the IPv4 total length or IPv6 payload
    /// length rewritten to match the cut, where the cut leaves that field in
    /// place: a consistent IP packet whose headers are cut short.
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

    /// A copy with the IPv4 IHL field set (the header itself is not resized).
    pub fn with_ipv4_ihl(&self, ihl: u8) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V4));
        let mut b = self.bytes.clone();
        b[self.l3] = (b[self.l3] & 0xF0) | (ihl & 0x0F);
        b
    }

    /// A copy with the IP version nibble set.
    pub fn with_ip_version(&self, version: u8) -> Vec<u8> {
        let mut b = self.bytes.clone();
        b[self.l3] = (b[self.l3] & 0x0F) | (version << 4);
        b
    }

    /// A copy with the IPv4 total length field set.
    pub fn with_ipv4_total_len(&self, total: u16) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V4));
        let mut b = self.bytes.clone();
        b[self.l3 + 2..self.l3 + 4].copy_from_slice(&total.to_be_bytes());
        b
    }

    /// A copy with the IPv6 payload length field set.
    pub fn with_ipv6_payload_len(&self, payload: u16) -> Vec<u8> {
        assert_eq!(self.family, Some(Family::V6));
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
}

impl Span {
    /// Whether the filter must parse this header completely (Ethernet,
    /// VLAN, IPv4 with options, IPv6 and its extension headers).
    pub fn is_l2_or_l3(&self) -> bool {
        let n = self.name.as_str();
        n == "ethernet" || n.starts_with("vlan") || n.starts_with("ipv4") || n == "ipv6" || n.starts_with("ext")
    }
}

/// Ethernet header plus VLAN tags for a payload of `ether_type`.
fn l2(vlan: Vlan, dst: [u8; 6], ether_type: EtherType) -> (Vec<u8>, Vec<Span>) {
    let tags = vlan.tags();
    let first_type = tags.first().map_or(ether_type, |&(tpid, _)| tpid);
    let eth = Ethernet2Header { source: SRC_MAC, destination: dst, ether_type: first_type };
    let mut bytes = eth.to_bytes().to_vec();
    let mut spans = vec![Span { name: "ethernet".into(), start: 0, len: Ethernet2Header::LEN }];
    for (i, &(_, vid)) in tags.iter().enumerate() {
        let inner_type = tags.get(i + 1).map_or(ether_type, |&(tpid, _)| tpid);
        let tag = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(vid).expect("VLAN id below 4096"),
            ether_type: inner_type,
        };
        spans.push(Span { name: format!("vlan{i}"), start: bytes.len(), len: SingleVlanHeader::LEN });
        bytes.extend_from_slice(&tag.to_bytes());
    }
    (bytes, spans)
}

/// The payload carried after the L4 header.
const PAYLOAD: &[u8] = b"xdpguard verdict matrix";

/// An IPv4 frame to build.
#[derive(Debug, Clone)]
pub struct V4 {
    /// Source address (what the filter judges).
    pub src: Ipv4Addr,
    /// Transport.
    pub l4: L4,
    /// VLAN tags.
    pub vlan: Vlan,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub options: Vec<u8>,
    /// Fragmentation.
    pub frag: Frag,
}

impl V4 {
    /// A UDP packet from `src`, untagged, no options, not fragmented.
    pub fn new(src: Ipv4Addr) -> Self {
        V4 { src, l4: L4::Udp, vlan: Vlan::None, options: Vec::new(), frag: Frag::None }
    }
    /// With this transport.
    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }
    /// With these VLAN tags.
    pub fn vlan(mut self, vlan: Vlan) -> Self {
        self.vlan = vlan;
        self
    }
    /// With these options.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }
    /// With this fragmentation.
    pub fn frag(mut self, frag: Frag) -> Self {
        self.frag = frag;
        self
    }

    /// Builds the frame and checks it with etherparse's parser.
    pub fn build(&self) -> Frame {
        let (mut bytes, mut spans) = l2(self.vlan, DST_MAC, EtherType::IPV4);
        let l3 = bytes.len();
        let later = matches!(self.frag, Frag::Later { .. });
        let proto = match self.l4 {
            L4::Udp => IpNumber::UDP,
            L4::Tcp => IpNumber::TCP,
            L4::Icmp => IpNumber::ICMP,
        };
        let mut ip = Ipv4Header::new(0, 64, proto, self.src.octets(), DST_V4.octets()).expect("valid header");
        ip.identification = 0x4242;
        ip.options = self.options.as_slice().try_into().expect("options: a multiple of 4 bytes, at most 40");
        match self.frag {
            Frag::None => {}
            Frag::First => ip.more_fragments = true,
            Frag::Later { offset, more } => {
                ip.fragment_offset = IpFragOffset::try_new(offset).expect("offset fits 13 bits");
                ip.more_fragments = more;
            }
        }
        // The transport header (absent in a later fragment), then the payload.
        let (l4_name, l4_bytes) = if later {
            (None, Vec::new())
        } else {
            ip.set_payload_len(l4_len(self.l4) + PAYLOAD.len()).expect("fits");
            let b = match self.l4 {
                L4::Udp => UdpHeader::with_ipv4_checksum(40000, 53, &ip, PAYLOAD).expect("fits").to_bytes().to_vec(),
                L4::Tcp => {
                    let mut t = TcpHeader::new(40000, 80, 1, 64240);
                    t.syn = true;
                    t.checksum = t.calc_checksum_ipv4(&ip, PAYLOAD).expect("fits");
                    t.to_bytes().to_vec()
                }
                L4::Icmp => {
                    Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }), PAYLOAD)
                        .to_bytes()
                        .to_vec()
                }
            };
            (Some(l4_name(self.l4, Family::V4)), b)
        };
        ip.set_payload_len(l4_bytes.len() + PAYLOAD.len()).expect("fits");
        let mut ip_bytes = Vec::new();
        ip.write(&mut ip_bytes).expect("writing to a Vec");
        spans.push(Span { name: "ipv4".into(), start: l3, len: Ipv4Header::MIN_LEN });
        if !self.options.is_empty() {
            spans.push(Span { name: "ipv4-options".into(), start: l3 + Ipv4Header::MIN_LEN, len: self.options.len() });
        }
        bytes.extend_from_slice(&ip_bytes);
        if let Some(name) = l4_name {
            spans.push(Span { name: name.into(), start: bytes.len(), len: l4_bytes.len() });
            bytes.extend_from_slice(&l4_bytes);
        }
        spans.push(Span { name: "payload".into(), start: bytes.len(), len: PAYLOAD.len() });
        bytes.extend_from_slice(PAYLOAD);
        let frame = Frame { bytes, spans, l3, family: Some(Family::V4) };
        verify_ip(&frame, IpAddr::V4(self.src), self.vlan, if later { None } else { Some(self.l4) });
        frame
    }
}

/// An IPv6 frame to build.
#[derive(Debug, Clone)]
pub struct V6 {
    /// Source address.
    pub src: Ipv6Addr,
    /// Transport.
    pub l4: L4,
    /// VLAN tags.
    pub vlan: Vlan,
    /// Extension headers, in order, between the IPv6 header and the transport.
    pub exts: Vec<Ext>,
}

impl V6 {
    /// A UDP packet from `src`, untagged, no extension headers.
    pub fn new(src: Ipv6Addr) -> Self {
        V6 { src, l4: L4::Udp, vlan: Vlan::None, exts: Vec::new() }
    }
    /// With this transport.
    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }
    /// With these VLAN tags.
    pub fn vlan(mut self, vlan: Vlan) -> Self {
        self.vlan = vlan;
        self
    }
    /// With these extension headers.
    pub fn exts(mut self, exts: &[Ext]) -> Self {
        self.exts = exts.to_vec();
        self
    }

    /// Builds the frame and checks it with etherparse's parser.
    pub fn build(&self) -> Frame {
        let (mut bytes, mut spans) = l2(self.vlan, DST_MAC, EtherType::IPV6);
        let l3 = bytes.len();
        let later = self.exts.iter().any(|e| e.later_fragment());
        let proto = match self.l4 {
            L4::Udp => IpNumber::UDP,
            L4::Tcp => IpNumber::TCP,
            L4::Icmp => IpNumber::IPV6_ICMP,
        };
        let mut ip =
            Ipv6Header { hop_limit: 64, source: self.src.octets(), destination: DST_V6.octets(), ..Default::default() };
        // A later fragment carries a slice of the payload only.
        let l4_bytes = if later {
            Vec::new()
        } else {
            match self.l4 {
                L4::Udp => UdpHeader::with_ipv6_checksum(40000, 53, &ip, PAYLOAD).expect("fits").to_bytes().to_vec(),
                L4::Tcp => {
                    let mut t = TcpHeader::new(40000, 80, 1, 64240);
                    t.syn = true;
                    t.checksum = t.calc_checksum_ipv6(&ip, PAYLOAD).expect("fits");
                    t.to_bytes().to_vec()
                }
                L4::Icmp => Icmpv6Header::with_checksum(
                    Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
                    ip.source,
                    ip.destination,
                    PAYLOAD,
                )
                .expect("fits")
                .to_bytes()
                .to_vec(),
            }
        };
        // Extension headers, each naming the next; the last names the transport.
        let mut ext_bytes: Vec<Vec<u8>> = Vec::new();
        for (i, e) in self.exts.iter().enumerate() {
            let next = self.exts.get(i + 1).map_or(proto, |n| n.number());
            ext_bytes.push(e.bytes(next));
        }
        ip.next_header = self.exts.first().map_or(proto, |e| e.number());
        let ext_len: usize = ext_bytes.iter().map(Vec::len).sum();
        ip.set_payload_length(ext_len + l4_bytes.len() + PAYLOAD.len()).expect("fits");
        spans.push(Span { name: "ipv6".into(), start: l3, len: Ipv6Header::LEN });
        bytes.extend_from_slice(&ip.to_bytes());
        for (i, (e, b)) in self.exts.iter().zip(&ext_bytes).enumerate() {
            spans.push(Span { name: format!("ext{i}:{}", e.name()), start: bytes.len(), len: b.len() });
            bytes.extend_from_slice(b);
        }
        if !later {
            spans.push(Span { name: l4_name(self.l4, Family::V6).into(), start: bytes.len(), len: l4_bytes.len() });
            bytes.extend_from_slice(&l4_bytes);
        }
        spans.push(Span { name: "payload".into(), start: bytes.len(), len: PAYLOAD.len() });
        bytes.extend_from_slice(PAYLOAD);
        let frame = Frame { bytes, spans, l3, family: Some(Family::V6) };
        verify_ipv6_chain(&frame, self);
        if etherparse_models(&self.exts) {
            verify_ip(&frame, IpAddr::V6(self.src), self.vlan, if later { None } else { Some(self.l4) });
        }
        frame
    }
}

fn l4_len(l4: L4) -> usize {
    match l4 {
        L4::Udp => UdpHeader::LEN,
        L4::Tcp => TcpHeader::MIN_LEN,
        L4::Icmp => 8,
    }
}

fn l4_name(l4: L4, family: Family) -> &'static str {
    match (l4, family) {
        (L4::Udp, _) => "udp",
        (L4::Tcp, _) => "tcp",
        (L4::Icmp, Family::V4) => "icmpv4",
        (L4::Icmp, Family::V6) => "icmpv6",
    }
}

/// A UDP packet from `src` (either family), untagged.
pub fn udp_from(src: IpAddr) -> Frame {
    from(src, L4::Udp, Vlan::None)
}

/// A packet from `src` with this transport and tagging.
pub fn from(src: IpAddr, l4: L4, vlan: Vlan) -> Frame {
    match src {
        IpAddr::V4(a) => V4::new(a).l4(l4).vlan(vlan).build(),
        IpAddr::V6(a) => V6::new(a).l4(l4).vlan(vlan).build(),
    }
}

/// An ARP request, optionally VLAN-tagged.
pub fn arp(vlan: Vlan) -> Frame {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &SRC_MAC,
        &Ipv4Addr::new(192, 0, 2, 1).octets(),
        &[0; 6],
        &DST_V4.octets(),
    )
    .expect("valid ARP lengths");
    let (bytes, spans, l3) = if vlan == Vlan::None {
        let builder = PacketBuilder::ethernet2(SRC_MAC, [0xFF; 6]).arp(arp);
        let mut bytes = Vec::with_capacity(builder.size());
        builder.write(&mut bytes).expect("writing to a Vec");
        (bytes, vec![Span { name: "ethernet".into(), start: 0, len: Ethernet2Header::LEN }], Ethernet2Header::LEN)
    } else {
        let (mut bytes, spans) = l2(vlan, [0xFF; 6], EtherType::ARP);
        let l3 = bytes.len();
        bytes.extend_from_slice(&arp.to_bytes());
        (bytes, spans, l3)
    };
    let mut spans = spans;
    spans.push(Span { name: "arp".into(), start: l3, len: bytes.len() - l3 });
    {
        let parsed = SlicedPacket::from_ethernet(&bytes).expect("etherparse parses the ARP frame");
        assert!(matches!(parsed.net, Some(NetSlice::Arp(_))), "etherparse sees ARP: {parsed:?}");
    }
    Frame { bytes, spans, l3, family: None }
}

/// An LLDP frame (chassis id, port id, TTL, end). etherparse builds the
/// Ethernet header; it has no LLDP support, so the TLVs are written here.
pub fn lldp() -> Frame {
    let (mut bytes, spans) = l2(Vlan::None, LLDP_MAC, EtherType(ETHERTYPE_LLDP));
    let l3 = bytes.len();
    let tlv = |bytes: &mut Vec<u8>, ty: u16, value: &[u8]| {
        let header = (ty << 9) | value.len() as u16;
        bytes.extend_from_slice(&header.to_be_bytes());
        bytes.extend_from_slice(value);
    };
    let mut chassis = vec![4]; // subtype 4: MAC address
    chassis.extend_from_slice(&SRC_MAC);
    tlv(&mut bytes, 1, &chassis);
    tlv(&mut bytes, 2, b"\x05eth0"); // subtype 5: interface name
    tlv(&mut bytes, 3, &120u16.to_be_bytes());
    tlv(&mut bytes, 0, &[]);
    let mut spans = spans;
    spans.push(Span { name: "lldp".into(), start: l3, len: bytes.len() - l3 });
    let (eth, _) = Ethernet2Header::from_slice(&bytes).expect("etherparse parses the Ethernet header");
    assert_eq!(eth.ether_type, EtherType(ETHERTYPE_LLDP));
    Frame { bytes, spans, l3, family: None }
}

/// A frame of an arbitrary EtherType (or 802.3 length) with a payload.
pub fn ether_raw(ether_type: u16, payload_len: usize) -> Frame {
    let (mut bytes, spans) = l2(Vlan::None, DST_MAC, EtherType(ether_type));
    let l3 = bytes.len();
    bytes.resize(l3 + payload_len, 0xAB);
    Frame { bytes, spans, l3, family: None }
}

/// Parses a built frame back with etherparse and checks the fields the
/// filter relies on.
fn verify_ip(frame: &Frame, src: IpAddr, vlan: Vlan, l4: Option<L4>) {
    if vlan.count() > 2 {
        // etherparse stops at its own tag limit; check the tags by hand.
        let mut off = Ethernet2Header::LEN;
        for (tpid, vid) in vlan.tags() {
            let tag_tpid = u16::from_be_bytes([frame.bytes[off - 2], frame.bytes[off - 1]]);
            assert_eq!(EtherType(tag_tpid), tpid, "TPID before tag at {off}");
            let (tag, _) = SingleVlanHeader::from_slice(&frame.bytes[off..]).expect("VLAN tag");
            assert_eq!(tag.vlan_id.value(), vid);
            off += SingleVlanHeader::LEN;
        }
        assert_eq!(off, frame.l3);
        return;
    }
    let p = SlicedPacket::from_ethernet(&frame.bytes)
        .unwrap_or_else(|e| panic!("etherparse rejects the frame we built: {e:?}\n{:02x?}", frame.bytes));
    let want_ids: Vec<u16> = vlan.tags().iter().map(|&(_, id)| id).collect();
    let got_ids: Vec<u16> = p.vlan_ids().iter().map(|v| v.value()).collect();
    assert_eq!(got_ids, want_ids, "VLAN ids");
    let got_src = match &p.net {
        Some(NetSlice::Ipv4(s)) => IpAddr::V4(s.header().source_addr()),
        Some(NetSlice::Ipv6(s)) => IpAddr::V6(s.header().source_addr()),
        other => panic!("etherparse sees no IP header: {other:?}"),
    };
    assert_eq!(got_src, src, "source address");
    match (l4, &p.transport) {
        (None, None) => assert!(p.is_ip_payload_fragmented(), "a later fragment"),
        (Some(L4::Udp), Some(TransportSlice::Udp(_)))
        | (Some(L4::Tcp), Some(TransportSlice::Tcp(_)))
        | (Some(L4::Icmp), Some(TransportSlice::Icmpv4(_)))
        | (Some(L4::Icmp), Some(TransportSlice::Icmpv6(_))) => {}
        // etherparse does not decode the transport of a first fragment.
        (Some(_), None) if p.is_ip_payload_fragmented() => {}
        (want, got) => panic!("transport: wanted {want:?}, etherparse saw {got:?}"),
    }
}

/// Whether etherparse's `Ipv6Extensions` can hold this chain: hop-by-hop
/// only first, at most one routing and one fragment header, and destination
/// options at most once before and once after routing, in any order. Other chains (legal:
/// RFC 8200 asks nodes to accept any order and count) are checked by
/// [`verify_ipv6_chain`] alone.
fn etherparse_models(exts: &[Ext]) -> bool {
    let count = |k: fn(&Ext) -> bool| exts.iter().filter(|e| k(e)).count();
    let hbh_first = exts.iter().skip(1).all(|e| *e != Ext::HopByHop);
    let routing = exts.iter().position(|e| *e == Ext::Routing);
    let dst_before =
        exts.iter().enumerate().filter(|&(i, e)| *e == Ext::DestOpts && !matches!(routing, Some(r) if i > r)).count();
    let dst_after = count(|e| *e == Ext::DestOpts) - dst_before;
    hbh_first
        && count(|e| *e == Ext::Routing) <= 1
        && count(|e| matches!(e, Ext::Fragment { .. })) <= 1
        && dst_before <= 1
        && dst_after <= 1
}

/// Walks the IPv6 extension chain with etherparse, whatever its length.
fn verify_ipv6_chain(frame: &Frame, spec: &V6) {
    let (ip, rest) = Ipv6Header::from_slice(&frame.bytes[frame.l3..]).expect("etherparse parses the IPv6 header");
    assert_eq!(ip.source_addr(), spec.src, "source address");
    assert_eq!(usize::from(ip.payload_length), rest.len(), "payload length");
    let mut next = ip.next_header;
    let mut rest = rest;
    for e in &spec.exts {
        assert_eq!(next, e.number(), "next-header chain");
        let (n, r) = Ipv6Header::skip_header_extension_in_slice(rest, next).expect("etherparse walks the header");
        assert!(r.len() < rest.len(), "extension header consumed");
        next = n;
        rest = r;
    }
    let want = match spec.l4 {
        L4::Udp => IpNumber::UDP,
        L4::Tcp => IpNumber::TCP,
        L4::Icmp => IpNumber::IPV6_ICMP,
    };
    assert_eq!(next, want, "the chain ends at the transport");
}
