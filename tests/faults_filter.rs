//! Faults around a pinned filter (issue 11, section 6), with the real CLI
//! and real traffic:
//!
//! - three `xdpguard` processes at a time editing one pinned filter (block,
//!   unblock, bulk block from a file, allowlist replaces) while a flood
//!   runs: every edit lands with the change count its own model predicts,
//!   the final lists are the union of what each did, and the kernel's
//!   verdicts (`BPF_PROG_TEST_RUN`) and [`Filter::verdict`] match them;
//! - a full table under a flood: typed errors naming the fix, every packet
//!   counted under the reason the lists give it, lists intact, and edits
//!   succeed again once entries are removed;
//! - the interface deleted and re-created, the bpffs unmounted, the pin
//!   directory removed by hand (whole or in part): each gives a typed error
//!   naming the fix, and the fix it names works (README, "Failure modes").
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod flood;
}

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::cli::XDPGUARD;
use common::flood::Flood;
use xdpguard::testing::frame::Frame;
use xdpguard::testing::netns::{ensure_bpffs, run, NetNs, Pair};
use xdpguard::{AttachError, AttachMode, Error, Filter, FilterStats, IpNetwork, ListError, PinError, XdpAction};

static PINS: AtomicU32 = AtomicU32::new(0);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A pin directory of this test, removed (with whatever is pinned in it)
/// when dropped, also on panic.
struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// A fresh directory name under `root` (not created: attach creates it).
    fn under(root: &Path, tag: &str) -> PinDir {
        let n = PINS.fetch_add(1, Ordering::Relaxed);
        PinDir { path: root.join(format!("xg-faults-{tag}-{}-{n}", std::process::id())) }
    }

    fn new(tag: &str) -> PinDir {
        ensure_bpffs();
        PinDir::under(Path::new("/sys/fs/bpf"), tag)
    }

    fn s(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(f) = Filter::open_pinned(&self.path) {
            let _ = f.unpin();
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A bpffs of the test's own, mounted on a temporary directory, so a test
/// can unmount it without touching /sys/fs/bpf. Unmounted and removed on
/// drop.
struct PrivateBpffs {
    mount: PathBuf,
}

impl PrivateBpffs {
    fn new() -> PrivateBpffs {
        let n = PINS.fetch_add(1, Ordering::Relaxed);
        let mount = std::env::temp_dir().join(format!("xg-faults-bpffs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&mount).unwrap();
        let b = PrivateBpffs { mount };
        b.mount();
        b
    }

    fn mount(&self) {
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&self.mount));
    }

    /// Unmounts it, retrying for a moment: a process another test forks
    /// holds this one's open descriptors (the pin directory's lock, say)
    /// until it execs, and the mount is busy meanwhile.
    fn umount(&self) {
        for _ in 0..100 {
            if Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run(Command::new("umount").arg(&self.mount));
    }

    fn is_mounted(&self) -> bool {
        let m = std::fs::read_to_string("/proc/mounts").unwrap();
        m.lines().any(|l| l.split_whitespace().nth(1) == self.mount.to_str())
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        while self.is_mounted() {
            if !Command::new("umount").arg(&self.mount).status().is_ok_and(|s| s.success()) {
                break;
            }
        }
        let _ = std::fs::remove_dir(&self.mount);
    }
}

/// What a command printed (stdout and stderr), requiring it to fail.
fn fails(args: &[&str]) -> String {
    let out = XDPGUARD.run(args);
    assert!(!out.status.success(), "xdpguard {} should have failed", args.join(" "));
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "the message should mention `{w}`:\n{text}");
    }
}

/// Whether an XDP program runs on `dev` in `ns`.
fn xdp_on(ns: &NetNs, dev: &str) -> bool {
    let out = ns.ip(&["-d", "link", "show", "dev", dev]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Waits (up to 5 s) for `dev` to carry no program: the kernel releases a
/// link whose last reference went from a deferred work item, not at once.
fn detached(ns: &NetNs, dev: &str) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while xdp_on(ns, dev) {
        if std::time::Instant::now() > until {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// The filter's counters since `earlier` once `done` holds for them: a
/// sender's last frames may still wait in the veth's queue for the peer's
/// NAPI (and its XDP) when the sender returns. Polled for up to 5 s; the
/// last reading comes back either way, for the caller's asserts to judge.
fn settled_stats(filter: &Filter, earlier: &FilterStats, done: impl Fn(&FilterStats) -> bool) -> FilterStats {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let stats = filter.stats().unwrap().since(earlier);
        if done(&stats) || std::time::Instant::now() > until {
            return stats;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A UDP frame from `src` to the server of a [`Pair`].
fn frame_from(pair_macs: ([u8; 6], [u8; 6]), src: IpAddr, sport: u16) -> Vec<u8> {
    let dst = if src.is_ipv4() { ip("192.0.2.2") } else { ip("2001:db8::2") };
    Frame::builder().macs(pair_macs.0, pair_macs.1).ip(src, dst).udp(sport, 9000).payload(b"flood").build().to_vec()
}

/// The verdict the lists give `a`: allowlist first, then blocklist.
fn passes(allow: &BTreeSet<IpNetwork>, block: &BTreeSet<IpNetwork>, a: IpAddr) -> bool {
    allow.iter().any(|n| n.contains(a)) || !block.iter().any(|n| n.contains(a))
}

fn listed(list: &[&str]) -> BTreeSet<IpNetwork> {
    let out = XDPGUARD.json(list);
    out["entries"].as_array().unwrap().iter().map(|e| net(e.as_str().unwrap())).collect()
}

// --- 1. concurrent CLIs under a flood ------------------------------------------

/// One CLI worker's plan step.
#[derive(Debug, Clone)]
enum Step {
    Block(Vec<IpNetwork>),
    BlockFile(Vec<IpNetwork>),
    Unblock(Vec<IpNetwork>),
    AllowReplace(Vec<IpNetwork>),
    Disallow(Vec<IpNetwork>),
}

/// Runs a worker's steps one process at a time against the filter pinned
/// at `pin`, checking each command's reported change count against the
/// worker's own model (its entries are its own: no other worker touches
/// them). Returns the model: (blocklist entries, allowlist entries).
fn worker(pin: String, steps: Vec<Step>, scratch: PathBuf) -> (BTreeSet<IpNetwork>, BTreeSet<IpNetwork>, usize) {
    let mut block = BTreeSet::new();
    let mut allow = BTreeSet::new();
    let mut commands = 0;
    for (i, step) in steps.into_iter().enumerate() {
        let strs = |v: &[IpNetwork]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let (args, expect): (Vec<String>, String) = match &step {
            Step::Block(v) => {
                let changed = v.iter().filter(|n| block.insert(**n)).count();
                let mut a = vec!["block".to_string(), "--pin".into(), pin.clone()];
                a.extend(strs(v));
                (a, format!("blocklist: added {changed} of {} entries", v.len()))
            }
            Step::BlockFile(v) => {
                let changed = v.iter().filter(|n| block.insert(**n)).count();
                let file = scratch.join(format!("step{i}.txt"));
                std::fs::write(&file, strs(v).join("\n") + "\n").unwrap();
                let a = vec!["block".into(), "--pin".into(), pin.clone(), "--file".into(), file.display().to_string()];
                (a, format!("blocklist: added {changed} of {} entries", v.len()))
            }
            Step::Unblock(v) => {
                let changed = v.iter().filter(|n| block.remove(*n)).count();
                let mut a = vec!["unblock".to_string(), "--pin".into(), pin.clone()];
                a.extend(strs(v));
                (a, format!("blocklist: removed {changed} of {} entries", v.len()))
            }
            Step::AllowReplace(v) => {
                let new: BTreeSet<IpNetwork> = v.iter().copied().collect();
                let changed = allow.symmetric_difference(&new).count();
                allow = new;
                let mut a = vec!["allow".to_string(), "--replace".into(), "--pin".into(), pin.clone()];
                a.extend(strs(v));
                (a, format!("replaced the allowlist: {} entries now ({changed} changes)", allow.len()))
            }
            Step::Disallow(v) => {
                let changed = v.iter().filter(|n| allow.remove(*n)).count();
                let mut a = vec!["disallow".to_string(), "--pin".into(), pin.clone()];
                a.extend(strs(v));
                (a, format!("allowlist: removed {changed} of {} entries", v.len()))
            }
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = XDPGUARD.ok(&args);
        assert!(out.contains(&expect), "step {i} {step:?}: expected `{expect}`, got:\n{out}");
        commands += 1;
    }
    (block, allow, commands)
}

#[test]
fn concurrent_cli_edits_under_a_flood_all_land() {
    let pair = Pair::new("fc");
    let pin = PinDir::new("cli");
    let scratch = tempdir("cli");
    XDPGUARD.ok(&[
        "attach",
        "--iface",
        "eth0",
        "--mode",
        "native",
        "--pin",
        pin.s(),
        "--netns",
        &pair.server.name,
        "--v4-capacity",
        "4096",
        "--v6-capacity",
        "4096",
    ]);
    // Standing entries nobody edits: always blocked.
    XDPGUARD.ok(&["block", "--pin", pin.s(), "192.0.2.128/26", "2001:db8:dead::/48"]);
    let standing: BTreeSet<IpNetwork> = [net("192.0.2.128/26"), net("2001:db8:dead::/48")].into();

    // Worker A: IPv4 hosts and ranges of 198.51.100.0/24; worker B: IPv6
    // /64s of 2001:db8:b::/48; worker C: allowlist holes in the standing
    // entries, replaced wholesale and trimmed.
    let a4 = |i: u32| net(&format!("198.51.100.{i}/32"));
    let mut steps_a = Vec::new();
    for i in 0..24u32 {
        steps_a.push(Step::Block(vec![a4(i * 2), a4(i * 2 + 1)]));
        if i % 3 == 2 {
            steps_a.push(Step::Unblock(vec![a4(i * 2 - 3), a4(200)]));
        }
        if i % 6 == 5 {
            steps_a.push(Step::BlockFile(vec![net(&format!("198.51.100.{}/28", 128 + (i / 6) * 16)), a4(i)]));
        }
    }
    let b6 = |i: u32| net(&format!("2001:db8:b:{i:x}::/64"));
    let mut steps_b = Vec::new();
    for i in 0..24u32 {
        steps_b.push(Step::Block(vec![b6(i)]));
        if i % 2 == 1 {
            steps_b.push(Step::Unblock(vec![b6(i - 1)]));
        }
        if i % 8 == 7 {
            steps_b.push(Step::BlockFile((100..104).map(|k| b6(k + i)).collect()));
        }
    }
    let c = |i: u32| net(&format!("192.0.2.{}/32", 128 + i));
    let mut steps_c = Vec::new();
    for i in 0..16u32 {
        steps_c.push(Step::AllowReplace(vec![c(i), c(i + 1), c(i + 7), net(&format!("2001:db8:dead:{i:x}::/64"))]));
        if i % 4 == 3 {
            steps_c.push(Step::Disallow(vec![c(i + 1), c(63)]));
        }
    }

    // Flood sources: some of every worker's space, the standing entries, and
    // sources no list ever holds.
    let never = ["198.51.100.250", "2001:db8:c::1", "203.0.113.9"].map(ip);
    let always_blocked = ["192.0.2.190", "2001:db8:dead:ffff::1"].map(ip);
    let mut sources: Vec<IpAddr> = never.iter().chain(&always_blocked).copied().collect();
    sources.extend((0..48).step_by(5).map(|i| ip(&format!("198.51.100.{i}"))));
    sources.extend((0..24).step_by(3).map(|i| ip(&format!("2001:db8:b:{i:x}::1"))));
    sources.extend((0..18).step_by(2).map(|i| ip(&format!("192.0.2.{}", 128 + i))));
    let macs = (pair.client.mac("eth0"), pair.server.mac("eth0"));
    let frames: Vec<Vec<u8>> =
        sources.iter().enumerate().map(|(i, &s)| frame_from(macs, s, 20000 + i as u16)).collect();

    let filter = pair.server.run({
        let p = pin.path.clone();
        move || Filter::open_pinned(p).unwrap()
    });
    let stats0 = filter.stats().unwrap();
    let flood = Flood::start(&pair.client, "eth0", frames, 2_000_000);
    let workers: Vec<_> = [steps_a, steps_b, steps_c]
        .into_iter()
        .map(|steps| {
            let (pin, scratch) = (pin.s().to_owned(), scratch.clone());
            std::thread::spawn(move || worker(pin, steps, scratch))
        })
        .collect();
    let results: Vec<_> = workers.into_iter().map(|w| w.join().expect("a CLI worker failed")).collect();
    let per_frame = flood.finish(true);
    let sent: u64 = per_frame.iter().sum();
    let blocked_always: u64 = per_frame[never.len()..never.len() + always_blocked.len()].iter().sum();
    let never_sent: u64 = per_frame[..never.len()].iter().sum();
    let stats = settled_stats(&filter, &stats0, |s| {
        s.total().packets >= sent && s.blocked().packets >= blocked_always && s.passed.packets >= never_sent
    });
    let commands: usize = results.iter().map(|r| r.2).sum();
    eprintln!("{commands} CLI edits in 3 processes at a time under {sent} frames; {stats:?}");
    assert!(commands > 80 && sent > 10_000, "too little happened: {commands} edits, {sent} frames");

    // Every frame reached the filter and was counted; the sources no edit
    // touched kept their verdict throughout.
    let counted = stats.total().packets;
    assert!(counted >= sent, "{counted} counted of {sent} sent: {stats:?}");
    assert!(stats.blocked().packets >= blocked_always, "{stats:?}");
    assert!(stats.passed.packets >= never_sent, "{stats:?}");

    // The final lists are the union of what each worker did.
    let mut want_block = standing.clone();
    let mut want_allow = BTreeSet::new();
    for (b, a, _) in &results {
        want_block.extend(b);
        want_allow.extend(a);
    }
    assert_eq!(listed(&["list", "--pin", pin.s(), "--json"]), want_block);
    assert_eq!(listed(&["list", "--allow", "--pin", pin.s(), "--json"]), want_allow);
    assert_eq!(filter.blocklist().iter().unwrap().collect::<BTreeSet<_>>(), want_block);

    // Verdicts match the final lists, in the model and in the kernel, for
    // every address any worker touched and for unlisted neighbours.
    let mut probes: Vec<IpAddr> = (0..=255).map(|i| ip(&format!("198.51.100.{i}"))).collect();
    probes.extend((0..=255).map(|i| ip(&format!("192.0.2.{i}"))));
    probes.extend((0..140).map(|i| ip(&format!("2001:db8:b:{i:x}::7"))));
    probes.extend((0..20).map(|i| ip(&format!("2001:db8:dead:{i:x}::7"))));
    probes.extend(never);
    let mut wrong = Vec::new();
    for (i, &a) in probes.iter().enumerate() {
        let want = passes(&want_allow, &want_block, a);
        let model = !matches!(filter.verdict(a).unwrap(), xdpguard::Verdict::Block(_));
        let kernel = filter.test_run(&frame_from(macs, a, 30000 + i as u16)).unwrap().action;
        if model != want || kernel != if want { XdpAction::Pass } else { XdpAction::Drop } {
            wrong.push(format!("{a}: want pass={want}, verdict pass={model}, kernel {kernel:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} wrong verdicts:\n{}", wrong.len(), wrong.join("\n"));
    drop(filter);
    let _ = std::fs::remove_dir_all(&scratch);
}

fn tempdir(tag: &str) -> PathBuf {
    let n = PINS.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("xg-faults-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

// --- 2. a full list table under a flood ------------------------------------------

#[test]
fn full_list_tables_under_a_flood_give_typed_errors_and_count_every_packet() {
    let pair = Pair::new("ff");
    let pin = PinDir::new("full");
    let filter = Arc::new(pair.server.run({
        let p = pin.path.clone();
        move || {
            Filter::builder()
                .interface("eth0")
                .mode(AttachMode::Native)
                .pin(p)
                .v4_capacity(4)
                .v6_capacity(2)
                .attach()
                .unwrap()
        }
    }));
    let v4 = ["203.0.113.1/32", "203.0.113.2/32", "198.51.100.0/25", "192.0.2.128/25"].map(net);
    let v6 = ["2001:db8:1::/48", "2001:db8:2::/64"].map(net);
    filter.blocklist().extend(v4.iter().chain(&v6).copied()).unwrap();
    let entries = |f: &Filter| f.blocklist().iter().unwrap().collect::<Vec<_>>();
    let before = entries(&filter);

    let listed_src = ["203.0.113.1", "198.51.100.77", "192.0.2.200", "2001:db8:1::9", "2001:db8:2::1"].map(ip);
    let clean_src = ["203.0.113.50", "198.51.100.200", "2001:db8:3::1"].map(ip);
    let macs = (pair.client.mac("eth0"), pair.server.mac("eth0"));
    let frames: Vec<Vec<u8>> =
        listed_src.iter().chain(&clean_src).enumerate().map(|(i, &s)| frame_from(macs, s, 20000 + i as u16)).collect();
    let stats0 = filter.stats().unwrap();
    let flood = Flood::start(&pair.client, "eth0", frames, 300_000);

    // Edits while the flood runs: each refused with the table, its capacity
    // and both fixes named; nothing of them applied.
    let check_full = |err: ListError, capacity: usize, setter: &str, flag: &str| {
        let ListError::Full { capacity: c, setter: s, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*c, *s), (capacity, setter));
        assert_mentions(
            &err.to_string(),
            &["full", "nothing of this edit was applied", setter, flag, "remove entries"],
        );
    };
    let mut refused = 0;
    // Until half the flood is sent, or the sender ended early (its finish
    // below then says why): bounded in time either way.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while flood.sent() < 150_000 && !flood.is_finished() {
        assert!(
            std::time::Instant::now() < until,
            "the flood sent {} of 150000 frames in 60 s: stuck or far too slow",
            flood.sent()
        );
        check_full(filter.blocklist().insert(net("203.0.113.50/32")).unwrap_err(), 4, "v4_capacity", "--v4-capacity");
        check_full(filter.allowlist().insert(net("203.0.113.60/32")).unwrap_err(), 4, "v4_capacity", "--v4-capacity");
        check_full(filter.blocklist().insert(net("2001:db8:3::/48")).unwrap_err(), 2, "v6_capacity", "--v6-capacity");
        let too_many: Vec<IpNetwork> = (10..16).map(|i| net(&format!("203.0.113.{i}/32"))).collect();
        check_full(filter.blocklist().replace(too_many).unwrap_err(), 4, "v4_capacity", "--v4-capacity");
        refused += 4;
    }
    // The CLI says the same, with its own flag.
    let text = fails(&["block", "--pin", pin.s(), "203.0.113.99"]);
    assert_mentions(
        &text,
        &["IPv4 entry table is full (4 entries)", "--v4-capacity", "nothing of this edit was applied"],
    );
    let text = fails(&["allow", "--pin", pin.s(), "2001:db8:9::/48"]);
    assert_mentions(&text, &["IPv6 entry table is full (2 entries)", "--v6-capacity"]);
    let per_frame = flood.finish(false);
    let from_listed: u64 = per_frame[..listed_src.len()].iter().sum();
    let from_listed_v4: u64 = per_frame[..3].iter().sum();
    let from_clean: u64 = per_frame[listed_src.len()..].iter().sum();
    let stats = settled_stats(&filter, &stats0, |s| {
        s.blocked().packets >= from_listed && s.blocked_v4.packets >= from_listed_v4 && s.passed.packets >= from_clean
    });
    eprintln!("{refused} edits refused under {} frames; {stats:?}", per_frame.iter().sum::<u64>());

    // Nothing corrupted: the lists are as they were, the kernel agrees, and
    // every frame was counted under the reason the lists give it.
    assert_eq!(entries(&filter), before);
    assert_eq!(stats.blocked().packets, from_listed, "blocked_v4 + blocked_v6 count the listed sources: {stats:?}");
    assert_eq!(stats.blocked_v4.packets, from_listed_v4, "IPv4 sources counted as blocked_v4: {stats:?}");
    assert!(stats.passed.packets >= from_clean, "passed counts the clean sources: {stats:?}");
    for (i, &s) in listed_src.iter().chain(&clean_src).enumerate() {
        let want = if i < listed_src.len() { XdpAction::Drop } else { XdpAction::Pass };
        assert_eq!(filter.test_run(&frame_from(macs, s, 1)).unwrap().action, want, "{s}");
    }

    // Recovery: remove entries, and the refused edits go through.
    filter.blocklist().remove(net("203.0.113.2/32")).unwrap();
    assert!(filter.blocklist().insert(net("203.0.113.50/32")).unwrap().changed);
    XDPGUARD.ok(&["unblock", "--pin", pin.s(), "2001:db8:2::/64"]);
    XDPGUARD.ok(&["allow", "--pin", pin.s(), "2001:db8:9::/48"]);
    assert_eq!(filter.test_run(&frame_from(macs, ip("203.0.113.50"), 1)).unwrap().action, XdpAction::Drop);
    assert_eq!(filter.test_run(&frame_from(macs, ip("203.0.113.2"), 1)).unwrap().action, XdpAction::Pass);
}

// --- 3. the interface, the bpffs, the pin directory ---------------------------------

/// A namespace with a veth pair of its own (`xg0`, `xg1`), the filter on xg0.
fn lone_ns(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.ip(&["link", "add", "xg0", "type", "veth", "peer", "name", "xg1"]);
    for dev in ["xg0", "xg1"] {
        ns.ip(&["link", "set", dev, "up"]);
        ns.finished_frames(dev);
    }
    ns
}

fn attach_cli(ns: &NetNs, pin: &str) {
    XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin, "--netns", &ns.name]);
}

#[test]
fn interface_deleted_and_recreated_keeps_the_lists_and_reattach_restores_it() {
    let ns = lone_ns("fi");
    let pin = PinDir::new("iface");
    attach_cli(&ns, pin.s());
    XDPGUARD.ok(&["block", "--pin", pin.s(), "203.0.113.0/24", "2001:db8:1::/48"]);
    assert!(xdp_on(&ns, "xg0"));

    // The interface goes (its link with it); a new one of the same name comes.
    ns.ip(&["link", "del", "xg0"]);
    ns.ip(&["link", "add", "xg0", "type", "veth", "peer", "name", "xg1"]);
    for dev in ["xg0", "xg1"] {
        ns.ip(&["link", "set", dev, "up"]);
        ns.finished_frames(dev);
    }
    assert!(detached(&ns, "xg0"), "a new interface carries no program");

    // The pinned filter and its lists are still there; status says where it
    // ran and no longer does, and how to attach it there again (read twice:
    // reading keeps the record).
    for _ in 0..2 {
        let status = XDPGUARD.json(&["status", "--pin", pin.s(), "--json"]);
        assert_eq!(status["attachments"], serde_json::json!([]), "{status}");
        assert_eq!(status["lost_attachments"][0]["interface"], "xg0", "{status}");
        assert_eq!(status["lost_attachments"][0]["mode"], "native", "{status}");
        assert_eq!(status["blocklist_entries"], 2, "{status}");
    }
    let text = XDPGUARD.ok(&["status", "--pin", pin.s()]);
    assert_mentions(&text, &["lost:       xg0 (native mode", "is gone", "xdpguard attach --iface xg0 --pin"]);
    // A handle opened now says the same.
    let held = Filter::open_pinned(&pin.path).unwrap();
    assert!(held.attachments().is_empty());
    assert_eq!(held.lost_attachments().iter().map(|a| a.interface.as_str()).collect::<Vec<_>>(), ["xg0"]);

    // `attach` on the existing pin directory attaches the same filter again,
    // lists kept, and the record of the lost attachment goes.
    let out = XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    assert_mentions(&out, &["attached to xg0", "lists kept"]);
    assert!(xdp_on(&ns, "xg0"));
    assert_eq!(listed(&["list", "--pin", pin.s(), "--json"]), [net("203.0.113.0/24"), net("2001:db8:1::/48")].into());
    let status = XDPGUARD.json(&["status", "--pin", pin.s(), "--json"]);
    assert_eq!(status["lost_attachments"], serde_json::json!([]), "{status}");
    // The handle opened before sees the attachment another process made.
    assert_eq!(held.attachments().iter().map(|a| a.interface.as_str()).collect::<Vec<_>>(), ["xg0"]);
    assert!(held.lost_attachments().is_empty());
    // Attaching again where it already runs changes nothing and succeeds
    // (a unit's start, run again); in another mode it is refused, naming
    // the way to change the mode.
    let out = XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    assert_mentions(&out, &["already attached to xg0", "kept as it is"]);
    assert_eq!(out.matches("attached to").count(), 1, "nothing attached anew: {out}");
    let text = fails(&["attach", "--iface", "xg0", "--mode", "generic", "--pin", pin.s(), "--netns", &ns.name]);
    assert_mentions(&text, &["xg0", "not in generic mode", "nothing changed", "xdpguard detach --iface xg0 --pin"]);
    assert!(xdp_on(&ns, "xg0"));

    // Detaching from one interface by name, through the handle opened before
    // the re-attach (another process's link): the program leaves xg0 and
    // stays pinned, lists kept.
    held.detach("xg0").unwrap();
    assert!(detached(&ns, "xg0"), "detached from the interface another process attached to");
    let err = held.detach("xg0").unwrap_err();
    assert!(matches!(err, Error::Attach(AttachError::NotAttached { .. })), "{err:?}");
    assert_mentions(&err.to_string(), &["not attached to `xg0`", "attached to: none"]);
    drop(held);
    XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    let out = XDPGUARD.ok(&["detach", "--iface", "xg0", "--pin", pin.s()]);
    assert_mentions(&out, &["detached from xg0", "stays pinned"]);
    assert!(detached(&ns, "xg0"));
    assert_eq!(XDPGUARD.json(&["status", "--pin", pin.s(), "--json"])["blocklist_entries"], 2);
    // A lost attachment is forgotten by name.
    XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    ns.ip(&["link", "del", "xg0"]);
    XDPGUARD.ok(&["detach", "--iface", "xg0", "--pin", pin.s()]);
    let status = XDPGUARD.json(&["status", "--pin", pin.s(), "--json"]);
    assert_eq!(status["lost_attachments"], serde_json::json!([]), "{status}");
    ns.ip(&["link", "add", "xg0", "type", "veth", "peer", "name", "xg1"]);
    for dev in ["xg0", "xg1"] {
        ns.ip(&["link", "set", dev, "up"]);
        ns.finished_frames(dev);
    }
    XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    // A handle whose directory was emptied and made again (detach, then
    // attach) does not take the new filter's links for its own.
    let stale = Filter::open_pinned(&pin.path).unwrap();
    XDPGUARD.ok(&["detach", "--pin", pin.s()]);
    XDPGUARD.ok(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    assert!(stale.attachments().is_empty() && stale.lost_attachments().is_empty());
    assert!(matches!(stale.detach("xg0"), Err(Error::Attach(AttachError::NotAttached { .. }))));
    assert!(xdp_on(&ns, "xg0"), "the new filter stays on xg0");
    drop(stale);
    // Capacities cannot change on a running filter: said, not ignored.
    let text = fails(&["attach", "--iface", "xg1", "--pin", pin.s(), "--netns", &ns.name, "--v4-capacity", "100"]);
    assert_mentions(&text, &["capacity", "detach"]);
}

/// What a creation killed half-way leaves (its mark; a real one may also
/// have pinned maps, a program and links): `attach` there replaces it with
/// a new filter, and `detach` removes it; both said.
#[test]
fn an_interrupted_creation_is_replaced_by_attach_and_removed_by_detach() {
    let ns = lone_ns("fc");
    let pin = PinDir::new("creating");
    let leave_leftovers = || std::fs::create_dir_all(pin.path.join("xdpg_creating")).unwrap();
    leave_leftovers();
    let text = fails(&["status", "--pin", pin.s()]);
    assert_mentions(&text, &["interrupted", "which removes them first"]);

    let out = XDPGUARD.run(&["attach", "--iface", "xg0", "--mode", "native", "--pin", pin.s(), "--netns", &ns.name]);
    assert!(out.status.success(), "attach over leftovers");
    assert_mentions(&String::from_utf8_lossy(&out.stderr), &["leftovers of an interrupted creation", "removed"]);
    assert!(xdp_on(&ns, "xg0"));
    XDPGUARD.ok(&["detach", "--pin", pin.s()]);
    assert!(detached(&ns, "xg0"));

    leave_leftovers();
    XDPGUARD.ok(&["detach", "--pin", pin.s()]);
    assert!(!pin.path.exists(), "the leftovers and their directory are gone");

    // Cut short while pinning the guard stage (pinned last, in a directory
    // of its own): the filter's creation did not finish, and it goes whole.
    let path = pin.path.clone();
    drop(ns.run(move || Filter::builder().interface("xg0").guard(false).pin(path).attach().expect("attach")));
    std::fs::create_dir_all(pin.path.join("guard").join("xdpg_creating")).unwrap();
    let text = fails(&["status", "--pin", pin.s()]);
    assert_mentions(&text, &[&format!("{} holds the leftovers", pin.s()), "xdpguard attach"]);
    XDPGUARD.ok(&["detach", "--pin", pin.s()]);
    assert!(detached(&ns, "xg0"), "the half-made filter is gone from its interface");
    assert!(!pin.path.exists());
}

/// A failed attach leaves the pin directory as it found it: one it made
/// goes, an empty one that was there before (another tool's, such as
/// libxdp's /sys/fs/bpf/xdp) stays.
#[test]
fn a_failed_attach_removes_only_the_directory_it_made() {
    let ns = lone_ns("fm");
    let pin = PinDir::new("held");
    attach_cli(&ns, pin.s());
    let before = PinDir::new("before");
    std::fs::create_dir(&before.path).unwrap();
    let fresh = PinDir::new("fresh");
    for (dir, existed) in [(&before, true), (&fresh, false)] {
        // xg0 holds the first filter: the attach fails after its directory
        // was prepared.
        let text = fails(&["attach", "--iface", "xg0", "--pin", dir.s(), "--netns", &ns.name]);
        assert_mentions(&text, &["xg0"]);
        assert_eq!(dir.path.exists(), existed, "{}: {text}", dir.s());
        if existed {
            assert_eq!(std::fs::read_dir(&dir.path).unwrap().count(), 0, "nothing of ours left in {}", dir.s());
        }
    }
    assert!(xdp_on(&ns, "xg0"), "the filter attached first stays");
}

#[test]
fn bpffs_unmounted_says_to_mount_it_and_attach_again() {
    let ns = lone_ns("fb");
    let fs = PrivateBpffs::new();
    let pin = PinDir::under(&fs.mount, "bpffs");
    attach_cli(&ns, pin.s());
    XDPGUARD.ok(&["block", "--pin", pin.s(), "203.0.113.0/24"]);
    // A process holding the filter open across the unmount.
    let held = Filter::open_pinned(&pin.path).unwrap();

    fs.umount();
    // The program stays attached while a process holds it...
    assert!(xdp_on(&ns, "xg0"));
    // ...but no other process can reach it, and this one cannot edit it.
    let text = fails(&["block", "--pin", pin.s(), "198.51.100.0/24"]);
    assert_mentions(&text, &["not on a bpffs mount", "mount -t bpf bpf", "attach"]);
    let err = held.blocklist().insert(net("198.51.100.0/24")).unwrap_err();
    assert!(matches!(err, ListError::Pin(PinError::Removed { .. })), "{err:?}");
    assert_mentions(&err.to_string(), &["removed", "bpffs", "xdpguard attach --iface IF --pin"]);
    // Once the last holder goes, the program goes with it.
    drop(held);
    assert!(detached(&ns, "xg0"), "the unmount took the last reference");
    let err = Filter::open_pinned(&pin.path).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::BpffsNotMounted { .. })), "{err:?}");

    // The path the message names: mount, attach, edit.
    fs.mount();
    attach_cli(&ns, pin.s());
    XDPGUARD.ok(&["block", "--pin", pin.s(), "203.0.113.0/24"]);
    assert!(xdp_on(&ns, "xg0"));
}

#[test]
fn pin_directory_removed_by_hand_gives_typed_errors_naming_the_fix() {
    let ns = lone_ns("fp");
    let pin = PinDir::new("rm");
    attach_cli(&ns, pin.s());
    XDPGUARD.ok(&["block", "--pin", pin.s(), "203.0.113.0/24"]);

    // Part of it removed (a map pin): reopening says what is missing and
    // what to do; the named fix (remove the rest, attach again) works.
    let map = std::fs::read_dir(&pin.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.contains("v6"))
        .expect("a v6 map pin");
    std::fs::remove_file(pin.path.join(&map)).unwrap();
    let err = Filter::open_pinned(&pin.path).unwrap_err();
    assert!(matches!(&err, Error::Pin(PinError::Incomplete { missing, .. }) if *missing == map), "{err:?}");
    let text = fails(&["block", "--pin", pin.s(), "198.51.100.0/24"]);
    assert_mentions(&text, &[&map, "incomplete", &format!("rm -r {}", pin.s())]);
    let text = fails(&["attach", "--iface", "xg0", "--pin", pin.s(), "--netns", &ns.name]);
    assert_mentions(&text, &[&format!("rm -r {}", pin.s())]);
    assert!(xdp_on(&ns, "xg0"), "still attached through its link pin");

    // The whole directory removed: the program goes with its last pin.
    run(Command::new("rm").arg("-r").arg(&pin.path));
    assert!(detached(&ns, "xg0"), "removing the pins detached it");
    let err = Filter::open_pinned(&pin.path).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::NotFound { .. })), "{err:?}");
    let text = fails(&["list", "--pin", pin.s()]);
    assert_mentions(&text, &["no pinned xdpguard filter", "xdpguard attach --iface IF --pin"]);

    // A process holding it open while the directory goes: a typed error, and
    // the program stays until it lets go.
    attach_cli(&ns, pin.s());
    let held = Filter::open_pinned(&pin.path).unwrap();
    run(Command::new("rm").arg("-r").arg(&pin.path));
    assert!(xdp_on(&ns, "xg0"));
    let err = held.blocklist().insert(net("198.51.100.0/24")).unwrap_err();
    assert!(matches!(err, ListError::Pin(PinError::Removed { .. })), "{err:?}");
    drop(held);
    assert!(detached(&ns, "xg0"));

    // The fix named: attach again.
    attach_cli(&ns, pin.s());
    XDPGUARD.ok(&["block", "--pin", pin.s(), "203.0.113.0/24"]);
    assert!(xdp_on(&ns, "xg0"));

    // Unpinned through another handle: this one says it runs nowhere, its
    // own unpin has nothing left to do, and an edit names the filter's
    // directory (not its guard stage's) in the fix.
    let (h1, h2) = (Filter::open_pinned(&pin.path).unwrap(), Filter::open_pinned(&pin.path).unwrap());
    assert_eq!(h2.attachments().len(), 1);
    h1.unpin().unwrap();
    assert!(detached(&ns, "xg0"));
    assert_eq!((h2.attachments(), h2.lost_attachments()), (vec![], vec![]), "nothing runs, nothing was lost");
    let err = h2.rules().add("drop udp dport 1900".parse().unwrap()).unwrap_err();
    let text = err.to_string();
    assert_mentions(&text, &["filter", &format!("--pin {}`", pin.s())]);
    assert!(!text.contains("/guard"), "{text}");
    h2.unpin().expect("unpinned already: nothing to do");
    assert!(!pin.path.exists());
}
