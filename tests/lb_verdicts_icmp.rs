//! ICMP through the load balancer as fixture tables, through
//! BPF_PROG_TEST_RUN: errors about a VIP flow reach the flow's backend in
//! every mode, errors from NAT backends reach the client translated, a
//! packet too big after encapsulation is answered with the MTU left, and a
//! "too big" answer is never cached as a next hop. Needs root; fails (does
//! not skip) without it.

mod common {
    pub mod lb;
}

use std::net::{IpAddr, SocketAddr};

use common::lb::*;
use xdpguard::testing::etherparse::{Icmpv4Header, Icmpv6Header, Ipv4Header, Ipv6Header};
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::{Frame, Icmp};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{Flow, ForwardingMode, Protocol, Vip, VipConfig, XdpAction};

/// An ICMP error's IP packet, its checksums checked: (outer source, outer
/// destination, outer TTL, quoted source, quoted destination, the quoted
/// L4 checksum field).
fn read_icmp_error(pkt: &[u8], proto: Protocol) -> Result<(IpAddr, IpAddr, u8, SocketAddr, SocketAddr, u16), String> {
    let (osrc, odst, ttl, quoted) = match pkt[0] >> 4 {
        4 => {
            let (ip, rest) = Ipv4Header::from_slice(pkt).map_err(|e| e.to_string())?;
            if ip.header_checksum != ip.calc_header_checksum() {
                return Err("outer IPv4 checksum".into());
            }
            let (h, payload) = Icmpv4Header::from_slice(rest).map_err(|e| e.to_string())?;
            if h.checksum != Icmpv4Header::with_checksum(h.icmp_type.clone(), payload).checksum {
                return Err("ICMP checksum".into());
            }
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), ip.time_to_live, payload)
        }
        _ => {
            let (ip, rest) = Ipv6Header::from_slice(pkt).map_err(|e| e.to_string())?;
            let (h, payload) = Icmpv6Header::from_slice(rest).map_err(|e| e.to_string())?;
            let want = Icmpv6Header::with_checksum(h.icmp_type, ip.source, ip.destination, payload).unwrap();
            if h.checksum != want.checksum {
                return Err("ICMPv6 checksum".into());
            }
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), ip.hop_limit, payload)
        }
    };
    let (qsrc, qdst, l4) = match quoted[0] >> 4 {
        4 => {
            let (ip, rest) = Ipv4Header::from_slice(quoted).map_err(|e| e.to_string())?;
            if ip.header_checksum != ip.calc_header_checksum() {
                return Err("quoted IPv4 checksum".into());
            }
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), rest)
        }
        _ => {
            let (ip, rest) = Ipv6Header::from_slice(quoted).map_err(|e| e.to_string())?;
            (IpAddr::from(ip.source), IpAddr::from(ip.destination), rest)
        }
    };
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let sum_at = if proto == Protocol::Udp { 6 } else { 16 };
    Ok((osrc, odst, ttl, sa(qsrc, port(0)), sa(qdst, port(2)), port(sum_at)))
}

/// Fails with `what` unless `got == want`.
fn same<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: want {want:?}, got {got:?}"))
    }
}

#[test]
fn icmp_errors_reach_the_backend_of_their_flow() {
    in_lb_ns("vicmp", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "ICMP errors to backends");
        for (mode, vip_addr, backends) in [
            (ForwardingMode::L2Dsr, IpAddr::V4(VIP_V4), backends_v4(3)),
            (ForwardingMode::Ipip, IpAddr::V6(VIP_V6), backends_v6(3)),
            (ForwardingMode::Nat, IpAddr::V4(VIP2_V4), backends_v4(3)),
            (ForwardingMode::Nat, IpAddr::V6(VIP2_V6), backends_v6(3)),
        ] {
            for proto in [Protocol::Tcp, Protocol::Udp] {
                let vip = Vip::new(sa(vip_addr, 80), proto);
                lb.add_vip(vip, VipConfig::new(mode)).unwrap();
                let mut batch = lb.batch(&vip);
                for (i, b) in backends.iter().enumerate() {
                    // NAT backends 2 and 3 listen on 8080.
                    batch = if mode == ForwardingMode::Nat && i > 0 {
                        batch.add(sa(*b, 8080), 1)
                    } else {
                        batch.add(*b, 1)
                    };
                }
                batch.apply().unwrap();
                for i in 0..12u16 {
                    let c = if vip_addr.is_ipv4() { client(i) } else { client6(i) };
                    // Start the flow (tracked).
                    let syn = frame(n.eth0_mac, c, addr_port(&vip), proto, true, PAYLOAD);
                    t.run(
                        Fixture::new(format!("{mode} {vip}: SYN from {c}"), &syn)
                            .on(n.eth0)
                            .action(XdpAction::Redirect),
                    );
                    let tracked = lb.backend_for(&vip, &Flow::new(c, addr_port(&vip), proto)).unwrap().unwrap();
                    let next_hop = backend_mac(backend_index(tracked));
                    let err = icmp_error(n.eth0_mac, addr_port(&vip), c, proto);
                    let row = Fixture::new(format!("{mode} {vip}: ICMP error about {c}'s flow"), &err)
                        .on(n.eth0)
                        .action(XdpAction::Redirect);
                    t.run(match mode {
                        ForwardingMode::L2Dsr => row.output(err.with_macs(n.eth1_mac, next_hop)),
                        ForwardingMode::Ipip => {
                            let osrc = lb.ipip_source_for(&vip, &Flow::new(c, addr_port(&vip), proto), tracked.ip);
                            let osrc = osrc.unwrap().unwrap();
                            row.output(ipip(&err, osrc, tracked.ip, n.eth1_mac, next_hop))
                        }
                        _ => row.check(move |out| {
                            same("destination MAC", dst_mac(out), next_hop)?;
                            let (_, odst, _, quoted_src, _, _) = read_icmp_error(&out[14..], proto)?;
                            same("outer destination (translated)", odst, tracked.ip)?;
                            same("quoted source (translated)", quoted_src, sa(tracked.ip, tracked.port.unwrap_or(80)))
                        }),
                    });
                }
            }
        }
        assert_eq!(lb.stats().unwrap().icmp_forwarded.packets, 4 * 2 * 12);
        // An error about a flow of no VIP passes.
        let err = icmp_error(n.eth0_mac, sa(VIP_V4, 9999), client(1), Protocol::Tcp);
        t.run(Fixture::new("an error about no VIP's flow", &err).on(n.eth0).action(XdpAction::Pass));
        t.finish();
    });
}

/// A datagram or segment `from` -> `to` with 1400 zero bytes of payload,
/// its IP header first (what an ICMP error quotes, before truncation).
fn l3_packet(from: SocketAddr, to: SocketAddr, proto: Protocol, ttl: u8) -> Frame {
    let mut p = Pkt::new(from, to, proto, true).payload(&[0u8; 1400]);
    p.ttl = ttl;
    p.frame(CLIENT_MAC, CLIENT_MAC)
}

/// The checksum field of an L3 packet's TCP or UDP header.
fn l4_checksum(pkt: &[u8], proto: Protocol) -> u16 {
    let l4 = if pkt[0] >> 4 == 4 { usize::from(pkt[0] & 0x0F) * 4 } else { 40 };
    let at = l4 + if proto == Protocol::Udp { 6 } else { 16 };
    u16::from_be_bytes([pkt[at], pkt[at + 1]])
}

/// An ICMP error sent from `from` (on the backends' side) to `to` about
/// `quoted` (truncated to its headers and 20 bytes, as routers quote):
/// destination/port unreachable, or too big when `too_big`.
fn icmp_error_to(lb_mac: [u8; 6], from: IpAddr, to: IpAddr, quoted: &Frame, too_big: bool) -> Frame {
    let hdr = if from.is_ipv4() { 20 } else { 40 };
    let icmp = match (too_big, from.is_ipv4()) {
        (true, _) => Icmp::TooBig { mtu: 1280 },
        (false, true) => Icmp::Unreachable { code: 3 },
        (false, false) => Icmp::Unreachable { code: 4 },
    };
    Frame::builder()
        .macs(backend_mac(1), lb_mac)
        .ip(from, to)
        .icmp(icmp)
        .payload(&quoted.ip_packet()[..hdr + 8 + 20])
        .build()
}

/// Errors about a NAT flow's packets that come back from the backends'
/// side (port unreachable from the backend itself, too big from a router
/// between the LB and the backend) reach the client translated: it sees
/// them about the packet it sent to the VIP, from the VIP when the backend
/// sent them.
#[test]
fn icmp_errors_from_nat_backends_reach_the_client_translated() {
    in_lb_ns("vicmpn", 3, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "ICMP errors from NAT backends");
        let mut forwarded = 0;
        for (vip_addr, proto, backends, router) in [
            (IpAddr::V4(VIP_V4), Protocol::Tcp, backends_v4(3), IpAddr::V4(backend_v4(200))),
            (IpAddr::V4(VIP_V4), Protocol::Udp, backends_v4(3), IpAddr::V4(backend_v4(200))),
            (IpAddr::V6(VIP_V6), Protocol::Tcp, backends_v6(3), IpAddr::V6(backend_v6(200))),
            (IpAddr::V6(VIP_V6), Protocol::Udp, backends_v6(3), IpAddr::V6(backend_v6(200))),
        ] {
            let vip = Vip::new(sa(vip_addr, 80), proto);
            lb.add_vip(vip, VipConfig::new(ForwardingMode::Nat)).unwrap();
            lb.batch(&vip)
                .add(backends[0], 1)
                .add(sa(backends[1], 8080), 1)
                .add(sa(backends[2], 8080), 1)
                .apply()
                .unwrap();
            for i in 0..12u16 {
                let c = if vip_addr.is_ipv4() { client(i) } else { client6(i) };
                let syn = frame(n.eth0_mac, c, addr_port(&vip), proto, true, PAYLOAD);
                t.run(Fixture::new(format!("{vip}: SYN from {c}"), &syn).on(n.eth0).action(XdpAction::Redirect));
                let chosen = lb.backend_for(&vip, &Flow::new(c, addr_port(&vip), proto)).unwrap().unwrap();
                let at_backend = sa(chosen.ip, chosen.port.unwrap_or(80));
                // What the backend got, and what the client sent.
                let got = l3_packet(c, at_backend, proto, 63);
                let sent = l3_packet(c, addr_port(&vip), proto, 64);
                let sent_sum = l4_checksum(sent.ip_packet(), proto);
                let from_backend = i % 2 == 0;
                let from = if from_backend { chosen.ip } else { router };
                let err = icmp_error_to(n.eth1_mac, from, c.ip(), &got, !from_backend);
                let eth0_mac = n.eth0_mac;
                let vip_ap = addr_port(&vip);
                t.run(
                    Fixture::new(format!("{vip}: error about {c}'s flow from {from}"), &err)
                        .on(n.eth1)
                        .action(XdpAction::Redirect)
                        .check(move |out| {
                            same(
                                "MACs",
                                (dst_mac(out), <[u8; 6]>::try_from(&out[6..12]).unwrap()),
                                (CLIENT_MAC, eth0_mac),
                            )?;
                            let (osrc, odst, ttl, qsrc, qdst, qsum) = read_icmp_error(&out[14..], proto)?;
                            // The VIP answers for its backend.
                            same("outer source", osrc, if from_backend { vip_addr } else { router })?;
                            same("outer destination and TTL", (odst, ttl), (c.ip(), 63))?;
                            same("the packet the client sent", (qsrc, qdst), (c, vip_ap))?;
                            if proto == Protocol::Udp {
                                same("quoted UDP checksum as the client computed it", qsum, sent_sum)?;
                            }
                            Ok(())
                        }),
                );
                forwarded += 1;
            }
        }
        assert_eq!(lb.stats().unwrap().nat_replies.packets, forwarded);
        // About a flow NAT never saw: passed untouched.
        let got = l3_packet(client(999), sa(backend_v4(1), 80), Protocol::Tcp, 63);
        let err = icmp_error_to(n.eth1_mac, IpAddr::V4(backend_v4(1)), IpAddr::V4(CLIENT_V4), &got, false);
        t.run(Fixture::new("about a flow NAT never saw", &err).on(n.eth1).action(XdpAction::Pass).unchanged());
        t.finish();
    });
}

#[test]
fn too_big_after_encapsulation_is_dropped_and_the_sender_told() {
    ensure_bpffs();
    let vn = VerdictNet::new("vmtu", 2);
    vn.lb.ip(&["link", "set", "eth1", "mtu", "1400"]);
    let (eth0, mac) = (vn.eth0, vn.eth0_mac);
    vn.lb.run(move || {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "too big");
        let ipip = Vip::udp(sa(VIP_V4, 53));
        vip_with(&lb, ipip, VipConfig::new(ForwardingMode::Ipip), &backends_v4(2));
        let dsr = Vip::udp(sa(VIP_V4, 54));
        vip_with(&lb, dsr, VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(2));
        let ipip6 = Vip::tcp(sa(VIP_V6, 443));
        vip_with(&lb, ipip6, VipConfig::new(ForwardingMode::Ipip), &backends_v6(2));
        // 1390 bytes of IP: fits as is, not with a 20-byte outer header.
        let big = vec![0x5a; 1390 - 28];
        let to_ipip = Pkt::new(client(1), sa(VIP_V4, 53), Protocol::Udp, false).payload(&big);
        let to_dsr = frame(mac, client(1), sa(VIP_V4, 54), Protocol::Udp, false, &big);
        t.run(Fixture::new("the same size by DSR", &to_dsr).on(eth0).action(XdpAction::Redirect));
        let small = frame(mac, client(1), sa(VIP_V4, 53), Protocol::Udp, false, &big[..1300]);
        t.run(Fixture::new("smaller by IPIP", &small).on(eth0).action(XdpAction::Redirect));
        // An ICMP error goes back to the client: from the VIP, "fragmentation
        // needed" with the MTU left inside the tunnel, quoting the offending
        // header and 8 bytes.
        let input = to_ipip.frame(CLIENT_MAC, mac);
        let answer = Frame::builder()
            .macs(mac, CLIENT_MAC)
            .ipv4(VIP_V4, CLIENT_V4)
            .id(0)
            .df(false)
            .icmp(Icmp::TooBig { mtu: 1380 })
            .payload(&input[14..14 + 28])
            .build();
        // Twice: once with the FIB's answer, once with the cached MTU.
        for i in 0..2 {
            t.run(
                Fixture::new(format!("too big by IPIP ({i})"), &input)
                    .on(eth0)
                    .action(XdpAction::Tx)
                    .output(&answer)
                    .counts_packets(&["drop_mtu", "too_big_sent"]),
            );
        }
        // Without DF there is nothing to say (XDP cannot fragment): dropped.
        let no_df = to_ipip.builder(CLIENT_MAC, mac).df(false).build();
        t.run(Fixture::new("too big, no DF", &no_df).on(eth0).action(XdpAction::Drop).counts(&["drop_mtu"]));
        // IPv6: packet too big, from the VIP, with the MTU inside the tunnel.
        let to6 = frame(mac, client6(1), sa(VIP_V6, 443), Protocol::Tcp, false, &vec![0x5a; 1390 - 60]);
        let answer6 = Frame::builder()
            .macs(mac, CLIENT_MAC)
            .ipv6(VIP_V6, CLIENT_V6)
            .icmp(Icmp::TooBig { mtu: 1360 })
            .payload(&to6[14..14 + 48])
            .build();
        t.run(Fixture::new("too big by IPIP, IPv6", &to6).on(eth0).action(XdpAction::Tx).output(&answer6));
        let s = lb.stats().unwrap();
        assert_eq!(s.drops.mtu.packets, 4);
        assert_eq!(s.too_big_sent.packets, 3);
        // Only unicast senders are told (the answer goes back to the frame's
        // source MAC, from its destination MAC): from or to a group MAC, the
        // packet is dropped without a message.
        let groups = [(mac, [0xff; 6]), ([0xff; 6], CLIENT_MAC), (mac, [0x01, 0x00, 0x5e, 0, 0, 1])];
        for (dst, src) in groups {
            for (what, f) in [("IPv4", &input), ("IPv6", &to6)] {
                let mut f = f.to_vec();
                f[0..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&src);
                let what = format!("too big, {what}, {src:02x?} -> {dst:02x?}: not told");
                t.run(Fixture::new(what, &f).on(eth0).action(XdpAction::Drop).counts(&["drop_mtu"]));
            }
        }
        t.finish();
    });
}

/// Issue 14: a "fragmentation needed" answer from the FIB must not be
/// cached as the backend's next hop. An oversized packet (DF) first, then a
/// SYN of the same flow on the same CPU: the SYN must leave through the
/// backend side with the backend's MAC, in every mode.
#[test]
fn a_too_big_answer_is_never_cached_as_the_next_hop() {
    ensure_bpffs();
    let vn = VerdictNet::new("vtbc", 3);
    vn.lb.ip(&["link", "set", "eth1", "mtu", "1400"]);
    let (eth0, eth1_mac, mac) = (vn.eth0, vn.eth1_mac, vn.eth0_mac);
    vn.lb.run(move || {
        // Both packets on one CPU: the next-hop cache is per CPU.
        pin_to_cpu0();
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "too big, then a SYN");
        for (name, mode, vip_addr, backends, port) in [
            ("IPIP 4in4", ForwardingMode::Ipip, IpAddr::V4(VIP_V4), backends_v4(3), 80),
            ("IPIP 6in6", ForwardingMode::Ipip, IpAddr::V6(VIP_V6), backends_v6(3), 80),
            ("L2 DSR", ForwardingMode::L2Dsr, IpAddr::V4(VIP_V4), backends_v4(3), 81),
            ("NAT", ForwardingMode::Nat, IpAddr::V4(VIP_V4), backends_v4(3), 82),
            ("NAT v6", ForwardingMode::Nat, IpAddr::V6(VIP_V6), backends_v6(3), 82),
        ] {
            // A fresh VIP: fresh backend slots, with nothing cached yet.
            let vip = Vip::tcp(sa(vip_addr, port));
            vip_with(&lb, vip, VipConfig::new(mode), &backends);
            let src = if vip_addr.is_ipv4() { sa(CLIENT_V4, 40000) } else { sa(CLIENT_V6, 40000) };
            let flow = Flow::new(src, addr_port(&vip), Protocol::Tcp);
            let chosen = lb.backend_for(&vip, &flow).unwrap().unwrap();
            // 1500 bytes of IP with DF: too big for eth1 (1400) in every
            // mode, encapsulated or not.
            let head = if vip_addr.is_ipv4() { 40 } else { 60 };
            let big = frame(mac, src, addr_port(&vip), Protocol::Tcp, false, &vec![0x5a; 1500 - head]);
            t.run(
                Fixture::new(format!("{name}: too big"), &big)
                    .on(eth0)
                    .action(XdpAction::Tx)
                    .check(|out| same("the sender is told the MTU", dst_mac(out), CLIENT_MAC)),
            );
            // The SYN goes out of eth1, not back: from eth1's MAC to the backend's.
            let syn = Pkt::new(src, addr_port(&vip), Protocol::Tcp, true);
            let input = syn.frame(CLIENT_MAC, mac);
            let next_hop = backend_mac(backend_index(chosen));
            let want = match mode {
                ForwardingMode::Ipip => {
                    let osrc = lb.ipip_source_for(&vip, &flow, chosen.ip).unwrap().unwrap();
                    ipip(&input, osrc, chosen.ip, eth1_mac, next_hop).to_vec()
                }
                ForwardingMode::Nat => syn.to(sa(chosen.ip, port)).frame(eth1_mac, next_hop).to_vec(),
                _ => input.with_macs(eth1_mac, next_hop),
            };
            t.run(
                Fixture::new(format!("{name}: then a SYN"), &input).on(eth0).action(XdpAction::Redirect).output(want),
            );
        }
        t.finish();
        let s = lb.stats().unwrap();
        assert_eq!(s.too_big_sent.packets, 5);
        assert_eq!(s.redirected.packets, 5);
        assert_eq!(s.tx.packets, 0, "nothing forwarded back out of the ingress");
    });
}

/// An ICMP error about a tracked flow whose backend's egress is not in the
/// devmap (`set --no-redirect`, or an interface deleted and made again):
/// the LB may not redirect it, so, like the flow's own packets (see
/// `lb_verdicts_nexthop`), it goes to the stack as the LB would have sent
/// it, but with the MACs it came with (the stack takes it as its own and
/// routes it): L2 DSR untouched (only XDP delivers to a backend by MAC),
/// IPIP encapsulated towards the tracked backend (4in4, 6in6, 4in6), NAT
/// translated for the tracked backend (outer destination, quoted source
/// and port, checksums) with the TTL left for the stack to take. Counted as
/// forwarded ICMP and passed_no_devmap, for the backend too, never as an
/// unresolved neighbour or a redirect. With the egress back in the
/// devmap, the same error is redirected to the backend again.
#[test]
fn an_icmp_error_whose_egress_is_outside_the_devmap_goes_to_the_stack() {
    in_lb_ns("vicmpdm", 3, |n| {
        let lb = lb();
        let rows = [
            ("DSR v4", ForwardingMode::L2Dsr, IpAddr::V4(VIP_V4), 80, Protocol::Tcp, backends_v4(3)),
            ("DSR v6", ForwardingMode::L2Dsr, IpAddr::V6(VIP_V6), 80, Protocol::Udp, backends_v6(3)),
            ("IPIP 4in4", ForwardingMode::Ipip, IpAddr::V4(VIP_V4), 81, Protocol::Udp, backends_v4(3)),
            ("IPIP 6in6", ForwardingMode::Ipip, IpAddr::V6(VIP_V6), 81, Protocol::Tcp, backends_v6(3)),
            ("IPIP 4in6", ForwardingMode::Ipip, IpAddr::V4(VIP2_V4), 82, Protocol::Tcp, backends_v6(3)),
            ("NAT v4", ForwardingMode::Nat, IpAddr::V4(VIP_V4), 83, Protocol::Udp, backends_v4(3)),
            ("NAT v6", ForwardingMode::Nat, IpAddr::V6(VIP_V6), 83, Protocol::Tcp, backends_v6(3)),
        ];
        // The flows, tracked while every egress is in the devmap.
        let mut t = FixtureTable::new(&lb, "ICMP errors, egress outside the devmap");
        let mut flows = Vec::new();
        for (what, mode, vip_addr, port, proto, backends) in &rows {
            let vip = Vip::new(sa(*vip_addr, *port), *proto);
            lb.add_vip(vip, VipConfig::new(*mode)).unwrap();
            let mut batch = lb.batch(&vip);
            for b in backends {
                // NAT backends listen on 8080: the quote's port changes too.
                batch = if *mode == ForwardingMode::Nat { batch.add(sa(*b, 8080), 1) } else { batch.add(*b, 1) };
            }
            batch.apply().unwrap();
            let c = if vip_addr.is_ipv4() { client(7) } else { client6(7) };
            let syn = frame(n.eth0_mac, c, addr_port(&vip), *proto, true, PAYLOAD);
            t.run(Fixture::new(format!("{what}: the flow from {c}"), &syn).on(n.eth0).action(XdpAction::Redirect));
            let tracked = lb.backend_for(&vip, &Flow::new(c, addr_port(&vip), *proto)).unwrap().unwrap();
            flows.push((*what, *mode, vip, c, *proto, tracked));
        }
        lb.remove_redirect_interface("eth1").unwrap();
        let before = lb.stats().unwrap();
        for &(what, mode, vip, c, proto, tracked) in &flows {
            let err = icmp_error(n.eth0_mac, addr_port(&vip), c, proto);
            // The error's TTL as it arrived (the stack takes one when it forwards).
            let ttl_in = if vip.addr.is_ipv4() { err[14 + 8] } else { err[14 + 7] };
            let err_len = err.len();
            let row = Fixture::new(format!("{what}: an ICMP error about {c}'s flow, to the stack"), &err)
                .on(n.eth0)
                .action(XdpAction::Pass)
                .counts(&["icmp_forwarded", "passed_no_devmap"]);
            let lb_mac = n.eth0_mac;
            t.run(match mode {
                ForwardingMode::L2Dsr => row.output(&err),
                ForwardingMode::Ipip => {
                    let osrc = lb.ipip_source_for(&vip, &Flow::new(c, addr_port(&vip), proto), tracked.ip);
                    row.output(ipip(&err, osrc.unwrap().unwrap(), tracked.ip, CLIENT_MAC, lb_mac))
                }
                _ => row.check(move |out| {
                    same(
                        "MACs as received",
                        (dst_mac(out), <[u8; 6]>::try_from(&out[6..12]).unwrap()),
                        (lb_mac, CLIENT_MAC),
                    )?;
                    same("length", out.len(), err_len)?;
                    let (osrc, odst, ttl, qsrc, qdst, _) = read_icmp_error(&out[14..], proto)?;
                    let router: IpAddr = if vip.addr.is_ipv4() { ROUTER_V4.into() } else { ROUTER_V6.into() };
                    same("outer source", osrc, router)?;
                    same("outer destination (translated), TTL untouched", (odst, ttl), (tracked.ip, ttl_in))?;
                    same("quoted source (translated)", qsrc, sa(tracked.ip, tracked.port.unwrap_or(80)))?;
                    same("quoted destination", qdst, c)
                }),
            });
            let bs = lb.backend_stats(&vip).unwrap();
            let b = bs.iter().find(|b| b.addr() == tracked).expect("the tracked backend is listed");
            assert_eq!((b.traffic.packets, b.no_neighbour.packets), (2, 0), "{what}: the flow's SYN and its error");
        }
        let s = lb.stats().unwrap();
        let n_rows = flows.len() as u64;
        assert_eq!(s.passed_no_devmap.packets - before.passed_no_devmap.packets, n_rows);
        assert_eq!(s.icmp_forwarded.packets - before.icmp_forwarded.packets, n_rows);
        assert_eq!(s.redirected.packets, before.redirected.packets, "nothing redirected");
        assert_eq!(s.passed_no_neighbour.packets, 0);

        // The egress back: the same errors are redirected to their backends.
        lb.add_redirect_interface("eth1").unwrap();
        for &(what, _, vip, c, proto, tracked) in &flows {
            let err = icmp_error(n.eth0_mac, addr_port(&vip), c, proto);
            let next_hop = backend_mac(backend_index(tracked));
            t.run(
                Fixture::new(format!("{what}: the same error, eth1 back in the devmap"), &err)
                    .on(n.eth0)
                    .action(XdpAction::Redirect)
                    .check(move |out| same("to the tracked backend's MAC", dst_mac(out), next_hop)),
            );
        }
        t.finish();
    });
}
