//! Faults around the load balancer's tables (issue 11, section 6): a full
//! backend table, a full VIP table and a full connection table while a
//! flood runs through the real program (the test kit's live-frames runner:
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, so the frames the
//! LB redirects really leave its backend-side veth).
//!
//! Proved here: edits get typed errors naming both fixes (library and
//! CLI), every packet is counted (per VIP, per backend, no drop), nothing
//! is corrupted (VIPs, backends and the kernel's Maglev tables verify), a
//! full connection table evicts without misrouting a flow, and edits
//! succeed again once entries are removed.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod caps;
    pub mod cli;
}

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use common::caps::{drop_caps, rerun_as_child, set_nofile, CAP_SYS_ADMIN};
use common::cli::XDPGUARD_LB;
use xdpguard::testing::frame::Frame;
use xdpguard::testing::lb_topology::{
    backend_mac, backend_v4, VerdictNet, CLIENT_MAC, CLIENT_V4, LB_FRONT_V4, VIP2_V4, VIP_V4,
};
use xdpguard::testing::live::{test_run, RunOptions};
use xdpguard::testing::netns::ensure_bpffs;
use xdpguard::{
    BackendAddr, Flow, ForwardingMode, LbError, LoadBalancer, NewFlowLimit, Protocol, Vip, VipConfig, XdpAction,
};

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn b(i: usize) -> BackendAddr {
    BackendAddr::new(IpAddr::V4(backend_v4(i)))
}

/// A UDP frame from the client's port `sport` to `vip`.
fn client_frame(lb_mac: [u8; 6], sport: u16, vip: SocketAddr) -> Vec<u8> {
    Frame::builder().macs(CLIENT_MAC, lb_mac).ip(CLIENT_V4.into(), vip.ip()).udp(sport, vip.port()).build().to_vec()
}

/// A pin directory of this test, removed with what is pinned in it when
/// dropped (also on panic).
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        ensure_bpffs();
        PinDir(PathBuf::from(format!("/sys/fs/bpf/xg-faults-lb-{tag}-{}", std::process::id())))
    }

    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(lb) = LoadBalancer::open_pinned(&self.0) {
            let _ = lb.unpin();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bounded flood: live-frames runs of the LB program over `frames`, round
/// robin, `repeat` runs per call, until `budget` runs or stopped. Returns
/// the runs per frame.
struct LiveFlood {
    stop: Arc<AtomicBool>,
    runs: Arc<AtomicU64>,
    thread: JoinHandle<Vec<u64>>,
}

impl LiveFlood {
    fn start(net: &VerdictNet, prog: OwnedFd, frames: Vec<Vec<u8>>, repeat: u32, budget: u64, live: bool) -> LiveFlood {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU64::new(0));
        let eth0 = net.eth0;
        let thread = {
            let (stop, runs) = (stop.clone(), runs.clone());
            net.lb.spawn(move || {
                let mut per_frame = vec![0u64; frames.len()];
                let options = RunOptions::default().repeat(repeat).ingress(eth0);
                let options = if live { options.live_frames() } else { options };
                'outer: loop {
                    for (i, f) in frames.iter().enumerate() {
                        if stop.load(Ordering::Relaxed) || runs.load(Ordering::Relaxed) >= budget {
                            break 'outer;
                        }
                        let out = test_run(prog.as_fd(), f, options).expect("live-frames run");
                        if live {
                            assert_eq!(out.retval, 0, "live-frames runs report 0");
                        } else {
                            assert_eq!(out.action(), XdpAction::Redirect);
                        }
                        per_frame[i] += u64::from(repeat);
                        runs.fetch_add(u64::from(repeat), Ordering::Relaxed);
                    }
                }
                per_frame
            })
        };
        LiveFlood { stop, runs, thread }
    }

    fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("flood")
    }
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "the message should mention `{w}`:\n{text}");
    }
}

#[test]
fn full_backend_and_vip_tables_under_a_flood() {
    let net = VerdictNet::new("fb", 6);
    let pin = PinDir::new("full");
    let lb = {
        let p = pin.0.clone();
        net.lb.run(move || {
            LoadBalancer::builder()
                .redirect_interface("eth0")
                .redirect_interface("eth1")
                .max_vips(2)
                .max_backends(4)
                .connections(4096)
                .new_flow_limit(NewFlowLimit::Unlimited)
                .pin(p)
                .load()
                .expect("load the LB")
        })
    };
    let vip_addr = sa(VIP_V4, 53);
    let vip = Vip::udp(vip_addr);
    let vip2 = Vip::udp(sa(VIP2_V4, 53));
    let cfg = || VipConfig::new(ForwardingMode::L2Dsr).table_size(1021);
    lb.add_vip(vip, cfg()).unwrap();
    lb.add_vip(vip2, cfg()).unwrap();
    for i in 1..=3 {
        lb.add_backend(&vip, b(i), 1).unwrap();
    }
    lb.add_backend(&vip2, b(4), 1).unwrap();

    let frames: Vec<Vec<u8>> = (0..32).map(|i| client_frame(net.eth0_mac, 40000 + i, vip_addr)).collect();
    let prog = lb.program_fd().try_clone_to_owned().unwrap();
    let flood = LiveFlood::start(&net, prog, frames, 1024, 2_000_000, true);

    let mut refused = 0;
    while flood.runs() < 30_000 {
        let e = lb.add_backend(&vip, b(5), 1).unwrap_err();
        assert!(matches!(e, LbError::BackendTableFull { capacity: 4 }), "{e:?}");
        assert_mentions(
            &e.to_string(),
            &["backend table is full (4", "remove a backend", "max_backends", "--max-backends"],
        );
        let e = lb.batch(&vip).add(b(5), 1).add(b(6), 1).apply().unwrap_err();
        assert!(matches!(e, LbError::BackendTableFull { capacity: 4 }), "{e:?}");
        let e = lb.add_vip(Vip::udp(sa(VIP_V4, 54)), cfg()).unwrap_err();
        assert!(matches!(e, LbError::VipTableFull { capacity: 2 }), "{e:?}");
        assert_mentions(&e.to_string(), &["VIP table is full (2", "remove a VIP", "max_vips", "--max-vips"]);
        refused += 3;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The CLI says the same.
    let out =
        XDPGUARD_LB.run(&["backend", "add", "--pin", pin.s(), "--proto", "udp", &vip_addr.to_string(), "198.51.100.5"]);
    assert!(!out.status.success());
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["backend table is full", "--max-backends"]);
    let out = XDPGUARD_LB.run(&["vip", "add", "--pin", pin.s(), "--proto", "udp", "203.0.113.10:54", "--mode", "dsr"]);
    assert!(!out.status.success());
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["VIP table is full", "--max-vips"]);
    let per_frame = flood.finish();
    let runs: u64 = per_frame.iter().sum();
    eprintln!("{refused} edits refused under {runs} packets");

    // Every packet counted: for the VIP, spread over its backends, none dropped.
    let vs = lb.vip_stats(&vip).unwrap();
    assert_eq!(vs.traffic.packets, runs, "{vs:?}");
    let per_backend: u64 = lb.backend_stats(&vip).unwrap().iter().map(|s| s.traffic.packets).sum();
    assert_eq!(per_backend, runs);
    let stats = lb.stats().unwrap();
    assert_eq!(stats.dropped().packets, 0, "{stats:?}");
    assert_eq!(stats.redirected.packets, runs, "every packet left through eth1: {stats:?}");

    // Nothing corrupted: VIPs, backends and the kernel's tables.
    assert_eq!(lb.vips().unwrap().len(), 2);
    let backends = |v: &Vip| lb.backends(v).unwrap().iter().map(|x| x.addr).collect::<BTreeSet<_>>();
    assert_eq!(backends(&vip), [b(1), b(2), b(3)].into());
    let in_kernel = |v: &Vip| lb.kernel_table(v).unwrap().unwrap().into_iter().collect::<BTreeSet<_>>();
    assert_eq!(in_kernel(&vip), [b(1), b(2), b(3)].into());
    assert_eq!(in_kernel(&vip2), [b(4)].into());

    // Recovery: remove one, and the refused edit goes through.
    lb.remove_backend(&vip2, b(4)).unwrap();
    lb.add_backend(&vip, b(5), 1).unwrap();
    assert_eq!(in_kernel(&vip), [b(1), b(2), b(3), b(5)].into());
    lb.remove_vip(&vip2).unwrap();
    XDPGUARD_LB.ok(&["vip", "add", "--pin", pin.s(), "--proto", "udp", "203.0.113.10:54", "--mode", "dsr"]);
    assert_eq!(lb.vips().unwrap().len(), 2);
}

#[test]
fn a_full_connection_table_evicts_without_misrouting() {
    let net = VerdictNet::new("fc", 4);
    const CONNS: u32 = 64;
    let lb = net.lb.run(|| {
        LoadBalancer::builder()
            .redirect_interface("eth0")
            .redirect_interface("eth1")
            .connections(CONNS)
            .new_flow_limit(NewFlowLimit::Unlimited)
            .load()
            .expect("load the LB")
    });
    let vip_addr = sa(VIP_V4, 53);
    let vip = Vip::udp(vip_addr);
    lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(1021)).unwrap();
    for i in 1..=3 {
        lb.add_backend(&vip, b(i), 1).unwrap();
    }

    // Four times as many flows as connections asked for, twice the IPv4
    // table's slots (it has twice as many, a power of two).
    const FLOWS: u16 = 256;
    // Plain runs (no live frames): one call a packet, and a live-frames
    // call costs milliseconds of setup; the connection table is the same.
    let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| client_frame(net.eth0_mac, 20000 + i, vip_addr)).collect();
    let prog = lb.program_fd().try_clone_to_owned().unwrap();
    let flood = LiveFlood::start(&net, prog, frames, 2, u64::from(FLOWS) * 2 * 3, false);
    // Edits while the table is full and the flood runs: unaffected by it.
    while flood.runs() < u64::from(FLOWS) * 2 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    lb.add_backend(&vip, b(4), 1).unwrap();
    lb.set_weight(&vip, b(4), 0).unwrap();
    let per_frame = flood.thread.join().expect("flood");
    let runs: u64 = per_frame.iter().sum();

    let vs = lb.vip_stats(&vip).unwrap();
    let count = lb.connection_count();
    eprintln!("{runs} packets over {FLOWS} flows, table of {CONNS}: {vs:?}, {count} entries");
    assert_eq!(vs.traffic.packets, runs, "every packet counted: {vs:?}");
    assert_eq!(vs.lru_hits + vs.lru_misses, runs, "every packet a hit or a miss: {vs:?}");
    assert!(count <= 2 * CONNS as usize, "{count} entries in a table of {} slots", 2 * CONNS);
    assert!(vs.new_flows > u64::from(FLOWS), "evicted flows were tracked again: {vs:?}");
    let stats = lb.stats().unwrap();
    assert_eq!(stats.dropped().packets, 0, "{stats:?}");
    assert_eq!(stats.redirected.packets, runs, "{stats:?}");

    // No flow misrouted: with the backends unchanged (b4 added drained), a
    // flow evicted and tracked again chooses what Maglev says, as one never
    // evicted does.
    let lb = Arc::new(lb);
    let (mac, eth0) = (net.eth0_mac, net.eth0);
    let wrong = net.lb.run({
        let lb = lb.clone();
        move || {
            let mut wrong = Vec::new();
            for i in (0..FLOWS).step_by(7) {
                let out = lb.test_run_on(&client_frame(mac, 20000 + i, vip_addr), eth0).unwrap();
                let flow = Flow::new(sa(CLIENT_V4, 20000 + i), vip_addr, Protocol::Udp);
                let want = lb.backend_for(&vip, &flow).unwrap().expect("a backend");
                let want = backend_mac((1..=4).find(|&k| b(k) == want).expect("one of ours"));
                if out.action != XdpAction::Redirect || out.frame[..6] != want {
                    wrong.push(format!(
                        "port {}: {:?} to {:02x?}, want {want:02x?}",
                        20000 + i,
                        out.action,
                        &out.frame[..6]
                    ));
                }
            }
            wrong
        }
    });
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Recovery: flushing empties the table; new flows are tracked again.
    lb.flush_connections().unwrap();
    assert_eq!(lb.connection_count(), 0);
    let before = lb.vip_stats(&vip).unwrap().new_flows;
    net.lb.run({
        let lb = lb.clone();
        move || lb.test_run_on(&client_frame(mac, 9999, vip_addr), eth0).unwrap()
    });
    assert_eq!(lb.vip_stats(&vip).unwrap().new_flows, before + 1);
    assert_eq!(lb.connection_count(), 1);
}

// --- An LB in a namespace this process may not enter (no CAP_SYS_ADMIN) ---

const NS_CHILD_ENV: &str = "XDPG_TEST_LB_NS_CHILD";

/// The child half: reopen the LB from the root namespace without
/// CAP_SYS_ADMIN, so its namespace (named) cannot be entered.
fn namespace_child() {
    let pin = std::env::var("XDPG_TEST_PIN").expect("pin dir");
    drop_caps(&[CAP_SYS_ADMIN]);
    let lb = LoadBalancer::open_pinned(&pin).expect("reopening needs no CAP_SYS_ADMIN");
    let vip = Vip::udp(sa(VIP_V4, 53));

    // A backend change: typed, naming the capability, nothing applied.
    let e = lb.add_backend(&vip, b(2), 1).unwrap_err();
    assert!(matches!(e, LbError::NamespaceNotEntered { .. }), "{e:?}");
    assert_mentions(&e.to_string(), &["cannot enter", "CAP_SYS_ADMIN", "nsenter", "Nothing was changed"]);
    assert!(!e.to_string().contains("CAP_NET_ADMIN in the LB"), "not the neighbour hint: {e}");
    let e = lb.remove_backend(&vip, b(1)).unwrap_err();
    assert!(matches!(e, LbError::NamespaceNotEntered { .. }), "{e:?}");
    let now: Vec<BackendAddr> = lb.backends(&vip).unwrap().iter().map(|x| x.addr).collect();
    assert_eq!(now, [b(1)], "backends unchanged");

    // Statistics still read, next hops unknown.
    let stats = lb.backend_stats(&vip).expect("backend_stats without the namespace");
    assert_eq!(stats.len(), 1);
    assert_eq!(stats[0].next_hop.state, xdpguard::NeighbourState::Unknown, "{stats:?}");

    // A VIP at the namespace's own address is refused, not taken: the
    // check cannot run, and the error says why and the way out.
    let own = Vip::tcp(sa(LB_FRONT_V4, 22));
    let cfg = VipConfig::new(ForwardingMode::L2Dsr).table_size(1021);
    let e = lb.add_vip(own, cfg).unwrap_err();
    let LbError::LocalAddressesUnknown { reason, .. } = &e else { panic!("{e:?}") };
    assert!(matches!(**reason, LbError::NamespaceNotEntered { .. }), "{reason:?}");
    assert_mentions(&e.to_string(), &["192.0.2.254:22", "cannot be read", "CAP_SYS_ADMIN", "--force", "permit_local"]);
    // Adding the existing VIP again still changes nothing and succeeds.
    lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(1021)).unwrap();
    // Permitted, it needs no netlink.
    lb.add_vip_permit_local(Vip::udp(sa(VIP2_V4, 53)), cfg).unwrap();
    println!("CHILD-DONE");
}

/// An LB in a namespace of its own, pinned, with one L2 DSR VIP (UDP, port
/// 53) and backend 1: what the child-process tests below reopen.
fn pinned_lb_with_one_backend(name: &str) -> (VerdictNet, PinDir, LoadBalancer, Vip) {
    let net = VerdictNet::new(name, 2);
    let pin = PinDir::new(name);
    let lb = {
        let p = pin.0.clone();
        net.lb.run(move || {
            LoadBalancer::builder().redirect_interface("eth0").redirect_interface("eth1").pin(p).load().unwrap()
        })
    };
    let vip = Vip::udp(sa(VIP_V4, 53));
    lb.add_vip(vip, VipConfig::new(ForwardingMode::L2Dsr).table_size(1021)).unwrap();
    lb.add_backend(&vip, b(1), 1).unwrap();
    (net, pin, lb, vip)
}

#[test]
fn an_lb_namespace_this_process_cannot_enter_is_typed_and_changes_nothing() {
    if std::env::var_os(NS_CHILD_ENV).is_some() {
        return namespace_child();
    }
    let (_net, pin, lb, vip) = pinned_lb_with_one_backend("ns");

    rerun_as_child(
        "an_lb_namespace_this_process_cannot_enter_is_typed_and_changes_nothing",
        &[(NS_CHILD_ENV, "1".as_ref()), ("XDPG_TEST_PIN", pin.0.as_ref())],
    );

    // Nothing the child was refused was applied; what it was allowed was.
    let now: Vec<BackendAddr> = lb.backends(&vip).unwrap().iter().map(|x| x.addr).collect();
    assert_eq!(now, [b(1)]);
    let vips: BTreeSet<Vip> = lb.vips().unwrap().into_iter().map(|(v, _)| v).collect();
    assert_eq!(vips, [vip, Vip::udp(sa(VIP2_V4, 53))].into(), "the VIP at the host's address was not added");
}

// --- No rtnetlink socket can be opened (out of file descriptors) ---

const NOFILE_CHILD_ENV: &str = "XDPG_TEST_LB_NOFILE_CHILD";

/// The child half: reopen the LB, then take every file descriptor the
/// limit leaves, so the rtnetlink socket of a backend change cannot be
/// opened.
fn nofile_child() {
    let pin = std::env::var("XDPG_TEST_PIN").expect("pin dir");
    let lb = LoadBalancer::open_pinned(&pin).expect("reopen");
    let vip = Vip::udp(sa(VIP_V4, 53));
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    set_nofile(highest + 1);
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    let add = lb.add_backend(&vip, b(2), 1);
    let batch = lb.batch(&vip).set_weight(b(1), 5).apply();
    let remove = lb.remove_backend(&vip, b(1));
    drop(fillers);
    set_nofile(4096);
    for (what, r) in [("add_backend", add), ("batch", batch), ("remove_backend", remove)] {
        let e = r.unwrap_err();
        println!("CHILD {what}: {e}");
        let LbError::NetlinkSocket { error, .. } = &e else { panic!("{what}: {e:?}") };
        assert_eq!(error.raw_os_error(), Some(nix::libc::EMFILE), "{what}: the OS error is kept: {e:?}");
        assert_mentions(&e.to_string(), &["rtnetlink socket", "(os error 24)", "ulimit -n", "LimitNOFILE="]);
    }
    let now: Vec<(BackendAddr, u32)> = lb.backends(&vip).unwrap().iter().map(|x| (x.addr, x.weight)).collect();
    assert_eq!(now, [(b(1), 1)], "nothing applied");
    println!("CHILD-DONE");
}

/// A backend change whose rtnetlink socket cannot be opened (here: out of
/// file descriptors) is `LbError::NetlinkSocket`, keeping the OS error
/// and naming the fix, with nothing applied; it was `LbError::Neighbour`,
/// which says the change was applied and only the next hops' upkeep
/// failed (the health checker took it so). A child process, so that the
/// limit does not reach the other tests' threads.
#[test]
fn a_netlink_socket_that_cannot_be_opened_is_typed_and_changes_nothing() {
    if std::env::var_os(NOFILE_CHILD_ENV).is_some() {
        return nofile_child();
    }
    let (_net, pin, lb, vip) = pinned_lb_with_one_backend("nofile");
    rerun_as_child(
        "a_netlink_socket_that_cannot_be_opened_is_typed_and_changes_nothing",
        &[(NOFILE_CHILD_ENV, "1".as_ref()), ("XDPG_TEST_PIN", pin.0.as_ref())],
    );
    let now: Vec<BackendAddr> = lb.backends(&vip).unwrap().iter().map(|x| x.addr).collect();
    assert_eq!(now, [b(1)]);
}
