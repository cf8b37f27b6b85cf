//! The `xdpguard-lb` CLI (examples/xdpguard-lb.rs) driving a pinned load
//! balancer across processes: each command is its own process, and the LB
//! keeps balancing real traffic after every one of them has exited.
//!
//! CI builds the examples before the tests (`cargo build --release
//! --examples`); locally run `cargo build --examples` (same profile as the
//! tests) first. Needs root; fails (never skips) without it.

mod common {
    pub mod cli;
    pub mod lb_topology;
    pub mod netns;
    pub mod scratch;
}

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::cli::ExampleBinary;
use common::lb_topology::*;
use common::scratch::ScratchDir;
use xdpguard::{Flow, LoadBalancer, Protocol, Vip};

/// `n` connections from the client; answers per backend name.
fn spread(net: &LbNet, n: usize) -> BTreeMap<String, usize> {
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let names: Vec<String> = net.client.run(move || {
        (0..n)
            .map(|_| Conn::open(to, Duration::from_secs(2)).expect("connect").ask().expect("answer"))
            .collect()
    });
    let mut m = BTreeMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

/// An HTTP-ish server named b1, b2, ... in each backend, on port 80 of the VIP.
fn web_servers(net: &LbNet) -> Vec<Servers> {
    net.backends
        .iter()
        .enumerate()
        .map(|(i, ns)| Servers::start(ns, &format!("b{}", i + 1), 80, vec![IpAddr::V4(VIP_V4)]))
        .collect()
}

#[test]
fn the_cli_manages_a_pinned_lb() {
    let pin = ScratchDir::bpffs("lbcli");
    let net = LbNet::new("lcli", 3, BackendKind::VipOnLoopback);
    let _servers = web_servers(&net);
    let cli = ExampleBinary::new("xdpguard-lb");
    let p = ["--pin", pin.arg()];

    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name, "--connections", "4096", p[0], p[1]]);
    let vip = "203.0.113.10:80";
    cli.ok(&["vip", "add", vip, "--mode", "dsr", "--table-size", "16381", p[0], p[1]]);
    for i in 1..=3 {
        cli.ok(&["backend", "add", vip, &backend_v4(i).to_string(), p[0], p[1]]);
    }
    let list = cli.json(&["vip", "list", "--json", p[0], p[1]]);
    assert_eq!(list[0]["vip"], "tcp 203.0.113.10:80");
    assert_eq!(list[0]["mode"], "dsr");
    assert_eq!(list[0]["backends"].as_array().unwrap().len(), 3);

    // Every command has exited; the pinned LB balances real connections.
    let m = spread(&net, 60);
    assert_eq!(m.len(), 3, "all three backends answer: {m:?}");

    // `which` predicts what the library (and the kernel) choose.
    let lb = LoadBalancer::open_pinned(pin.path()).unwrap();
    let v = Vip::tcp(vip.parse().unwrap());
    for port in [40000u16, 40001, 51515] {
        let from = SocketAddr::new(IpAddr::V4(CLIENT_V4), port);
        let w = cli.json(&["which", vip, "--from", &from.to_string(), "--json", p[0], p[1]]);
        let lib = lb.backend_for(&v, &Flow::new(from, vip.parse().unwrap(), Protocol::Tcp)).unwrap().unwrap();
        assert_eq!(w["backend"], lib.to_string());
    }

    // Drain b2 from the CLI: new connections avoid it.
    let out = cli.ok(&["backend", "weight", vip, &backend_v4(2).to_string(), "0", p[0], p[1]]);
    assert!(out.contains("draining"));
    let m = spread(&net, 40);
    assert_eq!(m.get("b2"), None, "{m:?}");

    let stats = cli.json(&["stats", "--json", p[0], p[1]]);
    assert!(stats["vips"][0]["packets"].as_u64().unwrap() >= 300, "{stats}");
    assert!(stats["vips"][0]["new_flows"].as_u64().unwrap() >= 100);
    assert!(stats["global"]["redirected"]["packets"].as_u64().unwrap() >= 300);
    let b2 = stats["vips"][0]["backends"].as_array().unwrap().iter().find(|b| b["backend"] == "198.51.100.12").unwrap();
    assert_eq!(b2["state"], "draining");
    // The CLI process runs in the root namespace: the library finds the
    // LB's (named under /run/netns) to read the next hops.
    assert_eq!(b2["neighbour"]["state"], "resolved", "{b2}");
    assert_eq!(b2["neighbour"]["via"], "198.51.100.12");
    let human = cli.ok(&["stats", p[0], p[1]]);
    assert!(human.contains("redirected") && human.contains("198.51.100.12"));
    assert!(human.contains("neighbour resolved via 198.51.100.12"), "{human}");

    // A backend whose host does not exist: the kernel gives up on its
    // neighbour, `backend list` says so, and its packets are counted.
    cli.ok(&["backend", "add", vip, "198.51.100.99", "--weight", "0", p[0], p[1]]);
    let dead_state = || {
        let list = cli.json(&["backend", "list", vip, "--json", p[0], p[1]]);
        let dead = list["backends"].as_array().unwrap().iter().find(|b| b["backend"] == "198.51.100.99").cloned();
        dead.unwrap()["neighbour"]["state"].as_str().unwrap().to_owned()
    };
    let started = std::time::Instant::now();
    while dead_state() != "unreachable" {
        assert!(started.elapsed() < Duration::from_secs(10), "198.51.100.99 never shows as unreachable");
        std::thread::sleep(Duration::from_millis(200));
    }
    let human = cli.ok(&["backend", "list", vip, p[0], p[1]]);
    assert!(human.contains("neighbour unreachable via 198.51.100.99"), "{human}");
    cli.ok(&["backend", "del", vip, "198.51.100.99", p[0], p[1]]);
    let gone = String::from_utf8_lossy(&net.lb.ip(&["neigh", "show", "198.51.100.99"]).stdout).into_owned();
    assert!(gone.trim().is_empty(), "removing the backend removes its managed entry: {gone}");

    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["attachments"].as_array().unwrap().len(), 2);
    assert_eq!(status["vips"], 1);

    // Errors name the cause and the fix, with a failing exit status.
    let out = cli.run(&["backend", "add", "203.0.113.99:80", "198.51.100.11", p[0], p[1]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add it first"));
    let out = cli.run(&["vip", "add", "203.0.113.11:80", "--mode", "dsr", "--table-size", "65536", p[0], p[1]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("65537"));

    cli.ok(&["backend", "del", vip, &backend_v4(1).to_string(), p[0], p[1]]);
    assert_eq!(lb.backends(&v).unwrap().len(), 2, "the library sees the CLI's edit");
    cli.ok(&["vip", "del", vip, p[0], p[1]]);
    assert!(lb.vips().unwrap().is_empty());
    drop(lb);
    cli.ok(&["detach", p[0], p[1]]);
    assert!(!pin.path().exists(), "detach removes the pins");
}

#[test]
fn the_cli_runs_pinned_decapsulators_on_ipip_backends() {
    let pin = ScratchDir::bpffs("lbclid");
    let decap_pins: Vec<ScratchDir> = (0..3).map(|_| ScratchDir::bpffs("lbclidecap")).collect();
    let net = LbNet::new("lclid", 3, BackendKind::VipOnLoopback);
    let _servers = web_servers(&net);
    let cli = ExampleBinary::new("xdpguard-lb");
    let p = ["--pin", pin.arg()];

    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name, "--ipip-source", IPIP_SRC_V4, p[0], p[1]]);
    let vip = "203.0.113.10:80";
    cli.ok(&["vip", "add", vip, "--mode", "ipip", p[0], p[1]]);
    for (i, (ns, dp)) in net.backends.iter().zip(&decap_pins).enumerate() {
        let local = backend_v4(i + 1).to_string();
        cli.ok(&["backend", "add", vip, &local, p[0], p[1]]);
        let out = cli.ok(&["decap", "attach", "--iface", "eth0", "--local", &local, "--netns", &ns.name, "--pin", dp.arg()]);
        assert!(out.contains("eth0"), "{out}");
    }

    // Every CLI process has exited: the backends still decapsulate, so
    // real connections through the IPIP LB reach all three.
    let m = spread(&net, 45);
    assert_eq!(m.len(), 3, "all three backends answer: {m:?}");
    let mut decapsulated = 0;
    for (i, dp) in decap_pins.iter().enumerate() {
        let s = cli.json(&["decap", "stats", "--json", "--pin", dp.arg()]);
        assert_eq!(s["locals"], serde_json::json!([backend_v4(i + 1).to_string()]), "{s}");
        assert_eq!(s["attachments"].as_array().unwrap().len(), 1, "{s}");
        decapsulated += s["decapsulated"]["packets"].as_u64().unwrap();
    }
    assert!(decapsulated >= 45 * 3, "every request is a few packets, all decapsulated: {decapsulated}");
    let human = cli.ok(&["decap", "stats", "--pin", decap_pins[0].arg()]);
    assert!(human.contains("decapsulated") && human.contains(&backend_v4(1).to_string()), "{human}");

    // A missing pin directory is a typed error with a failing status.
    let out = cli.run(&["decap", "stats", "--pin", "/sys/fs/bpf/xdpguard-no-such-decap"]);
    assert!(!out.status.success());
    for dp in &decap_pins {
        cli.ok(&["decap", "detach", "--pin", dp.arg()]);
        assert!(!dp.path().exists(), "detach removes the pins");
    }
    // Without decapsulators the backends drop the tunnel packets.
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let failed = net.client.run(move || Conn::open(to, Duration::from_millis(500)).and_then(|mut c| c.ask()).is_err());
    assert!(failed, "after decap detach nothing answers");
    cli.ok(&["detach", p[0], p[1]]);
}
