//! The load balancer, live: real HTTP requests (curl) spread over three
//! backends, one backend drained, and the counters.
//!
//! Everything happens in throwaway network namespaces (removed at the end)
//! with documentation addresses; nothing touches the host's own network.
//! Needs root: `cargo run --example lb_demo`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use xdpguard::testing::lb_topology::*;
use xdpguard::testing::netns::{self as netns, ensure_bpffs};
use xdpguard::{Decap, Flow, ForwardingMode, LoadBalancer, Protocol, Vip, VipConfig};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

/// A tiny HTTP/1.1 server answering every request with its name.
struct Http {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Http {
    fn start(ns: &netns::NetNs, name: &str) -> Http {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = name.to_owned();
        let s = stop.clone();
        let thread = ns.spawn(move || {
            let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 80))).expect("bind :80");
            listener.set_nonblocking(true).expect("nonblocking");
            ready_tx.send(()).expect("ready");
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                let name = name.clone();
                let s = s.clone();
                conns.push(std::thread::spawn(move || serve(stream, &name, &s)));
            }
            for c in conns {
                let _ = c.join();
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("HTTP server starts");
        Http { stop, thread: Some(thread) }
    }
}

/// HTTP/1.1 with keep-alive: one response per request until the client
/// closes (or asks to close).
fn serve(mut stream: std::net::TcpStream, name: &str, stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        // Read one request head, up to the empty line.
        let mut close = false;
        let mut got = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {
                    got = true;
                    close |= line.to_ascii_lowercase().starts_with("connection: close");
                }
                Err(_) if !got => break,
                Err(_) => return,
            }
        }
        if !got {
            continue;
        }
        let body = format!("hello from {name}\n");
        let conn = if close { "close" } else { "keep-alive" };
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A keep-alive HTTP connection from the client, for many requests.
struct KeepAlive {
    stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
    local: SocketAddr,
}

impl KeepAlive {
    fn open(client: &netns::NetNs, to: SocketAddr) -> Result<KeepAlive> {
        let stream = client.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let local = stream.local_addr()?;
        Ok(KeepAlive { reader: BufReader::new(stream.try_clone()?), stream, local })
    }

    /// GET / on the open connection: the answering backend's name.
    fn get(&mut self) -> Result<String> {
        write!(self.stream, "GET / HTTP/1.1\r\nHost: 203.0.113.10\r\n\r\n")?;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err("connection closed".into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut self.reader, &mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().trim_start_matches("hello from ").to_owned())
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `curl http://VIP/` from the client: (backend name, client address:port).
fn curl(client: &netns::NetNs, vip: SocketAddr) -> Result<(String, SocketAddr)> {
    let url = format!("http://{vip}/");
    let write_out = "\n%{local_ip} %{local_port}";
    let out = client.try_exec(&["curl", "-s", "--noproxy", "*", "--max-time", "3", "-w", write_out, &url]);
    if !out.status.success() {
        return Err(format!("curl {url} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let (Some(body), Some(addr)) = (lines.first(), lines.last()) else {
        return Err(format!("unexpected curl output {text:?}").into());
    };
    let name = body.trim_start_matches("hello from ").to_owned();
    let (ip, port) = addr.split_once(' ').ok_or_else(|| format!("unexpected curl output {text:?}"))?;
    let local = SocketAddr::new(ip.parse()?, port.parse()?);
    Ok((name, local))
}

/// `n` requests; prints the spread and checks each against backend_for.
fn requests(net: &LbNet, lb: &LoadBalancer, vip: Vip, n: usize) -> Result<BTreeMap<String, usize>> {
    let to = SocketAddr::new(vip.addr, vip.port.unwrap_or(80));
    let mut spread = BTreeMap::new();
    let mut agreed = 0;
    for _ in 0..n {
        let (name, local) = curl(&net.client, to)?;
        let predicted = lb.backend_for(&vip, &Flow::new(local, to, Protocol::Tcp))?;
        if predicted.map(|b| backend_name(b.ip)) == Some(name.clone()) {
            agreed += 1;
        }
        *spread.entry(name).or_insert(0) += 1;
    }
    for (name, count) in &spread {
        println!("   {name}: {count:>3} {}", "#".repeat(*count));
    }
    println!("   backend_for() predicted the answering backend for {agreed} of {n} requests");
    Ok(spread)
}

fn backend_name(ip: IpAddr) -> String {
    (1..=3).find(|&i| IpAddr::V4(backend_v4(i)) == ip).map(|i| format!("b{i}")).unwrap_or_else(|| ip.to_string())
}

fn main() -> Result<()> {
    ensure_bpffs();
    step(1, "Building the network in throwaway namespaces");
    let net = LbNet::new("demo", 3, BackendKind::VipOnLoopback);
    println!("   client 192.0.2.1 -- LB (192.0.2.254 | 198.51.100.254) -- bridge -- backends b1 b2 b3");
    println!("   (198.51.100.11-13); every backend holds the VIP 203.0.113.10 on its loopback and runs");
    println!("   a small HTTP server that answers with its name.");
    let mut servers = Vec::new();
    let mut decaps = Vec::new();
    for (i, ns) in net.backends.iter().enumerate() {
        let i = i + 1;
        servers.push(Http::start(ns, &format!("b{i}")));
        decaps.push(ns.run(move || {
            Decap::builder().interface("eth0").local(IpAddr::V4(backend_v4(i))).attach().expect("attach decap")
        }));
    }

    step(2, "Attaching the load balancer (XDP) on the LB's two interfaces");
    let lb = net.lb.run(|| {
        LoadBalancer::builder()
            .interface("eth0")
            .interface("eth1")
            .connections(65536)
            .ipip_source(IPIP_SRC_V4.parse().expect("prefix"))
            .attach()
    })?;
    for a in lb.attachments() {
        println!("   attached to {} in {} mode", a.interface, a.mode);
    }
    let vip = Vip::tcp(SocketAddr::new(IpAddr::V4(VIP_V4), 80));
    lb.add_vip(vip, VipConfig::new(ForwardingMode::Ipip))?;
    lb.batch(&vip)
        .add(IpAddr::V4(backend_v4(1)), 1)
        .add(IpAddr::V4(backend_v4(2)), 1)
        .add(IpAddr::V4(backend_v4(3)), 1)
        .apply()?;
    println!("   VIP {vip}: IPIP to b1 b2 b3 (weight 1 each), one Maglev table swap.");
    println!("   The LB made managed neighbour entries for the backends, so the kernel resolves their MACs");
    println!("   now, before the first request (no warm-up ping needed).");
    println!("   The backends strip the outer header in XDP (xdpguard::Decap) and answer the client");
    println!("   directly, from the VIP.");

    step(3, "45 HTTP requests from the client (curl http://203.0.113.10/), each a new connection");
    let before = requests(&net, &lb, vip, 45)?;
    if before.len() != 3 {
        return Err(format!("expected all three backends to answer, got {before:?}").into());
    }

    step(4, "A keep-alive HTTP connection that landed on b2");
    let to = SocketAddr::new(vip.addr, 80);
    let mut keep = loop {
        let mut k = KeepAlive::open(&net.client, to)?;
        if k.get()? == "b2" {
            break k;
        }
    };
    println!("   connection {} -> {to} is served by b2", keep.local);

    step(5, "Draining b2 (weight 0): live connections carry on, new ones avoid it");
    lb.set_weight(&vip, IpAddr::V4(backend_v4(2)), 0)?;
    for b in lb.backends(&vip)? {
        println!("   {:<16} weight {} ({})", b.addr.to_string(), b.weight, b.state());
    }
    let answer = keep.get()?;
    println!("   the keep-alive connection, after the drain: served by {answer}");
    if answer != "b2" {
        return Err("the live connection moved off its drained backend".into());
    }
    step(6, "45 more requests");
    let after = requests(&net, &lb, vip, 45)?;
    if after.contains_key("b2") {
        return Err("the drained backend still got new connections".into());
    }
    println!("   and the keep-alive connection still gets {}", keep.get()?);
    drop(keep);

    step(7, "The counters (per-CPU in the kernel, summed here)");
    let s = lb.vip_stats(&vip)?;
    println!(
        "   VIP {vip}: {} packets, {} bytes, {} new flows, {} connection-table hits, {} misses",
        s.traffic.packets, s.traffic.bytes, s.new_flows, s.lru_hits, s.lru_misses
    );
    for b in lb.backend_stats(&vip)? {
        println!(
            "   {:<4} {:<16} weight {} {:<9} {:>5} packets {:>7} bytes, neighbour {} ({} packets unresolved)",
            backend_name(b.backend.addr.ip),
            b.backend.addr.to_string(),
            b.backend.weight,
            b.backend.state().to_string(),
            b.traffic.packets,
            b.traffic.bytes,
            b.next_hop.state,
            b.no_neighbour.packets
        );
    }
    println!("   global:");
    for (name, c) in lb.stats()?.rows() {
        if c.packets > 0 {
            println!("     {name:<20} {:>6} packets", c.packets);
        }
    }
    let d: u64 = decaps.iter().map(|d| d.stats().map(|s| s.decapsulated.packets).unwrap_or(0)).sum();
    println!("   backends decapsulated {d} packets in XDP");

    step(8, "Cleaning up: detaching and deleting the namespaces");
    drop(lb);
    drop(decaps);
    drop(servers);
    drop(net);
    println!("   done");
    Ok(())
}
