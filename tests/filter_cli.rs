//! The `xdpguard` CLI (examples/xdpguard.rs) driving a pinned filter across
//! processes: each command is its own process, and the filter keeps
//! filtering real traffic after every one of them has exited.
//!
//! CI builds the examples before the tests (`cargo build --release
//! --examples`); locally run `cargo build --examples` (same profile as the
//! tests) first. Needs root; fails (never skips) without it.

mod common {
    pub mod netns;
}

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::*;
use xdpguard::Filter;

const UDP_PORT: u16 = 7100;

/// The CLI binary of the same profile as this test binary:
/// target/<profile>/deps/filter_cli-* -> target/<profile>/examples/xdpguard.
fn cli_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join("examples").join("xdpguard");
    assert!(
        bin.is_file(),
        "{} is missing: build the examples first (`cargo build --examples`, or `cargo build --release --examples` \
         for `cargo test --release`)",
        bin.display()
    );
    bin
}

fn cli(args: &[&str]) -> Output {
    let out = Command::new(cli_binary()).args(args).output().expect("run the CLI");
    eprintln!(
        "$ xdpguard {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the CLI and requires success; returns stdout.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "xdpguard {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A unique pin directory under /sys/fs/bpf, removed on drop.
struct PinGuard(PathBuf);

impl PinGuard {
    fn new() -> PinGuard {
        ensure_bpffs();
        PinGuard(PathBuf::from(format!("/sys/fs/bpf/xdpg-test-{}-cli", std::process::id())))
    }
    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A UDP echo server in the server namespace.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(ns: &NetNs) -> Echo {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let s = stop.clone();
        let thread = ns.spawn(move || {
            let sock = UdpSocket::bind(("::", UDP_PORT)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        rx.recv().unwrap();
        Echo { stop, thread: Some(thread) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a UDP datagram from `src` gets its echo back (a few tries).
fn udp_reaches(client: &NetNs, src: &str, tries: u32) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = if src.is_ipv4() { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    client.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..tries {
            let token = format!("cli-{i}");
            sock.send_to(token.as_bytes(), SocketAddr::new(dst, UDP_PORT)).unwrap();
            let deadline = Instant::now() + Duration::from_millis(300);
            while Instant::now() < deadline {
                match sock.recv_from(&mut buf) {
                    Ok((n, _)) if &buf[..n] == token.as_bytes() => return true,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        false
    })
}

fn assert_reaches(client: &NetNs, src: &str, why: &str) {
    assert!(udp_reaches(client, src, 5), "{why}: {src} should get through");
}

fn assert_blocked(client: &NetNs, src: &str, why: &str) {
    assert!(!udp_reaches(client, src, 2), "{why}: {src} should be dropped");
}

fn xdp_attached(ns: &NetNs) -> bool {
    String::from_utf8_lossy(&ns.ip(&["link", "show", "dev", "eth0"]).stdout).contains("xdp")
}

fn entries(v: &serde_json::Value) -> BTreeSet<String> {
    v["entries"].as_array().expect("entries").iter().map(|e| e.as_str().unwrap().to_owned()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_cli_manages_a_pinned_filter_that_outlives_every_command() {
    let pair = Pair::new("cli");
    pair.client.addr("eth0", "192.0.2.3/24");
    pair.client.addr("eth0", "2001:db8::3/64");
    let cmac = pair.client.mac("eth0").iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let smac = pair.server.mac("eth0").iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    for a in ["192.0.2.1", "192.0.2.3", "2001:db8::1", "2001:db8::3"] {
        pair.server.ip(&["neigh", "replace", a, "lladdr", &cmac, "dev", "eth0", "nud", "permanent"]);
    }
    for a in ["192.0.2.2", "2001:db8::2"] {
        pair.client.ip(&["neigh", "replace", a, "lladdr", &smac, "dev", "eth0", "nud", "permanent"]);
    }
    let _echo = Echo::start(&pair.server);
    let pin = PinGuard::new();
    let p = pin.arg();
    assert_reaches(&pair.client, "192.0.2.1", "no filter yet");

    // attach: the process exits, the filter stays.
    let out = cli_ok(&[
        "attach",
        "--iface",
        "eth0",
        "--mode",
        "native",
        "--pin",
        p,
        "--netns",
        &pair.server.name,
        "--v4-capacity",
        "4096",
        "--v6-capacity",
        "4096",
    ]);
    assert!(out.contains("attached to eth0") && out.contains("native"), "{out}");
    assert!(xdp_attached(&pair.server), "attached after the CLI exited");
    assert!(pin.0.join("xdpg_filter").exists());

    // attach again to the same pin directory: refused, nothing changed.
    let again = cli(&["attach", "--iface", "eth0", "--pin", p, "--netns", &pair.server.name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds"), "{again:?}");

    // block: v4 and v6, one with host bits set.
    let out = cli_ok(&["block", "--pin", p, "192.0.2.1", "2001:db8::1/128", "198.51.100.7/24"]);
    assert!(out.contains("added 3 of 3"), "{out}");
    assert_blocked(&pair.client, "192.0.2.1", "blocked by the CLI, which has exited");
    assert_blocked(&pair.client, "2001:db8::1", "blocked by the CLI, which has exited");
    assert_reaches(&pair.client, "192.0.2.3", "not listed");
    assert_reaches(&pair.client, "2001:db8::3", "not listed");

    // list --json shows exactly the stored (normalised) entries.
    let v = json(&cli_ok(&["list", "--pin", p, "--json"]));
    assert_eq!(v["list"], "blocklist");
    assert_eq!(entries(&v), set(&["192.0.2.1/32", "198.51.100.0/24", "2001:db8::1/128"]));
    let v = json(&cli_ok(&["list", "--pin", p, "--allow", "--json"]));
    assert_eq!(entries(&v), set(&[]));

    // stats --json counts what happened, and matches the library's view.
    let v = json(&cli_ok(&["stats", "--pin", p, "--json"]));
    let field = |v: &serde_json::Value, k: &str| v[k]["packets"].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(field(&v, "blocked_v4") >= 2 && field(&v, "blocked_v6") >= 2, "{v}");
    assert!(field(&v, "passed") >= 2, "{v}");
    let lib = Filter::open_pinned(&pin.0).expect("open_pinned").stats().unwrap();
    assert!(lib.blocked_v4.packets >= field(&v, "blocked_v4"), "{lib:?} vs {v}");
    assert_eq!(lib.blocked_v6.packets, field(&v, "blocked_v6"), "no v6 traffic since: {lib:?} vs {v}");

    // check explains a verdict.
    let v = json(&cli_ok(&["check", "--pin", p, "198.51.100.9", "--json"]));
    assert_eq!((v["action"].as_str(), v["reason"].as_str()), (Some("drop"), Some("blocklisted by 198.51.100.0/24")));

    // A file with a bad line applies nothing and names the line.
    let dir = std::env::temp_dir().join(format!("xdpg-test-{}-cli", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, "# list\n203.0.113.0/24\n203.0.113.999\n").unwrap();
    let out = cli(&["block", "--pin", p, "--file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"), "{out:?}");
    let v = json(&cli_ok(&["list", "--pin", p, "--json"]));
    assert_eq!(entries(&v).len(), 3, "nothing of the bad file applied: {v}");

    // unblock: traffic resumes.
    cli_ok(&["unblock", "--pin", p, "192.0.2.1"]);
    assert_reaches(&pair.client, "192.0.2.1", "unblocked by the CLI");
    assert_blocked(&pair.client, "2001:db8::1", "still blocked");

    // --replace swaps the whole list for the file's content.
    let good = dir.join("good.txt");
    std::fs::write(&good, "192.0.2.0/24 ; everything on the link\n2001:db8::1\n").unwrap();
    cli_ok(&["allow", "--pin", p, "192.0.2.3"]);
    cli_ok(&["block", "--pin", p, "--file", good.to_str().unwrap(), "--replace"]);
    let v = json(&cli_ok(&["list", "--pin", p, "--json"]));
    assert_eq!(entries(&v), set(&["192.0.2.0/24", "2001:db8::1/128"]));
    assert_blocked(&pair.client, "192.0.2.1", "in the replaced list");
    assert_reaches(&pair.client, "192.0.2.3", "allowlisted hole in the replaced list");
    std::fs::remove_dir_all(&dir).unwrap();

    // status reports where the filter is attached.
    let v = json(&cli_ok(&["status", "--pin", p, "--json"]));
    let att = v["attachments"].as_array().expect("attachments");
    assert_eq!(att.len(), 1, "{v}");
    assert_eq!(att[0]["ifindex"].as_u64(), Some(u64::from(pair.server.ifindex("eth0"))), "{v}");
    assert_eq!(att[0]["mode"], "native", "{v}");
    assert_eq!(v["blocklist_entries"], 2);

    // detach: everything gone, traffic flows again.
    cli_ok(&["detach", "--pin", p]);
    assert!(!pin.0.exists(), "detach removed the pin directory");
    assert!(!xdp_attached(&pair.server), "detach removed the program from eth0");
    assert_reaches(&pair.client, "192.0.2.1", "detached");
    assert_reaches(&pair.client, "2001:db8::1", "detached");
    let out = cli(&["list", "--pin", p]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pinned xdpguard filter"),
        "{out:?}"
    );
}
