//! The load-balancer test bed: namespaces, addresses, routes and
//! neighbours for verdict tests, end-to-end traffic and demos (on top of
//! [`netns`](super::netns)).
//!
//! - [`VerdictNet`]: an LB namespace with a client-side (`eth0`) and a
//!   backend-side (`eth1`) veth, addresses, routes and permanent neighbour
//!   entries, so `bpf_fib_lookup` finds next hops for `BPF_PROG_TEST_RUN`
//!   frames. Nothing is sent.
//! - [`LbNet`]: client namespace — LB namespace — bridge namespace with N
//!   backend namespaces, for real traffic (optionally with a router between
//!   the LB and the backends: [`LbNet::routed`]). Backends run servers that
//!   answer with their own name over TCP and UDP ([`Servers`]); [`Conn`]
//!   and [`udp_ask`] ask them from the client.
//!
//! Documentation addresses only: clients 192.0.2.0/24 and 2001:db8:c::/64,
//! backends 198.51.100.0/24 and 2001:db8:b::/64, VIPs 203.0.113.0/25 and
//! 2001:db8:f::/64, IPIP outer sources 203.0.113.128/25 and 2001:db8:e::/64.
//!
//! Needs root, `ip`, `ethtool` and `sysctl`; the helpers panic with the
//! failing command (they are meant for tests).
//!
//! ```no_run
//! use xdpguard::testing::frame::Frame;
//! use xdpguard::testing::lb_topology::{backend_v4, VerdictNet, CLIENT_MAC, CLIENT_V4, VIP_V4};
//! use xdpguard::{ForwardingMode, LoadBalancer, Vip, VipConfig, XdpAction};
//!
//! let net = VerdictNet::new("doc", 1);
//! let (eth0, mac) = (net.eth0, net.eth0_mac);
//! let action = net.lb.run(move || {
//!     let lb = LoadBalancer::builder().redirect_interface("eth0").redirect_interface("eth1").load()?;
//!     let vip = Vip::tcp((VIP_V4, 80).into());
//!     lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr))?;
//!     lb.add_backend(&vip, std::net::IpAddr::V4(backend_v4(1)), 1)?;
//!     let syn = Frame::builder().macs(CLIENT_MAC, mac).ipv4(CLIENT_V4, VIP_V4).tcp(40000, 80).build();
//!     Ok::<_, xdpguard::Error>(lb.test_run_on(&syn, eth0)?.action)
//! })?;
//! assert_eq!(action, XdpAction::Redirect);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::netns::{veth, NetNs};

/// The client's IPv4 address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
/// A second client address (for filter tests).
pub const CLIENT2_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// The LB's client-side IPv4 address (eth0).
pub const LB_FRONT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The LB's client-side IPv6 address (eth0).
pub const LB_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0xfe);
/// The LB's backend-side IPv4 address (eth1).
pub const LB_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The LB's backend-side IPv6 address (eth1).
pub const LB_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0xfe);
/// An IPv4 VIP address (tests use it for single-port VIPs).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// An IPv6 VIP address (single-port VIPs).
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x10);
/// A second IPv4 VIP address (all-ports VIPs, or a second VIP).
pub const VIP2_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// A second IPv6 VIP address.
pub const VIP2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x20);
/// The IPv4 IPIP outer source prefix.
pub const IPIP_SRC_V4: &str = "203.0.113.128/25";
/// The IPv6 IPIP outer source prefix.
pub const IPIP_SRC_V6: &str = "2001:db8:e::/64";
/// A router on the client side that sends ICMP errors (IPv4).
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
/// The client-side router's IPv6 address.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x99);

/// Backend `i` (1-based): 198.51.100.(10+i) and 2001:db8:b::(10+i).
pub fn backend_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10 + i as u8)
}

/// Backend `i`'s IPv6 address (see [`backend_v4`]).
pub fn backend_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x10 + i as u16)
}

/// The MAC [`VerdictNet`] gives backend `i`'s neighbour entries.
pub fn backend_mac(i: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0b, i as u8]
}

/// The client's MAC in [`VerdictNet`].
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0c, 0x01];

/// The LB's client-side (eth0) and backend-side (eth1) addresses, and
/// forwarding on.
fn lb_addresses(lb: &NetNs) {
    lb.addr("eth0", &format!("{LB_FRONT_V4}/24"));
    lb.addr("eth0", &format!("{LB_FRONT_V6}/64"));
    lb.addr("eth1", &format!("{LB_BACK_V4}/24"));
    lb.addr("eth1", &format!("{LB_BACK_V6}/64"));
    lb.sysctl("net.ipv4.ip_forward", "1");
    lb.sysctl("net.ipv6.conf.all.forwarding", "1");
}

/// An LB namespace for verdict tests: `eth0` faces clients, `eth1` faces
/// backends 1..=`backends` (static neighbours, MACs from [`backend_mac`]).
#[derive(Debug)]
pub struct VerdictNet {
    /// The LB's namespace (run the LB there: [`NetNs::run`]).
    pub lb: NetNs,
    /// Holds the other ends of both veths.
    pub peer: NetNs,
    /// Index of the client-side interface.
    pub eth0: u32,
    /// Index of the backend-side interface.
    pub eth1: u32,
    /// MAC of the client-side interface.
    pub eth0_mac: [u8; 6],
    /// MAC of the backend-side interface.
    pub eth1_mac: [u8; 6],
}

impl VerdictNet {
    /// Creates the namespaces (`<tag>l`, `<tag>p`), veths, addresses and
    /// neighbours for backends `1..=backends`.
    ///
    /// # Panics
    /// When a command fails.
    pub fn new(tag: &str, backends: usize) -> VerdictNet {
        let lb = NetNs::new(&format!("{tag}l"));
        let peer = NetNs::new(&format!("{tag}p"));
        veth(&lb, "eth0", &peer, "c0");
        veth(&lb, "eth1", &peer, "b0");
        lb_addresses(&lb);
        lb.static_neighbours("eth0", &[IpAddr::V4(CLIENT_V4), IpAddr::V6(CLIENT_V6)], CLIENT_MAC);
        lb.static_neighbours("eth0", &[IpAddr::V4(ROUTER_V4), IpAddr::V6(ROUTER_V6)], [2, 0, 0, 0, 0x0c, 0x99]);
        for i in 1..=backends {
            lb.static_neighbours("eth1", &[IpAddr::V4(backend_v4(i)), IpAddr::V6(backend_v6(i))], backend_mac(i));
        }
        VerdictNet {
            eth0: lb.ifindex("eth0"),
            eth1: lb.ifindex("eth1"),
            eth0_mac: lb.mac("eth0"),
            eth1_mac: lb.mac("eth1"),
            lb,
            peer,
        }
    }
}

/// How the backends of an [`LbNet`] are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// VIPs on loopback (L2 DSR and IPIP).
    VipOnLoopback,
    /// Nothing extra (NAT: traffic arrives for the backend's own address).
    Plain,
}

/// Interfaces made from now on in `ns` skip IPv6 duplicate address
/// detection, also for their link-local addresses. A host that has been up
/// for a second has usable link-local addresses; an interface made a moment
/// ago has a tentative one for about a second, and the kernel sends no
/// neighbour solicitation without a usable one, so IPv6 next hops would
/// resolve only once DAD is over.
pub fn no_dad(ns: &NetNs) {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
}

/// The router of [`LbNet::routed`]: its address on the LB's side (the LB's
/// next hop for every backend) and on the backends' segment.
pub const ROUTER_LB_SIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 253);
/// The router's IPv6 address on the LB's side.
pub const ROUTER_LB_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 1);
/// The router's IPv4 address on the backends' segment (their gateway).
pub const ROUTER_BACK_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 126);
/// The router's IPv6 address on the backends' segment.
pub const ROUTER_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);
/// The LB's address on the link to that router.
pub const LB_TRANSIT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 0xfe);

/// client — LB — bridge — backends, for real traffic; or with a router
/// between the LB and the backends' segment ([`LbNet::routed`]).
#[derive(Debug)]
pub struct LbNet {
    /// The client (192.0.2.1, 192.0.2.2, 2001:db8:c::1; routes to the VIPs via the LB).
    pub client: NetNs,
    /// The LB (eth0 towards the client, eth1 towards the backends).
    pub lb: NetNs,
    /// The bridge joining the backends' segment.
    pub bridge: NetNs,
    /// Backends 1..=n, in order.
    pub backends: Vec<NetNs>,
    /// The router between the LB and the bridge, if any.
    pub router: Option<NetNs>,
    /// A pass-through XDP program on the client's veth: a veth kicks its
    /// peer's NAPI for XDP_TX frames (the LB's ICMP replies) only when the
    /// peer runs XDP; with GRO alone they wait for the next packet.
    _client_xdp: crate::Decap,
}

impl LbNet {
    /// The backends on the LB's own segment: each is its own next hop.
    ///
    /// # Panics
    /// When a command fails.
    pub fn new(tag: &str, n: usize, kind: BackendKind) -> LbNet {
        LbNet::build(tag, n, kind, false)
    }

    /// The backends one router hop away: the LB's eth1 faces a router
    /// (198.51.100.253/25, 2001:db8:d::1/64), which faces the backends'
    /// segment (198.51.100.0/25, 2001:db8:b::/64), so the router is every
    /// backend's next hop.
    ///
    /// # Panics
    /// When a command fails.
    pub fn routed(tag: &str, n: usize, kind: BackendKind) -> LbNet {
        LbNet::build(tag, n, kind, true)
    }

    fn build(tag: &str, n: usize, kind: BackendKind, routed: bool) -> LbNet {
        let client = NetNs::new(&format!("{tag}c"));
        let lb = NetNs::new(&format!("{tag}l"));
        let bridge = NetNs::new(&format!("{tag}b"));
        let router = routed.then(|| NetNs::new(&format!("{tag}r")));
        for ns in [&client, &lb, &bridge].into_iter().chain(router.as_ref()) {
            no_dad(ns);
        }
        veth(&client, "eth0", &lb, "eth0");
        match &router {
            None => veth(&lb, "eth1", &bridge, "lb0"),
            Some(r) => {
                veth(&lb, "eth1", r, "r0");
                veth(r, "r1", &bridge, "lb0");
            }
        }
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        bridge.ip(&["link", "set", "lb0", "master", "br0"]);

        client.addr("eth0", &format!("{CLIENT_V4}/24"));
        client.addr("eth0", &format!("{CLIENT2_V4}/24"));
        client.addr("eth0", &format!("{CLIENT_V6}/64"));
        for net in ["203.0.113.0/24", "198.51.100.0/24"] {
            client.ip(&["route", "add", net, "via", &LB_FRONT_V4.to_string()]);
        }
        for net in ["2001:db8:f::/64", "2001:db8:b::/64"] {
            client.ip(&["-6", "route", "add", net, "via", &LB_FRONT_V6.to_string()]);
        }

        match &router {
            None => lb_addresses(&lb),
            Some(r) => {
                lb.addr("eth0", &format!("{LB_FRONT_V4}/24"));
                lb.addr("eth0", &format!("{LB_FRONT_V6}/64"));
                lb.addr("eth1", &format!("{LB_BACK_V4}/25"));
                lb.addr("eth1", &format!("{LB_TRANSIT_V6}/64"));
                lb.sysctl("net.ipv4.ip_forward", "1");
                lb.sysctl("net.ipv6.conf.all.forwarding", "1");
                lb.ip(&["route", "add", "198.51.100.0/25", "via", &ROUTER_LB_SIDE_V4.to_string()]);
                lb.ip(&["-6", "route", "add", "2001:db8:b::/64", "via", &ROUTER_LB_SIDE_V6.to_string()]);
                r.addr("r0", &format!("{ROUTER_LB_SIDE_V4}/25"));
                r.addr("r0", &format!("{ROUTER_LB_SIDE_V6}/64"));
                r.addr("r1", &format!("{ROUTER_BACK_V4}/25"));
                r.addr("r1", &format!("{ROUTER_BACK_V6}/64"));
                r.sysctl("net.ipv4.ip_forward", "1");
                r.sysctl("net.ipv6.conf.all.forwarding", "1");
                for key in ["all", "default", "r0", "r1"] {
                    r.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
                }
                // Clients, VIPs and IPIP sources are behind the LB.
                for net in ["192.0.2.0/24", "203.0.113.0/24"] {
                    r.ip(&["route", "add", net, "via", &LB_BACK_V4.to_string()]);
                }
                for net in ["2001:db8:c::/64", "2001:db8:f::/64", "2001:db8:e::/64"] {
                    r.ip(&["-6", "route", "add", net, "via", &LB_TRANSIT_V6.to_string()]);
                }
            }
        }
        for key in ["all", "default", "eth0", "eth1"] {
            lb.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
        }
        let (gw4, gw6, plen4) =
            if routed { (ROUTER_BACK_V4, ROUTER_BACK_V6, 25) } else { (LB_BACK_V4, LB_BACK_V6, 24) };

        let mut backends = Vec::new();
        for i in 1..=n {
            let b = NetNs::new(&format!("{tag}{i}"));
            no_dad(&b);
            let port = format!("b{i}");
            veth(&b, "eth0", &bridge, &port);
            bridge.ip(&["link", "set", &port, "master", "br0"]);
            b.addr("eth0", &format!("{}/{plen4}", backend_v4(i)));
            b.addr("eth0", &format!("{}/64", backend_v6(i)));
            b.ip(&["route", "add", "default", "via", &gw4.to_string()]);
            b.ip(&["-6", "route", "add", "default", "via", &gw6.to_string()]);
            for key in ["all", "default", "eth0", "lo"] {
                b.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
            }
            if kind == BackendKind::VipOnLoopback {
                for vip in [format!("{VIP_V4}/32"), format!("{VIP2_V4}/32")] {
                    b.ip(&["addr", "add", &vip, "dev", "lo"]);
                }
                for vip in [format!("{VIP_V6}/128"), format!("{VIP2_V6}/128")] {
                    b.ip(&["addr", "add", &vip, "dev", "lo", "nodad"]);
                }
                // The VIP is not theirs to announce on the segment.
                b.sysctl("net.ipv4.conf.all.arp_ignore", "1");
                b.sysctl("net.ipv4.conf.all.arp_announce", "2");
            }
            // Every sender sends finished frames: complete checksums and no
            // GSO (a veth hands GSO super-frames to its peer unsegmented,
            // and XDP drops those bigger than a page before the program
            // runs). GRO on, so XDP_TX/REDIRECT into the veth delivers.
            backends.push(b);
        }
        // A decapsulator without local endpoints passes everything untouched.
        let _client_xdp = client.run(|| crate::Decap::builder().interface("eth0").attach().expect("client XDP"));
        LbNet { client, lb, bridge, backends, router, _client_xdp }
    }
}

/// Servers answering with their name: TCP (one line per line received)
/// and UDP (one datagram per datagram), on `port`, in one namespace.
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// Starts TCP on `[::]:port` (dual stack) and UDP on each of `udp_addrs`.
    /// They are listening when this returns.
    ///
    /// # Panics
    /// When a socket cannot be bound.
    pub fn start(ns: &NetNs, name: &str, port: u16, udp_addrs: Vec<IpAddr>) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        {
            let stop = stop.clone();
            let name = name.to_owned();
            let ready = ready_tx.clone();
            threads.push(ns.spawn(move || {
                let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).expect("tcp bind");
                listener.set_nonblocking(true).expect("nonblocking");
                ready.send(()).expect("ready");
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let stop = stop.clone();
                            let name = name.clone();
                            conns.push(thread::spawn(move || serve_tcp(stream, &name, &stop)));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(1)),
                    }
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
        }
        for addr in udp_addrs {
            let stop = stop.clone();
            let name = name.to_owned();
            let ready = ready_tx.clone();
            threads.push(ns.spawn(move || {
                let sock = UdpSocket::bind(SocketAddr::new(addr, port)).expect("udp bind");
                sock.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
                ready.send(()).expect("ready");
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(name.as_bytes(), from);
                    }
                }
            }));
        }
        drop(ready_tx);
        for _ in 0..threads.len() {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("servers start");
        }
        Servers { stop, threads }
    }
}

fn serve_tcp(stream: TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {
                if writer.write_all(format!("{name}\n").as_bytes()).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client TCP connection that asks "who are you?" as often as wanted.
#[derive(Debug)]
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The connection's local address.
    pub local: SocketAddr,
}

impl Conn {
    /// Connects to `to`.
    ///
    /// # Errors
    /// When the connection fails or times out.
    pub fn open(to: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        Conn::from_stream(TcpStream::connect_timeout(&to, timeout)?)
    }

    /// Connects from a chosen source address and port (std cannot bind
    /// before connecting, so the socket is made with raw calls).
    ///
    /// # Errors
    /// When binding or connecting fails.
    pub fn open_from(src: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<Conn> {
        Conn::from_stream(connect_from(src, to, timeout)?)
    }

    /// Wraps a connected stream (3 s read timeout).
    ///
    /// # Errors
    /// When the socket cannot be set up.
    pub fn from_stream(s: TcpStream) -> std::io::Result<Conn> {
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let local = s.local_addr()?;
        Ok(Conn { writer: s.try_clone()?, reader: BufReader::new(s), local })
    }

    /// Segments the kernel retransmitted on this connection so far
    /// (`tcpi_total_retrans` of `TCP_INFO`): a packet lost on the path
    /// shows here.
    ///
    /// # Errors
    /// When the socket cannot be asked.
    pub fn retransmits(&self) -> std::io::Result<u32> {
        use std::os::fd::AsRawFd;
        // SAFETY: tcp_info is plain data; zero is a valid value.
        let mut info: nix::libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<nix::libc::tcp_info>() as nix::libc::socklen_t;
        // SAFETY: the fd is this connection's open socket; info and len
        // describe a writable buffer of the size given.
        let ret = unsafe {
            nix::libc::getsockopt(
                self.writer.as_raw_fd(),
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_INFO,
                (&raw mut info).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(info.tcpi_total_retrans)
    }

    /// Asks "who": the answering backend's name.
    ///
    /// # Errors
    /// When the connection fails or closes.
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.ask_with(b"who")
    }

    /// Asks with a line of `question` (e.g. large, to exercise path MTU).
    ///
    /// # Errors
    /// When the connection fails or closes.
    pub fn ask_with(&mut self, question: &[u8]) -> std::io::Result<String> {
        // One write: with two, Nagle holds the newline until the server's
        // delayed ACK of the question (40 ms an ask once the connection
        // has left quick-ACK mode).
        let mut line = Vec::with_capacity(question.len() + 1);
        line.extend_from_slice(question);
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim().to_owned())
    }
}

/// One UDP question from `local` (an explicit port, so flows never repeat
/// by accident): the answering backend's name (three tries).
///
/// # Errors
/// When no answer comes, or one comes from elsewhere.
pub fn udp_ask(local: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let s = UdpSocket::bind(local)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    for _ in 0..3 {
        s.send_to(b"who", to)?;
        match s.recv_from(&mut buf) {
            Ok((n, from)) => {
                if from != to {
                    return Err(std::io::Error::other(format!("answer from {from}, not {to}")));
                }
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no UDP answer"))
}

/// A TCP connection from `src` (port 0: any) to `to`, with a connect timeout.
///
/// # Errors
/// When the socket cannot be bound or the connection fails.
pub fn connect_from(src: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use nix::libc;
    use std::os::fd::FromRawFd;

    fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; zero is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: 0,
                };
                // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
                unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }

    let family = if src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the fd is owned by the stream right below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket nobody else owns; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: a valid int option for a valid socket.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let (local, len) = sockaddr(src);
    // SAFETY: local holds a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A blocking connect gives up after the send timeout.
    stream.set_write_timeout(Some(timeout))?;
    let (remote, len) = sockaddr(to);
    // SAFETY: remote holds a valid sockaddr of `len` bytes.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_write_timeout(None)?;
    Ok(stream)
}

/// The outer IPv4 identification IPIP gives a 4in4 packet (`outer_id` in
/// src/bpf/lb_encap.h): `inner` is the received frame from the inner IPv4
/// header to the frame's end (trailing bytes included: the program reads
/// up to the frame's end). The inner ID; if 0, the 16-bit halves of the
/// transport header's bytes 4-7 XORed; if the frame is shorter than that,
/// the inner header checksum; never 0 (1 as the program stores it).
pub fn ipip_outer_id(inner: &[u8]) -> u16 {
    let id = [inner[4], inner[5]];
    if id != [0, 0] {
        return u16::from_be_bytes(id);
    }
    let l4 = usize::from(inner[0] & 0xF) * 4;
    let id = match inner.get(l4 + 4..l4 + 8) {
        Some(w) => [w[0] ^ w[2], w[1] ^ w[3]],
        None => [inner[10], inner[11]],
    };
    // The program's 1 is a native 32-bit value stored into the packet.
    let id = if id == [0, 0] { 1u16.to_ne_bytes() } else { id };
    u16::from_be_bytes(id)
}
