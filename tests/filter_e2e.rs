//! End to end: the filter attached to a real veth in a throwaway namespace,
//! real UDP and TCP listeners behind it, real clients sending from two
//! source addresses per family. Needs root; fails (never skips) without it.

mod common {
    pub mod flood;
    pub mod scratch;
    pub mod udp_echo;
}

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::flood::PacketSocket;
use common::scratch::ScratchDir;
use common::udp_echo::{udp_echo_reaches, UdpEcho};
use libbpf_rs::query::{LinkInfoIter, LinkTypeInfo, ProgInfoIter, ProgInfoQueryOptions, ProgramInfo};
use libbpf_rs::{MapHandle, ProgramType};
use xdpguard::testing::lb_topology::connect_from;
use xdpguard::testing::netns::*;
use xdpguard::{AttachMode, Error, Filter, FilterStats, IpNetwork};

const UDP_PORT: u16 = 7000;
const TCP_PORT: u16 = 7001;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

// --- listeners in the server namespace --------------------------------------

/// What the server's listeners saw, per source address.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    udp: u64,
    tcp: u64,
}

/// A UDP echo server and a TCP server (writes "ok" and closes) on all of the
/// server namespace's addresses, recording every source they see.
struct Listeners {
    udp: UdpEcho,
    stop: Arc<AtomicBool>,
    tcp_seen: Arc<Mutex<HashMap<IpAddr, u64>>>,
    tcp: Option<JoinHandle<()>>,
}

impl Listeners {
    fn start(ns: &NetNs) -> Listeners {
        let udp = UdpEcho::start(ns, UDP_PORT);
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_seen: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
        // Bind before returning, so no probe can race the listener.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let tcp = {
            let (stop, seen) = (stop.clone(), tcp_seen.clone());
            ns.spawn(move || {
                let listener = TcpListener::bind(("::", TCP_PORT)).expect("bind tcp");
                listener.set_nonblocking(true).unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, from)) => {
                            *seen.lock().unwrap().entry(from.ip().to_canonical()).or_default() += 1;
                            let _ = conn.write_all(b"ok\n");
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        ready_rx.recv().unwrap();
        Listeners { udp, stop, tcp_seen, tcp: Some(tcp) }
    }

    fn seen(&self, src: IpAddr) -> Seen {
        let tcp = self.tcp_seen.lock().unwrap().get(&src).copied().unwrap_or_default();
        Seen { udp: self.udp.seen(src), tcp }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.tcp.take() {
            let _ = t.join();
        }
    }
}

// --- the test bed -------------------------------------------------------------

const CLIENT_A4: &str = "192.0.2.1";
const CLIENT_B4: &str = "192.0.2.3";
const CLIENT_A6: &str = "2001:db8::1";
const CLIENT_B6: &str = "2001:db8::3";
const SERVER4: &str = "192.0.2.2";
const SERVER6: &str = "2001:db8::2";

/// Client (two addresses per family) and server joined by veth, listeners on
/// the server, and static neighbour entries on both sides so that blocking a
/// source never leaves address resolution half done.
struct Bed {
    // Dropped first: the listener threads stop before the namespaces go.
    listeners: Listeners,
    pair: Pair,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        ensure_bpffs();
        let pair = Pair::new(tag);
        pair.client.addr("eth0", &format!("{CLIENT_B4}/24"));
        pair.client.addr("eth0", &format!("{CLIENT_B6}/64"));
        pair.server.static_neighbours("eth0", &[CLIENT_A4, CLIENT_B4, CLIENT_A6, CLIENT_B6], pair.client.mac("eth0"));
        pair.client.static_neighbours("eth0", &[SERVER4, SERVER6], pair.server.mac("eth0"));
        let listeners = Listeners::start(&pair.server);
        Bed { listeners, pair }
    }

    /// A second link: client eth1 198.51.100.1 <-> server eth1 198.51.100.2.
    fn add_second_link(&self) {
        let (c, s) = (&self.pair.client, &self.pair.server);
        veth(c, "eth1", s, "eth1");
        c.addr("eth1", "198.51.100.1/24");
        s.addr("eth1", "198.51.100.2/24");
        s.static_neighbours("eth1", &["198.51.100.1"], c.mac("eth1"));
        c.static_neighbours("eth1", &["198.51.100.2"], s.mac("eth1"));
    }

    fn server_addr(src: IpAddr) -> IpAddr {
        match src {
            IpAddr::V4(a) if a.octets()[..3] == [198, 51, 100] => ip("198.51.100.2"),
            IpAddr::V4(_) => ip(SERVER4),
            IpAddr::V6(_) => ip(SERVER6),
        }
    }

    /// Sends `tries` UDP datagrams from `src` (one at a time, each waiting
    /// `wait` for its echo); true when any echo came back.
    fn udp(&self, src: IpAddr, tries: u32, wait: Duration) -> bool {
        let dst = SocketAddr::new(Self::server_addr(src), UDP_PORT);
        self.pair.client.run(move || udp_echo_reaches(src, dst, tries, wait))
    }

    /// One TCP connection attempt from `src`; true when the server's "ok"
    /// arrived.
    fn tcp(&self, src: IpAddr, timeout: Duration) -> bool {
        let dst = SocketAddr::new(Self::server_addr(src), TCP_PORT);
        self.pair.client.run(move || match connect_from(SocketAddr::new(src, 0), dst, timeout) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut s = String::new();
                let _ = stream.read_to_string(&mut s);
                s == "ok\n"
            }
            Err(e) => {
                // A refused connection would mean the SYN got through.
                assert_ne!(e.raw_os_error(), Some(nix::libc::ECONNREFUSED), "connect from {src}: {e}");
                false
            }
        })
    }

    /// UDP and TCP from `src` both reach the listeners (with a few retries,
    /// as the first packets may race neighbour and listener setup).
    fn assert_reaches(&self, src: &str, why: &str) {
        let src = ip(src);
        let before = self.listeners.seen(src);
        assert!(self.udp(src, 5, Duration::from_millis(400)), "{why}: UDP from {src} should get through");
        let tcp_ok = (0..3).any(|_| self.tcp(src, Duration::from_millis(1500)));
        assert!(tcp_ok, "{why}: TCP from {src} should get through");
        let after = self.listeners.seen(src);
        assert!(after.udp > before.udp && after.tcp > before.tcp, "{why}: listeners saw {before:?} -> {after:?}");
    }

    /// Neither UDP nor TCP from `src` reaches the listeners: they never see
    /// the source at all.
    fn assert_blocked(&self, src: &str, why: &str) {
        let src = ip(src);
        let before = self.listeners.seen(src);
        assert!(!self.udp(src, 2, Duration::from_millis(250)), "{why}: UDP from {src} should be dropped");
        assert!(!self.tcp(src, Duration::from_millis(400)), "{why}: TCP from {src} should be dropped");
        assert_eq!(self.listeners.seen(src), before, "{why}: the listeners must never see {src}");
    }

    fn link_show(&self, ns: &NetNs, dev: &str) -> String {
        String::from_utf8_lossy(&ns.ip(&["link", "show", "dev", dev]).stdout).into_owned()
    }

    /// (XDP flag `ip link` prints, attached program id), or None if nothing
    /// is attached.
    fn xdp_on(&self, ns: &NetNs, dev: &str) -> Option<(String, u64)> {
        let text = self.link_show(ns, dev);
        let flag = text.split_whitespace().find(|w| w.starts_with("xdp"))?.to_owned();
        let json = ns.ip(&["-j", "link", "show", "dev", dev]).stdout;
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let id = v[0]["xdp"]["prog"]["id"].as_u64().or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64());
        Some((flag, id.unwrap_or_else(|| panic!("no program id in {v}"))))
    }
}

fn attach_on(ns: &NetNs, ifaces: &[&'static str], mode: AttachMode, pin: Option<PathBuf>) -> Arc<Filter> {
    let ifaces = ifaces.to_vec();
    ns.run(move || {
        let mut b = Filter::builder().mode(mode).v4_capacity(4096).v6_capacity(4096);
        for i in ifaces {
            b = b.interface(i);
        }
        if let Some(p) = pin {
            b = b.pin(p);
        }
        Arc::new(b.attach().expect("attach the filter"))
    })
}

fn stats(f: &Filter) -> FilterStats {
    f.stats().expect("stats")
}

// --- the cases ---------------------------------------------------------------

#[test]
fn blocked_sources_cannot_reach_listeners_and_allowed_ones_can() {
    let bed = Bed::new("e2eb");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, None);
    for src in [CLIENT_A4, CLIENT_B4, CLIENT_A6, CLIENT_B6] {
        bed.assert_reaches(src, "empty lists");
    }

    filter.blocklist().insert(net("192.0.2.1/32")).unwrap();
    filter.blocklist().insert(net("2001:db8::1/128")).unwrap();
    let s0 = stats(&filter);
    bed.assert_blocked(CLIENT_A4, "192.0.2.1/32 blocked");
    bed.assert_blocked(CLIENT_A6, "2001:db8::1/128 blocked");
    let s1 = stats(&filter).since(&s0);
    // Two UDP datagrams and at least one SYN per blocked source.
    assert!(s1.blocked_v4.packets >= 3, "{s1:?}");
    assert!(s1.blocked_v6.packets >= 3, "{s1:?}");

    bed.assert_reaches(CLIENT_B4, "192.0.2.3 is in neither list");
    bed.assert_reaches(CLIENT_B6, "2001:db8::3 is in neither list");
    let s2 = stats(&filter).since(&s0);
    assert!(s2.passed.packets > s1.passed.packets, "allowed traffic counts as passed: {s2:?}");
    assert_eq!(s2.blocked(), s1.blocked(), "allowed sources never count as blocked");
}

#[test]
fn block_and_unblock_take_effect_live_without_reattaching() {
    let bed = Bed::new("e2el");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, None);
    let (_, prog_id) = bed.xdp_on(&bed.pair.server, "eth0").expect("attached");
    bed.assert_reaches(CLIENT_A4, "before any edit");
    bed.assert_reaches(CLIENT_A6, "before any edit");

    for round in 0..2 {
        let s0 = stats(&filter);
        assert!(filter.blocklist().insert(net("192.0.2.1/32")).unwrap().changed);
        assert!(filter.blocklist().insert(net("2001:db8::1/128")).unwrap().changed);
        bed.assert_blocked(CLIENT_A4, &format!("round {round}: blocked live"));
        bed.assert_blocked(CLIENT_A6, &format!("round {round}: blocked live"));
        bed.assert_reaches(CLIENT_B4, &format!("round {round}: neighbour untouched"));
        let s1 = stats(&filter).since(&s0);
        assert!(s1.blocked_v4.packets >= 3 && s1.blocked_v6.packets >= 3, "{s1:?}");

        assert!(filter.blocklist().remove(net("192.0.2.1/32")).unwrap().changed);
        assert!(filter.blocklist().remove(net("2001:db8::1/128")).unwrap().changed);
        let s2 = stats(&filter);
        bed.assert_reaches(CLIENT_A4, &format!("round {round}: unblocked live"));
        bed.assert_reaches(CLIENT_A6, &format!("round {round}: unblocked live"));
        let s3 = stats(&filter).since(&s2);
        assert_eq!(s3.blocked(), Default::default(), "nothing blocked after unblocking: {s3:?}");
        assert!(s3.passed.packets >= 4, "{s3:?}");
    }
    // The same program stayed attached throughout: the edits went to maps.
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth0").map(|x| x.1), Some(prog_id));
    assert_eq!(filter.attachments().len(), 1);
}

#[test]
fn native_generic_and_auto_modes_all_filter() {
    let bed = Bed::new("e2em");
    for (mode, want, flag) in [
        (AttachMode::Native, AttachMode::Native, "xdp"),
        (AttachMode::Generic, AttachMode::Generic, "xdpgeneric"),
        (AttachMode::Auto, AttachMode::Native, "xdp"),
    ] {
        let filter = attach_on(&bed.pair.server, &["eth0"], mode, None);
        let att = filter.attachments();
        assert_eq!(att.len(), 1);
        assert_eq!(att[0].mode, want, "{mode} attach reports its real mode");
        assert_eq!(att[0].interface, "eth0");
        assert_eq!(bed.xdp_on(&bed.pair.server, "eth0").map(|x| x.0).as_deref(), Some(flag), "{mode}");

        filter.blocklist().insert(net("192.0.2.1/32")).unwrap();
        filter.blocklist().insert(net("2001:db8::1/128")).unwrap();
        bed.assert_blocked(CLIENT_A4, &format!("{mode}"));
        bed.assert_blocked(CLIENT_A6, &format!("{mode}"));
        bed.assert_reaches(CLIENT_B4, &format!("{mode}"));
        bed.assert_reaches(CLIENT_B6, &format!("{mode}"));
        let s = stats(&filter);
        assert!(s.blocked_v4.packets >= 3 && s.blocked_v6.packets >= 3 && s.passed.packets >= 4, "{mode}: {s:?}");
        drop(filter);
        assert_eq!(bed.xdp_on(&bed.pair.server, "eth0"), None, "{mode}: dropped filter detached");
    }
}

#[test]
fn detach_restores_connectivity() {
    let bed = Bed::new("e2ed");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, None);
    filter.blocklist().extend([net("192.0.2.1/32"), net("2001:db8::1/128")]).unwrap();
    bed.assert_blocked(CLIENT_A4, "attached");
    bed.assert_blocked(CLIENT_A6, "attached");

    let f = filter.clone();
    bed.pair.server.run(move || f.detach("eth0")).expect("detach");
    assert!(filter.attachments().is_empty());
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth0"), None, "detach leaves no XDP program");
    let s0 = stats(&filter);
    bed.assert_reaches(CLIENT_A4, "detached");
    bed.assert_reaches(CLIENT_A6, "detached");
    assert_eq!(stats(&filter), s0, "a detached filter sees no packets");
    // The lists survive a detach, and a re-attach applies them again.
    assert_eq!(filter.blocklist().len().unwrap(), 2);
    let f = filter.clone();
    let att = bed.pair.server.run(move || f.attach("eth0", AttachMode::Native)).expect("re-attach");
    assert_eq!(att.mode, AttachMode::Native);
    bed.assert_blocked(CLIENT_A4, "re-attached");
    bed.assert_reaches(CLIENT_B4, "re-attached");
}

/// The kernel's view of one loaded program, asked by id through libbpf
/// (no `bpftool`: a fresh machine does not have it).
fn program_info(id: u32) -> ProgramInfo {
    ProgInfoIter::with_query_opts(ProgInfoQueryOptions::default().include_map_ids(true))
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("program {id} is not loaded"))
}

/// Whether the kernel has freed the object a `*_get_fd_by_id` call names:
/// ENOENT is "gone"; success is "still there"; any other error (missing
/// privileges, say) fails the test instead of passing as "gone".
fn freed<T>(what: &str, id: u32, lookup: libbpf_rs::Result<T>) -> bool {
    match lookup {
        Ok(_) => false,
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => true,
        Err(e) => panic!("looking up {what} {id}: {e}"),
    }
}

#[test]
fn dropping_an_unpinned_filter_leaves_the_interface_clean() {
    let bed = Bed::new("e2eu");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, None);
    filter.blocklist().insert(net("192.0.2.0/24")).unwrap();
    bed.assert_blocked(CLIENT_A4, "attached");
    let (_, prog_id) = bed.xdp_on(&bed.pair.server, "eth0").expect("attached");
    let prog_id = u32::try_from(prog_id).unwrap();
    // The program on eth0 is this filter's, with its maps, held by one XDP link.
    assert_eq!(libbpf_rs::Program::id_from_fd(filter.program_fd()).unwrap(), prog_id);
    let prog = program_info(prog_id);
    assert_eq!((prog.name.to_str(), prog.ty), (Some("xdpg_filter"), ProgramType::Xdp), "{prog:?}");
    let map_ids = prog.map_ids;
    assert!(map_ids.len() >= 10, "{map_ids:?}");
    let eth0 = bed.pair.server.ifindex("eth0");
    let links: Vec<u32> = LinkInfoIter::default()
        .filter(|l| l.prog_id == prog_id)
        .map(|l| match l.info {
            LinkTypeInfo::Xdp(x) => {
                assert_eq!(x.ifindex, eth0, "link {} holds the program on eth0", l.id);
                l.id
            }
            other => panic!("link {} of program {prog_id} is not an XDP link: {other:?}", l.id),
        })
        .collect();
    assert_eq!(links.len(), 1, "one XDP link holds the program: {links:?}");
    let link_id = links[0];

    assert_eq!(Arc::strong_count(&filter), 1);
    drop(filter);
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth0"), None, "no XDP program after drop");
    assert!(!bed.link_show(&bed.pair.server, "eth0").contains("xdp"));
    bed.assert_reaches(CLIENT_A4, "after drop");
    bed.assert_reaches(CLIENT_A6, "after drop");
    // The link, the program and every map are freed (the kernel frees them
    // shortly after the last reference goes).
    let link_gone = || LinkInfoIter::default().all(|l| l.id != link_id);
    let prog_gone = || freed("program", prog_id, libbpf_rs::Program::fd_from_id(prog_id));
    let maps_gone = || map_ids.iter().all(|&m| freed("map", m, MapHandle::from_map_id(m)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(link_gone() && prog_gone() && maps_gone()) {
        assert!(
            Instant::now() < deadline,
            "link {link_id}, program {prog_id} or maps {map_ids:?} still loaded after drop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pinned_filter_outlives_its_handle_and_reopens_with_the_same_state() {
    let bed = Bed::new("e2ep");
    let pin = ScratchDir::bpffs("e2e");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, Some(pin.path().to_owned()));
    assert_eq!(filter.pin_path(), Some(pin.path()));
    filter.blocklist().extend([net("192.0.2.0/24"), net("2001:db8::/64"), net("203.0.113.0/24")]).unwrap();
    filter.allowlist().extend([net("192.0.2.3/32"), net("2001:db8::3/128")]).unwrap();
    bed.assert_blocked(CLIENT_A4, "pinned, handle alive");
    bed.assert_reaches(CLIENT_B4, "allowlisted");
    let block_before: Vec<_> = filter.blocklist().iter().unwrap().collect();
    let allow_before: Vec<_> = filter.allowlist().iter().unwrap().collect();

    // A second handle, opened while the first lives, sees the same state.
    let p = pin.path().to_owned();
    let second = bed.pair.server.run(move || Filter::open_pinned(p)).expect("reopen while alive");
    assert_eq!(second.blocklist().iter().unwrap().collect::<Vec<_>>(), block_before);
    // Counters: the same maps. Background traffic (IPv6 router and
    // listener reports) may tick between two reads, so bracket the read.
    let (a, b, c) = (stats(&filter), stats(&second), stats(&filter));
    for ((name, x), ((_, y), (_, z))) in a.rows().into_iter().zip(b.rows().into_iter().zip(c.rows())) {
        assert!(x.packets <= y.packets && y.packets <= z.packets, "{name}: {a:?} {b:?} {c:?}");
    }
    assert!(b.blocked_v4.packets >= 3 && b.blocked_v4 == a.blocked_v4, "{a:?} {b:?}");
    drop(second);

    let s_at_drop = stats(&filter);
    drop(filter);
    assert!(bed.xdp_on(&bed.pair.server, "eth0").is_some(), "a pinned filter stays attached after drop");
    bed.assert_blocked(CLIENT_A4, "handle dropped");
    bed.assert_blocked(CLIENT_A6, "handle dropped");
    bed.assert_reaches(CLIENT_B4, "handle dropped, allowlisted");
    bed.assert_reaches(CLIENT_B6, "handle dropped, allowlisted");

    let p = pin.path().to_owned();
    let reopened = bed.pair.server.run(move || Filter::open_pinned(p)).expect("reopen");
    assert_eq!(reopened.blocklist().iter().unwrap().collect::<Vec<_>>(), block_before);
    assert_eq!(reopened.allowlist().iter().unwrap().collect::<Vec<_>>(), allow_before);
    let att = reopened.attachments();
    assert_eq!(att.len(), 1, "{att:?}");
    assert_eq!((att[0].interface.as_str(), att[0].mode), ("eth0", AttachMode::Native));
    assert_eq!(reopened.pin_path(), Some(pin.path()));
    let since = stats(&reopened).since(&s_at_drop);
    // Counters kept running without any handle: 2 datagrams + >= 1 SYN per
    // blocked source, and the allowlisted traffic.
    assert!(since.blocked_v4.packets >= 3 && since.blocked_v6.packets >= 3, "{since:?}");
    assert!(since.allowlisted.packets >= 4, "{since:?}");
    assert!(stats(&reopened).blocked_v4.packets >= s_at_drop.blocked_v4.packets + 3);

    // The reopened handle edits the live filter.
    reopened.blocklist().remove(net("192.0.2.0/24")).unwrap();
    bed.assert_reaches(CLIENT_A4, "unblocked through the reopened handle");
    bed.assert_blocked(CLIENT_A6, "v6 still blocked");

    // unpin: nothing left in bpffs, nothing on the interface.
    reopened.unpin().expect("unpin");
    assert!(!pin.path().exists(), "unpin removes the pin directory");
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth0"), None);
    assert!(!bed.link_show(&bed.pair.server, "eth0").contains("xdp"), "{}", bed.link_show(&bed.pair.server, "eth0"));
    bed.assert_reaches(CLIENT_A6, "after unpin");
    let p = pin.path().to_owned();
    let err = bed.pair.server.run(move || Filter::open_pinned(p)).expect_err("nothing left to reopen");
    assert!(matches!(err, Error::Pin(xdpguard::PinError::NotFound { .. })), "{err}");
}

#[test]
fn unpin_straight_after_attach_removes_everything() {
    let bed = Bed::new("e2ex");
    let pin = ScratchDir::bpffs("e2e");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Generic, Some(pin.path().to_owned()));
    let pinned = pin.names();
    assert!(pinned.iter().any(|n| n == "xdpg_filter"), "program pinned: {pinned:?}");
    assert!(pinned.iter().any(|n| n.starts_with("link_")), "link pinned: {pinned:?}");
    assert!(pinned.iter().filter(|n| n.starts_with("xdpg_")).count() >= 10, "maps pinned: {pinned:?}");
    let filter = Arc::try_unwrap(filter).expect("only handle");
    filter.unpin().expect("unpin");
    assert!(!pin.path().exists());
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth0"), None);
}

#[test]
fn allowlist_hole_inside_a_blocked_range() {
    let bed = Bed::new("e2eh");
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Native, None);
    filter.blocklist().extend([net("192.0.2.0/24"), net("2001:db8::/64")]).unwrap();
    filter.allowlist().extend([net("192.0.2.3/32"), net("2001:db8::3/128")]).unwrap();
    let s0 = stats(&filter);
    bed.assert_blocked(CLIENT_A4, "inside the blocked /24");
    bed.assert_blocked(CLIENT_A6, "inside the blocked /64");
    bed.assert_reaches(CLIENT_B4, "allowlisted hole");
    bed.assert_reaches(CLIENT_B6, "allowlisted hole");
    let s = stats(&filter).since(&s0);
    assert!(s.allowlisted.packets >= 4, "{s:?}");
    assert!(s.blocked_v4.packets >= 3 && s.blocked_v6.packets >= 3, "{s:?}");

    // Closing the hole blocks the source; the range entry alone decides.
    filter.allowlist().remove(net("192.0.2.3/32")).unwrap();
    bed.assert_blocked(CLIENT_B4, "hole closed");
    bed.assert_reaches(CLIENT_B6, "v6 hole still open");
}

#[test]
fn one_filter_on_two_interfaces() {
    let bed = Bed::new("e2e2");
    bed.add_second_link();
    let filter = attach_on(&bed.pair.server, &["eth0", "eth1"], AttachMode::Native, None);
    let att = filter.attachments();
    assert_eq!(att.iter().map(|a| a.interface.as_str()).collect::<Vec<_>>(), ["eth0", "eth1"]);
    assert!(att.iter().all(|a| a.mode == AttachMode::Native), "{att:?}");
    let (_, id0) = bed.xdp_on(&bed.pair.server, "eth0").expect("eth0 attached");
    let (_, id1) = bed.xdp_on(&bed.pair.server, "eth1").expect("eth1 attached");
    assert_eq!(id0, id1, "one program serves both interfaces");

    bed.assert_reaches("198.51.100.1", "eth1, empty lists");
    filter.blocklist().extend([net("192.0.2.1/32"), net("198.51.100.0/24")]).unwrap();
    let s0 = stats(&filter);
    bed.assert_blocked(CLIENT_A4, "eth0");
    bed.assert_blocked("198.51.100.1", "eth1");
    bed.assert_reaches(CLIENT_B4, "eth0, not listed");
    let s = stats(&filter).since(&s0);
    assert!(s.blocked_v4.packets >= 6, "both interfaces count into one set of counters: {s:?}");

    // Detaching one interface leaves the other filtered.
    let f = filter.clone();
    bed.pair.server.run(move || f.detach("eth1")).expect("detach eth1");
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth1"), None);
    assert!(bed.xdp_on(&bed.pair.server, "eth0").is_some());
    bed.assert_reaches("198.51.100.1", "eth1 detached");
    bed.assert_blocked(CLIENT_A4, "eth0 still attached");

    // And attaching it again later, in another mode, filters it again.
    let f = filter.clone();
    let att = bed.pair.server.run(move || f.attach("eth1", AttachMode::Generic)).expect("attach eth1");
    assert_eq!(att.mode, AttachMode::Generic);
    assert_eq!(bed.xdp_on(&bed.pair.server, "eth1").map(|x| x.0).as_deref(), Some("xdpgeneric"));
    bed.assert_blocked("198.51.100.1", "eth1 re-attached");
    assert_eq!(filter.attachments().len(), 2);
}

/// An IPv6 UDP frame from `src` to the server whose extension headers
/// (two 2,048-byte routing headers, type 253 with no segments left, which
/// the stack steps over) take the UDP header past the parse's 4,096 bytes:
/// a jumbo frame's chain, which Linux delivers.
fn long_chain_udp6(src: IpAddr, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, ip(SERVER6)) else { unreachable!("IPv6") };
    let payload = b"long-chain";
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&UDP_PORT.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // The checksum over the pseudo-header (RFC 8200 s. 8.1) and the datagram.
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for c in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&s.octets());
    add(&d.octets());
    add(&(udp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&udp);
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    let csum = match !(sum as u16) {
        0 => 0xFFFF,
        c => c,
    };
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    let routing = |next: u8| {
        let mut h = vec![0u8; 2048];
        (h[0], h[1], h[2], h[3]) = (next, 255, 253, 0);
        h
    };
    let mut ip6 = Vec::new();
    let body = [routing(43), routing(17), udp].concat();
    ip6.extend_from_slice(&[0x60, 0, 0, 0]);
    ip6.extend_from_slice(&(body.len() as u16).to_be_bytes());
    ip6.extend_from_slice(&[43, 64]);
    ip6.extend_from_slice(&s.octets());
    ip6.extend_from_slice(&d.octets());
    [&dst_mac[..], &src_mac[..], &[0x86, 0xdd], &ip6, &body].concat()
}

/// A chain of IPv6 extension headers longer than the parse reads (in a
/// jumbo frame, generic mode) is judged by its source like any packet: it
/// passed the blocklist as malformed under the default malformed policy.
#[test]
fn a_jumbo_frames_long_ipv6_chain_is_judged_by_its_source() {
    let bed = Bed::new("e2ej");
    for ns in [&bed.pair.client, &bed.pair.server] {
        ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    }
    let filter = attach_on(&bed.pair.server, &["eth0"], AttachMode::Generic, None);
    let frame = |src: &str| long_chain_udp6(ip(src), bed.pair.client.mac("eth0"), bed.pair.server.mac("eth0"));
    let send = |frame: Vec<u8>| {
        bed.pair.client.run(move || {
            let sock = PacketSocket::bind("eth0");
            for _ in 0..3 {
                sock.send(&frame).expect("send the frame");
            }
        })
    };

    // Not listed: the stack delivers it (the frame is a real packet).
    let s0 = stats(&filter);
    send(frame(CLIENT_B6));
    let deadline = Instant::now() + Duration::from_secs(5);
    while bed.listeners.seen(ip(CLIENT_B6)).udp == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        bed.listeners.seen(ip(CLIENT_B6)).udp > 0,
        "the long chain reaches the listener: {:?}",
        stats(&filter).since(&s0)
    );

    // Listed: dropped by the blocklist, not passed as malformed.
    filter.blocklist().insert(net("2001:db8::1/128")).unwrap();
    let s0 = stats(&filter);
    send(frame(CLIENT_A6));
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&filter).since(&s0).blocked_v6.packets < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = stats(&filter).since(&s0);
    assert!(s.blocked_v6.packets >= 3 && s.blocked_v6.bytes >= 3 * 4096, "the three long frames blocked: {s:?}");
    assert_eq!(s.malformed.packets, 0, "{s:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(bed.listeners.seen(ip(CLIENT_A6)).udp, 0, "the listener never sees the blocked source");
}
