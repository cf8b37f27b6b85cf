//! The `xdpguard` CLI (src/bin/xdpguard.rs) driving a pinned filter across
//! processes: each command is its own process, and the filter keeps
//! filtering real traffic after every one of them has exited.
//!
//! `cargo test` builds the tool (tests/common/cli.rs). Needs root; fails
//! (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod udp_echo;
}

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::cli::{refused, Cli, Running, XDPGUARD};
use common::scratch::ScratchDir;
use common::udp_echo::{udp_echo_reaches, UdpEcho};
use xdpguard::testing::netns::*;
use xdpguard::{Filter, IpNetwork, Verdict, XdpAction};

const UDP_PORT: u16 = 7100;

/// Whether a UDP datagram from `src` gets its echo back (a few tries).
fn udp_reaches(client: &NetNs, src: &str, tries: u32) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = if src.is_ipv4() { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    client.run(move || udp_echo_reaches(src, SocketAddr::new(dst, UDP_PORT), tries, Duration::from_millis(300)))
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
    let clients = ["192.0.2.1", "192.0.2.3", "2001:db8::1", "2001:db8::3"];
    pair.server.static_neighbours("eth0", &clients, pair.client.mac("eth0"));
    pair.client.static_neighbours("eth0", &["192.0.2.2", "2001:db8::2"], pair.server.mac("eth0"));
    let _echo = UdpEcho::start(&pair.server, UDP_PORT);
    let cli = XDPGUARD;
    let pin = ScratchDir::bpffs("cli");
    let p = pin.arg();
    assert_reaches(&pair.client, "192.0.2.1", "no filter yet");

    // A mode the library does not name is refused, listing the ones it does.
    let out = cli.run(&["attach", "--iface", "eth0", "--mode", "fast", "--pin", p, "--netns", &pair.server.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown XDP mode `fast` (expected native, generic, offload or auto)"),
        "{err}"
    );
    assert!(!pin.path().exists(), "a refused attach pins nothing");

    // attach: the process exits, the filter stays.
    // (An interface given twice is attached once.)
    let out = cli.ok(&[
        "attach",
        "--iface",
        "eth0",
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
        "--max-timed-blocks",
        "2",
    ]);
    assert!(out.contains("attached to eth0") && out.contains("native"), "{out}");
    assert_eq!(out.matches("attached to").count(), 1, "{out}");
    assert!(xdp_attached(&pair.server), "attached after the CLI exited");
    assert!(pin.path().join("xdpg_filter").exists());

    // attach again to the same pin directory, where it runs: nothing
    // changes, and it succeeds (a unit's start run again).
    let reattach = |extra: &[&str]| {
        let mut args = vec!["attach", "--iface", "eth0", "--pin", p, "--netns", &pair.server.name];
        args.extend_from_slice(extra);
        cli.run(&args)
    };
    let kept = |out: std::process::Output| {
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("already attached to eth0"), "{out:?}");
    };
    kept(reattach(&[]));
    // The rule stage's capacities are the load's: given again with its own
    // values, they pass; with others, refused by name beside the pinned
    // value, nothing changed.
    let own_rules = xdpguard::DEFAULT_MAX_RULES.to_string();
    kept(reattach(&["--max-timed-blocks", "2", "--max-rules", &own_rules]));
    let again = reattach(&["--max-rules", "8", "--max-timed-blocks", "2", "--max-set-entries", "9"]);
    refused(
        &again,
        &[
            &format!(
                "--max-rules 8 (it has {}), --max-set-entries 9 (it has {}): the capacities of the rule stage",
                xdpguard::DEFAULT_MAX_RULES,
                xdpguard::DEFAULT_MAX_SET_ENTRIES
            ),
            "fixed when it was loaded",
            "xdpguard detach --pin",
        ],
    );
    let status = cli.json(&["status", "--pin", p, "--json"]);
    assert_eq!(status["rule_capacities"]["max_timed_blocks"], 2, "{status}");
    assert_eq!(status["rule_capacities"]["max_rules"], xdpguard::DEFAULT_MAX_RULES, "{status}");
    let text = cli.ok(&["status", "--pin", p]);
    assert!(
        text.contains(&format!("rule stage: {} rules,", xdpguard::DEFAULT_MAX_RULES))
            && text
                .contains(&format!("2 timed blocks, {} limiter buckets at most", xdpguard::DEFAULT_MAX_LIMIT_BUCKETS)),
        "{text}"
    );

    // The timed-block table holds what attach gave it; full, the error names the option.
    cli.ok(&["block", "--pin", p, "--ttl", "10m", "203.0.113.1", "203.0.113.2"]);
    // Blocking again for less keeps the longer block, and says how to shorten it.
    let again = cli.ok(&["block", "--pin", p, "--ttl", "1m", "203.0.113.1"]);
    assert!(again.contains("timed blocks: 0 entries for 1m (0 new, 0 renewed)"), "{again}");
    assert!(
        again.contains("203.0.113.1/32 stays blocked for 9m") && again.contains("xdpguard unblock 203.0.113.1/32"),
        "{again}"
    );
    let full = cli.run(&["block", "--pin", p, "--ttl", "10m", "203.0.113.3"]);
    refused(&full, &["the timed-block table is full (2)", "xdpguard attach --max-timed-blocks"]);
    assert_eq!(cli.json(&["status", "--pin", p, "--json"])["timed_blocks"], 2);
    assert!(cli.ok(&["status", "--pin", p]).contains("timed:      2 of 2 timed blocks"));
    // `M` is humantime's months: refused, naming minutes.
    refused(&cli.run(&["block", "--pin", p, "--ttl", "10M", "203.0.113.3"]), &["`10M`", "months", "minutes"]);
    cli.ok(&["unblock", "--pin", p, "203.0.113.1", "203.0.113.2"]);
    // Three timed blocks for two places: none of them is applied.
    let full = cli.run(&["block", "--pin", p, "--ttl", "10m", "203.0.113.1", "203.0.113.2", "203.0.113.3"]);
    refused(&full, &["the timed-block table is full (2)", "nothing of this edit was applied"]);
    let timed = cli.json(&["list", "--pin", p, "--json"]);
    assert_eq!(timed["timed"].as_array().map(Vec::len), Some(0), "{timed}");
    // A prefix stored in another form than given is said, as for the lists.
    let out = cli.run(&["block", "--pin", p, "--ttl", "10m", "2001:db8:aa00::/24"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("note: 2001:db8:aa00::/24 has host bits set; stored as 2001:d00::/24"),
        "{err}"
    );
    cli.ok(&["unblock", "--pin", p, "2001:d00::/24"]);

    // block: v4 and v6, one with host bits set.
    let out = cli.ok(&["block", "--pin", p, "192.0.2.1", "2001:db8::1/128", "198.51.100.7/24"]);
    assert!(out.contains("added 3 of 3"), "{out}");
    assert_blocked(&pair.client, "192.0.2.1", "blocked by the CLI, which has exited");
    assert_blocked(&pair.client, "2001:db8::1", "blocked by the CLI, which has exited");
    assert_reaches(&pair.client, "192.0.2.3", "not listed");
    assert_reaches(&pair.client, "2001:db8::3", "not listed");

    // list --json shows exactly the stored (normalised) entries.
    let v = cli.json(&["list", "--pin", p, "--json"]);
    assert_eq!(v["list"], "blocklist");
    assert_eq!(entries(&v), set(&["192.0.2.1/32", "198.51.100.0/24", "2001:db8::1/128"]));
    let v = cli.json(&["list", "--pin", p, "--allow", "--json"]);
    assert_eq!(entries(&v), set(&[]));

    // stats --json counts what happened, and matches the library's view.
    let v = cli.json(&["stats", "--pin", p, "--json"]);
    let field = |v: &serde_json::Value, k: &str| v[k]["packets"].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
    assert!(field(&v, "blocked_v4") >= 2 && field(&v, "blocked_v6") >= 2, "{v}");
    assert!(field(&v, "passed") >= 2, "{v}");
    let lib = Filter::open_pinned(pin.path()).expect("open_pinned").stats().unwrap();
    assert!(lib.blocked_v4.packets >= field(&v, "blocked_v4"), "{lib:?} vs {v}");
    assert_eq!(lib.blocked_v6.packets, field(&v, "blocked_v6"), "no v6 traffic since: {lib:?} vs {v}");

    // check explains a verdict.
    let v = cli.json(&["check", "--pin", p, "198.51.100.9", "--json"]);
    assert_eq!((v["action"].as_str(), v["reason"].as_str()), (Some("drop"), Some("blocklisted by 198.51.100.0/24")));

    // A file with a bad line applies nothing and names the line.
    let files = ScratchDir::new(std::env::temp_dir(), "cli");
    std::fs::create_dir_all(files.path()).unwrap();
    let bad = files.path().join("bad.txt");
    std::fs::write(&bad, "# list\n203.0.113.0/24\n203.0.113.999\n").unwrap();
    let out = cli.run(&["block", "--pin", p, "--file", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"), "{out:?}");
    let v = cli.json(&["list", "--pin", p, "--json"]);
    assert_eq!(entries(&v).len(), 3, "nothing of the bad file applied: {v}");

    // unblock: traffic resumes.
    cli.ok(&["unblock", "--pin", p, "192.0.2.1"]);
    assert_reaches(&pair.client, "192.0.2.1", "unblocked by the CLI");
    assert_blocked(&pair.client, "2001:db8::1", "still blocked");

    // --replace swaps the whole list for the file's content.
    let good = files.path().join("good.txt");
    std::fs::write(&good, "192.0.2.0/24 ; everything on the link\n2001:db8::1\n").unwrap();
    cli.ok(&["allow", "--pin", p, "192.0.2.3"]);
    cli.ok(&["block", "--pin", p, "--file", good.to_str().unwrap(), "--replace"]);
    let v = cli.json(&["list", "--pin", p, "--json"]);
    assert_eq!(entries(&v), set(&["192.0.2.0/24", "2001:db8::1/128"]));
    assert_blocked(&pair.client, "192.0.2.1", "in the replaced list");
    assert_reaches(&pair.client, "192.0.2.3", "allowlisted hole in the replaced list");

    // status reports where the filter is attached.
    let v = cli.json(&["status", "--pin", p, "--json"]);
    let att = v["attachments"].as_array().expect("attachments");
    assert_eq!(att.len(), 1, "{v}");
    assert_eq!(att[0]["ifindex"].as_u64(), Some(u64::from(pair.server.ifindex("eth0"))), "{v}");
    assert_eq!(att[0]["mode"], "native", "{v}");
    assert_eq!(v["blocklist_entries"], 2);
    assert_eq!(v["malformed_policy"], "pass", "{v}");

    // detach: everything gone, traffic flows again.
    cli.ok(&["detach", "--pin", p]);
    assert!(!pin.path().exists(), "detach removed the pin directory");
    assert!(!xdp_attached(&pair.server), "detach removed the program from eth0");
    assert_reaches(&pair.client, "192.0.2.1", "detached");
    assert_reaches(&pair.client, "2001:db8::1", "detached");
    let out = cli.run(&["list", "--pin", p]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no pinned xdpguard filter"),
        "{out:?}"
    );
}

/// Kills `xdpguard block --file` at later and later points of a large atomic edit
/// (SIGKILL: no cleanup runs) and reopens the pinned filter each time. The
/// reopen must repair it: entries loaded before the edit are all still
/// there, and the kernel's verdict for every probed source (entries of the
/// list and random sources, through BPF_PROG_TEST_RUN) agrees with the
/// entries the reopened handle reports. A bulk edit cut short while its
/// entry store is written may be partly applied, never inconsistent.
#[test]
fn a_cli_killed_mid_edit_leaves_a_filter_that_reopens_consistent() {
    use libbpf_rs::MapCore;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use std::io::{BufRead, BufReader, Write};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::process::{Command, Stdio};

    /// The offset of `dirty` in the config's `struct xdpg_header`, which
    /// starts the config (src/bpf/common.h; asserted in src/core/maps.rs).
    const DIRTY_OFFSET: usize = 8;

    let pair = Pair::new("clikill");
    let cli = XDPGUARD;
    let pin = ScratchDir::bpffs("clikill");
    let p = pin.arg();
    cli.ok(&["attach", "--iface", "eth0", "--pin", p, "--netns", &pair.server.name]);
    let base = ["192.0.2.0/25", "198.51.100.7/32", "2001:db8:bad::/48"];
    cli.ok(&["block", base[0], base[1], base[2], "--pin", p]);
    cli.ok(&["allow", "192.0.2.9", "--pin", p]);

    let file = ScratchDir::new("/tmp", "clikill");
    let mut rng = StdRng::seed_from_u64(0x6b696c6c);
    let mut cut_short = 0;
    let mut left_dirty = 0;
    let mut trials = 0;
    // Kill later and later until two kills caught the edit half done (the
    // window moves with the build profile and the machine's speed).
    for (trial, delay_ms) in (0..12).map(|i| 10u64 << i).enumerate() {
        if left_dirty >= 2 {
            break;
        }
        trials += 1;
        // 300k IPv4 (/32 and /24) and 20k IPv6 entries: never sent traffic,
        // only probed through BPF_PROG_TEST_RUN.
        let mut text = String::new();
        for _ in 0..300_000 {
            let a = Ipv4Addr::from(rng.random::<u32>());
            let len = if rng.random_range(0..4) == 0 { 24 } else { 32 };
            text.push_str(&format!("{}/{len}\n", IpNetwork::new(a.into(), len).unwrap().network()));
        }
        for _ in 0..20_000 {
            text.push_str(&format!("{}/64\n", Ipv6Addr::from(rng.random::<u128>() & !u128::from(u64::MAX))));
        }
        std::fs::create_dir_all(file.path()).unwrap();
        let path = file.path().join(format!("list{trial}.txt"));
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();

        // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_xdpguard)
        let mut child = Command::new(cli.path())
            .args(["block", "--file", path.to_str().unwrap(), "--pin", p])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("applying") {
            line.clear();
        }
        assert!(line.contains("applying"), "the CLI announces the atomic step");
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            cut_short += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // The editor's "edit in progress" mark, straight from the pinned config map.
        let cfg = libbpf_rs::MapHandle::from_pinned_path(pin.path().join("xdpg_filter_cfg")).unwrap();
        let value = cfg.lookup(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY).unwrap().unwrap();
        let dirty = u32::from_ne_bytes(value[DIRTY_OFFSET..DIRTY_OFFSET + 4].try_into().unwrap());
        left_dirty += usize::from(dirty != 0);

        let f = Filter::open_pinned(pin.path()).expect("reopen repairs a filter whose editor died");
        for b in base {
            assert!(
                f.blocklist().contains(b.parse().unwrap()).unwrap(),
                "trial {trial}: {b} was loaded before the edit"
            );
        }
        assert!(f.allowlist().contains("192.0.2.9/32".parse().unwrap()).unwrap());
        let listed: Vec<IpNetwork> = f.blocklist().iter().unwrap().collect();
        let mut probes: Vec<IpAddr> = (0..3000).map(|_| listed[rng.random_range(0..listed.len())].ip()).collect();
        probes.extend((0..1500).map(|_| IpAddr::V4(Ipv4Addr::from(rng.random::<u32>()))));
        probes.extend((0..500).map(|_| IpAddr::V6(Ipv6Addr::from(rng.random::<u128>()))));
        probes.extend(["192.0.2.9", "192.0.2.10", "192.0.2.200", "198.51.100.7"].map(|a| a.parse::<IpAddr>().unwrap()));
        for addr in probes {
            let verdict = f.verdict(addr).unwrap();
            let action = f.test_run(&xdpguard::testing::frame::udp_from(addr)).unwrap().action;
            let expected = if matches!(verdict, Verdict::Block(_)) { XdpAction::Drop } else { XdpAction::Pass };
            assert_eq!(action, expected, "trial {trial} ({delay_ms} ms): {addr} is {verdict:?} in the lists");
        }
        // And it takes edits again.
        f.blocklist().insert("203.0.113.0/24".parse().unwrap()).unwrap();
        assert_eq!(
            f.test_run(&xdpguard::testing::frame::udp_from("203.0.113.5".parse().unwrap())).unwrap().action,
            XdpAction::Drop
        );
        f.blocklist().remove("203.0.113.0/24".parse().unwrap()).unwrap();
    }
    eprintln!("{cut_short} of {trials} kills landed while the edit ran; {left_dirty} left it half done");
    assert!(left_dirty >= 1, "no kill left an edit half done, so the repair never ran");
    cli.ok(&["detach", "--pin", p]);
}

/// A whole-list replace killed after its entry store was written (its
/// tables staged, or switched in) is completed by the next open: the list
/// is the new one, as the traffic already saw it once switched. The store
/// was written after the switch: such a kill left the old store, and the
/// repair rolled back a list already live (or, killed while the store was
/// written, made a mix of the two the live list).
#[test]
fn a_replace_killed_after_its_store_was_written_completes_on_reopen() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;
    use xdpguard::testing::crash::CRASH_AT;
    use xdpguard::testing::frame::udp_from;

    let pair = Pair::new("clicrash");
    let cli = XDPGUARD;
    let pin = ScratchDir::bpffs("clicrash");
    let p = pin.arg();
    cli.ok(&["attach", "--iface", "eth0", "--pin", p, "--netns", &pair.server.name]);
    let files = ScratchDir::new("/tmp", "clicrash");
    std::fs::create_dir_all(files.path()).unwrap();
    for (i, point) in ["lists.staged", "lists.switched"].into_iter().enumerate() {
        let old: Vec<String> = (0..200u32)
            .map(|k| format!("198.51.100.{}/32", k))
            .chain((0..100u32).map(|k| format!("2001:db8:{i}:{k:x}::/64")))
            .collect();
        let new: Vec<String> = (0..200u32)
            .map(|k| format!("203.0.113.{}/32", k))
            .chain((0..100u32).map(|k| format!("2001:db8:1{i}:{k:x}::/64")))
            .collect();
        let write = |name: &str, list: &[String]| {
            let path = files.path().join(name);
            std::fs::write(&path, list.join("\n")).unwrap();
            path
        };
        let (old_file, new_file) = (write("old.txt", &old), write("new.txt", &new));
        cli.ok(&["block", "--replace", "--file", old_file.to_str().unwrap(), "--pin", p]);
        // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_xdpguard)
        let out = Command::new(cli.path())
            .args(["block", "--replace", "--file", new_file.to_str().unwrap(), "--pin", p])
            .env(CRASH_AT, point)
            .output()
            .unwrap();
        assert_eq!(out.status.signal(), Some(nix::libc::SIGABRT), "{point}: the CLI died there: {out:?}");

        let f = Filter::open_pinned(pin.path()).expect("reopen repairs");
        let listed: BTreeSet<String> = f.blocklist().iter().unwrap().map(|n| n.to_string()).collect();
        let want: BTreeSet<String> = new.iter().map(|e| e.parse::<IpNetwork>().unwrap().to_string()).collect();
        assert_eq!(listed, want, "{point}: the new list, whole");
        for (entry, action) in [
            (&new[7], XdpAction::Drop),
            (&new[250], XdpAction::Drop),
            (&old[7], XdpAction::Pass),
            (&old[250], XdpAction::Pass),
        ] {
            let addr = entry.parse::<IpNetwork>().unwrap().ip();
            assert_eq!(f.test_run(&udp_from(addr)).unwrap().action, action, "{point}: {entry}");
        }
    }
    cli.ok(&["detach", "--pin", p]);
}

/// A client with two addresses per family and a server with a UDP echo,
/// the filter attached to the server's eth0 by the CLI and pinned.
struct CliBed {
    pair: Pair,
    _echo: UdpEcho,
    pin: ScratchDir,
    files: ScratchDir,
}

impl CliBed {
    fn new(cli: &Cli, tag: &str) -> CliBed {
        let pair = Pair::new(tag);
        pair.client.addr("eth0", "192.0.2.3/24");
        pair.client.addr("eth0", "2001:db8::3/64");
        let clients = ["192.0.2.1", "192.0.2.3", "2001:db8::1", "2001:db8::3"];
        pair.server.static_neighbours("eth0", &clients, pair.client.mac("eth0"));
        pair.client.static_neighbours("eth0", &["192.0.2.2", "2001:db8::2"], pair.server.mac("eth0"));
        let echo = UdpEcho::start(&pair.server, UDP_PORT);
        let pin = ScratchDir::bpffs(tag);
        cli.ok(&[
            "attach",
            "--iface",
            "eth0",
            "--pin",
            pin.arg(),
            "--netns",
            &pair.server.name,
            "--v4-capacity",
            "4096",
        ]);
        let files = ScratchDir::new(std::env::temp_dir(), tag);
        std::fs::create_dir_all(files.path()).unwrap();
        CliBed { pair, _echo: echo, pin, files }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.files.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    }
}

/// `block 0.0.0.0/0` would cut the host off, SSH session and all: refused
/// without --force, saying so, in every form, with nothing applied; with
/// --force it blocks the family, and the allowlist still lets sources in.
#[test]
fn blocking_a_whole_family_needs_force() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "cliall");
    let (client, p) = (&bed.pair.client, bed.pin.arg());
    cli.ok(&["block", "--pin", p, "203.0.113.0/24"]);

    let out = cli.run(&["block", "--pin", p, "0.0.0.0/0"]);
    refused(
        &out,
        &[
            "refusing to block 0.0.0.0/0",
            "every IPv4 packet from any source on eth0",
            "SSH",
            "--force",
            "Nothing was changed",
        ],
    );
    let out = cli.run(&["block", "--pin", p, "198.51.100.0/24", "::/0"]);
    refused(&out, &["refusing to block ::/0", "every IPv6 packet", "SSH", "xdpguard allow", "--force"]);
    // The IPv4-mapped whole range is the whole IPv4 space, and a file
    // names its line.
    let out = cli.run(&["block", "--pin", p, "::ffff:0:0/96"]);
    refused(&out, &["refusing to block 0.0.0.0/0 (given as ::ffff:0:0/96)", "every IPv4 packet"]);
    // A timed block of a whole family is refused the same way.
    let out = cli.run(&["block", "--pin", p, "--ttl", "10m", "192.0.2.1", "0.0.0.0/0"]);
    refused(&out, &["refusing to block 0.0.0.0/0", "every IPv4 packet", "--force", "Nothing was changed"]);
    let out = cli.run(&["block", "--pin", p, "--ttl", "10m", "::/0"]);
    refused(&out, &["refusing to block ::/0", "every IPv6 packet", "--force"]);
    let file = bed.file("all.txt", b"198.51.100.0/24\n0.0.0.0/0 ; copied from a route table\n");
    let out = cli.run(&["block", "--pin", p, "--replace", "--file", &file]);
    refused(&out, &["refusing to block 0.0.0.0/0 (line 2 of", "every IPv4 packet", "--force"]);
    assert_eq!(entries(&cli.json(&["list", "--pin", p, "--json"])), set(&["203.0.113.0/24"]), "nothing applied");
    for src in ["192.0.2.1", "192.0.2.3", "2001:db8::1"] {
        assert_reaches(client, src, "after the refused blocks");
    }
    // Allowlisting a whole family cuts no one off: no --force needed.
    cli.ok(&["allow", "--pin", p, "::/0"]);
    cli.ok(&["disallow", "--pin", p, "::/0"]);

    // Default deny, asked for: 192.0.2.3 allowlisted first.
    cli.ok(&["allow", "--pin", p, "192.0.2.3"]);
    let out = cli.ok(&["block", "--pin", p, "--force", "0.0.0.0/0"]);
    assert!(out.contains("added 1 of 1"), "{out}");
    assert_blocked(client, "192.0.2.1", "every IPv4 source blocked");
    assert_reaches(client, "192.0.2.3", "allowlisted before the forced block");
    assert_reaches(client, "2001:db8::1", "IPv6 untouched by 0.0.0.0/0");
    let v = cli.json(&["check", "--pin", p, "198.51.100.9", "--json"]);
    assert_eq!((v["action"].as_str(), v["reason"].as_str()), (Some("drop"), Some("blocklisted by 0.0.0.0/0")));
    // Unblocking one address inside it says what still blocks it.
    let out = cli.ok(&["unblock", "--pin", p, "192.0.2.1"]);
    assert!(out.contains("removed 0 of 1"), "{out}");
    assert!(
        out.contains("note: 192.0.2.1/32 is still blocked by the blocklist's 0.0.0.0/0")
            && out.contains("xdpguard allow 192.0.2.1/32"),
        "{out}"
    );
    cli.ok(&["unblock", "--pin", p, "0.0.0.0/0"]);
    assert_reaches(client, "192.0.2.1", "unblocked");
    // A narrower entry left blocks only part of what was unblocked: no note.
    cli.ok(&["block", "--pin", p, "198.51.100.0/32"]);
    let out = cli.ok(&["unblock", "--pin", p, "198.51.100.0/24"]);
    assert!(!out.contains("note:"), "{out}");
    cli.ok(&["unblock", "--pin", p, "198.51.100.0/32"]);

    // The same for a while: --force lets it in, and it expires.
    cli.ok(&["block", "--pin", p, "--ttl", "4s", "--force", "0.0.0.0/0"]);
    let v = cli.json(&["check", "--pin", p, "192.0.2.1", "--json"]);
    assert_eq!(v["action"], "drop", "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("timed block 0.0.0.0/0, expires in"), "{v}");
    let out = cli.ok(&["unblock", "--pin", p, "192.0.2.1"]);
    assert!(out.contains("note: 192.0.2.1/32 is still blocked by the timed block 0.0.0.0/0 (expires in"), "{out}");
    cli.ok(&["monitor", "--pin", p, "on"]);
    let v = cli.json(&["check", "--pin", p, "192.0.2.1", "--json"]);
    assert_eq!(v["action"], "pass", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("monitor mode"), "{v}");
    cli.ok(&["monitor", "--pin", p, "off"]);
    assert_blocked(client, "192.0.2.1", "every IPv4 source blocked for 4 s");
    assert_reaches(client, "192.0.2.3", "allowlisted before the timed block");
    std::thread::sleep(Duration::from_millis(4500));
    assert_reaches(client, "192.0.2.1", "the timed block expired");

    // A feed that became empty empties the list it replaces (and adds nothing).
    let empty = bed.file("empty.txt", b"# nothing listed today\n");
    refused(&cli.run(&["block", "--pin", p, "--file", &empty]), &["holds no entries", "--replace"]);
    assert_eq!(entries(&cli.json(&["list", "--pin", p, "--json"])), set(&["203.0.113.0/24"]));
    let out = cli.ok(&["block", "--pin", p, "--replace", "--file", &empty]);
    assert!(out.contains("0 entries now"), "{out}");
    assert_eq!(entries(&cli.json(&["list", "--pin", p, "--json"])), set(&[]));
    cli.ok(&["detach", "--pin", p]);
}

/// A re-attach refused (no such interface) leaves the filter's settings as
/// they were; a reader that closes the tool's output early ends it quietly,
/// as it ends any Unix filter (SIGPIPE), rather than in a panic.
#[test]
fn a_refused_reattach_changes_nothing_and_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "clirea");
    let p = bed.pin.arg();
    let server = bed.pair.server.name.clone();
    let out = cli.run(&["attach", "--iface", "nosuch0", "--pin", p, "--netns", &server, "--drop-malformed"]);
    // Named with the namespace it was looked up in, and how to list that one.
    refused(&out, &[&format!("`nosuch0` not found in network namespace `{server}`"), &format!("ip -n {server} link")]);
    assert_eq!(cli.json(&["status", "--pin", p, "--json"])["malformed_policy"], "pass", "the refused attach");

    // The pipe's read end closed before the tool writes a byte.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let out = std::process::Command::new(cli.path()) // check-deps: built-here
        .args(["status", "--pin", p])
        .stdout(std::process::Stdio::from(write))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(nix::sys::signal::Signal::SIGPIPE as i32), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    cli.ok(&["detach", "--pin", p]);
}

/// Attaching a pinned filter again "to eth0" in another namespace attaches
/// it there: the filter's attachment to an `eth0` elsewhere is not this
/// one (names and indexes are per namespace), so it is neither "already
/// attached" nor left unprotected. An `eth0` with the same index there
/// too (two containers' `eth0`) is refused by name: one pin directory
/// records an attachment by index and name, so it cannot hold both.
#[test]
fn attach_in_another_namespace_attaches_an_interface_of_the_same_name_there() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "clins");
    let p = bed.pin.arg();
    let other = NetNs::new("clins3");
    // eth0 with another index than the first namespace's (2).
    other.ip(&["link", "add", "pad0", "type", "veth", "peer", "name", "pad1"]);
    other.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"]);
    for dev in ["eth0", "eth0p"] {
        other.ip(&["link", "set", dev, "up"]);
    }
    assert_eq!(bed.pair.server.ifindex("eth0"), 2);
    assert_ne!(other.ifindex("eth0"), 2);
    assert!(!xdp_attached(&other));

    let out = cli.ok(&["attach", "--iface", "eth0", "--pin", p, "--netns", &other.name]);
    assert!(out.contains("attached to eth0") && !out.contains("already attached"), "{out}");
    assert!(xdp_attached(&other), "the other namespace's eth0 runs the filter");
    assert!(xdp_attached(&bed.pair.server), "and the first one still does");
    // Run again there: now it is kept as it is.
    let out = cli.ok(&["attach", "--iface", "eth0", "--pin", p, "--netns", &other.name]);
    assert!(out.contains("already attached to eth0"), "{out}");

    // The same index and name: refused, naming the fix; nothing attached.
    let same = Pair::new("clins2");
    let out = cli.run(&["attach", "--iface", "eth0", "--pin", p, "--netns", &same.server.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in another network namespace") && err.contains("--pin"), "{err}");
    assert!(!xdp_attached(&same.server));

    cli.ok(&["detach", "--pin", p]);
    assert!(!xdp_attached(&other) && !xdp_attached(&bed.pair.server), "detached from both");
}

/// A user other than the pins' owner, holding the capabilities the
/// privilege error names, is told the pins refuse it (owner, mode, the
/// chown), not a bare "Operation not permitted".
#[test]
fn another_users_process_with_the_capabilities_is_told_whose_pins_refuse_it() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "cliuid");
    let caps = "+bpf,+net_admin,+perfmon";
    let out = std::process::Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--inh-caps", caps, "--ambient-caps", caps])
        .arg(cli.path()) // check-deps: built-here
        .args(["status", "--pin", bed.pin.arg()])
        .output()
        .expect("run setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("cannot be opened by this process (uid 65534)")
            && err.contains("belongs to uid 0")
            && err.contains("chown -R 65534"),
        "{err}"
    );
}

/// An IPv4-mapped entry blocks the IPv4 source it names; a list file that
/// is not UTF-8 is refused by line number like any bad file.
#[test]
fn mapped_addresses_block_ipv4_and_non_utf8_files_name_their_lines() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "climap");
    let (client, p) = (&bed.pair.client, bed.pin.arg());

    let out = cli.run(&["block", "--pin", p, "::ffff:192.0.2.1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("::ffff:192.0.2.1/128 is IPv4-mapped; stored as 192.0.2.1/32"),
        "{out:?}"
    );
    assert_eq!(entries(&cli.json(&["list", "--pin", p, "--json"])), set(&["192.0.2.1/32"]));
    assert_blocked(client, "192.0.2.1", "blocked as ::ffff:192.0.2.1");
    assert_reaches(client, "192.0.2.3", "not listed");
    assert_reaches(client, "2001:db8::1", "not listed");
    let out = cli.run(&["check", "--pin", p, "::ffff:192.0.2.1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["address"].as_str(), v["action"].as_str()), (Some("192.0.2.1"), Some("drop")), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("IPv4-mapped"), "{out:?}");
    // Unblocked by its mapped form; its IPv4 form given too is a repeat,
    // not an entry "not present" (the summary said "2 were not present").
    let out = cli.ok(&["unblock", "--pin", p, "::ffff:192.0.2.1", "192.0.2.1", "192.0.2.9"]);
    assert!(out.contains("removed 1 of 3 entries (1 not present, 1 a repeat of an entry given before)"), "{out}");
    assert_reaches(client, "192.0.2.1", "unblocked by its mapped form");

    // Mapped prefixes in a file: stored as IPv4, noted by line.
    let file = bed.file("mapped.txt", b"# from a dual-stack socket's log\n::ffff:192.0.2.0/127\n");
    let out = cli.run(&["block", "--pin", p, "--file", &file]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2: IPv4-mapped, stored as 192.0.2.0/31"), "{out:?}");
    assert_blocked(client, "192.0.2.1", "in ::ffff:192.0.2.0/127");
    assert_reaches(client, "192.0.2.3", "outside ::ffff:192.0.2.0/127");

    // Not UTF-8: Latin-1 in line 3's entry, a stray byte in line 5's; the
    // Latin-1 comment on line 4 is fine. Refused by line, nothing applied.
    let file =
        bed.file("latin1.txt", b"# drop list\n203.0.113.0/24\n198.51.100.\xb2/32\n# r\xe9seau\n2001:db8::\xff/64\n");
    let out = cli.run(&["block", "--pin", p, "--file", &file]);
    refused(
        &out,
        &["2 bad line(s)", "line 3:", "line 5:", "not valid UTF-8", "save the file as UTF-8", "nothing applied"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("line 4") && !stderr.contains("stream did not contain"), "{stderr}");
    assert_eq!(entries(&cli.json(&["list", "--pin", p, "--json"])), set(&["192.0.2.0/31"]), "nothing of it applied");
    assert_reaches(client, "192.0.2.3", "the bad file applied nothing");
    cli.ok(&["detach", "--pin", p]);
}

/// `attach` started several times at once on a new pin directory (units
/// starting together, a script's parallel loop), each naming its own
/// interface: every one succeeds, one creating the filter and the others
/// attaching that same filter (they failed with "already holds a pinned
/// xdpguard filter ... remove it first", though running them again worked),
/// and the filter ends attached to every interface named.
#[test]
fn concurrent_attaches_on_a_new_pin_directory_all_attach_one_filter() {
    const N: usize = 6;
    let ns = NetNs::new("cattach");
    let ifaces: Vec<String> = (0..N).map(|i| format!("xgc{i}")).collect();
    for (i, name) in ifaces.iter().enumerate() {
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &format!("xgp{i}")]);
        ns.ip(&["link", "set", name, "up"]);
    }
    for round in 0..3 {
        let pin = ScratchDir::bpffs("cattach");
        let children: Vec<_> = ifaces
            .iter()
            .map(|iface| {
                let args = ["attach", "--iface", iface, "--netns", &ns.name, "--mode", "generic", "--pin", pin.arg()];
                // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_xdpguard)
                std::process::Command::new(XDPGUARD.path())
                    .args(args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("start xdpguard attach")
            })
            .collect();
        for (iface, child) in ifaces.iter().zip(children) {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: attach --iface {iface} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let filter = Filter::open_pinned(pin.path()).unwrap();
        let on: BTreeSet<String> = filter.attachments().into_iter().map(|a| a.interface).collect();
        assert_eq!(on, ifaces.iter().cloned().collect::<BTreeSet<_>>(), "round {round}");
        filter.unpin().unwrap();
    }
}

/// `check` walks the rules for a source neither list nor a timed block
/// decided: a rule on the source alone decides (`drop by rule N`, `pass by
/// rule N`, a rate limit), and the rules that also look at protocols or
/// ports before it are named as deciding first for some packets. With no
/// rule for it: `in neither list`, as before.
#[test]
fn check_names_the_rule_that_decides_by_source() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "clichk");
    let (client, p) = (&bed.pair.client, bed.pin.arg());
    cli.ok(&["set", "create", "--pin", p, "friends"]);
    cli.ok(&["set", "add", "--pin", p, "friends", "203.0.113.0/24"]);
    let id = |words: &[&str]| -> u64 {
        let mut args = vec!["rule", "add", "--pin", p];
        args.extend_from_slice(words);
        cli.ok(&args);
        let v = cli.json(&["rule", "list", "--pin", p, "--json"]);
        v["rules"].as_array().unwrap().last().unwrap()["id"].as_u64().unwrap()
    };
    let udp9 = id(&["drop", "udp", "dport", "9"]);
    let not_friends = id(&["drop", "udp", "not", "from", "set", "friends", "dport", "7100"]);
    let office = id(&["drop", "from", "198.51.100.0/24"]);
    let limited = id(&["rate-limit", "10/s", "from", "set", "friends"]);
    let friends = id(&["pass", "from", "set", "friends"]);
    id(&["count", "from", "192.0.2.0/24"]);

    let v = cli.json(&["check", "--pin", p, "198.51.100.9", "--json"]);
    assert_eq!(v["action"], "drop", "{v}");
    assert_eq!(v["reason"], format!("drop by rule {office}: drop from 198.51.100.0/24"), "{v}");
    assert_eq!(v["rule"], office, "{v}");
    assert_eq!(v["may_decide"], serde_json::json!([udp9, not_friends]), "{v}");
    let out = cli.ok(&["check", "--pin", p, "198.51.100.9"]);
    assert!(
        out.starts_with(&format!("198.51.100.9: drop (drop by rule {office}: drop from 198.51.100.0/24)")),
        "{out}"
    );
    assert!(out.contains(&format!("rule {not_friends} may decide first for some of its packets")), "{out}");

    let v = cli.json(&["check", "--pin", p, "203.0.113.7", "--json"]);
    assert_eq!(v["action"], "rate-limit", "{v}");
    assert_eq!((v["rule"].as_u64(), v["rate_limited_by"].clone()), (Some(friends), serde_json::json!([limited])));
    assert!(v["reason"].as_str().unwrap().contains("within the limit: pass, pass by rule"), "{v}");
    assert_eq!(v["may_decide"], serde_json::json!([udp9]), "not the rule for sources outside the set: {v}");

    // 192.0.2.1: only rules that look at ports (and a count) see it.
    let v = cli.json(&["check", "--pin", p, "192.0.2.1", "--json"]);
    assert_eq!((v["action"].as_str(), v["reason"].as_str()), (Some("pass"), Some("in neither list")), "{v}");
    assert_eq!(v["may_decide"], serde_json::json!([udp9, not_friends]), "{v}");
    // And it does: its UDP to port 7100 is dropped as not a friend.
    assert_blocked(client, "192.0.2.1", "drop udp not from set friends dport 7100");
    cli.ok(&["detach", "--pin", p]);
}

/// An interface whose name has a dot (a VLAN's, `eth0.100`): bpffs refuses
/// dots in pin names, so its link pin writes the name another way; the
/// filter attaches, and every later process reads the dotted name back.
#[test]
fn an_interface_named_with_a_dot_is_attached_and_read_back() {
    let cli = XDPGUARD;
    let ns = NetNs::new("clidot");
    ns.ip(&["link", "add", "xgd.t0", "type", "veth", "peer", "name", "xgd.t1"]);
    ns.ip(&["link", "set", "xgd.t0", "up"]);
    ns.ip(&["link", "set", "xgd.t1", "up"]);
    let pin = ScratchDir::bpffs("clidot");
    let p = pin.arg();
    cli.ok(&["attach", "--iface", "xgd.t0", "--mode", "generic", "--pin", p, "--netns", &ns.name]);
    let text = cli.ok(&["status", "--pin", p]);
    assert!(text.contains("attached:   xgd.t0 (ifindex ") && !text.contains("nowhere"), "{text}");
    let links: Vec<String> = std::fs::read_dir(pin.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("link_"))
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].ends_with("_generic_xgd:t0"), "{links:?}");
    // Attached again in the same mode: already there, nothing changed.
    cli.ok(&["attach", "--iface", "xgd.t0", "--mode", "generic", "--pin", p, "--netns", &ns.name]);
    let json = cli.json(&["status", "--pin", p, "--json"]);
    assert_eq!(json.to_string().matches("\"xgd.t0\"").count(), 1, "{json}");
    cli.ok(&["detach", "--iface", "xgd.t0", "--pin", p]);
    let text = cli.ok(&["status", "--pin", p]);
    assert!(!text.contains("xgd.t0"), "{text}");
    cli.ok(&["detach", "--pin", p]);
}

/// A set or rule the filter does not have is refused naming the filter
/// and the commands that list its sets or rules (and make the set), with
/// this filter's `--pin`; nothing changes. The exporter given the
/// filter's pins as another kind of program's refuses to start, naming
/// the flag to give them with.
#[test]
fn unknown_sets_and_rules_and_misdirected_pins_name_the_way_out() {
    let cli = XDPGUARD;
    let bed = CliBed::new(&cli, "cliset");
    let p = bed.pin.arg();
    cli.ok(&["set", "create", "--pin", p, "known"]);
    let no_set = [
        &format!("the filter pinned at {p} has no set named `nosuch`")[..],
        &format!("`xdpguard set list --pin {p}`"),
        &format!("`xdpguard set create nosuch --pin {p}`"),
    ];
    for args in [
        &["set", "delete", "nosuch"][..],
        &["set", "add", "nosuch", "192.0.2.0/24"],
        &["set", "del", "nosuch", "192.0.2.0/24"],
        &["set", "list", "nosuch"],
        &["rule", "add", "drop", "from", "set", "nosuch"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--pin", p]);
        refused(&cli.run(&args), &no_set);
    }
    let sets = cli.json(&["set", "list", "--json", "--pin", p]);
    assert_eq!(sets, serde_json::json!({ "sets": { "known": [] } }), "nothing changed");
    assert_eq!(cli.json(&["rule", "list", "--json", "--pin", p])["rules"], serde_json::json!([]), "no rule added");
    // A fragment rule is added and listed as written; one naming ports is
    // refused, saying why and what to write.
    cli.ok(&["rule", "add", "--pin", p, "drop", "udp", "fragment"]);
    refused(
        &cli.run(&["rule", "add", "--pin", p, "drop", "udp", "fragment", "dport", "53"]),
        &["a `fragment` rule cannot name ports (`dport`)", "later fragments carry none", "two rules"],
    );
    let rules = cli.json(&["rule", "list", "--json", "--pin", p])["rules"].clone();
    assert_eq!(rules.as_array().map(|r| r.len()), Some(1), "{rules}");
    assert_eq!(rules[0]["rule"], "drop udp fragment", "{rules}");
    for args in [["rule", "del", "99"], ["rule", "monitor", "99"]] {
        let mut args = args.to_vec();
        args.extend(["--pin", p]);
        refused(&cli.run(&args), &["has no rule with id 99", &format!("`xdpguard rule list --pin {p}`")]);
    }
    for (flag, what) in [("--lb", "not a load balancer"), ("--decap", "not a decapsulator")] {
        refused(
            &cli.run(&["metrics", flag, p, "--listen", "127.0.0.1:0"]),
            &[&format!("holds an xdpguard filter, {what}"), &format!("--filter {p}")],
        );
    }
    cli.ok(&["detach", "--pin", p]);
}

/// `stats --reset` takes off what it read, not what is there when it
/// resets: packets counted between the read and the reset (here run
/// through `BPF_PROG_TEST_RUN` in between) are kept, for the next read.
#[test]
fn a_reset_keeps_what_was_counted_after_the_read() {
    use xdpguard::testing::frame::{Frame, DST_V4, PAYLOAD};
    let filter = Filter::builder().v4_capacity(64).v6_capacity(64).load().expect("load the filter (root)");
    let frame = Frame::builder().ipv4("192.0.2.1".parse().unwrap(), DST_V4).udp(40000, 53).payload(PAYLOAD).build();
    let run = |n: u64| {
        for _ in 0..n {
            assert_eq!(filter.test_run(frame.bytes()).unwrap().action, XdpAction::Pass);
        }
    };
    run(3);
    let read = filter.stats().unwrap();
    assert_eq!(read.passed.packets, 3);
    run(2);
    filter.subtract_stats(&read).unwrap();
    let after = filter.stats().unwrap();
    assert_eq!(after.passed.packets, 2, "the two counted after the read are kept");
    assert_eq!(after.passed.bytes, 2 * frame.len() as u64);
    // Taking off a read again (or a stale one) never wraps below zero.
    filter.subtract_stats(&read).unwrap();
    assert_eq!(filter.stats().unwrap().passed, xdpguard::Counter::default());
}

/// `stats --watch` follows a filter re-created under its pin directory:
/// the handle it opened first reads the old filter's maps, which nothing
/// counts in any more, so it reopens (saying so in one line) and shows the
/// new one's counters. With no filter there again, it stops with an error
/// naming the pin rather than showing frozen numbers.
#[test]
fn stats_watch_reopens_a_filter_re_created_under_its_pin() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Instant;
    use xdpguard::testing::frame::{Frame, DST_V4, PAYLOAD};

    let pin = ScratchDir::bpffs("watchre");
    let p = pin.arg();
    let frame = Frame::builder().ipv4("192.0.2.1".parse().unwrap(), DST_V4).udp(40000, 53).payload(PAYLOAD).build();
    let load = || Filter::builder().v4_capacity(64).v6_capacity(64).pin(p).load().expect("load the filter (root)");
    let run = |f: &Filter, n: u64| {
        for _ in 0..n {
            assert_eq!(f.test_run(frame.bytes()).unwrap().action, XdpAction::Pass);
        }
    };
    let first = load();
    run(&first, 3);

    let mut running = Running(
        // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_xdpguard)
        Command::new(XDPGUARD.path())
            .args(["stats", "--watch", "1", "--json", "--pin", p])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stats --watch"),
    );
    let child = &mut running.0;
    let (tx, rx) = mpsc::channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")));
        }
    });
    // Waits for a round showing `passed` packets; the rounds seen meanwhile.
    let wait_for = |passed: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Ok(v) = rx.recv_timeout(Duration::from_millis(200)) else { continue };
            let n = v["passed"]["packets"].as_u64().expect("passed.packets");
            seen.push(n);
            if n == passed {
                return;
            }
        }
        panic!("stats --watch never showed {passed} passed packets; it showed {seen:?}");
    };
    wait_for(3);

    // Re-created: removed, and a new filter pinned in the same directory.
    first.unpin().unwrap();
    let second = load();
    run(&second, 5);
    // (A round may show the old 3, or the new filter's 0 before it ran.)
    wait_for(5);

    // Removed for good: it stops, naming the pin, within its 10 s.
    second.unpin().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "stats --watch keeps running on a removed filter");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    eprintln!("{stderr}");
    assert!(!status.success(), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.contains("was re-created: showing the new one's counters")).count(),
        1,
        "one line for the re-creation: {stderr}"
    );
    assert!(stderr.contains(&format!("the filter pinned at {p} was removed or re-created")), "{stderr}");
    assert!(stderr.contains("stats --watch stops"), "{stderr}");
}

/// `top` shows what the rate limits dropped over each interval, exactly
/// (the filter's `rate_limited` counter, and each rate-limit rule's
/// `limited`), beside its busiest rules: a burst of 5 at 1/s and twelve
/// packets at once (through `BPF_PROG_TEST_RUN`), so most are over the
/// limit, and top's figure is the count the runs dropped, in JSON and in
/// its text.
#[test]
fn top_shows_the_rate_limited_drops() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    use xdpguard::testing::frame::{Frame, DST_V4, PAYLOAD};

    let pin = ScratchDir::bpffs("toplim");
    let p = pin.arg();
    let filter = Filter::builder().v4_capacity(64).v6_capacity(64).pin(p).load().expect("load the filter (root)");
    let cli = XDPGUARD;
    cli.ok(&["rule", "add", "--pin", p, "rate-limit 1/s burst 5 udp dport 53"]);
    let id = cli.json(&["rule", "list", "--pin", p, "--json"])["rules"][0]["id"].as_u64().unwrap();
    let frame = Frame::builder().ipv4("192.0.2.1".parse().unwrap(), DST_V4).udp(40000, 53).payload(PAYLOAD).build();

    // One report of `top` (2 s), with twelve packets sent once it holds
    // the events' lease (it reads its counters before taking it): its
    // stdout, and how many of the packets the filter dropped.
    let report = |json: bool| -> (String, u64) {
        let mut args = vec!["top", "--pin", p, "--interval", "2", "--iterations", "1"];
        if json {
            args.push("--json");
        }
        eprintln!("$ xdpguard {}", args.join(" "));
        let mut running = Running(
            // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_xdpguard)
            Command::new(XDPGUARD.path()).args(&args).stdout(Stdio::piped()).spawn().expect("start top"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !filter.events_lease_held() {
            assert!(running.0.try_wait().unwrap().is_none(), "top exited before reading");
            assert!(Instant::now() < deadline, "top never took the events' lease");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut dropped = 0;
        for _ in 0..12 {
            if filter.test_run(frame.bytes()).unwrap().action == XdpAction::Drop {
                dropped += 1;
            }
        }
        let mut text = String::new();
        running.0.stdout.take().unwrap().read_to_string(&mut text).expect("top's output (UTF-8)");
        let status = running.0.wait().expect("wait for top");
        eprintln!("{text}");
        assert!(status.success(), "top failed: {text}");
        (text, dropped)
    };

    let (text, dropped) = report(true);
    // A burst of 5: the rest over the limit (one more token if a second
    // passed between the runs).
    assert!((6..=7).contains(&dropped), "{dropped} of 12 dropped");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["rate_limited"]["packets"], dropped, "{v}");
    assert_eq!(v["rate_limited"]["bytes"], dropped * frame.len() as u64, "{v}");
    assert_eq!(v["rate_limited"]["pps"].as_f64(), Some(dropped as f64 / 2.0), "{v}");
    assert_eq!(v["would_drop_limit"]["packets"], 0, "{v}");
    assert_eq!(v["rules"][0]["id"], id, "{v}");
    assert_eq!(v["rules"][0]["packets"], 12, "{v}");
    assert_eq!(v["rules"][0]["limited"], dropped, "{v}");
    assert_eq!(filter.stats().unwrap().rate_limited.packets, dropped, "top's figure is the filter's counter");

    // Text: the line, and the rule's `limited` column.
    let (text, dropped) = report(false);
    assert!(dropped > 0, "the bucket had not refilled to 12");
    let line = text.lines().next().unwrap();
    assert_eq!(
        line,
        format!(
            "rate limits over 2.0 s (exact: filter counters): {dropped} dropped ({:.1}/s), 0 would-drop in monitor \
             mode (0.0/s)",
            dropped as f64 / 2.0
        )
    );
    let row = text.lines().find(|l| l.trim_start().starts_with(&format!("{id} "))).expect("the rule's row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[..4].join(" "), format!("{id} 12 {} {dropped}", 12 * frame.len()), "{row}");
    drop(filter);
}
