//! [`FrameBuilder`]: writes a frame layer by layer (see [`frame`](super::frame)).
//!
//! Over 600 lines because every header field a test may set has its own
//! documented setter; the parse-back check is in `verify.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header,
    Icmpv6Type, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header, SingleVlanHeader,
    TcpHeader, UdpHeader, VlanId, VlanPcp,
};

use super::frame::{
    Ext, Family, Frag, Frame, Icmp, Span, Vlan, VlanTag, BROADCAST_MAC, DST_MAC, ETHERTYPE_LLDP, L4, LLDP_MAC, SRC_MAC,
};

/// One IP header to build.
#[derive(Debug, Clone)]
pub(super) enum IpLayer {
    V4(Ipv4Header),
    V6 { header: Ipv6Header, exts: Vec<Ext> },
}

impl IpLayer {
    pub(super) fn number(&self) -> IpNumber {
        match self {
            IpLayer::V4(_) => IpNumber::IPV4,
            IpLayer::V6 { .. } => IpNumber::IPV6,
        }
    }

    pub(super) fn later_fragment(&self) -> bool {
        match self {
            IpLayer::V4(h) => h.fragment_offset.value() != 0,
            IpLayer::V6 { exts, .. } => exts.iter().any(Ext::later_fragment),
        }
    }

    pub(super) fn addrs(&self) -> (IpAddr, IpAddr) {
        match self {
            IpLayer::V4(h) => (IpAddr::V4(h.source.into()), IpAddr::V4(h.destination.into())),
            IpLayer::V6 { header, .. } => (IpAddr::V6(header.source.into()), IpAddr::V6(header.destination.into())),
        }
    }
}

/// The transport after the last IP header.
#[derive(Debug, Clone)]
pub(super) enum Transport {
    None,
    Tcp(TcpHeader),
    Udp { header: UdpHeader, zero_checksum: bool },
    Icmp(Icmp),
    Icmpv4(Icmpv4Type),
    Icmpv6(Icmpv6Type),
    Raw(IpNumber),
}

/// What follows the Ethernet header and tags.
#[derive(Debug, Clone)]
pub(super) enum Net {
    None,
    Ip(Vec<IpLayer>),
    // Boxed: an ArpPacket is 1 KiB (room for any address length).
    Arp(Box<ArpPacket>),
    Lldp,
    Ether(u16),
}

/// Writes a frame layer by layer; [`FrameBuilder::build`] makes the
/// [`Frame`]. Header setters (`ttl`, `df`, `hop_limit`, `ext`, ...) apply to
/// the IP header added last; `syn`, `ack`, `seq`, ... to the TCP header.
///
/// A builder is for tests, where a mistake should stop the test: a setter
/// for a header the frame does not have (`df` without an IPv4 header last,
/// `seq` without a TCP header) panics, naming the setter.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until built"]
pub struct FrameBuilder {
    pub(super) src_mac: [u8; 6],
    pub(super) dst_mac: [u8; 6],
    pub(super) tags: Vec<VlanTag>,
    pub(super) net: Net,
    pub(super) transport: Transport,
    pub(super) payload: Vec<u8>,
    pub(super) trailer: Vec<u8>,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        FrameBuilder::new()
    }
}

impl FrameBuilder {
    /// A frame from [`SRC_MAC`] to [`DST_MAC`] with nothing in it yet.
    pub fn new() -> FrameBuilder {
        FrameBuilder {
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            tags: Vec::new(),
            net: Net::None,
            transport: Transport::None,
            payload: Vec::new(),
            trailer: Vec::new(),
        }
    }

    /// The source and destination MAC addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// VLAN tags of one of the usual shapes (replacing any set before).
    pub fn vlan(mut self, vlan: Vlan) -> Self {
        self.tags = vlan.tags();
        self
    }

    /// Any VLAN tags, outermost first (replacing any set before).
    pub fn vlan_tags(mut self, tags: &[VlanTag]) -> Self {
        self.tags = tags.to_vec();
        self
    }

    /// An IP header of the address family of `src` and `dst` (see
    /// [`FrameBuilder::ipv4`], [`FrameBuilder::ipv6`]).
    ///
    /// # Panics
    /// When the two are of different families.
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("{src} and {dst} are of different address families"),
        }
    }

    /// An IPv4 header: TTL 64, DF set, identification 0, TOS 0, no options.
    /// Called again (or after [`FrameBuilder::ipv6`]), it adds an inner
    /// header: IP in IP, outermost first.
    pub fn ipv4(self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        let mut h =
            Ipv4Header { source: src.octets(), destination: dst.octets(), time_to_live: 64, ..Default::default() };
        h.identification = 0;
        self.push_ip(IpLayer::V4(h))
    }

    /// An IPv4 header as given (lengths, protocol and checksum are filled
    /// in when built).
    pub fn ipv4_header(self, header: Ipv4Header) -> Self {
        self.push_ip(IpLayer::V4(header))
    }

    /// An IPv6 header: hop limit 64, traffic class and flow label 0, no
    /// extension headers. Called again, it adds an inner header.
    pub fn ipv6(self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        let header =
            Ipv6Header { hop_limit: 64, source: src.octets(), destination: dst.octets(), ..Default::default() };
        self.push_ip(IpLayer::V6 { header, exts: Vec::new() })
    }

    fn push_ip(mut self, layer: IpLayer) -> Self {
        match &mut self.net {
            Net::Ip(layers) => layers.push(layer),
            _ => self.net = Net::Ip(vec![layer]),
        }
        self
    }

    fn ip_mut(&mut self, what: &str) -> &mut IpLayer {
        match &mut self.net {
            Net::Ip(layers) => layers.last_mut().expect("an IP header"),
            _ => panic!("{what}: add an IP header first"),
        }
    }

    fn v4_mut(&mut self, what: &str) -> &mut Ipv4Header {
        match self.ip_mut(what) {
            IpLayer::V4(h) => h,
            IpLayer::V6 { .. } => panic!("{what}: the last IP header is IPv6"),
        }
    }

    fn v6_mut(&mut self, what: &str) -> (&mut Ipv6Header, &mut Vec<Ext>) {
        match self.ip_mut(what) {
            IpLayer::V6 { header, exts } => (header, exts),
            IpLayer::V4(_) => panic!("{what}: the last IP header is IPv4"),
        }
    }

    /// The TTL (IPv4) or hop limit (IPv6) of the last IP header.
    pub fn ttl(mut self, ttl: u8) -> Self {
        match self.ip_mut("ttl") {
            IpLayer::V4(h) => h.time_to_live = ttl,
            IpLayer::V6 { header, .. } => header.hop_limit = ttl,
        }
        self
    }

    /// Same as [`FrameBuilder::ttl`].
    pub fn hop_limit(self, hop_limit: u8) -> Self {
        self.ttl(hop_limit)
    }

    /// The IPv4 TOS byte (DSCP and ECN) or IPv6 traffic class of the last
    /// IP header.
    #[expect(clippy::missing_panics_doc, reason = "tos >> 2 fits 6 bits and tos & 3 fits 2: the expects cannot fail")]
    pub fn tos(mut self, tos: u8) -> Self {
        match self.ip_mut("tos") {
            IpLayer::V4(h) => {
                h.dscp = IpDscp::try_new(tos >> 2).expect("6 bits");
                h.ecn = IpEcn::try_new(tos & 3).expect("2 bits");
            }
            IpLayer::V6 { header, .. } => header.traffic_class = tos,
        }
        self
    }

    /// The identification of the last (IPv4) header.
    pub fn id(mut self, id: u16) -> Self {
        self.v4_mut("id").identification = id;
        self
    }

    /// The don't-fragment flag of the last (IPv4) header.
    pub fn df(mut self, df: bool) -> Self {
        self.v4_mut("df").dont_fragment = df;
        self
    }

    /// Fragmentation of the last (IPv4) header: offset in 8-byte units and
    /// the more-fragments flag. A later fragment (offset > 0) carries no
    /// transport header: a TCP/UDP/ICMP header asked for is left out.
    ///
    /// # Panics
    /// When `offset` does not fit 13 bits.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        let h = self.v4_mut("fragment");
        h.fragment_offset = IpFragOffset::try_new(offset).expect("fragment offset fits 13 bits");
        h.more_fragments = more;
        self
    }

    /// Same as [`FrameBuilder::fragment`], by [`Frag`].
    pub fn frag(self, frag: Frag) -> Self {
        match frag {
            Frag::None => self.fragment(0, false),
            Frag::First => self.fragment(0, true),
            Frag::Later { offset, more } => self.fragment(offset, more),
        }
    }

    /// Options of the last (IPv4) header: a multiple of 4 bytes, at most 40,
    /// written as given.
    ///
    /// # Panics
    /// When `options` is longer than 40 bytes or not a multiple of 4.
    pub fn options(mut self, options: &[u8]) -> Self {
        self.v4_mut("options").options = options.try_into().expect("IPv4 options: a multiple of 4 bytes, at most 40");
        self
    }

    /// The flow label of the last (IPv6) header (20 bits).
    ///
    /// # Panics
    /// When `label` does not fit 20 bits.
    pub fn flow_label(mut self, label: u32) -> Self {
        self.v6_mut("flow_label").0.flow_label = Ipv6FlowLabel::try_new(label).expect("flow label fits 20 bits");
        self
    }

    /// Adds an extension header to the last (IPv6) header's chain.
    pub fn ext(mut self, ext: Ext) -> Self {
        self.v6_mut("ext").1.push(ext);
        self
    }

    /// Sets the last (IPv6) header's extension headers, in order.
    pub fn exts(mut self, exts: &[Ext]) -> Self {
        *self.v6_mut("exts").1 = exts.to_vec();
        self
    }

    /// A TCP header: sequence number 1, window 64240, SYN set (a
    /// connection's first segment; [`FrameBuilder::ack`] makes it a later
    /// one).
    pub fn tcp(mut self, src_port: u16, dst_port: u16) -> Self {
        let mut t = TcpHeader::new(src_port, dst_port, 1, 64240);
        t.syn = true;
        self.transport = Transport::Tcp(t);
        self
    }

    /// A TCP header as given (its checksum is filled in when built).
    pub fn tcp_header(mut self, header: TcpHeader) -> Self {
        self.transport = Transport::Tcp(header);
        self
    }

    fn tcp_mut(&mut self, what: &str) -> &mut TcpHeader {
        match &mut self.transport {
            Transport::Tcp(t) => t,
            _ => panic!("{what}: add a TCP header first"),
        }
    }

    /// SYN only (no ACK).
    pub fn syn(mut self) -> Self {
        let t = self.tcp_mut("syn");
        t.syn = true;
        t.ack = false;
        t.acknowledgment_number = 0;
        self
    }

    /// ACK with this acknowledgment number, SYN cleared: a segment of an
    /// established connection.
    pub fn ack(mut self, ack: u32) -> Self {
        let t = self.tcp_mut("ack");
        t.syn = false;
        t.ack = true;
        t.acknowledgment_number = ack;
        self
    }

    /// The TCP flags byte as on the wire (CWR ECE URG ACK PSH RST SYN FIN,
    /// most significant first); the acknowledgment number is kept.
    pub fn tcp_flags(mut self, flags: u8) -> Self {
        let t = self.tcp_mut("tcp_flags");
        t.fin = flags & 0x01 != 0;
        t.syn = flags & 0x02 != 0;
        t.rst = flags & 0x04 != 0;
        t.psh = flags & 0x08 != 0;
        t.ack = flags & 0x10 != 0;
        t.urg = flags & 0x20 != 0;
        t.ece = flags & 0x40 != 0;
        t.cwr = flags & 0x80 != 0;
        self
    }

    /// The TCP sequence number.
    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut("seq").sequence_number = seq;
        self
    }

    /// The TCP acknowledgment number (flags untouched).
    pub fn ack_number(mut self, ack: u32) -> Self {
        self.tcp_mut("ack_number").acknowledgment_number = ack;
        self
    }

    /// The TCP window.
    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut("window").window_size = window;
        self
    }

    /// TCP options, written as given (a multiple of 4 bytes, at most 40).
    ///
    /// # Panics
    /// When `options` is longer than 40 bytes or not a multiple of 4.
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_mut("tcp_options").set_options_raw(options).expect("TCP options: a multiple of 4 bytes, at most 40");
        self
    }

    /// A UDP header (checksum computed).
    pub fn udp(mut self, src_port: u16, dst_port: u16) -> Self {
        let header = UdpHeader { source_port: src_port, destination_port: dst_port, length: 0, checksum: 0 };
        self.transport = Transport::Udp { header, zero_checksum: false };
        self
    }

    /// IPv4 only: the UDP checksum left 0 ("none").
    ///
    /// # Panics
    /// When the transport set so far is not UDP.
    pub fn no_udp_checksum(mut self) -> Self {
        match &mut self.transport {
            Transport::Udp { zero_checksum, .. } => *zero_checksum = true,
            _ => panic!("no_udp_checksum: add a UDP header first"),
        }
        self
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) message, by the last IP header's
    /// family. Errors quote a packet: give it as the payload (e.g.
    /// `.payload(&quoted.ip_packet()[..48])`).
    pub fn icmp(mut self, icmp: Icmp) -> Self {
        self.transport = Transport::Icmp(icmp);
        self
    }

    /// An ICMP message given as etherparse's type (checksum computed).
    pub fn icmpv4(mut self, icmp: Icmpv4Type) -> Self {
        self.transport = Transport::Icmpv4(icmp);
        self
    }

    /// An ICMPv6 message given as etherparse's type (checksum computed).
    pub fn icmpv6(mut self, icmp: Icmpv6Type) -> Self {
        self.transport = Transport::Icmpv6(icmp);
        self
    }

    /// One of [`L4`]'s transports: UDP 40000 → 53, a TCP SYN 40000 → 80, or
    /// an echo request (id 7, sequence 1).
    pub fn l4(self, l4: L4) -> Self {
        match l4 {
            L4::Udp => self.udp(40000, 53),
            L4::Tcp => self.tcp(40000, 80),
            L4::Icmp => self.icmp(Icmp::EchoRequest { id: 7, seq: 1 }),
        }
    }

    /// No transport header the builder knows: the last IP header names
    /// `protocol` and the payload follows it as it is.
    pub fn protocol(mut self, protocol: u8) -> Self {
        self.transport = Transport::Raw(IpNumber(protocol));
        self
    }

    /// IP in IP: `packet` (an IPv4 or IPv6 packet, by its version nibble)
    /// as the payload of the last IP header, protocol 4 or 41.
    pub fn ip_payload(self, packet: &[u8]) -> Self {
        let proto = if packet.first().is_some_and(|b| b >> 4 == 6) { 41 } else { 4 };
        self.protocol(proto).payload(packet)
    }

    /// The payload after the transport header (or after the last IP
    /// header, or the non-IP payload).
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Bytes after the IP packet that no length field covers (Ethernet
    /// padding, or anything a test puts there).
    pub fn trailer(mut self, trailer: &[u8]) -> Self {
        self.trailer = trailer.to_vec();
        self
    }

    /// An ARP request from `sender` ([`FrameBuilder::macs`]'s source MAC)
    /// asking for `target`; the destination MAC becomes broadcast.
    #[expect(clippy::missing_panics_doc, reason = "MAC and IPv4 lengths are always valid ARP lengths")]
    pub fn arp_request(mut self, sender: Ipv4Addr, target: Ipv4Addr) -> Self {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &self.src_mac,
            &sender.octets(),
            &[0; 6],
            &target.octets(),
        )
        .expect("valid ARP lengths");
        self.dst_mac = BROADCAST_MAC;
        self.net = Net::Arp(Box::new(arp));
        self
    }

    /// An LLDP frame to [`LLDP_MAC`] (chassis id, port id "eth0", TTL 120,
    /// end). etherparse has no LLDP support, so the TLVs are written here.
    pub fn lldp(mut self) -> Self {
        self.dst_mac = LLDP_MAC;
        self.net = Net::Lldp;
        self
    }

    /// Any EtherType (or 802.3 length) followed by the payload as it is.
    pub fn ether_type(mut self, ether_type: u16) -> Self {
        self.net = Net::Ether(ether_type);
        self
    }

    /// Builds the frame and checks it with etherparse's parsers.
    ///
    /// # Panics
    /// When a value cannot be written (lengths over 65535, ...) or the
    /// built frame does not parse back as specified (a bug in the kit).
    pub fn build(&self) -> Frame {
        let first_type = match &self.net {
            Net::None => EtherType(0),
            Net::Ip(layers) => match layers[0] {
                IpLayer::V4(_) => EtherType::IPV4,
                IpLayer::V6 { .. } => EtherType::IPV6,
            },
            Net::Arp(_) => EtherType::ARP,
            Net::Lldp => EtherType(ETHERTYPE_LLDP),
            Net::Ether(t) => EtherType(*t),
        };
        let (mut bytes, mut spans) = l2(self.src_mac, self.dst_mac, &self.tags, first_type);
        let l3 = bytes.len();
        let mut family = None;
        match &self.net {
            Net::None | Net::Ether(_) => {
                if !self.payload.is_empty() {
                    spans.push(Span { name: "ether-payload".into(), start: l3, len: self.payload.len() });
                }
                bytes.extend_from_slice(&self.payload);
            }
            Net::Arp(arp) => {
                let b = arp.to_bytes();
                spans.push(Span { name: "arp".into(), start: l3, len: b.len() });
                bytes.extend_from_slice(&b);
                bytes.extend_from_slice(&self.payload);
            }
            Net::Lldp => {
                let tlv = |bytes: &mut Vec<u8>, ty: u16, value: &[u8]| {
                    let header = (ty << 9) | value.len() as u16;
                    bytes.extend_from_slice(&header.to_be_bytes());
                    bytes.extend_from_slice(value);
                };
                let mut chassis = vec![4]; // subtype 4: MAC address
                chassis.extend_from_slice(&self.src_mac);
                tlv(&mut bytes, 1, &chassis);
                tlv(&mut bytes, 2, b"\x05eth0"); // subtype 5: interface name
                tlv(&mut bytes, 3, &120u16.to_be_bytes());
                tlv(&mut bytes, 0, &[]);
                spans.push(Span { name: "lldp".into(), start: l3, len: bytes.len() - l3 });
                bytes.extend_from_slice(&self.payload);
            }
            Net::Ip(layers) => {
                family = Some(match layers[0] {
                    IpLayer::V4(_) => Family::V4,
                    IpLayer::V6 { .. } => Family::V6,
                });
                let (packet, packet_spans) = self.ip_packet(layers);
                for s in packet_spans {
                    spans.push(Span { start: s.start + l3, ..s });
                }
                bytes.extend_from_slice(&packet);
            }
        }
        if !self.trailer.is_empty() {
            spans.push(Span { name: "trailer".into(), start: bytes.len(), len: self.trailer.len() });
            bytes.extend_from_slice(&self.trailer);
        }
        let frame = Frame { bytes, spans, l3, family, trailer: self.trailer.len() };
        self.verify(&frame);
        frame
    }

    /// The IP packet of `layers` (outermost first) and its spans, from 0.
    fn ip_packet(&self, layers: &[IpLayer]) -> (Vec<u8>, Vec<Span>) {
        // Innermost first: each packet is the payload of the one around it.
        let last = layers.len() - 1;
        let (inner_bytes, inner_spans) = self.transport_and_payload(&layers[last]);
        let mut body = inner_bytes;
        let mut body_spans = inner_spans;
        let mut proto = self.transport_number(&layers[last]);
        for (depth, layer) in layers.iter().enumerate().rev() {
            let prefix = match depth {
                0 => String::new(),
                1 => "inner-".to_string(),
                n => format!("inner{n}-"),
            };
            let (head, head_spans) = ip_header(layer, proto, body.len(), &prefix);
            let shift = head.len();
            let mut spans = head_spans;
            spans.extend(body_spans.into_iter().map(|s| Span { start: s.start + shift, ..s }));
            let mut packet = head;
            packet.extend_from_slice(&body);
            body = packet;
            body_spans = spans;
            proto = layer.number();
        }
        (body, body_spans)
    }

    pub(super) fn transport_number(&self, layer: &IpLayer) -> IpNumber {
        let v6 = matches!(layer, IpLayer::V6 { .. });
        match &self.transport {
            Transport::None => IpNumber(59), // IPv6 "no next header"
            Transport::Tcp(_) => IpNumber::TCP,
            Transport::Udp { .. } => IpNumber::UDP,
            Transport::Icmp(_) if v6 => IpNumber::IPV6_ICMP,
            Transport::Icmp(_) | Transport::Icmpv4(_) => IpNumber::ICMP,
            Transport::Icmpv6(_) => IpNumber::IPV6_ICMP,
            Transport::Raw(n) => *n,
        }
    }

    /// The transport header (none for a later fragment) and the payload,
    /// with their spans from 0, checksummed for the innermost header.
    fn transport_and_payload(&self, layer: &IpLayer) -> (Vec<u8>, Vec<Span>) {
        let (src, dst) = layer.addrs();
        let payload = &self.payload;
        let header: Option<(&str, Vec<u8>)> = if layer.later_fragment() {
            None
        } else {
            match &self.transport {
                Transport::None | Transport::Raw(_) => None,
                Transport::Tcp(t) => {
                    let mut t = t.clone();
                    t.checksum = match (src, dst) {
                        (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                        (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                        _ => unreachable!("one family per header"),
                    }
                    .expect("TCP segment fits");
                    Some(("tcp", t.to_bytes().to_vec()))
                }
                Transport::Udp { header, zero_checksum } => {
                    let mut u = header.clone();
                    u.length = u16::try_from(UdpHeader::LEN + payload.len()).expect("UDP datagram fits 65535 bytes");
                    u.checksum = match (src, dst) {
                        (IpAddr::V4(_), IpAddr::V4(_)) if *zero_checksum => Ok(0),
                        (IpAddr::V4(s), IpAddr::V4(d)) => u.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                        (IpAddr::V6(s), IpAddr::V6(d)) => u.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                        _ => unreachable!("one family per header"),
                    }
                    .expect("UDP datagram fits");
                    Some(("udp", u.to_bytes().to_vec()))
                }
                Transport::Icmp(icmp) => {
                    let v6 = matches!(layer, IpLayer::V6 { .. });
                    let (kind, code, rest) = icmp.raw(v6);
                    if v6 {
                        let ty = Icmpv6Type::Unknown { type_u8: kind, code_u8: code, bytes5to8: rest };
                        Some(("icmpv6", icmpv6_bytes(ty, src, dst, payload)))
                    } else {
                        let ty = Icmpv4Type::Unknown { type_u8: kind, code_u8: code, bytes5to8: rest };
                        Some(("icmpv4", Icmpv4Header::with_checksum(ty, payload).to_bytes().to_vec()))
                    }
                }
                Transport::Icmpv4(ty) => {
                    Some(("icmpv4", Icmpv4Header::with_checksum(ty.clone(), payload).to_bytes().to_vec()))
                }
                Transport::Icmpv6(ty) => Some(("icmpv6", icmpv6_bytes(*ty, src, dst, payload))),
            }
        };
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        if let Some((name, h)) = header {
            spans.push(Span { name: name.into(), start: 0, len: h.len() });
            bytes = h;
        }
        if !payload.is_empty() {
            spans.push(Span { name: "payload".into(), start: bytes.len(), len: payload.len() });
        }
        bytes.extend_from_slice(payload);
        (bytes, spans)
    }
}

fn icmpv6_bytes(ty: Icmpv6Type, src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else { panic!("ICMPv6 in an IPv4 header") };
    Icmpv6Header::with_checksum(ty, s.octets(), d.octets(), payload).expect("ICMPv6 message fits").to_bytes().to_vec()
}

/// One IP header (IPv6: with its extension headers) in front of a body of
/// `body_len` bytes whose protocol is `proto`, and its spans from 0.
fn ip_header(layer: &IpLayer, proto: IpNumber, body_len: usize, prefix: &str) -> (Vec<u8>, Vec<Span>) {
    let mut spans = Vec::new();
    match layer {
        IpLayer::V4(h) => {
            let mut h = h.clone();
            h.protocol = proto;
            h.set_payload_len(body_len).expect("IPv4 packet fits 65535 bytes");
            h.header_checksum = h.calc_header_checksum();
            let bytes = h.to_bytes().to_vec();
            spans.push(Span { name: format!("{prefix}ipv4"), start: 0, len: Ipv4Header::MIN_LEN });
            if !h.options.is_empty() {
                spans.push(Span {
                    name: format!("{prefix}ipv4-options"),
                    start: Ipv4Header::MIN_LEN,
                    len: h.options.len(),
                });
            }
            (bytes, spans)
        }
        IpLayer::V6 { header, exts } => {
            let mut h = header.clone();
            let ext_bytes: Vec<Vec<u8>> =
                exts.iter().enumerate().map(|(i, e)| e.bytes(exts.get(i + 1).map_or(proto, Ext::number))).collect();
            h.next_header = exts.first().map_or(proto, Ext::number);
            let ext_len: usize = ext_bytes.iter().map(Vec::len).sum();
            h.set_payload_length(ext_len + body_len).expect("IPv6 payload fits 65535 bytes");
            let mut bytes = h.to_bytes().to_vec();
            spans.push(Span { name: format!("{prefix}ipv6"), start: 0, len: Ipv6Header::LEN });
            for (i, (e, b)) in exts.iter().zip(&ext_bytes).enumerate() {
                spans.push(Span { name: format!("{prefix}ext{i}:{}", e.name()), start: bytes.len(), len: b.len() });
                bytes.extend_from_slice(b);
            }
            (bytes, spans)
        }
    }
}

/// Ethernet header plus VLAN tags in front of a payload of `ether_type`.
fn l2(src: [u8; 6], dst: [u8; 6], tags: &[VlanTag], ether_type: EtherType) -> (Vec<u8>, Vec<Span>) {
    let first_type = tags.first().map_or(ether_type, |t| EtherType(t.tpid));
    let eth = Ethernet2Header { source: src, destination: dst, ether_type: first_type };
    let mut bytes = eth.to_bytes().to_vec();
    let mut spans = vec![Span { name: "ethernet".into(), start: 0, len: Ethernet2Header::LEN }];
    for (i, tag) in tags.iter().enumerate() {
        let inner_type = tags.get(i + 1).map_or(ether_type, |t| EtherType(t.tpid));
        let header = SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(tag.id).expect("VLAN id below 4096"),
            ether_type: inner_type,
        };
        spans.push(Span { name: format!("vlan{i}"), start: bytes.len(), len: SingleVlanHeader::LEN });
        bytes.extend_from_slice(&header.to_bytes());
    }
    (bytes, spans)
}
