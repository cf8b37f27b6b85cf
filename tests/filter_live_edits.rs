//! List edits under live traffic (issue 4, section 3).
//!
//! A client namespace sends raw Ethernet frames (AF_PACKET, built with
//! the test kit's frame builder) from many source addresses to a UDP socket in the server
//! namespace, where the filter runs in native mode. Every frame carries a
//! sequence number; the server records which (source, sequence) pairs
//! arrived. The veth has one queue, so frames are processed in the order
//! they were sent, and a verdict change shows up as a single switch point
//! in the sequence.
//!
//! Proved here:
//! - during repeated atomic `replace` of the whole blocklist, no packet from
//!   a source in both the old and the new list is ever received, and every
//!   packet from a source in neither list is (which also proves the pacing
//!   lost nothing);
//! - a single `insert`/`remove` takes effect for the next packet after it
//!   returns, switches once, and changes nothing for any other source;
//! - a bulk `extend`/`remove_all` switches all its sources at one point.
//!
//! Needs root; fails (never skips) without it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common {
    pub mod flood;
}

use common::flood::PacketSocket;
use xdpguard::testing::frame::Frame;
use xdpguard::testing::netns::*;
use xdpguard::{AttachMode, Filter, IpNetwork};

const PORT: u16 = 9000;
const MAGIC: u32 = 0x7864_7067; // "xdpg"
/// Packets per second the sender aims for: far below what the path can
/// take, so no socket buffer overflows (the never-listed sources prove it).
const RATE_PPS: f64 = 12_000.0;
/// Packets sent before an edit began that may still have been in flight
/// when it began (in practice the receive path runs inside the sender's
/// send() call, so this is generous).
const IN_FLIGHT_MARGIN: u64 = 64;

/// The tests here are timing sensitive on a 2-core machine: run them one
/// at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An address as a number (IPv4 mapped into IPv6's space).
fn ip_key(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(v.to_ipv6_mapped()),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

// --- the test bed -------------------------------------------------------------

/// Client and server joined by a single-queue veth (one queue keeps frames
/// in send order), the filter natively on the server's eth0.
struct Bed {
    client: NetNs,
    server: NetNs,
    client_mac: [u8; 6],
    server_mac: [u8; 6],
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let client = NetNs::new(&format!("{tag}c"));
        let server = NetNs::new(&format!("{tag}s"));
        veth_with(&client, "eth0", &server, "eth0", VethOptions::default().queues(1));
        client.addr("eth0", "192.0.2.1/24");
        client.addr("eth0", "2001:db8::1/64");
        server.addr("eth0", "192.0.2.2/24");
        server.addr("eth0", "2001:db8::2/64");
        // Sources are off-link: no reverse-path check may drop them.
        for key in ["all", "default", "eth0"] {
            server.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
        }
        let client_mac = client.mac("eth0");
        let server_mac = server.mac("eth0");
        Bed { client, server, client_mac, server_mac }
    }

    fn attach(&self) -> Arc<Filter> {
        let f = self.server.run(|| {
            Filter::builder()
                .interface("eth0")
                .mode(AttachMode::Native)
                .v4_capacity(16_384)
                .v6_capacity(65_536)
                .attach()
                .expect("attach")
        });
        assert_eq!(f.attachments()[0].mode, AttachMode::Native);
        Arc::new(f)
    }

    fn udp_errors(&self) -> String {
        let snmp = String::from_utf8_lossy(&self.server.exec(&["cat", "/proc/net/snmp", "/proc/net/snmp6"]).stdout)
            .into_owned();
        snmp.lines()
            .filter(|l| l.starts_with("Udp:") || l.starts_with("Udp6RcvbufErrors"))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

// --- receiver -----------------------------------------------------------------

/// A UDP socket on the server recording every (source, sequence) it gets.
struct Receiver {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    thread: JoinHandle<Vec<(IpAddr, u64)>>,
}

impl Receiver {
    fn start(ns: &NetNs) -> Receiver {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, count) = (stop.clone(), count.clone());
            ns.spawn(move || {
                let sock = UdpSocket::bind(("::", PORT)).expect("bind");
                // Root may exceed rmem_max: 64 MiB holds every packet of a run.
                nix::sys::socket::setsockopt(&sock.as_fd(), nix::sys::socket::sockopt::RcvBufForce, &(64 << 20))
                    .expect("SO_RCVBUFFORCE");
                sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut got = Vec::with_capacity(1 << 17);
                let mut buf = [0u8; 256];
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) if n >= 12 && buf[..4] == MAGIC.to_be_bytes() => {
                            let seq = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                            got.push((from.ip().to_canonical(), seq));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => {}
                    }
                }
                got
            })
        };
        ready_rx.recv().unwrap();
        Receiver { stop, count, thread }
    }

    /// Waits until nothing has arrived for a while, then stops.
    fn finish(self) -> Vec<(IpAddr, u64)> {
        let mut last = self.count.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.count.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("receiver")
    }
}

// --- sender ---------------------------------------------------------------------

fn build_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: IpAddr, sport: u16, seq: u64) -> Frame {
    let mut payload = [0u8; 12];
    payload[..4].copy_from_slice(&MAGIC.to_be_bytes());
    payload[4..].copy_from_slice(&seq.to_be_bytes());
    let dst: IpAddr = if src.is_ipv4() { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    Frame::builder().macs(src_mac, dst_mac).ip(src, dst).udp(sport, PORT).payload(&payload).build()
}

/// How far the sender may fall behind its pace before it stops catching up
/// (a sender descheduled for a second would otherwise send the 12,000
/// frames it missed back to back, far more than the veth's queue of 256
/// holds): at most ~120 frames at once.
const MAX_BEHIND: Duration = Duration::from_millis(10);
/// Bounds on a sender that is never stopped (a test stuck, say): it ends by
/// itself after this long or this many frames, and its finish fails.
const SEND_TIME_CAP: Duration = Duration::from_secs(60);
const SEND_FRAME_CAP: u64 = 1_000_000;

/// What a sender sent, as (sequence number, source index), and whether it
/// stopped at a cap.
type Sent = (Vec<(u64, usize)>, bool);

/// Sends one frame per source, round robin, paced at `RATE_PPS`, until
/// stopped (or a cap is reached). Every frame gets the next sequence number
/// from `seq`. Stopped and joined on drop, also on panic.
struct Sender {
    seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Sent>>,
}

impl Sender {
    fn start(bed: &Bed, sources: Vec<IpAddr>) -> Sender {
        let seq = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (src_mac, dst_mac) = (bed.client_mac, bed.server_mac);
        let thread = {
            let (seq, stop) = (seq.clone(), stop.clone());
            bed.client.spawn(move || {
                let sock = PacketSocket::bind("eth0");
                let mut sent = Vec::with_capacity(1 << 17);
                let start = Instant::now();
                let period = Duration::from_secs_f64(1.0 / RATE_PPS);
                let mut due = start;
                let mut capped = false;
                'outer: loop {
                    for (i, &src) in sources.iter().enumerate() {
                        if stop.load(Ordering::Relaxed) {
                            break 'outer;
                        }
                        if start.elapsed() > SEND_TIME_CAP || sent.len() as u64 >= SEND_FRAME_CAP {
                            capped = true;
                            break 'outer;
                        }
                        // Pace: never run ahead of RATE_PPS, and catch up
                        // on at most MAX_BEHIND of lost time.
                        let now = Instant::now();
                        if due > now + Duration::from_micros(500) {
                            std::thread::sleep(due - now);
                        } else if now > due + MAX_BEHIND {
                            due = now - MAX_BEHIND;
                        }
                        due += period;
                        let s = seq.fetch_add(1, Ordering::SeqCst) + 1;
                        let frame = build_frame(src_mac, dst_mac, src, 20000 + i as u16, s);
                        // ENOBUFS (the queue full: not sent) is retried,
                        // with the same sequence number, so order is kept.
                        if !sock.send_retrying(&frame, &stop) {
                            break 'outer;
                        }
                        sent.push((s, i));
                    }
                }
                (sent, capped)
            })
        };
        Sender { seq, stop, thread: Some(thread) }
    }

    /// The last sequence number handed out so far.
    fn last_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Stops it; every frame sent, as (sequence number, source index).
    fn finish(mut self) -> Vec<(u64, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, capped) = self.thread.take().unwrap().join().expect("sender");
        assert!(
            !capped,
            "the sender stopped by itself after {} frames (caps: {SEND_FRAME_CAP} frames, {SEND_TIME_CAP:?}): \
             the test ran far longer than it should",
            sent.len()
        );
        sent
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-source (sent, received) counts.
fn per_source(sources: &[IpAddr], sent: &[(u64, usize)], got: &[(IpAddr, u64)]) -> Vec<(u64, u64)> {
    let mut counts = vec![(0u64, 0u64); sources.len()];
    let index: HashMap<IpAddr, usize> = sources.iter().enumerate().map(|(i, &s)| (s, i)).collect();
    for &(_, i) in sent {
        counts[i].0 += 1;
    }
    let by_seq: HashMap<u64, usize> = sent.iter().map(|&(s, i)| (s, i)).collect();
    for &(src, seq) in got {
        let i = *index.get(&src).unwrap_or_else(|| panic!("received from unknown source {src}"));
        assert_eq!(by_seq.get(&seq), Some(&i), "packet {seq} arrived from {src}, not from the source that sent it");
        counts[i].1 += 1;
    }
    counts
}

// --- (a) atomic replace ---------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Class {
    /// In the old and the new list: never received.
    Both,
    /// Only in list A.
    OnlyA,
    /// Only in list B.
    OnlyB,
    /// In neither: always received.
    Neither,
}

#[test]
fn atomic_replace_under_live_traffic_never_leaks_or_drops() {
    let _serial = serial();
    let bed = Bed::new("lr");
    let filter = bed.attach();

    let shared = ["198.51.100.0/26", "203.0.113.7/32", "203.0.113.64/27", "2001:db8:100::/48", "2001:db8:101::7/128"];
    // The last two of each list cover the same sources differently (a range
    // in one, a host in the other): a replace done as "remove the old, then
    // add the new" would let them through for a moment.
    let only_a = ["198.51.100.64/26", "203.0.113.9/32", "2001:db8:200::/48", "203.0.113.32/28", "2001:db8:500::/48"];
    let only_b =
        ["198.51.100.128/26", "203.0.113.11/32", "2001:db8:300::/48", "203.0.113.40/32", "2001:db8:500::5/128"];
    let sources: Vec<(IpAddr, Class)> = [
        ("198.51.100.1", Class::Both),
        ("198.51.100.33", Class::Both),
        ("198.51.100.63", Class::Both),
        ("203.0.113.7", Class::Both),
        ("203.0.113.64", Class::Both),
        ("203.0.113.95", Class::Both),
        ("2001:db8:100::1", Class::Both),
        ("2001:db8:100:ffff::9", Class::Both),
        ("2001:db8:101::7", Class::Both),
        ("203.0.113.40", Class::Both),
        ("2001:db8:500::5", Class::Both),
        ("198.51.100.65", Class::OnlyA),
        ("198.51.100.127", Class::OnlyA),
        ("203.0.113.9", Class::OnlyA),
        ("2001:db8:200::1", Class::OnlyA),
        ("198.51.100.129", Class::OnlyB),
        ("198.51.100.191", Class::OnlyB),
        ("203.0.113.11", Class::OnlyB),
        ("2001:db8:300::1", Class::OnlyB),
        ("198.51.100.192", Class::Neither),
        ("198.51.100.255", Class::Neither),
        ("203.0.113.6", Class::Neither),
        ("203.0.113.8", Class::Neither),
        ("203.0.113.10", Class::Neither),
        ("203.0.113.63", Class::Neither),
        ("203.0.113.96", Class::Neither),
        ("2001:db8:ff::1", Class::Neither),
        ("2001:db8:101::6", Class::Neither),
        ("2001:db8:101::8", Class::Neither),
        ("2001:db8:400::1", Class::Neither),
    ]
    .iter()
    .map(|&(s, c)| (ip(s), c))
    .collect();

    // Each list also holds entries of its own that no source uses: host
    // entries in a /24 the sources share, and hundreds of IPv6 /64s, so
    // each replace rebuilds real tables.
    const V6_OWN: u32 = 500;
    let list = |own: &[&str], hosts: std::ops::Range<u32>, v6_tag: u32| -> Vec<IpNetwork> {
        let mut v: Vec<IpNetwork> = shared.iter().chain(own).map(|s| net(s)).collect();
        v.extend(hosts.map(|h| net(&format!("203.0.113.{h}/32"))));
        v.extend((0..V6_OWN).map(|i| net(&format!("2001:db8:{v6_tag:x}:{i:x}::/64"))));
        v
    };
    let list_a = list(&only_a, 200..226, 0xa000);
    let list_b = list(&only_b, 226..252, 0xb000);
    for (s, c) in &sources {
        let in_a = list_a.iter().any(|n| n.contains(*s));
        let in_b = list_b.iter().any(|n| n.contains(*s));
        let want = match (in_a, in_b) {
            (true, true) => Class::Both,
            (true, false) => Class::OnlyA,
            (false, true) => Class::OnlyB,
            (false, false) => Class::Neither,
        };
        assert_eq!(*c, want, "test setup: {s}");
    }
    filter.blocklist().extend(list_a.clone()).expect("initial list");

    let receiver = Receiver::start(&bed.server);
    let stats0 = filter.stats().unwrap();
    let sender = Sender::start(&bed, sources.iter().map(|s| s.0).collect());
    let mut replaces = 0u32;
    let mut slowest = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let next = if replaces % 2 == 0 { &list_b } else { &list_a };
        let t = Instant::now();
        let change = filter.blocklist().replace(next.clone()).expect("replace");
        slowest = slowest.max(t.elapsed());
        assert_eq!(
            change.changed,
            2 * (only_a.len() + 26 + V6_OWN as usize),
            "each replace swaps the unshared entries"
        );
        replaces += 1;
        // Let a few packets through on each list.
        std::thread::sleep(Duration::from_millis(3));
    }
    let sent = sender.finish();
    let got = receiver.finish();
    let stats = filter.stats().unwrap().since(&stats0);

    let addrs: Vec<IpAddr> = sources.iter().map(|s| s.0).collect();
    let counts = per_source(&addrs, &sent, &got);
    let total_sent = sent.len() as u64;
    let total_got = got.len() as u64;
    let report = || {
        let rows: Vec<String> =
            sources.iter().zip(&counts).map(|((s, c), (n, r))| format!("{s} {c:?}: sent {n}, got {r}")).collect();
        format!(
            "{replaces} replaces (slowest {slowest:?}), {total_sent} sent, {total_got} received\n{}\nstats {stats:?}\n{}",
            rows.join("\n"),
            bed.udp_errors()
        )
    };
    eprintln!("{}", report());
    assert!(replaces >= 40, "too few replaces to mean anything: {}", report());
    let mut agg: HashMap<Class, (u64, u64)> = HashMap::new();
    for ((s, c), &(n, r)) in sources.iter().zip(&counts) {
        assert!(n > 500, "{s}: too few packets sent: {}", report());
        match c {
            Class::Both => assert_eq!(r, 0, "{s} is in both lists: not one packet may pass: {}", report()),
            Class::Neither => assert_eq!(r, n, "{s} is in neither list: every packet must pass: {}", report()),
            _ => {}
        }
        let e = agg.entry(*c).or_default();
        e.0 += n;
        e.1 += r;
    }
    // The replaces really flipped the lists under the traffic: sources of
    // each single list were both dropped and delivered during the run.
    for c in [Class::OnlyA, Class::OnlyB] {
        let (n, r) = agg[&c];
        assert!(r > 0 && r < n, "{c:?}: {r} of {n} received; both lists should have been live: {}", report());
    }
    // Nothing was lost on the way: every packet not received was counted
    // as blocked by the filter.
    assert_eq!(stats.blocked().packets, total_sent - total_got, "{}", report());
    let last = if replaces % 2 == 0 { &list_a } else { &list_b };
    let mut want: Vec<IpNetwork> = last.clone();
    want.sort_by_key(|n| (n.is_ipv6(), n.ip(), n.prefix()));
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), want, "the last replace is what is listed");
}

// --- (b) single edits and bulk edits ------------------------------------------------

/// A reference model of the verdict: allowlist first, then blocklist.
#[derive(Debug, Clone, Default)]
struct Model {
    block: Vec<IpNetwork>,
    allow: Vec<IpNetwork>,
}

impl Model {
    fn passes(&self, a: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(a)) || !self.block.iter().any(|n| n.contains(a))
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(IpNetwork),
    Remove(IpNetwork),
    Extend(Vec<IpNetwork>),
    RemoveAll(Vec<IpNetwork>),
}

impl Edit {
    /// Applies the edit to the blocklist, and to the model.
    fn apply(&self, filter: &Filter, model: &mut Model) {
        let bl = filter.blocklist();
        match self {
            Edit::Insert(n) => {
                assert!(bl.insert(*n).unwrap().changed);
                model.block.push(*n);
            }
            Edit::Remove(n) => {
                assert!(bl.remove(*n).unwrap().changed);
                model.block.retain(|x| x != n);
            }
            Edit::Extend(ns) => {
                assert_eq!(bl.extend(ns.clone()).unwrap().changed, ns.len());
                model.block.extend(ns);
            }
            Edit::RemoveAll(ns) => {
                assert_eq!(bl.remove_all(ns.clone()).unwrap().changed, ns.len());
                model.block.retain(|x| !ns.contains(x));
            }
        }
    }
}

/// When an edit ran, in sender sequence numbers: every packet numbered
/// above `end` was sent after the edit returned.
#[derive(Debug, Clone, Copy)]
struct EditWindow {
    begin: u64,
    end: u64,
    took: Duration,
}

struct Timeline {
    sources: Vec<IpAddr>,
    /// verdicts[k][i]: whether source i passes after the first k edits.
    verdicts: Vec<Vec<bool>>,
    windows: Vec<EditWindow>,
    edits: Vec<Edit>,
}

#[derive(Debug, Default)]
struct Findings {
    /// Packets whose fate differs from the model outside any edit window.
    wrong: Vec<String>,
    /// Edits whose sources did not switch at one single point.
    not_atomic: Vec<String>,
    /// Packets seen inside each edit window, per edit.
    window_packets: Vec<usize>,
}

impl Timeline {
    /// Checks every packet. `group_of` splits each edit's changed sources
    /// into sets that must switch together (all of them, or each source on
    /// its own).
    fn check(
        &self,
        sent: &[(u64, usize)],
        got: &[(IpAddr, u64)],
        group_of: impl Fn(&Edit, IpAddr) -> u128,
    ) -> Findings {
        let delivered: HashMap<u64, IpAddr> = got.iter().map(|&(s, q)| (q, s)).collect();
        let mut f = Findings { window_packets: vec![0; self.windows.len()], ..Default::default() };
        // Per edit and group: (latest packet with the old verdict, earliest with the new).
        let mut switch: BTreeMap<(usize, u128), (Option<u64>, Option<u64>)> = BTreeMap::new();
        for &(seq, i) in sent {
            let src = self.sources[i];
            let got_it = match delivered.get(&seq) {
                Some(&from) => {
                    assert_eq!(from, src, "packet {seq}");
                    true
                }
                None => false,
            };
            let k = self.windows.partition_point(|w| w.end < seq);
            let changes = |k: usize| k < self.windows.len() && self.verdicts[k][i] != self.verdicts[k + 1][i];
            if changes(k) && seq > self.windows[k].begin.saturating_sub(IN_FLIGHT_MARGIN) {
                f.window_packets[k] += 1;
                let old = self.verdicts[k][i];
                let e = switch.entry((k, group_of(&self.edits[k], src))).or_default();
                if got_it == old {
                    e.0 = Some(e.0.map_or(seq, |x: u64| x.max(seq)));
                } else {
                    e.1 = Some(e.1.map_or(seq, |x: u64| x.min(seq)));
                }
                continue;
            }
            let want = self.verdicts[k][i];
            if got_it != want {
                f.wrong.push(format!(
                    "packet {seq} from {src}: {} but should be {} (after {k} edits; next edit {:?})",
                    if got_it { "delivered" } else { "dropped" },
                    if want { "delivered" } else { "dropped" },
                    self.windows.get(k)
                ));
            }
        }
        for ((k, g), (last_old, first_new)) in switch {
            if let (Some(o), Some(n)) = (last_old, first_new) {
                if o > n {
                    f.not_atomic.push(format!(
                        "edit {k} ({:?}), group {g}: a packet with the new verdict ({n}) came before one with the old ({o}); window {:?}",
                        self.edits[k], self.windows[k]
                    ));
                }
            }
        }
        f
    }
}

/// What was sent (sequence, source index) and received (source, sequence).
type Traffic = (Vec<(u64, usize)>, Vec<(IpAddr, u64)>);

/// Runs `edits` one by one under traffic from `sources`, with `gap` of
/// traffic before, between and after them.
fn run_edits(
    bed: &Bed,
    filter: &Filter,
    model: &mut Model,
    sources: &[IpAddr],
    edits: Vec<Edit>,
    gap: Duration,
) -> (Timeline, Traffic) {
    let mut verdicts = vec![sources.iter().map(|&s| model.passes(s)).collect::<Vec<_>>()];
    let receiver = Receiver::start(&bed.server);
    let sender = Sender::start(bed, sources.to_vec());
    let mut windows = Vec::new();
    std::thread::sleep(gap);
    for e in &edits {
        let begin = sender.last_seq();
        let t = Instant::now();
        e.apply(filter, model);
        let took = t.elapsed();
        let end = sender.last_seq();
        windows.push(EditWindow { begin, end, took });
        verdicts.push(sources.iter().map(|&s| model.passes(s)).collect());
        std::thread::sleep(gap);
    }
    let sent = sender.finish();
    let got = receiver.finish();
    for w in windows.windows(2) {
        assert!(w[1].begin > w[0].end + IN_FLIGHT_MARGIN, "edit windows too close to tell apart: {windows:?}");
    }
    (Timeline { sources: sources.to_vec(), verdicts, windows, edits }, (sent, got))
}

#[test]
fn single_edits_and_bulk_edits_take_effect_for_the_next_packet_and_nothing_else() {
    let _serial = serial();
    let bed = Bed::new("ls");
    let filter = bed.attach();
    let mut model = Model::default();

    // Standing entries: an overlap (a /25 inside a /24), an allowlist hole,
    // and a blocked IPv6 range.
    Edit::Extend(vec![net("198.51.100.0/24"), net("198.51.100.128/25"), net("2001:db8:7::/48")])
        .apply(&filter, &mut model);
    for n in ["203.0.113.77/32", "2001:db8:6::77/128"] {
        filter.allowlist().insert(net(n)).unwrap();
        model.allow.push(net(n));
    }

    let sources: Vec<IpAddr> = [
        "203.0.113.5", // its own /32 inserted, then removed
        "203.0.113.4", // neighbours of it, never touched by a /32 edit
        "203.0.113.6",
        "203.0.113.70", // blocked when 203.0.113.64/26 goes in
        "203.0.113.80",
        "203.0.113.77",  // allowlisted: stays delivered inside the /26
        "203.0.113.130", // in the bulk extend's 203.0.113.128/26
        "203.0.113.150",
        "198.51.100.5",    // unblocked when the /24 goes; re-blocked by the bulk /32
        "198.51.100.200",  // still covered by the /25 when the /24 goes: stays dropped
        "198.51.100.100",  // unblocked when the /24 goes
        "2001:db8:5::1",   // its /64 inserted, then removed
        "2001:db8:5:1::1", // just outside that /64
        "2001:db8:7::9",   // blocked throughout
        "2001:db8:6::1",   // in the bulk extend's 2001:db8:6::/48
        "2001:db8:6::77",  // allowlisted hole in it
        "2001:db8:8::1",   // a bulk /128
        "2001:db8:9::1",   // never listed
    ]
    .iter()
    .map(|s| ip(s))
    .collect();

    let bulk = vec![net("203.0.113.128/26"), net("198.51.100.5/32"), net("2001:db8:6::/48"), net("2001:db8:8::1/128")];
    let edits = vec![
        Edit::Insert(net("203.0.113.5/32")),
        Edit::Remove(net("203.0.113.5/32")),
        Edit::Insert(net("203.0.113.64/26")),
        Edit::Remove(net("198.51.100.0/24")),
        Edit::Insert(net("2001:db8:5::/64")),
        Edit::Remove(net("2001:db8:5::/64")),
        Edit::Remove(net("203.0.113.64/26")),
        Edit::Extend(bulk.clone()),
        Edit::RemoveAll(bulk),
    ];
    let stats0 = filter.stats().unwrap();
    let (timeline, (sent, got)) = run_edits(&bed, &filter, &mut model, &sources, edits, Duration::from_millis(350));
    let stats = filter.stats().unwrap().since(&stats0);
    let counts = per_source(&sources, &sent, &got);

    // Every source is affected by at least one edit, or by none, as planned.
    let changed: Vec<bool> =
        (0..sources.len()).map(|i| timeline.verdicts.windows(2).any(|w| w[0][i] != w[1][i])).collect();
    let untouched = [
        "203.0.113.4",
        "203.0.113.6",
        "203.0.113.77",
        "198.51.100.200",
        "2001:db8:5:1::1",
        "2001:db8:7::9",
        "2001:db8:6::77",
        "2001:db8:9::1",
    ];
    for (i, s) in sources.iter().enumerate() {
        assert_eq!(changed[i], !untouched.contains(&s.to_string().as_str()), "test setup: {s}");
    }

    // Bulk edits switch all their sources at one point; a single edit
    // switches each source exactly once (a wide prefix spans several table
    // words, patched one after another: see PrefixList::insert).
    let findings = timeline.check(&sent, &got, |e, a| match e {
        Edit::Insert(_) | Edit::Remove(_) => ip_key(a) + 1,
        _ => 0,
    });
    let report = || {
        let rows: Vec<String> =
            sources.iter().zip(&counts).map(|(s, (n, r))| format!("{s}: sent {n}, got {r}")).collect();
        let edits: Vec<String> = timeline
            .edits
            .iter()
            .zip(&timeline.windows)
            .zip(&findings.window_packets)
            .map(|((e, w), p)| {
                format!("{e:?}: took {:?}, seq {}..{}, {p} packets in its window", w.took, w.begin, w.end)
            })
            .collect();
        format!(
            "{} sent, {} received\n{}\n{}\nwrong: {:#?}\nnot atomic: {:#?}\nstats {stats:?}\n{}",
            sent.len(),
            got.len(),
            rows.join("\n"),
            edits.join("\n"),
            &findings.wrong[..findings.wrong.len().min(20)],
            findings.not_atomic,
            bed.udp_errors()
        )
    };
    eprintln!("{}", report());
    assert!(
        findings.wrong.is_empty(),
        "{} packets did not get the verdict of the lists in force: {}",
        findings.wrong.len(),
        report()
    );
    assert!(findings.not_atomic.is_empty(), "{}", report());
    // Sources no edit touches kept their exact delivery.
    for (i, s) in sources.iter().enumerate() {
        if !changed[i] {
            let (n, r) = counts[i];
            let want = if timeline.verdicts[0][i] { n } else { 0 };
            assert_eq!(r, want, "{s} is untouched by every edit: {}", report());
            assert!(n > 200, "{s}: too few packets: {}", report());
        }
    }
    assert_eq!(stats.blocked().packets, (sent.len() - got.len()) as u64, "nothing lost on the way: {}", report());
    assert_eq!(
        filter.blocklist().iter().unwrap().count(),
        2,
        "{:?}",
        filter.blocklist().iter().unwrap().collect::<Vec<_>>()
    );
}

/// A bulk edit that touches both families is one atomic step too: traffic
/// must never see the new IPv4 entries with the old IPv6 ones. A large
/// IPv6 list makes the IPv6 rebuild slow, so any gap between the two swaps
/// is wide enough for packets to fall into.
#[test]
fn a_bulk_edit_over_both_families_switches_at_one_point() {
    let _serial = serial();
    let bed = Bed::new("lx");
    let filter = bed.attach();
    let mut model = Model::default();
    let filler: Vec<IpNetwork> =
        (0..40_000u32).map(|i| net(&format!("2001:db8:f{:03x}:{:x}::/64", i >> 12, i & 0xfff))).collect();
    Edit::Extend(filler).apply(&filter, &mut model);

    let sources: Vec<IpAddr> =
        ["203.0.113.1", "2001:db8:1::1", "203.0.113.2", "2001:db8:2::1", "198.51.100.1", "2001:db8:3::1"]
            .iter()
            .map(|s| ip(s))
            .collect();
    let bulk = vec![net("203.0.113.0/24"), net("2001:db8:1::/48"), net("2001:db8:2::/48")];
    let edits = vec![Edit::Extend(bulk.clone()), Edit::RemoveAll(bulk)];
    let (timeline, (sent, got)) = run_edits(&bed, &filter, &mut model, &sources, edits, Duration::from_millis(400));
    // One group: every changed source, whatever its family.
    let findings = timeline.check(&sent, &got, |_, _| 0);
    let per_family = timeline.check(&sent, &got, |_, a| u128::from(a.is_ipv6()));
    let windows: Vec<String> = timeline
        .windows
        .iter()
        .zip(&findings.window_packets)
        .map(|(w, p)| format!("took {:?}, seq {}..{}, {p} packets in window", w.took, w.begin, w.end))
        .collect();
    eprintln!("{windows:?}\nper family: {per_family:?}\nacross families: {findings:?}");
    assert!(per_family.wrong.is_empty() && per_family.not_atomic.is_empty(), "{per_family:#?}");
    assert!(
        findings.not_atomic.is_empty(),
        "a bulk edit was seen half applied across families (IPv4 tables swapped, IPv6 not yet: \
         Editor::apply_atomic in src/filter/editor.rs swaps each family on its own):\n{:#?}\n{windows:?}",
        findings.not_atomic
    );
}
