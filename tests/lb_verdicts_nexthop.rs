//! The load balancer's next hops as fixture tables, through
//! BPF_PROG_TEST_RUN: unresolved neighbours (the stack gets the packet
//! rewritten, or a probe), traffic for no VIP and unroutable backends
//! (passed untouched), and the per-CPU next-hop cache. Needs root; fails
//! (does not skip) without it.

mod common {
    pub mod lb;
}

use std::net::{IpAddr, Ipv4Addr};

use common::lb::*;
use xdpguard::testing::fixture::{Fixture, FixtureTable};
use xdpguard::testing::frame::{Frame, Icmp};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{
    BackendAddr, Flow, ForwardingMode, LoadBalancer, NeighbourState, NextHop, Protocol, Vip, VipConfig, XdpAction,
};

/// No resolved neighbour for a backend's next hop: the stack gets a packet
/// it can route towards the backend, so it resolves the neighbour on the
/// way: IPIP and NAT packets fully rewritten (NAT with the TTL left for the
/// stack to take), an L2 DSR packet as an ICMP echo reply probe from the
/// client to the backend. Counted globally and for the backend.
/// An IPIP or NAT packet the LB hands to the stack (its next hop not
/// usable from XDP): the client's packet inside, unchanged, or translated
/// with the TTL left for the stack to decrement; the MACs as received, so
/// the stack takes it as its own and routes it.
fn rewritten_for_the_stack(
    lb: &LoadBalancer,
    vip: &Vip,
    mode: ForwardingMode,
    sent: &Pkt,
    input: &[u8],
    backend: IpAddr,
    lb_mac: [u8; 6],
) -> Vec<u8> {
    if mode == ForwardingMode::Ipip {
        let flow = Flow::new(sent.src, addr_port(vip), Protocol::Tcp);
        let osrc = lb.ipip_source_for(vip, &flow, backend).unwrap().unwrap();
        return ipip(input, osrc, backend, CLIENT_MAC, lb_mac).to_vec();
    }
    let mut out = sent.to(sa(backend, 8080));
    out.ttl = 64;
    out.frame(CLIENT_MAC, lb_mac).to_vec()
}

#[test]
fn unresolved_next_hops_go_to_the_stack_rewritten_or_as_a_probe() {
    in_lb_ns("vneigh", 2, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "unresolved next hops");
        // Backends 7 and 8 have no permanent neighbour entry: the library
        // makes managed ones, which nobody answers on this test bed.
        let (b4, b6) = (IpAddr::V4(backend_v4(7)), IpAddr::V6(backend_v6(8)));
        for (mode, port, backend, src) in [
            (ForwardingMode::L2Dsr, 80, b4, client(1)),
            (ForwardingMode::L2Dsr, 81, b6, client6(1)),
            (ForwardingMode::Ipip, 82, b4, client(1)),
            (ForwardingMode::Ipip, 83, b6, client6(1)),
            (ForwardingMode::Nat, 84, b4, client(1)),
            (ForwardingMode::Nat, 85, b6, client6(1)),
        ] {
            let vip_addr = if backend.is_ipv4() { IpAddr::V4(VIP_V4) } else { IpAddr::V6(VIP_V6) };
            let vip = Vip::tcp(sa(vip_addr, port));
            lb.add_vip(vip, VipConfig::new(mode)).unwrap();
            let be: BackendAddr = if mode == ForwardingMode::Nat { sa(backend, 8080).into() } else { backend.into() };
            lb.add_backend(&vip, be, 1).unwrap();
            let what = format!("{mode} {vip}");
            let sent = Pkt::new(src, addr_port(&vip), Protocol::Tcp, true);
            let input = sent.frame(CLIENT_MAC, n.eth0_mac);
            // To the stack, MACs as received (the stack routes it).
            let want = match mode {
                // A probe from the client: an 8-byte ICMP echo reply (id
                // and sequence 0), the client's TTL.
                ForwardingMode::L2Dsr => {
                    let b = Frame::builder().macs(CLIENT_MAC, n.eth0_mac).ip(src.ip(), backend).ttl(64);
                    let b = if backend.is_ipv4() { b.id(0).df(false) } else { b };
                    b.icmp(Icmp::EchoReply { id: 0, seq: 0 }).build().to_vec()
                }
                _ => rewritten_for_the_stack(&lb, &vip, mode, &sent, &input, backend, n.eth0_mac),
            };
            t.run(
                Fixture::new(format!("{what}: to the stack"), &input)
                    .on(n.eth0)
                    .action(XdpAction::Pass)
                    .output(want)
                    .counts(&["passed_no_neighbour"]),
            );
            let bs = lb.backend_stats(&vip).unwrap();
            assert_eq!(bs[0].no_neighbour.packets, 1, "{what}: counted for the backend");
            assert_eq!(bs[0].traffic.packets, 1, "{what}");
            assert_eq!(bs[0].next_hop.via, Some(backend), "{what}");
            assert_eq!(bs[0].next_hop.ifindex, n.eth1, "{what}");
            assert_ne!(bs[0].next_hop.state, NeighbourState::Resolved, "{what}: nobody answers");
        }
        t.finish();
        assert_eq!(lb.stats().unwrap().redirected.packets, 0);
    });
}

/// A backend's egress not in the devmap (`set --no-redirect`, or an
/// interface deleted and made again): XDP may not send the frame there, so
/// the stack gets the packet as the no-neighbour case gives it, rewritten
/// but still addressed to the LB's own MAC (the next hop's MAC made the
/// stack drop it as another host's): IPIP encapsulated (4in4, 6in6, 4in6),
/// NAT translated with the TTL left for the stack, L2 DSR untouched (only
/// XDP can deliver it). A NAT reply towards a client behind an interface
/// outside the devmap likewise. Counted as passed_no_devmap, and for no
/// backend as unresolved.
#[test]
fn an_egress_outside_the_devmap_goes_to_the_stack_addressed_to_the_lb() {
    in_lb_ns("vnodev", 2, |n| {
        let lb = lb();
        lb.remove_redirect_interface("eth1").unwrap();
        let mut t = FixtureTable::new(&lb, "egress not in the devmap");
        let (b4, b6) = (IpAddr::V4(backend_v4(1)), IpAddr::V6(backend_v6(1)));
        for (what, mode, vip_addr, port, backend, src) in [
            ("DSR v4", ForwardingMode::L2Dsr, IpAddr::V4(VIP_V4), 80, b4, client(1)),
            ("DSR v6", ForwardingMode::L2Dsr, IpAddr::V6(VIP_V6), 81, b6, client6(1)),
            ("IPIP 4in4", ForwardingMode::Ipip, IpAddr::V4(VIP_V4), 82, b4, client(1)),
            ("IPIP 6in6", ForwardingMode::Ipip, IpAddr::V6(VIP_V6), 83, b6, client6(1)),
            ("IPIP 4in6", ForwardingMode::Ipip, IpAddr::V4(VIP2_V4), 84, b6, client(1)),
            ("NAT v4", ForwardingMode::Nat, IpAddr::V4(VIP_V4), 85, b4, client(1)),
            ("NAT v6", ForwardingMode::Nat, IpAddr::V6(VIP_V6), 86, b6, client6(1)),
        ] {
            let vip = Vip::tcp(sa(vip_addr, port));
            lb.add_vip(vip, VipConfig::new(mode)).unwrap();
            let be: BackendAddr = if mode == ForwardingMode::Nat { sa(backend, 8080).into() } else { backend.into() };
            lb.add_backend(&vip, be, 1).unwrap();
            let sent = Pkt::new(src, addr_port(&vip), Protocol::Tcp, true);
            let input = sent.frame(CLIENT_MAC, n.eth0_mac);
            let want = match mode {
                ForwardingMode::L2Dsr => input.to_vec(),
                _ => rewritten_for_the_stack(&lb, &vip, mode, &sent, &input, backend, n.eth0_mac),
            };
            assert_eq!(dst_mac(&want), n.eth0_mac, "{what}: the fixture wants the LB's own MAC");
            t.run(
                Fixture::new(format!("{what} {vip}: to the stack"), &input)
                    .on(n.eth0)
                    .action(XdpAction::Pass)
                    .output(want)
                    .counts(&["passed_no_devmap"]),
            );
            let bs = lb.backend_stats(&vip).unwrap();
            assert_eq!(bs[0].no_neighbour.packets, 0, "{what}: its neighbour is resolved");
            assert_eq!(bs[0].traffic.packets, 1, "{what}");
        }
        // A NAT reply to a client behind an egress outside the devmap:
        // translated, the TTL left for the stack, the MACs it came with.
        lb.remove_redirect_interface("eth0").unwrap();
        let vip = Vip::tcp(sa(VIP_V4, 85));
        let at_backend = sa(b4, 8080);
        let reply = Pkt::new(at_backend, client(1), Protocol::Tcp, false);
        let mut back = reply.from(addr_port(&vip));
        back.ttl = 64;
        t.run(
            Fixture::new("a NAT reply: to the stack", reply.frame(backend_mac(1), n.eth1_mac))
                .on(n.eth1)
                .action(XdpAction::Pass)
                .output(back.frame(backend_mac(1), n.eth1_mac))
                .counts(&["nat_replies", "passed_no_devmap"]),
        );
        t.finish();
        let s = lb.stats().unwrap();
        assert_eq!((s.passed_no_devmap.packets, s.redirected.packets, s.passed_no_neighbour.packets), (8, 0, 0));
    });
}

/// An L2 DSR packet whose backend's next hop is unresolved becomes a probe
/// the stack can route (above), also from a frame shorter than the probe:
/// an empty IPv4 fragment (34 bytes, on a link that does not pad) is grown
/// to it, and counted once as passed to the stack, for the backend too.
#[test]
fn a_dsr_probe_fits_in_any_frame() {
    in_lb_ns("vprobe", 2, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "DSR probe");
        let vip = Vip::all_ports(IpAddr::V4(VIP_V4), Protocol::Udp);
        let backend = IpAddr::V4(backend_v4(7)); // no permanent neighbour
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::L2Dsr), &[backend]);
        // A later fragment without data: its IP header alone.
        let input = Frame::builder()
            .macs(CLIENT_MAC, n.eth0_mac)
            .ipv4(CLIENT_V4, VIP_V4)
            .ttl(9)
            .id(0x1234)
            .df(false)
            .fragment(185, false)
            .protocol(17)
            .build();
        assert_eq!(input.len(), 34);
        let probe = Frame::builder()
            .macs(CLIENT_MAC, n.eth0_mac)
            .ip(CLIENT_V4.into(), backend)
            .ttl(9)
            .id(0)
            .df(false)
            .icmp(Icmp::EchoReply { id: 0, seq: 0 })
            .build();
        t.run(
            Fixture::new("an empty fragment: grown to a probe", &input)
                .on(n.eth0)
                .action(XdpAction::Pass)
                .output(probe)
                .counts(&["passed_no_neighbour", "fragments_forwarded"]),
        );
        t.finish();
        assert_eq!(lb.backend_stats(&vip).unwrap()[0].no_neighbour.packets, 1);
    });
}

/// Not for a VIP, or no route: the stack gets the packet untouched.
#[test]
fn non_vip_traffic_and_unroutable_backends_pass_untouched() {
    in_lb_ns("vpass", 2, |n| {
        let lb = lb();
        let mut t = FixtureTable::new(&lb, "passed untouched");
        // Traffic for the LB host itself, and a port of the VIP address no
        // VIP serves, pass untouched.
        let vip = Vip::tcp(sa(VIP_V4, 80));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(1));
        for dst in [sa(LB_FRONT_V4, 22), sa(VIP_V4, 81)] {
            let f = frame(n.eth0_mac, client(1), dst, Protocol::Tcp, true, PAYLOAD);
            t.run(
                Fixture::new(format!("to {dst}"), &f)
                    .on(n.eth0)
                    .action(XdpAction::Pass)
                    .unchanged()
                    .counts(&["passed_non_vip"]),
            );
        }
        assert_eq!(lb.stats().unwrap().passed_non_vip.packets, 2);
        // Forwarding disabled: the FIB refuses, the packet goes to the stack.
        let vip2 = Vip::tcp(sa(VIP_V4, 443));
        vip_with(&lb, vip2, VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(2));
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "0").unwrap();
        let f = frame(n.eth0_mac, client(1), addr_port(&vip2), Protocol::Tcp, true, PAYLOAD);
        t.run(
            Fixture::new("forwarding off", &f)
                .on(n.eth0)
                .action(XdpAction::Pass)
                .unchanged()
                .counts(&["passed_no_route"]),
        );
        std::fs::write("/proc/sys/net/ipv4/conf/all/forwarding", "1").unwrap();
        // A backend without any route.
        let vip3 = Vip::tcp(sa(VIP_V4, 444));
        let nowhere = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99));
        vip_with(&lb, vip3, VipConfig::new(ForwardingMode::L2Dsr), &[nowhere]);
        let f = frame(n.eth0_mac, client(1), addr_port(&vip3), Protocol::Tcp, true, PAYLOAD);
        t.run(
            Fixture::new("a backend without a route", &f)
                .on(n.eth0)
                .action(XdpAction::Pass)
                .unchanged()
                .counts(&["passed_no_route"]),
        );
        t.finish();
        assert_eq!(lb.stats().unwrap().passed_no_route.packets, 2);
        let bs = lb.backend_stats(&vip3).unwrap();
        assert_eq!(bs[0].next_hop, NextHop { via: None, ifindex: 0, state: NeighbourState::NoRoute });
        assert_eq!(lb.stats().unwrap().passed_no_neighbour.packets, 0);
    });
}

#[test]
fn next_hops_are_cached_briefly_and_refreshed() {
    // Long enough that the packet after the first, with an `ip neigh`
    // between them, is within it on a loaded machine.
    const CACHE: std::time::Duration = std::time::Duration::from_secs(3);
    ensure_bpffs();
    let vn = VerdictNet::new("vnh", 1);
    let (eth0, eth1_mac, mac) = (vn.eth0, vn.eth1_mac, vn.eth0_mac);
    let ns = vn.lb.name.clone();
    vn.lb.run(move || {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .connections(1024)
            .next_hop_cache(CACHE)
            .load()
            .unwrap();
        assert_eq!(lb.next_hop_cache(), CACHE);
        let mut t = FixtureTable::new(&lb, "next-hop cache");
        let vip = Vip::udp(sa(VIP_V4, 53));
        vip_with(&lb, vip, VipConfig::new(ForwardingMode::L2Dsr), &backends_v4(1));
        let input = frame(mac, client(1), addr_port(&vip), Protocol::Udp, false, PAYLOAD);
        let mut to = |what: &str, next_hop: [u8; 6]| {
            t.run(
                Fixture::new(what, &input)
                    .on(eth0)
                    .action(XdpAction::Redirect)
                    .output(input.with_macs(eth1_mac, next_hop)),
            );
        };
        let set_neigh = |m: &str| {
            xdpguard::testing::netns::run(std::process::Command::new("ip").args([
                "-n",
                &ns,
                "neigh",
                "replace",
                &backend_v4(1).to_string(),
                "lladdr",
                m,
                "dev",
                "eth1",
                "nud",
                "permanent",
            ]));
        };
        // Pin to one CPU: the cache is per CPU.
        pin_to_cpu0();
        let first = std::time::Instant::now();
        to("the first packet", backend_mac(1));
        set_neigh("02:00:00:00:0b:aa");
        to("within the cache time the old next hop is used", backend_mac(1));
        // Once the first packet's entry has lived out its CACHE (entries keep
        // the time they were made with: the hop cached next lives 200 ms).
        lb.set_next_hop_cache(std::time::Duration::from_millis(200));
        let expired = first + CACHE + std::time::Duration::from_millis(400);
        std::thread::sleep(expired.saturating_duration_since(std::time::Instant::now()));
        to("then the FIB is asked again", [2, 0, 0, 0, 0x0b, 0xaa]);
        // Without a cache (once the entry made before has lived out its time).
        lb.set_next_hop_cache(std::time::Duration::ZERO);
        std::thread::sleep(std::time::Duration::from_millis(400));
        to("no cache", [2, 0, 0, 0, 0x0b, 0xaa]);
        set_neigh("02:00:00:00:0b:bb");
        to("no cache: every packet asks the FIB", [2, 0, 0, 0, 0x0b, 0xbb]);
        t.finish();
    });
}
