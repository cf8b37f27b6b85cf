//! What the load balancer's verdict suites (tests/lb_verdicts_*.rs) share:
//! the LB they load, the VerdictNet they run it in, client frames built
//! with the test kit, and the output frames the LB must produce (built with
//! the kit too, so a fixture compares whole frames field by field).
//!
//! Use it with `mod common { pub mod lb; pub mod scratch; }`.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use xdpguard::testing::frame::{Frame, FrameBuilder, Icmp};
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{BackendAddr, LoadBalancer, NewFlowLimit, Protocol, Vip, VipConfig};

/// The payload of client frames.
pub const PAYLOAD: &[u8] = b"hello, backend";

pub fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// A TCP or UDP packet between two sockets: what tests send and what they
/// expect out, rebuilt with other addresses, TTL or MACs.
#[derive(Debug, Clone)]
pub struct Pkt {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub proto: Protocol,
    /// TCP: a SYN (sequence 1000, window 64000), else an ACK of 77.
    pub syn: bool,
    pub payload: Vec<u8>,
    pub ttl: u8,
}

impl Pkt {
    pub fn new(src: SocketAddr, dst: SocketAddr, proto: Protocol, syn: bool) -> Pkt {
        Pkt { src, dst, proto, syn, payload: PAYLOAD.to_vec(), ttl: 64 }
    }

    pub fn payload(mut self, payload: &[u8]) -> Pkt {
        self.payload = payload.to_vec();
        self
    }

    /// The builder, from the IP header on (to add options, change DF, ...).
    pub fn builder(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> FrameBuilder {
        let b = Frame::builder().macs(src_mac, dst_mac).ip(self.src.ip(), self.dst.ip()).ttl(self.ttl);
        let b = match self.proto {
            Protocol::Tcp => {
                let t = b.tcp(self.src.port(), self.dst.port()).seq(1000).window(64000);
                if self.syn {
                    t.syn()
                } else {
                    t.ack(77)
                }
            }
            Protocol::Udp => b.udp(self.src.port(), self.dst.port()),
        };
        b.payload(&self.payload)
    }

    pub fn frame(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Frame {
        self.builder(src_mac, dst_mac).build()
    }

    /// The same packet with another destination, one hop later (NAT
    /// towards a backend).
    pub fn to(&self, dst: SocketAddr) -> Pkt {
        Pkt { dst, ttl: self.ttl - 1, ..self.clone() }
    }

    /// The same packet with another source, one hop later (NAT towards a
    /// client).
    pub fn from(&self, src: SocketAddr) -> Pkt {
        Pkt { src, ttl: self.ttl - 1, ..self.clone() }
    }
}

/// A client frame as received on the LB's eth0.
pub fn frame(lb_mac: [u8; 6], src: SocketAddr, dst: SocketAddr, proto: Protocol, syn: bool, payload: &[u8]) -> Frame {
    Pkt::new(src, dst, proto, syn).payload(payload).frame(CLIENT_MAC, lb_mac)
}

/// The inner packet's DSCP and ECN: an IPv4 header's TOS byte, an IPv6
/// header's traffic class.
pub fn inner_tos(inner: &[u8]) -> u8 {
    if inner[0] >> 4 == 4 {
        inner[1]
    } else {
        (inner[0] << 4) | (inner[1] >> 4)
    }
}

/// What IPIP makes of `input` (an Ethernet frame of an IP packet): an
/// outer IPv4 header (TOS copied from the inner IPv4 header, no DF, TTL 64,
/// identification `ipip_outer_id`'s) or IPv6 header (hop limit 64, traffic
/// class the inner's, flow label from the flow hash, which a /64 source
/// prefix carries in the source's low 32 bits) in front of the whole
/// packet, from `egress_mac` to `next_hop_mac`.
pub fn ipip(input: &[u8], src: IpAddr, dst: IpAddr, egress_mac: [u8; 6], next_hop_mac: [u8; 6]) -> Frame {
    let inner = &input[14..];
    let b = Frame::builder().macs(egress_mac, next_hop_mac).ip(src, dst).ttl(64).tos(inner_tos(inner));
    let b = match src {
        IpAddr::V4(_) => b.id(ipip_outer_id(inner)).df(false),
        IpAddr::V6(s) => b.flow_label(u32::from_be_bytes(s.octets()[12..16].try_into().unwrap()) & 0xF_FFFF),
    };
    b.ip_payload(inner).build()
}

/// Which backend (1-based) a neighbour MAC belongs to.
pub fn backend_of_mac(mac: &[u8]) -> usize {
    assert_eq!(mac[..5], backend_mac(0)[..5], "not a backend MAC: {mac:02x?}");
    usize::from(mac[5])
}

/// Which backend (1-based) an address belongs to.
pub fn backend_of_ip(ip: IpAddr) -> usize {
    (1..=9)
        .find(|&i| ip == IpAddr::V4(backend_v4(i)) || ip == IpAddr::V6(backend_v6(i)))
        .unwrap_or_else(|| panic!("{ip} is not a backend address"))
}

pub fn backend_index(b: BackendAddr) -> usize {
    backend_of_ip(b.ip)
}

/// The destination MAC of a frame.
pub fn dst_mac(frame: &[u8]) -> [u8; 6] {
    frame[0..6].try_into().unwrap()
}

/// The LB every suite loads: both interfaces, room for 16 VIPs and 64
/// backends, no new-flow bound, IPIP sources of both families.
pub fn lb() -> LoadBalancer {
    LoadBalancer::builder()
        .redirect_interface("eth0")
        .redirect_interface("eth1")
        .max_vips(16)
        .max_backends(64)
        .connections(4096)
        .new_flow_limit(NewFlowLimit::Unlimited)
        .ipip_source(IPIP_SRC_V4.parse().unwrap())
        .ipip_source(IPIP_SRC_V6.parse().unwrap())
        .load()
        .expect("load the LB (needs root)")
}

pub fn backends_v4(n: usize) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V4(backend_v4(i))).collect()
}

pub fn backends_v6(n: usize) -> Vec<IpAddr> {
    (1..=n).map(|i| IpAddr::V6(backend_v6(i))).collect()
}

pub fn vip_with(lb: &LoadBalancer, vip: Vip, config: VipConfig, backends: &[IpAddr]) {
    lb.add_vip(vip, config).unwrap();
    let mut batch = lb.batch(&vip);
    for b in backends {
        batch = batch.add(*b, 1);
    }
    batch.apply().unwrap();
}

/// The interfaces of a VerdictNet, for code running inside its LB namespace.
#[derive(Clone, Copy, Debug)]
pub struct VerdictInfo {
    pub eth0: u32,
    pub eth1: u32,
    pub eth0_mac: [u8; 6],
    pub eth1_mac: [u8; 6],
}

/// Runs `f` inside the LB namespace of a fresh VerdictNet with `n` backends.
pub fn in_lb_ns<R: Send + 'static>(tag: &str, n: usize, f: impl FnOnce(VerdictInfo) -> R + Send + 'static) -> R {
    ensure_bpffs();
    let vn = VerdictNet::new(tag, n);
    let info = VerdictInfo { eth0: vn.eth0, eth1: vn.eth1, eth0_mac: vn.eth0_mac, eth1_mac: vn.eth1_mac };
    let r = vn.lb.run(move || f(info));
    drop(vn);
    r
}

pub fn client(i: u16) -> SocketAddr {
    sa(CLIENT_V4, 30000 + i)
}

pub fn client6(i: u16) -> SocketAddr {
    sa(CLIENT_V6, 30000 + i)
}

/// A VIP's address and port (80 for all-ports VIPs).
pub fn addr_port(vip: &Vip) -> SocketAddr {
    SocketAddr::new(vip.addr, vip.port.unwrap_or(80))
}

/// Pins the calling thread to CPU 0 (per-CPU state: caches, rate buckets).
pub fn pin_to_cpu0() {
    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(0).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).unwrap();
}

/// An ICMP error from the client-side router to the VIP, quoting a packet
/// the VIP sent to `client` (the reply direction of the client's flow):
/// "fragmentation needed" / "packet too big", MTU 1280.
pub fn icmp_error(lb_mac: [u8; 6], vip: SocketAddr, client: SocketAddr, proto: Protocol) -> Frame {
    let quoted = Pkt::new(vip, client, proto, false).payload(&[0u8; 1400]);
    let quoted = quoted.to(client).frame(lb_mac, CLIENT_MAC);
    let hdr = if vip.is_ipv4() { 20 } else { 40 };
    let router: IpAddr = if vip.is_ipv4() { ROUTER_V4.into() } else { ROUTER_V6.into() };
    Frame::builder()
        .macs(CLIENT_MAC, lb_mac)
        .ip(router, vip.ip())
        .icmp(Icmp::TooBig { mtu: 1280 })
        .payload(&quoted.ip_packet()[..hdr + 8 + 20]) // what routers quote: header + a bit more
        .build()
}
