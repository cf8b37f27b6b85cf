//! Several LB nodes behind ECMP, announced by real BGP daemons (issue 12).
//!
//! The test bed, every piece in namespaces this test makes and removes:
//!
//! ```text
//!  client (192.0.2.1-8) --cl-- router --lb1/lb2/lb3-- uplink: LB node i (xdpguard-lb, BIRD, health agent)
//!                               |  br0 (198.51.100.126/25)      back: on br0 (198.51.100.10i)
//!                               +-- b1/b2/b3: backends 198.51.100.11-13 (VIP on lo, IPIP decap)
//! ```
//!
//! The router runs BIRD 2 with eBGP to every node and merges their equal
//! routes into one multipath route for the VIP 203.0.113.10 (ECMP, hashed
//! on ports: policy 3 with fields 0x37). Each LB node runs BIRD with
//! dist/bird/bird-lb.conf, and the health agent dist/bird/xdpguard-bird-health.sh,
//! which announces the VIP while `xdpguard-lb status --exit-code` passes.
//! Every node is configured with the CLI (`env!("CARGO_BIN_EXE_xdpguard-lb")`),
//! the same hash seed and backends, added in a different order on each node.
//! The VIP's port 80 is IPIP, port 81 L2 DSR (the nodes' `back` interfaces
//! share the backends' segment). Nothing warms a neighbour cache.
//!
//! Checks (the issue's numbering):
//! 1. Flows from many client addresses and ports spread over all nodes (each
//!    node's new-flow counter), and every answer comes from the backend that
//!    every node's `which` names.
//! 2. Detaching one node's LB: its agent withdraws the route, the router
//!    moves its flows (and, the kernel's ECMP being hash-threshold, some of
//!    the survivors' flows) onto the others mid-flow, and every held
//!    keep-alive connection, IPIP and DSR, still answers from its backend.
//! 3. The node re-attached (a restart, backends added in yet another order)
//!    takes its flows back and new ones, again without breaking any.
//! 4. Draining a backend on every node behaves as on one node.
//! 5. Every node names the same backend for thousands of flows (identical
//!    tables), also the restarted one.
//!
//! Plus the health hook's exit codes. Needs root, `ip`, `ethtool`, `sysctl`
//! and BIRD 2 (`bird`, `birdc`: Debian's bird2, installed by .ci/deps).

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cli::XDPGUARD_LB;
use common::scratch::ScratchDir;
use serde_json::Value;
use xdpguard::testing::lb_topology::{backend_v4, backend_v6, no_dad, Conn, Servers, IPIP_SRC_V4, IPIP_SRC_V6, VIP_V4};
use xdpguard::testing::netns::{ensure_bpffs, veth, NetNs};
use xdpguard::{BackendAddr, Decap, Flow, LoadBalancer, NeighbourState, Protocol, Vip};

const NODES: usize = 3;
const BACKENDS: usize = 3;
const IPIP_PORT: u16 = 80;
const DSR_PORT: u16 = 81;
/// The fleet's hash seed: the same on every node (docs/deployment.md).
const SEED: &str = "4242";
/// Client addresses 192.0.2.1..=CLIENTS.
const CLIENTS: u8 = 8;
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;
const TIMEOUT: Duration = Duration::from_secs(2);

/// The router's address on node `i`'s link (198.51.100.192/26, out of the
/// kit's backends' /25).
fn router_side(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 193 + 8 * i as u8)
}

/// Node `i`'s uplink address.
fn node_side(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 194 + 8 * i as u8)
}

fn node_side6(i: usize) -> String {
    format!("2001:db8:d:{i}::2")
}

/// Node `i`'s address on the backends' segment.
fn node_back(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 100 + i as u8)
}

fn vip(port: u16) -> Vip {
    Vip::tcp(SocketAddr::new(VIP_V4.into(), port))
}

fn backend(i: usize) -> BackendAddr {
    IpAddr::V4(backend_v4(i)).into()
}

fn backend_name(b: BackendAddr) -> String {
    let i = (1..=BACKENDS).find(|&i| backend(i) == b).unwrap_or_else(|| panic!("unknown backend {b}"));
    format!("b{i}")
}

/// Sends SIGTERM to a child and waits for it (2 s, then SIGKILL).
fn terminate(child: &mut Child) {
    let pid = child.id() as nix::libc::pid_t;
    // SAFETY: kill(2) on our own child's pid, which stays reserved (a
    // zombie at worst) until we wait for it below.
    unsafe { nix::libc::kill(pid, nix::libc::SIGTERM) };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A BIRD daemon in a namespace, in the foreground (`-f`: the child is
/// BIRD itself, as `ip netns exec` execs it), stopped on drop.
struct Bird {
    child: Child,
    socket: PathBuf,
    name: String,
}

impl Bird {
    fn start(ns: &NetNs, dir: &Path, name: &str, conf: &str) -> Bird {
        let path = |ext: &str| dir.join(format!("{name}.{ext}"));
        std::fs::write(path("conf"), conf).expect("write the BIRD config");
        let socket = path("ctl");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "bird", "-f", "-c"])
            .arg(path("conf"))
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(path("pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start bird (Debian package bird2)");
        let bird = Bird { child, socket, name: name.to_owned() };
        let t = Instant::now();
        while !bird.socket.exists() {
            assert!(t.elapsed() < Duration::from_secs(5), "BIRD {name} did not start: see {}", path("log").display());
            std::thread::sleep(Duration::from_millis(10));
        }
        bird
    }

    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).args(args).output().expect("run birdc");
        assert!(out.status.success(), "birdc {args:?} for {}: {out:?}", self.name);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // SIGTERM: BIRD says goodbye to its peers (Cease) and exits.
        terminate(&mut self.child);
    }
}

/// The shipped health agent (dist/bird/xdpguard-bird-health.sh) for one
/// node, run in the root namespace as on a real node (bpffs and BIRD's
/// socket are reachable from there); SIGTERM on drop, which withdraws.
struct Agent(Child);

impl Agent {
    fn start(socket: &Path, pin: &Path) -> Agent {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/bird/xdpguard-bird-health.sh");
        let child = Command::new("sh")
            .arg(script)
            .arg("-s")
            .arg(socket)
            .arg("-p")
            .arg(pin)
            .args(["-i", "0.05", "-r", "20"])
            .env("XDPGUARD_LB", XDPGUARD_LB.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the health agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// An LB node's pinned load balancer: detached on drop.
struct Pin(ScratchDir);

impl Pin {
    fn arg(&self) -> &str {
        self.0.arg()
    }

    fn open(&self) -> LoadBalancer {
        LoadBalancer::open_pinned(self.0.path()).expect("open the node's LB")
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(lb) = LoadBalancer::open_pinned(self.0.path()) {
            let _ = lb.unpin();
        }
    }
}

/// Fills in a dist/bird template: every `@NAME@` from `vars`; panics on a
/// placeholder left over, so the shipped file and this test stay in step.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in vars {
        let key = format!("@{k}@");
        assert!(s.contains(&key), "the template has no {key}");
        s = s.replace(&key, v);
    }
    assert!(!s.contains('@'), "a placeholder left in:\n{s}");
    s
}

/// The test bed. Fields drop in order: agents (withdraw), BIRDs, LBs,
/// servers and decapsulators, then the namespaces and scratch files.
struct Fleet {
    agents: Vec<Option<Agent>>,
    birds: Vec<Bird>,
    pins: Vec<Pin>,
    _servers: Vec<Servers>,
    _decaps: Vec<Decap>,
    router: NetNs,
    client: NetNs,
    nodes: Vec<NetNs>,
    _backends: Vec<NetNs>,
    dir: ScratchDir,
}

/// Backends in the order node `i` adds them (1-based; `round` varies it on
/// a restart): the tables must not depend on it.
fn add_order(i: usize, round: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=BACKENDS).collect();
    v.rotate_left((i + round) % BACKENDS);
    if (i + round) % 2 == 1 {
        v.reverse();
    }
    v
}

impl Fleet {
    fn new() -> Fleet {
        ensure_bpffs();
        let dir = ScratchDir::new("/tmp", "fleet");
        std::fs::create_dir_all(dir.path()).unwrap();
        let router = NetNs::new("fr");
        let client = NetNs::new("fc");
        let nodes: Vec<NetNs> = (1..=NODES).map(|i| NetNs::new(&format!("fl{i}"))).collect();
        let backends: Vec<NetNs> = (1..=BACKENDS).map(|i| NetNs::new(&format!("fb{i}"))).collect();
        for ns in [&router, &client].into_iter().chain(&nodes).chain(&backends) {
            no_dad(ns);
            for key in ["all", "default"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
            }
        }

        // The router: forwarding, ECMP hashed on the 5-tuple (policy 3
        // alone would hash addresses and protocol only: every flow of a
        // client on one node), a fixed seed for a reproducible spread.
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "3"),
            ("net.ipv4.fib_multipath_hash_fields", "0x37"),
            ("net.ipv6.fib_multipath_hash_policy", "3"),
            ("net.ipv6.fib_multipath_hash_fields", "0x37"),
            ("net.ipv4.fib_multipath_hash_seed", "12345"),
        ] {
            router.sysctl(k, v);
        }
        veth(&router, "cl", &client, "uplink");
        router.addr("cl", "192.0.2.254/24");
        for k in 1..=CLIENTS {
            client.addr("uplink", &format!("192.0.2.{k}/24"));
        }
        client.ip(&["route", "add", "default", "via", "192.0.2.254"]);
        router.ip(&["link", "add", "br0", "type", "bridge"]);
        router.addr("br0", "198.51.100.126/25");

        // Backends: the VIP on loopback (DSR and IPIP deliver to it), an
        // IPIP decapsulator, servers that answer with their name.
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let i = i + 1;
            let port = format!("b{i}");
            veth(&router, &port, b, "eth0");
            router.ip(&["link", "set", &port, "master", "br0"]);
            b.addr("eth0", &format!("{}/25", backend_v4(i)));
            b.ip(&["route", "add", "default", "via", "198.51.100.126"]);
            b.ip(&["addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"]);
            b.sysctl("net.ipv4.conf.all.arp_ignore", "1");
            b.sysctl("net.ipv4.conf.all.arp_announce", "2");
            for key in ["eth0", "lo"] {
                b.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
            }
            for port in [IPIP_PORT, DSR_PORT] {
                servers.push(Servers::start(b, &format!("b{i}"), port, vec![]));
            }
            decaps.push(b.run(move || {
                Decap::builder()
                    .interface("eth0")
                    .local(IpAddr::V4(backend_v4(i)))
                    .local(IpAddr::V6(backend_v6(i)))
                    .attach()
                    .expect("attach the decapsulator")
            }));
        }

        // LB nodes: uplink to the router (BGP, VIP traffic in), back on the
        // backends' segment (IPIP and DSR out). Forwarding on
        // (bpf_fib_lookup needs it), so a blackhole route for the VIP keeps
        // a node whose XDP program is gone from sending VIP traffic back to
        // the router (a loop until the TTL runs out).
        for (i, n) in nodes.iter().enumerate() {
            let i = i + 1;
            let (r_if, r_back) = (format!("lb{i}"), format!("l{i}"));
            veth(&router, &r_if, n, "uplink");
            veth(&router, &r_back, n, "back");
            router.ip(&["link", "set", &r_back, "master", "br0"]);
            router.addr(&r_if, &format!("{}/29", router_side(i)));
            router.addr(&r_if, &format!("2001:db8:d:{i}::1/64"));
            n.addr("uplink", &format!("{}/29", node_side(i)));
            n.addr("uplink", &format!("{}/64", node_side6(i)));
            n.addr("back", &format!("{}/25", node_back(i)));
            n.ip(&["route", "add", "default", "via", &router_side(i).to_string()]);
            n.ip(&["route", "add", "blackhole", &format!("{VIP_V4}/32")]);
            n.sysctl("net.ipv4.ip_forward", "1");
            n.sysctl("net.ipv6.conf.all.forwarding", "1");
            for key in ["uplink", "back"] {
                n.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0");
            }
        }
        router.ip(&["link", "set", "br0", "up"]);

        let mut fleet = Fleet {
            agents: Vec::new(),
            birds: Vec::new(),
            pins: Vec::new(),
            _servers: servers,
            _decaps: decaps,
            router,
            client,
            nodes,
            _backends: backends,
            dir,
        };
        for i in 1..=NODES {
            let pin = Pin(ScratchDir::bpffs(&format!("fleet{i}-")));
            fleet.configure(i, &pin, 0);
            fleet.pins.push(pin);
        }

        // BIRD: the router, then every node from the shipped template.
        let dir = fleet.dir.path().to_owned();
        let router_template = include_str!("../dist/bird/bird-router.conf");
        let (head, example) = router_template.split_once("# One line per LB node:\n").expect("the router template");
        let mut conf = render(
            &head.replace("log syslog all;", &format!("log \"{}/router.log\" all;", dir.display())),
            &[
                ("ROUTER_ID", "192.0.2.254".into()),
                ("VIP4_PREFIX", "203.0.113.0/25".into()),
                ("VIP6_PREFIX", "2001:db8:f::/64".into()),
                ("LOCAL_AS", ROUTER_AS.to_string()),
            ],
        );
        for i in 1..=NODES {
            conf += &render(
                &example.replace("protocol bgp lb1 ", &format!("protocol bgp lb{i} ")),
                &[
                    ("LOCAL_ADDRESS", router_side(i).to_string()),
                    ("LOCAL_AS", ROUTER_AS.to_string()),
                    ("NODE_ADDRESS", node_side(i).to_string()),
                    ("NODE_AS", NODE_AS.to_string()),
                ],
            );
        }
        fleet.birds.push(Bird::start(&fleet.router, &dir, "router", &conf));
        for i in 1..=NODES {
            let template = include_str!("../dist/bird/bird-lb.conf");
            let log = format!("log \"{}/lb{i}.log\" all;", dir.display());
            assert!(template.contains("log syslog all;"));
            let conf = render(
                &template.replace("log syslog all;", &log),
                &[
                    ("ROUTER_ID", node_side(i).to_string()),
                    ("VIP4", VIP_V4.to_string()),
                    ("VIP6", "2001:db8:f::10".into()),
                    ("LOCAL_ADDRESS", node_side(i).to_string()),
                    ("LOCAL_AS", NODE_AS.to_string()),
                    ("PEER_ADDRESS", router_side(i).to_string()),
                    ("PEER_AS", ROUTER_AS.to_string()),
                    ("LOCAL_ADDRESS6", node_side6(i)),
                ],
            );
            let bird = Bird::start(&fleet.nodes[i - 1], &dir, &format!("lb{i}"), &conf);
            fleet.birds.push(bird);
        }
        // A BIRD without its agent announces nothing (`disabled yes`).
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(fleet.next_hops(), 0, "nothing is announced before the agents run");
        for i in 1..=NODES {
            fleet.agents.push(None);
            fleet.start_agent(i);
        }
        fleet.wait_next_hops(NODES, Duration::from_secs(10));
        fleet
    }

    /// The node's BIRD (birds[0] is the router's).
    fn bird(&self, i: usize) -> &Bird {
        &self.birds[i]
    }

    /// Starts node `i`'s BIRD again from its config (after a crash: its
    /// socket and pid file are left behind).
    fn restart_bird(&mut self, i: usize) {
        let dir = self.dir.path().to_owned();
        let name = format!("lb{i}");
        let conf = std::fs::read_to_string(dir.join(format!("{name}.conf"))).unwrap();
        for ext in ["ctl", "pid"] {
            let _ = std::fs::remove_file(dir.join(format!("{name}.{ext}")));
        }
        self.birds[i] = Bird::start(&self.nodes[i - 1], &dir, &name, &conf);
    }

    fn start_agent(&mut self, i: usize) {
        let agent = Agent::start(&self.bird(i).socket, self.pins[i - 1].0.path());
        self.agents[i - 1] = Some(agent);
    }

    /// Attaches node `i`'s LB with the CLI and configures it: the same seed
    /// and backends everywhere, in a node- (and round-) dependent order.
    fn configure(&self, i: usize, pin: &Pin, round: usize) {
        let p = ["--pin", pin.arg()];
        let ns = &self.nodes[i - 1].name;
        let mut attach = vec!["attach", "--iface", "uplink", "--redirect", "back", "--netns", ns];
        attach.extend(["--hash-seed", SEED, "--connections", "16384", "--max-vips", "8", "--max-backends", "32"]);
        attach.extend(["--ipip-source", IPIP_SRC_V4, "--ipip-source", IPIP_SRC_V6]);
        attach.extend(p);
        XDPGUARD_LB.ok(&attach);
        // A pinned LB with VIPs but no backend yet: not serving.
        for (port, mode) in [(IPIP_PORT, "ipip"), (DSR_PORT, "dsr")] {
            let v = format!("{VIP_V4}:{port}");
            XDPGUARD_LB.ok(&["vip", "add", &v, "--mode", mode, p[0], p[1]]);
        }
        let code = XDPGUARD_LB.run(&["status", "--exit-code", p[0], p[1]]).status.code();
        assert_eq!(code, Some(4), "node {i}: VIPs without backends are not serving");
        for port in [IPIP_PORT, DSR_PORT] {
            let v = format!("{VIP_V4}:{port}");
            for b in add_order(i, round) {
                XDPGUARD_LB.ok(&["backend", "add", &v, &backend_v4(b).to_string(), p[0], p[1]]);
            }
        }
        let status = XDPGUARD_LB.run(&["status", "--exit-code", p[0], p[1]]);
        assert_eq!(status.status.code(), Some(0), "node {i}: configured, serving");
        // The managed neighbour entries resolve the backends by themselves
        // (nothing here pings them): wait until the LB sees them resolved.
        let lb = pin.open();
        let t = Instant::now();
        loop {
            let states: Vec<NeighbourState> =
                lb.backend_stats(&vip(IPIP_PORT)).unwrap().iter().map(|b| b.next_hop.state).collect();
            if states.iter().all(|s| *s == NeighbourState::Resolved) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "node {i}: backends' next hops {states:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The router's next hops for the VIP.
    fn next_hops(&self) -> usize {
        let out = self.router.ip(&["route", "show", &VIP_V4.to_string()]);
        String::from_utf8_lossy(&out.stdout).matches(" via ").count()
    }

    /// Waits until the router has `n` next hops for the VIP; the time taken.
    fn wait_next_hops(&self, n: usize, limit: Duration) -> Duration {
        let t = Instant::now();
        loop {
            if self.next_hops() == n {
                return t.elapsed();
            }
            if t.elapsed() > limit {
                let birds: Vec<String> = self.birds.iter().map(|b| b.birdc(&["show", "protocols"])).collect();
                panic!("the router has {} next hops for the VIP, not {n}:\n{}", self.next_hops(), birds.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Node `i`'s new flows per VIP port (its `stats --json`).
    fn new_flows(&self, i: usize) -> [u64; 2] {
        let stats = XDPGUARD_LB.json(&["stats", "--json", "--pin", self.pins[i - 1].arg()]);
        let of = |port: u16| -> u64 {
            let name = vip(port).to_string();
            let v = stats["vips"].as_array().unwrap().iter().find(|v| v["vip"].as_str() == Some(name.as_str()));
            v.unwrap_or_else(|| panic!("node {i}: no {name} in {stats}"))["new_flows"].as_u64().unwrap()
        };
        [of(IPIP_PORT), of(DSR_PORT)]
    }

    /// Opens `n` keep-alive connections to each VIP port from client
    /// addresses and source ports starting at `first_port`; each asks once.
    fn connect(&self, n: usize, first_port: u16) -> Vec<Held> {
        self.client.run(move || {
            let mut held = Vec::new();
            for port in [IPIP_PORT, DSR_PORT] {
                let to = SocketAddr::new(VIP_V4.into(), port);
                for k in 0..n {
                    let from = SocketAddr::new(
                        Ipv4Addr::new(192, 0, 2, 1 + (k % CLIENTS as usize) as u8).into(),
                        first_port + (k / CLIENTS as usize) as u16 + if port == DSR_PORT { 1000 } else { 0 },
                    );
                    let mut conn = Conn::open_from(from, to, TIMEOUT).unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                    let answer = conn.ask().unwrap_or_else(|e| panic!("{from} -> {to}: ask: {e}"));
                    held.push(Held { conn, flow: Flow::new(from, to, Protocol::Tcp), answer });
                }
            }
            held
        })
    }
}

/// A keep-alive connection and the backend that answered it first.
struct Held {
    conn: Conn,
    flow: Flow,
    answer: String,
}

/// Asks on every held connection; every one must answer, from its first
/// backend. `when` names the moment for the message.
fn ask_all(held: &mut [Held], when: &str) {
    let mut broken = Vec::new();
    for h in held.iter_mut() {
        match h.conn.ask() {
            Ok(a) if a == h.answer => {}
            Ok(a) => broken.push(format!("{}: answered by {a}, first by {}", h.flow, h.answer)),
            Err(e) => broken.push(format!("{}: {e}", h.flow)),
        }
    }
    assert!(broken.is_empty(), "{when}: {} of {} connections broke: {broken:#?}", broken.len(), held.len());
}

/// Every node names the same backend for each flow, and it is the one
/// that answered (check 5 without digests: the tables agree flow by flow).
fn predicted_by_every_node(lbs: &[LoadBalancer], held: &[Held], when: &str) {
    for h in held {
        let v = vip(h.flow.dst.port());
        let names: Vec<String> =
            lbs.iter().map(|lb| backend_name(lb.backend_for(&v, &h.flow).unwrap().expect("a backend"))).collect();
        assert!(
            names.iter().all(|n| *n == h.answer),
            "{when}: {}: answered by {}, nodes say {names:?}",
            h.flow,
            h.answer
        );
    }
}

/// The nodes agree on the backend of `n` synthetic flows per VIP port.
fn same_tables(lbs: &[LoadBalancer], n: u32, when: &str) {
    for port in [IPIP_PORT, DSR_PORT] {
        let v = vip(port);
        for k in 0..n {
            let src = SocketAddr::new(Ipv4Addr::from(0xc000_0200 + (k % 200)).into(), 1024 + (k * 7919 % 60000) as u16);
            let flow = Flow::new(src, SocketAddr::new(VIP_V4.into(), port), Protocol::Tcp);
            let first = lbs[0].backend_for(&v, &flow).unwrap();
            for (i, lb) in lbs.iter().enumerate().skip(1) {
                assert_eq!(lb.backend_for(&v, &flow).unwrap(), first, "{when}: node {} disagrees on {flow}", i + 1);
            }
        }
    }
}

#[test]
fn a_fleet_behind_ecmp_keeps_every_connection() {
    let started = Instant::now();
    let mut fleet = Fleet::new();
    eprintln!("fleet up in {:?}", started.elapsed());
    let lbs: Vec<LoadBalancer> = fleet.pins.iter().map(Pin::open).collect();

    // 5. Identical tables on every node, whatever the order of the adds.
    same_tables(&lbs, 3000, "after bring-up");
    let lists: Vec<Value> =
        fleet.pins.iter().map(|p| XDPGUARD_LB.json(&["vip", "list", "--json", "--pin", p.arg()])).collect();
    assert!(lists.iter().all(|l| *l == lists[0]), "the nodes list different VIPs or backends: {lists:#?}");

    // 1. Spread over the nodes, answers from the predicted backends.
    let per_port = 144;
    let mut held = fleet.connect(per_port, 30000);
    let flows: Vec<[u64; 2]> = (1..=NODES).map(|i| fleet.new_flows(i)).collect();
    for (i, f) in flows.iter().enumerate() {
        for (k, port) in [IPIP_PORT, DSR_PORT].into_iter().enumerate() {
            // A fair share is per_port / NODES; at least half of it.
            assert!(
                f[k] as usize * NODES * 2 >= per_port,
                "node {}: {} of {per_port} flows to :{port} ({flows:?})",
                i + 1,
                f[k]
            );
        }
    }
    predicted_by_every_node(&lbs, &held, "spread");
    let mut per_backend = std::collections::BTreeMap::new();
    for h in &held {
        *per_backend.entry(h.answer.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_backend.len(), BACKENDS, "every backend answers: {per_backend:?}");
    // `which`, the CLI, names the same backend on every node (a sample).
    for h in held.iter().step_by(37) {
        for p in &fleet.pins {
            let dest = h.flow.dst.to_string();
            let from = h.flow.src.to_string();
            let w = XDPGUARD_LB.json(&["which", &dest, "--from", &from, "--json", "--pin", p.arg()]);
            let b: BackendAddr = w["backend"].as_str().unwrap().parse().unwrap();
            assert_eq!(backend_name(b), h.answer, "which {dest} --from {from} on {}", p.arg());
        }
    }

    // 2. Node 1 fails: its LB is detached; its agent withdraws the route.
    // Node 1 is the router's first next hop, so the survivors' flows are
    // reshuffled too (hash-threshold ECMP), and every moved flow arrives
    // mid-connection (no SYN) at a node that has never seen it.
    let before: Vec<[u64; 2]> = (1..=NODES).map(|i| fleet.new_flows(i)).collect();
    drop(lbs);
    let t = Instant::now();
    XDPGUARD_LB.ok(&["detach", "--pin", fleet.pins[0].arg()]);
    let withdrawn = fleet.wait_next_hops(NODES - 1, Duration::from_secs(3));
    eprintln!("detach -> route withdrawn at the router: {withdrawn:?} (agent polls every 50 ms)");
    assert_eq!(XDPGUARD_LB.run(&["status", "--exit-code", "--pin", fleet.pins[0].arg()]).status.code(), Some(1));
    ask_all(&mut held, "after node 1 was withdrawn");
    let after: Vec<[u64; 2]> = (2..=NODES).map(|i| fleet.new_flows(i)).collect();
    for k in 0..2 {
        let moved: u64 = (0..NODES - 1).map(|j| after[j][k] - before[j + 1][k]).sum();
        assert!(
            moved >= before[0][k],
            "port #{k}: node 1 had {} flows, the others took {moved} ({before:?} -> {after:?})",
            before[0][k]
        );
    }
    eprintln!(
        "withdraw: node 1 had {:?} flows (IPIP, DSR); new flows on the others {before:?} -> {after:?}",
        before[0]
    );

    // 3. Node 1 comes back (a restart: backends in another order) and takes
    // flows again, its old ones mid-connection, without breaking any.
    fleet.agents[0] = None; // the operator stops the agent, reconfigures, starts it
    let pin = &fleet.pins[0];
    fleet.configure(1, pin, 1);
    fleet.start_agent(1);
    let rejoined = fleet.wait_next_hops(NODES, Duration::from_secs(5));
    eprintln!("agent start -> route back: {rejoined:?}; node 1 out for {:?}", t.elapsed());
    let lbs: Vec<LoadBalancer> = fleet.pins.iter().map(Pin::open).collect();
    same_tables(&lbs, 3000, "after node 1 restarted");
    ask_all(&mut held, "after node 1 rejoined");
    let back = fleet.new_flows(1);
    for k in 0..2 {
        assert!(back[k] * 2 >= before[0][k], "node 1 takes its flows back: {back:?}, had {:?}", before[0]);
    }
    let mut fresh = fleet.connect(48, 40000);
    predicted_by_every_node(&lbs, &fresh, "new connections after the rejoin");
    let grown = fleet.new_flows(1);
    assert!(grown[0] > back[0] && grown[1] > back[1], "node 1 takes new flows: {back:?} -> {grown:?}");

    // 2'. Node 2's BIRD crashes: the session closes, the router drops the
    // path at once (no graceful restart), the connections survive; BIRD
    // restarted announces nothing until the agent re-asserts (`-r 20`:
    // within a second), then the node takes its flows back.
    let t = Instant::now();
    fleet.birds[2].child.kill().unwrap();
    fleet.birds[2].child.wait().unwrap();
    let gone = fleet.wait_next_hops(NODES - 1, Duration::from_secs(2));
    eprintln!("BIRD of node 2 killed -> path gone: {gone:?}");
    ask_all(&mut held, "after node 2's BIRD was killed");
    ask_all(&mut fresh, "after node 2's BIRD was killed");
    fleet.restart_bird(2);
    let back = fleet.wait_next_hops(NODES, Duration::from_secs(5));
    eprintln!("BIRD of node 2 restarted -> announced again after {back:?} (down {:?})", t.elapsed());
    ask_all(&mut held, "after node 2's BIRD came back");
    ask_all(&mut fresh, "after node 2's BIRD came back");

    // 4. Drain backend 1 on every node: held connections keep their
    // backend (b1's included), new ones avoid it, every node agrees.
    for p in &fleet.pins {
        for port in [IPIP_PORT, DSR_PORT] {
            let v = format!("{VIP_V4}:{port}");
            XDPGUARD_LB.ok(&["backend", "weight", &v, &backend_v4(1).to_string(), "0", "--pin", p.arg()]);
        }
        assert_eq!(XDPGUARD_LB.run(&["status", "--exit-code", "--pin", p.arg()]).status.code(), Some(0));
    }
    assert!(held.iter().any(|h| h.answer == "b1"), "some held connections are on b1");
    ask_all(&mut held, "after draining b1 everywhere");
    ask_all(&mut fresh, "after draining b1 everywhere");
    let drained = fleet.connect(48, 45000);
    assert!(drained.iter().all(|h| h.answer != "b1"), "new connections avoid drained b1");
    predicted_by_every_node(&lbs, &drained, "after the drain");
    same_tables(&lbs, 3000, "after the drain");

    // The IPIP VIP really went through the decapsulators, the DSR one not.
    let decapsulated: u64 = fleet._decaps.iter().map(|d| d.stats().unwrap().decapsulated.packets).sum();
    assert!(decapsulated > 1000, "IPIP packets decapsulated on the backends: {decapsulated}");
    for (i, lb) in lbs.iter().enumerate() {
        let s = lb.stats().unwrap();
        assert!(s.redirected.packets > 100, "node {}: forwarded in XDP: {s:?}", i + 1);
    }
    drop(lbs);
    eprintln!("whole test: {:?}", started.elapsed());
    drop(fleet);
}

#[test]
fn status_exit_code_names_what_is_missing() {
    ensure_bpffs();
    let ns = NetNs::new("fx");
    let peer = NetNs::new("fy");
    veth(&ns, "eth0", &peer, "eth0");
    let pin = Pin(ScratchDir::bpffs("fleet-x"));
    let code = |pin: &Pin| XDPGUARD_LB.run(&["status", "--exit-code", "--pin", pin.arg()]).status.code();
    assert_eq!(code(&pin), Some(1), "nothing pinned");
    // Loaded and pinned, attached nowhere.
    let path = pin.0.path().to_owned();
    let lb = ns.run(move || LoadBalancer::builder().pin(&path).load().expect("load"));
    assert_eq!(code(&pin), Some(3), "attached nowhere");
    let h = lb.health().unwrap();
    assert_eq!((h.attachments, h.vips, h.serving_vips, h.is_serving()), (0, 0, 0, false));
    drop(lb);
    XDPGUARD_LB.ok(&["detach", "--pin", pin.arg()]);
    XDPGUARD_LB.ok(&["attach", "--iface", "eth0", "--netns", &ns.name, "--pin", pin.arg()]);
    assert_eq!(code(&pin), Some(4), "no VIP");
    XDPGUARD_LB.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", "--pin", pin.arg()]);
    XDPGUARD_LB.ok(&["backend", "add", "203.0.113.10:80", "198.51.100.11", "--weight", "0", "--pin", pin.arg()]);
    assert_eq!(code(&pin), Some(4), "only a drained backend");
    XDPGUARD_LB.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.11", "1", "--pin", pin.arg()]);
    let out = XDPGUARD_LB.run(&["status", "--exit-code", "--pin", pin.arg()]);
    assert_eq!(out.status.code(), Some(0), "serving");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("health:      serving: attached to 1 interface(s), 1 of 1 VIP(s) with an active backend"),
        "{text}"
    );
    let json = XDPGUARD_LB.json(&["status", "--json", "--pin", pin.arg()]);
    assert_eq!(json["serving"], Value::Bool(true));
    XDPGUARD_LB.ok(&["detach", "--pin", pin.arg()]);
    assert_eq!(code(&pin), Some(1), "detached");
}
