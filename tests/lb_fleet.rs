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
//! dist/bird/bird-lb.conf, and the health agent dist/bird/xdpguard-bird-health.sh
//! with `-c FILE`, which announces the VIP while `xdpguard-lb status
//! --exit-code --expect-digest` (the digest the file promises) passes.
//!
//! One configuration for the fleet: [`fleet_config`] is the fleet's file,
//! and every node runs `xdpguard apply --config` on it
//! (`env!("CARGO_BIN_EXE_xdpguard")`). On real nodes the very same file
//! serves every node; here all nodes share the host's bpffs and live in
//! namespaces, so each node's copy differs in exactly two words, its `pin`
//! and `netns` (the template's `@PIN@`, `@NETNS@`). The VIP's port 80 is
//! IPIP, port 81 L2 DSR (the nodes' `back` interfaces share the backends'
//! segment). Nothing warms a neighbour cache.
//!
//! Checks (the issue's numbering):
//! 1. Flows from many client addresses and ports spread over all nodes (each
//!    node's new-flow counter), and every answer comes from the backend that
//!    every node's `which` names.
//! 2. Detaching one node's LB: its agent withdraws the route, the router
//!    moves its flows (and, the kernel's ECMP being hash-threshold, some of
//!    the survivors' flows) onto the others mid-flow, and every held
//!    keep-alive connection, IPIP and DSR, still answers from its backend.
//! 3. The node comes back stale (an older file: other backends and
//!    weights): serving, but its digest is not the fleet's, so its agent
//!    keeps it withdrawn (exit code 5); one apply of the fleet's file
//!    catches it up (its backends now sit in other kernel slots than on
//!    the other nodes), and it takes its flows back and new ones, again
//!    without breaking any.
//! 4. Draining a backend by editing the fleet's file (weight 0) and
//!    applying it on every node behaves as on one node.
//! 5. Every node's `xdpguard-lb digest --json` is the same, and the one
//!    `xdpguard-lb digest --config FILE` computes from the file, after the
//!    bring-up, the catch-up and the drain; and the nodes name the same
//!    backend for thousands of flows.
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

use common::cli::{XDPGUARD, XDPGUARD_LB};
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
const SEED: u32 = 4242;
/// Client addresses 192.0.2.1..=CLIENTS.
const CLIENTS: u8 = 8;
const ROUTER_AS: u32 = 65000;
const NODE_AS: u32 = 65001;
const TIMEOUT: Duration = Duration::from_secs(2);
/// The fleet's backends and weights ([`fleet_config`]).
const FLEET: [(usize, u32); BACKENDS] = [(1, 1), (2, 1), (3, 1)];

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
/// node, checking the node against its configuration file (`-c`), run in
/// the root namespace as on a real node (bpffs and BIRD's socket are
/// reachable from there); SIGTERM on drop, which withdraws.
struct Agent(Child);

impl Agent {
    fn start(socket: &Path, pin: &Path, config: &Path) -> Agent {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/bird/xdpguard-bird-health.sh");
        let child = Command::new("sh")
            .arg(script)
            .arg("-s")
            .arg(socket)
            .arg("-p")
            .arg(pin)
            .arg("-c")
            .arg(config)
            .args(["-g", "20", "-i", "0.05", "-r", "20"])
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

/// The fleet's configuration file with these backends (number, weight)
/// behind every VIP, as a template: `@PIN@` and `@NETNS@` are the node's
/// (see the module's comment). Fixed settings as the nodes need them:
/// small capacities, the fleet's seed.
fn fleet_config(backends: &[(usize, u32)]) -> String {
    let backends: Vec<String> =
        backends.iter().map(|&(b, w)| format!("{{ addr = \"{}\", weight = {w} }}", backend_v4(b))).collect();
    let backends = backends.join(", ");
    let mut text = format!(
        r#"# The fleet's configuration (tests/lb_fleet.rs): every LB node applies it.
[[lb]]
pin = "@PIN@"
netns = "@NETNS@"
interfaces = ["uplink"]
redirect = ["back"]
ipip_sources = ["{IPIP_SRC_V4}", "{IPIP_SRC_V6}"]
hash_seed = {SEED}
connections = 16384
max_vips = 8
max_backends = 32
"#
    );
    for (port, mode) in [(IPIP_PORT, "ipip"), (DSR_PORT, "dsr")] {
        text += &format!("\n[[lb.vip]]\nvip = \"tcp {VIP_V4}:{port}\"\nmode = \"{mode}\"\nbackends = [{backends}]\n");
    }
    text
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
        fleet.pins = (1..=NODES).map(|i| Pin(ScratchDir::bpffs(&format!("fleet{i}-")))).collect();
        for i in 1..=NODES {
            let out = fleet.apply(i, &fleet_config(&FLEET));
            assert!(out.contains("create and pin"), "node {i}: {out}");
            let code = XDPGUARD_LB.run(&[
                "status",
                "--exit-code",
                "--config",
                &fleet.arg(i),
                "--pin",
                fleet.pins[i - 1].arg(),
            ]);
            assert_eq!(code.status.code(), Some(0), "node {i}: configured, serving, as the file says");
            fleet.wait_resolved(i);
        }
        // The same file again changes nothing.
        assert!(fleet.apply(1, &fleet_config(&FLEET)).ends_with("no changes\n"));

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
        let agent = Agent::start(&self.bird(i).socket, self.pins[i - 1].0.path(), &self.file(i));
        self.agents[i - 1] = Some(agent);
    }

    /// Node `i`'s copy of the fleet's file (what its agent checks it
    /// against).
    fn file(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node{i}.toml"))
    }

    fn arg(&self, i: usize) -> String {
        self.file(i).display().to_string()
    }

    /// Node `i`'s copy of `config` (a [`fleet_config`] template).
    fn node_config(&self, i: usize, config: &str) -> String {
        render(config, &[("PIN", self.pins[i - 1].arg().to_owned()), ("NETNS", self.nodes[i - 1].name.clone())])
    }

    /// Applies the fleet's file `config` on node `i` as a node's pull loop
    /// does (docs/deployment.md): `xdpguard apply` on a copy beside the
    /// node's file, then renamed over it, so the file the agent checks
    /// against is never ahead of the node's state. What apply printed.
    fn apply(&self, i: usize, config: &str) -> String {
        let new = self.dir.path().join(format!("node{i}.toml.new"));
        std::fs::write(&new, self.node_config(i, config)).expect("write the node's file");
        let out = XDPGUARD.ok(&["apply", "--config", &new.display().to_string()]);
        std::fs::rename(&new, self.file(i)).expect("put the applied file in place");
        out
    }

    /// Waits until node `i`'s backends' next hops are resolved: the managed
    /// neighbour entries resolve them by themselves (nothing here pings).
    fn wait_resolved(&self, i: usize) {
        let lb = self.pins[i - 1].open();
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

    /// Check 5: every node's digests (`digest --json`) are the ones the
    /// fleet's file promises (`digest --config`: the same file on every
    /// node, so the same digests), and the health hook with `--config`
    /// passes. The overall digest.
    fn same_digests(&self, when: &str) -> String {
        let promised: Vec<Value> = (1..=NODES)
            .map(|i| XDPGUARD_LB.json(&["digest", "--json", "--config", &self.arg(i), "--pin", self.pins[i - 1].arg()]))
            .collect();
        let running: Vec<Value> =
            self.pins.iter().map(|p| XDPGUARD_LB.json(&["digest", "--json", "--pin", p.arg()])).collect();
        for i in 0..NODES {
            assert_eq!(promised[i], promised[0], "{when}: node {}'s file promises other digests", i + 1);
            assert_eq!(running[i], promised[0], "{when}: node {}'s tables differ from the fleet's file", i + 1);
            let code =
                XDPGUARD_LB.run(&["status", "--exit-code", "--config", &self.arg(i + 1), "--pin", self.pins[i].arg()]);
            assert_eq!(code.status.code(), Some(0), "{when}: node {} is healthy against its file", i + 1);
        }
        assert_eq!(running[0]["vips"].as_array().map(Vec::len), Some(2), "{when}: {}", running[0]);
        running[0]["digest"].as_str().expect("an overall digest").to_owned()
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

/// The nodes agree on the backend of `n` synthetic flows per VIP port
/// (what equal digests promise, checked once the hard way).
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

    // 5. One file, identical tables on every node.
    let fleet_digest = fleet.same_digests("after bring-up");

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

    // 3. Node 1 comes back stale: its LB set up from an older file (other
    // backends and weights, as an old image's boot would), while the
    // fleet's file is in place. It serves, but not the fleet's tables: its
    // agent, still running, keeps it withdrawn (exit code 5). One apply of
    // the fleet's file catches it up (its backends now sit in other kernel
    // slots than on the other nodes: the digests do not care), the agent
    // announces it, and it takes flows again without breaking any.
    let stale = fleet.dir.path().join("node1-old.toml");
    std::fs::write(&stale, fleet.node_config(1, &fleet_config(&[(3, 2), (1, 1)]))).unwrap();
    XDPGUARD.ok(&["apply", "--config", &stale.display().to_string()]);
    let p1 = ["--pin", fleet.pins[0].arg()];
    assert_eq!(XDPGUARD_LB.run(&["status", "--exit-code", p1[0], p1[1]]).status.code(), Some(0), "stale, serving");
    let code = XDPGUARD_LB.run(&["status", "--exit-code", "--config", &fleet.arg(1), p1[0], p1[1]]).status.code();
    assert_eq!(code, Some(5), "stale: not the fleet's digest");
    std::thread::sleep(Duration::from_millis(500)); // 10 rounds of the agent
    assert_eq!(fleet.next_hops(), NODES - 1, "a stale node is not announced");
    let t_apply = Instant::now();
    let out = fleet.apply(1, &fleet_config(&FLEET));
    assert!(
        !out.contains("create") && out.matches("one table swap").count() == 2,
        "one apply, only what differs: {out}"
    );
    fleet.wait_resolved(1);
    fleet.wait_next_hops(NODES, Duration::from_secs(5));
    eprintln!("catch-up apply -> route back: {:?}; node 1 out for {:?}", t_apply.elapsed(), t.elapsed());
    let lbs: Vec<LoadBalancer> = fleet.pins.iter().map(Pin::open).collect();
    assert_eq!(fleet.same_digests("after node 1 caught up"), fleet_digest);
    same_tables(&lbs, 3000, "after node 1 caught up");
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

    // 4. Drain backend 1 through the fleet's file (weight 0), applied on
    // every node: held connections keep their backend (b1's included), new
    // ones avoid it, every node agrees, and no node was withdrawn.
    let drained_config = fleet_config(&[(1, 0), (2, 1), (3, 1)]);
    for i in 1..=NODES {
        let out = fleet.apply(i, &drained_config);
        assert_eq!(out.matches("one table swap").count(), 2, "node {i}: one weight change per VIP: {out}");
    }
    let drained_digest = fleet.same_digests("after the drain");
    assert_ne!(drained_digest, fleet_digest, "a drain changes the digest");
    assert_eq!(fleet.next_hops(), NODES, "draining withdraws no node");
    assert!(held.iter().any(|h| h.answer == "b1"), "some held connections are on b1");
    ask_all(&mut held, "after draining b1 everywhere");
    ask_all(&mut fresh, "after draining b1 everywhere");
    let drained = fleet.connect(48, 45000);
    assert!(drained.iter().all(|h| h.answer != "b1"), "new connections avoid drained b1");
    predicted_by_every_node(&lbs, &drained, "after the drain");

    // The IPIP VIP really went through the decapsulators, the DSR one not.
    let decapsulated: u64 = fleet._decaps.iter().map(|d| d.stats().unwrap().decapsulated.packets).sum();
    assert!(decapsulated > 1000, "IPIP packets decapsulated on the backends: {decapsulated}");
    for (i, lb) in lbs.iter().enumerate() {
        let s = lb.stats().unwrap();
        assert!(s.redirected.packets > 100, "node {}: forwarded in XDP: {s:?}", i + 1);
    }

    // A node edited by hand drifts from the fleet's file: its agent keeps
    // it announced through the grace (`-g 20`: an apply in progress looks
    // the same for a moment), then withdraws it. (Last: flows that move
    // off it now may change backends.)
    let v = format!("{VIP_V4}:{IPIP_PORT}");
    let p3 = ["--pin", fleet.pins[2].arg()];
    XDPGUARD_LB.ok(&["backend", "weight", &v, &backend_v4(2).to_string(), "2", p3[0], p3[1]]);
    let t = Instant::now();
    let code = XDPGUARD_LB.run(&["status", "--exit-code", "--config", &fleet.arg(3), p3[0], p3[1]]).status.code();
    assert_eq!(code, Some(5), "node 3 drifted from the fleet's file");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(fleet.next_hops(), NODES, "a drifted node stays announced through the grace");
    fleet.wait_next_hops(NODES - 1, Duration::from_secs(4));
    eprintln!("node 3 edited by hand -> withdrawn after {:?} (grace: 20 rounds of 50 ms)", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(900), "withdrawn before the grace ran out");

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
    // An LB host forwards (a new namespace does not: exit code 7) and
    // routes its backends (a backend with no route: 8).
    ns.sysctl("net.ipv4.ip_forward", "1");
    ns.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]);
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
        text.contains(
            "health:      serving: attached to 1 interface(s), 1 of 1 VIP(s) with a reachable active backend"
        ),
        "{text}"
    );
    let json = XDPGUARD_LB.json(&["status", "--json", "--pin", pin.arg()]);
    assert_eq!((&json["serving"], &json["digest_matches"]), (&Value::Bool(true), &Value::Null));

    // 5: serving, but not the state the fleet's file (or digest) expects.
    let dir = ScratchDir::new("/tmp", "fleet-x");
    std::fs::create_dir_all(dir.path()).unwrap();
    let file = dir.path().join("fleet.toml");
    let write = |weight: u32| {
        let text = format!(
            "[[lb]]\npin = \"{}\"\nnetns = \"{}\"\ninterfaces = [\"eth0\"]\n[[lb.vip]]\nvip = \"tcp 203.0.113.10:80\"\nmode = \"dsr\"\n\
             backends = [{{ addr = \"198.51.100.11\", weight = {weight} }}]\n",
            pin.arg(),
            ns.name
        );
        std::fs::write(&file, text).unwrap();
    };
    let file_arg = file.display().to_string();
    let against = |how: &[&str]| {
        let mut args = vec!["status", "--exit-code", "--pin", pin.arg()];
        args.extend(how);
        XDPGUARD_LB.run(&args)
    };
    write(1);
    let promised = XDPGUARD_LB.json(&["digest", "--json", "--config", &file_arg, "--pin", pin.arg()]);
    let promised = promised["digest"].as_str().unwrap().to_owned();
    assert_eq!(against(&["--config", &file_arg]).status.code(), Some(0), "as the file says");
    assert_eq!(against(&["--expect-digest", &promised]).status.code(), Some(0), "the file's digest");
    write(3);
    let out = against(&["--config", &file_arg]);
    assert_eq!(out.status.code(), Some(5), "the file wants weight 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "not serving: attached to 1 interface(s), 1 of 1 VIP(s) with a reachable active backend, state digest differs"
        ),
        "{text}"
    );
    let json = XDPGUARD_LB.json(&["status", "--json", "--config", &file_arg, "--pin", pin.arg()]);
    assert_eq!((&json["serving"], &json["digest_matches"]), (&Value::Bool(false), &Value::Bool(false)));
    XDPGUARD_LB.ok(&["backend", "weight", "203.0.113.10:80", "198.51.100.11", "3", "--pin", pin.arg()]);
    assert_eq!(against(&["--config", &file_arg]).status.code(), Some(0), "caught up with the file");
    assert_eq!(against(&["--expect-digest", &promised]).status.code(), Some(5), "not the old digest any more");
    // Usage errors (2): not a digest; both ways at once; a file without
    // this pin's [[lb]] (the digest to expect cannot be had).
    assert_eq!(against(&["--expect-digest", "12ab"]).status.code(), Some(2));
    assert_eq!(against(&["--config", &file_arg, "--expect-digest", &promised]).status.code(), Some(2));
    let out =
        XDPGUARD_LB.run(&["status", "--exit-code", "--config", &file_arg, "--pin", "/sys/fs/bpf/xdpguard-lb-none"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no [[lb]] pinned at"), "{out:?}");

    XDPGUARD_LB.ok(&["detach", "--pin", pin.arg()]);
    assert_eq!(code(&pin), Some(1), "detached");
    assert_eq!(against(&["--config", &file_arg]).status.code(), Some(1), "detached, with a file");
}
