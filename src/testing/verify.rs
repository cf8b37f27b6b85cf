//! The parse-back check of every built frame, and the builder's tests.

use std::net::IpAddr;

use etherparse::{
    Ethernet2Header, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type, Ipv4Header, Ipv6Header, SingleVlanHeader,
    TcpHeader, UdpHeader,
};

use super::builder::{IpLayer, Net, Transport};
use super::frame::{Frame, FrameBuilder};

impl FrameBuilder {
    /// Parses the frame back with etherparse, header by header, and checks
    /// it holds what was asked for.
    pub(super) fn verify(&self, frame: &Frame) {
        let b = &frame.bytes;
        // Ethernet and tags.
        let (eth, _) = Ethernet2Header::from_slice(b).unwrap_or_else(|e| fail(b, format!("Ethernet: {e}")));
        if (eth.source, eth.destination) != (self.src_mac, self.dst_mac) {
            fail(b, "MAC addresses".into());
        }
        let mut off = Ethernet2Header::LEN;
        for (i, tag) in self.tags.iter().enumerate() {
            let tpid = u16::from_be_bytes([b[off - 2], b[off - 1]]);
            if tpid != tag.tpid {
                fail(b, format!("TPID of tag {i}"));
            }
            let (t, _) = SingleVlanHeader::from_slice(&b[off..]).unwrap_or_else(|e| fail(b, format!("tag {i}: {e}")));
            if t.vlan_id.value() != tag.id {
                fail(b, format!("VLAN id of tag {i}"));
            }
            off += SingleVlanHeader::LEN;
        }
        if off != frame.l3 {
            fail(b, "the L3 offset".into());
        }
        let Net::Ip(layers) = &self.net else { return };
        let end = b.len() - frame.trailer;
        for (depth, layer) in layers.iter().enumerate() {
            let inner = layers.get(depth + 1);
            let (next, rest) = match layer {
                IpLayer::V4(want) => {
                    let (h, rest) = Ipv4Header::from_slice(&b[off..end])
                        .unwrap_or_else(|e| fail(b, format!("IPv4 header {depth}: {e}")));
                    if (h.source, h.destination) != (want.source, want.destination) {
                        fail(b, format!("IPv4 header {depth}: addresses"));
                    }
                    if h.header_checksum != h.calc_header_checksum() {
                        fail(b, format!("IPv4 header {depth}: checksum"));
                    }
                    if off + usize::from(h.total_len) != end {
                        fail(b, format!("IPv4 header {depth}: total length"));
                    }
                    (h.protocol, rest)
                }
                IpLayer::V6 { header: want, exts } => {
                    let (h, mut rest) = Ipv6Header::from_slice(&b[off..end])
                        .unwrap_or_else(|e| fail(b, format!("IPv6 header {depth}: {e}")));
                    if (h.source, h.destination) != (want.source, want.destination) {
                        fail(b, format!("IPv6 header {depth}: addresses"));
                    }
                    if usize::from(h.payload_length) != rest.len() {
                        fail(b, format!("IPv6 header {depth}: payload length"));
                    }
                    let mut next = h.next_header;
                    for e in exts {
                        if next != e.number() {
                            fail(b, format!("IPv6 header {depth}: next-header chain at {}", e.name()));
                        }
                        let (n, r) = Ipv6Header::skip_header_extension_in_slice(rest, next)
                            .unwrap_or_else(|err| fail(b, format!("IPv6 extension {}: {err}", e.name())));
                        next = n;
                        rest = r;
                    }
                    (next, rest)
                }
            };
            off = end - rest.len();
            match inner {
                Some(l) => {
                    if next != l.number() {
                        fail(b, format!("IP header {depth}: protocol {next:?} for an inner header"));
                    }
                }
                None => {
                    if next != self.transport_number(layer) {
                        fail(b, format!("IP header {depth}: protocol {next:?}"));
                    }
                    if !layer.later_fragment() {
                        self.verify_transport(layer, rest, b);
                    }
                }
            }
        }
    }

    fn verify_transport(&self, layer: &IpLayer, seg: &[u8], b: &[u8]) {
        let (src, dst) = layer.addrs();
        match &self.transport {
            Transport::Tcp(want) => {
                let (t, payload) = TcpHeader::from_slice(seg).unwrap_or_else(|e| fail(b, format!("TCP: {e}")));
                let sum = match (src, dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => t.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                    (IpAddr::V6(s), IpAddr::V6(d)) => t.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                    _ => unreachable!(),
                };
                if (t.source_port, t.destination_port) != (want.source_port, want.destination_port)
                    || sum.ok() != Some(t.checksum)
                    || payload != self.payload.as_slice()
                {
                    fail(b, "TCP ports, checksum or payload".into());
                }
            }
            Transport::Udp { header: want, zero_checksum } => {
                let (u, payload) = UdpHeader::from_slice(seg).unwrap_or_else(|e| fail(b, format!("UDP: {e}")));
                let sum = match (src, dst) {
                    (IpAddr::V4(_), IpAddr::V4(_)) if *zero_checksum => Ok(0),
                    (IpAddr::V4(s), IpAddr::V4(d)) => u.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload),
                    (IpAddr::V6(s), IpAddr::V6(d)) => u.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload),
                    _ => unreachable!(),
                };
                if (u.source_port, u.destination_port) != (want.source_port, want.destination_port)
                    || sum.ok() != Some(u.checksum)
                    || payload != self.payload.as_slice()
                {
                    fail(b, "UDP ports, checksum or payload".into());
                }
            }
            Transport::Icmp(_) | Transport::Icmpv4(_) | Transport::Icmpv6(_) => {
                if seg.len() < 8 {
                    fail(b, "ICMP header cut".into());
                }
                // Recomputed over the bytes as written (etherparse's typed
                // view drops unused bytes of some types).
                let ty = (seg[0], seg[1], [seg[4], seg[5], seg[6], seg[7]]);
                let payload = &seg[8..];
                let sum = u16::from_be_bytes([seg[2], seg[3]]);
                let want = match (src, dst) {
                    (IpAddr::V4(_), _) => {
                        let t = Icmpv4Type::Unknown { type_u8: ty.0, code_u8: ty.1, bytes5to8: ty.2 };
                        Some(Icmpv4Header::with_checksum(t, payload).checksum)
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        let t = Icmpv6Type::Unknown { type_u8: ty.0, code_u8: ty.1, bytes5to8: ty.2 };
                        Icmpv6Header::with_checksum(t, s.octets(), d.octets(), payload).ok().map(|h| h.checksum)
                    }
                    _ => unreachable!(),
                };
                if want != Some(sum) || payload != self.payload.as_slice() {
                    fail(b, "ICMP checksum or payload".into());
                }
            }
            Transport::None | Transport::Raw(_) => {
                if seg != self.payload.as_slice() {
                    fail(b, "the payload".into());
                }
            }
        }
    }
}

fn fail(frame: &[u8], what: String) -> ! {
    panic!("the frame built does not parse back: {what}\n{frame:02x?}")
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::testing::frame::*;

    #[test]
    fn spans_cover_every_header() {
        let f = Frame::builder()
            .vlan(Vlan::Dot1AdDot1Q(1, 2))
            .ipv6("2001:db8::1".parse().unwrap(), "2001:db8::2".parse().unwrap())
            .exts(&[Ext::HopByHop, Ext::Routing, Ext::fragment(0, true), Ext::DestOpts])
            .tcp(1, 2)
            .payload(b"abc")
            .trailer(&[0; 5])
            .build();
        let names: Vec<&str> = f.spans().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ethernet",
                "vlan0",
                "vlan1",
                "ipv6",
                "ext0:hop-by-hop",
                "ext1:routing",
                "ext2:fragment",
                "ext3:destination-options",
                "tcp",
                "payload",
                "trailer"
            ]
        );
        for w in f.spans().windows(2) {
            assert_eq!(w[0].end(), w[1].start, "{w:?}");
        }
        assert_eq!(f.spans().last().unwrap().end(), f.len());
        assert_eq!(f.l3(), 22);
        assert_eq!(f.ip_packet().len(), f.len() - 22 - 5);
    }

    #[test]
    fn tunnels_nest_and_name_the_protocols() {
        let inner_src: Ipv4Addr = "192.0.2.1".parse().unwrap();
        let f = Frame::builder()
            .ipv6("2001:db8:e::1".parse().unwrap(), "2001:db8:b::11".parse().unwrap())
            .ipv4(inner_src, "203.0.113.10".parse().unwrap())
            .udp(5, 53)
            .payload(b"x")
            .build();
        assert_eq!(f[f.l3() + 6], 4, "IPv6 next header: IPv4");
        let inner = f.span("inner-ipv4");
        assert_eq!(inner.start, 14 + 40);
        assert_eq!(f[inner.start + 9], 17);
        assert_eq!(f.span("udp").start, inner.end());
        assert_eq!(f.family(), Some(Family::V6));
        assert_eq!(f.l3_end(), inner.start, "the inner header is not L3 of the frame");
    }

    #[test]
    fn later_fragments_carry_no_transport_header() {
        let f = Frame::builder()
            .ipv4("192.0.2.1".parse().unwrap(), DST_V4)
            .fragment(10, true)
            .udp(1, 2)
            .payload(&[7; 16])
            .build();
        assert!(f.find_span("udp").is_none());
        assert_eq!(f[f.l3() + 9], 17, "still names UDP");
        assert_eq!(f.len(), 14 + 20 + 16);
    }

    #[test]
    fn icmp_errors_by_meaning() {
        let quoted = udp_from("192.0.2.9".parse().unwrap());
        let f = Frame::builder()
            .ipv4("192.0.2.99".parse().unwrap(), DST_V4)
            .icmp(Icmp::TooBig { mtu: 1280 })
            .payload(&quoted.ip_packet()[..28])
            .build();
        let icmp = f.span("icmpv4").start;
        assert_eq!(f[icmp..icmp + 2], [3, 4]);
        assert_eq!(f[icmp + 6..icmp + 8], 1280u16.to_be_bytes());
        let f6 =
            Frame::builder().ipv6("2001:db8::99".parse().unwrap(), DST_V6).icmp(Icmp::TooBig { mtu: 1280 }).build();
        let icmp = f6.span("icmpv6").start;
        assert_eq!(f6[icmp..icmp + 2], [2, 0]);
        assert_eq!(f6[icmp + 4..icmp + 8], [0, 0, 5, 0]);
    }

    #[test]
    fn vlan_tags_go_in_front_of_the_ethertype() {
        let f = udp_from("192.0.2.1".parse().unwrap());
        let tagged = insert_vlan_tags(&f, &[VlanTag { tpid: TPID_8021AD, id: 5 }, VlanTag { tpid: TPID_8021Q, id: 6 }]);
        assert_eq!(tagged[12..22], [0x88, 0xA8, 0, 5, 0x81, 0, 0, 6, 0x08, 0x00]);
        assert_eq!(tagged[22..], f[14..]);
    }
}
