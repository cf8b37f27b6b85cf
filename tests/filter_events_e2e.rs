//! Drop events end to end: the filter attached in native mode to the
//! server's veth, real UDP datagrams from the client's namespace, read by
//! the `xdpguard` CLI as its own process.
//!
//! - `xdpguard capture -w F --count N` writes a pcap file that
//!   `tcpdump -r F -nn` reads, with exactly the dropped datagrams: a
//!   blocklisted source and a rule-dropped port, each packet's captured
//!   length its first 128 bytes and its original length the frame's.
//! - `xdpguard events --json --count N` prints one parseable object per
//!   event: reason, rule or blocklist entry, addresses, ports, lengths.
//! - `xdpguard top` reports the rule's exact counter delta and the sampled
//!   source and entry.
//!
//! The CLI holds the events' lease while it runs; the test sends only once
//! the lease is held (`Filter::events_lease_held`), so no datagram goes
//! unsampled. Needs root and tcpdump (.ci/deps); fails, never skips.

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use xdpguard::testing::netns::*;
use xdpguard::{EventError, EventOptions, Filter};

const BLOCKED: &str = "192.0.2.4";
const RULED: &str = "192.0.2.3";

/// The client with the two extra sources, static neighbours both ways.
fn bed(tag: &str) -> Pair {
    let pair = Pair::new(tag);
    for a in ["192.0.2.3/24", "192.0.2.4/24"] {
        pair.client.addr("eth0", a);
    }
    pair.server.static_neighbours("eth0", &["192.0.2.1", RULED, BLOCKED], pair.client.mac("eth0"));
    pair.client.static_neighbours("eth0", &["192.0.2.2"], pair.server.mac("eth0"));
    pair
}

/// Sends one datagram of `size` payload bytes from `src`:`sport` to the
/// server's `dport`, from the client's namespace.
fn send(client: &NetNs, src: &'static str, sport: u16, dport: u16, size: usize) {
    client.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src.parse().unwrap(), sport)).expect("bind");
        sock.send_to(&vec![b'x'; size], "192.0.2.2:".to_owned() + &dport.to_string()).expect("send");
    });
}

/// Starts the CLI with `args`, stdout piped.
fn spawn(args: &[&str]) -> Child {
    eprintln!("$ xdpguard {}", args.join(" "));
    // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
    Command::new(XDPGUARD.path()).args(args).stdout(Stdio::piped()).spawn().expect("start the CLI")
}

/// Waits until the CLI holds the events' lease.
fn wait_for_lease(filter: &Filter, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !filter.events_lease_held() {
        assert!(child.try_wait().unwrap().is_none(), "the CLI exited before reading");
        assert!(Instant::now() < deadline, "the CLI never took the events' lease");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child) -> String {
    let out = child.wait_with_output().expect("wait for the CLI");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    eprintln!("{text}");
    assert!(out.status.success(), "the CLI failed: {text}");
    text
}

#[test]
fn capture_writes_a_pcap_tcpdump_reads_and_events_print_json() {
    let pair = bed("evt");
    let pin = ScratchDir::bpffs("evt");
    let p = pin.arg();
    let files = ScratchDir::new(std::env::temp_dir(), "evt");
    std::fs::create_dir_all(files.path()).unwrap();
    let cli = XDPGUARD;
    cli.ok(&["attach", "--iface", "eth0", "--mode", "native", "--pin", p, "--netns", &pair.server.name]);
    cli.ok(&["block", "--pin", p, "192.0.2.4/32", "203.0.113.0/24"]);
    let out = cli.ok(&["rule", "add", "--pin", p, "drop", "udp", "dport", "1900"]);
    let rule: u64 = out.split_whitespace().nth(2).unwrap().trim_end_matches(':').parse().unwrap();
    let filter = Filter::open_pinned(p).unwrap();

    // capture: two blocklisted datagrams (one longer than the snap length)
    // and two rule-dropped ones.
    let pcap = files.path().join("drops.pcap");
    let mut child = spawn(&["capture", "--pin", p, "-w", pcap.to_str().unwrap(), "--count", "4", "--timeout", "30"]);
    wait_for_lease(&filter, &mut child);
    send(&pair.client, BLOCKED, 40001, 7100, 20);
    send(&pair.client, BLOCKED, 40002, 7100, 300);
    send(&pair.client, RULED, 40003, 1900, 20);
    send(&pair.client, RULED, 40004, 1900, 20);
    finish(child);
    // check-deps: tcpdump
    let out = Command::new("tcpdump").args(["-r", pcap.to_str().unwrap(), "-nn", "-e"]).output().expect("run tcpdump");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("tcpdump:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tcpdump could not read the file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    let expect = [
        ("192.0.2.4.40001 > 192.0.2.2.7100: UDP, length 20", 62),
        ("192.0.2.4.40002 > 192.0.2.2.7100: UDP, length 300", 342),
        ("192.0.2.3.40003 > 192.0.2.2.1900: UDP, length 20", 62),
        ("192.0.2.3.40004 > 192.0.2.2.1900: UDP, length 20", 62),
    ];
    // (In any order: the four may be received on different CPUs.)
    for (want, frame_len) in expect {
        let line = lines.iter().find(|l| l.contains(want)).unwrap_or_else(|| panic!("no {want} in\n{text}"));
        assert!(line.contains(&format!("length {frame_len}:")), "{line}: the frame's length {frame_len}");
    }
    // The snap length: the long datagram's record carries 128 bytes of 342.
    let out = Command::new("tcpdump").args(["-r", pcap.to_str().unwrap(), "-nn", "-c", "2", "-x"]).output().unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    let second = hex.split("IP 192.0.2.4.40002").nth(1).expect("the long datagram");
    let bytes = second.lines().skip(1).flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace()).count();
    // tcpdump -x shows from the IP header: 128 - 14 bytes, two per group.
    assert_eq!(bytes, (128 - 14) / 2, "{second}");

    // events --json: the reason, the rule or the entry, the addresses.
    let mut child = spawn(&["events", "--pin", p, "--json", "--count", "2", "--timeout", "30"]);
    wait_for_lease(&filter, &mut child);
    send(&pair.client, BLOCKED, 40005, 7100, 20);
    send(&pair.client, RULED, 40006, 1900, 20);
    let text = finish(child);
    let mut events: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    events.sort_by_key(|e| e["sport"].as_u64());
    assert_eq!(events.len(), 2, "{text}");
    let server_ifindex = pair.server.ifindex("eth0");
    for (e, (reason, src, sport, dport)) in
        events.iter().zip([("blocked_v4", BLOCKED, 40005, 7100), ("rule_dropped", RULED, 40006, 1900)])
    {
        assert_eq!(e["reason"], reason, "{e}");
        assert_eq!(e["src"], src, "{e}");
        assert_eq!(e["dst"], "192.0.2.2", "{e}");
        assert_eq!(e["proto"], "udp", "{e}");
        assert_eq!(e["sport"], sport, "{e}");
        assert_eq!(e["dport"], dport, "{e}");
        assert_eq!(e["len"], 62, "{e}");
        assert_eq!(e["caplen"], 62, "{e}");
        assert_eq!(e["ifindex"], server_ifindex, "{e}");
        assert_eq!(e["iface"], "eth0", "the name in the filter's namespace: {e}");
    }
    assert_eq!(events[0]["entry"], "192.0.2.4/32", "the blocklist entry: {}", events[0]);
    assert_eq!(events[0]["rule"], serde_json::Value::Null);
    assert_eq!(events[1]["rule"], rule, "{}", events[1]);
    assert_eq!(events[1]["entry"], serde_json::Value::Null);

    // events, text: one line per event.
    let mut child = spawn(&["events", "--pin", p, "--count", "1", "--timeout", "30"]);
    wait_for_lease(&filter, &mut child);
    send(&pair.client, BLOCKED, 40007, 7100, 20);
    let text = finish(child);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(" blocked_v4 entry 192.0.2.4/32 192.0.2.4:40007 -> 192.0.2.2:7100 udp len 62"), "{text}");

    // A reader killed by a signal cannot give its lease back: another is
    // refused while it runs (one reader at a time), and the CLI waits the
    // stale lease out (2 s) and reads.
    let mut child = spawn(&["events", "--pin", p, "--count", "1", "--timeout", "30"]);
    wait_for_lease(&filter, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(filter.events_lease_held(), "the killed reader's lease");
    let err = filter.events(EventOptions::default()).unwrap_err();
    assert!(matches!(err, EventError::Busy { .. }), "{err:?}");
    let mut child = spawn(&["events", "--pin", p, "--count", "1", "--timeout", "30"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "the CLI waits for the lease, it does not give up");
    // A datagram every 200 ms until it has read one (the stale lease runs
    // about 2 s from the kill, and it takes it then).
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the CLI never read an event after the stale lease");
        send(&pair.client, BLOCKED, 40008, 7100, 20);
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = finish(child);
    assert!(text.contains("192.0.2.4:40008 -> 192.0.2.2:7100"), "{text}");

    // top: one report; the rule's exact delta, the sampled source and entry.
    let mut child = spawn(&["top", "--pin", p, "--interval", "3", "--iterations", "1", "--json"]);
    wait_for_lease(&filter, &mut child);
    for i in 0..3 {
        send(&pair.client, RULED, 40010 + i, 1900, 20);
    }
    send(&pair.client, BLOCKED, 40020, 7100, 20);
    let text = finish(child);
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert_eq!(v["rules"][0]["id"], rule, "{v}");
    assert_eq!(v["rules"][0]["packets"], 3, "{v}");
    assert_eq!(v["sources"][0]["source"], RULED, "{v}");
    assert_eq!(v["sources"][0]["events"], 3, "{v}");
    assert_eq!(v["entries"][0]["entry"], "192.0.2.4/32", "{v}");
    assert_eq!(v["entries"][0]["events"], 1, "{v}");

    drop(filter);
    assert!(!Filter::open_pinned(p).unwrap().events_lease_held(), "the CLI gave the lease back");
    cli.ok(&["detach", "--pin", p]);
}

/// `events` and `capture` end with what the event rate limit left out
/// while they read (the filter's `limited` count, taken before and after):
/// with a limit of 1 event a second per CPU, ten drops in a burst are
/// mostly left out, and the line says how many. `events` stopped by
/// SIGINT still says it, and exits 0 with the lease given back.
#[test]
fn events_and_capture_say_how_many_drops_the_rate_limit_left_out() {
    let pair = bed("evlim");
    let pin = ScratchDir::bpffs("evlim");
    let p = pin.arg();
    let files = ScratchDir::new(std::env::temp_dir(), "evlim");
    std::fs::create_dir_all(files.path()).unwrap();
    let cli = XDPGUARD;
    cli.ok(&["attach", "--iface", "eth0", "--mode", "native", "--pin", p, "--netns", &pair.server.name]);
    cli.ok(&["block", "--pin", p, "192.0.2.4/32"]);
    let filter = Filter::open_pinned(p).unwrap();
    let spawn_both = |args: &[&str]| -> Child {
        eprintln!("$ xdpguard {}", args.join(" "));
        // check-deps: built-here (a binary of this crate: CARGO_BIN_EXE_*)
        Command::new(XDPGUARD.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the CLI")
    };
    // The count the closing line gives, checked against what was shown.
    let left_out = |stderr: &str, shown: u64, what: &str| -> u64 {
        let line = stderr.lines().find(|l| l.contains("left out")).unwrap_or_else(|| panic!("no summary: {stderr}"));
        assert!(line.starts_with(&format!("{shown} {what}; meanwhile the event rate limit left out ")), "{line}");
        let n: u64 = line.split("left out ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        assert!(line.contains("and 0 were lost with the ring full"), "{line}");
        n
    };

    // events, stopped by SIGINT.
    let mut child = spawn_both(&["events", "--pin", p, "--rate", "1"]);
    wait_for_lease(&filter, &mut child);
    for i in 0..10 {
        send(&pair.client, BLOCKED, 41000 + i, 7100, 20);
    }
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "stopped by SIGINT, events exits 0: {stderr}");
    let shown = stdout.lines().count() as u64;
    let limited = left_out(&stderr, shown, "event(s) shown");
    // A burst of one per CPU passes (a second refill at most); every other
    // drop is counted.
    assert!((1..=3).contains(&shown), "{stdout}");
    assert_eq!(shown + limited, 10, "every drop shown or counted as left out: {stderr}");
    assert!(!filter.events_lease_held(), "the lease given back on SIGINT");

    // capture, stopped by its timeout (once the token bucket, emptied
    // above, has its one event back: a second at 1/s).
    std::thread::sleep(Duration::from_secs(2));
    let pcap = files.path().join("limited.pcap");
    let mut child =
        spawn_both(&["capture", "--pin", p, "-w", pcap.to_str().unwrap(), "--count", "10", "--timeout", "3"]);
    wait_for_lease(&filter, &mut child);
    for i in 0..10 {
        send(&pair.client, BLOCKED, 41100 + i, 7100, 20);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    let captured: u64 = stderr.split(" packet(s) written").next().unwrap().trim().parse().unwrap();
    let limited = left_out(&stderr, captured, "packet(s) captured");
    assert!((1..=3).contains(&captured), "{stderr}");
    assert_eq!(captured + limited, 10, "{stderr}");

    drop(filter);
    cli.ok(&["detach", "--pin", p]);
}
