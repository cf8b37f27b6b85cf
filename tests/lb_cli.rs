//! The `xdpguard-lb` CLI (src/bin/xdpguard-lb.rs) driving a pinned load
//! balancer across processes: each command is its own process, and the LB
//! keeps balancing real traffic after every one of them has exited.
//!
//! `cargo test` builds the tool (tests/common/cli.rs). Needs root; fails
//! (never skips) without it.

mod common {
    pub mod cli;
    pub mod scratch;
}

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use common::cli::{refused, XDPGUARD, XDPGUARD_LB};
use common::scratch::ScratchDir;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use xdpguard::testing::frame::Frame;
use xdpguard::testing::lb_topology::*;
use xdpguard::{Decap, Flow, LbError, LoadBalancer, Protocol, Vip, XdpAction};

/// `n` connections from the client; answers per backend name.
fn spread(net: &LbNet, n: usize) -> BTreeMap<String, usize> {
    let to = SocketAddr::new(IpAddr::V4(VIP_V4), 80);
    let names: Vec<String> = net.client.run(move || {
        (0..n).map(|_| Conn::open(to, Duration::from_secs(2)).expect("connect").ask().expect("answer")).collect()
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
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];

    // Modes and policies are the library's names (FromStr): a wrong one is
    // refused before anything is loaded, with the accepted ones listed.
    let out = cli.run(&["attach", "--iface", "eth0", "--netns", &net.lb.name, "--echo", "reply", p[0], p[1]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown echo policy `reply` (expected answer, pass or drop)"), "{err}");
    assert!(!pin.path().exists(), "a refused attach pins nothing");
    let policies = ["--echo", "pass", "--fragments", "drop", "--options", "DROP"];
    let attach =
        ["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name, "--connections", "4096", p[0], p[1]];
    cli.ok(&[&attach[..], &policies].concat());
    let vip = "203.0.113.10:80";
    let out = cli.run(&["vip", "add", vip, "--mode", "direct", p[0], p[1]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("unknown forwarding mode `direct` (expected dsr, ipip or nat)"),
        "{err}"
    );
    cli.ok(&["vip", "add", vip, "--mode", "dsr", "--table-size", "16381", p[0], p[1]]);
    for i in 1..=3 {
        cli.ok(&["backend", "add", vip, &backend_v4(i).to_string(), p[0], p[1]]);
    }
    // Added again as it is: said so, nothing changed.
    let again = cli.ok(&["vip", "add", vip, "--mode", "dsr", "--table-size", "16381", p[0], p[1]]);
    assert!(again.contains("already exists with this configuration (3 backends); nothing changed"), "{again}");
    let list = cli.json(&["vip", "list", "--json", p[0], p[1]]);
    assert_eq!(list[0]["vip"], "tcp 203.0.113.10:80");
    assert_eq!(list[0]["mode"], "dsr");
    assert_eq!(list[0]["hash"], "five-tuple");
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
        // No traffic came from these ports: untracked (the connections
        // above used ephemeral ports; one that did would be tracked there).
        assert!(w["tracked"].is_null() || w["tracked"] == w["backend"], "{w}");
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

    // A second LB in the same namespace with one of the same backends
    // shares its managed entry: letting go of it (a backend removed, the
    // LB gone) leaves the entry to the first LB, which still needs it.
    let shared = backend_v4(1);
    let managed = || {
        let out = net.lb.ip(&["neigh", "show", &shared.to_string(), "proto", "88"]).stdout;
        !String::from_utf8_lossy(&out).trim().is_empty()
    };
    assert!(managed(), "the first LB's backend has its managed entry");
    net.lb.run(move || {
        let second = LoadBalancer::builder().load().unwrap();
        let v = Vip::tcp("203.0.113.30:80".parse().unwrap());
        second.add_vip(v, xdpguard::VipConfig::new(xdpguard::ForwardingMode::L2Dsr)).unwrap();
        second.add_backend(&v, IpAddr::V4(shared), 1).unwrap();
        second.remove_backend(&v, IpAddr::V4(shared)).unwrap();
        second.add_backend(&v, IpAddr::V4(shared), 1).unwrap();
        // Dropped here: an LB not pinned releases its entries.
    });
    assert!(managed(), "still there for the first LB, whose backend it is");
    // An LB in another namespace whose next hop has the same interface
    // index and address keeps nothing here: this namespace's entry goes
    // when the last LB here lets go of it.
    let other = xdpguard::testing::netns::NetNs::new("lbclio");
    let eth1 = net.lb.ifindex("eth1").to_string();
    // Both ends numbered, so the peer cannot take the index first.
    let spare = (net.lb.ifindex("eth1") + 100).to_string();
    other.ip(&["link", "add", "eth1", "index", &eth1, "type", "veth", "peer", "name", "peer1", "index", &spare]);
    for dev in ["eth1", "peer1"] {
        other.ip(&["link", "set", dev, "up"]);
    }
    other.addr("eth1", "198.51.100.1/24");
    // A backend no other test uses (an earlier build's record, below,
    // counts for every namespace: on a shared address it would keep other
    // tests' entries), with no host (drained here, so no flow goes to it).
    let lone = "198.51.100.77";
    let lone_here = || {
        let out = net.lb.ip(&["neigh", "show", lone, "proto", "88"]).stdout;
        !String::from_utf8_lossy(&out).trim().is_empty()
    };
    let theirs_pin = ScratchDir::bpffs("lbclio");
    let q = ["--pin", theirs_pin.arg()];
    cli.ok(&["attach", "--behind-filter", "--netns", &other.name, q[0], q[1]]);
    cli.ok(&["vip", "add", "203.0.113.30:80", "--mode", "dsr", q[0], q[1]]);
    cli.ok(&["backend", "add", "203.0.113.30:80", lone, q[0], q[1]]);
    let theirs = other.ip(&["neigh", "show", lone, "dev", "eth1", "proto", "88"]).stdout;
    assert!(!theirs.is_empty(), "the other namespace's LB has its own entry");
    cli.ok(&["backend", "add", vip, lone, "--weight", "0", p[0], p[1]]);
    assert!(lone_here(), "and this one its own");
    let records = libbpf_rs::MapHandle::from_pinned_path(theirs_pin.path().join("xdpg_lb_nbrs")).unwrap();
    let recorded_owner = || {
        use libbpf_rs::MapCore;
        let keys: Vec<Vec<u8>> = records.keys().collect();
        assert_eq!(keys.len(), 1, "one record");
        let v = records.lookup(&keys[0], libbpf_rs::MapFlags::ANY).unwrap().unwrap();
        (keys[0].clone(), u32::from_ne_bytes(v[..4].try_into().unwrap()))
    };
    let (key, owner) = recorded_owner();
    assert_ne!(owner, 0, "a record names its LB's namespace");
    cli.ok(&["backend", "del", vip, lone, p[0], p[1]]);
    assert!(!lone_here(), "removed here: the other namespace's record of the same index keeps nothing");
    // Its record as an earlier build wrote it: no namespace, so it may be
    // this one's, and the entry stays while it does not say.
    cli.ok(&["backend", "add", vip, lone, "--weight", "0", p[0], p[1]]);
    libbpf_rs::MapCore::update(&records, &key, &0u32.to_ne_bytes(), libbpf_rs::MapFlags::EXIST).unwrap();
    cli.ok(&["backend", "del", vip, lone, p[0], p[1]]);
    assert!(lone_here(), "an earlier build's record, maybe of this namespace, keeps the entry");
    // Any command on that LB reconciles it, and its record takes its
    // owner; the next reconciling here removes the entry it kept.
    cli.ok(&["status", q[0], q[1]]);
    assert_eq!(recorded_owner().1, owner, "its record names its namespace again");
    cli.ok(&["status", p[0], p[1]]);
    assert!(!lone_here(), "removed once the other record says it is another namespace's");
    cli.ok(&["detach", q[0], q[1]]);

    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["attachments"].as_array().unwrap().len(), 2);
    assert_eq!(status["vips"], 1);
    // Shown as the names they were given by, read back from the pinned LB.
    for (key, shown) in [("echo_policy", "pass"), ("fragment_policy", "drop"), ("options_policy", "drop")] {
        assert_eq!(status[key], shown, "{status}");
    }
    assert_eq!(lb.echo_policy(), xdpguard::EchoPolicy::Pass);

    // Errors name the cause and the fix, with a failing exit status.
    let out = cli.run(&["backend", "add", "203.0.113.99:80", "198.51.100.11", p[0], p[1]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("add it first"));
    let out = cli.run(&["vip", "add", "203.0.113.11:80", "--mode", "dsr", "--table-size", "65536", p[0], p[1]]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("65537"));
    // Port 0 is no port a packet is sent to: refused, nothing added.
    let out = cli.run(&["vip", "add", "203.0.113.20:0", "--mode", "dsr", p[0], p[1]]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port 0 in VIP") && err.contains("ADDR:*"), "{err}");
    // No port at all (or an IPv6 port without brackets): refused, not every port.
    for bare in ["203.0.113.15", "2001:db8:10::2:80"] {
        let out = cli.run(&["vip", "add", bare, "--mode", "dsr", p[0], p[1]]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("has no port") && err.contains("brackets"), "{err}");
    }
    assert_eq!(lb.vips().unwrap().len(), 1, "nothing added");

    cli.ok(&["backend", "del", vip, &backend_v4(1).to_string(), p[0], p[1]]);
    assert_eq!(lb.backends(&v).unwrap().len(), 2, "the library sees the CLI's edit");
    cli.ok(&["vip", "del", vip, p[0], p[1]]);
    assert!(lb.vips().unwrap().is_empty());
    drop(lb);
    cli.ok(&["detach", p[0], p[1]]);
    assert!(!pin.path().exists(), "detach removes the pins");
}

#[test]
fn attach_on_a_pinned_lb_attaches_it_again_with_its_state() {
    let pin = ScratchDir::bpffs("lbrea");
    let net = LbNet::new("lrea", 2, BackendKind::VipOnLoopback);
    let _servers = web_servers(&net);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let attach = ["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &net.lb.name];
    cli.ok(&[&attach[..], &["--connections", "4096"], &p].concat());
    let vip = "203.0.113.10:80";
    cli.ok(&["vip", "add", vip, "--mode", "dsr", p[0], p[1]]);
    for i in 1..=2 {
        cli.ok(&["backend", "add", vip, &backend_v4(i).to_string(), p[0], p[1]]);
    }
    assert_eq!(spread(&net, 20).len(), 2, "both backends answer");
    let before = cli.json(&["status", "--json", p[0], p[1]]);
    let tracked = before["connections"].as_u64().unwrap();
    assert!(tracked >= 20, "{before}");

    // Its links go (as when its interfaces are made again); the pinned LB
    // and its state stay, and status says how to attach it again.
    let path = pin.path().to_path_buf();
    net.lb.run(move || {
        let lb = LoadBalancer::open_pinned(&path).unwrap();
        lb.detach("eth0").unwrap();
        lb.detach("eth1").unwrap();
    });
    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["attachments"], serde_json::json!([]), "{status}");
    let text = cli.ok(&["status", p[0], p[1]]);
    assert!(text.contains("attached:    nowhere") && text.contains("xdpguard-lb attach --iface IF --pin"), "{text}");
    assert!(text.contains(&format!("netns:       {}", net.lb.name)), "{text}");
    assert_eq!(status["netns"], net.lb.name.as_str(), "{status}");

    // Load-time settings that differ are refused before anything changes.
    refused(&cli.run(&[&attach[..], &["--connections", "1024"], &p].concat()), &["--connections 4096", "detach"]);
    assert_eq!(cli.json(&["status", "--json", p[0], p[1]])["attachments"], serde_json::json!([]));

    // `attach` on the pin directory attaches the same LB: VIPs, backends and
    // connections kept, the options given applied, the others left as they
    // were; in the namespace it was loaded in, --netns or not.
    let out = cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--echo", "drop", p[0], p[1]]);
    assert!(out.contains("attached to eth0") && out.contains("attached to eth1"), "{out}");
    assert!(out.contains("VIPs, backends and connections kept"), "{out}");
    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["attachments"].as_array().unwrap().len(), 2, "{status}");
    assert_eq!(status["vips"], 1);
    assert!(status["connections"].as_u64().unwrap() >= tracked, "{status}");
    assert_eq!(status["echo_policy"], "drop");
    assert_eq!(status["fragment_policy"], before["fragment_policy"], "not given: unchanged");
    assert_eq!(status["udp_timeout_secs"], before["udp_timeout_secs"]);
    assert_eq!(spread(&net, 20).len(), 2, "it balances again");

    // Attaching where it already runs changes nothing and succeeds; in
    // another mode it is refused, naming the interface.
    let out = cli.ok(&["attach", "--iface", "eth1", "--netns", &net.lb.name, p[0], p[1]]);
    assert!(out.contains("already attached to eth1"), "{out}");
    refused(
        &cli.run(&["attach", "--iface", "eth1", "--mode", "generic", "--netns", &net.lb.name, p[0], p[1]]),
        &["eth1", "not in generic mode", "xdpguard-lb detach --iface eth1"],
    );
    // Redirect interfaces change live, by name in the LB's namespace.
    let redirects = || cli.json(&["status", "--json", p[0], p[1]])["redirect_ifindexes"].as_array().unwrap().len();
    assert_eq!(redirects(), 2);
    let out = cli.ok(&["set", "--no-redirect", "eth1", p[0], p[1]]);
    assert!(out.contains("no redirect out of eth1"), "{out}");
    assert_eq!(redirects(), 1);
    let out = cli.ok(&["set", "--redirect", "eth1", p[0], p[1]]);
    assert!(out.contains("redirect out of eth1 (ifindex"), "{out}");
    assert_eq!(redirects(), 2);
    assert_eq!(spread(&net, 20).len(), 2, "it balances with the interface given back");
    cli.ok(&["detach", p[0], p[1]]);
    assert!(!pin.path().exists());
}

/// `attach --behind-filter`: an LB pinned and attached nowhere, which a
/// filter then passes its packets on to (`xdpguard next`): it balances
/// real connections on the filter's interface, and its managed next hops
/// follow the chain as it changes.
#[test]
fn an_lb_attached_nowhere_serves_behind_a_filter() {
    let pin = ScratchDir::bpffs("lbbeh");
    let fpin = ScratchDir::bpffs("lbbehf");
    let net = LbNet::new("lbeh", 2, BackendKind::VipOnLoopback);
    let _servers = web_servers(&net);
    let (cli, filter) = (XDPGUARD_LB, common::cli::XDPGUARD);
    let p = ["--pin", pin.arg()];
    refused(&cli.run(&["attach", "--netns", &net.lb.name, p[0], p[1]]), &["--iface"]);
    refused(&cli.run(&["attach", "--behind-filter", "--iface", "eth0", p[0], p[1]]), &["--iface", "--behind-filter"]);
    assert!(!pin.path().exists(), "nothing pinned");
    let out = cli.ok(&[
        "attach",
        "--behind-filter",
        "--redirect",
        "eth0",
        "--redirect",
        "eth1",
        "--netns",
        &net.lb.name,
        p[0],
        p[1],
    ]);
    assert!(out.contains("attached nowhere") && out.contains("xdpguard next"), "{out}");
    let vip = "203.0.113.10:80";
    cli.ok(&["vip", "add", vip, "--mode", "dsr", p[0], p[1]]);
    for i in 1..=2 {
        cli.ok(&["backend", "add", vip, &backend_v4(i).to_string(), p[0], p[1]]);
    }
    assert_eq!(cli.run(&["status", "--exit-code", p[0], p[1]]).status.code(), Some(3), "not serving yet");

    filter.ok(&["attach", "--iface", "eth0", "--netns", &net.lb.name, "--pin", fpin.arg()]);
    filter.ok(&["next", pin.arg(), "--pin", fpin.arg()]);
    assert_eq!(cli.run(&["status", "--exit-code", p[0], p[1]]).status.code(), Some(0), "serving behind the filter");
    assert_eq!(spread(&net, 20).len(), 2, "both backends answer through the filter");
    // The filter's interface is the LB's: its managed next hops follow the
    // data plane's lookup from there as soon as the chain or the filter's
    // interfaces change, with no `xdpguard-lb` command run (a gateway an
    // `ip rule iif eth0` names).
    let gw = "198.51.100.99";
    let b1 = backend_v4(1).to_string();
    net.lb.ip(&["rule", "add", "iif", "eth0", "lookup", "100"]);
    net.lb.ip(&["route", "add", &format!("{b1}/32"), "via", gw, "dev", "eth1", "table", "100"]);
    let managed = |addr: &str| {
        let shown = String::from_utf8_lossy(&net.lb.ip(&["neigh", "show", "proto", "88"]).stdout).into_owned();
        shown.lines().any(|l| l.starts_with(&format!("{addr} dev eth1 ")))
    };
    filter.ok(&["next", "none", "--pin", fpin.arg()]);
    assert!(!managed(gw), "receiving nowhere: the main table's next hops");
    filter.ok(&["next", pin.arg(), "--pin", fpin.arg()]);
    assert!(managed(gw), "chained again: the gateway the data plane uses from eth0");
    // `upgrade` gives the filter the LB's new program in its next slot: the
    // LB still receives on eth0, and its entries follow a route changed
    // meanwhile (reconciled once the filter chains the new program).
    let gw2 = "198.51.100.98";
    let route =
        |via: &str| net.lb.ip(&["route", "replace", &format!("{b1}/32"), "via", via, "dev", "eth1", "table", "100"]);
    route(gw2);
    let out = cli.ok(&["upgrade", p[0], p[1]]);
    assert!(out.contains("chaining it now pass their packets on"), "{out}");
    assert_eq!([managed(gw2), managed(gw), managed(&b1)], [true, false, false], "[gw2, gw, b1] after the upgrade");
    route(gw);
    // The filter's interfaces are the LB's: detaching the filter from eth0
    // and attaching it again move the entries too.
    filter.ok(&["detach", "--iface", "eth0", "--pin", fpin.arg()]);
    assert!(!managed(gw), "the filter off eth0: the LB receives nowhere");
    filter.ok(&["attach", "--iface", "eth0", "--netns", &net.lb.name, "--pin", fpin.arg()]);
    assert!(managed(gw), "the filter on eth0 again");
    filter.ok(&["next", "none", "--pin", fpin.arg()]);
    assert!(!managed(gw) && managed(&b1), "unchained: the main table's again");
    net.lb.ip(&["rule", "del", "iif", "eth0", "lookup", "100"]);
    filter.ok(&["next", pin.arg(), "--pin", fpin.arg()]);
    // On a directory whose LB is attached somewhere: refused, naming it.
    cli.ok(&["attach", "--iface", "eth1", "--netns", &net.lb.name, p[0], p[1]]);
    refused(&cli.run(&["attach", "--behind-filter", p[0], p[1]]), &["attached to eth1", "detach --iface IF"]);
    cli.ok(&["detach", "--iface", "eth1", p[0], p[1]]);
    cli.ok(&["attach", "--behind-filter", p[0], p[1]]);
    filter.ok(&["detach", "--pin", fpin.arg()]);
    cli.ok(&["detach", p[0], p[1]]);
    assert!(!pin.path().exists());
}

/// A filter that chains one LB and then another (`xdpguard next A`, then
/// `next B`, no `xdpguard-lb` command between): A stops receiving and B
/// starts, and each LB's managed next hops follow (A's back to the main
/// table, B's to what the data plane uses from the filter's interface),
/// with an entry both want kept.
#[test]
fn a_filter_moved_from_one_lb_to_another_moves_their_next_hops() {
    let (pin_a, pin_b, fpin) = (ScratchDir::bpffs("lbmva"), ScratchDir::bpffs("lbmvb"), ScratchDir::bpffs("lbmvf"));
    let net = LbNet::new("lbmv", 2, BackendKind::VipOnLoopback);
    let (cli, filter) = (XDPGUARD_LB, common::cli::XDPGUARD);
    let (b1, b2) = (backend_v4(1).to_string(), backend_v4(2).to_string());
    // A balances both backends; B (another VIP) the second only.
    for (pin, vip, backends) in [(&pin_a, "203.0.113.10:80", vec![&b1, &b2]), (&pin_b, "203.0.113.11:80", vec![&b2])] {
        let p = ["--pin", pin.arg()];
        cli.ok(&["attach", "--behind-filter", "--redirect", "eth1", "--netns", &net.lb.name, p[0], p[1]]);
        cli.ok(&["vip", "add", vip, "--mode", "dsr", p[0], p[1]]);
        for b in backends {
            cli.ok(&["backend", "add", vip, b, p[0], p[1]]);
        }
    }
    let status = |pin: &ScratchDir| cli.run(&["status", "--exit-code", "--pin", pin.arg()]).status.code();
    filter.ok(&["attach", "--iface", "eth0", "--netns", &net.lb.name, "--pin", fpin.arg()]);
    filter.ok(&["next", pin_a.arg(), "--pin", fpin.arg()]);
    assert_eq!((status(&pin_a), status(&pin_b)), (Some(0), Some(3)), "A serves, B receives nowhere");
    filter.ok(&["next", pin_b.arg(), "--pin", fpin.arg()]);
    assert_eq!((status(&pin_a), status(&pin_b)), (Some(3), Some(0)), "B serves, A receives nowhere");

    // From eth0, the backends are behind gateways (`ip rule iif eth0`).
    let (gw1, gw2) = ("198.51.100.99", "198.51.100.98");
    net.lb.ip(&["rule", "add", "iif", "eth0", "lookup", "100"]);
    for (b, gw) in [(&b1, gw1), (&b2, gw2)] {
        net.lb.ip(&["route", "add", &format!("{b}/32"), "via", gw, "dev", "eth1", "table", "100"]);
    }
    let managed = || {
        let shown = String::from_utf8_lossy(&net.lb.ip(&["neigh", "show", "proto", "88"]).stdout).into_owned();
        let has = |addr: &str| shown.lines().any(|l| l.starts_with(&format!("{addr} dev eth1 ")));
        [has(gw1), has(gw2), has(&b1), has(&b2)]
    };
    filter.ok(&["next", pin_a.arg(), "--pin", fpin.arg()]);
    // A: both gateways; B, receiving nowhere: the main table's b2.
    assert_eq!(managed(), [true, true, false, true], "[gw1, gw2, b1, b2] with A chained");
    // The LB that now receives is reconciled first: gw2, which B needs from
    // the moment the filter chains it, is never deleted on the way (A, let
    // go of it first, would have removed it before B recorded it).
    let mut monitor = common::cli::Running(
        std::process::Command::new("ip")
            .args(["-n", &net.lb.name, "monitor", "neigh"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip monitor"),
    );
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let out = monitor.0.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Every line up to (and with) the first that starts with `prefix`.
    let until = |prefix: &str| {
        let mut got = Vec::new();
        while let Ok(line) = seen.recv_timeout(Duration::from_secs(10)) {
            let done = line.starts_with(prefix);
            got.push(line);
            if done {
                return got;
            }
        }
        panic!("ip monitor printed no `{prefix}` line: {got:?}");
    };
    // Listening once it reports an entry made and deleted for the purpose.
    let sentinel = "198.51.100.250";
    net.lb.ip(&["neigh", "add", sentinel, "dev", "eth1", "lladdr", "02:00:00:00:00:fa", "nud", "permanent"]);
    net.lb.ip(&["neigh", "del", sentinel, "dev", "eth1"]);
    until(&format!("Deleted {sentinel} "));
    filter.ok(&["next", pin_b.arg(), "--pin", fpin.arg()]);
    // A: b1 and b2 from the main table; B: gw2, which A no longer wants.
    assert_eq!(managed(), [false, true, true, true], "[gw1, gw2, b1, b2] with B chained");
    // The monitor has seen the change once it reports gw1 gone (the last
    // step, A's letting go), and no deletion of gw2 before it.
    let events = until(&format!("Deleted {gw1} "));
    assert!(!events.iter().any(|l| l.starts_with(&format!("Deleted {gw2} "))), "gw2 kept throughout: {events:?}");
    drop(monitor);
    filter.ok(&["next", "none", "--pin", fpin.arg()]);
    assert_eq!(managed(), [false, false, true, true], "[gw1, gw2, b1, b2] with neither chained");

    net.lb.ip(&["rule", "del", "iif", "eth0", "lookup", "100"]);
    filter.ok(&["detach", "--pin", fpin.arg()]);
    for pin in [&pin_a, &pin_b] {
        cli.ok(&["detach", "--pin", pin.arg()]);
        assert!(!pin.path().exists());
    }
}

#[test]
fn the_cli_runs_pinned_decapsulators_on_ipip_backends() {
    let pin = ScratchDir::bpffs("lbclid");
    let decap_pins: Vec<ScratchDir> = (0..3).map(|_| ScratchDir::bpffs("lbclidecap")).collect();
    let net = LbNet::new("lclid", 3, BackendKind::VipOnLoopback);
    let _servers = web_servers(&net);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];

    cli.ok(&[
        "attach",
        "--iface",
        "eth0",
        "--iface",
        "eth1",
        "--netns",
        &net.lb.name,
        "--ipip-source",
        IPIP_SRC_V4,
        p[0],
        p[1],
    ]);
    let vip = "203.0.113.10:80";
    cli.ok(&["vip", "add", vip, "--mode", "ipip", p[0], p[1]]);
    for (i, (ns, dp)) in net.backends.iter().zip(&decap_pins).enumerate() {
        let local = backend_v4(i + 1).to_string();
        cli.ok(&["backend", "add", vip, &local, p[0], p[1]]);
        let out =
            cli.ok(&["decap", "attach", "--iface", "eth0", "--local", &local, "--netns", &ns.name, "--pin", dp.arg()]);
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

    // `set` changes the running LB's IPIP sources and policies, live;
    // `status` shows them. A family's source an IPIP backend needs cannot
    // be cleared; nothing given is refused.
    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["ipip_sources"], serde_json::json!([IPIP_SRC_V4]), "{status}");
    refused(&cli.run(&["set", "--clear-ipip-source", "ipv4", p[0], p[1]]), &["IPv4"]);
    refused(&cli.run(&["set", p[0], p[1]]), &["nothing to set", "--ipip-source"]);
    let moved = "203.0.113.128/26";
    let out = cli.ok(&["set", "--ipip-source", moved, "--echo", "drop", "--udp-timeout", "90", p[0], p[1]]);
    assert!(out.contains(&format!("IPIP source {moved}")) && out.contains("echo drop"), "{out}");
    let status = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(status["ipip_sources"], serde_json::json!([moved]), "{status}");
    assert_eq!((status["echo_policy"].as_str(), status["udp_timeout_secs"].as_f64()), (Some("drop"), Some(90.0)));
    let text = cli.ok(&["status", p[0], p[1]]);
    assert!(text.contains(&format!("IPIP source: {moved}")), "{text}");
    assert_eq!(spread(&net, 30).len(), 3, "all three backends answer from the new outer sources");

    // The first backend's decapsulator loses its link; `decap attach` on its
    // pin directory attaches it again, its endpoint kept and one more added;
    // where it already runs, it is refused.
    let (ns, dp) = (&net.backends[0], &decap_pins[0]);
    let path = dp.path().to_path_buf();
    ns.run(move || Decap::open_pinned(&path).unwrap().detach("eth0").unwrap());
    let extra = "198.51.100.111";
    let again = ["decap", "attach", "--iface", "eth0", "--local", extra, "--netns", &ns.name, "--pin", dp.arg()];
    let out = cli.ok(&again);
    assert!(out.contains("attached to eth0") && out.contains("local endpoints"), "{out}");
    let s = cli.json(&["decap", "stats", "--json", "--pin", dp.arg()]);
    assert_eq!(s["locals"], serde_json::json!([backend_v4(1).to_string(), extra]), "{s}");
    // Endpoints removed and added on the running decapsulator.
    let out = cli.ok(&["decap", "local", "--del", extra, "--pin", dp.arg()]);
    assert!(out.contains(&format!("removed 1; local endpoints now: {}", backend_v4(1))), "{out}");
    let out = cli.ok(&["decap", "local", extra, "--pin", dp.arg()]);
    assert!(out.contains("added 1;"), "{out}");
    // An address it does not have is refused, naming it and the list, as
    // `vip del` and `backend del` refuse unknown ones: nothing is removed,
    // not even a known address given with it.
    let stranger = "198.51.100.222";
    refused(
        &cli.run(&["decap", "local", "--del", extra, stranger, "--pin", dp.arg()]),
        &[
            &format!("no local endpoint {stranger}"),
            &format!("it has {}, {extra}", backend_v4(1)),
            "nothing was changed",
            "xdpguard-lb decap stats",
        ],
    );
    let s = cli.json(&["decap", "stats", "--json", "--pin", dp.arg()]);
    assert_eq!(s["locals"], serde_json::json!([backend_v4(1).to_string(), extra]), "{s}");
    let out = cli.ok(&again);
    assert!(out.contains("already attached to eth0"), "{out}");
    assert_eq!(spread(&net, 30).len(), 3, "all three backends answer again");

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

/// Issue 14: `which` for an all-ports VIP named the backend of destination
/// port 0, which is not where the kernel sends a flow to any real port. Now
/// the destination port is given (`ADDR:PORT`, or `ADDR:* --to-port P`),
/// resolved as the kernel resolves it (a single-port VIP first, then the
/// all-ports VIP of the address), and `which` agrees with the real program
/// (BPF_PROG_TEST_RUN through the pinned LB) for random ports.
#[test]
fn which_agrees_with_the_kernel_for_all_ports_vips() {
    /// `args` and the pin directory.
    fn with<'a>(pin: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--pin", pin]);
        v
    }
    let pin = ScratchDir::bpffs("lbcliw");
    let vn = VerdictNet::new("lcliw", 3);
    let cli = XDPGUARD_LB;
    let dir = pin.path().to_owned();
    let pa = pin.arg();
    cli.ok(&with(
        pa,
        &["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &vn.lb.name, "--ipip-source", IPIP_SRC_V4],
    ));
    let any4 = "203.0.113.20:*";
    let any6 = "[2001:db8:f::20]:*";
    // A five-tuple hash, so the port counts (all-ports VIPs hash the source
    // address by default); `vip add` warns about its fragments.
    let out =
        cli.run(&with(pa, &["vip", "add", any4, "--mode", "ipip", "--table-size", "1021", "--hash", "five-tuple"]));
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: all-ports VIP tcp 203.0.113.20:* hashes the five-tuple") && err.contains("fragments"),
        "{err}"
    );
    cli.ok(&with(pa, &["vip", "add", "203.0.113.20:443", "--mode", "dsr", "--table-size", "1021"]));
    cli.ok(&with(
        pa,
        &["vip", "add", any6, "--proto", "udp", "--mode", "dsr", "--table-size", "1021", "--hash", "5-tuple"],
    ));
    for i in 1..=3 {
        cli.ok(&with(pa, &["backend", "add", any4, &backend_v4(i).to_string()]));
        cli.ok(&with(pa, &["backend", "add", "203.0.113.20:443", &backend_v4(i).to_string()]));
        cli.ok(&with(pa, &["backend", "add", any6, "--proto", "udp", &backend_v6(i).to_string()]));
    }

    // Without a port there is no answer: the error says how to give it.
    let out = cli.run(&with(pa, &["which", any4, "--from", "192.0.2.77:40001"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--to-port") && err.contains("203.0.113.20:443"), "{err}");
    let out = cli.run(&with(pa, &["which", "203.0.113.99:80", "--from", "192.0.2.77:40001"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no VIP takes"));
    let out = cli.run(&with(pa, &["which", "203.0.113.20:80", "--to-port", "81", "--from", "192.0.2.77:40001"]));
    assert!(!out.status.success(), "two different ports");
    // A port a single-port VIP serves is that VIP's, also asked as ADDR:*.
    for target in [vec!["203.0.113.20:443"], vec![any4, "--to-port", "443"]] {
        let mut args = vec!["which"];
        args.extend(target);
        args.extend(["--from", "192.0.2.77:40001", "--json"]);
        let w = cli.json(&with(pa, &args));
        assert_eq!(w["vip"], "tcp 203.0.113.20:443", "{w}");
    }

    let eth0 = vn.eth0;
    let mac = vn.eth0_mac;
    let answers: Vec<(String, String, String)> = vn.lb.run(move || {
        let lb = LoadBalancer::open_pinned(&dir).unwrap();
        let mut rng = StdRng::seed_from_u64(0x14_0203);
        let mut answers = Vec::new();
        for i in 0..60 {
            let v6 = i % 2 == 1;
            let client: IpAddr =
                if v6 { "2001:db8:c::77".parse().unwrap() } else { Ipv4Addr::new(192, 0, 2, 77).into() };
            let src = SocketAddr::new(client, rng.random_range(1024..=65535));
            let dport = loop {
                let p = rng.random_range(1..=65535u16);
                if p != 443 {
                    break p;
                }
            };
            // The kernel's choice, from a real frame through the pinned program.
            let kernel = if v6 {
                let d = Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x20);
                let frame = Frame::builder()
                    .macs(CLIENT_MAC, mac)
                    .ip(client, d.into())
                    .udp(src.port(), dport)
                    .payload(b"which")
                    .build();
                let out = lb.test_run_on(&frame, eth0).unwrap();
                assert_eq!(out.action, XdpAction::Redirect, "{src} -> port {dport}");
                let i = (1..=3).find(|&i| out.frame[..6] == backend_mac(i)).expect("a backend's MAC");
                IpAddr::V6(backend_v6(i))
            } else {
                let d = Ipv4Addr::new(203, 0, 113, 20);
                let frame = Frame::builder()
                    .macs(CLIENT_MAC, mac)
                    .ip(client, d.into())
                    .tcp(src.port(), dport)
                    .payload(b"which")
                    .build();
                let out = lb.test_run_on(&frame, eth0).unwrap();
                assert_eq!(out.action, XdpAction::Redirect, "{src} -> port {dport}");
                IpAddr::V4(Ipv4Addr::new(out.frame[30], out.frame[31], out.frame[32], out.frame[33]))
            };
            // The library, asked the old way (port 0 for "any port"), refuses.
            let any = if v6 {
                Vip::all_ports(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 0x20)), Protocol::Udp)
            } else {
                Vip::all_ports(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20)), Protocol::Tcp)
            };
            let old = Flow::new(src, SocketAddr::new(any.addr, 0), any.protocol);
            assert!(matches!(lb.backend_for(&any, &old), Err(LbError::DestinationPortRequired { .. })));
            answers.push((src.to_string(), SocketAddr::new(any.addr, dport).to_string(), kernel.to_string()));
        }
        answers
    });
    let mut backends = std::collections::BTreeSet::new();
    for (i, (from, to, kernel)) in answers.iter().enumerate() {
        let v6 = to.starts_with('[');
        let mut args = vec!["which"];
        let to_port;
        let star = if v6 { any6 } else { any4 };
        if i % 4 < 2 {
            args.push(to);
        } else {
            // The same question as ADDR:* with --to-port.
            to_port = to.rsplit(':').next().unwrap().to_string();
            args.extend([star, "--to-port", &to_port]);
        }
        if v6 {
            args.extend(["--proto", "udp"]);
        }
        args.extend(["--from", from, "--json"]);
        let w = cli.json(&with(pa, &args));
        assert_eq!(w["backend"], kernel.as_str(), "which {args:?} disagrees with the kernel: {w}");
        assert_eq!(w["vip"], if v6 { "udp [2001:db8:f::20]:*" } else { "tcp 203.0.113.20:*" });
        assert_eq!(w["to"], to.as_str());
        backends.insert(kernel.clone());
    }
    assert!(backends.len() >= 4, "random ports reach several backends of both VIPs: {backends:?}");
    let human = cli.ok(&with(pa, &["which", "203.0.113.20:8080", "--from", "192.0.2.77:40001"]));
    assert!(human.contains("VIP tcp 203.0.113.20:*") && human.contains("new flows go to 198.51.100."), "{human}");
    cli.ok(&with(pa, &["detach"]));
}

/// Review findings 1-4: addresses of the LB host itself are refused as a
/// VIP (naming the interface; `--force` takes one over on purpose) and as a
/// backend; IPIP source prefixes and decap endpoints no packet comes back
/// from or is sent to are refused, and nothing changes.
#[test]
fn host_addresses_and_unusable_sources_and_endpoints_are_refused() {
    fn with<'a>(pin: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--pin", pin]);
        v
    }
    let pin = ScratchDir::bpffs("lbclil");
    let decap_pin = ScratchDir::bpffs("lbclildecap");
    let vn = VerdictNet::new("lclil", 1);
    let cli = XDPGUARD_LB;
    let pa = pin.arg();
    cli.ok(&with(
        pa,
        &["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &vn.lb.name, "--ipip-source", IPIP_SRC_V4],
    ));

    // 1. The LB's own addresses, on eth0 (IPv4, labelled) and eth1 (IPv6,
    // named by its link): refused, naming the interface and the way out.
    let own4 = format!("{LB_FRONT_V4}:22");
    refused(
        &cli.run(&with(pa, &["vip", "add", &own4, "--mode", "nat"])),
        &["VIP tcp 192.0.2.254:22", "the load balancer host itself (on eth0)", "SSH", "--force"],
    );
    let own6 = format!("[{LB_BACK_V6}]:22");
    refused(&cli.run(&with(pa, &["vip", "add", &own6, "--mode", "dsr"])), &["(on eth1)", "--force"]);
    assert_eq!(cli.json(&with(pa, &["vip", "list", "--json"])), serde_json::json!([]), "nothing added");
    // With --force it is taken over, as asked.
    let out = cli.ok(&with(pa, &["vip", "add", &own4, "--mode", "nat", "--force"]));
    assert!(out.contains("added VIP tcp 192.0.2.254:22"), "{out}");
    assert_eq!(cli.json(&with(pa, &["vip", "list", "--json"]))[0]["vip"], "tcp 192.0.2.254:22");
    cli.ok(&with(pa, &["vip", "del", &own4]));

    // 2. A backend at the LB's own address: refused, naming the interface.
    let vip = "203.0.113.10:80";
    cli.ok(&with(pa, &["vip", "add", vip, "--mode", "dsr"]));
    refused(
        &cli.run(&with(pa, &["backend", "add", vip, &LB_BACK_V4.to_string()])),
        &["backend 198.51.100.254", "the load balancer host itself (on eth1)", "backend host's own address"],
    );
    let vip6 = format!("[{VIP_V6}]:80");
    cli.ok(&with(pa, &["vip", "add", &vip6, "--mode", "dsr"]));
    refused(&cli.run(&with(pa, &["backend", "add", &vip6, &LB_FRONT_V6.to_string()])), &["itself (on eth0)"]);
    let list = cli.json(&with(pa, &["vip", "list", "--json"]));
    assert!(list.as_array().unwrap().iter().all(|v| v["backends"] == serde_json::json!([])), "{list}");
    cli.ok(&with(pa, &["backend", "add", vip, &backend_v4(1).to_string()]));

    // 5. An all-ports VIP hashes the source address unless told otherwise
    // (its fragments then reach its flows' backend): no warning.
    let out = cli.run(&with(pa, &["vip", "add", "203.0.113.30:*", "--proto", "udp", "--mode", "dsr"]));
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"), "{out:?}");
    let list = cli.json(&with(pa, &["vip", "list", "--json"]));
    let hashes: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|v| (v["vip"].as_str().unwrap(), v["hash"].as_str().unwrap())).collect();
    assert!(hashes.contains(&("udp 203.0.113.30:*", "source")), "{hashes:?}");
    assert!(hashes.contains(&("tcp 203.0.113.10:80", "five-tuple")), "{hashes:?}");

    // 3. IPIP sources no reply comes back to: refused, status unchanged
    // (0.0.0.0/32 used to be "set" and then vanish from status).
    for bad in ["0.0.0.0/0", "224.0.0.0/24", "127.0.0.1/32", "ff02::/64", "0.0.0.0/32", "::/0"] {
        refused(&cli.run(&with(pa, &["set", "--ipip-source", bad])), &[&format!("IPIP source prefix {bad}"), "/24"]);
        let status = cli.json(&with(pa, &["status", "--json"]));
        assert_eq!(status["ipip_sources"], serde_json::json!([IPIP_SRC_V4]), "after {bad}: {status}");
    }
    // Two IPv4 sources at once (the last used to win silently), or one
    // family set and cleared at once: refused, nothing changed.
    let two = ["set", "--ipip-source", "203.0.113.0/24", "--ipip-source", "198.51.100.0/24"];
    refused(&cli.run(&with(pa, &two)), &["given 2 times for IPv4", "Nothing changed"]);
    let both = ["set", "--ipip-source", "203.0.113.0/24", "--clear-ipip-source", "ipv4"];
    refused(&cli.run(&with(pa, &both)), &["not both", "Nothing changed"]);
    // What the library refuses (clearing the source an IPIP backend needs)
    // is tried before the redirects change: a refused `set` changed them.
    cli.ok(&with(pa, &["vip", "add", "203.0.113.40:80", "--mode", "ipip"]));
    cli.ok(&with(pa, &["backend", "add", "203.0.113.40:80", &backend_v4(1).to_string()]));
    let before = cli.json(&with(pa, &["status", "--json"]));
    let eth1 = vn.lb.ifindex("eth1");
    let redirecting = before["redirect_ifindexes"].as_array().unwrap().iter().any(|i| i.as_u64() == Some(eth1.into()));
    let flip = if redirecting { "--no-redirect" } else { "--redirect" };
    refused(&cli.run(&with(pa, &["set", flip, "eth1", "--clear-ipip-source", "ipv4"])), &["IPIP"]);
    let after = cli.json(&with(pa, &["status", "--json"]));
    assert_eq!(
        (&after["redirect_ifindexes"], &after["ipip_sources"]),
        (&before["redirect_ifindexes"], &before["ipip_sources"]),
        "a refused set changes nothing"
    );
    cli.ok(&with(pa, &["vip", "del", "203.0.113.40:80"]));
    // ... also at attach time: nothing is pinned.
    let other = ScratchDir::bpffs("lbclil2");
    refused(
        &cli.run(&[
            "attach",
            "--iface",
            "c0",
            "--netns",
            &vn.peer.name,
            "--ipip-source",
            "0.0.0.0/0",
            "--pin",
            other.arg(),
        ]),
        &["IPIP source prefix 0.0.0.0/0"],
    );
    assert!(std::fs::read_dir(other.path()).map_or(true, |mut d| d.next().is_none()), "nothing pinned");

    // 4. Decap endpoints no tunnel packet is sent to: refused, at attach
    // and on a running decapsulator, which keeps its endpoints.
    let dp = decap_pin.arg();
    let attach = |local: &str| {
        cli.run(&["decap", "attach", "--iface", "b0", "--netns", &vn.peer.name, "--local", local, "--pin", dp])
    };
    refused(&attach("::ffff:198.51.100.99"), &["IPv4-mapped", "give it as IPv4 (198.51.100.99)"]);
    assert!(std::fs::read_dir(decap_pin.path()).map_or(true, |mut d| d.next().is_none()), "nothing pinned");
    assert!(attach("198.51.100.11").status.success());
    for (bad, why) in
        [("::ffff:198.51.100.99", "198.51.100.99"), ("0.0.0.0", "unspecified"), ("224.0.0.5", "multicast")]
    {
        refused(&cli.run(&["decap", "local", bad, "--pin", dp]), &[&format!("local endpoint {bad}"), why]);
    }
    let s = cli.json(&["decap", "stats", "--json", "--pin", dp]);
    assert_eq!(s["locals"], serde_json::json!(["198.51.100.11"]), "{s}");
    // Several at once: every one checked before the first is added, so a
    // good address before a bad one is not left half-applied.
    let locals = || cli.json(&["decap", "stats", "--json", "--pin", dp])["locals"].clone();
    refused(&cli.run(&["decap", "local", "198.51.100.12", "224.0.0.5", "--pin", dp]), &["local endpoint 224.0.0.5"]);
    assert_eq!(locals(), serde_json::json!(["198.51.100.11"]), "decap local: nothing added");
    let again = |iface: &str, locals: &[&str]| {
        let mut args = vec!["decap", "attach", "--iface", iface, "--netns", &vn.peer.name, "--pin", dp];
        for l in locals {
            args.extend(["--local", l]);
        }
        cli.run(&args)
    };
    refused(&again("b0", &["198.51.100.12", "127.0.0.1"]), &["local endpoint 127.0.0.1"]);
    assert_eq!(locals(), serde_json::json!(["198.51.100.11"]), "decap attach: nothing added");
    // An interface the namespace lacks: named with the namespace it was
    // looked up in, and the endpoints given with it are not kept either.
    let ns = vn.peer.name.clone();
    refused(
        &again("nosuch0", &["198.51.100.12"]),
        &[&format!("`nosuch0` not found in network namespace `{ns}`"), &format!("ip -n {ns} link")],
    );
    assert_eq!(locals(), serde_json::json!(["198.51.100.11"]), "a refused attach adds no endpoint");
    let out = cli.ok(&["decap", "local", "198.51.100.12", "198.51.100.13", "198.51.100.12", "--pin", dp]);
    assert!(out.contains("added 2"), "{out}");
    assert_eq!(locals(), serde_json::json!(["198.51.100.11", "198.51.100.12", "198.51.100.13"]));
    cli.ok(&["decap", "detach", "--pin", dp]);
    // The load balancer's attach names the namespace too.
    refused(
        &cli.run(&["attach", "--iface", "nosuch0", "--netns", &ns, "--pin", other.arg()]),
        &[&format!("`nosuch0` not found in network namespace `{ns}`"), &format!("ip -n {ns} link")],
    );
    // The exporter given the LB's pins as a filter's: refused at start,
    // naming what they hold and the flag to give them with.
    refused(
        &XDPGUARD.run(&["metrics", "--filter", pa, "--listen", "127.0.0.1:0"]),
        &["holds an xdpguard load balancer, not a filter", &format!("--lb {pa}")],
    );
    cli.ok(&with(pa, &["detach"]));
}

/// `stats --reset` takes off what it read, not what is there when it
/// resets: packets counted between the read and the reset (here run
/// through `BPF_PROG_TEST_RUN` in between) are kept, for the next read.
#[test]
fn a_reset_keeps_what_was_counted_after_the_read() {
    use xdpguard::testing::frame::DST_V4;
    let lb = LoadBalancer::builder().max_vips(4).max_backends(8).connections(64).load().expect("load the LB (root)");
    // Not for a VIP: passed and counted as passed_non_vip.
    let frame = Frame::builder().ipv4(Ipv4Addr::new(192, 0, 2, 1), DST_V4).udp(40000, 53).payload(b"x").build();
    let run = |n: u64| {
        for _ in 0..n {
            assert_eq!(lb.test_run(frame.bytes()).unwrap().action, XdpAction::Pass);
        }
    };
    run(3);
    let read = lb.stats().unwrap();
    assert_eq!(read.passed_non_vip.packets, 3);
    run(2);
    lb.subtract_stats(&read).unwrap();
    let after = lb.stats().unwrap();
    assert_eq!(after.passed_non_vip.packets, 2, "the two counted after the read are kept");
    assert_eq!(after.passed_non_vip.bytes, 2 * frame.len() as u64);
    // Taking off a read again (or a stale one) never wraps below zero.
    lb.subtract_stats(&read).unwrap();
    assert_eq!(lb.stats().unwrap().passed_non_vip, xdpguard::Counter::default());
}

/// `status --exit-code` exits 6 while an interface the LB was attached to
/// is lost (deleted), though it still serves on another; a deliberate
/// `detach --iface` of one of two is no loss (0), and neither is a lost one
/// forgotten with `detach --iface`. Attached nowhere stays 3.
#[test]
fn status_exit_code_says_an_interface_was_lost() {
    let pin = ScratchDir::bpffs("lblost");
    let vn = VerdictNet::new("llost", 1);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let code = || cli.run(&["status", "--exit-code", p[0], p[1]]).status.code();
    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &vn.lb.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.10:80", &backend_v4(1).to_string(), p[0], p[1]]);
    assert_eq!(code(), Some(0), "serving");
    cli.ok(&["detach", "--iface", "eth1", p[0], p[1]]);
    assert_eq!(code(), Some(0), "detached from eth1 on purpose: no loss");
    cli.ok(&["attach", "--iface", "eth1", p[0], p[1]]);

    vn.lb.ip(&["link", "del", "eth1"]);
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(6), "eth1 is gone");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("lost:") && text.contains("eth1"), "{text}");
    assert!(
        text.contains(
            "health:      not serving: attached to 1 interface(s), lost 1, 0 of 1 VIP(s) with a reachable active backend"
        ),
        "{text}"
    );
    let json = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!((json["serving"].as_bool(), json["lost_attachments"].as_array().map(Vec::len)), (Some(false), Some(1)));

    // Forgotten on purpose: no loss any more, but the backend's route went
    // with eth1, so the only VIP has no routed backend (4); with a route to
    // it out of eth0, serving again on what is left.
    cli.ok(&["detach", "--iface", "eth1", p[0], p[1]]);
    assert_eq!(code(), Some(4), "the loss forgotten with detach --iface; the backend unrouted");
    vn.lb.ip(&["route", "add", &format!("{}/32", backend_v4(1)), "dev", "eth0"]);
    assert_eq!(code(), Some(0), "routed out of eth0");
    // Every interface lost: attached nowhere.
    vn.lb.ip(&["link", "del", "eth0"]);
    assert_eq!(code(), Some(3), "attached nowhere");
    cli.ok(&["detach", p[0], p[1]]);
}

/// One TCP packet from the client to 203.0.113.10:80, received on the
/// LB's eth0, through the LB pinned at `pin` (in its namespace): the
/// verdict, and the LB's `passed_no_route` and `passed_no_devmap` counts
/// after it.
fn vip_packet(vn: &VerdictNet, pin: &std::path::Path) -> (XdpAction, u64, u64) {
    let (pin, eth0, mac) = (pin.to_owned(), vn.eth0, vn.eth0_mac);
    vn.lb.run(move || {
        let lb = LoadBalancer::open_pinned(&pin).expect("open the pinned LB");
        let frame = Frame::builder()
            .macs(CLIENT_MAC, mac)
            .ip(CLIENT_V4.into(), VIP_V4.into())
            .tcp(40000, 80)
            .payload(b"hi")
            .build();
        let out = lb.test_run_on(&frame, eth0).expect("test run");
        let s = lb.stats().expect("stats");
        (out.action, s.passed_no_route.packets, s.passed_no_devmap.packets)
    })
}

/// `status --exit-code` exits 7 while IP forwarding is off on an interface
/// the LB receives on, for a family its active backends are of, and no VIP
/// is left serving: the FIB lookup then refuses and VIP packets go to the
/// stack (`passed_no_route`), which `status` used to call serving. The text
/// names the sysctl to set; the family no backend is of does not count,
/// and one family's backends lost beside a VIP the other serves is a
/// warning.
#[test]
fn status_exit_code_says_forwarding_is_off() {
    let pin = ScratchDir::bpffs("lbfwdoff");
    let vn = VerdictNet::new("lfwd", 1);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let code = || cli.run(&["status", "--exit-code", p[0], p[1]]).status.code();
    cli.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &vn.lb.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.10:80", &backend_v4(1).to_string(), p[0], p[1]]);
    assert_eq!(code(), Some(0), "serving");
    assert_eq!(vip_packet(&vn, pin.path()), (XdpAction::Redirect, 0, 0), "balanced in XDP");
    vn.lb.sysctl("net.ipv6.conf.eth0.forwarding", "0");
    assert_eq!(code(), Some(0), "IPv6 forwarding off, but no backend is IPv6");

    vn.lb.sysctl("net.ipv4.conf.eth0.forwarding", "0");
    // Once this CPU's cached next hop expires.
    std::thread::sleep(3 * xdpguard::DEFAULT_NEXT_HOP_CACHE);
    assert_eq!(vip_packet(&vn, pin.path()), (XdpAction::Pass, 1, 0), "to the stack: the FIB lookup refuses");
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(7), "IPv4 forwarding off on eth0");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("health:      not serving: attached to 2 interface(s)"), "{text}");
    assert!(text.contains("set net.ipv4.conf.eth0.forwarding=1"), "{text}");
    assert!(!text.contains("eth1.forwarding") && !text.contains("ipv6.conf.eth0"), "only what is off and used: {text}");
    let json = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(json["serving"].as_bool(), Some(false));
    assert_eq!(json["forwarding_off"], serde_json::json!(["net.ipv4.conf.eth0.forwarding"]));
    // The API says so too, from a thread outside the LB's namespace.
    let h = LoadBalancer::open_pinned(pin.path()).unwrap().health().unwrap();
    assert_eq!(h.exit_code(), 7);
    assert_eq!(
        h.forwarding_off.iter().map(|o| (o.interface.as_str(), o.ifindex, o.ipv6)).collect::<Vec<_>>(),
        [("eth0", vn.eth0, false)]
    );
    vn.lb.sysctl("net.ipv4.conf.eth0.forwarding", "1");
    assert_eq!(code(), Some(0), "forwarding on again");

    // An IPv6 backend makes IPv6 forwarding count (off on eth0 since
    // above): its share is lost, and the IPv4 VIP serves on (a warning;
    // the whole node was withdrawn). With the IPv4 backend drained, no VIP
    // is left serving: 7.
    cli.ok(&["vip", "add", "[2001:db8:f::10]:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "[2001:db8:f::10]:80", &backend_v6(1).to_string(), p[0], p[1]]);
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(0), "IPv6 forwarding off on eth0, the IPv4 VIP serving");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("health:      serving: attached to 2 interface(s), 1 of 2 VIP(s)"), "{text}");
    assert!(
        text.contains("warning: IP forwarding is off for IPv6 where it receives")
            && text.contains("set net.ipv6.conf.eth0.forwarding=1"),
        "{text}"
    );
    cli.ok(&["backend", "weight", "203.0.113.10:80", &backend_v4(1).to_string(), "0", p[0], p[1]]);
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(7), "no VIP left, IPv6 forwarding off on eth0");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not serving: attached to 2 interface(s), 0 of 2 VIP(s)"), "{text}");
    vn.lb.sysctl("net.ipv6.conf.all.forwarding", "1");
    assert_eq!(code(), Some(0), "all.forwarding sets every interface");
    cli.ok(&["detach", p[0], p[1]]);
}

/// `status --exit-code` exits 8 while an active backend is routed out of an
/// interface that is not a redirect interface: here the backends' eth1,
/// deleted and made again (the kernel empties its devmap slot, and the new
/// eth1 has another index), so DSR packets went to the stack (and to the
/// VIP's blackhole route) while `status` said serving. The text names the
/// backends, the interface and the repair, after which it serves again.
#[test]
fn status_exit_code_says_a_redirect_interface_was_lost() {
    let pin = ScratchDir::bpffs("lbredir");
    let vn = VerdictNet::new("lredir", 2);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let code = || cli.run(&["status", "--exit-code", p[0], p[1]]).status.code();
    cli.ok(&["attach", "--iface", "eth0", "--redirect", "eth1", "--netns", &vn.lb.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    for i in 1..=2 {
        cli.ok(&["backend", "add", "203.0.113.10:80", &backend_v4(i).to_string(), p[0], p[1]]);
    }
    assert_eq!(code(), Some(0), "serving");
    assert_eq!(vip_packet(&vn, pin.path()), (XdpAction::Redirect, 0, 0), "redirected out of eth1");

    vn.lb.ip(&["link", "del", "eth1"]);
    xdpguard::testing::netns::veth(&vn.lb, "eth1", &vn.peer, "b0");
    vn.lb.addr("eth1", &format!("{LB_BACK_V4}/24"));
    for i in 1..=2 {
        vn.lb.static_neighbours("eth1", &[IpAddr::V4(backend_v4(i))], backend_mac(i));
    }
    let eth1 = vn.lb.ifindex("eth1");
    assert_ne!(eth1, vn.eth1, "a new index");
    assert_eq!(vip_packet(&vn, pin.path()), (XdpAction::Pass, 0, 1), "eth1 is no longer in the devmap");
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(8), "backends routed out of an interface it may not redirect to");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "backend 198.51.100.11 of tcp 203.0.113.10:80, 198.51.100.12 of tcp 203.0.113.10:80 routed out of \
             eth1 (#{eth1}), not a redirect interface"
        )) && text.contains("`xdpguard-lb set --redirect eth1`"),
        "{text}"
    );
    let json = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(json["serving"].as_bool(), Some(false));
    assert_eq!(json["unredirected"][1]["interface"].as_str(), Some("eth1"), "{json}");
    assert_eq!(json["unredirected"][1]["backend"].as_str(), Some("198.51.100.12"), "{json}");
    // A drained backend counts no more: only the active one is named.
    cli.ok(&["backend", "weight", "203.0.113.10:80", &backend_v4(1).to_string(), "0", p[0], p[1]]);
    let h = LoadBalancer::open_pinned(pin.path()).unwrap().health().unwrap();
    assert_eq!(
        h.unredirected.iter().map(|u| (u.backend.ip, u.ifindex)).collect::<Vec<_>>(),
        [(IpAddr::V4(backend_v4(2)), eth1)]
    );

    cli.ok(&["set", "--redirect", "eth1", p[0], p[1]]);
    assert_eq!(code(), Some(0), "a redirect interface again");
    assert_eq!(vip_packet(&vn, pin.path()).0, XdpAction::Redirect, "redirected again");
    cli.ok(&["detach", p[0], p[1]]);
}

/// The managed neighbour entries are those of the next hops the data plane
/// uses: its own route lookup as for a packet received where the LB is
/// attached. A backend on-link in the main table, routed through a gateway
/// by `ip rule iif eth0` for what eth0 receives, gets the gateway's entry
/// (the main table's output lookup, used before, made the backend's own,
/// and a cold flow's first packets waited for the stack to resolve the
/// gateway), in both families; `backend list` names the gateway. With
/// forwarding off the lookup cannot say: the gateway's entry stays (that
/// family's only). With the rule gone, any command puts the backend's own
/// entry back.
#[test]
fn managed_neighbours_follow_the_data_planes_route() {
    const GW_V4: &str = "198.51.100.99";
    const GW_V6: &str = "2001:db8:b::99";
    let pin = ScratchDir::bpffs("lbhopiif");
    // No static neighbour entries for the backends: every entry is ours.
    let vn = VerdictNet::new("lhopi", 0);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let (b4, b6) = (backend_v4(1).to_string(), backend_v6(1).to_string());
    let ours = || String::from_utf8_lossy(&vn.lb.ip(&["neigh", "show", "proto", "88"]).stdout).into_owned();
    let has = |shown: &str, addr: &str| shown.lines().any(|l| l.starts_with(&format!("{addr} dev eth1 ")));
    let via = |vip: &str| {
        let list = cli.json(&["backend", "list", vip, "--json", p[0], p[1]]);
        list["backends"][0]["neighbour"]["via"].as_str().unwrap_or_default().to_owned()
    };
    cli.ok(&["attach", "--iface", "eth0", "--redirect", "eth1", "--netns", &vn.lb.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.10:80", &b4, p[0], p[1]]);
    cli.ok(&["vip", "add", "[2001:db8:f::10]:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "[2001:db8:f::10]:80", &b6, p[0], p[1]]);
    let shown = ours();
    assert!(has(&shown, &b4) && has(&shown, &b6) && shown.lines().count() == 2, "on-link: their own entries: {shown}");
    assert_eq!((via("203.0.113.10:80"), via("[2001:db8:f::10]:80")), (b4.clone(), b6.clone()));

    for family in ["-4", "-6"] {
        vn.lb.ip(&[family, "rule", "add", "iif", "eth0", "lookup", "100"]);
    }
    vn.lb.ip(&["route", "add", &format!("{b4}/32"), "via", GW_V4, "dev", "eth1", "table", "100"]);
    vn.lb.ip(&["-6", "route", "add", &format!("{b6}/128"), "via", GW_V6, "dev", "eth1", "table", "100"]);
    // Any command reconciles the entries (opening the pinned LB does).
    assert_eq!((via("203.0.113.10:80"), via("[2001:db8:f::10]:80")), (GW_V4.to_owned(), GW_V6.to_owned()));
    let shown = ours();
    assert!(has(&shown, GW_V4) && has(&shown, GW_V6), "the gateways' entries: {shown}");
    assert!(shown.lines().all(|l| l.contains("managed")), "{shown}");
    assert!(!has(&shown, &b4) && !has(&shown, &b6), "the backends' own entries went: {shown}");
    // The main table's next hop is still the backend itself: the output
    // lookup would have kept its entry.
    let main = String::from_utf8_lossy(&vn.lb.ip(&["route", "get", &b4]).stdout).into_owned();
    assert!(!main.contains(GW_V4), "{main}");
    // Forwarding off where it receives: the lookup cannot say (the health
    // check reports it); the main table's next hop stands in, and the
    // gateway's entry stays, ready for when forwarding is on again.
    vn.lb.sysctl("net.ipv4.conf.eth0.forwarding", "0");
    assert_eq!(via("203.0.113.10:80"), b4, "the main table's, while the lookup cannot say");
    let shown = ours();
    assert!(has(&shown, GW_V4) && has(&shown, GW_V6), "kept while forwarding is off: {shown}");
    vn.lb.sysctl("net.ipv4.conf.eth0.forwarding", "1");
    assert_eq!(via("203.0.113.10:80"), GW_V4);
    assert!(has(&ours(), GW_V4), "{}", ours());

    for family in ["-4", "-6"] {
        vn.lb.ip(&[family, "rule", "del", "iif", "eth0", "lookup", "100"]);
    }
    assert_eq!(via("203.0.113.10:80"), b4);
    let shown = ours();
    assert!(has(&shown, &b4) && has(&shown, &b6) && shown.lines().count() == 2, "back to their own: {shown}");
    // IPv6 forwarding off (a new namespace's default) keeps IPv6's hops,
    // and IPv4's still follow: a removed IPv4 backend's entry goes.
    vn.lb.sysctl("net.ipv6.conf.eth0.forwarding", "0");
    cli.ok(&["backend", "del", "203.0.113.10:80", &b4, p[0], p[1]]);
    let shown = ours();
    assert!(!has(&shown, &b4) && has(&shown, &b6), "{shown}");
}

/// `status` warns while an active backend has no route in the LB's
/// namespace (the bed has no default route): its share of new flows goes
/// to the stack (`passed_no_route`), which has no route either. The text
/// names the backend and the ways out; a routed backend beside it is not
/// named, and with a route to it (or without it) the warning goes. The
/// check asks the data plane's own lookup: a backend routed only by `ip
/// rule iif` for packets received on the LB's interface is reached by the
/// data plane and not warned of (the rtnetlink output lookup the check
/// used before warned of it). One VIP's unrouted backend withdraws
/// nothing; a VIP with no routed active backend is not serving, and with
/// no VIP left serving `status --exit-code` exits 4. An IPIP VIP's
/// unrouted backend is named as well.
#[test]
fn status_warns_of_a_backend_with_no_route() {
    const UNROUTED: &str = "203.0.113.77";
    let pin = ScratchDir::bpffs("lbnoroute");
    let vn = VerdictNet::new("lnort", 1);
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    let code = || cli.run(&["status", "--exit-code", p[0], p[1]]).status.code();
    let routes = String::from_utf8_lossy(&vn.lb.ip(&["-4", "route", "show", "default"]).stdout).into_owned();
    assert!(routes.trim().is_empty(), "the bed must have no default route: {routes}");
    cli.ok(&[
        "attach",
        "--iface",
        "eth0",
        "--redirect",
        "eth1",
        "--netns",
        &vn.lb.name,
        "--ipip-source",
        IPIP_SRC_V4,
        p[0],
        p[1],
    ]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.10:80", &backend_v4(1).to_string(), p[0], p[1]]);
    assert_eq!(code(), Some(0), "a routed backend: serving");

    let out = cli.run(&["backend", "add", "203.0.113.10:80", UNROUTED, p[0], p[1]]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("has no route to {UNROUTED} from the interfaces it receives on")));
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(0), "one backend with no route beside a routed one: a warning");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "health:      serving: attached to 1 interface(s), 1 of 1 VIP(s) with a reachable active backend"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "; warning: no route to backend {UNROUTED} of tcp 203.0.113.10:80 from the interfaces the LB receives \
             on (the data plane's own lookup), so its share of new flows is dropped (passed_no_route): add a \
             route to it in the LB's namespace, or remove it (`xdpguard-lb backend del VIP BACKEND`)"
        )),
        "{text}"
    );
    assert!(!text.contains("198.51.100.11 of") && !text.contains("routed out of"), "only the unrouted one: {text}");
    let json = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(json["serving"].as_bool(), Some(true));
    assert_eq!(
        json["unrouted"],
        serde_json::json!([{"vip": "tcp 203.0.113.10:80", "backend": UNROUTED, "everywhere": true, "may_depend_on_source": false}])
    );
    assert_eq!(json["unredirected"], serde_json::json!([]));
    let status = || {
        let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
        let warned = String::from_utf8_lossy(&out.stdout).contains(&format!("no route to backend {UNROUTED} of"));
        (out.status.code(), warned)
    };
    // The data plane agrees: with the routed backend drained, a new flow
    // gets the unrouted one and goes to the stack; the VIP has no routed
    // active backend left, nor has the node: exit 4.
    let routed = backend_v4(1).to_string();
    cli.ok(&["backend", "weight", "203.0.113.10:80", &routed, "0", p[0], p[1]]);
    assert_eq!(vip_packet(&vn, pin.path()), (XdpAction::Pass, 1, 0), "no route: to the stack");
    assert_eq!(status(), (Some(4), true), "no VIP with a reachable active backend");
    // Routed only for packets received on eth0 (`ip rule iif`): the data
    // plane's input lookup finds the route (no packet to the stack for
    // want of one), and so does the check, which asks the same lookup.
    vn.lb.ip(&["rule", "add", "iif", "eth0", "lookup", "100"]);
    vn.lb.ip(&["route", "add", &format!("{UNROUTED}/32"), "dev", "eth1", "table", "100"]);
    assert_eq!(vip_packet(&vn, pin.path()).1, 1, "routed by the iif rule: the data plane found the route");
    assert_eq!(status(), (Some(0), false), "the check sees the iif rule");
    // Received elsewhere it would not be: a rule for another interface.
    vn.lb.ip(&["rule", "del", "iif", "eth0", "lookup", "100"]);
    vn.lb.ip(&["rule", "add", "iif", "eth1", "lookup", "100"]);
    assert_eq!(status(), (Some(4), true), "routed only for what eth1 receives, where the LB is not");
    vn.lb.ip(&["rule", "del", "iif", "eth1", "lookup", "100"]);
    // Routed only for some clients' sources (`ip rule from`): the data
    // plane routes this client's flows; the check, which knows no client,
    // cannot tell, so it warns without taking the VIP out of service.
    vn.lb.ip(&["rule", "add", "from", &format!("{CLIENT_V4}/32"), "lookup", "100"]);
    assert_eq!(vip_packet(&vn, pin.path()).1, 1, "routed for the client's source: the data plane found the route");
    let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "no route to backend {UNROUTED} of tcp 203.0.113.10:80 (a packet's source may route it)"
        )),
        "{text}"
    );
    vn.lb.ip(&["rule", "del", "from", &format!("{CLIENT_V4}/32"), "lookup", "100"]);
    assert_eq!(status(), (Some(4), true), "no source rule left");
    vn.lb.ip(&["route", "del", &format!("{UNROUTED}/32"), "dev", "eth1", "table", "100"]);
    cli.ok(&["backend", "weight", "203.0.113.10:80", &routed, "1", p[0], p[1]]);

    // A route to it (out of eth1, a redirect interface): no warning.
    vn.lb.ip(&["route", "add", &format!("{UNROUTED}/32"), "dev", "eth1"]);
    assert_eq!(status(), (Some(0), false), "routed now");
    vn.lb.ip(&["route", "del", &format!("{UNROUTED}/32"), "dev", "eth1"]);
    assert_eq!(status(), (Some(0), true), "the route gone again");
    // Or without it.
    cli.ok(&["backend", "del", "203.0.113.10:80", UNROUTED, p[0], p[1]]);
    assert_eq!(status(), (Some(0), false), "the unrouted backend removed");

    // An IPIP VIP whose only backend has no route, through the API from a
    // thread outside the LB's namespace: named, and that VIP is not
    // serving; the DSR VIP still is.
    cli.ok(&["vip", "add", "203.0.113.11:80", "--mode", "ipip", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.11:80", UNROUTED, p[0], p[1]]);
    let health = || LoadBalancer::open_pinned(pin.path()).unwrap().health().unwrap();
    let h = health();
    assert_eq!((h.exit_code(), h.vips, h.serving_vips), (0, 2, 1), "{h:?}");
    assert_eq!(
        h.unrouted.iter().map(|u| (u.vip.to_string(), u.backend.ip)).collect::<Vec<_>>(),
        [("tcp 203.0.113.11:80".to_owned(), UNROUTED.parse::<IpAddr>().unwrap())]
    );
    assert!(h.unredirected.is_empty(), "{h:?}");
    // The DSR VIP drained: nothing left to serve.
    cli.ok(&["backend", "weight", "203.0.113.10:80", &routed, "0", p[0], p[1]]);
    let h = health();
    assert_eq!((h.exit_code(), h.serving_vips), (4, 0), "{h:?}");
    // The check looks an IPIP VIP's backend up from its tunnel prefix's
    // addresses, as the data plane does (a flow's hash in the host bits):
    // routed for the whole prefix, it is routed; for its first address
    // only, most flows are not: said, without counting against the VIP.
    vn.lb.ip(&["route", "add", &format!("{UNROUTED}/32"), "dev", "eth1", "table", "100"]);
    vn.lb.ip(&["rule", "add", "from", IPIP_SRC_V4, "lookup", "100"]);
    let h = health();
    assert_eq!((h.exit_code(), h.serving_vips, h.unrouted.len()), (0, 1, 0), "{h:?}");
    assert!(h.routes_unchecked.is_none(), "{h:?}");
    vn.lb.ip(&["rule", "del", "from", IPIP_SRC_V4, "lookup", "100"]);
    let tunnel_src = IPIP_SRC_V4.split('/').next().unwrap();
    vn.lb.ip(&["rule", "add", "from", &format!("{tunnel_src}/32"), "lookup", "100"]);
    let h = health();
    assert_eq!((h.exit_code(), h.serving_vips), (0, 1), "{h:?}");
    assert!(h.unrouted.len() == 1 && h.unrouted[0].may_depend_on_source, "{h:?}");
    vn.lb.ip(&["rule", "del", "from", &format!("{tunnel_src}/32"), "lookup", "100"]);
    vn.lb.ip(&["route", "del", &format!("{UNROUTED}/32"), "dev", "eth1", "table", "100"]);
    // IPv6: a DSR VIP's unrouted backend is named; its VIP still counts
    // (an IPv6 route may be source-specific, and the client's source is
    // not known); with a route to it, nothing is said.
    const UNROUTED6: &str = "2001:db8:77::77";
    cli.ok(&["vip", "add", "[2001:db8:a::10]:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "[2001:db8:a::10]:80", UNROUTED6, p[0], p[1]]);
    let h = health();
    let six: Vec<_> = h.unrouted.iter().filter(|u| u.backend.ip.is_ipv6()).collect();
    assert_eq!(six.len(), 1, "{h:?}");
    assert!(six[0].may_depend_on_source && h.serving_vips == 1, "{h:?}");
    vn.lb.ip(&["-6", "route", "add", &format!("{UNROUTED6}/128"), "dev", "eth1"]);
    let h = health();
    assert!(h.unrouted.iter().all(|u| u.backend.ip.is_ipv4()), "routed now: {h:?}");
    cli.ok(&["detach", p[0], p[1]]);
}

/// Behind a filter attached to two interfaces, with no redirect
/// interface: a DSR backend on eth1 leaves by `XDP_TX` for VIP packets
/// arriving on eth1, and would leave eth1 through the stack (dropped) for
/// those arriving on eth0. From only some of a chaining filter's
/// interfaces that is a note (a management interface the filter guards
/// may carry no VIP traffic), not exit 8, which used to withdraw such a
/// node; from every interface it receives on, it is exit 8; with eth1 a
/// redirect interface, nothing is said.
#[test]
fn status_notes_a_backend_unredirected_from_some_filter_interfaces() {
    let pin = ScratchDir::bpffs("lbnote");
    let fpin = ScratchDir::bpffs("lbnotef");
    let vn = VerdictNet::new("lnote", 1);
    let (cli, filter) = (XDPGUARD_LB, common::cli::XDPGUARD);
    let p = ["--pin", pin.arg()];
    let status = || {
        let out = cli.run(&["status", "--exit-code", p[0], p[1]]);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    cli.ok(&["attach", "--behind-filter", "--netns", &vn.lb.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:80", "--mode", "dsr", p[0], p[1]]);
    let backend = backend_v4(1).to_string();
    cli.ok(&["backend", "add", "203.0.113.10:80", &backend, p[0], p[1]]);
    filter.ok(&["attach", "--iface", "eth0", "--iface", "eth1", "--netns", &vn.lb.name, "--pin", fpin.arg()]);
    filter.ok(&["next", pin.arg(), "--pin", fpin.arg()]);

    let (code, text) = status();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "; note: for packets arriving on some of the interfaces it receives on, backend {backend} of \
             tcp 203.0.113.10:80 is routed out of eth1 (#"
        )),
        "{text}"
    );
    let json = cli.json(&["status", "--json", p[0], p[1]]);
    assert_eq!(json["unredirected"][0]["withdraws"].as_bool(), Some(false), "{json}");

    // Forwarding off on eth1 (hardening a management interface): eth0 is
    // the only one with a route, and it routes it out of eth1: lost.
    vn.lb.sysctl("net.ipv4.conf.eth1.forwarding", "0");
    let (code, text) = status();
    assert_eq!(code, Some(8), "{text}");
    vn.lb.sysctl("net.ipv4.conf.eth1.forwarding", "1");
    assert_eq!(status().0, Some(0));
    // Only eth0 left: every interface it receives on routes it out of eth1.
    filter.ok(&["detach", "--iface", "eth1", "--pin", fpin.arg()]);
    let (code, text) = status();
    assert_eq!(code, Some(8), "{text}");
    assert!(text.contains(&format!("; backend {backend} of tcp 203.0.113.10:80 routed out of eth1 (#")), "{text}");

    cli.ok(&["set", "--redirect", "eth1", p[0], p[1]]);
    let (code, text) = status();
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("routed out of"), "{text}");

    // One VIP's backend lost while another VIP's (on eth0's link, sent
    // back out of it) is not: said, and the node stays serving.
    cli.ok(&["vip", "add", "203.0.113.12:80", "--mode", "dsr", p[0], p[1]]);
    cli.ok(&["backend", "add", "203.0.113.12:80", "192.0.2.50", p[0], p[1]]);
    cli.ok(&["set", "--no-redirect", "eth1", p[0], p[1]]);
    let (code, text) = status();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 of 2 VIP(s) with a reachable active backend"), "{text}");
    assert!(text.contains(&format!("; backend {backend} of tcp 203.0.113.10:80 routed out of eth1 (#")), "{text}");
    filter.ok(&["detach", "--pin", fpin.arg()]);
    cli.ok(&["detach", p[0], p[1]]);
}

/// `health --vip` with a VIP the LB does not have is refused at the start
/// (it used to check nothing, forever), naming the VIP, the one at that
/// address and port with another protocol (`--vip` alone is TCP) with its
/// `/udp` form, and the command that lists the VIPs.
#[test]
fn health_refuses_a_vip_the_lb_does_not_have() {
    let pin = ScratchDir::bpffs("lbhvip");
    let ns = xdpguard::testing::netns::NetNs::new("lhvip");
    let cli = XDPGUARD_LB;
    let p = ["--pin", pin.arg()];
    cli.ok(&["attach", "--behind-filter", "--netns", &ns.name, p[0], p[1]]);
    cli.ok(&["vip", "add", "203.0.113.10:53", "--proto", "udp", "--mode", "dsr", p[0], p[1]]);
    for (vip, words) in [
        ("203.0.113.10:53", vec!["no VIP tcp 203.0.113.10:53", "has udp 203.0.113.10:53", "--vip 203.0.113.10:53/udp"]),
        ("203.0.113.99:80", vec!["no VIP tcp 203.0.113.99:80"]),
    ] {
        // check-deps: built-here (CARGO_BIN_EXE_xdpguard-lb)
        let mut child = std::process::Command::new(cli.path())
            .args(["health", "--vip", vip, p[0], p[1]])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start xdpguard-lb health");
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("health --vip {vip} still runs after 10 s: it checks nothing instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let list = format!("xdpguard-lb vip list --pin {}", pin.arg());
        refused(&out, &[&words[..], &[list.as_str(), "nothing was checked"]].concat());
    }
    cli.ok(&["detach", p[0], p[1]]);
}

/// `xdpguard-lb attach` started several times at once on a new pin
/// directory, each naming its own interface: every one succeeds (all but
/// one failed with "already holds a pinned xdpguard load balancer ...
/// remove it first"), and the one LB pinned there runs on every interface.
#[test]
fn concurrent_attaches_on_a_new_pin_directory_all_attach_one_lb() {
    const N: usize = 4;
    let ns = xdpguard::testing::netns::NetNs::new("lcatt");
    let ifaces: Vec<String> = (0..N).map(|i| format!("xgc{i}")).collect();
    for (i, name) in ifaces.iter().enumerate() {
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", &format!("xgp{i}")]);
        ns.ip(&["link", "set", name, "up"]);
    }
    let pin = ScratchDir::bpffs("lcatt");
    let children: Vec<_> = ifaces
        .iter()
        .map(|iface| {
            let args = ["attach", "--iface", iface, "--netns", &ns.name, "--mode", "generic", "--pin", pin.arg()];
            // check-deps: built-here (CARGO_BIN_EXE_xdpguard-lb)
            std::process::Command::new(XDPGUARD_LB.path())
                .args(args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start xdpguard-lb attach")
        })
        .collect();
    for (iface, child) in ifaces.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "attach --iface {iface} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let lb = LoadBalancer::open_pinned(pin.path()).unwrap();
    let on: std::collections::BTreeSet<String> = lb.attachments().into_iter().map(|a| a.interface).collect();
    assert_eq!(on, ifaces.iter().cloned().collect(), "attached to every interface named");
    drop(lb);
    XDPGUARD_LB.ok(&["detach", "--pin", pin.arg()]);
}
