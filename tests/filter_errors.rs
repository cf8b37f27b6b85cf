//! Bad input: every mistake gets its typed error, a message that names the
//! cause and the fix, and leaves the filter (lists, data plane, pins,
//! interfaces) as it was. Needs root; fails (never skips) without it.

mod common {
    pub mod caps;
    pub mod scratch;
}

use std::net::IpAddr;

use common::caps::*;
use common::scratch::ScratchDir;
use libbpf_rs::{MapCore, MapHandle, MapType};
use xdpguard::testing::netns::*;
use xdpguard::{
    parse_list, parse_prefix, AttachError, AttachMode, Error, Filter, IpNetwork, ListError, LoadError, PinError,
    XdpAction,
};

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the filter does with a UDP frame from `src`.
fn action(f: &Filter, src: &str) -> XdpAction {
    f.test_run(&xdpguard::testing::frame::udp_from(ip(src))).expect("test_run").action
}

fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    String::from_utf8_lossy(&ns.ip(&["link", "show", "dev", dev]).stdout).contains("xdp")
}

fn assert_mentions(text: &str, words: &[&str]) {
    for w in words {
        assert!(text.contains(w), "error message should mention `{w}`: {text}");
    }
}

#[test]
fn missing_interface_is_typed_and_leaves_nothing_behind() {
    let pair = Pair::new("erri");
    let pin = ScratchDir::bpffs("err");
    let p = pin.path().to_owned();
    let err = pair.server.run(move || Filter::builder().interface("nope0").pin(p).attach()).unwrap_err();
    let Error::Attach(AttachError::InterfaceNotFound { interface }) = &err else { panic!("wrong error: {err:?}") };
    assert_eq!(interface, "nope0");
    assert_mentions(&err.to_string(), &["nope0", "not found", "ip link show"]);
    assert!(!pin.path().exists(), "a failed attach leaves no pin directory");

    let err = pair.server.run(|| Filter::builder().interface(4242u32).attach()).unwrap_err();
    assert!(matches!(err, Error::Attach(AttachError::InterfaceNotFound { .. })), "{err:?}");
    assert_mentions(&err.to_string(), &["4242"]);

    // One good and one missing interface: all or nothing.
    let p = pin.path().to_owned();
    let err =
        pair.server.run(move || Filter::builder().interface("eth0").interface("nope1").pin(p).attach()).unwrap_err();
    assert!(matches!(err, Error::Attach(AttachError::InterfaceNotFound { .. })), "{err:?}");
    assert!(!xdp_attached(&pair.server, "eth0"), "the good interface was rolled back");
    assert!(!pin.path().exists());

    // No interface at all.
    let err = Filter::builder().attach().unwrap_err();
    assert!(matches!(err, Error::Attach(AttachError::NoInterface)), "{err:?}");
    assert_mentions(&err.to_string(), &["interface(", "load()"]);

    // Detaching from an interface the filter is not on.
    let filter = pair.server.run(|| Filter::builder().interface("eth0").v4_capacity(64).attach().unwrap());
    let err = pair.server.run(move || {
        let e = filter.detach("nope0").unwrap_err();
        assert_eq!(filter.attachments().len(), 1, "still attached to eth0");
        e
    });
    assert!(matches!(err, Error::Attach(AttachError::NotAttached { .. })), "{err:?}");
    assert_mentions(&err.to_string(), &["not attached to `nope0`", "attached to: eth0"]);
}

#[test]
fn invalid_prefixes_are_typed_and_apply_nothing() {
    for bad in [
        "",
        "192.0.2.0/33",
        "2001:db8::/129",
        "192.0.2",
        "banana/24",
        "192.0.2.0/",
        "192.0.2.0/x",
        "1.2.3.4/24/1",
        "::g",
    ] {
        let err = parse_prefix(bad).unwrap_err();
        let ListError::InvalidPrefix { input, reason } = &err else { panic!("{bad:?}: {err:?}") };
        assert_eq!(input, bad.trim());
        assert!(!reason.is_empty());
        let text = err.to_string();
        assert_mentions(&text, &["invalid prefix", "expected e.g."]);
        assert!(text.contains(&format!("`{bad}`")), "names the input: {text}");
    }
    assert_eq!(parse_prefix("192.0.2.7/24").unwrap(), net("192.0.2.7/24"), "host bits are kept until normalised");

    let filter = Filter::builder().v4_capacity(64).v6_capacity(64).load().expect("load");
    filter.blocklist().extend([net("198.51.100.0/24"), net("2001:db8:1::/48")]).unwrap();
    let before: Vec<_> = filter.blocklist().iter().unwrap().collect();

    // A list file with good and bad lines: every bad line is reported with
    // its number, and nothing is returned to apply.
    let text = "# header\n203.0.113.0/24\n203.0.113.300\n; comment\n2001:db8::/48\n10.0.0.0/99 # bad\nnot-an-address\n";
    let err = parse_list(text, "blocklist.txt").unwrap_err();
    let ListError::BadLines { source_name, errors } = &err else { panic!("{err:?}") };
    assert_eq!(source_name, "blocklist.txt");
    assert_eq!(errors.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 6, 7]);
    assert!(errors[0].message.contains("203.0.113.300"), "{errors:?}");
    assert_mentions(&err.to_string(), &["blocklist.txt", "line 3", "line 6", "line 7", "nothing applied"]);
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), before, "lists unchanged");
    assert_eq!(action(&filter, "203.0.113.1"), XdpAction::Pass, "the good line was not applied");

    // The same file once fixed applies completely, normalised.
    let good = parse_list("203.0.113.9/24\n2001:db8:2::/48\n", "fixed").unwrap();
    assert!(good[0].entry.host_bits_cleared);
    filter.blocklist().extend(good.iter().map(|l| l.entry.network)).unwrap();
    assert_eq!(filter.blocklist().len().unwrap(), 4);
    assert_eq!(action(&filter, "203.0.113.1"), XdpAction::Drop);
}

/// A blocklist entry that covers a whole family would cut the host off:
/// refused with its own error unless asked for, in every form and through
/// every edit, and nothing of the edit is applied.
#[test]
fn blocking_a_whole_family_is_refused_unless_asked_for() {
    let filter = Filter::builder().v4_capacity(64).v6_capacity(64).load().expect("load");
    filter.blocklist().extend([net("198.51.100.0/24"), net("2001:db8:1::/48")]).unwrap();
    let before: Vec<_> = filter.blocklist().iter().unwrap().collect();
    let probes = ["192.0.2.1", "198.51.100.1", "2001:db8::1", "2001:db8:1::1", "::ffff:192.0.2.1"];
    let plane = |f: &Filter| probes.iter().map(|p| action(f, p)).collect::<Vec<_>>();
    let plane_before = plane(&filter);
    let check = |err: ListError, entry: &str, family: &str| {
        let ListError::WholeFamily { entry: e } = &err else { panic!("{err:?}") };
        assert_eq!(*e, net(entry));
        assert_mentions(
            &err.to_string(),
            &[entry, &format!("every {family} packet"), "SSH", "nothing was applied", "permit_whole_family", "--force"],
        );
    };
    let bl = filter.blocklist();
    check(bl.insert(net("0.0.0.0/0")).unwrap_err(), "0.0.0.0/0", "IPv4");
    check(bl.insert(net("::/0")).unwrap_err(), "::/0", "IPv6");
    // Host bits or the IPv4-mapped form do not get around it.
    check(bl.insert(net("203.0.113.9/0")).unwrap_err(), "0.0.0.0/0", "IPv4");
    check(bl.insert(net("::ffff:0:0/96")).unwrap_err(), "0.0.0.0/0", "IPv4");
    // One among many in a bulk edit or a replace: none of them applied.
    check(bl.extend([net("203.0.113.0/24"), net("::/0")]).unwrap_err(), "::/0", "IPv6");
    check(bl.replace([net("203.0.113.0/24"), net("0.0.0.0/0")]).unwrap_err(), "0.0.0.0/0", "IPv4");
    let from_file = parse_list("203.0.113.0/24\n::ffff:0.0.0.0/96 # oops\n", "drop.txt").unwrap();
    check(bl.extend(from_file.iter().map(|l| l.entry.network)).unwrap_err(), "0.0.0.0/0", "IPv4");
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), before, "lists unchanged");
    assert_eq!(plane(&filter), plane_before, "data plane unchanged");
    // Removing one, and allowlisting a whole family, are harmless.
    assert!(!bl.remove(net("0.0.0.0/0")).unwrap().changed);
    assert!(filter.allowlist().insert(net("::/0")).unwrap().changed);
    assert_eq!(action(&filter, "2001:db8:1::1"), XdpAction::Pass, "allowlisted");
    filter.allowlist().clear().unwrap();

    // Asked for: a default-deny filter with an allowlisted hole.
    filter.allowlist().insert(net("192.0.2.1/32")).unwrap();
    assert!(bl.permit_whole_family().insert(net("0.0.0.0/0")).unwrap().changed);
    assert_eq!(action(&filter, "203.0.113.7"), XdpAction::Drop);
    assert_eq!(action(&filter, "192.0.2.1"), XdpAction::Pass);
    assert_eq!(action(&filter, "2001:db8::1"), XdpAction::Pass, "IPv6 untouched");
    // A replace that keeps it must ask again; one that drops it needs not.
    check(bl.replace([net("0.0.0.0/0")]).unwrap_err(), "0.0.0.0/0", "IPv4");
    assert!(filter.blocklist().contains(net("0.0.0.0/0")).unwrap());
    bl.replace(before.iter().copied()).unwrap();
    assert_eq!(filter.blocklist().iter().unwrap().collect::<Vec<_>>(), before);
    assert_eq!(action(&filter, "203.0.113.7"), XdpAction::Pass);
}

#[test]
fn a_filter_chained_to_itself_is_refused() {
    let f = Filter::builder().load().unwrap();
    let err = f.set_next(f.program_fd()).unwrap_err();
    let Error::Load(LoadError::NextIsSelf { id, stage: "program" }) = &err else { panic!("{err:?}") };
    assert_eq!(*id, f.program_id().unwrap());
    assert_mentions(&err.to_string(), &["this filter's own program", "clear_next"]);
    assert!(!err.to_string().contains("  "), "one line, single spaces: {err}");
    assert_eq!(f.next_program().unwrap(), None, "nothing installed");
    f.blocklist().insert(net("203.0.113.0/24")).unwrap();
    assert_eq!(action(&f, "203.0.113.1"), XdpAction::Drop);
    assert_eq!(action(&f, "198.51.100.1"), XdpAction::Pass);
    let s = f.stats().unwrap();
    assert_eq!(s.passed.packets, 1, "counted once: {s:?}");
}

#[test]
fn invalid_capacity_is_typed() {
    for (b, what) in [
        (Filter::builder().v4_capacity(0), "v4_capacity"),
        (Filter::builder().v6_capacity(xdpguard::MAX_CAPACITY + 1), "v6_capacity"),
    ] {
        let err = b.load().unwrap_err();
        let Error::Load(LoadError::InvalidCapacity { what: w, .. }) = &err else { panic!("{err:?}") };
        assert_eq!(*w, what);
        assert_mentions(&err.to_string(), &[what, "between 1 and"]);
    }
}

#[test]
fn a_full_map_rejects_the_edit_and_changes_nothing() {
    let filter = Filter::builder().v4_capacity(4).v6_capacity(2).load().expect("load");
    assert_eq!(filter.capacity(), (4, 2));
    let v4 = ["203.0.113.1/32", "203.0.113.2/32", "198.51.100.0/24", "192.0.2.128/25"].map(net);
    for n in v4 {
        assert!(filter.blocklist().insert(n).unwrap().changed);
    }
    let snapshot = |f: &Filter| {
        (f.blocklist().iter().unwrap().collect::<Vec<_>>(), f.allowlist().iter().unwrap().collect::<Vec<_>>())
    };
    let probes =
        ["203.0.113.1", "203.0.113.2", "203.0.113.3", "198.51.100.77", "192.0.2.200", "192.0.2.5", "203.0.113.50"];
    let plane = |f: &Filter| probes.iter().map(|p| action(f, p)).collect::<Vec<_>>();
    let before = snapshot(&filter);
    let plane_before = plane(&filter);
    assert_eq!(
        plane_before,
        [
            XdpAction::Drop,
            XdpAction::Drop,
            XdpAction::Pass,
            XdpAction::Drop,
            XdpAction::Drop,
            XdpAction::Pass,
            XdpAction::Pass
        ]
    );

    let check_full = |err: ListError, capacity: usize, setter: &str| {
        let ListError::Full { capacity: c, setter: s, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*c, *s), (capacity, setter));
        assert_mentions(
            &err.to_string(),
            &["full", &format!("{capacity} entries"), setter, "nothing of this edit was applied"],
        );
    };

    // One more insert, into either list (capacity counts both lists).
    check_full(filter.blocklist().insert(net("203.0.113.50/32")).unwrap_err(), 4, "v4_capacity");
    check_full(filter.allowlist().insert(net("203.0.113.60/32")).unwrap_err(), 4, "v4_capacity");
    // A bulk extend beyond it: nothing of it is applied.
    check_full(filter.blocklist().extend([net("203.0.113.50/32"), net("192.0.2.5/32")]).unwrap_err(), 4, "v4_capacity");
    // A replace with more entries than fit.
    let too_many: Vec<IpNetwork> = (10..16).map(|i| net(&format!("203.0.113.{i}/32"))).collect();
    check_full(filter.blocklist().replace(too_many).unwrap_err(), 4, "v4_capacity");
    assert_eq!(snapshot(&filter), before, "lists unchanged after every rejected edit");
    assert_eq!(plane(&filter), plane_before, "data plane unchanged after every rejected edit");

    // At capacity, re-inserting an existing entry (also with host bits set)
    // is no change, not an error; so is an extend made only of them.
    assert!(!filter.blocklist().insert(net("203.0.113.1/32")).unwrap().changed);
    assert!(!filter.blocklist().insert(net("198.51.100.9/24")).unwrap().changed);
    let bulk = filter.blocklist().extend([net("203.0.113.2/32"), net("192.0.2.128/25")]).unwrap();
    assert_eq!((bulk.changed, bulk.unchanged), (0, 2));
    // Freeing a slot makes room again.
    filter.blocklist().remove(net("203.0.113.2/32")).unwrap();
    filter.blocklist().insert(net("203.0.113.50/32")).unwrap();
    assert_eq!(action(&filter, "203.0.113.2"), XdpAction::Pass);
    assert_eq!(action(&filter, "203.0.113.50"), XdpAction::Drop);

    // IPv6, capacity 2: the same, and IPv4 being full does not matter to it.
    filter.blocklist().extend([net("2001:db8:1::/48"), net("2001:db8:2::1/128")]).unwrap();
    let before = snapshot(&filter);
    check_full(filter.blocklist().insert(net("2001:db8:3::/48")).unwrap_err(), 2, "v6_capacity");
    check_full(filter.allowlist().extend([net("2001:db8:1::5/128")]).unwrap_err(), 2, "v6_capacity");
    assert_eq!(snapshot(&filter), before);
    assert_eq!(action(&filter, "2001:db8:1::9"), XdpAction::Drop);
    assert_eq!(action(&filter, "2001:db8:1::5"), XdpAction::Drop, "the rejected allowlist entry is not live");
    assert_eq!(action(&filter, "2001:db8:3::1"), XdpAction::Pass, "the rejected blocklist entry is not live");

    // A fresh filter and a bulk load bigger than the capacity: all or nothing.
    let fresh = Filter::builder().v4_capacity(4).v6_capacity(2).load().expect("load");
    let six: Vec<IpNetwork> = (1..=6).map(|i| net(&format!("198.51.100.{i}/32"))).collect();
    check_full(fresh.blocklist().extend(six).unwrap_err(), 4, "v4_capacity");
    assert_eq!(fresh.blocklist().len().unwrap(), 0);
    assert_eq!(action(&fresh, "198.51.100.1"), XdpAction::Pass);
}

#[test]
fn attaching_twice_is_typed_and_the_first_filter_keeps_working() {
    let pair = Pair::new("err2");
    let first = pair
        .server
        .run(|| Filter::builder().interface("eth0").mode(AttachMode::Native).v4_capacity(64).attach().unwrap());
    let first_id: u64 = {
        let out = pair.server.ip(&["-j", "link", "show", "dev", "eth0"]).stdout;
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        v[0]["xdp"]["prog"]["id"].as_u64().expect("prog id")
    };

    let pin = ScratchDir::bpffs("err");
    for mode in [AttachMode::Native, AttachMode::Auto, AttachMode::Generic] {
        let p = pin.path().to_owned();
        let err = pair
            .server
            .run(move || Filter::builder().interface("eth0").mode(mode).v4_capacity(64).pin(p).attach())
            .unwrap_err();
        let Error::Attach(AttachError::AlreadyAttached { interface, program_id, .. }) = &err else {
            panic!("{mode}: wrong error {err:?}")
        };
        assert_eq!(interface, "eth0");
        assert_eq!(*program_id, Some(first_id as u32), "{mode}: names the program already there");
        // Held by this process, pinned nowhere: the process is the way out.
        assert_mentions(
            &err.to_string(),
            &["eth0", "already has an XDP program", "an xdpguard filter whose pins were not found", "a process"],
        );
        assert!(!pin.path().exists(), "{mode}: the failed attach left no pins");
    }
    // The same filter onto the same interface again: in its mode (or
    // auto), nothing to do; in another, a clear error, not "detach the
    // program there" (which is this one).
    let first = {
        let f = std::sync::Arc::new(first);
        let before = f.attachments();
        for mode in [AttachMode::Native, AttachMode::Auto] {
            let g = f.clone();
            let got = pair.server.run(move || g.attach("eth0", mode)).unwrap();
            assert_eq!((vec![got], f.attachments()), (before.clone(), before.clone()), "{mode}: attached once");
        }
        let g = f.clone();
        let err = pair.server.run(move || g.attach("eth0", AttachMode::Generic)).unwrap_err();
        let Error::Attach(AttachError::AttachedInAnotherMode {
            mode: AttachMode::Native,
            asked: AttachMode::Generic,
            ..
        }) = &err
        else {
            panic!("{err:?}")
        };
        assert_mentions(&err.to_string(), &["already attached to `eth0` in native mode", "detach it"]);
        assert_eq!(f.attachments(), before);
        std::sync::Arc::try_unwrap(f).expect("one handle")
    };

    // The first filter still runs the interface: traffic flows through it,
    // and a block still works.
    let s0 = first.stats().unwrap();
    pair.client.exec(&["ping", "-c", "1", "-W", "2", "192.0.2.2"]);
    assert!(first.stats().unwrap().since(&s0).passed.packets >= 1);
    first.blocklist().insert(net("192.0.2.1/32")).unwrap();
    let s1 = first.stats().unwrap();
    let out = pair.client.try_exec(&["ping", "-c", "1", "-W", "1", "192.0.2.2"]);
    assert!(!out.status.success(), "blocked by the first filter");
    assert_eq!(first.stats().unwrap().since(&s1).blocked_v4.packets, 1);
}

#[test]
fn a_pin_directory_off_bpffs_is_typed() {
    let dir = ScratchDir::new("/tmp", "err");
    let target = dir.path().join("pins");
    let t = target.clone();
    let err = Filter::builder().v4_capacity(64).pin(t).load().unwrap_err();
    let Error::Pin(PinError::BpffsNotMounted { path }) = &err else { panic!("{err:?}") };
    assert_eq!(path, &target);
    assert_mentions(&err.to_string(), &[&target.display().to_string(), "bpffs", "mount -t bpf bpf /sys/fs/bpf"]);
    assert!(!dir.path().exists(), "nothing was created under /tmp");

    std::fs::create_dir_all(dir.path()).unwrap();
    let err = Filter::open_pinned(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::BpffsNotMounted { .. })), "{err:?}");
}

#[test]
fn a_pin_directory_in_use_is_typed_and_left_alone() {
    let pin = ScratchDir::bpffs("err");
    let first = Filter::builder().v4_capacity(64).pin(pin.path()).load().expect("first");
    first.blocklist().insert(net("203.0.113.0/24")).unwrap();
    let names = pin.names();
    assert!(names.iter().any(|n| n == "xdpg_filter"), "{names:?}");

    let err = Filter::builder().v4_capacity(64).pin(pin.path()).load().unwrap_err();
    let Error::Pin(PinError::InUse { path, kind, .. }) = &err else { panic!("{err:?}") };
    assert_eq!((path.as_path(), *kind), (pin.path(), "filter"));
    assert_mentions(&err.to_string(), &[&pin.path().display().to_string(), "already holds", "open_pinned"]);

    assert_eq!(pin.names(), names, "the pins are untouched");
    assert_eq!(action(&first, "203.0.113.7"), XdpAction::Drop);
    let reopened = Filter::open_pinned(pin.path()).expect("still reopens");
    assert_eq!(reopened.blocklist().iter().unwrap().collect::<Vec<_>>(), [net("203.0.113.0/24")]);
}

#[test]
fn a_bpffs_directory_holding_something_else_is_not_ours() {
    // A foreign pinned map.
    let pin = ScratchDir::bpffs("err");
    std::fs::create_dir_all(pin.path()).unwrap();
    let foreign = pin.path().join("other_map");
    let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
        sz: size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let mut map = MapHandle::create(MapType::Array, Some("other_map"), 4, 4, 1, &opts).expect("create a map");
    map.pin(&foreign).expect("pin the foreign map");
    drop(map); // the pin keeps it
    let err = Filter::builder().v4_capacity(64).pin(pin.path()).load().unwrap_err();
    let Error::Pin(PinError::NotOurs { found, kind, .. }) = &err else { panic!("{err:?}") };
    assert_eq!((found.as_str(), *kind), ("other_map", "filter"));
    assert_mentions(&err.to_string(), &["other_map", "not an xdpguard filter", "choose another directory"]);
    assert_eq!(pin.names(), ["other_map"], "the foreign pin is untouched");
    let err = Filter::open_pinned(pin.path()).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::NotOurs { .. })), "{err:?}");
    let still = MapHandle::from_pinned_path(&foreign).expect("the foreign map is still pinned");
    assert_eq!((still.name().to_str(), still.map_type()), (Some("other_map"), MapType::Array));

    // A plain subdirectory is someone else's too.
    let pin2 = ScratchDir::bpffs("err");
    std::fs::create_dir_all(pin2.path().join("somebody")).unwrap();
    let err = Filter::builder().v4_capacity(64).pin(pin2.path()).load().unwrap_err();
    assert!(matches!(&err, Error::Pin(PinError::NotOurs { found, .. }) if found == "somebody"), "{err:?}");
    assert!(pin2.path().join("somebody").is_dir());
}

#[test]
fn reopening_a_missing_pin_directory_is_not_found() {
    let pin = ScratchDir::bpffs("err");
    let err = Filter::open_pinned(pin.path()).unwrap_err();
    let Error::Pin(PinError::NotFound { path, kind, .. }) = &err else { panic!("{err:?}") };
    assert_eq!((path.as_path(), *kind), (pin.path(), "filter"));
    assert_mentions(
        &err.to_string(),
        &[&pin.path().display().to_string(), "no pinned xdpguard filter", "to make one there", "--pin"],
    );
    assert!(!pin.path().exists(), "reopening creates nothing");

    std::fs::create_dir_all(pin.path()).unwrap();
    let err = Filter::open_pinned(pin.path()).unwrap_err();
    assert!(matches!(err, Error::Pin(PinError::NotFound { .. })), "empty directory: {err:?}");
}

#[test]
fn offload_on_veth_is_typed_and_leaves_nothing() {
    let pair = Pair::new("erro");
    let pin = ScratchDir::bpffs("err");
    let p = pin.path().to_owned();
    let err = pair
        .server
        .run(move || Filter::builder().interface("eth0").mode(AttachMode::Offload).v4_capacity(64).pin(p).attach())
        .unwrap_err();
    match &err {
        Error::Load(LoadError::KernelFeature { .. }) => {}
        Error::Attach(AttachError::ModeUnsupported { interface, mode, .. }) => {
            assert_eq!((interface.as_str(), *mode), ("eth0", AttachMode::Offload));
        }
        other => panic!("offload on veth should be KernelFeature or ModeUnsupported, got {other:?}"),
    }
    println!("offload error: {err}");
    assert_mentions(&err.to_string(), &["offload", "native or auto mode"]);
    assert!(!xdp_attached(&pair.server, "eth0"), "no program left attached");
    assert!(!pin.path().exists(), "no pins left");
}

// --- missing privileges (a child process that drops its capabilities) ------

const CHILD_ENV: &str = "XDPG_TEST_PRIV_CHILD";

fn assert_missing_privileges(err: &Error, what: &str) -> String {
    let missing = match err {
        Error::Load(LoadError::MissingPrivileges { missing }) => missing,
        other => panic!("{what}: expected MissingPrivileges, got {other:?}"),
    };
    assert!(missing.contains("CAP_BPF") && missing.contains("CAP_NET_ADMIN"), "{what}: {missing}");
    let text = err.to_string();
    assert_mentions(&text, &["missing privileges", "CAP_BPF", "CAP_NET_ADMIN", "run as root"]);
    assert!(text.contains("setcap"), "{what}: names the fix: {text}");
    text
}

/// The child half: enter the server namespace, drop the capabilities, then
/// try to load, attach and reopen.
fn privileges_child() {
    let ns = std::env::var("XDPG_TEST_NS").expect("namespace");
    let pin = std::env::var("XDPG_TEST_PIN").expect("pin dir");
    let f = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    drop_caps(&[CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON]);
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_owned();
    println!("CHILD caps after drop: {eff}");

    let err = Filter::builder().v4_capacity(64).load().unwrap_err();
    println!("CHILD load: {}", assert_missing_privileges(&err, "load"));
    let err = Filter::builder().interface("eth0").v4_capacity(64).attach().unwrap_err();
    println!("CHILD attach: {}", assert_missing_privileges(&err, "attach"));
    let err = Filter::open_pinned(&pin).unwrap_err();
    println!("CHILD open_pinned: {}", assert_missing_privileges(&err, "open_pinned"));
    println!("CHILD-DONE");
}

#[test]
fn missing_privileges_are_named_with_the_fix() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return privileges_child();
    }
    // The parent: a namespace with a pinned filter for the child to fail on.
    let pair = Pair::new("errp");
    let pin = ScratchDir::bpffs("err");
    let p = pin.path().to_owned();
    let filter = pair.server.run(move || Filter::builder().interface("eth0").v4_capacity(64).pin(p).attach().unwrap());
    filter.blocklist().insert(net("203.0.113.0/24")).unwrap();
    let names = pin.names();

    let stdout = rerun_as_child(
        "missing_privileges_are_named_with_the_fix",
        &[
            (CHILD_ENV, "1".as_ref()),
            ("XDPG_TEST_NS", pair.server.name.as_ref()),
            ("XDPG_TEST_PIN", pin.path().as_ref()),
        ],
    );
    // CAP_BPF (39) and CAP_NET_ADMIN (12) really were gone in the child.
    let eff_line = stdout.lines().find(|l| l.contains("CHILD caps after drop")).expect("caps line");
    let eff =
        u64::from_str_radix(eff_line.rsplit('\t').next().unwrap().trim().rsplit(' ').next().unwrap(), 16).unwrap();
    for cap in [CAP_BPF, CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_PERFMON] {
        assert_eq!(eff & (1 << cap), 0, "cap {cap} still effective in the child: {eff_line}");
    }

    // The child's failures changed nothing.
    assert_eq!(pin.names(), names);
    assert!(xdp_attached(&pair.server, "eth0"));
    assert_eq!(filter.blocklist().len().unwrap(), 1);
}

/// The IPv4 host table fills before the entry count: a /25-/31 takes one
/// host slot per address it covers (a /25 alone in its /24: 128), so a
/// filter for 1,024 entries holds about fifteen lone /25s. The error names
/// the host table, the /25-/31 cost and the option, and nothing of the edit
/// is applied (the earlier lists, their verdicts and the slot count
/// intact). The /25s are in 198.18.0.0/15 (RFC 2544's benchmarking range:
/// the documentation ranges hold three /24s, fewer than it takes); no
/// packet leaves the host (BPF_PROG_TEST_RUN).
#[test]
fn lone_slash25s_fill_the_v4_host_table() {
    let filter = Filter::builder().v4_capacity(1024).v6_capacity(64).load().expect("load");
    filter.blocklist().extend([net("203.0.113.0/24"), net("192.0.2.7/32")]).unwrap();
    filter.allowlist().insert(net("198.51.100.0/24")).unwrap();
    let (used, slots) = filter.v4_host_slots().unwrap();
    assert_eq!(used, 1, "the /32 takes one host slot, the /24s none");
    assert!(slots >= 1024 + 256, "about 1.25 slots per entry: {slots}");
    let snapshot = |f: &Filter| {
        (f.blocklist().iter().unwrap().collect::<Vec<_>>(), f.allowlist().iter().unwrap().collect::<Vec<_>>())
    };
    let probes = ["203.0.113.9", "192.0.2.7", "192.0.2.8", "198.51.100.1", "198.18.0.5", "198.18.30.5"];
    let plane = |f: &Filter| probes.iter().map(|p| action(f, p)).collect::<Vec<_>>();
    let (before, plane_before) = (snapshot(&filter), plane(&filter));
    let expect = [XdpAction::Drop, XdpAction::Drop, XdpAction::Pass, XdpAction::Pass, XdpAction::Pass, XdpAction::Pass];
    assert_eq!(plane_before, expect);

    let check_full = |err: ListError| {
        let ListError::Full { what, setter, .. } = &err else { panic!("{err:?}") };
        assert_eq!((*what, *setter), (xdpguard::V4_HOST_TABLE, "v4_capacity"));
        assert_mentions(
            &err.to_string(),
            &[
                "IPv4 host table is full",
                "host slots",
                "a /25-/31 prefix one per address it covers",
                "--v4-capacity",
                "nothing of this edit was applied",
            ],
        );
    };
    // Forty lone /25s at once: 5,120 slots, far past it; none applied.
    let lone: Vec<IpNetwork> = (0..40).map(|i| net(&format!("198.18.{i}.0/25"))).collect();
    check_full(filter.blocklist().extend(lone.iter().copied()).unwrap_err());
    assert_eq!(snapshot(&filter), before, "lists unchanged");
    assert_eq!(plane(&filter), plane_before, "data plane unchanged");
    assert_eq!(filter.v4_host_slots().unwrap(), (1, slots));

    // One at a time: each takes 128 slots, until one does not fit; that
    // one is not applied, the earlier ones stay.
    let mut added = 0;
    let err = loop {
        match filter.blocklist().insert(lone[added]) {
            Ok(c) => {
                assert!(c.changed);
                added += 1;
                assert_eq!(filter.v4_host_slots().unwrap(), (1 + 128 * added, slots));
            }
            Err(e) => break e,
        }
    };
    check_full(err);
    assert!((8..=slots / 128).contains(&added), "{added} lone /25s in {slots} slots");
    assert_eq!(filter.blocklist().len().unwrap(), 2 + added, "far from the 1,024 entries");
    assert_eq!(action(&filter, "198.18.0.5"), XdpAction::Drop);
    assert_eq!(action(&filter, &format!("198.18.{added}.5")), XdpAction::Pass, "the refused /25 is not live");
    assert_eq!(filter.v4_host_slots().unwrap().0, 1 + 128 * added);
    // The /25's other half makes its /24 whole again: no slot for either.
    filter.blocklist().insert(net("198.18.0.128/25")).unwrap();
    assert_eq!(filter.v4_host_slots().unwrap().0, 1 + 128 * (added - 1));
}

const NOFILE_CHILD_ENV: &str = "XDPG_TEST_NOFILE_CHILD";

/// The child half: load a filter under ever larger open-file limits.
fn nofile_child() {
    let (mut failed, mut loaded) = (0, 0);
    for limit in 16..=64 {
        set_nofile(limit);
        let result = Filter::builder().v4_capacity(64).v6_capacity(64).load();
        set_nofile(4096);
        match result {
            Ok(f) => {
                loaded += 1;
                drop(f);
            }
            Err(e) => {
                failed += 1;
                let text = e.to_string();
                println!("CHILD limit {limit}: {text}");
                assert!(!matches!(e, Error::Load(LoadError::Rejected { .. })), "limit {limit}: {e:?}");
                assert!(!text.contains("please report"), "limit {limit}: blamed on xdpguard: {text}");
                assert!(text.contains("(os error "), "limit {limit}: the OS error: {text}");
                match e {
                    Error::Load(LoadError::Resource { .. }) => {
                        assert_mentions(&text, &["file descriptors", "RLIMIT_NOFILE", "ulimit -n"])
                    }
                    // Elsewhere (opening the object, a map): the errno itself.
                    _ => assert!(text.contains("Too many open files (os error 24)"), "limit {limit}: {text}"),
                }
            }
        }
    }
    println!("CHILD {failed} failed, {loaded} loaded");
    assert!(failed > 0, "16 descriptors should not be enough to load a filter");
    println!("CHILD-DONE");
}

/// Out of file descriptors is the host's limit, not a verifier refusal:
/// every failure under a low RLIMIT_NOFILE is typed as such and names the
/// OS error (before, most came back as `Rejected`, "a bug in xdpguard",
/// and a map's fd duplication lost its errno). A child process, so that
/// the limit does not reach the other tests' threads.
#[test]
fn out_of_file_descriptors_is_named_not_rejected() {
    if std::env::var_os(NOFILE_CHILD_ENV).is_some() {
        return nofile_child();
    }
    rerun_as_child("out_of_file_descriptors_is_named_not_rejected", &[(NOFILE_CHILD_ENV, "1".as_ref())]);
}

const CREATE_CHILD_ENV: &str = "XDPG_TEST_CREATE_CHILD";

/// A pinned filter's creation killed between its own pins and its guard
/// stage's (`filter.pinned`), or before it is marked finished
/// (`filter.guard_pinned`), is an interrupted creation, not a filter that
/// opens without its guard (as when the guard was pinned after the
/// filter's creation had finished): reopening says so, and both a new
/// creation over it and `remove_interrupted` clear it whole, the guard's
/// directory too. A child process, killed there as `kill -9` would.
#[test]
fn a_creation_killed_before_its_guard_is_pinned_is_interrupted_and_cleared_whole() {
    use std::os::unix::process::ExitStatusExt;
    use xdpguard::testing::crash::CRASH_AT;
    if let Some(dir) = std::env::var_os(CREATE_CHILD_ENV) {
        let f = Filter::builder().v4_capacity(64).v6_capacity(64).guard(true).pin(dir).load();
        panic!("the creation should have aborted at {:?}: {f:?}", std::env::var(CRASH_AT));
    }
    for (point, guard_left, clear) in [
        ("filter.pinned", false, "remove_interrupted"),
        ("filter.pinned", false, "a new creation"),
        ("filter.guard_pinned", true, "remove_interrupted"),
        ("filter.guard_pinned", true, "a new creation"),
    ] {
        let pin = ScratchDir::bpffs("crcrash");
        // check-deps: built-here (this test binary, re-run as a child)
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_creation_killed_before_its_guard_is_pinned_is_interrupted_and_cleared_whole"])
            .args(["--nocapture", "--test-threads=1"])
            .env(CREATE_CHILD_ENV, pin.path())
            .env(CRASH_AT, point)
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(nix::libc::SIGABRT), "{point}: the child died there: {out:?}");
        let names = pin.names();
        assert!(names.iter().any(|n| n == "xdpg_creating"), "{point}: still marked as being created: {names:?}");
        assert_eq!(names.iter().any(|n| n == "guard"), guard_left, "{point}: {names:?}");

        let err = Filter::open_pinned(pin.path()).unwrap_err();
        assert!(matches!(err, Error::Pin(PinError::Interrupted { .. })), "{point}: {err:?}");
        assert_mentions(&err.to_string(), &[pin.arg()]);

        let f = match clear {
            "remove_interrupted" => {
                Filter::remove_interrupted(pin.path()).unwrap_or_else(|e| panic!("{point}: {e}"));
                assert!(!pin.path().exists(), "{point}: removed whole: {:?}", pin.names());
                Filter::builder().v4_capacity(64).v6_capacity(64).guard(true).pin(pin.path()).load()
            }
            _ => Filter::builder().v4_capacity(64).v6_capacity(64).guard(true).pin(pin.path()).load(),
        };
        let f = f.unwrap_or_else(|e| panic!("{point}, {clear}: a new filter there: {e}"));
        drop(f);
        let f = Filter::open_pinned(pin.path()).unwrap_or_else(|e| panic!("{point}, {clear}: reopen: {e}"));
        let rule = f.rules().add("drop udp dport 1900".parse().unwrap());
        assert!(rule.is_ok(), "{point}, {clear}: the new filter has its guard stage: {rule:?}");
        f.unpin().unwrap();
        assert!(!pin.path().exists(), "{point}, {clear}");
    }
}
