//! xdpguard next to other XDP programs, with the real xdp-tools (Debian's
//! `xdp-filter`, libxdp 1.3.1) in a test namespace:
//!
//! - xdp-filter first: attaching xdpguard fails with a typed
//!   `AttachError::AlreadyAttached` that names xdp-filter's program (name
//!   and id) and says it came through libxdp. What libxdp built depends on
//!   the kernel, and the test asserts what this one does: where the kernel
//!   refuses freplace programs (the 6.18 CI kernel answers EPERM) libxdp
//!   loads one plain program and the error says why it could not build a
//!   dispatcher; where it loads them, a dispatcher (named as one) or, if
//!   libxdp fell back anyway, a plain program without that sentence.
//!   xdp-filter keeps running (it still drops what it is told to), nothing
//!   is pinned.
//! - xdpguard first: `xdp-filter load` fails (libxdp refuses to replace a
//!   program that is not its dispatcher, whatever the kernel), and
//!   xdpguard keeps filtering on the same program.
//!
//! Joining a libxdp dispatcher as one of its components is not done (see
//! README, "Coexistence with other XDP programs"), so not tested.
//! Needs root and xdp-tools; fails (does not skip) without them.

mod common {
    pub mod scratch;
}

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::scratch::ScratchDir;
use xdpguard::testing::kernel;
use xdpguard::testing::netns::{ensure_bpffs, NetNs, Pair};
use xdpguard::testing::upgrade::attached_program_id;
use xdpguard::{AttachError, AttachMode, Error, Filter};

/// xdp-filter keeps its state in pins shared by the whole host (under
/// /sys/fs/bpf), so its loads and unloads from two tests at once trample each
/// other (seen as "xdp-filter status" losing eth0): the tests take turns.
static XDP_FILTER: Mutex<()> = Mutex::new(());

fn xdp_filter_turn() -> Turn {
    let lock = XDP_FILTER.lock().unwrap_or_else(|p| p.into_inner());
    let made = LIBXDP_DIRS.iter().filter(|d| !std::path::Path::new(d).exists()).copied().collect();
    Turn { _lock: lock, made }
}

/// The directories libxdp makes under /sys/fs/bpf (its dispatchers' pins,
/// xdp-filter's state), deepest first; `xdp-filter unload` leaves them
/// behind, empty.
const LIBXDP_DIRS: [&str; 3] = ["/sys/fs/bpf/xdp-filter/programs", "/sys/fs/bpf/xdp-filter", "/sys/fs/bpf/xdp"];

/// A test's turn with xdp-filter. Ended, it removes the libxdp directories
/// that were not there before it, if empty: a host's own xdp-filter state
/// (then there before, or not empty) is never touched.
struct Turn {
    _lock: MutexGuard<'static, ()>,
    made: Vec<&'static str>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        for dir in &self.made {
            let _ = std::fs::remove_dir(dir);
        }
    }
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

/// `n` UDP datagrams from the client to the server.
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

/// Sends `n` datagrams from the client and counts those `sink` (the
/// server's socket on 192.0.2.2:9) receives.
fn delivered(pair: &Pair, sink: &UdpSocket, n: usize) -> usize {
    send(pair, n);
    sink.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    std::iter::from_fn(|| sink.recv(&mut buf).ok()).count()
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
        let note = libxdp.as_deref().expect("says it is libxdp's");
        let text = err.to_string();
        println!("{text}");
        assert!(text.contains(&format!("{name}, program id {theirs}")), "{text}");
        let refused = "refuses BPF_PROG_TYPE_EXT (freplace)";
        if name == "xdp_dispatcher" {
            // Only a kernel that loads freplace programs lets libxdp build one.
            assert_eq!(kernel::loads_freplace(), Some(true), "{mode}: a dispatcher on a kernel without freplace");
            assert!(note.contains("libxdp dispatcher") && note.contains("xdp-loader unload eth0 --all"), "{note}");
        } else {
            assert!(name.starts_with("xdpfilt_"), "{mode}: names xdp-filter's program: {name}");
            assert!(note.contains("loaded through libxdp") && note.contains("xdp-filter unload eth0"), "{note}");
            // Why libxdp fell back is said exactly when the kernel is the reason.
            let ext = kernel::loads_freplace();
            assert_eq!(note.contains(refused), ext == Some(false), "{mode}: freplace loads: {ext:?}; {note}");
        }
        assert!(!pin.path().exists(), "{mode}: nothing pinned");
        assert_eq!(on_eth0(&pair.server), Some(theirs), "{mode}: xdp-filter untouched");
    }
    // xdp-filter still works: it passes by default and drops what it is
    // told to.
    let out = xdp_tool(&pair.server, &["xdp-filter", "status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("eth0"), "xdp-filter still lists eth0");
    let sink = pair.server.run(|| UdpSocket::bind("192.0.2.2:9").expect("bind the server's socket"));
    assert_eq!(delivered(&pair, &sink, 10), 10, "xdp-filter passes what it was not told to drop");
    assert!(xdp_tool(&pair.server, &["xdp-filter", "ip", "--mode", "src", "192.0.2.1"]).status.success());
    assert_eq!(delivered(&pair, &sink, 10), 0, "xdp-filter drops the client it was told to");
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
        // It ran and failed to attach (not a missing tool or a bad option):
        // libxdp will not replace a program that is not its dispatcher.
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("Couldn't attach XDP program on iface 'eth0'"), "{mode}: why it failed: {said}");
        assert_eq!(on_eth0(&pair.server), Some(ours), "{mode}: xdpguard's program stays");
    }
    let before = filter.stats().unwrap().blocked_v4.packets;
    send(&pair, 10);
    assert_eq!(filter.stats().unwrap().blocked_v4.packets, before + 10, "xdpguard still filters");
}
