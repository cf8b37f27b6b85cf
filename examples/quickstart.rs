//! The xdpguard demo: no real NIC needed.
//!
//! It builds a tiny network out of throwaway namespaces, attaches the filter,
//! shows real UDP and TCP traffic from two sources getting through, blocks
//! one source's range live, shows its traffic stop while the other still
//! flows, prints the counters, unblocks, and removes everything.
//!
//! ```text
//!   alice (192.0.2.10) ──veth── eth0 ┐
//!                                    server (UDP+TCP echo on :7, filter on eth0+eth1)
//! mallory (203.0.113.66) ──veth── eth1 ┘
//! ```
//!
//! Run as root: `cargo run --release --example quickstart`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use xdpguard::testing::netns::{ensure_bpffs, veth, NetNs};
use xdpguard::{AttachMode, Filter};

const PORT: u16 = 7;
const TIMEOUT: Duration = Duration::from_millis(400);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    ensure_bpffs();
    step("1. Building a throwaway network: namespaces joined by veth pairs");
    let server = NetNs::new("demo-srv");
    let alice = NetNs::new("demo-alice");
    let mallory = NetNs::new("demo-mallory");
    veth(&alice, "eth0", &server, "eth0");
    veth(&mallory, "eth0", &server, "eth1");
    server.addr("eth0", "192.0.2.1/24");
    server.addr("eth1", "203.0.113.1/24");
    alice.addr("eth0", "192.0.2.10/24");
    mallory.addr("eth0", "203.0.113.66/24");
    println!("   alice   192.0.2.10   -> server 192.0.2.1   (server eth0)");
    println!("   mallory 203.0.113.66 -> server 203.0.113.1 (server eth1)");
    start_echo_servers(&server);

    step("2. Attaching the xdpguard filter to both of the server's interfaces");
    let filter =
        server.run(|| Filter::builder().interface("eth0").interface("eth1").mode(AttachMode::Auto).attach())?;
    for a in filter.attachments() {
        println!("   attached to {} in {} mode", a.interface, a.mode);
    }

    step("3. Real traffic from both sources gets through");
    show_traffic(&alice, "alice", "192.0.2.1", true);
    show_traffic(&mallory, "mallory", "203.0.113.1", true);

    step("4. Blocking mallory's range 203.0.113.0/24 live (no re-attach)");
    let change = filter.blocklist().insert("203.0.113.0/24".parse()?)?;
    println!("   blocklist += {} (added: {})", change.entry.network, change.changed);
    show_traffic(&alice, "alice", "192.0.2.1", true);
    show_traffic(&mallory, "mallory", "203.0.113.1", false);
    print_counters(&filter)?;

    step("5. An allowlist entry wins over the blocklist: allowing 203.0.113.66/32");
    filter.allowlist().insert("203.0.113.66/32".parse()?)?;
    show_traffic(&mallory, "mallory", "203.0.113.1", true);
    filter.allowlist().remove("203.0.113.66/32".parse()?)?;

    step("6. Unblocking, then removing everything");
    filter.blocklist().remove("203.0.113.0/24".parse()?)?;
    show_traffic(&mallory, "mallory", "203.0.113.1", true);
    print_counters(&filter)?;
    drop(filter);
    println!("   filter dropped: detached from both interfaces");
    drop((alice, mallory, server));
    println!("   namespaces deleted; nothing is left behind");
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

/// UDP and TCP echo servers on port 7, on threads inside the namespace.
fn start_echo_servers(ns: &NetNs) {
    let (udp, tcp) = ns.run(|| {
        (UdpSocket::bind(("0.0.0.0", PORT)).expect("bind udp"), TcpListener::bind(("0.0.0.0", PORT)).expect("bind tcp"))
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Sends one UDP datagram and opens one TCP connection; reports both.
fn show_traffic(client: &NetNs, who: &'static str, server_ip: &'static str, expect: bool) {
    let (udp_ok, tcp_ok) = client.run(move || {
        let target: SocketAddr = format!("{server_ip}:{PORT}").parse().unwrap();
        let udp_ok = (|| {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.set_read_timeout(Some(TIMEOUT)).ok()?;
            s.send_to(b"hello over udp", target).ok()?;
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).ok()?;
            Some(&buf[..n] == b"hello over udp")
        })()
        .unwrap_or(false);
        let tcp_ok = (|| {
            let mut s = TcpStream::connect_timeout(&target, TIMEOUT).ok()?;
            s.set_read_timeout(Some(TIMEOUT)).ok()?;
            s.write_all(b"hello over tcp").ok()?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).ok()?;
            Some(&buf[..n] == b"hello over tcp")
        })()
        .unwrap_or(false);
        (udp_ok, tcp_ok)
    });
    let show = |ok: bool| if ok { "answered" } else { "no answer (dropped in XDP)" };
    println!("   {who:<8} UDP: {:<28} TCP: {}", show(udp_ok), show(tcp_ok));
    assert_eq!((udp_ok, tcp_ok), (expect, expect), "{who}: unexpected result");
}

fn print_counters(filter: &Filter) -> Result<(), Box<dyn std::error::Error>> {
    let s = filter.stats()?;
    println!("   counters (summed over CPUs):");
    for (name, c) in s.rows() {
        if c.packets > 0 {
            println!("     {name:<12} {:>6} packets {:>8} bytes", c.packets, c.bytes);
        }
    }
    Ok(())
}
