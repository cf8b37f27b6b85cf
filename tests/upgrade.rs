//! Upgrades in place under live traffic: a pinned filter, load balancer and
//! decapsulator taken over by `upgrade_pinned` (and the tools' `upgrade`)
//! while packets flow, twice in a row: a same-layout upgrade (every map
//! reused, the program swapped) and a migrating one (pins stamped with the
//! test kit's rehearsal layout, so the connection tables, counters and
//! entry stores are recreated and copied before and after the swap).
//!
//! "Another version" is a program loaded anew from this build, and each
//! upgrade is proven by program ids: the pinned links run the new program,
//! the old id is gone. The kernel swaps whatever program it is given; what
//! an older build would add is the layout difference, which the rehearsal
//! migration exercises (an older layout's objects would need an older Rust
//! side to fill their maps, which this crate no longer has).
//!
//! Zero loss is counted, not sampled: every UDP datagram of the filter's
//! allowed flow arrives and none of its blocked flow does; the LB's
//! keep-alive TCP connection answers every question from the same backend
//! and its socket retransmits nothing. Needs root; fails (does not skip)
//! without it.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod udp_echo;
}

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cli::{XDPGUARD, XDPGUARD_LB};
use common::scratch::ScratchDir;
use common::udp_echo::UdpEcho;
use xdpguard::testing::frame::Frame;
use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::{ensure_bpffs, NetNs, Pair};
use xdpguard::testing::upgrade::{
    attached_program_id, link_program_ids, stamp_layout, FILTER_LAYOUT, REHEARSAL_LAYOUT,
};
use xdpguard::{
    Decap, Error, Filter, ForwardingMode, IpNetwork, LoadBalancer, PinError, Protocol, Vip, VipConfig, XdpAction,
};

const PORT: u16 = 7100;
const ALLOWED: &str = "192.0.2.1";
const BLOCKED: &str = "192.0.2.66";

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// One datagram from each source every 250 µs until stopped; returns how
/// many each sent.
fn send_until(ns: &NetNs, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> std::thread::JoinHandle<u64> {
    ns.spawn(move || {
        let to = SocketAddr::new("192.0.2.2".parse().unwrap(), PORT);
        let socks: Vec<UdpSocket> =
            [ALLOWED, BLOCKED].iter().map(|src| UdpSocket::bind((*src, 0)).expect("bind sender")).collect();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for s in &socks {
                s.send_to(b"tick", to).expect("send");
            }
            n += 1;
            sent.store(n, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(250));
        }
        n
    })
}

/// A filter pinned in `dir`, attached to the server's eth0 of `pair`.
/// A filter pinned in a new bpffs directory, attached to `eth0` of a new
/// pair of namespaces, both named after `tag`: the pair, the directory
/// (removed on drop), its path, the filter.
fn pinned_bed(tag: &str, v4_capacity: usize) -> (Pair, ScratchDir, PathBuf, Filter) {
    ensure_bpffs();
    let pair = Pair::new(tag);
    let pin = ScratchDir::bpffs(tag);
    let dir = pin.path().to_owned();
    let filter = {
        let dir = dir.clone();
        pair.server.run(move || {
            Filter::builder()
                .interface("eth0")
                .v4_capacity(v4_capacity)
                .v6_capacity(1024)
                .pin(dir)
                .attach()
                .expect("attach")
        })
    };
    (pair, pin, dir, filter)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn filter_upgrades_under_live_traffic_without_losing_or_leaking_a_packet() {
    let (pair, _pin, dir, filter) = pinned_bed("upf", 4096);
    pair.client.addr("eth0", &format!("{BLOCKED}/24"));
    filter.blocklist().insert(net("192.0.2.64/26")).unwrap();
    filter.blocklist().insert(net("198.51.100.0/24")).unwrap();
    filter.blocklist().insert(net("2001:db8:bad::/48")).unwrap();
    filter.allowlist().insert(net("192.0.2.70/32")).unwrap();
    let block_before: Vec<IpNetwork> = filter.blocklist().iter().unwrap().collect();
    let allow_before: Vec<IpNetwork> = filter.allowlist().iter().unwrap().collect();
    let first_id = link_program_ids(&dir)[0];
    drop(filter);

    let sink = UdpEcho::start(&pair.server, PORT);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sender = send_until(&pair.client, stop.clone(), sent.clone());
    wait_for("traffic", || sink.seen(ALLOWED.parse().unwrap()) >= 400);

    // 1. The same layout: every map reused, the program swapped.
    let (_, same) = pair.server.run({
        let dir = dir.clone();
        move || Filter::upgrade_pinned(&dir).expect("same-layout upgrade")
    });
    let mid = sent.load(Ordering::Relaxed);
    wait_for("traffic after the first upgrade", || sent.load(Ordering::Relaxed) >= mid + 400);

    // 2. A migration: counters and the IPv4 entry store recreated and copied.
    stamp_layout(&dir, REHEARSAL_LAYOUT);
    let (filter, migrated) = pair.server.run({
        let dir = dir.clone();
        move || Filter::upgrade_pinned(&dir).expect("migrating upgrade")
    });
    let mid = sent.load(Ordering::Relaxed);
    wait_for("traffic after the second upgrade", || sent.load(Ordering::Relaxed) >= mid + 400);
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    wait_for("the last datagrams", || sink.seen(ALLOWED.parse().unwrap()) >= sent);
    std::thread::sleep(Duration::from_millis(100));
    let (got, leaked) = (sink.seen(ALLOWED.parse().unwrap()), sink.seen(BLOCKED.parse().unwrap()));
    println!(
        "filter: {sent} datagrams per source over two upgrades; allowed source: {got} arrived; blocked source: \
         {leaked} arrived; programs {first_id} -> {} -> {}",
        same.new_program_id, migrated.new_program_id
    );
    assert_eq!(got, sent, "not one allowed datagram lost");
    assert_eq!(leaked, 0, "not one blocked datagram let through");

    // Each upgrade replaced the program the link runs.
    assert_eq!(same.old_program_id, first_id);
    assert_ne!(same.new_program_id, first_id);
    assert!(same.migrated_maps.is_empty(), "{same:?}");
    assert_eq!(same.from_layout, same.to_layout);
    assert_eq!(same.interfaces, ["eth0"]);
    assert_eq!(migrated.old_program_id, same.new_program_id);
    assert_eq!(migrated.from_layout, REHEARSAL_LAYOUT);
    assert_eq!(migrated.migrated_maps, ["xdpg_filter_cnt", "xdpg_v4_rules"]);
    assert_eq!(link_program_ids(&dir), [migrated.new_program_id]);
    let ifindex = pair.server.ifindex("eth0");
    assert_eq!(pair.server.run(move || attached_program_id(ifindex)), Some(migrated.new_program_id));
    assert!(
        libbpf_rs::query::ProgInfoIter::default().all(|p| p.id != first_id && p.id != same.new_program_id),
        "the replaced programs are freed"
    );

    // Lists intact, through the migrated entry store too; counters carried over.
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), block_before);
    assert_eq!(filter.allowlist().iter().unwrap().collect::<Vec<_>>(), allow_before);
    assert!(
        matches!(filter.verdict(BLOCKED.parse().unwrap()).unwrap(), xdpguard::Verdict::Block(n) if n == net("192.0.2.64/26"))
    );
    let stats = filter.stats().unwrap();
    println!("filter counters after both upgrades: {stats:?}");
    // A per-CPU slot the new program bumps while the copy adds to it may lose that one count.
    assert!(stats.passed.packets >= sent - 2, "passed {} of {sent}", stats.passed.packets);
    assert!(stats.blocked_v4.packets >= sent - 2, "blocked {} of {sent}", stats.blocked_v4.packets);
    filter.unpin().unwrap();
}

#[test]
fn an_unknown_layout_is_refused_before_anything_changes_and_the_tool_upgrades() {
    let (_pair, pin, dir, filter) = pinned_bed("upr", 1024);
    filter.blocklist().insert(net("198.51.100.0/24")).unwrap();
    drop(filter);
    let before = link_program_ids(&dir);
    let pins_before: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();

    stamp_layout(&dir, 77);
    let err = Filter::upgrade_pinned(&dir).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::NoMigration { found: 77, .. })), "{err:?}");
    assert!(err.to_string().contains("knows no migration from 77") && err.to_string().contains("nothing was changed"));
    let out = XDPGUARD.run(&["upgrade", "--pin", pin.arg()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("knows no migration from 77"));
    assert_eq!(link_program_ids(&dir), before, "the program still runs");
    let pins_after: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(pins_after, pins_before);

    // Stamped back, the tool takes it over.
    let version = {
        stamp_layout(&dir, 0);
        match Filter::open_pinned(&dir).unwrap_err() {
            Error::Pin(PinError::Incompatible { expected, .. }) => expected,
            e => panic!("{e:?}"),
        }
    };
    stamp_layout(&dir, version);
    let text = XDPGUARD.ok(&["upgrade", "--pin", pin.arg()]);
    assert!(text.contains(&format!("replaced program {}", before[0])), "{text}");
    assert!(text.contains("every map reused"), "{text}");
    let after = link_program_ids(&dir);
    assert_ne!(after, before);
    assert!(text.contains(&format!("program {} replaced", after[0])), "{text}");
    let filter = Filter::open_pinned(&dir).unwrap();
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), [net("198.51.100.0/24")]);
    filter.unpin().unwrap();
}

/// IPv6 (and one IPv4) lists whose verdicts cover every kind of v6 chain: a
/// dense /48 (more entries than its chain keeps), a sparse one (a /128 and
/// a /64 with an allowlisted host inside it), a /48's only entry (a /56), a
/// /32 behind them; loaded into `filter`.
fn v6_lists(filter: &Filter) {
    let mut nets: Vec<IpNetwork> = (1..=12).map(|i| net(&format!("2001:db8:5::{i:x}/128"))).collect();
    nets.extend(
        ["2001:db8:6::1/128", "2001:db8:6:1::/64", "2001:db8:9::/56", "2001:db9::/32", "198.51.100.0/24"].map(net),
    );
    filter.blocklist().extend(nets).unwrap();
    filter.allowlist().insert(net("2001:db8:6:1::a/128")).unwrap();
}

/// The verdicts of [`v6_lists`], checked by running the attached program.
fn check_v6_lists(f: &Filter) {
    let cases = [
        ("2001:db8:5::3", XdpAction::Drop),
        ("2001:db8:5::d", XdpAction::Pass),
        ("2001:db8:6::1", XdpAction::Drop),
        ("2001:db8:6:1::a", XdpAction::Pass),
        ("2001:db8:6:1::b", XdpAction::Drop),
        ("2001:db8:9:aa::1", XdpAction::Drop),
        ("2001:db8:9:100::1", XdpAction::Pass),
        ("2001:db9:7::1", XdpAction::Drop),
        ("2001:db8:7::1", XdpAction::Pass),
        ("198.51.100.1", XdpAction::Drop),
    ];
    for (src, want) in cases {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = if src.is_ipv4() { "203.0.113.1".parse().unwrap() } else { "2001:db8:f::1".parse().unwrap() };
        let frame = Frame::builder().ip(src, dst).udp(40000, 53).payload(b"x").build().to_vec();
        assert_eq!(f.test_run(&frame).unwrap().action, want, "{src}");
    }
}

/// The config's `tables` word of the filter pinned in `dir`.
fn tables_word(dir: &std::path::Path) -> u32 {
    let cfg = libbpf_rs::MapHandle::from_pinned_path(dir.join("xdpg_filter_cfg")).unwrap();
    let v = libbpf_rs::MapCore::lookup(&cfg, &0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY).unwrap().unwrap();
    u32::from_ne_bytes(v[24..28].try_into().unwrap())
}

/// The filter pinned in `dir`, whose `tables` word was `before`: its IPv4
/// tables the same, its IPv6 tables rebuilt and switched in (the live v6
/// view moved on).
fn assert_v6_rebuilt(dir: &std::path::Path, before: u32) {
    let after = tables_word(dir);
    assert_eq!(before & 0xFF, after & 0xFF, "the IPv4 tables stay");
    assert_ne!(before >> 8, after >> 8, "the IPv6 tables are rebuilt and switched in");
}

/// A filter pinned by layout 5 (stamped) is migrated: every map reused,
/// the IPv6 tables rebuilt (the live view moves on) once the new program
/// runs, and every verdict the same ([`check_v6_lists`]).
#[test]
fn a_layout_5_filter_is_migrated_with_its_ipv6_tables_rebuilt() {
    let (_pair, _pin, dir, filter) = pinned_bed("up5", 1024);
    v6_lists(&filter);
    check_v6_lists(&filter);
    let before = tables_word(&dir);
    drop(filter);

    // Layout 5 had no gate.
    std::fs::remove_file(dir.join("xdpg_gate")).unwrap();
    stamp_layout(&dir, 5);
    let (filter, report) = Filter::upgrade_pinned(&dir).expect("layout 5 is migrated");
    assert_eq!((report.from_layout, report.to_layout), (5, FILTER_LAYOUT));
    assert!(report.migrated_maps.is_empty(), "{report:?}");
    assert_eq!(report.created_maps, ["xdpg_gate"], "{report:?}");
    assert_eq!(report.interfaces.len(), 1, "{report:?}");
    assert_v6_rebuilt(&dir, before);
    check_v6_lists(&filter);
    drop(filter);
    let filter = Filter::open_pinned(&dir).expect("reopens as this layout");
    check_v6_lists(&filter);
    filter.unpin().unwrap();
}

/// A filter pinned by layout 7 (stamped, its IPv6 tables rewritten as
/// layout 7 wrote them: the /48s' chains under the murmur hash, the view's
/// `anchor_hash` 0) is read right by this build's program before the
/// upgrade (the window between the program swap and the rebuild), and
/// migrated by it: every map reused, both IPv6 tables rebuilt in the
/// multiply hash and switched in, every verdict the same throughout. The
/// two hashes put the test's chains in different buckets, so a program
/// reading a table in the other hash would pass what is blocked.
#[test]
fn a_layout_7_filter_is_migrated_with_its_ipv6_chains_rehashed() {
    use xdpguard::testing::upgrade::{rebuild_v6_as_layout_7, v6_anchor_hash};
    let (_pair, pin, dir, filter) = pinned_bed("up7", 1024);
    v6_lists(&filter);
    assert_eq!(v6_anchor_hash(&filter), 1, "this build writes the multiply hash");
    check_v6_lists(&filter);
    rebuild_v6_as_layout_7(&filter);
    assert_eq!(v6_anchor_hash(&filter), 0);
    check_v6_lists(&filter);
    let before = tables_word(&dir);
    drop(filter);

    stamp_layout(&dir, 7);
    let text = XDPGUARD.ok(&["upgrade", "--pin", pin.arg()]);
    assert!(text.contains(&format!("layout 7 -> {FILTER_LAYOUT}, every map reused")), "{text}");
    assert_v6_rebuilt(&dir, before);
    let filter = Filter::open_pinned(&dir).expect("reopens as this layout");
    assert_eq!(v6_anchor_hash(&filter), 1, "rebuilt in the multiply hash");
    check_v6_lists(&filter);
    filter.blocklist().insert(net("2001:db8:7::/48")).unwrap();
    let frame = Frame::builder()
        .ip("2001:db8:7::1".parse().unwrap(), "2001:db8:f::1".parse().unwrap())
        .udp(40000, 53)
        .payload(b"x")
        .build()
        .to_vec();
    assert_eq!(filter.test_run(&frame).unwrap().action, XdpAction::Drop, "an edit after the migration");
    filter.unpin().unwrap();
}

/// The rule the guard's upgrade tests add.
const RULE: &str = "drop udp dport 9 from 198.51.100.0/24";

/// A UDP datagram from inside [`RULE`]'s prefix to `dport`.
fn rule_frame(dport: u16) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = ("198.51.100.7".parse().unwrap(), "203.0.113.1".parse().unwrap());
    Frame::builder().ip(src, dst).udp(40000, dport).payload(b"x").build().to_vec()
}

/// [`RULE`] decides through `f`'s guard stage: its port dropped, another passed.
fn check_rule(f: &Filter) {
    assert_eq!(f.test_run(&rule_frame(9)).unwrap().action, XdpAction::Drop, "the rule");
    assert_eq!(f.test_run(&rule_frame(10)).unwrap().action, XdpAction::Pass, "no rule");
}

/// A filter pinned by layout 6 (stamped, its gate's pin removed: layout 6
/// had none) is migrated by the tool: the gate created and pinned, every
/// other map reused, the rules deciding throughout (the new gate is created
/// closed: every packet goes to the guard, as layout 6's filter sent it),
/// and the gate opened by the reopen that ends the upgrade.
#[test]
fn a_layout_6_filter_is_migrated_with_the_gate_created() {
    use xdpguard::testing::gate::{is_open, skips};
    let (_pair, pin, dir, filter) = pinned_bed("up6", 1024);
    filter.rules().add(RULE.parse().unwrap()).unwrap();
    check_rule(&filter);
    assert!(is_open(&filter));
    drop(filter);

    std::fs::remove_file(dir.join("xdpg_gate")).unwrap();
    stamp_layout(&dir, 6);
    let text = XDPGUARD.ok(&["upgrade", "--pin", pin.arg()]);
    assert!(
        text.contains(&format!("layout 6 -> {FILTER_LAYOUT}, created xdpg_gate, every other map reused")),
        "{text}"
    );
    assert!(dir.join("xdpg_gate").exists(), "the gate is pinned");
    let filter = Filter::open_pinned(&dir).expect("reopens as this layout");
    check_rule(&filter);
    assert!(is_open(&filter), "opened with the rules' bits");
    assert!(skips(&filter, 17, 10) && !skips(&filter, 17, 9));
    filter.unpin().unwrap();
}

/// Whether the running kernel has conntrack's XDP kfuncs (`bpf_xdp_ct_lookup`
/// in /proc/kallsyms).
fn kernel_has_conntrack() -> bool {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    kallsyms.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf_xdp_ct_lookup"))
}

/// The guard stage is upgraded with the filter: its program replaced in the
/// filter's stage slot, the rules kept; a handle opened before installs the
/// new program at its next edit, never the old one; a guard of a layout
/// this build cannot take over stops the upgrade before the filter's
/// program is touched.
#[test]
fn the_guard_stage_is_upgraded_with_the_filter() {
    use xdpguard::testing::upgrade::{guard_stage_program_id, kfunc_calls, GUARD_LAYOUT};
    // Read before the guard loads.
    let conntrack = kernel_has_conntrack();
    let (_pair, pin, dir, filter) = pinned_bed("upg", 1024);
    filter.rules().add(RULE.parse().unwrap()).unwrap();
    check_rule(&filter);
    let old_guard = guard_stage_program_id(&filter).expect("a rule puts the guard in the stage slot");
    // The filter's own program calls no kfunc; the guard calls conntrack's
    // when the kernel had them at its load (bpf_xdp_ct_lookup, release).
    assert_eq!(kfunc_calls(link_program_ids(&dir)[0]), 0);
    assert_eq!(kfunc_calls(old_guard) > 0, conntrack, "conntrack kfuncs in the kernel: {conntrack}");
    let stale = filter; // a handle opened before the upgrade

    let text = XDPGUARD.ok(&["upgrade", "--pin", pin.arg()]);
    let filter = Filter::open_pinned(&dir).unwrap();
    let new_guard = guard_stage_program_id(&filter).expect("the guard stays in the slot");
    assert_ne!(new_guard, old_guard);
    assert!(
        text.contains(&format!(
            "upgraded its guard stage: program {new_guard} replaced program {old_guard} \
             (layout {GUARD_LAYOUT} -> {GUARD_LAYOUT}, every map reused)"
        )),
        "{text}"
    );
    check_rule(&filter);

    // The old handle's next edit installs the pinned (new) program.
    stale.rules().add("drop udp dport 11 from 198.51.100.0/24".parse().unwrap()).unwrap();
    assert_eq!(guard_stage_program_id(&filter), Some(new_guard), "not the old program back");
    assert_eq!(filter.test_run(&rule_frame(11)).unwrap().action, XdpAction::Drop, "the stale handle's rule");
    drop(stale);
    assert!(libbpf_rs::query::ProgInfoIter::default().all(|p| p.id != old_guard), "the old guard program is freed");

    // A guard layout no migration knows: refused before the filter's swap.
    let links = link_program_ids(&dir);
    stamp_layout(dir.join("guard"), 77);
    let err = Filter::upgrade_pinned(&dir).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::NoMigration { found: 77, .. })), "{err:?}");
    assert!(err.to_string().contains("guard stage"), "{err}");
    assert_eq!(link_program_ids(&dir), links, "the filter's program was not replaced");
    assert_eq!(guard_stage_program_id(&filter), Some(new_guard));
    // Reopened, the error names the directory the upgrade takes.
    match Filter::open_pinned(&dir).map(drop).unwrap_err() {
        Error::Pin(e @ PinError::Incompatible { found: 77, .. }) => {
            let kind = "filter's guard stage";
            assert!(matches!(&e, PinError::Incompatible { path, kind: k, .. } if *path == dir && *k == kind), "{e:?}");
            assert!(e.to_string().contains("incompatible xdpguard filter's guard stage (layout 77, this build uses"));
            assert!(e.to_string().contains(&format!("`xdpguard upgrade --pin {}`", dir.display())), "{e}");
        }
        e => panic!("{e:?}"),
    }
    // Layout 3, whose program ignores a rule's fragment condition: this
    // build refuses to edit it (a `drop udp fragment` would drop all UDP
    // there) until the upgrade, which migrates it with every map reused.
    stamp_layout(dir.join("guard"), 3);
    match Filter::open_pinned(&dir).map(drop).unwrap_err() {
        Error::Pin(PinError::Incompatible { found: 3, .. }) => {}
        e => panic!("{e:?}"),
    }
    let (filter, report) = Filter::upgrade_pinned(&dir).unwrap();
    let guard = report.guard.expect("the guard's report");
    assert_eq!((guard.from_layout, guard.to_layout), (3, GUARD_LAYOUT));
    assert_eq!((guard.old_program_id, guard.interfaces.len()), (new_guard, 0));
    assert!(guard.migrated_maps.is_empty() && guard.created_maps.is_empty(), "{guard:?}");
    assert_eq!(guard_stage_program_id(&filter), Some(guard.new_program_id));
    check_rule(&filter);
    // The upgraded guard runs the fragment condition: a whole datagram to
    // a port no other rule names passes a rule for fragments.
    filter.rules().add("drop udp fragment from 198.51.100.0/24".parse().unwrap()).unwrap();
    assert_eq!(filter.test_run(&rule_frame(10)).unwrap().action, XdpAction::Pass, "not a fragment");
    check_rule(&filter);
    filter.unpin().unwrap();
}

/// A guard stage loaded before `nf_conntrack` (its program without
/// conntrack's calls, stood in for by the test kit) is reloaded in place by
/// `protect` with untracked ACKs dropped: the pinned program then calls
/// conntrack, runs in the stage slot, and drops a forged ACK.
#[test]
fn protect_reloads_a_guard_loaded_before_conntrack() {
    use xdpguard::testing::upgrade::{
        guard_stage_program_id, kfunc_calls, pin_guard_without_kfuncs, pinned_guard_program_id,
    };
    use xdpguard::SynPolicy;
    assert!(
        kernel_has_conntrack(),
        "this kernel has no conntrack kfuncs (nf_conntrack): load it (modprobe nf_conntrack)"
    );
    let (_pair, pin, dir, stale) = pinned_bed("upc", 1024);
    stale.rules().add(RULE.parse().unwrap()).unwrap();
    XDPGUARD.ok(&["upgrade", "--pin", pin.arg()]);
    // The stand-in is only pinned: the stage slot keeps the real guard, so
    // the reload's own slot swap (which replaces only the old program) does
    // not act here; the guard's next edit installs the pinned program
    // (the swap itself: the_guard_stage_is_upgraded_with_the_filter).
    let stand_in = pin_guard_without_kfuncs(&dir);
    assert_eq!(kfunc_calls(stand_in), 0);

    // A handle opened before the upgrade does not put its build's guard in
    // place of the one the upgrade installed.
    let policy = SynPolicy::cookies().with_drop_untracked_acks(true);
    let err = stale.syn_guard().protect(8443, policy).unwrap_err();
    assert!(err.to_string().contains("upgraded since this handle opened it"), "{err}");
    assert_eq!(pinned_guard_program_id(&dir), stand_in, "nothing reloaded");
    drop(stale);

    let filter = Filter::open_pinned(&dir).unwrap();
    filter.syn_guard().protect(8443, SynPolicy::cookies().with_drop_untracked_acks(true)).expect("protect");
    let reloaded = pinned_guard_program_id(&dir);
    assert_ne!(reloaded, stand_in, "the guard program was reloaded");
    assert!(kfunc_calls(reloaded) > 0, "it calls conntrack");
    assert_eq!(guard_stage_program_id(&filter), Some(reloaded), "and runs in the filter's stage slot");
    check_rule(&filter);
    let (src, dst): (IpAddr, IpAddr) = ("198.51.100.40".parse().unwrap(), "203.0.113.1".parse().unwrap());
    let forged = Frame::builder().ip(src, dst).tcp(42000, 8443).ack(7).seq(1).build().to_vec();
    assert_eq!(filter.test_run(&forged).unwrap().action, XdpAction::Drop, "a forged, untracked ACK");
    filter.unpin().unwrap();
}

/// A pinned LB in `mode`, three backends (with decapsulators for IPIP), and
/// a keep-alive TCP connection asking "who" every millisecond through a
/// same-layout upgrade and a migration of the connection tables. Its
/// backend is drained first, so only the connection table keeps it there.
fn lb_upgrade_scenario(tag: &str, mode: ForwardingMode) {
    ensure_bpffs();
    let nat = mode == ForwardingMode::Nat;
    let port = if nat { 8080 } else { 80 };
    let kind = if nat { BackendKind::Plain } else { BackendKind::VipOnLoopback };
    let net_ = LbNet::new(tag, 3, kind);
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, ns) in net_.backends.iter().enumerate() {
        let i = i + 1;
        let udp = if nat { vec![IpAddr::V4(backend_v4(i))] } else { vec![IpAddr::V4(VIP_V4)] };
        servers.push(Servers::start(ns, &format!("b{i}"), port, udp));
        if mode == ForwardingMode::Ipip {
            decaps.push(ns.run(move || {
                Decap::builder().interface("eth0").local(IpAddr::V4(backend_v4(i))).attach().expect("decap")
            }));
        }
    }
    let pin = ScratchDir::bpffs(tag);
    let dir = pin.path().to_owned();
    let lb = net_.lb.run({
        let dir = dir.clone();
        move || {
            LoadBalancer::builder()
                .interface("eth0")
                .interface("eth1")
                .connections(4096)
                .max_backends(16)
                .max_vips(4)
                .ipip_source(IPIP_SRC_V4.parse().unwrap())
                .pin(dir)
                .attach()
                .expect("attach the LB")
        }
    });
    let vip = Vip::new(SocketAddr::new(IpAddr::V4(VIP_V4), 80), Protocol::Tcp);
    lb.add_vip(vip, VipConfig::new(mode)).unwrap();
    let backend = |i: usize| -> xdpguard::BackendAddr {
        if nat {
            SocketAddr::new(IpAddr::V4(backend_v4(i)), port).into()
        } else {
            IpAddr::V4(backend_v4(i)).into()
        }
    };
    lb.batch(&vip).add(backend(1), 1).add(backend(2), 1).add(backend(3), 1).apply().unwrap();
    let first_id = link_program_ids(&dir)[0];

    let stop = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicU64::new(0));
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let client = net_.client.spawn({
        let (stop, asked) = (stop.clone(), asked.clone());
        move || {
            let mut c = Conn::open(to, Duration::from_secs(2)).expect("connect to the VIP");
            let first = c.ask().expect("first answer");
            first_tx.send(first.clone()).unwrap();
            let mut answers = vec![first.clone()];
            while !stop.load(Ordering::Relaxed) {
                answers.push(c.ask().expect("an answer on the live connection"));
                asked.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            (answers, c.retransmits().expect("TCP_INFO"))
        }
    });
    // Drained, its backend takes no new flow: from here on only the
    // connection table keeps this connection there, through the migration
    // of that table too.
    let first: String = first_rx.recv().unwrap();
    let serving: usize = first.trim_start_matches('b').parse().unwrap();
    lb.batch(&vip).set_weight(backend(serving), 0).apply().unwrap();
    let backends_before = lb.backends(&vip).unwrap();
    drop(lb);
    wait_for("the connection", || asked.load(Ordering::Relaxed) >= 100);
    let (_, same) = net_.lb.run({
        let dir = dir.clone();
        move || LoadBalancer::upgrade_pinned(&dir).expect("same-layout upgrade")
    });
    let mid = asked.load(Ordering::Relaxed);
    wait_for("answers after the first upgrade", || asked.load(Ordering::Relaxed) >= mid + 100);
    stamp_layout(&dir, REHEARSAL_LAYOUT);
    // Reopened meanwhile: the fix named is the LB's own command.
    let err = LoadBalancer::open_pinned(&dir).map(drop).unwrap_err();
    let fix = format!("`xdpguard-lb upgrade --pin {}`", dir.display());
    assert!(err.to_string().contains("incompatible xdpguard load balancer") && err.to_string().contains(&fix), "{err}");
    // The tool, this time, from the LB's namespace.
    let text = net_.lb.run({
        let arg = pin.arg().to_owned();
        move || XDPGUARD_LB.ok(&["upgrade", "--pin", &arg])
    });
    let mid = asked.load(Ordering::Relaxed);
    wait_for("answers after the second upgrade", || asked.load(Ordering::Relaxed) >= mid + 100);
    stop.store(true, Ordering::Relaxed);
    let (answers, retransmits) = client.join().unwrap();
    let last_id = link_program_ids(&dir)[0];
    println!(
        "{mode}: {} answers on one connection over two upgrades (programs {first_id} -> {} -> {last_id}), \
         {retransmits} retransmitted segments; {text}",
        answers.len(),
        same.new_program_id
    );
    assert!(answers.iter().all(|a| *a == answers[0]), "{mode}: the connection kept its backend: {answers:?}");
    assert_eq!(retransmits, 0, "{mode}: no segment lost on the live path");
    assert_eq!(same.interfaces.len(), 2, "{same:?}");
    assert_ne!(same.new_program_id, first_id);
    assert!(text.contains("migrated xdpg_lb_conns4, xdpg_lb_conns6, xdpg_lb_cnt"), "{text}");
    assert!(text.contains(&format!("program {last_id} replaced program {}", same.new_program_id)), "{text}");
    assert_eq!(link_program_ids(&dir), [last_id, last_id]);

    let lb = net_.lb.run({
        let dir = dir.clone();
        move || LoadBalancer::open_pinned(&dir).expect("reopen")
    });
    assert_eq!(lb.vips().unwrap().len(), 1);
    assert_eq!(lb.backends(&vip).unwrap(), backends_before, "{mode}: VIP and backends intact");
    let stats = lb.vip_stats(&vip).unwrap();
    assert!(stats.traffic.packets >= answers.len() as u64, "{mode}: VIP counters kept: {stats:?}");
    lb.unpin().unwrap();
}

#[test]
fn lb_ipip_upgrades_under_a_keepalive_connection() {
    lb_upgrade_scenario("upi", ForwardingMode::Ipip);
}

#[test]
fn lb_nat_upgrades_under_a_keepalive_connection() {
    lb_upgrade_scenario("upn", ForwardingMode::Nat);
}

#[test]
fn decap_upgrades_in_place() {
    ensure_bpffs();
    let pair = Pair::new("upd");
    let pin = ScratchDir::bpffs("upd");
    let dir = pin.path().to_owned();
    let decap = pair.server.run({
        let dir = dir.clone();
        move || Decap::builder().interface("eth0").local("192.0.2.2".parse().unwrap()).pin(dir).attach().expect("decap")
    });
    let before = link_program_ids(&dir);
    drop(decap);
    stamp_layout(&dir, REHEARSAL_LAYOUT);
    let (decap, report) = Decap::upgrade_pinned(&dir).expect("upgrade");
    assert_eq!(report.migrated_maps, ["xdpg_decap_addr", "xdpg_decap_cnt"]);
    assert_eq!(report.old_program_id, before[0]);
    assert_eq!(link_program_ids(&dir), [report.new_program_id]);
    assert_eq!(decap.locals(), ["192.0.2.2".parse::<IpAddr>().unwrap()], "the migrated address map");
    decap.unpin().unwrap();
}

/// A handle opened before an upgrade (by any process; here through another
/// handle) hands out the program that runs now: its fd chains the new LB
/// behind a filter (the old program would be put back, running where no
/// status or health check sees it), and its id names the new one.
#[test]
fn a_handle_opened_before_an_upgrade_hands_out_the_program_that_runs() {
    ensure_bpffs();
    let pair = Pair::new("uph");
    let (fpin, lpin) = (ScratchDir::bpffs("uphf"), ScratchDir::bpffs("uphl"));
    let (fdir, ldir) = (fpin.path().to_owned(), lpin.path().to_owned());
    let filter = pair.server.run(move || Filter::builder().interface("eth0").pin(fdir).attach().expect("filter"));
    let lb = pair.client.run({
        let ldir = ldir.clone();
        move || LoadBalancer::builder().interface("eth0").pin(ldir).attach().expect("lb")
    });
    let old = lb.program_id().unwrap();
    let (_, report) = LoadBalancer::upgrade_pinned(&ldir).expect("same-layout upgrade");
    assert_eq!(report.old_program_id, old);
    assert_eq!(lb.program_id().unwrap(), report.new_program_id, "the held handle names the running program");
    filter.set_next(lb.program_fd()).unwrap();
    assert_eq!(filter.next_program().unwrap(), Some(report.new_program_id), "chained to the running LB, not the old");
    assert_eq!(lb.chained_from().len(), 1, "the chain is seen from the running LB");
    filter.clear_next().unwrap();
    lb.unpin().unwrap();
    filter.unpin().unwrap();
}
