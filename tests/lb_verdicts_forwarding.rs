//! The load balancer's forwarding modes as fixture tables, through
//! BPF_PROG_TEST_RUN: L2 DSR, IPIP (4in4, 6in6, 4in6) and what Decap makes
//! of it, NAT both ways, and `backend_for` against the kernel.
//!
//! Every test runs the real program in a VerdictNet (routes and permanent
//! neighbours, so `bpf_fib_lookup` resolves real next hops) on frames
//! "received" on the client side (eth0) or the backend side (eth1). Each
//! row expects the action and the whole output frame, built with the test
//! kit from what the library predicts (`backend_for`, `ipip_source_for`),
//! so every field and checksum is compared; a failing table lists every
//! failing row with the fields that differ. Needs root; fails (does not
//! skip) without it.

mod common {
    pub mod lb;
}

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::lb::*;
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::{Ext, Frame, Icmp};
use xdpguard::testing::lb_topology::*;
use xdpguard::{Decap, Flow, ForwardingMode, HashInput, Protocol, Vip, VipConfig, XdpAction};

#[test]
fn dsr_rewrites_only_the_ethernet_header() {
    in_lb_ns("vdsr", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "L2 DSR");
        for (vip_addr, backends, proto) in [
            (IpAddr::V4(VIP_V4), backends_v4(3), Protocol::Tcp),
            (IpAddr::V4(VIP_V4), backends_v4(3), Protocol::Udp),
            (IpAddr::V6(VIP_V6), backends_v6(3), Protocol::Tcp),
            (IpAddr::V6(VIP_V6), backends_v6(3), Protocol::Udp),
        ] {
            let vip = Vip::new(sa(vip_addr, 80), proto);
            vip_with(&lb, vip, VipConfig::new(ForwardingMode::L2Dsr), &backends);
            let src = if vip_addr.is_ipv4() { client(1) } else { client6(1) };
            let input = frame(n.eth0_mac, src, addr_port(&vip), proto, true, PAYLOAD);
            let chosen = lb.backend_for(&vip, &Flow::new(src, addr_port(&vip), proto)).unwrap().unwrap();
            // Out of eth1, from its MAC to the predicted backend's; L3 and up untouched.
            let want = input.with_macs(n.eth1_mac, backend_mac(backend_index(chosen)));
            t.run(
                Fixture::new(format!("{vip} from {src}"), &input).on(n.eth0).action(XdpAction::Redirect).output(want),
            );
        }
        t.finish();
        let s = lb.stats().unwrap();
        assert_eq!(s.redirected.packets, 4);
        assert_eq!(s.dropped().packets, 0);
    });
}

#[test]
fn ipip_encapsulates_in_all_three_combinations() {
    in_lb_ns("vipip", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "IPIP");
        let cases = [
            ("4in4", IpAddr::V4(VIP_V4), backends_v4(3)),
            ("6in6", IpAddr::V6(VIP_V6), backends_v6(3)),
            ("4in6", IpAddr::V4(VIP2_V4), backends_v6(3)),
        ];
        for (name, vip_addr, backends) in cases {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let vip = Vip::new(sa(vip_addr, 80), proto);
                vip_with(&lb, vip, VipConfig::new(ForwardingMode::Ipip), &backends);
                for i in 0..20u16 {
                    let src = if vip_addr.is_ipv4() { client(i) } else { client6(i) };
                    let flow = Flow::new(src, addr_port(&vip), proto);
                    let input = frame(n.eth0_mac, src, addr_port(&vip), proto, true, PAYLOAD);
                    // The outer destination is backend_for's, the outer
                    // source ipip_source_for's (from the flow hash).
                    let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
                    let osrc = lb.ipip_source_for(&vip, &flow, chosen.ip).unwrap().unwrap();
                    let prefix: ipnetwork::IpNetwork =
                        if osrc.is_ipv4() { IPIP_SRC_V4.parse().unwrap() } else { IPIP_SRC_V6.parse().unwrap() };
                    assert!(prefix.contains(osrc), "{osrc} inside {prefix}");
                    let want = ipip(&input, osrc, chosen.ip, n.eth1_mac, backend_mac(backend_index(chosen)));
                    t.run(
                        Fixture::new(format!("{name} {proto} from {src}"), &input)
                            .on(n.eth0)
                            .action(XdpAction::Redirect)
                            .output(want),
                    );
                }
            }
        }
        t.finish();
        // The outer sources spread (RSS at the backends needs that).
        let vip = Vip::tcp(sa(VIP_V4, 80));
        let srcs: std::collections::HashSet<IpAddr> = (0..64u16)
            .map(|i| {
                let f = Flow::new(client(i), addr_port(&vip), Protocol::Tcp);
                let b = lb.backend_for(&vip, &f).unwrap().unwrap();
                lb.ipip_source_for(&vip, &f, b.ip).unwrap().unwrap()
            })
            .collect();
        assert!(srcs.len() > 40, "64 flows used only {} outer sources", srcs.len());
    });
}

/// The outer header's per-packet fields, with values written out rather
/// than derived by the test kit: the outer IPv4 identification (RFC 6864:
/// routers past a narrower link fragment the tunnel packets, DF being
/// clear, and reassembly keys on it) is the inner ID, or for an inner ID of
/// 0 the XOR of the transport header's bytes 4-5 and 6-7 (TCP: the
/// sequence number); the outer DSCP and ECN are the inner ones in all
/// three combinations (IPv4 TOS, IPv6 traffic class).
#[test]
fn ipip_outer_headers_take_the_inner_id_and_traffic_class() {
    in_lb_ns("vipid", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "IPIP outer ID and traffic class");
        for (name, vip_addr, backends, tos, id, outer_id) in [
            // DSCP EF (46) and ECT(0); the inner ID kept.
            ("4in4", IpAddr::V4(VIP_V4), backends_v4(3), 0xBAu8, 0x1234u16, Some(0x1234u16)),
            // Inner ID 0: sequence 1000 = 0x000003E8, halves XORed.
            ("4in4", IpAddr::V4(VIP_V4), backends_v4(3), 0x01, 0, Some(0x03E8)),
            // DSCP EF and ECT(1).
            ("6in6", IpAddr::V6(VIP_V6), backends_v6(3), 0xB9, 0, None),
            // DSCP AF11 (10) and ECT(0).
            ("4in6", IpAddr::V4(VIP2_V4), backends_v6(3), 0x2A, 0x4321, None),
        ] {
            let vip = Vip::new(sa(vip_addr, 80), Protocol::Tcp);
            vip_with(&lb, vip, VipConfig::new(ForwardingMode::Ipip), &backends);
            let src = if vip_addr.is_ipv4() { client(1) } else { client6(1) };
            let flow = Flow::new(src, addr_port(&vip), Protocol::Tcp);
            let b = Pkt::new(src, addr_port(&vip), Protocol::Tcp, true).builder(CLIENT_MAC, n.eth0_mac).tos(tos);
            let input = if vip_addr.is_ipv4() { b.id(id).build() } else { b.build() };
            let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
            let osrc = lb.ipip_source_for(&vip, &flow, chosen.ip).unwrap().unwrap();
            let b = Frame::builder()
                .macs(n.eth1_mac, backend_mac(backend_index(chosen)))
                .ip(osrc, chosen.ip)
                .ttl(64)
                .tos(tos);
            let b = match (osrc, outer_id) {
                (IpAddr::V4(_), Some(oid)) => b.id(oid).df(false),
                (IpAddr::V6(s), _) => {
                    b.flow_label(u32::from_be_bytes(s.octets()[12..16].try_into().unwrap()) & 0xF_FFFF)
                }
                _ => unreachable!("IPv4 outer rows give the ID"),
            };
            let want = b.ip_payload(&input[14..]).build();
            t.run(
                Fixture::new(format!("{name}: inner TOS/TC {tos:#04x}, ID {id:#06x}"), &input)
                    .on(n.eth0)
                    .action(XdpAction::Redirect)
                    .output(want),
            );
            lb.remove_vip(&vip).unwrap();
        }
        t.finish();
    });
}

/// RFC 6040 at the decapsulator: an outer CE mark (a congested router on
/// the tunnel's path) is copied into an ECT(0) or ECT(1) inner packet, the
/// inner IPv4 checksum updated (the expected frames are built with the
/// checksum computed afresh, so an incremental update that is wrong
/// fails); an inner Not-ECT packet under an outer CE is left untouched for
/// the stack (whose tunnel driver drops it, as RFC 6040 says); other
/// outer codepoints leave the inner packet as it is.
#[test]
fn decap_copies_an_outer_ce_mark_into_ect_inner_packets() {
    let (local4, local6) = (backend_v4(1), backend_v6(1));
    let decap = Decap::builder().local(IpAddr::V4(local4)).local(IpAddr::V6(local6)).load().unwrap();
    let mut t = FixtureTable::new(&decap, "decap: ECN");
    let macs = (CLIENT_MAC, backend_mac(1));
    let src4 = IpAddr::V4(LB_BACK_V4);
    let src6 = IpAddr::V6(LB_BACK_V6);
    let (to4, to6) = (IpAddr::V4(local4), IpAddr::V6(local6));
    let inner = |v6: bool, tos: u8| {
        let (s, d) = if v6 { (client6(1), sa(VIP_V6, 80)) } else { (client(1), sa(VIP_V4, 80)) };
        let b = Pkt::new(s, d, Protocol::Tcp, false).builder(macs.0, macs.1).tos(tos);
        if v6 {
            b.build()
        } else {
            b.id(0x5151).build()
        }
    };
    let tunnel = |src: IpAddr, dst: IpAddr, tos: u8, ip_payload: &[u8]| {
        Frame::builder().macs(macs.0, macs.1).ip(src, dst).ttl(64).tos(tos).ip_payload(ip_payload).build()
    };
    let (mut decapsulated, mut passed) = (0, 0);
    for (name, src, dst, v6) in [("4in4", src4, to4, false), ("6in6", src6, to6, true), ("4in6", src6, to6, false)] {
        // (outer TOS/TC, inner before, inner after); DSCP AF41 (34) on the inner.
        for (outer, before, after) in [
            (0x03u8, 0x88u8 | 2, Some(0x88u8 | 3)), // CE over ECT(0): CE
            (0x03, 0x88 | 1, Some(0x88 | 3)),       // CE over ECT(1): CE
            (0x03, 0x88 | 3, Some(0x88 | 3)),       // CE over CE: as it was
            (0x02, 0x88 | 1, Some(0x88 | 1)),       // ECT(0) over ECT(1): as it was
            (0x01, 0x88, Some(0x88)),               // ECT(1) over Not-ECT: as it was
            (0xB8 | 3, 0x88, None),                 // CE over Not-ECT: left to the stack
        ] {
            let client = inner(v6, before);
            let f = tunnel(src, dst, outer, client.ip_packet());
            let what = format!("{name}: outer {outer:#04x} over inner {before:#04x}");
            match after {
                Some(after) => {
                    let want = [&f[..12], &inner(v6, after)[12..]].concat();
                    t.run(Fixture::new(what, &f).action(XdpAction::Pass).output(want).counts(&["decapsulated"]));
                    decapsulated += 1;
                }
                None => {
                    t.run(Fixture::new(what, &f).action(XdpAction::Pass).unchanged().counts(&["passed"]));
                    passed += 1;
                }
            }
        }
    }
    t.finish();
    let s = decap.stats().unwrap();
    assert_eq!((s.decapsulated.packets, s.passed.packets), (decapsulated, passed));
    assert_eq!(passed, 3);
}

#[test]
fn nat_rewrites_destination_and_translates_replies() {
    in_lb_ns("vnat", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "NAT");
        for (vip_addr, proto, backends) in [
            (IpAddr::V4(VIP_V4), Protocol::Tcp, backends_v4(3)),
            (IpAddr::V4(VIP_V4), Protocol::Udp, backends_v4(3)),
            (IpAddr::V6(VIP_V6), Protocol::Tcp, backends_v6(3)),
            (IpAddr::V6(VIP_V6), Protocol::Udp, backends_v6(3)),
        ] {
            let vip = Vip::new(sa(vip_addr, 80), proto);
            lb.add_vip(vip, VipConfig::new(ForwardingMode::Nat)).unwrap();
            // Backend 1 keeps the port, 2 and 3 listen on 8080.
            lb.batch(&vip)
                .add(backends[0], 1)
                .add(sa(backends[1], 8080), 1)
                .add(sa(backends[2], 8080), 1)
                .apply()
                .unwrap();
            for i in 0..24u16 {
                let src = if vip_addr.is_ipv4() { client(i) } else { client6(i) };
                let flow = Flow::new(src, addr_port(&vip), proto);
                let sent = Pkt::new(src, addr_port(&vip), proto, true);
                let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
                let at_backend = sa(chosen.ip, chosen.port.unwrap_or(80));
                // The client's address and port kept, the destination the
                // backend's, one routed hop (TTL 63), checksums updated.
                let out = sent.to(at_backend);
                t.run(
                    Fixture::new(format!("{vip} from {src}"), sent.frame(CLIENT_MAC, n.eth0_mac))
                        .on(n.eth0)
                        .action(XdpAction::Redirect)
                        .output(out.frame(n.eth1_mac, backend_mac(backend_index(chosen)))),
                );
                // The backend's reply, received on eth1, leaves towards the
                // client from the VIP.
                let reply = Pkt::new(at_backend, src, proto, false);
                t.run(
                    Fixture::new(format!("{vip}: the reply to {src}"), reply.frame(backend_mac(1), n.eth1_mac))
                        .on(n.eth1)
                        .action(XdpAction::Redirect)
                        .output(reply.from(addr_port(&vip)).frame(n.eth0_mac, CLIENT_MAC)),
                );
            }
        }
        let s = lb.stats().unwrap();
        assert_eq!(s.nat_replies.packets, 4 * 24);
        // A reply nobody asked for is not translated.
        let stray = frame(n.eth1_mac, sa(backend_v4(1), 80), client(999), Protocol::Tcp, false, PAYLOAD);
        t.run(
            Fixture::new("a stray reply", &stray)
                .on(n.eth1)
                .action(XdpAction::Pass)
                .unchanged()
                .counts(&["passed_non_vip"]),
        );
        t.finish();
    });
}

/// backend_for agrees with the kernel for hundreds of flows, per mode and
/// family, with unequal weights; and the IPv6 IPIP outer source, which
/// carries 64 bits of the flow hash, proves the hashes are the same.
#[test]
fn backend_for_agrees_with_the_kernel() {
    in_lb_ns("vagree", 5, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "backend_for");
        for (mode, vip_addr, backends) in [
            (ForwardingMode::L2Dsr, IpAddr::V4(VIP_V4), backends_v4(5)),
            (ForwardingMode::Ipip, IpAddr::V6(VIP_V6), backends_v6(5)),
            (ForwardingMode::Nat, IpAddr::V4(VIP2_V4), backends_v4(5)),
        ] {
            for (proto, hash) in [(Protocol::Tcp, HashInput::FiveTuple), (Protocol::Udp, HashInput::SourceAddress)] {
                let vip = Vip::new(sa(vip_addr, 443), proto);
                lb.add_vip(vip, VipConfig::new(mode).hash(hash).table_size(16381)).unwrap();
                let mut batch = lb.batch(&vip);
                for (i, b) in backends.iter().enumerate() {
                    batch = batch.add(*b, 1 + i as u32);
                }
                batch.apply().unwrap();
                for i in 0..150u32 {
                    let src_ip: IpAddr = if vip_addr.is_ipv4() {
                        Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1).into()
                    } else {
                        Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, (i >> 8) as u16, i as u16 + 1).into()
                    };
                    let src = sa(src_ip, 1024 + (i * 7919 % 60000) as u16);
                    let flow = Flow::new(src, sa(vip_addr, 443), proto);
                    let input = frame(n.eth0_mac, src, sa(vip_addr, 443), proto, true, PAYLOAD);
                    let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
                    let next_hop = backend_mac(backend_index(chosen));
                    let want = match mode {
                        ForwardingMode::L2Dsr => input.with_macs(n.eth1_mac, next_hop),
                        ForwardingMode::Ipip => {
                            let osrc = lb.ipip_source_for(&vip, &flow, chosen.ip).unwrap().unwrap();
                            ipip(&input, osrc, chosen.ip, n.eth1_mac, next_hop).to_vec()
                        }
                        _ => Pkt::new(src, sa(vip_addr, 443), proto, true)
                            .to(sa(chosen.ip, 443))
                            .frame(n.eth1_mac, next_hop)
                            .to_vec(),
                    };
                    // Only a missing neighbour may pass (none here).
                    t.run(
                        Fixture::new(format!("{mode} {vip} {flow}"), &input)
                            .on(n.eth0)
                            .action(XdpAction::Redirect)
                            .output(want),
                    );
                }
            }
        }
        assert_eq!(t.report().rows, 900);
        t.finish();
    });
}

/// Review finding 5: fragments carry no ports and are hashed without them,
/// so under an all-ports VIP's default hash (the source address:
/// `VipConfig::for_vip`) a flow's fragment reaches the backend its whole
/// packets reach, IPv4 and IPv6; under a five-tuple hash it would not (the
/// control below shows the test can tell).
#[test]
fn all_ports_vip_fragments_follow_their_flows_whole_packets() {
    in_lb_ns("vfragw", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "all-ports fragments and whole packets");
        let any4 = Vip::all_ports(IpAddr::V4(VIP2_V4), Protocol::Udp);
        let any6 = Vip::all_ports(IpAddr::V6(VIP2_V6), Protocol::Udp);
        for (vip, backends) in [(any4, backends_v4(3)), (any6, backends_v6(3))] {
            let config = VipConfig::for_vip(&vip, ForwardingMode::L2Dsr);
            assert_eq!(config.hash, HashInput::SourceAddress, "the all-ports default");
            vip_with(&lb, vip, config, &backends);
        }
        assert_eq!(VipConfig::for_vip(&Vip::udp(sa(VIP_V4, 53)), ForwardingMode::L2Dsr).hash, HashInput::FiveTuple);
        let mut reached = std::collections::BTreeSet::new();
        for i in 1..=24u16 {
            let v6 = i % 2 == 0;
            let (vip, src) = if v6 {
                (any6, sa(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x100 + i), 40000 + i))
            } else {
                (any4, sa(Ipv4Addr::new(192, 0, 2, 100 + i as u8), 40000 + i))
            };
            let dst = sa(vip.addr, 1000 + i * 37);
            let flow = Flow::new(src, dst, Protocol::Udp);
            let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
            assert_eq!(lb.backend_for(&vip, &flow.fragment()).unwrap(), Some(chosen), "{flow}");
            reached.insert(chosen);
            let mac = backend_mac(backend_index(chosen));
            let whole = frame(n.eth0_mac, src, dst, Protocol::Udp, false, PAYLOAD);
            let b = Frame::builder().macs(CLIENT_MAC, n.eth0_mac);
            // A later fragment of a datagram of the same flow (no UDP header).
            let fragment = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    b.ipv4(s, d).id(0x77).fragment(185, false).protocol(17).payload(&[0x33; 40]).build()
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => b
                    .ipv6(s, d)
                    .ext(Ext::Fragment { offset: 185, more: false, id: 0x77 })
                    .protocol(17)
                    .payload(&[0x33; 40])
                    .build(),
                _ => unreachable!(),
            };
            for (what, f) in [("whole datagram", &whole), ("its fragment", &fragment)] {
                t.run(
                    Fixture::new(format!("{flow}: {what}"), f)
                        .on(n.eth0)
                        .action(XdpAction::Redirect)
                        .output(f.with_macs(n.eth1_mac, mac)),
                );
            }
        }
        t.finish();
        assert!(reached.len() >= 4, "sources reach several backends of both VIPs: {reached:?}");
        assert_eq!(lb.stats().unwrap().fragments_forwarded.packets, 24);

        // Control: under a five-tuple hash the two disagree for most flows.
        let five = Vip::all_ports(IpAddr::V4(VIP_V4), Protocol::Udp);
        vip_with(&lb, five, VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(3));
        let split = (1..=24u16)
            .filter(|i| {
                let flow = Flow::new(
                    sa(Ipv4Addr::new(192, 0, 2, 100 + *i as u8), 40000 + i),
                    sa(VIP_V4, 1000 + i),
                    Protocol::Udp,
                );
                lb.backend_for(&five, &flow).unwrap() != lb.backend_for(&five, &flow.fragment()).unwrap()
            })
            .count();
        assert!(split >= 6, "a five-tuple hash splits flows from their fragments: {split} of 24");
    });
}

#[test]
fn decap_strips_what_the_lb_adds() {
    in_lb_ns("vdecap", 3, |n| {
        let lb = lb();
        let decap = Decap::builder()
            .local(IpAddr::V4(backend_v4(1)))
            .local(IpAddr::V4(backend_v4(2)))
            .local(IpAddr::V4(backend_v4(3)))
            .local(IpAddr::V6(backend_v6(1)))
            .local(IpAddr::V6(backend_v6(2)))
            .local(IpAddr::V6(backend_v6(3)))
            .load()
            .unwrap();
        let mut lbt = FixtureTable::new(&lb, "IPIP");
        let mut dt = FixtureTable::new(&decap, "decap");
        let mut decapsulated = 0;
        for (vip_addr, backends) in [
            (IpAddr::V4(VIP_V4), backends_v4(3)),
            (IpAddr::V6(VIP_V6), backends_v6(3)),
            (IpAddr::V4(VIP2_V4), backends_v6(3)),
        ] {
            let vip = Vip::tcp(sa(vip_addr, 80));
            vip_with(&lb, vip, VipConfig::new(ForwardingMode::Ipip), &backends);
            for i in 0..5 {
                let src = if vip_addr.is_ipv4() { client(i) } else { client6(i) };
                let input = frame(n.eth0_mac, src, addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
                let Some(enc) =
                    lbt.run(Fixture::new(format!("{vip} from {src}"), &input).on(n.eth0).action(XdpAction::Redirect))
                else {
                    continue;
                };
                // MACs kept, then exactly the client's packet again.
                let mut want = enc.frame[..12].to_vec();
                want.extend_from_slice(&input[12..]);
                dt.run(
                    Fixture::new(format!("{vip} from {src}, encapsulated"), &enc.frame)
                        .action(XdpAction::Pass)
                        .output(want)
                        .counts(&["decapsulated"]),
                );
                decapsulated += 1;
            }
        }
        // Not for a local endpoint, or not a tunnel: untouched.
        decap.remove_local(IpAddr::V4(backend_v4(1))).unwrap();
        // Removed already: refused, naming what it has.
        let again = decap.remove_local(IpAddr::V4(backend_v4(1))).unwrap_err();
        assert!(
            matches!(&again, xdpguard::LbError::DecapLocalNotFound { addr, locals }
                if *addr == IpAddr::V4(backend_v4(1)) && *locals == decap.locals()),
            "{again:?}"
        );
        let vip = Vip::tcp(sa(VIP_V4, 80));
        let src = (0..100).map(client).find(|c| {
            lb.backend_for(&vip, &Flow::new(*c, addr_port(&vip), Protocol::Tcp)).unwrap().unwrap().ip
                == IpAddr::V4(backend_v4(1))
        });
        let input = frame(n.eth0_mac, src.unwrap(), addr_port(&vip), Protocol::Tcp, true, PAYLOAD);
        let enc = lb.test_run_on(&input, n.eth0).unwrap();
        dt.run(
            Fixture::new("a tunnel to a removed local", &enc.frame)
                .action(XdpAction::Pass)
                .unchanged()
                .counts(&["passed"]),
        );
        dt.run(Fixture::new("not a tunnel", &input).action(XdpAction::Pass).unchanged().counts(&["passed"]));
        lbt.finish();
        dt.finish();
        let s = decap.stats().unwrap();
        assert_eq!(s.decapsulated.packets, decapsulated);
        assert_eq!(s.passed.packets, 2);
    });
}

/// Decap strips an outer header only when the outer packet holds a whole
/// inner one: the inner header within the outer payload, and the inner
/// packet's own length too. Otherwise the frame passes untouched (counted
/// as passed) and the stack judges it as any tunnel packet. Reported by a
/// fuzzer: the outer length was not checked, so bytes after the outer
/// packet (Ethernet padding, or anything a sender appends) reached the
/// stack as part of the inner packet. An inner packet shorter than the
/// outer payload is whole (the stack trims the rest, as its tunnel drivers
/// do), and bytes after the outer packet stay after the inner one.
#[test]
fn decap_strips_only_whole_inner_packets() {
    let (local4, local6) = (backend_v4(1), backend_v6(1));
    let decap = Decap::builder().local(IpAddr::V4(local4)).local(IpAddr::V6(local6)).load().unwrap();
    let mut t = FixtureTable::new(&decap, "decap: outer and inner lengths");
    let macs = (CLIENT_MAC, backend_mac(1));
    let client4 = Pkt::new(client(1), sa(VIP_V4, 80), Protocol::Tcp, false).frame(macs.0, macs.1);
    let client6 = Pkt::new(client6(1), sa(VIP_V6, 80), Protocol::Tcp, false).frame(macs.0, macs.1);
    let src4 = IpAddr::V4(LB_BACK_V4);
    let src6 = IpAddr::V6(LB_BACK_V6);
    let (to4, to6) = (IpAddr::V4(local4), IpAddr::V6(local6));
    // An outer header from src to dst around `ip_payload` (its first nibble
    // picks protocol 4 or 41), then `trailer`.
    let tunnel = |src: IpAddr, dst: IpAddr, ip_payload: &[u8], trailer: &[u8]| {
        Frame::builder().macs(macs.0, macs.1).ip(src, dst).ttl(64).ip_payload(ip_payload).trailer(trailer).build()
    };
    // What a decapsulated tunnel becomes: its MACs, the client's frame from
    // its EtherType on, then `after`.
    let stripped = |tunnel: &[u8], client: &Frame, after: &[u8]| [&tunnel[..12], &client[12..], after].concat();

    let mut whole = 0;
    for (name, src, dst, client) in
        [("4in4", src4, to4, &client4), ("6in6", src6, to6, &client6), ("4in6", src6, to6, &client4)]
    {
        let inner = client.ip_packet();
        let f = tunnel(src, dst, inner, &[]);
        t.run(
            Fixture::new(format!("{name}: whole"), &f)
                .action(XdpAction::Pass)
                .output(stripped(&f, client, &[]))
                .counts(&["decapsulated"]),
        );
        let f = tunnel(src, dst, inner, &[0xAA; 6]);
        t.run(
            Fixture::new(format!("{name}: 6 bytes after the outer packet stay after the inner one"), &f)
                .action(XdpAction::Pass)
                .output(stripped(&f, client, &[0xAA; 6]))
                .counts(&["decapsulated"]),
        );
        let f = tunnel(src, dst, &[inner, &[0xBB; 4]].concat(), &[]);
        t.run(
            Fixture::new(format!("{name}: 4 bytes after the inner packet inside the outer one"), &f)
                .action(XdpAction::Pass)
                .output(stripped(&f, client, &[0xBB; 4]))
                .counts(&["decapsulated"]),
        );
        whole += 3;
    }

    let untouched = |t: &mut FixtureTable<'_, Decap>, what: String, frame: &[u8]| {
        t.run(Fixture::new(what, frame).action(XdpAction::Pass).unchanged().counts(&["passed"]));
    };
    let inner4 = client4.ip_packet();
    let inner6 = client6.ip_packet();
    let len4 = inner4.len() as u16;
    let len6 = inner6.len() as u16;
    // IPv4 outer: its total length against the inner packet and the frame.
    let f = tunnel(src4, to4, inner4, &[]);
    untouched(
        &mut t,
        "4in4: outer total length 1 byte short of the inner packet".into(),
        &f.with_ipv4_total_len(20 + len4 - 1),
    );
    let f = tunnel(src4, to4, inner4, &[]);
    untouched(
        &mut t,
        "4in4: outer total length 20, the inner packet after the outer one".into(),
        &f.with_ipv4_total_len(20),
    );
    untouched(&mut t, "4in4: outer total length past the frame".into(), &f.with_ipv4_total_len(20 + len4 + 1));
    untouched(&mut t, "4in4: outer total length below its header".into(), &f.with_ipv4_total_len(19));
    // The inner packet against the outer payload.
    let long4 = client4.with_ipv4_total_len(len4 + 1);
    untouched(
        &mut t,
        "4in4: inner total length 1 byte past the outer payload".into(),
        &tunnel(src4, to4, &long4[14..], &[]),
    );
    let short4 = client4.with_ipv4_total_len(19);
    untouched(&mut t, "4in4: inner total length below its header".into(), &tunnel(src4, to4, &short4[14..], &[]));
    untouched(
        &mut t,
        "4in4: an outer payload of 19 bytes (no whole IPv4 header)".into(),
        &tunnel(src4, to4, &inner4[..19], &[]),
    );
    let v6_in_4 = Frame::builder().macs(macs.0, macs.1).ip(src4, to4).ttl(64).protocol(4).payload(inner6).build();
    untouched(&mut t, "4in4: protocol 4 carrying an IPv6 packet".into(), &v6_in_4);
    // IPv6 outer: its payload length against the inner packet and the frame.
    for (name, client, inner, len) in [("6in6", &client6, inner6, len6), ("4in6", &client4, inner4, len4)] {
        let f = tunnel(src6, to6, inner, &[]);
        untouched(
            &mut t,
            format!("{name}: outer payload length 1 byte short of the inner packet"),
            &f.with_ipv6_payload_len(len - 1),
        );
        untouched(
            &mut t,
            format!("{name}: outer payload length 0, the inner packet after the outer one"),
            &f.with_ipv6_payload_len(0),
        );
        untouched(&mut t, format!("{name}: outer payload length past the frame"), &f.with_ipv6_payload_len(len + 1));
        let long = if client.family() == Some(xdpguard::testing::frame::Family::V4) {
            client.with_ipv4_total_len(len + 1)
        } else {
            client.with_ipv6_payload_len(len - 40 + 1)
        };
        untouched(
            &mut t,
            format!("{name}: inner length 1 byte past the outer payload"),
            &tunnel(src6, to6, &long[14..], &[]),
        );
    }
    untouched(
        &mut t,
        "6in6: an outer payload of 39 bytes (no whole IPv6 header)".into(),
        &tunnel(src6, to6, &inner6[..39], &[]),
    );
    let v4_in_6 = Frame::builder().macs(macs.0, macs.1).ip(src6, to6).ttl(64).protocol(41).payload(inner4).build();
    untouched(&mut t, "6in6: next header 41 carrying an IPv4 packet".into(), &v4_in_6);
    let passed = t.report().rows as u64 - whole;
    t.finish();

    let s = decap.stats().unwrap();
    assert_eq!((s.decapsulated.packets, s.passed.packets), (whole, passed));
    assert_eq!(passed, 18);
}

/// Ethernet pads frames to 60 bytes: a 40-byte IPv4 TCP ACK arrives with 6
/// bytes after its IP packet. It is forwarded, rewritten or answered as
/// any packet, and the padding goes along untouched after it (receivers
/// read the IP length, and a NIC pads a short frame again anyway): L2 DSR
/// and NAT keep the frame's length; IPIP's outer length comes from the
/// inner IP length, so the padding sits after the outer packet, outside
/// both. Other trailing bytes likewise (10 after an IPv6 UDP packet here).
#[test]
fn ethernet_padding_stays_after_the_packet() {
    in_lb_ns("vpad", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "Ethernet padding");
        let vip = |port| Vip::tcp(sa(VIP_V4, port));
        vip_with(&lb, vip(80), VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(3));
        vip_with(&lb, vip(81), VipConfig::new(ForwardingMode::Ipip), &backends_v4(3));
        vip_with(&lb, vip(82), VipConfig::new(ForwardingMode::Ipip), &backends_v6(3));
        lb.add_vip(vip(83), VipConfig::new(ForwardingMode::Nat)).unwrap();
        lb.batch(&vip(83)).add(sa(backend_v4(1), 8080), 1).add(sa(backend_v4(2), 8080), 1).apply().unwrap();
        let udp6 = Vip::udp(sa(VIP_V6, 53));
        vip_with(&lb, udp6, VipConfig::new(ForwardingMode::Ipip), &backends_v6(3));
        let pad = [0xAA; 6];
        // A bare ACK (no payload) and the same frame padded to 60 bytes.
        let ack = |port| Pkt::new(client(1), sa(VIP_V4, port), Protocol::Tcp, false).payload(&[]);
        let padded = |p: &Pkt, macs: ([u8; 6], [u8; 6])| p.builder(macs.0, macs.1).trailer(&pad).build();
        let with_pad = |f: &[u8]| [f, &pad[..]].concat();
        let chosen =
            |port, src| lb.backend_for(&vip(port), &Flow::new(src, sa(VIP_V4, port), Protocol::Tcp)).unwrap().unwrap();

        let input = padded(&ack(80), (CLIENT_MAC, n.eth0_mac));
        assert_eq!(input.len(), 60);
        let b = chosen(80, client(1));
        let want = input.with_macs(n.eth1_mac, backend_mac(backend_index(b)));
        t.run(
            Fixture::new("DSR: the packet and its padding as received", &input)
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(want),
        );

        for port in [81, 82] {
            let sent = ack(port);
            let input = padded(&sent, (CLIENT_MAC, n.eth0_mac));
            let flow = Flow::new(client(1), sa(VIP_V4, port), Protocol::Tcp);
            let b = chosen(port, client(1));
            let osrc = lb.ipip_source_for(&vip(port), &flow, b.ip).unwrap().unwrap();
            // The unpadded packet encapsulated, then the padding.
            let tunnel =
                ipip(&sent.frame(CLIENT_MAC, n.eth0_mac), osrc, b.ip, n.eth1_mac, backend_mac(backend_index(b)));
            t.run(
                Fixture::new(
                    format!("IPIP to {}: the outer length from the inner IP length, the padding after it", b.ip),
                    &input,
                )
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(with_pad(&tunnel)),
            );
        }

        let sent = ack(83);
        let b = chosen(83, client(1));
        let at_backend = sa(b.ip, 8080);
        let want = padded(&sent.to(at_backend), (n.eth1_mac, backend_mac(backend_index(b))));
        t.run(
            Fixture::new("NAT: translated, the padding untouched", padded(&sent, (CLIENT_MAC, n.eth0_mac)))
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output(want),
        );
        let reply = Pkt::new(at_backend, client(1), Protocol::Tcp, false).payload(&[]);
        let want = padded(&reply.from(sa(VIP_V4, 83)), (n.eth0_mac, CLIENT_MAC));
        t.run(
            Fixture::new(
                "NAT reply: from the VIP, the padding untouched",
                padded(&reply, (backend_mac(1), n.eth1_mac)),
            )
            .on(n.eth1)
            .action(XdpAction::Redirect)
            .output(want),
        );

        // An echo request, 42 bytes, padded to 60: answered, padding kept.
        let echo = |macs: ([u8; 6], [u8; 6]), src: IpAddr, dst: IpAddr, icmp| {
            Frame::builder().macs(macs.0, macs.1).ip(src, dst).icmp(icmp).trailer(&[0xAA; 18]).build()
        };
        let request =
            echo((CLIENT_MAC, n.eth0_mac), CLIENT_V4.into(), VIP_V4.into(), Icmp::EchoRequest { id: 7, seq: 1 });
        let answer = echo((n.eth0_mac, CLIENT_MAC), VIP_V4.into(), CLIENT_V4.into(), Icmp::EchoReply { id: 7, seq: 1 });
        assert_eq!(request.len(), 60);
        t.run(
            Fixture::new("echo: answered, the padding untouched", &request)
                .on(n.eth0)
                .action(XdpAction::Tx)
                .output(answer)
                .counts(&["echo_answered"]),
        );

        // IPv6 UDP with 10 trailing bytes, IPIP 6in6.
        let sent = Pkt::new(client6(1), sa(VIP_V6, 53), Protocol::Udp, false);
        let input = sent.builder(CLIENT_MAC, n.eth0_mac).trailer(&[0xBB; 10]).build();
        let flow = Flow::new(client6(1), sa(VIP_V6, 53), Protocol::Udp);
        let b = lb.backend_for(&udp6, &flow).unwrap().unwrap();
        let osrc = lb.ipip_source_for(&udp6, &flow, b.ip).unwrap().unwrap();
        let tunnel = ipip(&sent.frame(CLIENT_MAC, n.eth0_mac), osrc, b.ip, n.eth1_mac, backend_mac(backend_index(b)));
        t.run(
            Fixture::new("6in6: the trailing bytes after the outer packet", &input)
                .on(n.eth0)
                .action(XdpAction::Redirect)
                .output([&tunnel[..], &[0xBB; 10]].concat()),
        );
        t.finish();
        assert_eq!(lb.stats().unwrap().passed_malformed.packets, 0);
    });
}
