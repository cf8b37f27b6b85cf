//! The SYN guard end to end, in its two modes. Cookie mode: a real TCP
//! server behind the filter, a spoofed SYN flood (hping3 --rand-source, its
//! sources rewritten into 203.0.113.0/24 by tests/common/spoof.rs) from an
//! attacker namespace, and a real client from another namespace that
//! connects and exchanges data during the flood. Drop mode: the same bed,
//! a client known from a handshake before the flood connects through it, a
//! new one is refused until it ends.
//!
//! ```text
//! client (192.0.2.1, 2001:db8::1) --eth0-- server (192.0.2.2, 2001:db8::2; 198.51.100.2) --eth1-- attacker
//!                             filter on eth0 + eth1 (native), the port in cookie mode
//!                             (nftables synproxy: xdpguard syn nft-rules --apply) or drop mode
//! ```
//!
//! Cookie mode asserts: every client connection (IPv4 and IPv6 in turn)
//! succeeds and echoes its data; the guard answered (almost) the whole
//! flood with SYN-ACKs (XDP_TX) and passed the client's cookie ACKs; the
//! server's stack saw none of the flood (its TCP PassiveOpens count only
//! the client's connections, no SYN cookies of its own were sent, no listen
//! queue overflow or drop). Drop mode asserts: the known client's
//! connections succeed during the flood (its SYNs passed as known), the
//! new source's connect times out during it and succeeds after it, at
//! least 90% of the flood is dropped in XDP, the server's stack receives
//! under a tenth of it, and no source becomes known during the flood.
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
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use common::cli::XDPGUARD;
use common::scratch::ScratchDir;
use xdpguard::testing::netns::*;
use xdpguard::{AttachMode, Filter};

/// The tests here flood and time clients against the flood on a 2-core
/// machine: run them one at a time (two floods at once starved the
/// clients of one).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

const PORT: u16 = 8080;
/// At the flood's ~20,000 a second (`-i u50`), at least 3 s: longer than
/// the clients' phase (~1 s, six connections 100 ms apart after 300 ms),
/// so the flood is still running when they are done even when hping3 keeps
/// the requested rate. Bounded by hping3's `-c` and `timeout 60`.
const FLOOD: u32 = 60_000;
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

/// The three namespaces of the module's drawing, their addresses, and the
/// filter attached (native) and pinned in the server's.
struct Bed {
    client: NetNs,
    server: NetNs,
    attacker: NetNs,
    pin: ScratchDir,
    filter: Filter,
}

impl Bed {
    /// Namespaces `{tag}c`, `{tag}s` (a [`Pair`]) and `{tag}a`.
    fn new(tag: &str) -> Bed {
        ensure_bpffs();
        let Pair { client, server } = Pair::new(tag);
        let attacker = NetNs::new(&format!("{tag}a"));
        veth(&attacker, "eth0", &server, "eth1");
        server.addr("eth1", "198.51.100.2/24");
        attacker.addr("eth0", "198.51.100.1/24");
        common::spoof::confine(&attacker);
        let pin = ScratchDir::bpffs(&format!("{tag}e2e"));
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
        Bed { client, server, attacker, pin, filter }
    }

    /// The host's side of cookie mode for `port`, through the CLI:
    /// synproxy + the sysctl (with each protected port's own options, read
    /// from the pin directory, and `port`'s the defaults' if unprotected).
    fn synproxy(&self, port: u16) {
        let nft = Command::new("ip")
            // check-deps: built-here (CARGO_BIN_EXE_xdpguard)
            .args(["netns", "exec", &self.server.name, XDPGUARD.path().to_str().unwrap()])
            .args([
                "syn",
                "nft-rules",
                "--pin",
                self.pin.arg(),
                "--port",
                &port.to_string(),
                "--mss",
                "1460",
                "--apply",
            ])
            .output()
            .expect("run xdpguard syn nft-rules");
        assert!(nft.status.success(), "nft-rules --apply: {}", String::from_utf8_lossy(&nft.stderr));
        let loose = self.server.exec(&["cat", "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"]);
        assert_eq!(String::from_utf8_lossy(&loose.stdout).trim(), "0");
    }

    /// `xdpguard syn protect` with `args` after the pin directory.
    fn protect(&self, args: &[&str]) {
        let mut all = vec!["syn", "protect", "--pin", self.pin.arg()];
        all.extend_from_slice(args);
        let out = XDPGUARD.run(&all);
        assert!(out.status.success(), "syn protect {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A server on `port` that echoes what each of `connections`
    /// connections sends, then closes it.
    fn echo_server(&self, port: u16, connections: usize) -> std::thread::JoinHandle<()> {
        let listener = self.server.run(move || TcpListener::bind(("::", port)).expect("bind the server"));
        std::thread::spawn(move || {
            for _ in 0..connections {
                let (mut s, _) = listener.accept().expect("accept");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).expect("read");
                s.write_all(&buf[..n]).expect("echo");
            }
        })
    }

    /// `count` spoofed SYNs to `port`, one every `interval_us`, bounded by
    /// count and time.
    fn flood(&self, port: u16, count: u32, interval_us: u32) -> Flood {
        self.flood_of("-S", port, count, interval_us)
    }

    /// The same with hping3's TCP flag option `flag` (`-S` SYNs, `-A` ACKs).
    fn flood_of(&self, flag: &str, port: u16, count: u32, interval_us: u32) -> Flood {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.attacker.name, "timeout", "60", "hping3", "-q", flag, "--rand-source"])
            .args(["-p", &port.to_string(), "-c", &count.to_string(), "-i", &format!("u{interval_us}"), "198.51.100.2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start hping3 (install hping3)");
        Flood { child, count }
    }
}

/// A running hping3 flood.
struct Flood {
    child: std::process::Child,
    count: u32,
}

impl Flood {
    fn running(&mut self) -> bool {
        self.child.try_wait().expect("hping3 status").is_none()
    }

    /// Waits for the flood's end; panics unless hping3 sent all of it.
    fn finish(mut self) {
        let status = self.child.wait().expect("wait for hping3");
        let mut err = String::new();
        self.child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        // hping3 exits 1 when no reply reached it (the SYN-ACKs go to the
        // spoofed sources): only a timeout (124) or a failure to start is fatal.
        assert!(matches!(status.code(), Some(0 | 1)), "hping3 failed: {status}: {err}");
        assert!(err.contains(&format!("{} packets transmitted", self.count)), "hping3 sent the whole flood: {err}");
    }
}

/// One connection to `addr` (from the calling thread's namespace) within
/// `timeout`, `msg` sent and echoed back.
fn echo(addr: SocketAddr, msg: &str, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(msg.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    if buf != msg.as_bytes() {
        return Err(format!("echo {:?}", String::from_utf8_lossy(&buf)));
    }
    Ok(())
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, 2], port))
}

fn v6(port: u16) -> SocketAddr {
    format!("[2001:db8::2]:{port}").parse().unwrap()
}

#[test]
fn clients_connect_through_a_spoofed_syn_flood() {
    let _turn = serial();
    let bed = Bed::new("syn");
    let Bed { client, server, attacker, pin, filter } = &bed;
    // A pass-through XDP program on the client's and the attacker's veth: a
    // veth kicks its peer's NAPI for XDP_TX frames (the SYN-ACKs) only when
    // the peer runs XDP; with GRO alone they wait for the next packet.
    let _peer_xdp = [client, attacker]
        .map(|ns| ns.run(|| xdpguard::Decap::builder().interface("eth0").attach().expect("pass-through XDP")));

    bed.synproxy(PORT);
    bed.protect(&[&PORT.to_string(), "--mode", "cookie"]);
    let server_thread = bed.echo_server(PORT, CONNECTIONS);
    let before = tcp_counters(server);

    // The flood: FLOOD spoofed SYNs at up to ~20,000 a second.
    let mut flood = bed.flood(PORT, FLOOD, 50);
    std::thread::sleep(Duration::from_millis(300));

    let results = client.run(|| {
        (0..CONNECTIONS)
            .map(|i| {
                // IPv4 and IPv6 in turn.
                let addr = if i % 2 == 0 { v4(PORT) } else { v6(PORT) };
                let r = echo(addr, &format!("hello {i} through the flood"), Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(100));
                r
            })
            .collect::<Vec<_>>()
    });
    let flood_running = flood.running();
    flood.finish();
    let after = tcp_counters(server);

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
    let bad = XDPGUARD.run(&["syn", "protect", "--pin", pin.arg(), "9000", "--mode", "drop", "--wscale", "7"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("window scale is for cookie mode"));
    // Each mode's options are refused in the other, as [[filter.syn]] refuses them.
    for (args, reason) in [
        (&["--mode", "drop", "--mss-only"][..], "--mss-only is for --mode cookie"),
        (&["--mode", "drop", "--mss", "1400"][..], "MSS is for cookie mode"),
        (&["--mode", "drop", "--drop-untracked-acks"][..], "untracked ACKs is for cookie mode"),
        (&["--mode", "cookie", "--threshold", "10"][..], "--threshold is for --mode drop"),
    ] {
        let bad = XDPGUARD.run(&[&["syn", "protect", "--pin", pin.arg(), "9000"][..], args].concat());
        let stderr = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && stderr.contains(reason), "{args:?}: {stderr}");
    }
    // The synproxy rules cover every cookie-mode port of the filter, and
    // those given: applying them for one more port keeps the others.
    XDPGUARD.ok(&["syn", "protect", "--pin", pin.arg(), "9443", "--mode", "cookie"]);
    XDPGUARD.ok(&["syn", "protect", "--pin", pin.arg(), "9022", "--mode", "drop"]);
    let rules = XDPGUARD.ok(&["syn", "nft-rules", "--pin", pin.arg(), "--port", "9001"]);
    assert!(rules.contains(&format!("tcp dport {{ {PORT}, 9001, 9443 }} tcp flags syn notrack")), "{rules}");
    assert!(!rules.contains("9022"), "a drop-mode port needs no synproxy: {rules}");
    XDPGUARD.ok(&["syn", "unprotect", "--pin", pin.arg(), "9443"]);
    XDPGUARD.ok(&["syn", "unprotect", "--pin", pin.arg(), "9022"]);
    let bad = XDPGUARD.run(&["syn", "nft-rules", "--pin", pin.arg(), "--mss", "100"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("536"), "MSS checked");
    let out = XDPGUARD.run(&["syn", "unprotect", "--pin", pin.arg(), &PORT.to_string()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("unprotected"));
    let out = XDPGUARD.run(&["syn", "status", "--pin", pin.arg()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 port(s) protected"));
    let Bed { filter, .. } = bed;
    filter.unpin().expect("unpin");
}

/// Drop mode: a client that completed a handshake while the port was quiet
/// is known, and connects through a spoofed flood far above the threshold;
/// a source never seen (the client's IPv6 address) is refused while the
/// flood lasts and connects once it is over; the server's stack sees
/// almost none of the flood. (No synproxy: drop mode needs nothing on the
/// host.)
#[test]
fn known_clients_connect_through_a_flood_in_drop_mode_and_new_ones_after_it() {
    const DROP_PORT: u16 = 8081;
    const THRESHOLD: u32 = 200;
    // ~10,000 SYNs a second for about five seconds: the clients are done
    // within three (the wait, the known connections, the new one's 1.5 s).
    const DROP_FLOOD: u32 = 50_000;
    const KNOWN: usize = 3;
    let _turn = serial();
    let bed = Bed::new("synd");
    let Bed { client, server, filter, .. } = &bed;
    bed.protect(&[&DROP_PORT.to_string(), "--mode", "drop", "--threshold", &THRESHOLD.to_string()]);
    // One connection while the port is quiet, KNOWN through the flood, the
    // new source's after it.
    let server_thread = bed.echo_server(DROP_PORT, 1 + KNOWN + 1);

    let first = client.run(|| echo(v4(DROP_PORT), "hello before the flood", Duration::from_secs(5)));
    assert_eq!(first, Ok(()), "the first connection, the port quiet");
    let known_sources = || {
        let out = XDPGUARD.run(&["syn", "status", "--pin", bed.pin.arg(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        v["known_sources"].as_u64().expect("known_sources")
    };
    assert_eq!(known_sources(), 1, "the client, known from its handshake's ACK");
    let before = tcp_counters(server);
    let mut flood = bed.flood(DROP_PORT, DROP_FLOOD, 100);
    // The port's rate is the last second's, estimated from one-second
    // windows: well over the threshold within the first of them.
    std::thread::sleep(Duration::from_millis(1200));
    let (known, newcomer) = client.run(|| {
        let known: Vec<_> = (0..KNOWN)
            .map(|i| echo(v4(DROP_PORT), &format!("known {i} through the flood"), Duration::from_secs(5)))
            .collect();
        // Its SYN and the retransmit a second later are both dropped.
        let newcomer = echo(v6(DROP_PORT), "new during the flood", Duration::from_millis(1500));
        (known, newcomer)
    });
    let flood_running = flood.running();
    flood.finish();
    let after = tcp_counters(server);
    let status = filter.syn_guard().status().unwrap()[0];

    for (i, r) in known.iter().enumerate() {
        assert_eq!(r, &Ok(()), "known client's connection {i} during the flood");
    }
    assert!(flood_running, "the flood was still running when the clients were done");
    let refused = newcomer.expect_err("a source never seen connected during the flood");
    assert!(refused.contains("timed out"), "the new source's connect: {refused}");
    eprintln!("port {DROP_PORT}: {status:?}");
    assert!(status.stats.known_passed >= KNOWN as u64, "known SYNs passed over the threshold: {status:?}");
    // All but the flood's first moments (under the threshold) are dropped
    // in XDP, counted by the filter and the port alike.
    let dropped = filter.stats().unwrap().syn_dropped.packets;
    assert!(dropped >= u64::from(DROP_FLOOD) * 9 / 10, "{dropped} of {DROP_FLOOD} flood SYNs dropped");
    assert_eq!(status.stats.dropped, dropped);
    assert_eq!(known_sources(), 1, "no source became known during the flood");
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert!(
        delta("Tcp.InSegs") < u64::from(DROP_FLOOD) / 10,
        "the server's stack received {} TCP segments during a flood of {DROP_FLOOD}",
        delta("Tcp.InSegs")
    );

    // The flood over, the port's rate falls under the threshold within two
    // windows, and the new source connects.
    std::thread::sleep(Duration::from_millis(2500));
    let later = client.run(|| echo(v6(DROP_PORT), "new after the flood", Duration::from_secs(5)));
    assert_eq!(later, Ok(()), "the new source, the flood over");
    assert_eq!(known_sources(), 2, "the new source known from its handshake");
    server_thread.join().expect("the server accepted every connection");
}

/// What `TCP_INFO` says of a connection's options: (the window scale it
/// sends by, the one it receives by, SACK on, timestamps on). (`ss -ti`
/// would say the same, but Debian 12's does not print `ts` and `sack` on
/// Linux 6.18.)
fn tcp_info(s: &TcpStream) -> (u8, u8, bool, bool) {
    // struct tcp_info starts: state, ca_state, retransmits, probes, backoff,
    // options (TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2), then snd_wscale:4,
    // rcv_wscale:4 in one byte.
    let mut info = [0u8; 256];
    let mut len = info.len() as nix::libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; getsockopt writes at most
    // that many and sets `len` to what it wrote.
    let rc = unsafe {
        nix::libc::getsockopt(
            s.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert!(rc == 0 && len >= 7, "getsockopt(TCP_INFO): {}", std::io::Error::last_os_error());
    (info[6] & 0xF, info[6] >> 4, info[5] & 2 != 0, info[5] & 1 != 0)
}

/// Cookie mode keeps TCP's options: a connection opened through an XDP
/// cookie has window scaling, SACK and timestamps on both ends, the
/// client's window scale reaching the server through the cookie's
/// timestamp (synproxy decodes it from the ACK's echo), and a transfer of
/// a few MiB each way through synproxy's sequence and timestamp rewriting
/// arrives intact. IPv4 and IPv6 in turn. Opted into with `--wscale` (the
/// default is the MSS alone: see
/// `a_server_that_speaks_first_waits_for_no_retransmit`); the client
/// speaks first here, as the options need.
#[test]
fn cookie_connections_keep_window_scaling_sack_and_timestamps() {
    const OPT_PORT: u16 = 8082;
    const UP: usize = 1 << 20;
    const DOWN: usize = 4 << 20;
    let _turn = serial();
    let pattern = |i: usize| (i * 7 + i / 251) as u8;
    let bed = Bed::new("syno");
    let Bed { client, server, filter, .. } = &bed;
    let _peer_xdp = client.run(|| xdpguard::Decap::builder().interface("eth0").attach().expect("pass-through XDP"));
    // The server namespace's own window scale, offered by the guard and
    // (nft-rules reads the port's policy) by synproxy.
    let wscale = server.run(xdpguard::host_wscale);
    bed.protect(&[&OPT_PORT.to_string(), "--mode", "cookie", "--wscale", &wscale.to_string()]);
    bed.synproxy(OPT_PORT);
    let listener = server.run(|| TcpListener::bind(("::", OPT_PORT)).expect("bind the server"));

    for (i, addr) in [v4(OPT_PORT), v6(OPT_PORT)].into_iter().enumerate() {
        let ok_before = filter.syn_guard().status().unwrap().first().map_or(0, |p| p.stats.cookies_ok);
        let serve = {
            let listener = listener.try_clone().unwrap();
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                let info = tcp_info(&s);
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut up = vec![0u8; UP];
                s.read_exact(&mut up).expect("read the upload");
                let bad = up.iter().enumerate().position(|(i, &b)| b != pattern(i));
                let down: Vec<u8> = (0..DOWN).map(pattern).collect();
                s.write_all(&down).expect("send the download");
                (info, bad)
            })
        };
        let mut conn = client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"));
        conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (c_snd, c_rcv, c_sack, c_ts) = tcp_info(&conn);
        assert_eq!(c_snd, wscale, "{addr}: the client scales the server's window by what the SYN-ACK offered");
        assert!(c_sack && c_ts, "{addr}: the client has SACK ({c_sack}) and timestamps ({c_ts})");
        let up: Vec<u8> = (0..UP).map(pattern).collect();
        conn.write_all(&up).expect("upload");
        let mut down = vec![0u8; DOWN];
        conn.read_exact(&mut down).expect("download");
        let ((s_snd, s_rcv, s_sack, s_ts), bad) = serve.join().expect("the server");
        eprintln!("{addr}: client wscale {c_snd},{c_rcv}; server {s_snd},{s_rcv}, sack {s_sack}, ts {s_ts}");
        assert_eq!(s_rcv, wscale, "{addr}: the server's own scale is the one offered for it");
        assert_eq!(s_snd, c_rcv, "{addr}: the server learnt the client's scale through the cookie's timestamp");
        assert!(s_sack && s_ts, "{addr}: the server has SACK ({s_sack}) and timestamps ({s_ts})");
        assert_eq!(bad, None, "{addr}: the upload arrived intact");
        assert!(down.iter().enumerate().all(|(i, &b)| b == pattern(i)), "{addr}: the download arrived intact");
        let port = filter.syn_guard().status().unwrap()[0];
        assert_eq!(port.stats.cookies_sent, i as u64 + 1, "{addr}: the guard answered the SYN: {port:?}");
        // The ACK, and segments sent before the server's first reply (the
        // same acknowledgement number: still a valid cookie).
        assert!(port.stats.cookies_ok > ok_before, "{addr}: and passed the cookie's ACK: {port:?}");
    }
    let Bed { filter, .. } = bed;
    filter.unpin().expect("unpin");
}

/// Cookie mode dropping untracked ACKs (`--drop-untracked-acks`): a
/// spoofed ACK flood (hping3 -A, 40,000 at up to ~20,000 a second) is dropped in XDP, while
/// a client's connection, opened through a cookie before it, exchanges
/// data through it: its ACKs are of a connection conntrack tracks. Asserts:
/// every echo during the flood; at least 90% of the flood dropped in XDP
/// (the port's `dropped`); what the guard passed to the stack is about the
/// client's own packets, not the flood's.
#[test]
fn a_spoofed_ack_flood_is_dropped_in_xdp_and_tracked_connections_go_on() {
    const ACK_PORT: u16 = 8083;
    // At most ~20,000 a second: at least two seconds, the client's rounds about 1.3.
    const ACK_FLOOD: u32 = 40_000;
    const ROUNDS: usize = 10;
    let _turn = serial();
    let bed = Bed::new("syna");
    let Bed { client, server, filter, pin, .. } = &bed;
    let _peer_xdp = client.run(|| xdpguard::Decap::builder().interface("eth0").attach().expect("pass-through XDP"));
    bed.synproxy(ACK_PORT);
    bed.protect(&[&ACK_PORT.to_string(), "--mode", "cookie", "--drop-untracked-acks"]);
    let listener = server.run(|| TcpListener::bind(("::", ACK_PORT)).expect("bind the server"));
    let serve = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf).expect("read") {
                0 => break,
                // Twice: the client's packets then stop looking like its
                // handshake's ACK (see below) and pass as tracked.
                n => s.write_all(&[&buf[..n], &buf[..n]].concat()).expect("echo"),
            }
        }
    });
    let mut conn = client
        .run(|| TcpStream::connect_timeout(&v4(ACK_PORT), Duration::from_secs(5)).expect("connect before the flood"));
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let before = filter.syn_guard().status().unwrap()[0].stats;

    let mut flood = bed.flood_of("-A", ACK_PORT, ACK_FLOOD, 50);
    std::thread::sleep(Duration::from_millis(300));
    let mut echoed = Vec::new();
    for i in 0..ROUNDS {
        let msg = format!("round {i} through the ACK flood");
        let ok = conn.write_all(msg.as_bytes()).is_ok() && {
            let mut back = vec![0u8; 2 * msg.len()];
            conn.read_exact(&mut back).is_ok() && back == [msg.as_bytes(), msg.as_bytes()].concat()
        };
        echoed.push(ok);
        std::thread::sleep(Duration::from_millis(100));
    }
    let flood_running = flood.running();
    flood.finish();
    drop(conn);
    serve.join().expect("the server");

    let port = filter.syn_guard().status().unwrap()[0];
    eprintln!("port {ACK_PORT}: {port:?}");
    assert!(echoed.iter().all(|&ok| ok), "every round echoed during the flood: {echoed:?}");
    assert!(flood_running, "the flood was still running when the client was done");
    let dropped = port.stats.dropped - before.dropped;
    // Passed as tracked (a plain echo would keep a segment's acknowledgement
    // and sequence numbers as far apart as in the handshake's ACK, which is
    // all the cookie check reads: its segments would pass as cookies).
    let passed = port.stats.acks_other - before.acks_other;
    assert!(dropped >= u64::from(ACK_FLOOD) * 9 / 10, "flood ACKs dropped in XDP: {dropped} of {ACK_FLOOD}");
    assert!(passed < 200, "ACKs passed to the stack: {passed} (the client's {ROUNDS} rounds)");
    assert!(passed >= ROUNDS as u64, "the client's own packets passed as tracked: {passed}");
    let out = XDPGUARD.run(&["syn", "status", "--pin", pin.arg(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert!(v["ports"][0]["policy"].as_str().unwrap().ends_with(" drop-untracked-acks"), "{v}");
    let Bed { filter, .. } = bed;
    filter.unpin().expect("unpin");
}

/// The default cookie policy costs a server that speaks first nothing: a
/// connection through an XDP cookie and nftables synproxy, then the
/// server's first byte, completes in well under the second a server's
/// SYN-ACK retransmit takes, and the server never refuses synproxy's ACK
/// for its timestamp echo (TcpExt.TSEcrRejected). Before, the default
/// offered timestamps, and synproxy's ACK to the server echoed a shifted
/// timestamp that Linux 6.18 refuses: every such connection took ~1.02 s.
/// Then `syn nft-rules` writes each cookie port's own options: the
/// window scale it was protected with, and the MSS alone for an MSS-only
/// port.
#[test]
fn a_server_that_speaks_first_waits_for_no_retransmit() {
    const FIRST_PORT: u16 = 8084;
    const ROUNDS: usize = 6;
    let _turn = serial();
    let bed = Bed::new("synf");
    let Bed { client, server, pin, .. } = &bed;
    let _peer_xdp = client.run(|| xdpguard::Decap::builder().interface("eth0").attach().expect("pass-through XDP"));
    // The documented recipe: protect (the default policy), then the rules
    // the pin directory's policies call for.
    bed.protect(&[&FIRST_PORT.to_string()]);
    bed.synproxy(FIRST_PORT);
    let listener = server.run(|| TcpListener::bind(("::", FIRST_PORT)).expect("bind the server"));
    let serve = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(b"220 hello\r\n").expect("the server's greeting");
        }
    });
    let before = tcp_counters(server);
    let times: Vec<Duration> = client.run(|| {
        (0..ROUNDS)
            .map(|i| {
                let addr = if i % 2 == 0 { v4(FIRST_PORT) } else { v6(FIRST_PORT) };
                let start = std::time::Instant::now();
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut first = [0u8; 1];
                s.read_exact(&mut first).expect("the server's first byte");
                assert_eq!(&first, b"2");
                start.elapsed()
            })
            .collect()
    });
    serve.join().expect("the server");
    let after = tcp_counters(server);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    let port = bed.filter.syn_guard().status().unwrap()[0];
    eprintln!("connect + first byte: {times:?}; port {FIRST_PORT}: {port:?}");
    assert_eq!(port.stats.cookies_sent, ROUNDS as u64, "every SYN answered from XDP: {port:?}");
    assert!(port.stats.cookies_ok >= ROUNDS as u64, "every cookie ACK passed: {port:?}");
    // A SYN-ACK retransmit waits 1 s (TCP_TIMEOUT_INIT): 300 ms is far
    // above a veth's round trips, even on a loaded 2-core machine.
    for (i, t) in times.iter().enumerate() {
        assert!(*t < Duration::from_millis(300), "connection {i}: connect + first byte took {t:?}: {times:?}");
    }
    assert_eq!(delta("TcpExt.TSEcrRejected"), 0, "the server refused synproxy's ACK for its timestamp echo");
    assert_eq!(delta("TcpExt.TCPSynRetrans"), 0, "the server resent a SYN-ACK");

    // nft-rules: each cookie port's own options, from the pin directory.
    bed.protect(&["9443", "--wscale", "7"]);
    bed.protect(&["9444", "--mss-only", "--mss", "1400"]);
    bed.protect(&["9445", "--wscale", "7", "--monitor"]);
    let rules = XDPGUARD.ok(&["syn", "nft-rules", "--pin", pin.arg()]);
    let synproxy: Vec<&str> = rules.lines().filter(|l| l.contains("synproxy")).map(str::trim).collect();
    assert_eq!(
        synproxy,
        [
            "tcp dport 9444 ct state invalid,untracked synproxy mss 1400",
            &format!("tcp dport {FIRST_PORT} ct state invalid,untracked synproxy mss 1460"),
            "tcp dport { 9443, 9445 } ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm",
        ],
        "{rules}"
    );
    assert!(
        rules.contains(&format!("tcp dport {{ {FIRST_PORT}, 9443, 9444, 9445 }} ct state invalid drop")),
        "{rules}"
    );
    // The rules load as written.
    let check = Command::new("ip")
        .args(["netns", "exec", &server.name, "nft", "-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(rules.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run nft -c");
    assert!(check.status.success(), "nft -c: {}", String::from_utf8_lossy(&check.stderr));
    // protect's note names the command that writes them.
    let out = XDPGUARD.run(&["syn", "protect", "--pin", pin.arg(), "9446", "--wscale", "9"]);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(note.contains(&format!("`xdpguard syn nft-rules --pin {} --apply`", pin.arg())), "{note}");
    let Bed { filter, .. } = bed;
    filter.unpin().expect("unpin");
}
