//! xdpguard next to other XDP programs, with the real xdp-tools (Debian's
//! `xdp-filter`, libxdp 1.3.1) in a test namespace:
//!
//! - xdp-filter first: attaching xdpguard fails with a typed
//!   `AttachError::AlreadyAttached` that names xdp-filter's program (name
//!   and id), says it came through libxdp and, on a kernel that refuses
//!   freplace programs (this CI kernel answers EPERM), why libxdp could not
//!   build a dispatcher; xdp-filter keeps running, nothing is pinned.
//! - xdpguard first: `xdp-filter load` fails, and xdpguard keeps filtering
//!   on the same program.
//!
//! Joining a libxdp dispatcher as one of its components cannot be tested
//! here: this kernel refuses BPF_PROG_TYPE_EXT programs, which dispatcher
//! components are (see README, "Coexistence with other XDP programs").
//! Needs root; fails (does not skip) without it.

mod common {
    pub mod scratch;
}

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::scratch::ScratchDir;
use xdpguard::testing::netns::{ensure_bpffs, NetNs, Pair};
use xdpguard::testing::upgrade::attached_program_id;
use xdpguard::{AttachError, AttachMode, Error, Filter};

/// xdp-filter keeps its state in pins shared by the whole host (under
/// /sys/fs/bpf), so its loads and unloads from two tests at once trample each
/// other (seen as "xdp-filter status" losing eth0): the tests take turns.
static XDP_FILTER: Mutex<()> = Mutex::new(());

fn xdp_filter_turn() -> MutexGuard<'static, ()> {
    XDP_FILTER.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs an xdp-tools command inside `ns`, keeping this mount namespace
/// (libxdp needs /sys/fs/bpf, which `ip netns exec` remounts away).
fn xdp_tool(ns: &NetNs, args: &[&str]) -> Output {
    let out = Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{}", ns.name))
        .args(args) // check-deps: xdp-filter
        .output()
        .expect("run nsenter");
    eprintln!("$ {}\n{}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    out
}

fn on_eth0(ns: &NetNs) -> Option<u32> {
    let ifindex = ns.ifindex("eth0");
    ns.run(move || attached_program_id(ifindex))
}

/// Ten UDP datagrams from the client to the server.
fn send(pair: &Pair, n: usize) {
    pair.client.run(move || {
        let s = UdpSocket::bind("192.0.2.1:0").unwrap();
        for _ in 0..n {
            s.send_to(b"x", "192.0.2.2:9").unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn xdp_filter_first_gives_a_typed_error_naming_it_and_keeps_running() {
    let _turn = xdp_filter_turn();
    ensure_bpffs();
    let pair = Pair::new("cxa");
    let out = xdp_tool(&pair.server, &["xdp-filter", "load", "--mode", "skb", "eth0"]);
    assert!(out.status.success(), "xdp-filter load");
    let theirs = on_eth0(&pair.server).expect("xdp-filter's program is attached");

    let pin = ScratchDir::bpffs("cxa");
    let p = pin.path().to_owned();
    for mode in [AttachMode::Auto, AttachMode::Generic] {
        let p = p.clone();
        let err = pair.server.run(move || Filter::builder().interface("eth0").mode(mode).pin(p).attach()).unwrap_err();
        let Error::Attach(AttachError::AlreadyAttached { interface, program_id, program, libxdp, .. }) = &err else {
            panic!("{mode}: {err:?}")
        };
        assert_eq!(interface, "eth0");
        assert_eq!(*program_id, Some(theirs));
        let name = program.as_deref().unwrap_or_default();
        assert!(name.starts_with("xdpfilt_"), "{mode}: names xdp-filter's program: {name}");
        let note = libxdp.as_deref().expect("says it is libxdp's");
        let text = err.to_string();
        println!("{text}");
        assert!(text.contains(&format!("{name}, program id {theirs}")), "{text}");
        assert!(note.contains("loaded through libxdp") && note.contains("xdp-filter unload eth0"), "{note}");
        assert!(note.contains("refuses BPF_PROG_TYPE_EXT (freplace)"), "this kernel refuses EXT: {note}");
        assert!(!pin.path().exists(), "{mode}: nothing pinned");
        assert_eq!(on_eth0(&pair.server), Some(theirs), "{mode}: xdp-filter untouched");
    }
    // xdp-filter still works: it drops what it is told to.
    let out = xdp_tool(&pair.server, &["xdp-filter", "status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("eth0"), "xdp-filter still lists eth0");
    assert!(xdp_tool(&pair.server, &["xdp-filter", "unload", "eth0"]).status.success());
    assert_eq!(on_eth0(&pair.server), None);
}

#[test]
fn xdpguard_first_makes_xdp_filter_fail_and_keeps_filtering() {
    let _turn = xdp_filter_turn();
    ensure_bpffs();
    let pair = Pair::new("cxb");
    let filter = pair
        .server
        .run(|| Filter::builder().interface("eth0").v4_capacity(64).v6_capacity(64).attach().expect("attach"));
    filter.blocklist().insert("192.0.2.1/32".parse().unwrap()).unwrap();
    let ours = on_eth0(&pair.server).expect("attached");
    for mode in ["skb", "native"] {
        let out = xdp_tool(&pair.server, &["xdp-filter", "load", "--mode", mode, "eth0"]);
        assert!(!out.status.success(), "{mode}: xdp-filter cannot take the interface");
        assert_eq!(on_eth0(&pair.server), Some(ours), "{mode}: xdpguard's program stays");
    }
    let before = filter.stats().unwrap().blocked_v4.packets;
    send(&pair, 10);
    assert_eq!(filter.stats().unwrap().blocked_v4.packets, before + 10, "xdpguard still filters");
}
