//! Rules end to end, with real sockets across namespaces: the filter (and
//! its guard stage) attached in native mode to the server's veth.
//!
//! - The `xdpguard` CLI, each command its own process: named sets, a rule
//!   file (a bad one refused by line number, nothing applied), the DNS
//!   amplification recipe (UDP from source port 53 dropped unless from a
//!   listed resolver), rule insert/delete, per-rule and whole-filter
//!   monitor mode, counters, clear, detach.
//! - The library: "allow TCP 22 from the office only" and "drop SYN+FIN",
//!   with real TCP connections.
//!
//! Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod udp_echo;
}

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::cli::{refused, XDPGUARD};
use common::scratch::ScratchDir;
use common::udp_echo::UdpEcho;
use xdpguard::testing::lb_topology::connect_from;
use xdpguard::testing::netns::*;
use xdpguard::{AttachMode, Filter};

const ECHO_PORT: u16 = 7100;

/// Whether a datagram sent from `src`:`sport` to the echo server comes back
/// (a few tries). Runs in `client`.
fn udp_reaches(client: &NetNs, src: &str, sport: u16, tries: u32) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = if src.is_ipv4() { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    client.run(move || {
        let sock = UdpSocket::bind(SocketAddr::new(src, sport)).expect("bind the probe");
        sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut buf = [0u8; 64];
        for i in 0..tries {
            let token = format!("probe-{src}-{sport}-{i}");
            sock.send_to(token.as_bytes(), SocketAddr::new(dst, ECHO_PORT)).expect("send");
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

fn reaches(client: &NetNs, src: &str, sport: u16, why: &str) {
    assert!(udp_reaches(client, src, sport, 5), "{why}: {src} port {sport} should get through");
}

fn dropped(client: &NetNs, src: &str, sport: u16, why: &str) {
    assert!(!udp_reaches(client, src, sport, 2), "{why}: {src} port {sport} should be dropped");
}

/// The client with extra addresses (a resolver and an ordinary host, both
/// families) and static neighbours both ways (no ARP or ND to wait for).
fn bed(tag: &str) -> Pair {
    let pair = Pair::new(tag);
    for a in ["192.0.2.3/24", "192.0.2.4/24", "2001:db8::3/64", "2001:db8::4/64"] {
        pair.client.addr("eth0", a);
    }
    let clients = ["192.0.2.1", "192.0.2.3", "192.0.2.4", "2001:db8::1", "2001:db8::3", "2001:db8::4"];
    pair.server.static_neighbours("eth0", &clients, pair.client.mac("eth0"));
    pair.client.static_neighbours("eth0", &["192.0.2.2", "2001:db8::2"], pair.server.mac("eth0"));
    // IPv6 addresses are usable at once (no duplicate address detection wait).
    for ns in [&pair.client, &pair.server] {
        ns.sysctl("net.ipv6.conf.eth0.accept_dad", "0");
    }
    pair
}

fn rule_hits(v: &serde_json::Value, position: usize) -> u64 {
    v["rules"][position]["hits"]["packets"].as_u64().unwrap_or_else(|| panic!("rule {position} in {v}"))
}

#[test]
fn the_cli_runs_the_amplification_recipe_on_real_traffic() {
    let pair = bed("rcli");
    let _echo = UdpEcho::start(&pair.server, ECHO_PORT);
    let cli = XDPGUARD;
    let pin = ScratchDir::bpffs("rcli");
    let p = pin.arg();
    let files = ScratchDir::new(std::env::temp_dir(), "rcli");
    std::fs::create_dir_all(files.path()).unwrap();
    reaches(&pair.client, "192.0.2.4", 53, "no filter yet");

    cli.ok(&["attach", "--iface", "eth0", "--mode", "native", "--pin", p, "--netns", &pair.server.name]);
    let out = cli.ok(&["set", "create", "--pin", p, "resolvers"]);
    assert!(out.contains("created set resolvers"), "{out}");
    cli.ok(&["set", "add", "--pin", p, "resolvers", "192.0.2.3", "2001:db8::3"]);
    let v = cli.json(&["set", "list", "--pin", p, "--json"]);
    assert_eq!(v["sets"]["resolvers"], serde_json::json!(["192.0.2.3/32", "2001:db8::3/128"]), "{v}");

    // A rule file with bad lines: each named by number, nothing applied.
    let bad = files.path().join("bad.rules");
    std::fs::write(
        &bad,
        "# amplification\ndrop udp sport 53 not from set resolvers\ndrop udp sport 99999\n\ndrop tcp flags syn,fun\n",
    )
    .unwrap();
    let out = cli.run(&["rule", "replace", "--pin", p, "--file", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("line 3") && err.contains("line 5") && !err.contains("line 2"),
        "{err}"
    );
    assert!(err.contains("nothing applied"), "{err}");
    let v = cli.json(&["rule", "list", "--pin", p, "--json"]);
    assert_eq!(v["rules"].as_array().map(Vec::len), Some(0), "{v}");
    reaches(&pair.client, "192.0.2.4", 53, "the bad file applied nothing");

    // A set no one created: named by line with the bad lines, in one
    // report, nothing applied.
    let unknown = files.path().join("unknown.rules");
    std::fs::write(&unknown, "drop udp dport 1900\ndrop tcp from set nosuch\ndrop tcp flags syn,fni\n").unwrap();
    let out = cli.run(&["rule", "replace", "--pin", p, "--file", unknown.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2: no set named `nosuch`"), "{err}");
    assert!(err.contains("xdpguard set create nosuch") && err.contains("line 3:"), "{err}");
    assert!(err.contains("2 bad line(s)") && err.contains("nothing applied"), "{err}");
    let out = cli.run(&["rule", "add", "--pin", p, "--file", unknown.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 bad line(s)"), "{out:?}");

    let good = files.path().join("good.rules");
    std::fs::write(&good, "drop udp sport 53 not from set resolvers  # amplification\ndrop udp dport 1900,11211\n")
        .unwrap();
    let out = cli.ok(&["rule", "replace", "--pin", p, "--file", good.to_str().unwrap()]);
    assert!(out.contains("2 now (2 added"), "{out}");
    dropped(&pair.client, "192.0.2.4", 53, "UDP from port 53, not a resolver");
    dropped(&pair.client, "2001:db8::4", 53, "UDP from port 53 over IPv6, not a resolver");
    reaches(&pair.client, "192.0.2.3", 53, "the listed resolver");
    reaches(&pair.client, "2001:db8::3", 53, "the listed IPv6 resolver");
    reaches(&pair.client, "192.0.2.4", 5353, "another source port");
    let v = cli.json(&["rule", "list", "--pin", p, "--json"]);
    assert_eq!(v["rules"][0]["rule"], "drop udp not from set resolvers sport 53", "{v}");
    assert!(rule_hits(&v, 0) >= 4, "two tries each from two sources: {v}");
    assert_eq!(rule_hits(&v, 1), 0, "{v}");
    let first_id = v["rules"][0]["id"].as_u64().unwrap().to_string();

    // A pass rule inserted first lets one host through; deleting it undoes that.
    let out = cli.ok(&["rule", "add", "--pin", p, "--at", "0", "pass", "udp", "from", "192.0.2.4"]);
    let id = out.split_whitespace().nth(2).unwrap().trim_end_matches(':').to_owned();
    assert!(out.contains("pass udp from 192.0.2.4/32"), "{out}");
    reaches(&pair.client, "192.0.2.4", 53, "passed by the inserted rule");
    // Several ids, one unknown: nothing removed.
    let out = cli.run(&["rule", "del", "--pin", p, &id, "999"]);
    refused(&out, &["no rule with id 999", "nothing was removed"]);
    reaches(&pair.client, "192.0.2.4", 53, "the pass rule stays");
    cli.ok(&["rule", "del", "--pin", p, &id]);
    dropped(&pair.client, "192.0.2.4", 53, "the pass rule is gone");

    // The whole filter in monitor mode: counted as would-drop, passed.
    cli.ok(&["monitor", "--pin", p, "on"]);
    let before = cli.json(&["stats", "--pin", p, "--json"])["would_drop_rule"]["packets"].as_u64().unwrap();
    reaches(&pair.client, "192.0.2.4", 53, "monitor mode drops nothing");
    let after = cli.json(&["stats", "--pin", p, "--json"])["would_drop_rule"]["packets"].as_u64().unwrap();
    assert!(after > before, "would-drop counted: {before} -> {after}");
    assert_eq!(cli.json(&["status", "--pin", p, "--json"])["monitor"], true);
    cli.ok(&["monitor", "--pin", p, "off"]);
    dropped(&pair.client, "192.0.2.4", 53, "monitor mode off");

    // One rule in monitor mode.
    let out = cli.ok(&["rule", "monitor", "--pin", p, &first_id]);
    assert!(out.contains("monitor drop udp"), "{out}");
    reaches(&pair.client, "192.0.2.4", 53, "the rule only counts");
    cli.ok(&["rule", "monitor", "--pin", p, &first_id, "--off"]);
    dropped(&pair.client, "192.0.2.4", 53, "the rule drops again");

    // A set a rule names cannot be deleted; rules clear; then it can.
    let out = cli.run(&["set", "delete", "--pin", p, "resolvers"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("named by 1 rule"), "{out:?}");
    let out = cli.ok(&["rule", "clear", "--pin", p]);
    assert!(out.contains("removed 2 rules"), "{out}");
    reaches(&pair.client, "192.0.2.4", 53, "no rules");
    cli.ok(&["set", "delete", "--pin", p, "resolvers"]);
    let v = cli.json(&["status", "--pin", p, "--json"]);
    assert_eq!((v["rules"].as_u64(), v["sets"].as_array().map(Vec::len)), (Some(0), Some(0)), "{v}");

    // A rule added alone is live at once; detach removes everything.
    // A drop rule for every TCP packet from anywhere (SSH included) needs
    // --force, as `block 0.0.0.0/0` does; nothing is added without it.
    // However it is written.
    for all in [
        &["drop"][..],
        &["drop", "ipv4", "tcp"],
        &["drop", "tcp", "dport", "0-65535"],
        &["drop", "tcp", "sport", "0-65535", "from", "0.0.0.0/0"],
        &["drop", "tcp", "to", "::/0"],
        &["drop", "tcp", "dport", "1-65535"],
        &["drop", "tcp", "dport", "1-1000,1001-65535"],
        &["drop", "tcp", "not", "from", "192.0.2.1"],
        &["drop", "tcp", "not", "to", "192.0.2.99"],
        &["drop", "tcp", "not", "fragment"],
    ] {
        let mut args = vec!["rule", "add", "--pin", p];
        args.extend_from_slice(all);
        let out = cli.run(&args);
        assert!(!out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing rule") && err.contains("SSH") && err.contains("--force"), "{err}");
    }
    // From a file, the refusal names the rule's line.
    let file = std::env::temp_dir().join(format!("xdpg-refused-{}.rules", std::process::id()));
    std::fs::write(&file, "pass udp dport 53\n# every TCP packet:\ndrop tcp\n").unwrap();
    let out = cli.run(&["rule", "replace", "--pin", p, "--file", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`drop tcp` (line 3)") && err.contains("--force"), "{err}");
    // Dropping IPv6 neighbour discovery from anywhere would stop IPv6.
    // Also to destinations that take it (link-local multicast, or all but
    // a unicast range); a destination clear of ff02::/16 is accepted.
    // So is Packet Too Big (path-MTU discovery), and router discovery.
    for words in [
        &["drop", "icmpv6"][..],
        &["drop", "icmpv6", "to", "ff02::/16"],
        &["drop", "icmpv6", "not", "to", "2001:db8::/32"],
        &["drop", "icmpv6", "type", "2"],
        &["drop", "icmpv6", "type", "0-132,138-255"],
        &["drop", "icmpv6", "type", "134"],
    ] {
        let out = cli.run(&[&["rule", "add", "--pin", p][..], words].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("neighbour discovery") && err.contains("--force"),
            "{words:?}: {err}"
        );
    }
    cli.ok(&["rule", "add", "--pin", p, "drop", "icmpv6", "to", "2001:db8:dead::/48"]);
    // What the refusal suggests is accepted.
    cli.ok(&["rule", "add", "--pin", p, "drop", "icmpv6", "type", "128"]);
    // Fragments alone cut neither an SSH session nor neighbour discovery
    // (which refuses fragments): no --force.
    for words in [&["drop", "fragment"][..], &["drop", "tcp", "fragment"], &["drop", "icmpv6", "fragment"]] {
        cli.ok(&[&["rule", "add", "--pin", p][..], words].concat());
    }
    // Some ports, or one port from all but one source: accepted.
    cli.ok(&["rule", "add", "--pin", p, "drop", "tcp", "dport", "8000-9000"]);
    cli.ok(&["rule", "add", "--pin", p, "drop", "tcp", "dport", "23", "not", "from", "192.0.2.1"]);
    cli.ok(&["rule", "clear", "--pin", p]);
    // `flags none` is a NULL scan's packets, not every TCP packet.
    let _listener = pair.server.run(|| TcpListener::bind(("::", 9009)).expect("listen"));
    cli.ok(&["rule", "add", "--pin", p, "drop", "tcp", "flags", "none"]);
    assert!(tcp_connects(&pair.client, "192.0.2.4", 9009), "TCP with flags gets through `flags none`");
    cli.ok(&["rule", "clear", "--pin", p]);
    assert_eq!(cli.json(&["status", "--pin", p, "--json"])["rules"], 0);
    // (Options may follow the rule's words: `--pin` is not read as one.)
    cli.ok(&["rule", "add", "drop", "udp", "sport", "53", "--pin", p]);
    dropped(&pair.client, "192.0.2.3", 53, "every port-53 source now");
    cli.ok(&["detach", "--pin", p]);
    assert!(!pin.path().exists(), "detach removed the pin directory, the guard's included");
    reaches(&pair.client, "192.0.2.3", 53, "detached");
}

/// Whether a TCP connection from `src` to the server's port gets through.
fn tcp_connects(client: &NetNs, src: &str, port: u16) -> bool {
    let src: IpAddr = src.parse().unwrap();
    let dst: IpAddr = if src.is_ipv4() { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    client.run(move || {
        connect_from(SocketAddr::new(src, 0), SocketAddr::new(dst, port), Duration::from_millis(700)).is_ok()
    })
}

#[test]
fn ssh_from_the_office_only_with_real_tcp_connections() {
    let pair = bed("rtcp");
    let listeners: Vec<TcpListener> =
        pair.server.run(|| [22u16, 80].iter().map(|&p| TcpListener::bind(("::", p)).expect("listen")).collect());
    // Attached from inside the server's namespace, where eth0 is.
    let filter =
        pair.server.run(|| Filter::builder().interface("eth0").mode(AttachMode::Native).attach().expect("attach"));
    let _ = &listeners;
    assert!(tcp_connects(&pair.client, "192.0.2.4", 22), "no rules yet");
    filter
        .rules()
        .replace(
            ["pass tcp dport 22 from 192.0.2.3", "pass tcp dport 22 from 2001:db8::3", "drop tcp dport 22"]
                .iter()
                .map(|r| r.parse().unwrap()),
        )
        .unwrap();
    assert!(tcp_connects(&pair.client, "192.0.2.3", 22), "the office");
    assert!(tcp_connects(&pair.client, "2001:db8::3", 22), "the office, IPv6");
    assert!(!tcp_connects(&pair.client, "192.0.2.4", 22), "not the office");
    assert!(!tcp_connects(&pair.client, "2001:db8::4", 22), "not the office, IPv6");
    assert!(tcp_connects(&pair.client, "192.0.2.4", 80), "another port");
    let list = filter.rules().list().unwrap();
    assert!(list[0].hits.packets >= 3, "the handshake's packets from the office: {list:?}");
    assert!(list[2].hits.packets >= 1, "the refused SYNs: {list:?}");
    let stats = filter.stats().unwrap();
    assert!(stats.rule_dropped.packets >= 2 && stats.rule_passed.packets >= 6, "{stats:?}");

    // SYN+FIN never opens a connection; the filter drops it before the stack.
    filter.rules().add("drop tcp flags syn,fin".parse().unwrap()).unwrap();
    assert!(tcp_connects(&pair.client, "192.0.2.4", 80), "a plain SYN still connects");
    let before = filter.rules().list().unwrap()[3].hits.packets;
    let sent = pair.client.exec(&["python3", "-c", SYN_FIN]);
    assert!(sent.status.success(), "{sent:?}");
    let after = filter.rules().list().unwrap()[3].hits.packets;
    assert_eq!(after - before, 3, "the three SYN+FIN probes were dropped by the rule");
}

/// Three raw SYN+FIN segments to 192.0.2.2:80 (python3 is on every Debian
/// machine; a raw socket needs no other tool).
const SYN_FIN: &str = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind(("192.0.2.4", 0))
src, dst = socket.inet_aton("192.0.2.4"), socket.inet_aton("192.0.2.2")
for port in (40001, 40002, 40003):
    hdr = struct.pack("!HHIIBBHHH", port, 80, 1, 0, 5 << 4, 0x03, 1024, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(hdr))
    data = pseudo + hdr
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    hdr = hdr[:16] + struct.pack("!H", ~total & 0xFFFF) + hdr[18:]
    s.sendto(hdr, ("192.0.2.2", 0))
"#;
