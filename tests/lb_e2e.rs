//! The load balancer end to end, with real clients and servers.
//!
//! Topology (tests/common/lb_topology.rs): a client namespace, the LB
//! namespace (XDP on both of its interfaces), a bridge namespace and four
//! backend namespaces that answer with their own name over TCP and UDP.
//! For each mode (L2 DSR, IPIP, NAT), each address family it supports
//! (IPIP also IPv4 in IPv6), and TCP and UDP:
//!
//! - many connections from many source ports spread over all backends
//!   (each backend gets at least half of its fair share);
//! - weights 1:2:3 are honoured (each share within 40% of its weight's);
//! - `backend_for` names the backend that actually answered, every time;
//! - a long-lived connection (TCP) or flow (UDP) survives adding a backend,
//!   removing a different one, and draining its own; new connections then
//!   avoid the drained backend;
//! - a VIP with no backends drops, and the counter says so;
//! - traffic for the LB host itself still reaches it.
//!
//! Plus the filter in front of the LB: a blocked client cannot reach the
//! VIP while others are balanced. Needs root; fails (does not skip) without it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{
    BackendAddr, Decap, Filter, Flow, ForwardingMode, LoadBalancer, NeighbourState, Protocol, Vip, VipConfig,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn vip_addr(f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(VIP_V4),
        Family::V6 => IpAddr::V6(VIP_V6),
    }
}

fn backend_addr(f: Family, i: usize) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(backend_v4(i)),
        Family::V6 => IpAddr::V6(backend_v6(i)),
    }
}

fn client_addr(f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(CLIENT_V4),
        Family::V6 => IpAddr::V6(CLIENT_V6),
    }
}

const BACKENDS: usize = 4;
const VIP_PORT: u16 = 80;
const NAT_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);

/// One mode / family combination, set up and ready.
struct Rig {
    net: LbNet,
    lb: Arc<LoadBalancer>,
    mode: ForwardingMode,
    vip_family: Family,
    backend_family: Family,
    _servers: Vec<Servers>,
    _decaps: Vec<Decap>,
}

impl Rig {
    fn new(tag: &str, mode: ForwardingMode, vip_family: Family, backend_family: Family) -> Rig {
        ensure_bpffs();
        let kind = if mode == ForwardingMode::Nat { BackendKind::Plain } else { BackendKind::VipOnLoopback };
        let net = LbNet::new(tag, BACKENDS, kind);
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for (i, ns) in net.backends.iter().enumerate() {
            let i = i + 1;
            let (port, udp) = if mode == ForwardingMode::Nat {
                (NAT_PORT, vec![backend_addr(Family::V4, i), backend_addr(Family::V6, i)])
            } else {
                (VIP_PORT, vec![IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)])
            };
            servers.push(Servers::start(ns, &format!("b{i}"), port, udp));
            if mode == ForwardingMode::Ipip {
                decaps.push(ns.run(move || {
                    Decap::builder()
                        .interface("eth0")
                        .local(IpAddr::V4(backend_v4(i)))
                        .local(IpAddr::V6(backend_v6(i)))
                        .attach()
                        .expect("attach the decapsulator")
                }));
            }
        }
        let lb = net.lb.run(|| {
            Arc::new(
                LoadBalancer::builder()
                    .interface("eth0")
                    .interface("eth1")
                    .connections(16384)
                    .max_backends(64)
                    .max_vips(16)
                    .ipip_source(IPIP_SRC_V4.parse().unwrap())
                    .ipip_source(IPIP_SRC_V6.parse().unwrap())
                    .attach()
                    .expect("attach the LB"),
            )
        });
        Rig { net, lb, mode, vip_family, backend_family, _servers: servers, _decaps: decaps }
    }

    fn vip(&self, proto: Protocol, port: u16) -> Vip {
        Vip::new(SocketAddr::new(vip_addr(self.vip_family), port), proto)
    }

    fn backend(&self, i: usize) -> BackendAddr {
        let ip = backend_addr(self.backend_family, i);
        if self.mode == ForwardingMode::Nat {
            SocketAddr::new(ip, NAT_PORT).into()
        } else {
            ip.into()
        }
    }

    fn index_of(&self, b: BackendAddr) -> usize {
        (1..=BACKENDS).find(|&i| self.backend(i) == b).unwrap_or_else(|| panic!("unknown backend {b}"))
    }

    /// Opens a TCP connection to the VIP from the client and asks once.
    fn tcp_conn(&self, vip: Vip) -> (Conn, String) {
        let to = SocketAddr::new(vip.addr, vip.port.unwrap());
        self.net.client.run(move || {
            let mut c = Conn::open(to, TIMEOUT).unwrap_or_else(|e| panic!("connect to {to}: {e}"));
            let name = c.ask().unwrap_or_else(|e| panic!("ask {to}: {e}"));
            (c, name)
        })
    }

    /// `n` fresh flows to the VIP; for each, the answering backend checked
    /// against backend_for. Returns answers per backend index.
    fn spread(&self, vip: Vip, n: usize, first_port: u16) -> HashMap<usize, usize> {
        let to = SocketAddr::new(vip.addr, vip.port.unwrap());
        let proto = vip.protocol;
        let client = client_addr(self.vip_family);
        let answers: Vec<(SocketAddr, String)> = self.net.client.run(move || {
            (0..n)
                .map(|k| match proto {
                    // Chosen source ports: a fixed sample, so the spread
                    // checks are reproducible, never flaky.
                    Protocol::Tcp => {
                        let local = SocketAddr::new(client, first_port + k as u16);
                        let mut c = Conn::open_from(local, to, TIMEOUT)
                            .unwrap_or_else(|e| panic!("connect {k} from {local} to {to}: {e}"));
                        let name = c.ask().unwrap_or_else(|e| panic!("ask {k} {to}: {e}"));
                        (c.local, name)
                    }
                    Protocol::Udp => {
                        let local = SocketAddr::new(client, first_port + k as u16);
                        let name = udp_ask(local, to, Duration::from_millis(700))
                            .unwrap_or_else(|e| panic!("UDP {k} from {local} to {to}: {e}"));
                        (local, name)
                    }
                })
                .collect()
        });
        let mut per = HashMap::new();
        for (local, name) in answers {
            let flow = Flow::new(local, to, proto);
            let predicted = self.lb.backend_for(&vip, &flow).unwrap().expect("a backend");
            let idx = self.index_of(predicted);
            assert_eq!(name, format!("b{idx}"), "{vip} {flow}: backend_for said {predicted}, b{idx}; {name} answered");
            *per.entry(idx).or_insert(0) += 1;
        }
        per
    }
}

fn ask_udp_from(rig: &Rig, vip: Vip, local_port: u16) -> String {
    let to = SocketAddr::new(vip.addr, vip.port.unwrap());
    let local = SocketAddr::new(client_addr(rig.vip_family), local_port);
    rig.net.client.run(move || udp_ask(local, to, Duration::from_millis(700)).expect("UDP answer"))
}

/// The whole scenario for one mode and family pair, TCP then UDP.
fn scenario(tag: &str, mode: ForwardingMode, vip_family: Family, backend_family: Family) {
    let rig = Rig::new(tag, mode, vip_family, backend_family);
    let lb = rig.lb.clone();
    let mut src_port = 20000u16;
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let vip = rig.vip(proto, VIP_PORT);
        let what = format!("{mode} {vip_family:?}/{backend_family:?} {proto}");
        lb.add_vip(vip, VipConfig::new(mode)).unwrap();
        lb.batch(&vip).add(rig.backend(1), 1).add(rig.backend(2), 1).add(rig.backend(3), 1).apply().unwrap();

        // Spread over all backends.
        let n = 120;
        let per = rig.spread(vip, n, src_port);
        src_port += n as u16;
        for i in 1..=3 {
            let got = per.get(&i).copied().unwrap_or(0);
            assert!(got * 3 * 2 >= n, "{what}: backend {i} got {got} of {n} ({per:?})");
        }
        assert_eq!(per.get(&4), None, "{what}: backend 4 is not in the VIP yet");

        // Weights 1:2:3, applied as one batch.
        lb.batch(&vip).set_weight(rig.backend(2), 2).set_weight(rig.backend(3), 3).apply().unwrap();
        let n = 240;
        let per = rig.spread(vip, n, src_port);
        src_port += n as u16;
        for (i, w) in [(1usize, 1.0f64), (2, 2.0), (3, 3.0)] {
            let expected = n as f64 * w / 6.0;
            let got = per.get(&i).copied().unwrap_or(0) as f64;
            assert!((got - expected).abs() <= 0.4 * expected, "{what}: weight {w}: {got} of {n}, expected {expected}");
        }

        // A long-lived connection (or UDP flow) survives backend changes.
        let (mut conn, first) = match proto {
            Protocol::Tcp => {
                let (c, name) = rig.tcp_conn(vip);
                (Some(c), name)
            }
            Protocol::Udp => (None, ask_udp_from(&rig, vip, 39999)),
        };
        let mut again = |rig: &Rig| -> String {
            match conn.as_mut() {
                // The socket lives in the client namespace whatever thread
                // uses it.
                Some(c) => c.ask().expect("the long-lived connection answers"),
                None => ask_udp_from(rig, vip, 39999),
            }
        };
        let own: usize = first.trim_start_matches('b').parse().unwrap();
        lb.add_backend(&vip, rig.backend(4), 1).unwrap();
        assert_eq!(again(&rig), first, "{what}: after adding a backend");
        let other = (1..=3).find(|&i| i != own).unwrap();
        lb.remove_backend(&vip, rig.backend(other)).unwrap();
        assert_eq!(again(&rig), first, "{what}: after removing backend {other}");
        lb.set_weight(&vip, rig.backend(own), 0).unwrap();
        assert_eq!(again(&rig), first, "{what}: after draining its own backend");
        let n = 60;
        let per = rig.spread(vip, n, src_port);
        src_port += n as u16;
        assert_eq!(per.get(&own), None, "{what}: new flows avoid drained backend {own}: {per:?}");
        assert_eq!(per.get(&other), None, "{what}: nothing reaches removed backend {other}");
        assert!(per.len() >= 2, "{what}: the remaining backends share: {per:?}");
        assert_eq!(again(&rig), first, "{what}: still on its drained backend");
        drop(conn);

        // Full-size segments: they fit after encapsulation only once the
        // client has learnt the path MTU from the LB's ICMP messages.
        if proto == Protocol::Tcp {
            let (mut big, _) = rig.tcp_conn(vip);
            let answer = big
                .ask_with(&vec![b'x'; 20_000])
                .unwrap_or_else(|e| panic!("{what}: a large request: {e}; LB stats {:?}", lb.stats().unwrap()));
            assert!(answer.starts_with('b'), "{what}: {answer}");
        }

        let s = lb.vip_stats(&vip).unwrap();
        assert!(s.traffic.packets > 420, "{what}: {s:?}");
        if proto == Protocol::Tcp {
            assert!(s.lru_hits > 0 && s.new_flows >= 420, "{what}: {s:?}");
        }
        let served: u64 = lb.backend_stats(&vip).unwrap().iter().map(|b| b.traffic.packets).sum();
        assert!(served > 0, "{what}: backend counters move");
        lb.remove_vip(&vip).unwrap();
    }

    // A VIP with no backends drops, and says so.
    let empty = rig.vip(Protocol::Tcp, 81);
    lb.add_vip(empty, VipConfig::new(mode)).unwrap();
    let before = lb.stats().unwrap().drops.no_backend.packets;
    let to = SocketAddr::new(empty.addr, 81);
    let refused = rig.net.client.run(move || Conn::open(to, Duration::from_millis(400)).is_err());
    assert!(refused, "{mode}: a VIP without backends must not answer");
    assert!(lb.stats().unwrap().drops.no_backend.packets > before, "{mode}: no_backend counted");
    let empty_udp = rig.vip(Protocol::Udp, 81);
    lb.add_vip(empty_udp, VipConfig::new(mode)).unwrap();
    let local = SocketAddr::new(client_addr(vip_family), 45000);
    let to = SocketAddr::new(empty_udp.addr, 81);
    assert!(rig.net.client.run(move || udp_ask(local, to, Duration::from_millis(200)).is_err()));
    assert!(lb.stats().unwrap().drops.no_backend.packets >= before + 2);

    // NAT: a backend's own "port unreachable" (real ICMP from its stack)
    // reaches the client translated back to the VIP, so the client's
    // connected UDP socket learns that the VIP's port is closed.
    if mode == ForwardingMode::Nat {
        let closed = rig.vip(Protocol::Udp, 82);
        lb.add_vip(closed, VipConfig::new(mode)).unwrap();
        lb.add_backend(&closed, SocketAddr::new(backend_addr(backend_family, 1), 9), 1).unwrap(); // nothing listens on 9
        let before = lb.stats().unwrap().nat_replies.packets;
        let local = SocketAddr::new(client_addr(vip_family), 45001);
        let to = SocketAddr::new(closed.addr, 82);
        let outcome = rig.net.client.run(move || {
            let sock = std::net::UdpSocket::bind(local).unwrap();
            sock.connect(to).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut buf = [0u8; 64];
            let mut seen = Vec::new();
            for _ in 0..4 {
                let _ = sock.send(b"anyone?");
                match sock.recv(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
                    other => seen.push(format!("{other:?}")),
                }
            }
            Err(seen)
        });
        assert_eq!(outcome, Ok(()), "{mode}: the client hears that {to} is closed");
        assert!(lb.stats().unwrap().nat_replies.packets > before, "{mode}: the error was translated in XDP");
        lb.remove_vip(&closed).unwrap();
    }

    // Traffic for the LB host itself still reaches it.
    let lb_addr: IpAddr = match vip_family {
        Family::V4 => LB_FRONT_V4.into(),
        Family::V6 => LB_FRONT_V6.into(),
    };
    let listener = rig.net.lb.run(move || TcpListener::bind(SocketAddr::new(lb_addr, 7000)).unwrap());
    let before = lb.stats().unwrap().passed_non_vip.packets;
    let to = SocketAddr::new(lb_addr, 7000);
    rig.net.client.run(move || std::net::TcpStream::connect_timeout(&to, TIMEOUT).expect("reach the LB host"));
    let (_s, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), client_addr(vip_family));
    assert!(lb.stats().unwrap().passed_non_vip.packets > before);
    let s = lb.stats().unwrap();
    assert_eq!(s.drops.unsupported.packets + s.drops.headroom.packets, 0, "{s:?}");
    if mode != ForwardingMode::Ipip {
        assert_eq!(s.drops.mtu.packets, 0, "{s:?}");
    }
    // The traffic really took the XDP paths.
    assert!(s.redirected.packets > 2000, "{mode}: forwarded in XDP: {s:?}");
    if mode == ForwardingMode::Nat {
        assert!(s.nat_replies.packets > 1000, "{mode}: replies translated in XDP: {s:?}");
    }
    if mode == ForwardingMode::Ipip {
        assert!(s.too_big_sent.packets >= 1, "{mode}: the client was told the path MTU: {s:?}");
        let decapsulated: u64 = rig._decaps.iter().map(|d| d.stats().unwrap().decapsulated.packets).sum();
        assert!(decapsulated > 2000, "{mode}: backends decapsulated {decapsulated}");
    }
}

#[test]
fn l2_dsr_ipv4() {
    scenario("edsr4", ForwardingMode::L2Dsr, Family::V4, Family::V4);
}

#[test]
fn l2_dsr_ipv6() {
    scenario("edsr6", ForwardingMode::L2Dsr, Family::V6, Family::V6);
}

#[test]
fn ipip_ipv4_in_ipv4() {
    scenario("eip44", ForwardingMode::Ipip, Family::V4, Family::V4);
}

#[test]
fn ipip_ipv6_in_ipv6() {
    scenario("eip66", ForwardingMode::Ipip, Family::V6, Family::V6);
}

#[test]
fn ipip_ipv4_in_ipv6() {
    scenario("eip46", ForwardingMode::Ipip, Family::V4, Family::V6);
}

#[test]
fn nat_ipv4() {
    scenario("enat4", ForwardingMode::Nat, Family::V4, Family::V4);
}

#[test]
fn nat_ipv6() {
    scenario("enat6", ForwardingMode::Nat, Family::V6, Family::V6);
}

/// The filter in front, the LB behind it through a tail call: a blocked
/// client never reaches the VIP, the others are balanced as usual.
#[test]
fn filter_in_front_of_the_lb() {
    ensure_bpffs();
    let net = LbNet::new("efilt", 3, BackendKind::VipOnLoopback);
    let servers: Vec<Servers> = net
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Servers::start(ns, &format!("b{}", i + 1), VIP_PORT, vec![IpAddr::V4(VIP_V4)]))
        .collect();
    let (filter, lb) = net.lb.run(|| {
        let lb = LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .connections(4096)
            .load()
            .unwrap();
        let filter = Filter::builder().interface("eth0").v4_capacity(1024).v6_capacity(1024).attach().unwrap();
        filter.set_next(lb.program_fd()).unwrap();
        (filter, lb)
    });
    let vip = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), VIP_PORT));
    lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr)).unwrap();
    for i in 1..=3 {
        lb.add_backend(&vip, IpAddr::V4(backend_v4(i)), 1).unwrap();
    }
    filter.blocklist().insert(format!("{CLIENT2_V4}/32").parse().unwrap()).unwrap();
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), VIP_PORT);
    let (names, blocked) = net.client.run(move || {
        let names: Vec<(SocketAddr, String)> = (0..60)
            .map(|_| {
                let src = SocketAddr::new(CLIENT_V4.into(), 0);
                let mut c = Conn::open_from(src, to, Duration::from_millis(400)).expect("an allowed client connects");
                let name = c.ask().unwrap();
                (c.local, name)
            })
            .collect();
        let blocked = Conn::open_from(SocketAddr::new(CLIENT2_V4.into(), 0), to, Duration::from_millis(400));
        (names, blocked.is_err())
    });
    assert!(blocked, "the blocked client must not reach the VIP");
    let mut seen = std::collections::HashSet::new();
    for (local, name) in names {
        let b = lb.backend_for(&vip, &Flow::new(local, to, Protocol::Tcp)).unwrap().unwrap();
        assert_eq!(format!("b{}", (1..=3).find(|&i| IpAddr::V4(backend_v4(i)) == b.ip).unwrap()), name);
        seen.insert(name);
    }
    assert_eq!(seen.len(), 3, "all backends serve the allowed client");
    let fs = filter.stats().unwrap();
    assert!(fs.blocked_v4.packets >= 1, "{fs:?}");
    assert!(lb.vip_stats(&vip).unwrap().traffic.packets >= 60 * 3);
    drop(servers);
}

// ---- next hops and neighbours ------------------------------------------------

/// Live UDP traffic to a VIP while `ip neigh flush all` runs on the LB (it
/// removes the managed entries too): delivery recovers by itself, through
/// the stack's own resolution, and the managed entries come back with
/// `refresh_neighbours`. Prints the longest outage measured.
fn flush_under_live_traffic(tag: &str, mode: ForwardingMode, family: Family) {
    let rig = Rig::new(tag, mode, family, family);
    let lb = rig.lb.clone();
    let vip = rig.vip(Protocol::Udp, VIP_PORT);
    lb.add_vip(vip, VipConfig::new(mode)).unwrap();
    lb.batch(&vip).add(rig.backend(1), 1).add(rig.backend(2), 1).add(rig.backend(3), 1).apply().unwrap();
    let to = SocketAddr::new(vip.addr, VIP_PORT);
    let client = client_addr(family);
    let total = Duration::from_secs(4);
    let flush_after = Duration::from_secs(1);
    // One question every 5 ms, from 8 flows in turn (spread over the
    // backends), each waiting up to 40 ms for its answer.
    let traffic = rig.net.client.spawn(move || {
        let socks: Vec<std::net::UdpSocket> = (0..8)
            .map(|_| {
                let s = std::net::UdpSocket::bind(SocketAddr::new(client, 0)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(40))).unwrap();
                s
            })
            .collect();
        let start = std::time::Instant::now();
        let mut log = Vec::new();
        let mut buf = [0u8; 64];
        for k in 0.. {
            let sent = start.elapsed();
            if sent > total {
                break;
            }
            let s = &socks[k % socks.len()];
            s.send_to(b"who", to).unwrap();
            let ok = loop {
                match s.recv_from(&mut buf) {
                    Ok((_, from)) if from == to => break true,
                    Ok(_) => continue,
                    Err(_) => break false,
                }
            };
            log.push((sent, ok));
            std::thread::sleep(Duration::from_millis(5));
        }
        (start, log)
    });
    std::thread::sleep(flush_after);
    let flushed = std::time::Instant::now();
    rig.net.lb.ip(&["neigh", "flush", "all"]);
    let (start, log) = traffic.join().unwrap();
    let flush_at = flushed - start;
    let answered_before = log.iter().filter(|(t, ok)| *t < flush_at && *ok).count();
    let sent_before = log.iter().filter(|(t, _)| *t < flush_at).count();
    assert!(answered_before * 10 >= sent_before * 9, "{mode}: before the flush {answered_before}/{sent_before}");
    // The longest time without an answered question, from the flush on.
    let mut last_ok = flush_at;
    let mut outage = Duration::ZERO;
    for (t, ok) in log.iter().filter(|(t, _)| *t >= flush_at) {
        if *ok {
            outage = outage.max(t.saturating_sub(last_ok));
            last_ok = *t;
        }
    }
    let end = log.last().unwrap().0;
    outage = outage.max(end.saturating_sub(last_ok));
    let tail: Vec<bool> = log.iter().filter(|(t, _)| *t + Duration::from_secs(1) >= end).map(|(_, ok)| *ok).collect();
    let tail_ok = tail.iter().filter(|ok| **ok).count();
    let unresolved: u64 = lb.backend_stats(&vip).unwrap().iter().map(|b| b.no_neighbour.packets).sum();
    println!(
        "{mode} {family:?}: `ip neigh flush all` under live traffic: longest outage {:.0} ms, \
         {unresolved} packets through the stack meanwhile, {tail_ok}/{} answered in the last second",
        outage.as_secs_f64() * 1e3,
        tail.len()
    );
    assert!(outage < Duration::from_secs(3), "{mode}: delivery recovers (outage {outage:?})");
    assert!(tail_ok * 10 >= tail.len() * 9, "{mode}: {tail_ok}/{} answered in the last second", tail.len());
    assert!(unresolved > 0, "{mode}: the flush took the next hops away, and the stack resolved them");
    // The managed entries come back (the stack's own entries become managed).
    assert!(lb.refresh_neighbours().unwrap() >= 1, "{mode}");
    let shown = String::from_utf8_lossy(&rig.net.lb.ip(&["neigh", "show", "dev", "eth1"]).stdout).into_owned();
    for i in 1..=3 {
        let ip = backend_addr(family, i).to_string();
        let line = shown.lines().find(|l| l.starts_with(&format!("{ip} "))).unwrap_or_else(|| panic!("{ip}: {shown}"));
        assert!(line.contains("managed") && line.contains("proto 88"), "{mode}: {line}");
    }
}

#[test]
fn neighbour_flush_under_live_traffic_l2_dsr_ipv4() {
    flush_under_live_traffic("efdsr", ForwardingMode::L2Dsr, Family::V4);
}

#[test]
fn neighbour_flush_under_live_traffic_ipip_ipv6() {
    flush_under_live_traffic("efip6", ForwardingMode::Ipip, Family::V6);
}

#[test]
fn neighbour_flush_under_live_traffic_nat_ipv4() {
    flush_under_live_traffic("efnat", ForwardingMode::Nat, Family::V4);
}

/// A backend whose host is down: its neighbour shows as unreachable, and
/// the packets sent its way are counted (globally and for it) rather than
/// silently lost; the other backends carry on.
#[test]
fn a_backend_that_is_down_is_shown_and_its_traffic_counted() {
    let rig = Rig::new("edown", ForwardingMode::Ipip, Family::V4, Family::V4);
    let lb = rig.lb.clone();
    let vip = rig.vip(Protocol::Udp, VIP_PORT);
    let dead: IpAddr = "198.51.100.99".parse().unwrap(); // nobody has it
    lb.add_vip(vip, VipConfig::new(ForwardingMode::Ipip)).unwrap();
    lb.batch(&vip).add(rig.backend(1), 1).add(rig.backend(2), 1).add(dead, 1).apply().unwrap();
    let to = SocketAddr::new(vip.addr, VIP_PORT);
    let (mut to_dead, mut to_live) = (Vec::new(), Vec::new());
    for port in 41000u16..41200 {
        let local = SocketAddr::new(client_addr(Family::V4), port);
        let b = lb.backend_for(&vip, &Flow::new(local, to, Protocol::Udp)).unwrap().unwrap();
        if b.ip == dead {
            to_dead.push(local)
        } else {
            to_live.push(local)
        }
    }
    let (to_dead, to_live): (Vec<_>, Vec<_>) = (to_dead[..5].to_vec(), to_live[..5].to_vec());
    let before = lb.stats().unwrap().passed_no_neighbour.packets;
    let answers = rig.net.client.run(move || {
        let ask = |l: &SocketAddr| udp_ask(*l, to, Duration::from_millis(150)).is_ok();
        (to_dead.iter().map(ask).collect::<Vec<_>>(), to_live.iter().map(ask).collect::<Vec<_>>())
    });
    assert_eq!(answers.0, vec![false; 5], "the dead backend answers nothing");
    assert_eq!(answers.1, vec![true; 5], "the others carry on");
    // Every question (three tries each) to the dead one was counted.
    let started = std::time::Instant::now();
    let stats = loop {
        let s = lb.backend_stats(&vip).unwrap();
        let d = *s.iter().find(|b| b.addr().ip == dead).unwrap();
        if d.next_hop.state == NeighbourState::Unreachable || started.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let d = stats.iter().find(|b| b.addr().ip == dead).unwrap();
    println!("the dead backend after {:?}: {d:?}", started.elapsed());
    assert_eq!(d.next_hop.state, NeighbourState::Unreachable, "{d:?}");
    assert_eq!(d.next_hop.via, Some(dead));
    assert_eq!(d.traffic.packets, 15, "{d:?}");
    assert_eq!(d.no_neighbour.packets, 15, "{d:?}: every packet to it went to the stack, counted");
    assert!(lb.stats().unwrap().passed_no_neighbour.packets >= before + 15);
    for b in stats.iter().filter(|b| b.addr().ip != dead) {
        assert_eq!(b.next_hop.state, NeighbourState::Resolved, "{b:?}");
        assert_eq!(b.no_neighbour.packets, 0, "{b:?}: resolved before the first packet");
    }
}

/// The backends one router hop away: the router is every backend's next
/// hop, resolved (and kept resolved) without any warm-up, in IPIP and NAT,
/// both families.
#[test]
fn backends_one_router_hop_away() {
    ensure_bpffs();
    let net = LbNet::routed("erout", 3, BackendKind::VipOnLoopback);
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, ns) in net.backends.iter().enumerate() {
        let i = i + 1;
        servers.push(Servers::start(ns, &format!("b{i}"), VIP_PORT, vec![]));
        servers.push(Servers::start(ns, &format!("b{i}"), NAT_PORT, vec![]));
        decaps.push(ns.run(move || {
            Decap::builder()
                .interface("eth0")
                .local(IpAddr::V4(backend_v4(i)))
                .local(IpAddr::V6(backend_v6(i)))
                .attach()
                .expect("attach the decapsulator")
        }));
    }
    let lb = net.lb.run(|| {
        LoadBalancer::builder()
            .interface("eth0")
            .interface("eth1")
            .connections(4096)
            .ipip_source(IPIP_SRC_V4.parse().unwrap())
            .ipip_source(IPIP_SRC_V6.parse().unwrap())
            .attach()
            .unwrap()
    });
    for (mode, family, port) in [
        (ForwardingMode::Ipip, Family::V4, VIP_PORT),
        (ForwardingMode::Ipip, Family::V6, VIP_PORT),
        (ForwardingMode::Nat, Family::V4, 82),
        (ForwardingMode::Nat, Family::V6, 82),
    ] {
        let vip = Vip::tcp(SocketAddr::new(vip_addr(family), port));
        lb.add_vip(vip, VipConfig::new(mode)).unwrap();
        let backend = |i| -> BackendAddr {
            if mode == ForwardingMode::Nat {
                SocketAddr::new(backend_addr(family, i), NAT_PORT).into()
            } else {
                backend_addr(family, i).into()
            }
        };
        lb.batch(&vip).add(backend(1), 1).add(backend(2), 1).add(backend(3), 1).apply().unwrap();
        let to = SocketAddr::new(vip.addr, port);
        let client = client_addr(family);
        let answers: Vec<(SocketAddr, String)> = net.client.run(move || {
            (0..30)
                .map(|k| {
                    let mut c = Conn::open_from(SocketAddr::new(client, 43000 + k), to, TIMEOUT)
                        .unwrap_or_else(|e| panic!("{mode} {to}: connect {k}: {e}"));
                    (c.local, c.ask().unwrap())
                })
                .collect()
        });
        let mut seen = std::collections::BTreeSet::new();
        for (local, name) in answers {
            let b = lb.backend_for(&vip, &Flow::new(local, to, Protocol::Tcp)).unwrap().unwrap();
            let i = (1..=3).find(|&i| backend(i) == b).unwrap();
            assert_eq!(name, format!("b{i}"), "{mode} {family:?}");
            seen.insert(name);
        }
        assert_eq!(seen.len(), 3, "{mode} {family:?}: all backends answer");
        let router: IpAddr = match family {
            Family::V4 => ROUTER_LB_SIDE_V4.into(),
            Family::V6 => ROUTER_LB_SIDE_V6.into(),
        };
        for b in lb.backend_stats(&vip).unwrap() {
            assert_eq!(b.next_hop.via, Some(router), "{mode} {family:?}: {b:?}");
            assert_eq!(b.next_hop.state, NeighbourState::Resolved, "{b:?}");
        }
    }
    let s = lb.stats().unwrap();
    assert!(s.redirected.packets > 4 * 30 * 3, "forwarded in XDP: {s:?}");
    assert!(s.nat_replies.packets > 2 * 30 * 2, "NAT replies through the router translated in XDP: {s:?}");
    // One managed entry per family, for the router, shared by every backend.
    let shown = String::from_utf8_lossy(&net.lb.ip(&["neigh", "show", "proto", "88"]).stdout).into_owned();
    assert_eq!(shown.lines().count(), 2, "{shown}");
    drop(lb);
    let left = String::from_utf8_lossy(&net.lb.ip(&["neigh", "show", "proto", "88"]).stdout).into_owned();
    assert!(left.trim().is_empty(), "an LB that goes away removes its entries: {left}");
    drop(decaps);
    drop(servers);
}

/// Issue 14: full-size datagrams (DF set, too big once encapsulated) keep
/// arriving for an IPIP backend; each gets the LB's "fragmentation needed"
/// answer, and other flows to the same backend, on the same CPU, carry on
/// without a stall (a cached too-big answer used to send them back out of
/// the client side with zero MACs for 100 ms).
#[test]
fn full_size_packets_do_not_stall_other_flows_to_the_backend() {
    let rig = Rig::new("ebig", ForwardingMode::Ipip, Family::V4, Family::V4);
    let lb = rig.lb.clone();
    let vip = rig.vip(Protocol::Udp, VIP_PORT);
    lb.add_vip(vip, VipConfig::new(ForwardingMode::Ipip)).unwrap();
    lb.batch(&vip).add(rig.backend(1), 1).add(rig.backend(2), 1).add(rig.backend(3), 1).apply().unwrap();
    let to = SocketAddr::new(vip.addr, VIP_PORT);
    let client = client_addr(Family::V4);
    let backend_of = |port| lb.backend_for(&vip, &Flow::new(SocketAddr::new(client, port), to, Protocol::Udp)).unwrap();
    let big_port = 42000u16;
    let target = backend_of(big_port);
    let small: Vec<u16> = (42001u16..43000).filter(|p| backend_of(*p) == target).take(8).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Everything the client sends runs on one CPU, so the LB's XDP program
    // (run by the sender's softirq on a veth) sees it all on one CPU too.
    let pin = || {
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).unwrap();
    };
    let big = {
        let stop = stop.clone();
        rig.net.client.spawn(move || {
            pin();
            let s = std::net::UdpSocket::bind(SocketAddr::new(client, big_port)).unwrap();
            // DF on every datagram, whatever path MTU the ICMP teaches.
            let probe: nix::libc::c_int = nix::libc::IP_PMTUDISC_PROBE;
            // SAFETY: a valid int option on a valid socket.
            let rc = unsafe {
                nix::libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    nix::libc::IPPROTO_IP,
                    nix::libc::IP_MTU_DISCOVER,
                    (&probe as *const nix::libc::c_int).cast(),
                    std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "IP_PMTUDISC_PROBE");
            let payload = vec![b'x'; 1500 - 28];
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.send_to(&payload, to).is_ok() {
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let (answered, asked) = rig.net.client.run(move || {
        pin();
        let mut answered = 0;
        let mut asked = 0;
        let socks: Vec<std::net::UdpSocket> = small
            .iter()
            .map(|p| {
                let s = std::net::UdpSocket::bind(SocketAddr::new(client, *p)).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                s
            })
            .collect();
        let start = std::time::Instant::now();
        for round in 0.. {
            if start.elapsed() > Duration::from_secs(1) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            for s in &socks {
                asked += 1;
                s.send_to(format!("who {round}").as_bytes(), to).unwrap();
                let mut buf = [0u8; 64];
                if matches!(s.recv_from(&mut buf), Ok((_, from)) if from == to) {
                    answered += 1;
                }
            }
        }
        (answered, asked)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let big_sent = big.join().unwrap();
    let s = lb.stats().unwrap();
    println!(
        "{big_sent} full-size datagrams, {} ICMP answers; {answered}/{asked} small questions answered",
        s.too_big_sent.packets
    );
    assert!(s.too_big_sent.packets >= 100, "the full-size datagrams were answered with ICMP: {s:?}");
    assert_eq!(answered, asked, "no other flow to {target:?} stalled: {s:?}");
    assert_eq!(s.tx.packets, 0, "nothing forwarded back out of the client side: {s:?}");
}
