//! The load balancer's policies and parser as fixture tables, through
//! BPF_PROG_TEST_RUN: fragments, IPv4 options, ICMP echo to a VIP, and
//! frames cut at every length. Needs root; fails (does not skip) without it.

mod common {
    pub mod lb;
}

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::lb::*;
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::{Ext, Family, Frame, Icmp};
use xdpguard::testing::lb_topology::*;
use xdpguard::{EchoPolicy, Flow, ForwardingMode, FragmentPolicy, OptionsPolicy, Protocol, Vip, VipConfig, XdpAction};

#[test]
fn fragments_follow_the_fragment_policy() {
    in_lb_ns("vfrag", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "fragments");
        let any = Vip::all_ports(IpAddr::V4(VIP2_V4), Protocol::Udp);
        vip_with(&lb, any, VipConfig::new(ForwardingMode::Ipip), &backends_v4(3));
        let one = Vip::udp(sa(VIP_V4, 53));
        vip_with(&lb, one, VipConfig::new(ForwardingMode::Ipip), &backends_v4(3));
        let any6 = Vip::all_ports(IpAddr::V6(VIP2_V6), Protocol::Udp);
        vip_with(&lb, any6, VipConfig::new(ForwardingMode::L2Dsr), &backends_v6(3));

        // A UDP fragment: 16 bytes of data, no UDP header of its own.
        let v4_frag = |dst: Ipv4Addr, src_last: u8, offset_units: u16, more: bool| {
            Frame::builder()
                .macs(CLIENT_MAC, n.eth0_mac)
                .ipv4(Ipv4Addr::new(192, 0, 2, src_last), dst)
                .id(0x4242)
                .fragment(offset_units, more)
                .protocol(17)
                .payload(&[0x11; 16])
                .build()
        };
        for src_last in 1..=20u8 {
            let first = v4_frag(VIP2_V4, src_last, 0, true);
            let later = v4_frag(VIP2_V4, src_last, 2, false);
            let flow = Flow::new(sa(Ipv4Addr::new(192, 0, 2, src_last), 0), sa(VIP2_V4, 0), Protocol::Udp).fragment();
            let chosen = lb.backend_for(&any, &flow).unwrap().unwrap();
            let osrc = lb.ipip_source_for(&any, &flow, chosen.ip).unwrap().unwrap();
            for (what, f) in [("first", &first), ("later", &later)] {
                // Every fragment of a datagram to the same, predicted backend.
                let want = ipip(f, osrc, chosen.ip, n.eth1_mac, backend_mac(backend_index(chosen)));
                t.run(
                    Fixture::new(format!("{what} fragment from 192.0.2.{src_last}"), f)
                        .on(n.eth0)
                        .action(XdpAction::Redirect)
                        .output(want)
                        .counts_packets(&["fragments_forwarded", "redirected"]),
                );
            }
        }
        assert_eq!(lb.stats().unwrap().fragments_forwarded.packets, 40);
        // A fragment to a single-port VIP's address cannot be matched: dropped.
        t.run(
            Fixture::new("a fragment to a single-port VIP", v4_frag(VIP_V4, 1, 2, false))
                .on(n.eth0)
                .action(XdpAction::Drop)
                .counts(&["drop_fragment"]),
        );
        assert_eq!(
            lb.backend_for(&one, &Flow::new(client(1), sa(VIP_V4, 53), Protocol::Udp).fragment()).unwrap(),
            None
        );
        // Not a VIP address: passed untouched.
        t.run(
            Fixture::new("a fragment to no VIP", v4_frag(LB_FRONT_V4, 1, 2, false))
                .on(n.eth0)
                .action(XdpAction::Pass)
                .unchanged(),
        );
        // IPv6 fragment header, to the all-ports DSR VIP.
        let src6 = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
        let f6 = Frame::builder()
            .macs(CLIENT_MAC, n.eth0_mac)
            .ipv6(src6, VIP2_V6)
            .ext(Ext::Fragment { offset: 4, more: false, id: 9 })
            .protocol(17)
            .payload(&[0x22; 16])
            .build();
        let chosen =
            lb.backend_for(&any6, &Flow::new(sa(src6, 9), sa(VIP2_V6, 9), Protocol::Udp).fragment()).unwrap().unwrap();
        t.run(
            Fixture::new("an IPv6 fragment", &f6)
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(f6.with_macs(n.eth1_mac, backend_mac(backend_index(chosen)))),
        );
        // An atomic fragment (offset 0, no more: RFC 6946) is a whole
        // datagram with a fragment header: balanced by its ports like any
        // other, here to a single-port VIP no fragment could reach.
        let one6 = Vip::udp(sa(VIP_V6, 53));
        vip_with(&lb, one6, VipConfig::new(ForwardingMode::L2Dsr), &backends_v6(3));
        let atomic = Frame::builder()
            .macs(CLIENT_MAC, n.eth0_mac)
            .ipv6(src6, VIP_V6)
            .ext(Ext::Fragment { offset: 0, more: false, id: 10 })
            .udp(40000, 53)
            .payload(&[0x33; 16])
            .build();
        let chosen =
            lb.backend_for(&one6, &Flow::new(sa(src6, 40000), sa(VIP_V6, 53), Protocol::Udp)).unwrap().unwrap();
        t.run(
            Fixture::new("an IPv6 atomic fragment to a single-port VIP", &atomic)
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(atomic.with_macs(n.eth1_mac, backend_mac(backend_index(chosen))))
                .counts_packets(&["redirected"]),
        );
        // Policy Drop: every fragment to a VIP address goes.
        lb.set_fragment_policy(FragmentPolicy::Drop);
        assert_eq!(lb.fragment_policy(), FragmentPolicy::Drop);
        t.run(
            Fixture::new("policy drop, IPv4", v4_frag(VIP2_V4, 1, 0, true))
                .on(n.eth0)
                .action(XdpAction::Drop)
                .counts(&["drop_fragment"]),
        );
        t.run(Fixture::new("policy drop, IPv6", &f6).on(n.eth0).action(XdpAction::Drop).counts(&["drop_fragment"]));
        t.finish();
        assert_eq!(lb.stats().unwrap().drops.fragment.packets, 3);
    });
}

#[test]
fn ipv4_options_follow_the_options_policy() {
    in_lb_ns("vopt", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "IPv4 options");
        let vip = Vip::tcp(sa(VIP_V4, 80));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::Nat), &backends_v4(3));
        // A TCP SYN with a 4-byte IPv4 option (NOP NOP NOP EOL).
        let sent = Pkt::new(sa(CLIENT_V4, 40000), addr_port(&vip), Protocol::Tcp, true);
        let input = sent.builder(CLIENT_MAC, n.eth0_mac).options(&[1, 1, 1, 0]).build();
        assert_eq!(input[14] & 0x0F, 6, "IHL 6: options present");
        let chosen =
            lb.backend_for(&vip, &Flow::new(sa(CLIENT_V4, 40000), addr_port(&vip), Protocol::Tcp)).unwrap().unwrap();
        // NAT with options: options kept, checksums still right.
        let want = sent
            .to(sa(chosen.ip, 80))
            .builder(n.eth1_mac, backend_mac(backend_index(chosen)))
            .options(&[1, 1, 1, 0])
            .build();
        t.run(
            Fixture::new("NAT with options", &input)
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(want)
                .counts_packets(&["options_forwarded", "redirected"]),
        );
        lb.set_options_policy(OptionsPolicy::Drop);
        assert_eq!(lb.options_policy(), OptionsPolicy::Drop);
        t.run(Fixture::new("policy drop", &input).on(n.eth0).action(XdpAction::Drop).counts(&["drop_ip_options"]));
        t.finish();
        assert_eq!(lb.stats().unwrap().options_forwarded.packets, 1);
        assert_eq!(lb.stats().unwrap().drops.ip_options.packets, 1);
    });
}

#[test]
fn echo_to_a_vip_follows_the_echo_policy() {
    in_lb_ns("vecho", 2, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "echo");
        vip_with(&lb, Vip::tcp(sa(VIP_V4, 80)), VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(2));
        vip_with(&lb, Vip::udp(sa(VIP_V6, 53)), VipConfig::new(ForwardingMode::L2Dsr), &backends_v6(2));
        let echo = |src: IpAddr, dst: IpAddr, icmp: Icmp, macs: ([u8; 6], [u8; 6])| {
            Frame::builder().macs(macs.0, macs.1).ip(src, dst).icmp(icmp).payload(b"ping").build()
        };
        let request = Icmp::EchoRequest { id: 7, seq: 1 };
        let reply = Icmp::EchoReply { id: 7, seq: 1 };
        let e4 = echo(CLIENT_V4.into(), VIP_V4.into(), request, (CLIENT_MAC, n.eth0_mac));
        let e6 = echo(CLIENT_V6.into(), VIP_V6.into(), request, (CLIENT_MAC, n.eth0_mac));
        assert_eq!(lb.echo_policy(), EchoPolicy::Answer, "the default");
        // Answered on the spot: from the VIP, back out of eth0 (TTL 64).
        for (what, req, vip, client) in
            [("IPv4", &e4, IpAddr::V4(VIP_V4), IpAddr::V4(CLIENT_V4)), ("IPv6", &e6, VIP_V6.into(), CLIENT_V6.into())]
        {
            t.run(
                Fixture::new(format!("{what} echo, policy answer"), req)
                    .on(n.eth0)
                    .action(XdpAction::Tx)
                    .output(echo(vip, client, reply, (n.eth0_mac, CLIENT_MAC)))
                    .counts(&["echo_answered"]),
            );
        }
        assert_eq!(lb.stats().unwrap().echo_answered.packets, 2);
        lb.set_echo_policy(EchoPolicy::Pass);
        t.run(Fixture::new("policy pass", &e4).on(n.eth0).action(XdpAction::Pass).unchanged().counts(&["passed_echo"]));
        lb.set_echo_policy(EchoPolicy::Drop);
        t.run(Fixture::new("policy drop", &e6).on(n.eth0).action(XdpAction::Drop).counts(&["drop_echo"]));
        let s = lb.stats().unwrap();
        assert_eq!((s.passed_echo.packets, s.drops.echo.packets), (1, 1));
        // Echo to a non-VIP address is not ours.
        let other = echo(CLIENT_V4.into(), LB_FRONT_V4.into(), request, (CLIENT_MAC, n.eth0_mac));
        t.run(Fixture::new("echo to the LB itself", &other).on(n.eth0).action(XdpAction::Pass).unchanged());
        // Answered to unicast senders only: the answer goes back to the
        // request's source MAC from its destination MAC, so a request from a
        // group (multicast or broadcast) MAC, which no station sends from, or
        // to one, is dropped unanswered, as the echo policy's drops are.
        lb.set_echo_policy(EchoPolicy::Answer);
        let groups: [([u8; 6], [u8; 6]); 4] = [
            ([0x01, 0x00, 0x5e, 0, 0, 1], n.eth0_mac), // from an IPv4 multicast MAC
            ([0xff; 6], n.eth0_mac),                   // from the broadcast MAC
            (CLIENT_MAC, [0xff; 6]),                   // to the broadcast MAC
            (CLIENT_MAC, [0x33, 0x33, 0, 0, 0, 1]),    // to an IPv6 multicast MAC
        ];
        for macs in groups {
            for (what, src, dst) in
                [("IPv4", IpAddr::V4(CLIENT_V4), IpAddr::V4(VIP_V4)), ("IPv6", CLIENT_V6.into(), VIP_V6.into())]
            {
                let f = echo(src, dst, request, macs);
                let what = format!("{what} echo {:02x?} -> {:02x?}: not answered", macs.0, macs.1);
                t.run(Fixture::new(what, &f).on(n.eth0).action(XdpAction::Drop).counts(&["drop_echo"]));
            }
        }
        t.finish();
    });
}

/// Every action but XDP_ABORTED.
const NOT_ABORTED: &[XdpAction] = &[XdpAction::Drop, XdpAction::Pass, XdpAction::Tx, XdpAction::Redirect];

#[test]
fn truncated_frames_never_abort() {
    in_lb_ns("vtrunc", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "truncated frames");
        vip_with(&lb, Vip::tcp(sa(VIP_V4, 80)), VipConfig::new(ForwardingMode::Nat), &backends_v4(3));
        vip_with(&lb, Vip::udp(sa(VIP_V6, 53)), VipConfig::new(ForwardingMode::Ipip), &backends_v6(3));
        vip_with(&lb, Vip::tcp(sa(VIP_V6, 80)), VipConfig::new(ForwardingMode::Nat), &backends_v6(3));
        let frames = [
            frame(n.eth0_mac, client(1), sa(VIP_V4, 80), Protocol::Tcp, true, PAYLOAD),
            frame(n.eth0_mac, client6(1), sa(VIP_V6, 53), Protocol::Udp, false, PAYLOAD),
            icmp_error(n.eth0_mac, sa(VIP_V6, 80), client6(2), Protocol::Tcp),
            icmp_error(n.eth0_mac, sa(VIP_V4, 80), client(2), Protocol::Tcp),
        ];
        for full in &frames {
            let l3_start = full.l3();
            // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
            for len in 14..full.len() {
                let cut = Fixture::new(format!("cut at {len} of {}", full.len()), full.cut(len)).on(n.eth0);
                t.run(if len > l3_start {
                    // The IP length field now overstates the frame: not
                    // ours, passed untouched.
                    cut.action(XdpAction::Pass).unchanged()
                } else {
                    cut.action_in(NOT_ABORTED)
                });
                // And with the IP length fixed up to the cut (a short but
                // consistent packet), the program still never aborts.
                if len >= l3_start + 40 {
                    t.run(
                        Fixture::new(format!("consistent cut at {len}"), full.cut_consistent(len))
                            .on(n.eth0)
                            .action_in(NOT_ABORTED),
                    );
                }
            }
        }
        t.finish();
        let s = lb.stats().unwrap();
        assert!(s.passed_malformed.packets > 100, "cut frames are counted as malformed: {s:?}");
    });
}

/// The IPv4 header checksum of `h` (its checksum field skipped).
fn ipv4_header_checksum(h: &[u8]) -> u16 {
    let words = h.chunks(2).enumerate().filter(|(i, _)| *i != 5).map(|(_, w)| u16::from_be_bytes([w[0], w[1]]));
    let mut sum: u32 = words.map(u32::from).sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// `f` with its IP length field saying the packet is `ip_len` bytes long
/// (IPv4 total length, header checksum fixed; IPv6 40 + payload length):
/// the bytes after that stay in the frame as trailing bytes.
fn with_ip_len(f: &Frame, ip_len: usize) -> Vec<u8> {
    let l3 = f.l3();
    match f.family() {
        Some(Family::V4) => {
            let mut b = f.with_ipv4_total_len(ip_len as u16);
            let ihl = usize::from(b[l3] & 0xF) * 4;
            let c = ipv4_header_checksum(&b[l3..l3 + ihl]);
            b[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            b
        }
        _ => f.with_ipv6_payload_len((ip_len - 40) as u16),
    }
}

/// Headers after the IP header are read up to the end of the IP packet
/// (IPv4 total length, IPv6 40 + payload length), not of the frame: a
/// packet whose TCP/UDP, ICMP or IPv6 extension header runs into the bytes
/// after it (Ethernet padding, or whatever a sender appended) is malformed,
/// passed untouched and counted as such, so it is neither forwarded nor
/// rewritten in those bytes nor answered. An ICMP error whose quote runs
/// into them quotes no flow: passed as any such ICMP message
/// (`passed_non_vip`). Each frame, whole, is forwarded or answered.
#[test]
fn headers_past_the_ip_packet_are_not_read() {
    in_lb_ns("vtrail", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "headers past the IP packet");
        vip_with(&lb, Vip::tcp(sa(VIP_V4, 80)), VipConfig::new(ForwardingMode::Nat), &backends_v4(3));
        vip_with(&lb, Vip::udp(sa(VIP_V4, 53)), VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(3));
        vip_with(&lb, Vip::tcp(sa(VIP_V6, 80)), VipConfig::new(ForwardingMode::Ipip), &backends_v6(3));
        vip_with(&lb, Vip::udp(sa(VIP_V6, 53)), VipConfig::new(ForwardingMode::Nat), &backends_v6(3));
        let m = n.eth0_mac;
        let to_vip = |src, dst, proto| Pkt::new(src, dst, proto, proto == Protocol::Tcp);
        let tcp4 = to_vip(client(1), sa(VIP_V4, 80), Protocol::Tcp).frame(CLIENT_MAC, m);
        let udp4 = to_vip(client(1), sa(VIP_V4, 53), Protocol::Udp).frame(CLIENT_MAC, m);
        let tcp6 = to_vip(client6(1), sa(VIP_V6, 80), Protocol::Tcp).frame(CLIENT_MAC, m);
        let udp6 = to_vip(client6(1), sa(VIP_V6, 53), Protocol::Udp).frame(CLIENT_MAC, m);
        let dst6 = to_vip(client6(1), sa(VIP_V6, 80), Protocol::Tcp).builder(CLIENT_MAC, m).ext(Ext::DestOpts).build();
        let hbh6 = to_vip(client6(1), sa(VIP_V6, 53), Protocol::Udp).builder(CLIENT_MAC, m).ext(Ext::HopByHop).build();
        let echo = |src: IpAddr, dst: IpAddr| {
            Frame::builder()
                .macs(CLIENT_MAC, m)
                .ip(src, dst)
                .icmp(Icmp::EchoRequest { id: 7, seq: 1 })
                .payload(b"ping")
                .build()
        };
        let echo4 = echo(CLIENT_V4.into(), VIP_V4.into());
        let echo6 = echo(CLIENT_V6.into(), VIP_V6.into());
        let err4 = icmp_error(m, sa(VIP_V4, 80), client(2), Protocol::Tcp);
        let err6 = icmp_error(m, sa(VIP_V6, 80), client6(2), Protocol::Tcp);
        let whole = [&tcp4, &udp4, &tcp6, &udp6, &dst6, &hbh6, &echo4, &echo6, &err4, &err6];
        for (i, f) in whole.into_iter().enumerate() {
            t.run(
                Fixture::new(format!("frame {i}, whole"), f)
                    .on(n.eth0)
                    .action_in(&[XdpAction::Tx, XdpAction::Redirect]),
            );
        }
        let (malformed, non_vip) = ("passed_malformed", "passed_non_vip");
        let dst_len = dst6.span("ext0:destination-options").len;
        let cases = [
            ("IPv4 TCP header cut by the total length", with_ip_len(&tcp4, 20 + 19), malformed),
            ("IPv4 total length of the header alone, TCP", with_ip_len(&tcp4, 20), malformed),
            ("IPv4 UDP header cut", with_ip_len(&udp4, 20 + 7), malformed),
            ("IPv6 TCP header cut by the payload length", with_ip_len(&tcp6, 40 + 19), malformed),
            ("IPv6 UDP header cut", with_ip_len(&udp6, 40 + 7), malformed),
            ("IPv6 payload length 0, TCP: a 40-byte packet", with_ip_len(&tcp6, 40), malformed),
            ("IPv6 destination options header cut", with_ip_len(&dst6, 40 + 4), malformed),
            ("IPv6 TCP header after destination options cut", with_ip_len(&dst6, 40 + dst_len + 19), malformed),
            ("IPv6 payload length 0 with hop-by-hop: a jumbogram claim", with_ip_len(&hbh6, 40), malformed),
            ("ICMP echo header cut", with_ip_len(&echo4, 20 + 7), malformed),
            ("ICMPv6 echo header cut", with_ip_len(&echo6, 40 + 7), malformed),
            ("ICMP error, quoted IPv4 header cut", with_ip_len(&err4, 20 + 8 + 19), non_vip),
            ("ICMP error, quoted ports cut", with_ip_len(&err4, 20 + 8 + 20 + 7), non_vip),
            ("ICMPv6 error, quoted IPv6 header cut", with_ip_len(&err6, 40 + 8 + 39), non_vip),
            ("ICMPv6 error, quoted ports cut", with_ip_len(&err6, 40 + 8 + 40 + 7), non_vip),
        ];
        for (what, f, counter) in &cases {
            t.run(Fixture::new(*what, f).on(n.eth0).action(XdpAction::Pass).unchanged().counts(&[counter]));
        }
        t.finish();
    });
}
