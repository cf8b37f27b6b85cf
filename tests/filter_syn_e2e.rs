//! The SYN guard end to end: a real TCP server behind the filter in cookie
//! mode, a spoofed SYN flood (hping3 --rand-source, its sources rewritten
//! into 203.0.113.0/24 by tests/common/spoof.rs) from an attacker
//! namespace, and a real client from another namespace that connects and
//! exchanges data during the flood.
//!
//! ```text
//! client (192.0.2.1, 2001:db8::1) --eth0-- server (192.0.2.2, 2001:db8::2; 198.51.100.2) --eth1-- attacker
//!                             filter on eth0 + eth1 (native), port 8080 in cookie mode,
//!                             nftables synproxy (xdpguard syn nft-rules --apply)
//! ```
//!
//! Asserts: every client connection (IPv4 and IPv6 in turn) succeeds and echoes its data; the
//! guard answered (almost) the whole flood with SYN-ACKs (XDP_TX) and
//! passed the client's cookie ACKs; the server's stack saw none of the
//! flood (its TCP PassiveOpens count only the client's connections, no
//! SYN cookies of its own were sent, no listen queue overflow or drop).
//!
//! Needs root, hping3 and nft; fails (never skips) without them.

mod common {
    pub mod cli;
    pub mod scratch;
    pub mod spoof;
}

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use xdpguard::testing::netns::*;
use xdpguard::{AttachMode, Filter};

const PORT: u16 = 8080;
const FLOOD: u32 = 20_000;
const CONNECTIONS: usize = 6;

/// The server namespace's TCP and TcpExt counters (/proc/net/snmp, netstat).
fn tcp_counters(ns: &NetNs) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for file in ["/proc/net/snmp", "/proc/net/netstat"] {
        let text = String::from_utf8(ns.exec(&["cat", file]).stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let (prefix, names) = names.split_once(':').unwrap();
            let (_, values) = values.split_once(':').unwrap();
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                out.insert(format!("{prefix}.{n}"), v.parse().unwrap_or(0));
            }
        }
    }
    out
}

#[test]
fn clients_connect_through_a_spoofed_syn_flood() {
    ensure_bpffs();
    let client = NetNs::new("sync");
    let server = NetNs::new("syns");
    let attacker = NetNs::new("syna");
    veth(&client, "eth0", &server, "eth0");
    veth(&attacker, "eth0", &server, "eth1");
    client.addr("eth0", "192.0.2.1/24");
    client.addr("eth0", "2001:db8::1/64");
    server.addr("eth0", "192.0.2.2/24");
    server.addr("eth0", "2001:db8::2/64");
    server.addr("eth1", "198.51.100.2/24");
    attacker.addr("eth0", "198.51.100.1/24");
    // A pass-through XDP program on the client's and the attacker's veth: a
    // veth kicks its peer's NAPI for XDP_TX frames (the SYN-ACKs) only when
    // the peer runs XDP; with GRO alone they wait for the next packet.
    let _peer_xdp = [&client, &attacker]
        .map(|ns| ns.run(|| xdpguard::Decap::builder().interface("eth0").attach().expect("pass-through XDP")));

    // The host's side of cookie mode, through the CLI: synproxy + the sysctl.
    let nft = Command::new("ip")
        .args(["netns", "exec", &server.name, XDPGUARD.path().to_str().unwrap()])
        .args(["syn", "nft-rules", "--port", &PORT.to_string(), "--mss", "1460", "--apply"])
        .output()
        .expect("run xdpguard syn nft-rules");
    assert!(nft.status.success(), "nft-rules --apply: {}", String::from_utf8_lossy(&nft.stderr));
    let loose = server.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
    assert_eq!(String::from_utf8_lossy(&loose.stdout).trim(), "0");

    let pin = ScratchDir::bpffs("syne2e");
    let pin_path = pin.path().to_path_buf();
    let filter = server.run(move || {
        Filter::builder()
            .interface("eth0")
            .interface("eth1")
            .mode(AttachMode::Native)
            .pin(&pin_path)
            .attach()
            .expect("attach the filter")
    });
    let out = XDPGUARD.run(&["syn", "protect", "--pin", pin.arg(), &PORT.to_string(), "--mode", "cookie"]);
    assert!(out.status.success());

    // The server: echoes what each connection sends, then closes it.
    let listener = server.run(|| TcpListener::bind(("::", PORT)).expect("bind the server"));
    let server_thread = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).expect("read");
            s.write_all(&buf[..n]).expect("echo");
        }
    });
    let before = tcp_counters(&server);

    common::spoof::confine(&attacker);
    // The flood: FLOOD spoofed SYNs at ~20,000 a second, bounded by count and time.
    let mut hping = Command::new("ip")
        .args(["netns", "exec", &attacker.name, "timeout", "60", "hping3", "-q", "-S", "--rand-source"])
        .args(["-p", &PORT.to_string(), "-c", &FLOOD.to_string(), "-i", "u50", "198.51.100.2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start hping3 (install hping3)");
    std::thread::sleep(Duration::from_millis(300));

    let results = client.run(|| {
        (0..CONNECTIONS)
            .map(|i| -> Result<(), String> {
                // IPv4 and IPv6 in turn.
                let addr: SocketAddr = if i % 2 == 0 {
                    SocketAddr::from(([192, 0, 2, 2], PORT))
                } else {
                    format!("[2001:db8::2]:{PORT}").parse().unwrap()
                };
                let mut s =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let msg = format!("hello {i} through the flood");
                s.write_all(msg.as_bytes()).map_err(|e| format!("write: {e}"))?;
                let mut buf = vec![0u8; msg.len()];
                s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
                if buf != msg.as_bytes() {
                    return Err(format!("echo {:?}", String::from_utf8_lossy(&buf)));
                }
                std::thread::sleep(Duration::from_millis(100));
                Ok(())
            })
            .collect::<Vec<_>>()
    });
    let flood_running = hping.try_wait().expect("hping3 status").is_none();
    let status = hping.wait().expect("wait for hping3");
    let mut err = String::new();
    hping.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // hping3 exits 1 when no reply reached it (the SYN-ACKs go to the
    // spoofed sources): only a timeout (124) or a failure to start is fatal.
    assert!(matches!(status.code(), Some(0 | 1)), "hping3 failed: {status}: {err}");
    assert!(err.contains(&format!("{FLOOD} packets transmitted")), "hping3 sent the whole flood: {err}");
    let after = tcp_counters(&server);

    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "client connection {i} during the flood: {r:?}");
    }
    assert!(flood_running, "the flood was still running when the clients were done");
    server_thread.join().expect("the server accepted every connection");

    let stats = filter.stats().unwrap();
    let port = filter.syn_guard().status().unwrap()[0];
    eprintln!("filter: {stats:?}\nport {PORT}: {port:?}");
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    for k in ["Tcp.PassiveOpens", "TcpExt.SyncookiesSent", "TcpExt.ListenDrops", "TcpExt.ListenOverflows"] {
        eprintln!("server {k}: +{}", delta(k));
    }
    let answered = stats.syn_cookies_sent.packets;
    assert!(
        answered >= u64::from(FLOOD) / 2 && answered <= u64::from(FLOOD) + CONNECTIONS as u64 * 3,
        "SYN-ACKs sent from XDP: {answered} for {FLOOD} flood SYNs and {CONNECTIONS} clients"
    );
    assert!(stats.syn_cookies_passed.packets >= CONNECTIONS as u64, "cookie ACKs passed: {stats:?}");
    assert_eq!(port.stats.cookies_ok, stats.syn_cookies_passed.packets);
    assert_eq!(stats.syn_dropped.packets, 0, "nothing unanswerable");
    // The server's stack saw the clients' connections only (synproxy opens
    // each one to the server once), never the flood.
    assert!(
        delta("Tcp.PassiveOpens") >= CONNECTIONS as u64 && delta("Tcp.PassiveOpens") <= CONNECTIONS as u64 + 2,
        "the server's stack opened {} connections for {CONNECTIONS} clients",
        delta("Tcp.PassiveOpens")
    );
    assert_eq!(delta("TcpExt.SyncookiesSent"), 0, "the server's own SYN cookies: it never saw a SYN flood");
    assert_eq!(delta("TcpExt.ListenOverflows"), 0);
    assert!(delta("TcpExt.ListenDrops") <= 1, "listen drops: {}", delta("TcpExt.ListenDrops"));

    let out = XDPGUARD.run(&["syn", "status", "--pin", pin.arg(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(v["ports"][0]["port"], PORT);
    assert!(v["ports"][0]["cookies_sent"].as_u64().unwrap() >= answered);
    // A bad policy is refused with its reason, nothing changed; then unprotect.
    let bad = XDPGUARD.run(&["syn", "protect", "--pin", pin.arg(), "9000", "--mode", "drop", "--threshold", "0"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("threshold of 0"));
    let out = XDPGUARD.run(&["syn", "unprotect", "--pin", pin.arg(), &PORT.to_string()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("unprotected"));
    let out = XDPGUARD.run(&["syn", "status", "--pin", pin.arg()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 port(s) protected"));
    filter.unpin().expect("unpin");
}
